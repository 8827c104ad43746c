//! `GET /metrics` over plain HTTP/1.1 on the `[metrics] address`
//! listener. The page comes from a closure the daemon gives (the core
//! refreshes its counts, then encodes), so this module knows nothing of
//! the core. Each connection has a few seconds to send its request.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};

/// How long a connection may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The text exposition format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Page = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

fn reply(status: http::StatusCode, body: String) -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

fn answer(page: &Page, req: &http::Request<hyper::body::Incoming>) -> http::Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return reply(http::StatusCode::NOT_FOUND, "see /metrics\n".into());
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return reply(http::StatusCode::METHOD_NOT_ALLOWED, String::new());
    }
    match page() {
        Ok(text) => {
            let mut r = reply(http::StatusCode::OK, text);
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(CONTENT_TYPE),
            );
            r
        }
        Err(e) => reply(http::StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// Serves `page` at `/metrics` on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    page: impl Fn() -> Result<String, String> + Send + Sync + 'static,
) {
    let page: Page = Arc::new(page);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let page = page.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let r = answer(&page, &req);
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}
