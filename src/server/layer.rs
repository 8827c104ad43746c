//! A tower layer around every gRPC call: one tracing span per request, and a
//! panic in a handler answered as `Internal` instead of a dropped connection.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use tracing::Instrument;

/// Environment variable naming a gRPC method (e.g. `Version`) whose handler
/// panics on purpose; the integration tests use it to prove panics are
/// contained. Unset in production.
pub const FAULT_PANIC_ENV: &str = "CRIUS_FAULT_PANIC_METHOD";

/// Wraps the gRPC router.
#[derive(Clone, Default)]
pub struct RequestLayer {
    panic_method: Option<Arc<str>>,
}

impl RequestLayer {
    /// Reads the fault-injection setting from the environment once.
    pub fn from_env() -> Self {
        RequestLayer {
            panic_method: std::env::var(FAULT_PANIC_ENV)
                .ok()
                .filter(|m| !m.is_empty())
                .map(Arc::from),
        }
    }
}

impl<S> tower::Layer<S> for RequestLayer {
    type Service = RequestService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestService {
            inner,
            panic_method: self.panic_method.clone(),
        }
    }
}

/// See [`RequestLayer`].
#[derive(Clone)]
pub struct RequestService<S> {
    inner: S,
    panic_method: Option<Arc<str>>,
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
        let path = req.uri().path();
        let method = path.rsplit('/').next().unwrap_or(path).to_string();
        let span = tracing::info_span!("cri", method = %method);
        let inject_panic = self.panic_method.as_deref() == Some(method.as_str());
        // The ready service is the one that must be called; keep a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let handler = async move {
            if inject_panic {
                panic!("fault injected into {method} by {FAULT_PANIC_ENV}");
            }
            inner.call(req).await
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
                        Ok(resp)
                    }
                    Ok(Err(e)) => Err(e),
                    Err(panic) => {
                        let what = panic_message(panic.as_ref());
                        tracing::error!(panic = %what, "handler panicked; answering Internal");
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

fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}
