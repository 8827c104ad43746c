//! Test-only crash points. In a build with the `fault-injection` feature,
//! the daemon started with `CRIUS_FAULT_CRASH_AT=<point>` kills itself with
//! SIGKILL when it reaches that point, so tests can make the half-done
//! states a crash leaves (and check startup reconciliation repairs them).
//! Without the feature every point is a no-op.

/// The environment variable naming the crash point.
pub const CRASH_AT_ENV: &str = "CRIUS_FAULT_CRASH_AT";

/// Dies as `kill -9` would if `point` is the configured crash point.
pub fn crash_point(point: &str) {
    #[cfg(feature = "fault-injection")]
    {
        static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        if AT
            .get_or_init(|| std::env::var(CRASH_AT_ENV).ok())
            .as_deref()
            == Some(point)
        {
            tracing::warn!(point, "fault injected: the daemon kills itself");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = point;
}
