//! Image volumes (KEP-4639): a CRI mount that shows an image, read-only,
//! whole or one of its directories, reported with the image's id, and
//! unmounted with the container.

mod common;

use common::mounts_under;
use common::pod::*;
use k8s_cri::v1::*;
use tonic::Code;

/// A container running `sleep` with `image` mounted at /mnt/iv.
fn with_volume(
    e: &Env,
    name: &str,
    image: &str,
    sub_path: &str,
    readonly: bool,
) -> ContainerConfig {
    let mut c = e.config(name, "sleep 100");
    c.mounts = vec![Mount {
        container_path: "/mnt/iv".into(),
        readonly,
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        image_sub_path: sub_path.into(),
        ..Default::default()
    }];
    c
}

#[tokio::test]
async fn an_image_volume_is_read_only_executable_and_reported() {
    let mut e = env("imgvol").await;
    let image = e.image.clone();
    let id = e
        .run_config(with_volume(&e, "whole", &image, "", true))
        .await;
    let (out, code) = e
        .sh(&id, "ls /mnt/iv/bin/sh && /mnt/iv/bin/ls /mnt/iv/etc")
        .await;
    assert_eq!(code, 0, "the image's files are there and run: {out}");
    assert!(out.contains("passwd"), "{out}");
    let (out, code) = e.sh(&id, "touch /mnt/iv/x 2>&1").await;
    assert_ne!(code, 0, "a write succeeded: {out}");
    assert!(out.contains("Read-only"), "{out}");

    let status = e.status(&id).await;
    let image_id = status.image_id.clone();
    let m = status
        .mounts
        .iter()
        .find(|m| m.container_path == "/mnt/iv")
        .expect("the image volume in ContainerStatus");
    assert_eq!(m.image.as_ref().unwrap().image_ref, image_id, "{m:?}");

    let dir = e.d.paths.root.join("containers").join(&id);
    assert_eq!(mounts_under(&dir.join("iv0")).len(), 1, "one volume mount");
    e.stop(&id, 0).await;
    e.remove(&id).await;
    assert!(mounts_under(&dir).is_empty(), "{:?}", mounts_under(&dir));
    assert!(!dir.exists(), "the container's storage is gone");
}

#[tokio::test]
async fn a_sub_path_shows_one_directory_and_bad_ones_are_refused() {
    let mut e = env("imgvolsub").await;
    let image = e.image.clone();
    let id = e
        .run_config(with_volume(&e, "etc", &image, "etc", true))
        .await;
    let (out, code) = e
        .sh(&id, "ls /mnt/iv/passwd && ! ls /mnt/iv/etc 2>/dev/null")
        .await;
    assert_eq!(code, 0, "the sub path is the volume's root: {out}");

    for (what, config) in [
        (
            "missing sub path",
            with_volume(&e, "missing", &image, "not-existing", true),
        ),
        (
            "climbing sub path",
            with_volume(&e, "up", &image, "../..", true),
        ),
        ("writable", with_volume(&e, "rw", &image, "", false)),
    ] {
        let err = e.create(config).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    }
    let err = e
        .create(with_volume(
            &e,
            "unknown",
            "127.0.0.1:1/none:latest",
            "",
            true,
        ))
        .await
        .expect_err("an image that is not on the node");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // Refused creates leave nothing mounted behind.
    let containers = e.d.paths.root.join("containers");
    let left: Vec<_> = mounts_under(&containers)
        .into_iter()
        .filter(|m| !m.to_string_lossy().contains(&id))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
