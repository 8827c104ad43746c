//! The node policy (`[policy]`, off by default): pods and containers a
//! node refuses whatever kubelet's admission allowed, because they could
//! take the node over: privileged ones, ones in the host's namespaces, and
//! host-path mounts of what runs the node (crius's socket and state,
//! Docker's socket, `/`, `/proc`, `/sys`, `/etc`). Pods in an exempt
//! Kubernetes namespace (`kube-system` by default: CNI and kube-proxy
//! daemon sets need all three) are not checked. A refusal is
//! `PermissionDenied` naming the rule, so the operator knows which key
//! to change.

use std::path::{Component, Path, PathBuf};

use k8s_cri::v1::{ContainerConfig, NamespaceMode, PodSandboxConfig};

use crate::config::{Config, PolicyConfig};
use crate::error::{Error, Result};

/// Host paths no container of a checked pod may mount (nor a directory
/// above them, which would expose them): Docker's socket, the kernel's
/// views and the node's configuration; crius adds its own socket and
/// state directories. `/` itself is in [`NodePolicy`] separately: every
/// path is below it.
const SENSITIVE: &[&str] = &[
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/proc",
    "/sys",
    "/etc",
];

/// The node policy, built once from the config.
#[derive(Debug, Clone)]
pub struct NodePolicy {
    rules: PolicyConfig,
    /// Subtrees a host path may be neither in nor above.
    sensitive: Vec<PathBuf>,
}

impl NodePolicy {
    /// The policy of `config` (its `[policy]` table, and crius's own
    /// socket, root and runroot as sensitive paths).
    pub fn new(config: &Config) -> NodePolicy {
        let mut sensitive: Vec<PathBuf> = SENSITIVE.iter().map(PathBuf::from).collect();
        sensitive.extend([
            config.listen.clone(),
            config.root.clone(),
            config.runroot.clone(),
        ]);
        NodePolicy {
            rules: config.policy.clone(),
            sensitive: sensitive.iter().map(|p| lexical(p)).collect(),
        }
    }

    /// The pod's Kubernetes namespace when the policy applies to it (it is
    /// not exempt).
    fn checked_namespace(&self, pod: &PodSandboxConfig) -> Option<String> {
        let ns = pod
            .metadata
            .as_ref()
            .map(|m| m.namespace.clone())
            .unwrap_or_default();
        (!self.rules.exempt_namespaces.contains(&ns)).then_some(ns)
    }

    /// RunPodSandbox: a privileged pod, or one in the host's network, PID
    /// or IPC namespace.
    pub fn check_pod(&self, pod: &PodSandboxConfig) -> Result<()> {
        let Some(ns) = self.checked_namespace(pod) else {
            return Ok(());
        };
        let sec = pod.linux.as_ref().and_then(|l| l.security_context.as_ref());
        if self.rules.refuse_privileged && sec.is_some_and(|s| s.privileged) {
            return Err(refused("refuse_privileged", "a privileged pod", &ns));
        }
        if self.rules.refuse_host_namespaces {
            let opts = sec
                .and_then(|s| s.namespace_options.clone())
                .unwrap_or_default();
            for (what, mode) in [
                ("network", opts.network),
                ("PID", opts.pid),
                ("IPC", opts.ipc),
            ] {
                if mode == NamespaceMode::Node as i32 {
                    return Err(refused(
                        "refuse_host_namespaces",
                        &format!("a pod in the host's {what} namespace"),
                        &ns,
                    ));
                }
            }
        }
        Ok(())
    }

    /// CreateContainer in `pod`: a privileged container, one in the host's
    /// PID namespace, or a host-path mount of a sensitive path. `resolve`
    /// gives a host path's real location (symlinks followed, so a link to
    /// `/etc` is `/etc`); `None` where it does not exist yet.
    pub fn check_container(
        &self,
        pod: &PodSandboxConfig,
        c: &ContainerConfig,
        resolve: impl Fn(&Path) -> Option<PathBuf>,
    ) -> Result<()> {
        let Some(ns) = self.checked_namespace(pod) else {
            return Ok(());
        };
        let sec = c.linux.as_ref().and_then(|l| l.security_context.as_ref());
        if self.rules.refuse_privileged && sec.is_some_and(|s| s.privileged) {
            return Err(refused("refuse_privileged", "a privileged container", &ns));
        }
        let pid = sec
            .and_then(|s| s.namespace_options.as_ref())
            .map_or(0, |o| o.pid);
        if self.rules.refuse_host_namespaces && pid == NamespaceMode::Node as i32 {
            return Err(refused(
                "refuse_host_namespaces",
                "a container in the host's PID namespace",
                &ns,
            ));
        }
        if !self.rules.refuse_sensitive_host_paths {
            return Ok(());
        }
        for m in c.mounts.iter().filter(|m| !m.host_path.is_empty()) {
            let given = Path::new(&m.host_path);
            let real = resolve(given).unwrap_or_else(|| lexical(given));
            if let Some(hit) = self.sensitive_hit(&real) {
                let via = if real == given {
                    String::new()
                } else {
                    format!("resolves to {}: ", real.display())
                };
                return Err(refused(
                    "refuse_sensitive_host_paths",
                    &format!("a host-path mount of {} ({via}{hit})", m.host_path),
                    &ns,
                ));
            }
        }
        Ok(())
    }

    /// Why `path` is sensitive, if it is.
    fn sensitive_hit(&self, path: &Path) -> Option<String> {
        if path == Path::new("/") {
            return Some("the host's root".into());
        }
        self.sensitive.iter().find_map(|s| {
            if path == s {
                Some(format!("{} itself", s.display()))
            } else if path.starts_with(s) {
                Some(format!("inside {}", s.display()))
            } else if s.starts_with(path) {
                Some(format!("a parent of {}", s.display()))
            } else {
                None
            }
        })
    }
}

fn refused(rule: &str, what: &str, namespace: &str) -> Error {
    Error::PermissionDenied(format!(
        "node policy [policy] {rule}: {what} is refused in namespace {namespace:?} (exempt namespaces: [policy] exempt_namespaces)"
    ))
}

/// `p` without `.`, `..` (taken lexically) and repeated slashes.
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{
        LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
        LinuxSandboxSecurityContext, Mount, NamespaceOption, PodSandboxMetadata,
    };

    fn policy(on: bool) -> NodePolicy {
        NodePolicy::new(&Config {
            policy: PolicyConfig {
                refuse_privileged: on,
                refuse_host_namespaces: on,
                refuse_sensitive_host_paths: on,
                ..Default::default()
            },
            ..Default::default()
        })
    }

    fn pod(namespace: &str, privileged: bool, network: NamespaceMode) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                namespace: namespace.into(),
                ..Default::default()
            }),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    privileged,
                    namespace_options: Some(NamespaceOption {
                        network: network as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn mounting(path: &str) -> ContainerConfig {
        ContainerConfig {
            mounts: vec![Mount {
                host_path: path.into(),
                container_path: "/x".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn message(r: Result<()>) -> String {
        match r {
            Err(Error::PermissionDenied(m)) => m,
            other => panic!("want PermissionDenied, got {other:?}"),
        }
    }

    #[test]
    fn off_by_default_and_exempt_namespaces() {
        let all_off = NodePolicy::new(&Config::default());
        let bad = pod("default", true, NamespaceMode::Node);
        assert!(all_off.check_pod(&bad).is_ok());
        assert!(
            all_off
                .check_container(&bad, &mounting("/"), |_| None)
                .is_ok()
        );
        let on = policy(true);
        let system = pod("kube-system", true, NamespaceMode::Node);
        assert!(on.check_pod(&system).is_ok());
        assert!(
            on.check_container(&system, &mounting("/etc"), |_| None)
                .is_ok()
        );
    }

    #[test]
    fn each_rule_is_named() {
        let on = policy(true);
        let m = message(on.check_pod(&pod("default", true, NamespaceMode::Pod)));
        assert!(
            m.contains("refuse_privileged") && m.contains("\"default\""),
            "{m}"
        );
        let m = message(on.check_pod(&pod("default", false, NamespaceMode::Node)));
        assert!(
            m.contains("refuse_host_namespaces") && m.contains("network"),
            "{m}"
        );
        let plain = pod("default", false, NamespaceMode::Pod);
        assert!(on.check_pod(&plain).is_ok());
        let privileged = ContainerConfig {
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    privileged: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let m = message(on.check_container(&plain, &privileged, |_| None));
        assert!(m.contains("refuse_privileged"), "{m}");
    }

    #[test]
    fn sensitive_host_paths() {
        let on = policy(true);
        let p = pod("default", false, NamespaceMode::Pod);
        let root = Config::default().root.display().to_string();
        for bad in [
            "/",
            "/etc",
            "/etc/kubernetes",
            "/proc/1",
            "/sys/fs/cgroup",
            "/var/run/docker.sock",
            "/var/run",
            "/run",
            "/var",
            "/var/lib/../lib/crius",
            root.as_str(),
            "/run/crius/crius.sock",
        ] {
            let m = message(on.check_container(&p, &mounting(bad), |_| None));
            assert!(m.contains("refuse_sensitive_host_paths"), "{bad}: {m}");
        }
        for ok in ["/srv/data", "/var/log/pods", "/tmp/x", "/etcetera"] {
            assert!(
                on.check_container(&p, &mounting(ok), |_| None).is_ok(),
                "{ok}"
            );
        }
        // A symlink is judged by where it leads.
        let link = |_: &Path| Some(PathBuf::from("/etc"));
        let m = message(on.check_container(&p, &mounting("/srv/innocent"), link));
        assert!(m.contains("/srv/innocent") && m.contains("/etc"), "{m}");
    }
}
