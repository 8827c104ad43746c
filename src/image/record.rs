//! What crius remembers about a pulled image, and the parts of the OCI image
//! config that containers need (user, env, entrypoint, stop signal).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// One pulled image, stored in the `images` table under its id (the config digest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:<hex>` of the config blob.
    pub id: String,
    /// Normalised `registry/repository:tag` names.
    pub repo_tags: Vec<String>,
    /// Normalised `registry/repository@sha256:<manifest digest>` names.
    pub repo_digests: Vec<String>,
    /// Compressed size of config and layers, as registries and kubelet count it.
    pub size: u64,
    /// Layers bottom to top.
    pub layers: Vec<LayerRef>,
    /// Manifest (and index) blobs this image was pulled through.
    #[serde(default)]
    pub manifests: Vec<String>,
    /// The parts of the image's config blob that containers need.
    pub config: ImageConfig,
    /// Unix seconds of the (last) pull.
    pub pulled_at: i64,
}

/// A layer as an image uses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRef {
    /// Digest of the compressed blob.
    pub digest: String,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    /// Identity of this layer on top of all below it; names its directory.
    pub chain_id: String,
    /// Compressed size of the blob in bytes, as the manifest gives it.
    pub size: u64,
}

/// The OCI image configuration (`application/vnd.oci.image.config.v1+json`),
/// the fields crius uses; the rest is kept verbatim in `raw`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// GOARCH name the image was built for, e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// Operating system the image was built for, e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// CPU variant, e.g. `v8` for arm64; absent when the config gives none.
    #[serde(default)]
    pub variant: Option<String>,
    /// The defaults a container gets from the image (`config` in the JSON).
    #[serde(default)]
    pub config: RunConfig,
    /// The image's uncompressed layers, as diff ids.
    #[serde(default)]
    pub rootfs: RootFs,
}

/// The `config` object of an image config: defaults for containers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// `USER`: `uid`, `name`, `uid:gid` or `name:group`; absent or empty means root.
    #[serde(default)]
    pub user: Option<String>,
    /// `ENV`: `KEY=value` pairs; the container spec's variables override same-named ones.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// `ENTRYPOINT`: argv prefix, dropped when the container spec gives a `command`.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`: default arguments after the entrypoint; dropped when the spec gives `command` or
    /// `args`.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `WORKDIR`: the process's working directory when the spec gives none.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `LABEL`s; parsed but not used by crius.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// `STOPSIGNAL`, as a name (`SIGTERM`) or number; used when stopping a container.
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// `EXPOSE`d ports, `port/proto` keys with empty objects; parsed but not used.
    #[serde(default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    /// `VOLUME` paths as keys with empty objects; parsed but not used.
    #[serde(default)]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
}

/// The layer list of an image config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers` in valid images.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Digests of the uncompressed layer tars, base layer first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// The user an image runs as: a numeric uid, or a name resolved later
/// against the image's /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageUser {
    /// No `USER`: the container runs as root unless the spec says otherwise.
    Unset,
    /// A numeric uid.
    Uid(i64),
    /// A user name, looked up in the image's `/etc/passwd` at create time.
    Name(String),
}

impl ImageConfig {
    /// USER of the image, without its group part.
    pub fn user(&self) -> ImageUser {
        let user = self.config.user.as_deref().unwrap_or("");
        let name = user.split(':').next().unwrap_or("");
        if name.is_empty() {
            ImageUser::Unset
        } else if let Ok(uid) = name.parse::<i64>() {
            ImageUser::Uid(uid)
        } else {
            ImageUser::Name(name.to_string())
        }
    }
}

/// Chain ids per the OCI image spec: the first layer's is its diff id, each
/// next one is `sha256(parent_chain + " " + diff_id)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{parent} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_user(u: &str) -> ImageConfig {
        ImageConfig {
            config: RunConfig {
                user: Some(u.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn image_user_forms() {
        assert_eq!(ImageConfig::default().user(), ImageUser::Unset);
        assert_eq!(with_user("1002").user(), ImageUser::Uid(1002));
        assert_eq!(with_user("1003:1003").user(), ImageUser::Uid(1003));
        assert_eq!(
            with_user("www-data").user(),
            ImageUser::Name("www-data".into())
        );
        assert_eq!(
            with_user("www-data:www-data").user(),
            ImageUser::Name("www-data".into())
        );
    }

    #[test]
    fn chain_id_follows_the_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        let expect = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{a} {b}").as_bytes()))
        );
        assert_eq!(ids[1], expect);
    }

    #[test]
    fn config_parses_docker_style_json() {
        let raw = r#"{"architecture":"amd64","os":"linux","config":{"User":"33","Env":["PATH=/bin"],
            "Cmd":["sh"],"StopSignal":"SIGQUIT","ExposedPorts":{"80/tcp":{}}},
            "rootfs":{"type":"layers","diff_ids":["sha256:aa"]},"history":[]}"#;
        let c: ImageConfig = serde_json::from_str(raw).unwrap();
        assert_eq!(c.user(), ImageUser::Uid(33));
        assert_eq!(c.config.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(c.rootfs.diff_ids.len(), 1);
    }
}
