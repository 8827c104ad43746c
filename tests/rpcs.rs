//! The RPCs crius serves against the vendored CRI proto: every RPC of
//! `proto/cri/api.proto` reaches a handler (none is an unknown method), and
//! the ones answered `Unimplemented` are exactly the list below, so a new
//! proto release's RPCs, and features landing, show up here.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};

/// RPCs not built yet: they answer `Unimplemented` naming themselves.
const NOT_BUILT: &[&str] = &["CheckpointContainer"];

/// `(service, rpc)` for every `rpc` line of the vendored proto.
fn proto_rpcs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proto/cri/api.proto"))
        .expect("proto/cri/api.proto");
    let mut service = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.split_whitespace().next().unwrap_or("").to_string();
        } else if let Some(rest) = line.strip_prefix("rpc ") {
            let name = rest.split('(').next().unwrap_or("").trim();
            out.push((service.clone(), name.to_string()));
        }
    }
    out
}

/// The gRPC status of calling `path` with an empty request message:
/// `(code, message)`, or `None` for a stream still open after 2 s (a
/// handler answered it).
async fn status_of(
    send: &mut hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    path: &str,
) -> Option<(String, String)> {
    let req = http::Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Full::new(Bytes::from_static(&[
            0, 0, 0, 0, 0,
        ]))))
        .expect("request");
    let resp = send.send_request(req).await.expect("send");
    let field = |h: &http::HeaderMap, k: &str| {
        h.get(k)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    if let Some(code) = field(resp.headers(), "grpc-status") {
        let msg = field(resp.headers(), "grpc-message").unwrap_or_default();
        return Some((code, msg));
    }
    let body = tokio::time::timeout(Duration::from_secs(2), resp.into_body().collect())
        .await
        .ok()?
        .expect("body");
    let trailers = body.trailers().cloned().unwrap_or_default();
    Some((
        field(&trailers, "grpc-status").unwrap_or_default(),
        field(&trailers, "grpc-message").unwrap_or_default(),
    ))
}

#[tokio::test]
async fn every_proto_rpc_is_served_and_the_unbuilt_ones_say_so() {
    let rpcs = proto_rpcs();
    assert!(
        rpcs.len() >= 41,
        "{} RPCs parsed from the proto",
        rpcs.len()
    );
    let d = Daemon::start();
    let mut send = h2_connection(&d.paths.socket).await;
    let mut unimplemented = Vec::new();
    for (service, rpc) in &rpcs {
        let path = format!("/runtime.v1.{service}/{rpc}");
        match status_of(&mut send, &path).await {
            // tonic's answer for a path no handler serves: no message.
            Some((code, msg)) if code == "12" && msg.is_empty() => {
                panic!("{path} is not served (unknown method)")
            }
            Some((code, msg)) if code == "12" => {
                assert!(msg.contains(rpc.as_str()), "{path}: {msg}");
                unimplemented.push(rpc.as_str());
            }
            _ => {}
        }
    }
    unimplemented.sort();
    assert_eq!(unimplemented, NOT_BUILT, "RPCs answering Unimplemented");
}
