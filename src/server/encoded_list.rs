//! ListContainers answered from cached encodings. kubelet lists every
//! container about once a second; building each `Container` message anew
//! (cloning its labels and annotations maps) and encoding it again was most
//! of the call's cost. A container's listing changes only with its state, so
//! each one's encoding is kept, keyed by its record (pointer identity) and
//! state, and an answer is those bytes framed as `repeated Container
//! containers = 1`: what prost would write for the same message.
//!
//! The generated `RuntimeServiceServer` fixes each method's response type,
//! so this path is a small service in front of it that takes only the
//! ListContainers method and leaves every other method to it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use futures::future::BoxFuture;
use k8s_cri::v1::ListContainersRequest;
use prost::Message;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::runtime_service::{RuntimeServiceHandler, listed_container};
use crate::runtime::{ContainerRecord, ContainerView};

const LIST_CONTAINERS: &str = "/runtime.v1.RuntimeService/ListContainers";

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

/// Encodings of listed containers by id.
#[derive(Default)]
pub struct EncodedContainers {
    slots: Mutex<(u64, HashMap<String, Slot>)>,
}

impl EncodedContainers {
    /// The answer for `views`. An unfiltered listing (`all`) also drops the
    /// encodings of containers that are gone.
    pub fn answer(&self, views: Vec<ContainerView>, all: bool) -> EncodedList {
        let mut guard = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let (generation, slots) = &mut *guard;
        if all {
            *generation += 1;
        }
        let mut entries = Vec::with_capacity(views.len());
        for v in views {
            let state = v.run.state as i32;
            let fresh = slots.get_mut(&v.record.id).filter(|s| {
                s.state == state && std::ptr::eq(s.record.as_ptr(), Arc::as_ptr(&v.record))
            });
            let bytes = match fresh {
                Some(s) => {
                    s.seen = *generation;
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
                        seen: *generation,
                    };
                    slots.insert(id, slot);
                    bytes
                }
            };
            entries.push(bytes);
        }
        if all {
            let current = *generation;
            slots.retain(|_, s| s.seen == current);
        }
        EncodedList { entries }
    }
}

/// A ListContainersResponse as its containers' encodings.
#[derive(Debug, Default)]
pub struct EncodedList {
    entries: Vec<Bytes>,
}

impl EncodedList {
    /// The encoded response's length.
    fn encoded_len(&self) -> usize {
        self.entries
            .iter()
            .map(|e| 1 + prost::length_delimiter_len(e.len()) + e.len())
            .sum()
    }

    /// Writes the response: each entry as field 1, length-delimited.
    fn write_to(&self, buf: &mut impl BufMut) {
        for e in &self.entries {
            prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, buf);
            prost::encoding::encode_varint(e.len() as u64, buf);
            buf.put_slice(e);
        }
    }
}

/// The codec of the ListContainers method: a prost request in, pre-encoded
/// entries out.
#[derive(Debug, Default, Clone, Copy)]
struct ListCodec;

impl Codec for ListCodec {
    type Encode = EncodedList;
    type Decode = ListContainersRequest;
    type Encoder = ListCodec;
    type Decoder = ListCodec;

    fn encoder(&mut self) -> Self::Encoder {
        ListCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        ListCodec
    }
}

impl Encoder for ListCodec {
    type Item = EncodedList;
    type Error = Status;

    fn encode(&mut self, item: EncodedList, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.write_to(buf);
        Ok(())
    }
}

impl Decoder for ListCodec {
    type Item = ListContainersRequest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        ListContainersRequest::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding ListContainersRequest: {e}")))
    }
}

/// The method as a tonic unary service.
struct ListMethod(Arc<RuntimeServiceHandler>);

impl UnaryService<ListContainersRequest> for ListMethod {
    type Response = EncodedList;
    type Future = BoxFuture<'static, Result<Response<EncodedList>, Status>>;

    fn call(&mut self, req: Request<ListContainersRequest>) -> Self::Future {
        let handler = self.0.clone();
        Box::pin(async move { handler.list_encoded(req.into_inner()).map(Response::new) })
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
        let method = ListMethod(self.handler.clone());
        let max = Some(self.max_message);
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(ListCodec).apply_max_message_size_config(max, max);
            Ok(grpc.unary(method, req).await)
        })
    }
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
        let mut buf = Vec::new();
        list.write_to(&mut buf);
        assert_eq!(buf.len(), list.encoded_len());
        ListContainersResponse::decode(&buf[..]).expect("a valid response")
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
            slots.1.len(),
            1,
            "a, not listed by the unfiltered call, is dropped"
        );
    }
}
