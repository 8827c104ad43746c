//! ListContainers answered from cached encodings. kubelet lists every
//! container about once a second; building each `Container` message anew
//! (cloning its labels and annotations maps) and encoding it again was most
//! of the call's cost. A container's listing changes only with its state, so
//! each one's encoding is kept, keyed by its record (pointer identity) and
//! state, and an answer is those bytes framed as `repeated Container
//! containers = 1`: what prost would write for the same message.
//!
//! The unfiltered answer (kubelet's) is also kept whole, as the gRPC
//! message it is sent as, and sent again while every container's record and
//! state are the same: no per-container lookups, and no copy of a few
//! hundred KiB into tonic's encode buffer per call (the body is the kept
//! bytes; h2 writes them to the socket straight from there).
//!
//! The generated `RuntimeServiceServer` fixes each method's response type,
//! so this path is a small service in front of it that takes only the
//! ListContainers method and leaves every other method to it. It reads the
//! request and writes the answer as gRPC frames itself (one uncompressed
//! message each way, `grpc-status` in the trailers), as tonic would.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use http_body::Frame;
use http_body_util::{BodyExt, Limited, StreamBody};
use k8s_cri::v1::ListContainersRequest;
use prost::Message;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

use super::runtime_service::{RuntimeServiceHandler, listed_container};
use crate::runtime::{ContainerRecord, ContainerView};

const LIST_CONTAINERS: &str = "/runtime.v1.RuntimeService/ListContainers";

/// A gRPC message's prefix: the compressed flag and the length (u32, big
/// endian).
const PREFIX: usize = 5;

/// One container's cached encoding. The weak reference keeps the record's
/// allocation (not its contents) alive, so a pointer match is never a new
/// record at a reused address.
struct Slot {
    record: Weak<ContainerRecord>,
    state: i32,
    bytes: Bytes,
    /// The unfiltered listing that last saw it.
    seen: u64,
}

/// The last unfiltered answer: the records (weak, as in [`Slot`]) and
/// states it was made of, in listing order, and the message.
struct Whole {
    made_of: Vec<(Weak<ContainerRecord>, i32)>,
    list: EncodedList,
}

impl Whole {
    fn matches(&self, views: &[ContainerView]) -> bool {
        self.made_of.len() == views.len()
            && self.made_of.iter().zip(views).all(|((record, state), v)| {
                *state == v.run.state as i32
                    && std::ptr::eq(record.as_ptr(), Arc::as_ptr(&v.record))
            })
    }
}

#[derive(Default)]
struct Slots {
    generation: u64,
    by_id: HashMap<String, Slot>,
    whole: Option<Whole>,
}

/// Encodings of listed containers by id, and the last unfiltered answer.
#[derive(Default)]
pub struct EncodedContainers {
    slots: Mutex<Slots>,
}

impl EncodedContainers {
    /// The answer for `views`. An unfiltered listing (`all`) also drops the
    /// encodings of containers that are gone.
    pub fn answer(&self, views: Vec<ContainerView>, all: bool) -> EncodedList {
        let mut guard = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slots = &mut *guard;
        if all && let Some(whole) = slots.whole.as_ref().filter(|w| w.matches(&views)) {
            return whole.list.clone();
        }
        if all {
            slots.generation += 1;
        }
        let generation = slots.generation;
        let made_of: Vec<(Weak<ContainerRecord>, i32)> = if all {
            views
                .iter()
                .map(|v| (Arc::downgrade(&v.record), v.run.state as i32))
                .collect()
        } else {
            Vec::new()
        };
        let mut entries = Vec::with_capacity(views.len());
        for v in views {
            let state = v.run.state as i32;
            let fresh = slots.by_id.get_mut(&v.record.id).filter(|s| {
                s.state == state && std::ptr::eq(s.record.as_ptr(), Arc::as_ptr(&v.record))
            });
            let bytes = match fresh {
                Some(s) => {
                    s.seen = generation;
                    s.bytes.clone()
                }
                None => {
                    let record = Arc::downgrade(&v.record);
                    let id = v.record.id.clone();
                    let bytes = Bytes::from(listed_container(v).encode_to_vec());
                    let slot = Slot {
                        record,
                        state,
                        bytes: bytes.clone(),
                        seen: generation,
                    };
                    slots.by_id.insert(id, slot);
                    bytes
                }
            };
            entries.push(bytes);
        }
        let list = EncodedList::new(&entries);
        if all {
            slots.by_id.retain(|_, s| s.seen == generation);
            slots.whole = Some(Whole {
                made_of,
                list: list.clone(),
            });
        }
        list
    }
}

/// A ListContainersResponse as the gRPC message that carries it: the
/// 5-byte prefix, then each container's encoding as field 1,
/// length-delimited (what prost writes for the response).
#[derive(Debug, Clone)]
pub struct EncodedList {
    message: Bytes,
}

impl EncodedList {
    fn new(entries: &[Bytes]) -> EncodedList {
        let len: usize = entries
            .iter()
            .map(|e| 1 + prost::length_delimiter_len(e.len()) + e.len())
            .sum();
        let mut buf = BytesMut::with_capacity(PREFIX + len);
        buf.put_u8(0);
        // Past u32 the answer is refused before it is sent (`response`).
        buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        for e in entries {
            prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut buf);
            prost::encoding::encode_varint(e.len() as u64, &mut buf);
            buf.put_slice(e);
        }
        EncodedList {
            message: buf.freeze(),
        }
    }

    /// The encoded response, without the gRPC prefix.
    #[cfg(test)]
    fn response(&self) -> &[u8] {
        &self.message[PREFIX..]
    }
}

/// The RuntimeService with ListContainers answered from cached encodings.
#[derive(Clone)]
pub struct WithEncodedList<S> {
    inner: S,
    handler: Arc<RuntimeServiceHandler>,
    max_message: usize,
}

impl<S> WithEncodedList<S> {
    /// Serves ListContainers from `handler`, every other method by `inner`.
    pub fn new(inner: S, handler: Arc<RuntimeServiceHandler>, max_message: usize) -> Self {
        WithEncodedList {
            inner,
            handler,
            max_message,
        }
    }
}

impl<S: NamedService> NamedService for WithEncodedList<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for WithEncodedList<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != LIST_CONTAINERS {
            return Box::pin(self.inner.call(req));
        }
        let handler = self.handler.clone();
        let max = self.max_message;
        Box::pin(async move {
            let answer = async {
                let req = read_request(req.into_body(), max).await?;
                let list = handler.list_encoded(req)?;
                check_size(&list, max)?;
                Ok::<_, Status>(list)
            };
            Ok(match answer.await {
                Ok(list) => grpc_response(list.message),
                Err(status) => status.into_http(),
            })
        })
    }
}

/// The request: one uncompressed gRPC message of at most `max` bytes.
async fn read_request(body: Body, max: usize) -> Result<ListContainersRequest, Status> {
    let mut data = Limited::new(body, max.saturating_add(PREFIX))
        .collect()
        .await
        .map_err(|e| match e.downcast::<Status>() {
            Ok(status) => *status,
            Err(e) => Status::resource_exhausted(format!("reading the request: {e}")),
        })?
        .to_bytes();
    if data.len() < PREFIX {
        return Err(Status::internal("Missing request message."));
    }
    let compressed = data.get_u8();
    let len = data.get_u32() as usize;
    if compressed != 0 {
        return Err(Status::unimplemented(
            "Message compressed, compression support not enabled.",
        ));
    }
    if len != data.len() {
        return Err(Status::internal(format!(
            "expected one request message of {len} bytes, got {} bytes",
            data.len()
        )));
    }
    ListContainersRequest::decode(data)
        .map_err(|e| Status::internal(format!("decoding ListContainersRequest: {e}")))
}

/// Refuses an answer larger than the server sends (tonic's check and text).
fn check_size(list: &EncodedList, max: usize) -> Result<(), Status> {
    let len = list.message.len() - PREFIX;
    if len > max || len > u32::MAX as usize {
        return Err(Status::out_of_range(format!(
            "Error, encoded message length too large: found {len} bytes, the limit is: {max} bytes"
        )));
    }
    Ok(())
}

/// A unary gRPC answer: `message` as the body, `grpc-status: 0` in the
/// trailers.
fn grpc_response(message: Bytes) -> http::Response<Body> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = [Frame::data(message), Frame::trailers(trailers)];
    let body = StreamBody::new(futures::stream::iter(frames.map(Ok::<_, Infallible>)));
    let mut response = http::Response::new(Body::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RunState;
    use k8s_cri::v1::{
        Container, ContainerConfig, ContainerMetadata, ContainerState, ListContainersResponse,
    };

    fn view(id: &str, state: ContainerState) -> ContainerView {
        let mut config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: format!("name-{id}"),
                attempt: 2,
            }),
            ..Default::default()
        };
        config
            .labels
            .insert("io.kubernetes.pod.name".into(), "web".into());
        config.annotations.insert("a".into(), "b".repeat(300));
        let record = ContainerRecord {
            id: id.into(),
            pod_id: "pod".into(),
            config,
            image_id: "sha256:1".into(),
            image_ref: "busybox".into(),
            log_path: String::new(),
            created_at: 7,
            cgroup: String::new(),
            layers: Vec::new(),
            stop_signal: 15,
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            resources: None,
            start_error: None,
            image_volumes: Vec::new(),
        };
        ContainerView {
            record: Arc::new(record),
            run: RunState {
                state,
                pid: None,
                started_at: 0,
                exit: None,
            },
        }
    }

    fn decode(list: &EncodedList) -> ListContainersResponse {
        let len = u32::from_be_bytes(list.message[1..PREFIX].try_into().unwrap());
        assert_eq!(list.message[0], 0, "not compressed");
        assert_eq!(len as usize, list.response().len());
        ListContainersResponse::decode(list.response()).expect("a valid response")
    }

    #[test]
    fn the_answer_is_what_prost_encodes() {
        use ContainerState::{ContainerCreated as Created, ContainerRunning as Running};
        let cache = EncodedContainers::default();
        let views = vec![view("a", Created), view("b", Running)];
        let want: Vec<Container> = views.iter().cloned().map(listed_container).collect();
        let got = decode(&cache.answer(views.clone(), true));
        assert_eq!(got.containers, want);
        // Served from the cache the second time, same bytes.
        let again = decode(&cache.answer(views, true));
        assert_eq!(again.containers, want);
    }

    #[test]
    fn the_unfiltered_answer_is_sent_again_until_a_container_changes() {
        use ContainerState::{ContainerCreated as Created, ContainerRunning as Running};
        let cache = EncodedContainers::default();
        let views = vec![view("a", Created), view("b", Created)];
        let first = cache.answer(views.clone(), true);
        let again = cache.answer(views.clone(), true);
        assert_eq!(
            first.message.as_ptr(),
            again.message.as_ptr(),
            "the same bytes, not a copy"
        );
        // A filtered answer leaves the whole one in place.
        let one = decode(&cache.answer(vec![views[1].clone()], false));
        assert_eq!(one.containers.len(), 1);
        assert_eq!(
            cache.answer(views.clone(), true).message.as_ptr(),
            first.message.as_ptr()
        );
        // A state change, a container gone: answered anew.
        let mut running = views.clone();
        running[0].run.state = Running;
        let got = decode(&cache.answer(running.clone(), true));
        assert_eq!(got.containers[0].state, Running as i32);
        let got = decode(&cache.answer(running[1..].to_vec(), true));
        assert_eq!(got.containers.len(), 1);
        assert_eq!(got.containers[0].id, "b");
        let got = decode(&cache.answer(Vec::new(), true));
        assert!(got.containers.is_empty());
        assert_eq!(cache.answer(Vec::new(), true).message.len(), PREFIX);
    }

    #[test]
    fn a_new_state_or_record_is_encoded_anew_and_gone_ones_are_dropped() {
        use ContainerState::{ContainerCreated as Created, ContainerRunning as Running};
        let cache = EncodedContainers::default();
        let a = view("a", Created);
        let b = view("b", Created);
        cache.answer(vec![a.clone(), b.clone()], true);
        let mut a_running = a.clone();
        a_running.run.state = Running;
        let got = decode(&cache.answer(vec![a_running], false));
        assert_eq!(got.containers[0].state, Running as i32);
        // Same id, another record (a container re-made under the same id).
        let mut other = (*b.record).clone();
        other.created_at = 99;
        let b2 = ContainerView {
            record: Arc::new(other),
            run: b.run,
        };
        let got = decode(&cache.answer(vec![b2], true));
        assert_eq!(got.containers[0].created_at, 99);
        let slots = cache.slots.lock().unwrap();
        assert_eq!(
            slots.by_id.len(),
            1,
            "a, not listed by the unfiltered call, is dropped"
        );
    }
}
