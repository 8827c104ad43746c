//! A TCP relay in front of a registry that cuts the connection carrying
//! the registry's answer once `limit` bytes of answers have passed, once:
//! a registry that drops the connection mid-blob, then recovers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Cutter {
    /// `host:port` to use as the registry.
    pub addr: String,
    passed: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
}

impl Cutter {
    pub async fn start(upstream: &str, limit: u64) -> Cutter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (passed, cut) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (upstream, p, c) = (upstream.to_string(), passed.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&upstream).await.unwrap();
                tokio::spawn(relay(client, server, p.clone(), c.clone(), limit));
            }
        });
        Cutter { addr, passed, cut }
    }

    /// Bytes of answers passed to clients so far.
    pub fn passed(&self) -> u64 {
        self.passed.load(Ordering::Relaxed)
    }

    /// Whether the one cut has happened.
    pub fn has_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    passed: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
    limit: u64,
) {
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let upload = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_rd, &mut server_wr).await;
        let _ = server_wr.shutdown().await;
    });
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match server_rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let total = passed.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total >= limit && !cut.swap(true, Ordering::Relaxed) {
            // Dropped mid-answer: the client sees the connection close.
            upload.abort();
            return;
        }
        if client_wr.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = client_wr.shutdown().await;
}
