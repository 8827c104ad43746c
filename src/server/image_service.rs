//! `runtime.v1.ImageService` handlers: validate, call the core, map errors.

use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use super::unimplemented;
use crate::runtime::Runtime;

type Reply<T> = Result<Response<T>, Status>;

/// Serves the ImageService from the shared core.
pub struct ImageServiceHandler {
    #[allow(dead_code)] // used once images are built
    rt: Arc<Runtime>,
}

impl ImageServiceHandler {
    pub fn new(rt: Arc<Runtime>) -> Self {
        ImageServiceHandler { rt }
    }
}

#[tonic::async_trait]
impl ImageService for ImageServiceHandler {
    async fn list_images(&self, _: Request<ListImagesRequest>) -> Reply<ListImagesResponse> {
        unimplemented("ListImages")
    }
    async fn image_status(&self, _: Request<ImageStatusRequest>) -> Reply<ImageStatusResponse> {
        unimplemented("ImageStatus")
    }
    async fn pull_image(&self, _: Request<PullImageRequest>) -> Reply<PullImageResponse> {
        unimplemented("PullImage")
    }
    async fn remove_image(&self, _: Request<RemoveImageRequest>) -> Reply<RemoveImageResponse> {
        unimplemented("RemoveImage")
    }
    async fn image_fs_info(&self, _: Request<ImageFsInfoRequest>) -> Reply<ImageFsInfoResponse> {
        unimplemented("ImageFsInfo")
    }
}
