//! The CRI gRPC server: the unix socket, the tonic services and the mapping of
//! core errors to gRPC statuses. Handlers stay thin; the work is in
//! [`crate::runtime`] and the modules it uses.

mod authority;
mod encoded_list;
mod image_service;
pub mod layer;
mod runtime_service;
mod stats;
pub mod validate;

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;

use crate::error::Error;
use crate::runtime::Runtime;

/// Largest gRPC message sent or received: kubelet lists thousands of
/// containers in one message (cri-o allows 80 MiB as well).
pub const MAX_MESSAGE_SIZE: usize = 80 * 1024 * 1024;

/// Errors setting up or running the gRPC server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Creating the socket's directory, inspecting, removing or binding the socket failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The listen path exists and is something other than a socket (never deleted, in case it is a
    /// misconfiguration).
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// A live server already accepts connections on the socket (or its listener was already taken).
    #[error("another process is serving on {0}")]
    InUse(PathBuf),
    /// tonic's server failed while serving.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Status;
        match e {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            e @ Error::Unimplemented(_) => Status::unimplemented(e.to_string()),
            e @ (Error::Store(_) | Error::Internal(_)) if e.is_out_of_space() => {
                tracing::error!(error = %e, "out of space");
                Status::resource_exhausted(format!(
                    "the node's state filesystem (crius root or runroot) is full: {e}"
                ))
            }
            e @ (Error::Store(_) | Error::Internal(_)) => {
                tracing::error!(error = %e, "internal error");
                Status::internal(e.to_string())
            }
        }
    }
}

/// A bound CRI socket; removes the socket file when dropped, unless another
/// daemon has replaced it since.
pub struct Socket {
    listener: Option<UnixListener>,
    path: PathBuf,
    ino: u64,
}

impl Socket {
    /// Binds `path` with mode 0660 owned by root. A stale socket (nobody
    /// answers on it) is replaced; a live one is an error.
    pub fn bind(path: &Path) -> Result<Socket, ServerError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| ServerError::Io { path: p, source }
        };
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(ServerError::InUse(path.to_path_buf()));
                }
                tracing::info!(path = %path.display(), "replacing stale socket");
            }
            Ok(_) => return Err(ServerError::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(path)(e)),
        }
        // Bind under a temporary name, fix mode and owner, then rename into
        // place, so nobody ever connects to a socket with looser permissions.
        let tmp = dir.join(format!(
            ".{}.{}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("crius.sock"),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        let std_listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(io(&tmp))?;
        let setup = || -> std::io::Result<u64> {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
            if nix::unistd::geteuid().is_root() {
                std::os::unix::fs::chown(&tmp, Some(0), Some(0))?;
            }
            std_listener.set_nonblocking(true)?;
            let ino = std::fs::metadata(&tmp)?.ino();
            std::fs::rename(&tmp, path)?;
            Ok(ino)
        };
        let ino = match setup() {
            Ok(ino) => ino,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io(path)(e));
            }
        };
        let listener = UnixListener::from_std(std_listener).map_err(io(path))?;
        Ok(Socket {
            listener: Some(listener),
            path: path.to_path_buf(),
            ino,
        })
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Serves both CRI services on `socket` until `shutdown` resolves, then lets
/// in-flight requests finish for at most `grace`. Containers are never touched.
pub async fn serve(
    runtime: Arc<Runtime>,
    mut socket: Socket,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), ServerError> {
    let listener = socket
        .listener
        .take()
        .ok_or_else(|| ServerError::InUse(socket.path.clone()))?;
    let telemetry = runtime.telemetry();
    let handler = Arc::new(runtime_service::RuntimeServiceHandler::new(runtime.clone()));
    let rt = RuntimeServiceServer::from_arc(handler.clone())
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let rt = encoded_list::WithEncodedList::new(rt, handler, MAX_MESSAGE_SIZE);
    let img = ImageServiceServer::new(image_service::ImageServiceHandler::new(runtime))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new requests, finishing in-flight ones");
        let _ = stopping_tx.send(());
    };
    let server = tonic::transport::Server::builder()
        .layer(layer::RequestLayer::from_env().with_telemetry(telemetry))
        .add_service(rt)
        .add_service(img)
        .serve_with_incoming_shutdown(
            // Every connection through authority::Conn: any client's
            // `:authority` is accepted on the unix socket.
            UnixListenerStream::new(listener).map(|c| c.map(authority::Conn::new)),
            signal,
        );
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r.map_err(ServerError::from),
        _ = stopping_rx => {}
    }
    match tokio::time::timeout(grace, server).await {
        Ok(r) => r.map_err(ServerError::from),
        Err(_) => {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "in-flight requests did not finish in time"
            );
            Ok(())
        }
    }
}

/// A server stream of list chunks (the CRI `Stream*` RPCs).
pub(crate) type Chunks<T> = Pin<Box<dyn futures::Stream<Item = Result<T, tonic::Status>> + Send>>;

/// Items per message of a `Stream*` list RPC: far below a client's 16 MiB
/// message limit even for large objects (the listing budget bounds an
/// object's size), and few messages for a whole node.
const CHUNK: usize = 256;

/// `items` as the messages of a `Stream*` list RPC: each item in exactly
/// one message of at least one item, then EOF (none for an empty list).
fn chunked<I: Send + 'static, T: Send + 'static>(
    items: Vec<I>,
    wrap: impl Fn(Vec<I>) -> T + Send + 'static,
) -> tonic::Response<Chunks<T>> {
    let mut items = items.into_iter().peekable();
    let messages = std::iter::from_fn(move || {
        items.peek()?;
        Some(Ok(wrap(items.by_ref().take(CHUNK).collect())))
    });
    tonic::Response::new(Box::pin(futures::stream::iter(messages)))
}

/// The answer for an RPC that later work will build.
fn unimplemented<T>(rpc: &'static str) -> Result<T, tonic::Status> {
    Err(Error::Unimplemented(rpc).into())
}
