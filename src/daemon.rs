//! Running the daemon: state directories, the root lock, the store, the
//! socket, and an orderly stop on SIGTERM/SIGINT that leaves containers alone.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::runtime::Runtime;
use crate::server::{self, Socket};
use crate::store::{RootLock, Store};

/// How long in-flight requests may run after a stop signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Before anything is visible (the socket): a stop signal that arrives
    // during start-up must still mean an orderly stop.
    let stop = stop_signal()?;
    make_dir(&config.root, 0o711)?;
    make_dir(&config.runroot, 0o711)?;
    let _lock = RootLock::acquire(&config.root)?;
    // The systemd driver makes every cgroup through systemd: without it
    // the daemon cannot run a pod, so it does not start.
    let systemd = match config.runtime.cgroup_driver {
        crate::config::CgroupDriver::Systemd => {
            Some(crate::cgroups::systemd::Systemd::connect().await?)
        }
        crate::config::CgroupDriver::Cgroupfs => None,
    };
    let store = Store::open(&config.root)
        .with_context(|| format!("opening the state store in {}", config.root.display()))?;
    let socket = Socket::bind(&config.listen)?;
    let streaming =
        tokio::net::TcpListener::bind((config.streaming.address, config.streaming.port))
            .await
            .with_context(|| {
                format!(
                    "binding the streaming server on {}:{}",
                    config.streaming.address, config.streaming.port
                )
            })?;
    let tls = match (&config.streaming.tls_cert, &config.streaming.tls_key) {
        (Some(cert), Some(key)) => Some(
            crate::streaming::server::tls_acceptor(cert, key)
                .map_err(|e| anyhow::anyhow!("streaming TLS: {e}"))?,
        ),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let streaming_url = format!("{scheme}://{}", streaming.local_addr()?);
    let runtime = Arc::new(Runtime::new(
        config.clone(),
        Arc::new(store),
        streaming_url.clone(),
        systemd,
    )?);
    // What a crash left half done is repaired before any request comes.
    runtime.reconcile().await;
    if let Some(addr) = config.metrics.address {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
        let rt = runtime.clone();
        tokio::spawn(crate::telemetry::serve::serve(listener, move || {
            rt.metrics_page()
        }));
        tracing::info!(%addr, "metrics endpoint at /metrics");
    }
    tokio::spawn(crate::streaming::server::serve(
        streaming,
        runtime.streaming(),
        tls,
        crate::streaming::server::Limits::from_config(&config.streaming),
    ));
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %config.listen.display(),
        root = %config.root.display(),
        runroot = %config.runroot.display(),
        cgroup_driver = ?config.runtime.cgroup_driver,
        streaming = %streaming_url,
        "crius serving CRI v1"
    );
    server::serve(runtime, socket, stop, SHUTDOWN_GRACE).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Creates `dir` and its parents; a new leaf gets `mode`.
fn make_dir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode of {}", dir.display()))?;
    }
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
