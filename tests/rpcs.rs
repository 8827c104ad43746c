//! The RPCs crius serves against the vendored CRI proto: every RPC of
//! `proto/cri/api.proto` reaches a handler (none is an unknown method), and
//! the ones answered `Unimplemented` are exactly the list below, so a new
//! proto release's RPCs, and features landing, show up here.

mod common;

use std::time::Duration;

use common::*;

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
        match grpc_status(&mut send, &path, &[], None, Duration::from_secs(2)).await {
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
