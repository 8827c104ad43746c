//! Pod networking through CNI.
//!
//! For now this finds the network config the node will use and reports
//! readiness; kubelet holds back pods until the runtime says NetworkReady, and
//! a CNI provider usually installs its config after the runtime started, so
//! the directory is looked at again on every status query.

pub mod cni;

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::Serialize;

/// A CNI network config file that parsed and names at least one plugin.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkFile {
    /// The config file, the lexically first usable one in the config directory.
    pub path: PathBuf,
    /// The network's `name`.
    pub name: String,
    /// The file's `cniVersion`; empty when it gives none.
    pub cni_version: String,
    /// Plugin types in chain order.
    pub plugins: Vec<String>,
    /// The file's JSON, to run.
    #[serde(skip)]
    pub raw: serde_json::Value,
}

/// Whether pods can get a network right now, and why not.
#[derive(Debug, Clone)]
pub enum Readiness {
    /// The default network's config file.
    Ready(NetworkFile),
    /// Why not: no usable config file, or the directory could not be read.
    NotReady(String),
}

/// Node-wide network state.
pub struct Network {
    conf_dir: PathBuf,
    plugin_dirs: Vec<PathBuf>,
    plugin_timeout: std::time::Duration,
    pod_cidr: RwLock<Option<String>>,
}

impl Network {
    /// Settings from `[network]`; `pod_cidr` as last stored by UpdateRuntimeConfig.
    pub fn new(
        conf_dir: PathBuf,
        plugin_dirs: Vec<PathBuf>,
        plugin_timeout: std::time::Duration,
        pod_cidr: Option<String>,
    ) -> Self {
        Network {
            conf_dir,
            plugin_dirs,
            plugin_timeout,
            pod_cidr: RwLock::new(pod_cidr),
        }
    }

    /// Looks for the default network in the config directory now.
    pub fn readiness(&self) -> Readiness {
        match default_network(&self.conf_dir) {
            Ok(Some(f)) => Readiness::Ready(f),
            Ok(None) => Readiness::NotReady(format!(
                "no CNI network config found in {}",
                self.conf_dir.display()
            )),
            Err(e) => Readiness::NotReady(e),
        }
    }

    /// The pod CIDR kubelet handed down with UpdateRuntimeConfig, if any.
    pub fn pod_cidr(&self) -> Option<String> {
        self.pod_cidr.read().map(|g| g.clone()).unwrap_or_default()
    }

    /// Stores the pod CIDR from UpdateRuntimeConfig (`None` clears it).
    pub fn set_pod_cidr(&self, cidr: Option<String>) {
        if let Ok(mut g) = self.pod_cidr.write() {
            *g = cidr;
        }
    }

    /// What runs this node's CNI plugins.
    pub fn invoker(&self) -> cni::Invoker {
        cni::Invoker {
            plugin_dirs: self.plugin_dirs.clone(),
            timeout: self.plugin_timeout,
        }
    }

    /// Where each plugin type is found, for diagnostics.
    pub fn find_plugin(&self, plugin: &str) -> Option<PathBuf> {
        find_plugin(&self.plugin_dirs, plugin)
    }
}

/// The first executable named `plugin` in `dirs`.
pub fn find_plugin(dirs: &[PathBuf], plugin: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    dirs.iter().map(|d| d.join(plugin)).find(|p| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// The lexically first valid `.conflist`, `.conf` or `.json` in `dir`, as
/// libcni orders them. Invalid files are skipped (and logged) so that a
/// half-written file from a CNI installer does not block a good one.
pub fn default_network(dir: &Path) -> Result<Option<NetworkFile>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading CNI config dir {}: {e}", dir.display())),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "conflist" | "conf" | "json"))
        })
        .collect();
    files.sort();
    for path in files {
        match parse_network_file(&path) {
            Ok(f) => return Ok(Some(f)),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "skipping CNI config"),
        }
    }
    Ok(None)
}

fn parse_network_file(path: &Path) -> Result<NetworkFile, String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    let str_of =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
    let name = str_of(&v, "name").ok_or("no \"name\"")?;
    let cni_version = str_of(&v, "cniVersion").unwrap_or_default();
    let is_list = path.extension().is_some_and(|e| e == "conflist");
    let plugins: Vec<String> = if is_list {
        v.get("plugins")
            .and_then(|p| p.as_array())
            .ok_or("no \"plugins\" list")?
            .iter()
            .map(|p| str_of(p, "type").ok_or("a plugin has no \"type\""))
            .collect::<Result<_, _>>()?
    } else {
        vec![str_of(&v, "type").ok_or("no \"type\"")?]
    };
    if plugins.is_empty() {
        return Err("empty \"plugins\" list".into());
    }
    Ok(NetworkFile {
        path: path.to_path_buf(),
        name,
        cni_version,
        plugins,
        raw: v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_lexically_first_valid_file() {
        let d = tempfile::tempdir().unwrap();
        assert!(default_network(d.path()).unwrap().is_none());
        std::fs::write(d.path().join("00-broken.conflist"), "{").unwrap();
        std::fs::write(d.path().join("05-notes.txt"), "{}").unwrap();
        std::fs::write(
            d.path().join("20-b.conf"),
            r#"{"cniVersion":"1.0.0","name":"b","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        let f = default_network(d.path()).unwrap().unwrap();
        assert_eq!(f.name, "a");
        assert_eq!(f.plugins, ["bridge", "portmap"]);
    }

    #[test]
    fn conflist_without_plugins_is_invalid() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.conflist"), r#"{"name":"a","plugins":[]}"#).unwrap();
        assert!(default_network(d.path()).unwrap().is_none());
    }

    #[test]
    fn shipped_default_network_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cni");
        let f = default_network(&dir).unwrap().unwrap();
        assert_eq!(f.name, "crius");
        assert_eq!(f.plugins, ["bridge", "portmap"]);
    }
}
