//! `runtime.v1.ImageService` handlers: validate, call the core, map errors.

use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::runtime::{FsUsage, ImageUser, ImageView, PullAuth, Runtime};

type Reply<T> = Result<Response<T>, Status>;

/// Serves the ImageService from the shared core.
pub struct ImageServiceHandler {
    rt: Arc<Runtime>,
}

impl ImageServiceHandler {
    pub fn new(rt: Arc<Runtime>) -> Self {
        ImageServiceHandler { rt }
    }

    fn to_cri(&self, v: &ImageView) -> Image {
        let r = &v.record;
        let (uid, username) = match r.config.user() {
            ImageUser::Unset => (None, String::new()),
            ImageUser::Uid(u) => (Some(Int64Value { value: u }), String::new()),
            ImageUser::Name(n) => (None, n),
        };
        Image {
            id: r.id.clone(),
            repo_tags: r.repo_tags.clone(),
            repo_digests: r.repo_digests.clone(),
            size: r.size,
            uid,
            username,
            spec: Some(ImageSpec {
                image: r.id.clone(),
                ..Default::default()
            }),
            pinned: v.pinned,
        }
    }
}

/// The image name of a request's `ImageSpec`, required non-empty and
/// within the reference limits.
fn image_name(spec: Option<&ImageSpec>) -> Result<&str, Status> {
    match spec.map(|s| s.image.trim()) {
        Some(name) if !name.is_empty() => {
            super::validate::image_ref(name)?;
            Ok(name)
        }
        _ => Err(
            Error::InvalidArgument("image spec with a non-empty image is required".into()).into(),
        ),
    }
}

#[tonic::async_trait]
impl ImageService for ImageServiceHandler {
    type StreamImagesStream = super::Chunks<StreamImagesResponse>;

    async fn stream_images(
        &self,
        req: Request<StreamImagesRequest>,
    ) -> Reply<Self::StreamImagesStream> {
        let filter = req.into_inner().filter;
        let images = self
            .list_images(Request::new(ListImagesRequest { filter }))
            .await?
            .into_inner()
            .images;
        Ok(super::chunked(images, |images| StreamImagesResponse {
            images,
        }))
    }

    async fn list_images(&self, req: Request<ListImagesRequest>) -> Reply<ListImagesResponse> {
        let filter = req
            .get_ref()
            .filter
            .as_ref()
            .and_then(|f| f.image.as_ref())
            .map(|s| s.image.as_str());
        let images = self.rt.list_images(filter)?;
        Ok(Response::new(ListImagesResponse {
            images: images.iter().map(|r| self.to_cri(r)).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(image = ?req.get_ref().image.as_ref().map(|s| &s.image)))]
    async fn image_status(&self, req: Request<ImageStatusRequest>) -> Reply<ImageStatusResponse> {
        let req = req.into_inner();
        let name = image_name(req.image.as_ref())?;
        let Some(view) = self.rt.image_status(name)? else {
            return Ok(Response::new(ImageStatusResponse::default()));
        };
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            let record = &view.record;
            let verbose = serde_json::json!({
                "id": record.id,
                "imageSpec": record.config,
                "layers": record.layers,
                "pulledAt": record.pulled_at,
            });
            info.insert("info".to_string(), verbose.to_string());
        }
        Ok(Response::new(ImageStatusResponse {
            image: Some(self.to_cri(&view)),
            info,
        }))
    }

    #[tracing::instrument(skip_all, fields(image = ?req.get_ref().image.as_ref().map(|s| &s.image)))]
    async fn pull_image(&self, req: Request<PullImageRequest>) -> Reply<PullImageResponse> {
        let req = req.into_inner();
        let name = image_name(req.image.as_ref())?;
        if let Some(a) = &req.auth {
            super::validate::auth(a)?;
        }
        let auth = req
            .auth
            .map(|a| PullAuth {
                username: a.username,
                password: a.password,
                auth: a.auth,
                identity_token: a.identity_token,
                registry_token: a.registry_token,
            })
            .unwrap_or_default();
        let id = self.rt.pull_image(name, &auth).await?;
        Ok(Response::new(PullImageResponse { image_ref: id }))
    }

    #[tracing::instrument(skip_all, fields(image = ?req.get_ref().image.as_ref().map(|s| &s.image)))]
    async fn remove_image(&self, req: Request<RemoveImageRequest>) -> Reply<RemoveImageResponse> {
        let name = image_name(req.get_ref().image.as_ref())?;
        self.rt.remove_image(name).await?;
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(&self, _: Request<ImageFsInfoRequest>) -> Reply<ImageFsInfoResponse> {
        let (images, containers) = self.rt.image_fs_info().await?;
        let fs = |u: FsUsage| FilesystemUsage {
            timestamp: u
                .at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0),
            fs_id: Some(FilesystemIdentifier {
                mountpoint: u.mountpoint.display().to_string(),
            }),
            used_bytes: Some(UInt64Value { value: u.bytes }),
            inodes_used: Some(UInt64Value { value: u.inodes }),
        };
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![fs(images)],
            container_filesystems: vec![fs(containers)],
        }))
    }
}
