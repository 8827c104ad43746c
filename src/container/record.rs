//! The container record kept in the store, its run state, and the pure
//! rules around them: names, stop signals, list filters and sizes.

use super::*;

/// One container, stored in the `containers` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64 hex digits, random.
    pub id: String,
    /// The pod sandbox the container belongs to.
    pub pod_id: String,
    /// The CRI config the container was created with, as kubelet sent it.
    pub config: ContainerConfig,
    /// The image id (`sha256:` of its config).
    pub image_id: String,
    /// The digest reference (or id) of the image used.
    pub image_ref: String,
    /// Absolute log path; empty when the pod has no log directory.
    pub log_path: String,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// The container cgroup relative to each hierarchy root.
    pub cgroup: String,
    /// Chain ids of the image layers the rootfs stacks.
    pub layers: Vec<String>,
    /// Signal that asks the container to stop: the image's STOPSIGNAL, else (absent or unparsable)
    /// SIGTERM.
    pub stop_signal: i32,
    /// User id the process runs as, resolved at create from the spec and the image's /etc/passwd.
    pub uid: u32,
    /// Primary group id, resolved at create.
    pub gid: u32,
    /// Supplementary group ids, resolved at create.
    pub additional_gids: Vec<u32>,
    /// Current resources (updated by UpdateContainerResources).
    pub resources: Option<LinuxContainerResources>,
    /// Why StartContainer failed, for the status message.
    #[serde(default)]
    pub start_error: Option<String>,
    /// Image volumes: the CRI mounts that show an image.
    #[serde(default)]
    pub image_volumes: Vec<ImageVolume>,
}

/// A CRI mount backed by an image (KEP-4639), as the container got it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageVolume {
    /// Index of the mount in the container config's `mounts`.
    pub mount: usize,
    /// The image's id, what PullImage answered for it: ContainerStatus
    /// reports it as the mount's `image_ref`.
    pub image_id: String,
    /// Chain ids of its layers, bottom to top: kept from image removal
    /// while the container exists.
    pub layers: Vec<String>,
}

/// Where a container is in its life (see `table.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunState {
    /// Created, running or exited, as the CRI reports it.
    pub state: ContainerState,
    /// The init process's pid in the host PID namespace; absent before start (or if its file is
    /// gone).
    pub pid: Option<i32>,
    /// Nanoseconds since the epoch when the process was let go; 0 while never started.
    pub started_at: i64,
    /// How and when the process ended; absent until it has.
    pub exit: Option<ExitRecord>,
}

/// The signal number of a CRI `Signal` (a container's requested stop
/// signal); `None` for RUNTIME_DEFAULT and signals this platform lacks.
pub fn signal_number(s: k8s_cri::v1::Signal) -> Option<i32> {
    let name = s.as_str_name();
    // Newer CRI releases prefix the enum's names (`SIGNAL_SIGTERM`).
    let name = name.strip_prefix("SIGNAL_").unwrap_or(name);
    name.starts_with("SIG")
        .then(|| parse_signal(name))
        .flatten()
}

/// The CRI `Signal` of a signal number (RUNTIME_DEFAULT for one it cannot
/// name).
pub fn cri_signal(n: i32) -> k8s_cri::v1::Signal {
    nix::sys::signal::Signal::try_from(n)
        .ok()
        .and_then(|sig| {
            k8s_cri::v1::Signal::from_str_name(sig.as_str())
                .or_else(|| k8s_cri::v1::Signal::from_str_name(&format!("SIGNAL_{}", sig.as_str())))
        })
        .unwrap_or(k8s_cri::v1::Signal::RuntimeDefault)
}

/// A signal number from an image STOPSIGNAL (`SIGTERM`, `TERM`, `15`).
pub(super) fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i32>() {
        return (1..65).contains(&n).then_some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name).to_string();
    nix::sys::signal::Signal::iterator()
        .find(|sig| sig.as_str().strip_prefix("SIG") == Some(name.as_str()))
        .map(|sig| sig as i32)
}

/// A container's share of a ListContainers answer.
pub(super) fn list_bytes(c: &ContainerRecord) -> usize {
    crate::listing::entry_bytes(&k8s_cri::v1::Container {
        id: c.id.clone(),
        pod_sandbox_id: c.pod_id.clone(),
        metadata: c.config.metadata.clone(),
        image: c.config.image.clone(),
        image_ref: c.image_ref.clone(),
        state: 0,
        created_at: c.created_at,
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        image_id: c.image_id.clone(),
    })
}

pub(super) fn container_name(c: &ContainerConfig) -> Result<(String, u32)> {
    let m = c
        .metadata
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("container config needs metadata".into()))?;
    if m.name.is_empty() {
        return Err(Error::InvalidArgument(
            "container metadata.name is empty".into(),
        ));
    }
    Ok((m.name.clone(), m.attempt))
}

/// Labels/state/pod filter of ListContainers.
pub fn matches_filter(
    c: &ContainerRecord,
    st: &RunState,
    f: &k8s_cri::v1::ContainerFilter,
) -> bool {
    if !f.id.is_empty() && !c.id.starts_with(&f.id) {
        return false;
    }
    if !f.pod_sandbox_id.is_empty() && !c.pod_id.starts_with(&f.pod_sandbox_id) {
        return false;
    }
    if let Some(s) = &f.state
        && s.state != st.state as i32
    {
        return false;
    }
    let labels: &HashMap<String, String> = &c.config.labels;
    crate::sandbox::labels_match(labels, &f.label_selector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_parse() {
        assert_eq!(parse_signal("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("term"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal(""), None);
    }

    #[test]
    fn cri_signals_round_trip() {
        let term = cri_signal(libc::SIGTERM);
        assert_eq!(term, k8s_cri::v1::Signal::Sigterm);
        assert_eq!(signal_number(term), Some(libc::SIGTERM));
        assert_eq!(signal_number(k8s_cri::v1::Signal::RuntimeDefault), None);
    }
}
