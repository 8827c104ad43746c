//! Running CNI plugins as the CNI spec says: one process per plugin of the
//! network's chain, the command in `CNI_*` variables, the plugin config on
//! stdin with the previous result and the runtime config it asked for.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::error::shown;

/// Errors of a CNI operation; the plugin's own message is kept.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// A chain names a plugin `type` with no executable of that name in any plugin directory.
    #[error("CNI plugin {plugin:?} not found in {dirs:?}")]
    PluginNotFound {
        /// The plugin's `type` as the config gives it.
        plugin: String,
        /// The directories searched, in order.
        dirs: Vec<PathBuf>,
    },
    /// A plugin could not be spawned, exited non-zero, or printed a result that is not JSON.
    #[error("CNI plugin {plugin} {command} failed: {message}")]
    Plugin {
        /// The plugin's `type` (its executable's name).
        plugin: String,
        /// The CNI command run: `ADD`, `CHECK` or `DEL`.
        command: &'static str,
        /// The plugin's `msg` (and `details`) from its error result, else its raw stdout and
        /// stderr, or why it could not be spawned, waited for or parsed.
        message: String,
    },
    /// A plugin ran longer than [`Invoker::timeout`] and was killed.
    #[error("CNI plugin {plugin} {command} timed out after {secs}s")]
    Timeout {
        /// The plugin's `type`.
        plugin: String,
        /// The CNI command run: `ADD`, `CHECK` or `DEL`.
        command: &'static str,
        /// The limit it exceeded, in whole seconds.
        secs: u64,
    },
    /// A network config without a name, plugins or a valid plugin `type`, or an ADD chain that
    /// produced no result.
    #[error("CNI config: {0}")]
    Config(String),
    /// A `CNI_ARGS` pair that could add or change another pair; refused
    /// before any plugin runs. Only a short, escaped prefix of the input is kept.
    #[error("CNI_ARGS {part} of {key} {input} {reason}")]
    InvalidArg {
        /// The pair's key, shortened and escaped for display.
        key: String,
        /// Which side of the pair was refused: `"key"` or `"value"`.
        part: &'static str,
        /// The refused key or value, shortened and escaped for display.
        input: String,
        /// What is wrong with it, e.g. `contains ';'` or `is already set`.
        reason: String,
    },
    /// More than one plugin of a chain failed (DEL keeps going after a
    /// failure); each error in the order the plugins ran.
    #[error("CNI {command} of network {network}: {} plugins failed: {}", .errors.len(), join(.errors))]
    Several {
        /// The CNI command run; DEL is the only one that keeps going after a failure.
        command: &'static str,
        /// The network config's name.
        network: String,
        /// One error per failed plugin, in the order they ran.
        errors: Vec<CniError>,
    },
}

fn join(errors: &[CniError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The `CNI_ARGS` of a call. Plugins split the variable on `;` and `=` with
/// no quoting (host-local, for one, takes the pod's address from `IP=`), so
/// a pair is only accepted when it cannot add or change another: the key is
/// ASCII letters, digits and `_`, not `IgnoreUnknown` and not repeated, and
/// the value has no `;`, `=` or control character (NUL, newline, …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs(Vec<(String, String)>);

impl CniArgs {
    /// Checks every pair; the first that is unsafe is the error.
    pub fn new<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Result<CniArgs, CniError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let mut args = CniArgs::default();
        for (k, v) in pairs {
            args.push(k.into(), v.into())?;
        }
        Ok(args)
    }

    /// The safe pairs, and why each other one was left out. For DEL of a pod
    /// recorded before these checks existed: plugins find what to release
    /// by container id and interface, so DEL must still run, without the
    /// pairs that are not safe.
    pub fn lenient<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> (CniArgs, Vec<CniError>)
    where
        K: Into<String>,
        V: Into<String>,
    {
        let mut args = CniArgs::default();
        let mut refused = Vec::new();
        for (k, v) in pairs {
            if let Err(e) = args.push(k.into(), v.into()) {
                refused.push(e);
            }
        }
        (args, refused)
    }

    fn push(&mut self, key: String, value: String) -> Result<(), CniError> {
        let refuse = |part, input: &str, reason: String| CniError::InvalidArg {
            key: shown(&key),
            part,
            input: shown(input),
            reason,
        };
        if key.is_empty() {
            return Err(refuse("key", &key, "is empty".into()));
        }
        if let Some(c) = key
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
        {
            return Err(refuse("key", &key, format!("contains {c:?}")));
        }
        if key == IGNORE_UNKNOWN || self.0.iter().any(|(k, _)| *k == key) {
            return Err(refuse("key", &key, "is already set".into()));
        }
        if let Some(c) = value
            .chars()
            .find(|c| matches!(c, ';' | '=') || c.is_control())
        {
            return Err(refuse("value", &value, format!("contains {c:?}")));
        }
        self.0.push((key, value));
        Ok(())
    }

    /// The checked pairs, in the order given.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// The variable's value: `IgnoreUnknown=1` first, so that plugins
    /// accept the keys they do not know (as libcni's callers pass it).
    pub fn to_env(&self) -> String {
        std::iter::once(format!("{IGNORE_UNKNOWN}=1"))
            .chain(self.0.iter().map(|(k, v)| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(";")
    }
}

const IGNORE_UNKNOWN: &str = "IgnoreUnknown";

/// A network config ready to run: its name, version and plugin chain.
#[derive(Debug, Clone)]
pub struct NetworkConf {
    /// The network's `name` from its config.
    pub name: String,
    /// The config's `cniVersion`; `0.4.0` when the file gives none.
    pub cni_version: String,
    /// Each plugin's own config object, in chain order (a single-plugin `.conf` is a chain of one).
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
    /// The pod sandbox's id, passed as `CNI_CONTAINERID`; plugins key their state (e.g. IPAM
    /// leases) on it with `ifname`.
    pub container_id: String,
    /// Path of the pinned network namespace; may be gone on DEL.
    pub netns: String,
    /// Interface name to create inside the namespace (`CNI_IFNAME`), e.g. `eth0`.
    pub ifname: String,
    /// `K8S_POD_*` arguments, checked when they were built.
    pub args: CniArgs,
    /// Runtime config values by capability name (`portMappings`, `dns`, …).
    pub capabilities: serde_json::Map<String, Value>,
}

/// Where plugins are and how long one may run.
#[derive(Debug, Clone)]
pub struct Invoker {
    /// Directories searched, in order, for a plugin's executable.
    pub plugin_dirs: Vec<PathBuf>,
    /// How long one plugin invocation may run before it is killed and fails with
    /// [`CniError::Timeout`].
    pub timeout: Duration,
}

impl Invoker {
    /// ADD through the chain; returns the final result. ADD stops at the
    /// first failure, and the plugins before it may hold resources (an
    /// address): the caller runs [`Invoker::del`] for the whole chain then,
    /// as the CNI spec asks of runtimes.
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

    /// DEL through the chain in reverse, with the cached ADD result. Every
    /// plugin's DEL runs even when one before it failed (as libcni does), so
    /// one broken plugin (say portmap refusing its config) cannot keep the
    /// IPAM plugin from releasing the address; all failures are returned.
    pub async fn del(
        &self,
        conf: &NetworkConf,
        a: &Attachment,
        prev: Option<&Value>,
    ) -> Result<(), CniError> {
        let mut errors = Vec::new();
        for plugin in conf.plugins.iter().rev() {
            if let Err(e) = self.exec("DEL", conf, plugin, a, prev).await {
                tracing::warn!(container_id = %a.container_id, error = %e, "CNI DEL of one plugin failed; going on");
                errors.push(e);
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(CniError::Several {
                command: "DEL",
                network: conf.name.clone(),
                errors,
            }),
        }
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
        let cni_args = a.args.to_env();
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
            // Its own process group, so a timeout kills what it started
            // too (a shell plugin's children would otherwise hold on).
            .process_group(0)
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
        let group = child.id().and_then(|p| i32::try_from(p).ok());
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                if let Some(pgid) = group {
                    // The plugin itself goes with its dropped handle.
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pgid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                tracing::warn!(plugin = kind, command, container_id = %a.container_id, "CNI plugin timed out; killed");
                CniError::Timeout {
                    plugin: kind.into(),
                    command,
                    secs: self.timeout.as_secs(),
                }
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

/// CNI arguments that would be unsafe to pass are the request's fault; every
/// other CNI failure is the node's (a plugin, its config or its timeout).
impl From<CniError> for crate::error::Error {
    fn from(e: CniError) -> Self {
        use crate::error::Error;
        match e {
            CniError::InvalidArg { .. } => Error::InvalidArgument(e.to_string()),
            _ => Error::Internal(e.to_string()),
        }
    }
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
    fn cni_args_cannot_add_or_change_a_pair() {
        let ok = CniArgs::new([("K8S_POD_NAME", "web-0"), ("K8S_POD_UID", "")]).unwrap();
        assert_eq!(
            ok.to_env(),
            "IgnoreUnknown=1;K8S_POD_NAME=web-0;K8S_POD_UID="
        );
        // Spaces, '/', ':' and non-ASCII text cannot start a pair.
        assert!(CniArgs::new([("K", "a b/c:d é")]).is_ok());
        for value in [
            "x;IP=10.88.250.250",
            "IP=10.88.250.250",
            "a\0b",
            "a\nIP=1.2.3.4",
            "a\rb",
            "a\tb",
            "a\u{7f}",
            "a\u{85}b",
        ] {
            let e = CniArgs::new([("K8S_POD_NAME", "ok"), ("K8S_POD_NAMESPACE", value)])
                .expect_err(value);
            assert!(
                matches!(&e, CniError::InvalidArg { part: "value", .. }),
                "{value:?}: {e}"
            );
            assert!(e.to_string().contains("K8S_POD_NAMESPACE"), "{e}");
        }
        for key in ["", "A;B", "A=B", "A B", "A\n", "IgnoreUnknown"] {
            assert!(CniArgs::new([(key, "v")]).is_err(), "{key:?}");
        }
        // A repeated key would override the first.
        assert!(CniArgs::new([("K8S_POD_NAME", "a"), ("K8S_POD_NAME", "b")]).is_err());
    }

    #[test]
    fn cni_args_errors_quote_a_short_escaped_prefix() {
        let hostile = format!("x;{}\n", "A".repeat(10_000));
        let e = CniArgs::new([("K8S_POD_NAME", hostile.as_str())]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.len() < 120, "{msg}");
        assert!(msg.contains("\"x;AAAA") && msg.contains("';'"), "{msg}");
        let e = CniArgs::new([("K8S_POD_NAME", "a\nb")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"CNI_ARGS value of "K8S_POD_NAME" "a\nb" contains '\n'"#
        );
    }

    #[test]
    fn lenient_args_leave_out_unsafe_pairs() {
        let (args, refused) = CniArgs::lenient([
            ("K8S_POD_NAMESPACE", "default"),
            ("K8S_POD_NAME", "x;IP=10.0.0.1"),
            ("K8S_POD_UID", "u1"),
        ]);
        assert_eq!(
            args.to_env(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_UID=u1"
        );
        assert_eq!(refused.len(), 1);
    }

    /// A chain of shell-script plugins in a temp dir; each logs its type and
    /// command to `log`, and those named in `failing` then fail.
    fn script_chain(failing: &[&str]) -> (tempfile::TempDir, Invoker, NetworkConf) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        for name in ["a", "b", "c"] {
            let fail = if failing.contains(&name) {
                format!("printf '{{\"code\":11,\"msg\":\"{name} broke\"}}'; exit 1")
            } else {
                "exit 0".into()
            };
            let path = dir.path().join(name);
            let script = format!(
                "#!/bin/sh\ncat >/dev/null\necho \"{name} $CNI_COMMAND\" >> '{}'\n{fail}\n",
                log.display()
            );
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let invoker = Invoker {
            plugin_dirs: vec![dir.path().to_path_buf()],
            timeout: Duration::from_secs(10),
        };
        let conf = NetworkConf::from_json(&json!({
            "name": "t", "plugins": [{"type": "a"}, {"type": "b"}, {"type": "c"}]
        }))
        .unwrap();
        (dir, invoker, conf)
    }

    fn attachment() -> Attachment {
        Attachment {
            container_id: "c1".into(),
            netns: String::new(),
            ifname: "eth0".into(),
            args: CniArgs::default(),
            capabilities: serde_json::Map::new(),
        }
    }

    #[tokio::test]
    async fn del_runs_every_plugin_in_reverse_and_reports_each_failure() {
        let (dir, invoker, conf) = script_chain(&["b"]);
        let e = invoker.del(&conf, &attachment(), None).await.unwrap_err();
        assert!(
            matches!(&e, CniError::Plugin { plugin, command: "DEL", .. } if plugin == "b"),
            "{e}"
        );
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert_eq!(log, "c DEL\nb DEL\na DEL\n");

        let (dir, invoker, conf) = script_chain(&["c", "a"]);
        let e = invoker.del(&conf, &attachment(), None).await.unwrap_err();
        let CniError::Several { errors, .. } = &e else {
            panic!("{e}");
        };
        assert_eq!(errors.len(), 2);
        let msg = e.to_string();
        assert!(msg.contains("c broke") && msg.contains("a broke"), "{msg}");
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert_eq!(log, "c DEL\nb DEL\na DEL\n");

        let (_dir, invoker, conf) = script_chain(&[]);
        invoker.del(&conf, &attachment(), None).await.unwrap();
    }

    #[tokio::test]
    async fn add_stops_at_the_first_failure() {
        let (dir, invoker, conf) = script_chain(&["b"]);
        let e = invoker.add(&conf, &attachment()).await.unwrap_err();
        assert!(e.to_string().contains("b broke"), "{e}");
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert_eq!(log, "a ADD\nb ADD\n");
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
