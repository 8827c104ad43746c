//! Running CNI plugins as the CNI spec says: one process per plugin of the
//! network's chain, the command in `CNI_*` variables, the plugin config on
//! stdin with the previous result and the runtime config it asked for.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// Errors of a CNI operation; the plugin's own message is kept.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI plugin {plugin:?} not found in {dirs:?}")]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },
    #[error("CNI plugin {plugin} {command} failed: {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error("CNI plugin {plugin} {command} timed out after {secs}s")]
    Timeout {
        plugin: String,
        command: &'static str,
        secs: u64,
    },
    #[error("CNI config: {0}")]
    Config(String),
}

/// A network config ready to run: its name, version and plugin chain.
#[derive(Debug, Clone)]
pub struct NetworkConf {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
}

impl NetworkConf {
    /// From a `.conflist` (with `plugins`) or a single-plugin `.conf`.
    pub fn from_json(v: &Value) -> Result<NetworkConf, CniError> {
        let name = v["name"]
            .as_str()
            .ok_or_else(|| CniError::Config("no name".into()))?
            .to_string();
        let cni_version = v["cniVersion"].as_str().unwrap_or("0.4.0").to_string();
        let plugins = match v.get("plugins").and_then(Value::as_array) {
            Some(list) => list.clone(),
            None => vec![v.clone()],
        };
        if plugins.is_empty() {
            return Err(CniError::Config(format!("network {name} has no plugins")));
        }
        Ok(NetworkConf {
            name,
            cni_version,
            plugins,
        })
    }

    /// The whole config, for caching with the pod so DEL runs with what ADD used.
    pub fn to_json(&self) -> Value {
        json!({"name": self.name, "cniVersion": self.cni_version, "plugins": self.plugins})
    }
}

/// The per-pod part of a CNI call.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    /// Path of the pinned network namespace; may be gone on DEL.
    pub netns: String,
    pub ifname: String,
    /// `K8S_POD_*` arguments.
    pub args: Vec<(String, String)>,
    /// Runtime config values by capability name (`portMappings`, `dns`, …).
    pub capabilities: serde_json::Map<String, Value>,
}

/// Where plugins are and how long one may run.
#[derive(Debug, Clone)]
pub struct Invoker {
    pub plugin_dirs: Vec<PathBuf>,
    pub timeout: Duration,
}

impl Invoker {
    /// ADD through the chain; returns the final result.
    pub async fn add(&self, conf: &NetworkConf, a: &Attachment) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for plugin in &conf.plugins {
            let out = self.exec("ADD", conf, plugin, a, prev.as_ref()).await?;
            if out.get("cniVersion").is_some() || out.get("ips").is_some() {
                prev = Some(out);
            }
        }
        prev.ok_or_else(|| CniError::Config(format!("network {} returned no result", conf.name)))
    }

    /// CHECK through the chain (CNI 0.4.0+): whether the attachment is still
    /// as ADD left it.
    pub async fn check(
        &self,
        conf: &NetworkConf,
        a: &Attachment,
        prev: &Value,
    ) -> Result<(), CniError> {
        for plugin in &conf.plugins {
            self.exec("CHECK", conf, plugin, a, Some(prev)).await?;
        }
        Ok(())
    }

    /// DEL through the chain in reverse, with the cached ADD result.
    pub async fn del(
        &self,
        conf: &NetworkConf,
        a: &Attachment,
        prev: Option<&Value>,
    ) -> Result<(), CniError> {
        for plugin in conf.plugins.iter().rev() {
            self.exec("DEL", conf, plugin, a, prev).await?;
        }
        Ok(())
    }

    async fn exec(
        &self,
        command: &'static str,
        conf: &NetworkConf,
        plugin: &Value,
        a: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Value, CniError> {
        let kind = plugin["type"]
            .as_str()
            .ok_or_else(|| CniError::Config("a plugin has no type".into()))?;
        if kind.contains('/') {
            return Err(CniError::Config(format!("bad plugin type {kind:?}")));
        }
        let path = super::find_plugin(&self.plugin_dirs, kind).ok_or_else(|| {
            CniError::PluginNotFound {
                plugin: kind.into(),
                dirs: self.plugin_dirs.clone(),
            }
        })?;
        let mut stdin = plugin.clone();
        stdin["name"] = json!(conf.name);
        stdin["cniVersion"] = json!(conf.cni_version);
        if let Some(p) = prev {
            stdin["prevResult"] = p.clone();
        }
        if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
            let mut rc = serde_json::Map::new();
            for (cap, on) in caps {
                if on.as_bool() == Some(true)
                    && let Some(v) = a.capabilities.get(cap)
                {
                    rc.insert(cap.clone(), v.clone());
                }
            }
            if !rc.is_empty() {
                stdin["runtimeConfig"] = Value::Object(rc);
            }
        }
        let cni_args = std::iter::once("IgnoreUnknown=1".to_string())
            .chain(a.args.iter().map(|(k, v)| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(";");
        let cni_path = self
            .plugin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let mut child = tokio::process::Command::new(&path)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &a.container_id)
            .env("CNI_NETNS", &a.netns)
            .env("CNI_IFNAME", &a.ifname)
            .env("CNI_ARGS", cni_args)
            .env("CNI_PATH", cni_path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| CniError::Plugin {
                plugin: kind.into(),
                command,
                message: format!("spawn {}: {e}", path.display()),
            })?;
        let input = stdin.to_string();
        if let Some(mut s) = child.stdin.take() {
            // A plugin may exit without reading; its exit status tells.
            let _ = s.write_all(input.as_bytes()).await;
        }
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| CniError::Timeout {
                plugin: kind.into(),
                command,
                secs: self.timeout.as_secs(),
            })?
            .map_err(|e| CniError::Plugin {
                plugin: kind.into(),
                command,
                message: e.to_string(),
            })?;
        tracing::debug!(plugin = kind, command, container_id = %a.container_id, status = ?out.status, "CNI plugin ran");
        if !out.status.success() {
            let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
            let message = parsed
                .as_ref()
                .and_then(|v| {
                    let msg = v["msg"].as_str()?;
                    Some(match v["details"].as_str() {
                        Some(d) if !d.is_empty() => format!("{msg}: {d}"),
                        _ => msg.to_string(),
                    })
                })
                .unwrap_or_else(|| {
                    format!(
                        "{} {}",
                        String::from_utf8_lossy(&out.stdout).trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                });
            return Err(CniError::Plugin {
                plugin: kind.into(),
                command,
                message,
            });
        }
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout).map_err(|e| CniError::Plugin {
            plugin: kind.into(),
            command,
            message: format!("unparsable result: {e}"),
        })
    }
}

/// The addresses (without prefix length) of a CNI result, IPv4 first.
pub fn result_ips(result: &Value) -> Vec<String> {
    let mut ips: Vec<String> = result["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|ip| ip["address"].as_str())
                .filter_map(|addr| addr.split('/').next())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    ips.sort_by_key(|ip| ip.contains(':'));
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_from_result() {
        let r = json!({"ips": [{"address": "fd00::5/64"}, {"address": "10.88.0.5/16", "gateway": "10.88.0.1"}]});
        assert_eq!(result_ips(&r), ["10.88.0.5", "fd00::5"]);
        assert!(result_ips(&Value::Null).is_empty());
    }

    #[test]
    fn conf_and_conflist() {
        let single = json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge"});
        assert_eq!(NetworkConf::from_json(&single).unwrap().plugins.len(), 1);
        let list = json!({"name": "n", "plugins": [{"type": "bridge"}, {"type": "portmap"}]});
        let c = NetworkConf::from_json(&list).unwrap();
        assert_eq!((c.plugins.len(), c.cni_version.as_str()), (2, "0.4.0"));
        assert!(NetworkConf::from_json(&json!({"name": "n", "plugins": []})).is_err());
    }
}
