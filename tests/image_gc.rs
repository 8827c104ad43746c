//! Image garbage collection beside pulls in flight: RemoveImage never waits
//! for a transfer, and never frees what a pull has stored but not yet
//! recorded. ImageFsInfo answers from accounted numbers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::pod::*;
use common::testenv::testenv;
use common::*;
use k8s_cri::v1::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP relay in front of a registry that stops passing the registry's
/// bytes once `limit` have gone through, until opened: a pull that stalls
/// part-way for as long as a test wants.
struct Valve {
    addr: String,
    passed: Arc<AtomicU64>,
    open: tokio::sync::watch::Sender<bool>,
}

impl Valve {
    async fn start(upstream: &str, limit: u64) -> Valve {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let passed = Arc::new(AtomicU64::new(0));
        let (open, opened) = tokio::sync::watch::channel(false);
        let (upstream, counter) = (upstream.to_string(), passed.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&upstream).await.unwrap();
                tokio::spawn(relay(
                    client,
                    server,
                    counter.clone(),
                    limit,
                    opened.clone(),
                ));
            }
        });
        Valve { addr, passed, open }
    }

    fn passed(&self) -> u64 {
        self.passed.load(Ordering::Relaxed)
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    passed: Arc<AtomicU64>,
    limit: u64,
    mut opened: tokio::sync::watch::Receiver<bool>,
) {
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_rd, &mut server_wr).await;
        let _ = server_wr.shutdown().await;
    });
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match server_rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while !*opened.borrow() && passed.load(Ordering::Relaxed) >= limit {
            if opened.changed().await.is_err() {
                return;
            }
        }
        passed.fetch_add(n as u64, Ordering::Relaxed);
        if client_wr.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = client_wr.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_an_image_neither_waits_for_a_pull_nor_frees_what_it_holds() {
    let env = testenv();
    // Past busybox's layer and part of big's first 16 MiB one.
    let valve = Valve::start(&env.registry, 8 << 20).await;
    let registries = format!(
        "{}\n[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
        env.registries_conf(),
        valve.addr
    );
    let mut e = env_built("gc", NamespaceMode::Container, |b| {
        b.registries(&registries)
    })
    .await;
    let busybox = e.image.clone();
    let big = format!("{}/crius/big:latest", valve.addr);
    let mut images = e.d.images().await;
    let pulling = {
        let (mut images, big) = (e.d.images().await, big.clone());
        tokio::spawn(async move {
            images
                .pull_image(PullImageRequest {
                    image: Some(ImageSpec {
                        image: big,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
        })
    };
    wait_for(
        "the pull to stall at the valve",
        Duration::from_secs(60),
        || {
            let stalled = valve.passed() >= 8 << 20;
            async move { stalled.then_some(()) }
        },
    )
    .await;

    // busybox's layer is big's base layer: the stalled pull holds it.
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(5),
        images.remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: busybox.clone(),
                ..Default::default()
            }),
        }),
    )
    .await
    .expect("RemoveImage waited for a pull in flight")
    .expect("RemoveImage");
    println!(
        "RemoveImage took {:?} beside a stalled pull",
        started.elapsed()
    );
    assert!(!pulling.is_finished(), "the pull was meant to be stalled");

    valve.open.send(true).unwrap();
    let pulled = tokio::time::timeout(Duration::from_secs(120), pulling)
        .await
        .expect("the pull finishes once the valve opens")
        .unwrap()
        .expect("pull big");
    assert_eq!(
        pulled.into_inner().image_ref,
        env.config_digest(&env.image("big:latest"))
    );

    // Every layer of big is whole, busybox's included: its command checks
    // the sums of the big parts with busybox's sha256sum.
    let cfg = container_config(
        "sums",
        &big,
        &["busybox", "sha256sum", "-c", "/big/SHA256SUMS"],
    );
    let id = e.run_config(cfg).await;
    let st = e.wait_exit(&id).await;
    assert_eq!(st.exit_code, 0, "{}", e.log("sums"));

    // And once nothing uses them, the layers and blobs go.
    e.remove(&id).await;
    images
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: big,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let root = &e.d.paths.root;
    let left = |dir: &str| -> Vec<String> {
        std::fs::read_dir(root.join(dir))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(left("layers"), Vec::<String>::new());
    assert_eq!(left("content/blobs/sha256"), Vec::<String>::new());
}

async fn fs_info(images: &mut Images) -> (FilesystemUsage, FilesystemUsage) {
    let r = images
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    (
        r.image_filesystems[0].clone(),
        r.container_filesystems[0].clone(),
    )
}

fn used(u: &FilesystemUsage) -> u64 {
    u.used_bytes.as_ref().map_or(0, |v| v.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_fs_info_is_accounted_not_walked_per_call() {
    let env = testenv();
    let mut e = env_built("fsinfo", NamespaceMode::Container, |b| b).await;
    let mut images = e.d.images().await;
    let (image_fs, before) = fs_info(&mut images).await;
    assert!(used(&image_fs) > 0);

    // A container's writes show up within a sample's age.
    let id = e
        .run(
            "writer",
            "dd if=/dev/zero of=/blob bs=1M count=4 && sleep 3600",
        )
        .await;
    let want = used(&before) + (4 << 20);
    let grown = wait_for("the write to be measured", Duration::from_secs(40), || {
        let mut images = images.clone();
        async move {
            let (_, c) = fs_info(&mut images).await;
            (used(&c) >= want).then_some(c)
        }
    })
    .await;
    println!(
        "writable layers: {} bytes, then {} bytes",
        used(&before),
        used(&grown)
    );

    // Calls in a row are answered from one measurement, dated.
    let walks = |d: &Daemon| d.logs().matches("writable layers measured").count();
    let walked = walks(&e.d);
    let mut stamps = std::collections::BTreeSet::new();
    for _ in 0..50 {
        stamps.insert(fs_info(&mut images).await.1.timestamp);
    }
    assert!(
        walks(&e.d) <= walked + 1,
        "{} walks for 50 calls",
        walks(&e.d) - walked
    );
    assert!(stamps.len() <= 2, "{} different measurements", stamps.len());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!(
        stamps
            .iter()
            .all(|t| *t <= now && *t > now - 60_000_000_000)
    );

    // Images are counted at once: a pull adds, a removal takes away.
    // Not zstd: it is busybox recompressed, the same image.
    let layers = env.image("layers:latest");
    let spec = || {
        Some(ImageSpec {
            image: layers.clone(),
            ..Default::default()
        })
    };
    images
        .pull_image(PullImageRequest {
            image: spec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (with_layers, _) = fs_info(&mut images).await;
    assert!(
        used(&with_layers) > used(&image_fs),
        "{with_layers:?} vs {image_fs:?}"
    );
    images
        .remove_image(RemoveImageRequest { image: spec() })
        .await
        .unwrap();
    let (after, _) = fs_info(&mut images).await;
    assert_eq!(used(&after), used(&image_fs));
    e.stop(&id, 0).await;
}
