//! A tower layer around every gRPC call: one tracing span per request, a
//! panic in a handler answered as `Internal` instead of a dropped
//! connection, and the client's deadline (`grpc-timeout`) answered as
//! DEADLINE_EXCEEDED. tonic's own timeout answers CANCELLED ("Timeout
//! expired"), which clients such as critest read as the client cancelling;
//! this layer's timer runs a little earlier and is polled first, so its
//! answer always wins.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use tracing::Instrument;

use crate::runtime::Telemetry;

/// Environment variable naming a gRPC method (e.g. `Version`) whose handler
/// panics on purpose; the integration tests use it to prove panics are
/// contained. Read only in a build with the `fault-injection` feature (the
/// test command's); a production binary ignores it.
pub const FAULT_PANIC_ENV: &str = "CRIUS_FAULT_PANIC_METHOD";

/// Wraps the gRPC router.
#[derive(Clone, Default)]
pub struct RequestLayer {
    panic_method: Option<Arc<str>>,
    telemetry: Option<Arc<Telemetry>>,
}

impl RequestLayer {
    /// Reads the fault-injection setting from the environment once, in a
    /// build with the `fault-injection` feature.
    pub fn from_env() -> Self {
        #[cfg(feature = "fault-injection")]
        let panic_method = std::env::var(FAULT_PANIC_ENV)
            .ok()
            .filter(|m| !m.is_empty())
            .map(Arc::from);
        #[cfg(not(feature = "fault-injection"))]
        let panic_method = None;
        RequestLayer {
            panic_method,
            telemetry: None,
        }
    }

    /// Records each call's method, code and time in `telemetry`.
    pub fn with_telemetry(self, telemetry: Arc<Telemetry>) -> Self {
        RequestLayer {
            telemetry: Some(telemetry),
            ..self
        }
    }
}

impl<S> tower::Layer<S> for RequestLayer {
    type Service = RequestService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestService {
            inner,
            panic_method: self.panic_method.clone(),
            telemetry: self.telemetry.clone(),
        }
    }
}

/// See [`RequestLayer`].
#[derive(Clone)]
pub struct RequestService<S> {
    inner: S,
    panic_method: Option<Arc<str>>,
    telemetry: Option<Arc<Telemetry>>,
}

type HttpResponse = http::Response<tonic::body::Body>;

impl<S, B> tower::Service<http::Request<B>> for RequestService<S>
where
    S: tower::Service<http::Request<B>, Response = HttpResponse> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<HttpResponse, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let deadline = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        // Taken before tonic's timer for the same header starts (it calls
        // this service first), so this deadline is always the earlier.
        let started = tokio::time::Instant::now();
        let path = req.uri().path();
        let method = path.rsplit('/').next().unwrap_or(path).to_string();
        let span = tracing::info_span!("cri", method = %method);
        let inject_panic = self.panic_method.as_deref() == Some(method.as_str());
        let (telemetry, observed) = (self.telemetry.clone(), method.clone());
        let observe = move |code: &str, took: std::time::Duration| {
            if let Some(t) = &telemetry {
                t.observe_rpc(&observed, code, took);
            }
        };
        // The ready service is the one that must be called; keep a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let handler = async move {
            if inject_panic {
                panic!("fault injected into {method} by {FAULT_PANIC_ENV}");
            }
            let call = inner.call(req);
            match deadline {
                // A millisecond early, and polled before tonic's timer.
                Some(d) => {
                    match tokio::time::timeout_at(started + d.saturating_sub(EARLY), call).await {
                        Ok(r) => r,
                        Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                            "deadline of {d:?} exceeded"
                        ))
                        .into_http()),
                    }
                }
                None => call.await,
            }
        };
        Box::pin(
            async move {
                let start = Instant::now();
                tracing::debug!("request");
                match AssertUnwindSafe(handler).catch_unwind().await {
                    Ok(Ok(resp)) => {
                        let code = resp
                            .headers()
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("0");
                        tracing::debug!(
                            code,
                            elapsed_us = start.elapsed().as_micros() as u64,
                            "response"
                        );
                        observe(code, start.elapsed());
                        Ok(resp)
                    }
                    Ok(Err(e)) => Err(e),
                    Err(panic) => {
                        let what = panic_message(panic.as_ref());
                        tracing::error!(panic = %what, "handler panicked; answering Internal");
                        observe("13", start.elapsed());
                        Ok(tonic::Status::internal(format!(
                            "internal error: handler panicked: {what}"
                        ))
                        .into_http())
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// How much earlier than the client's deadline this layer answers.
const EARLY: std::time::Duration = std::time::Duration::from_millis(1);

/// A `grpc-timeout` header value: at most 8 digits and a unit (H, M, S,
/// m, u, n).
fn parse_grpc_timeout(v: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (num, unit) = v.split_at(v.len() - 1);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("123456789S"), None, "more than 8 digits");
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
    }
}
