//! The Kubernetes CRI v1 API as crius builds it: generated at compile time
//! from `proto/cri/api.proto`, vendored from kubernetes/cri-api so crius
//! serves the current API (streaming list RPCs, image volume sub paths,
//! `image_ref` in mounts, pod resize) rather than a crate's older copy.
//! crius depends on this crate under the name `k8s_cri`.

/// API version v1 (`runtime.v1`).
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

/// The API's schema as a serialized `google.protobuf.FileDescriptorSet`, so
/// a tool can walk every service, message and field (the fuzz test builds
/// random requests for every RPC from it).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cri/descriptor.bin"));
