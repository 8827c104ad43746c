//! The wire: malformed or foreign requests get an answer naming the
//! problem, and the monitor goes on serving.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use prost::Message;

use super::Harness;
use crate::monitor::proto::{Code, Request, Response, request::Op};
use crate::monitor::{MAX_FRAME, SOCKET, VERSION, frame};

/// Sends `bytes` as they are and reads one answer frame.
fn raw_call(h: &Harness, bytes: &[u8]) -> Response {
    let mut s = UnixStream::connect(h.path(SOCKET)).unwrap();
    s.write_all(bytes).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    Response::decode(body.as_slice()).unwrap()
}

#[tokio::test]
async fn bad_requests_are_answered_and_the_monitor_goes_on() {
    let h = Harness::start();
    let other_version = Request {
        version: VERSION + 1,
        op: Some(Op::Ping(Default::default())),
    };
    let r = raw_call(&h, &frame(&other_version));
    assert!(r.error.contains("protocol version"), "{}", r.error);
    assert_eq!(r.code, Code::Internal as i32);

    let empty = Request {
        version: VERSION,
        op: None,
    };
    assert_eq!(raw_call(&h, &frame(&empty)).error, "empty request");

    let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
    let r = raw_call(&h, &huge);
    assert!(r.error.starts_with("bad request: frame of"), "{}", r.error);

    let mut garbage = 3u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
    assert!(raw_call(&h, &garbage).error.starts_with("bad request"));

    h.client.call(Op::Ping(Default::default())).await.unwrap();
}
