//! Cgroups: pod and container cgroups under the `cgroup_parent` kubelet
//! gives, for cgroup v1 (each controller hierarchy, including the hybrid
//! layout) and v2, made the cgroupfs or the systemd way.
//!
//! With the cgroupfs driver crius makes the directories itself. With the
//! systemd driver systemd owns the tree, so a pod is a transient slice
//! (`<parent>-crius_pod_<id>.slice` under kubelet's slice) and a container
//! a transient scope (`crius-<id>.scope`, `Delegate=yes`) in it, started
//! and stopped through systemd's D-Bus API (`systemd`); crius then writes
//! only into the cgroups systemd made.
//!
//! On v2 (`v2`) controllers are enabled down the tree and limits written
//! through the [`fs::CgroupFs`] seam; device rules (`devices`) are v1
//! `devices.allow` lines or a v2 eBPF program.

// bpf(2) has no safe wrapper in nix or rustix: the device program is
// loaded and attached with raw syscalls, each block with its SAFETY
// argument. The only `unsafe` outside the executor.
#[allow(unsafe_code)]
pub mod devices;
pub mod fs;
pub mod systemd;
pub mod v2;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::config::CgroupDriver;

/// The slice pod monitors' scopes go in (systemd driver), cri-o's default
/// for conmon.
pub const MONITOR_SLICE: &str = "system.slice";

/// The scope of pod `pod_id`'s monitor (systemd driver), short ids as a
/// pod's cgroup.
pub fn monitor_scope(pod_id: &str) -> String {
    format!("crius-monitor-{}.scope", &pod_id[..pod_id.len().min(12)])
}

/// The cgroup layout of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// cgroup2 mounted at /sys/fs/cgroup.
    Unified,
    /// v1 controllers, plus a cgroup2 at /sys/fs/cgroup/unified.
    Hybrid,
    /// v1 controllers only.
    Legacy,
}

/// Detects the cgroup layout from the filesystem types under /sys/fs/cgroup.
pub fn cgroup_mode() -> Option<CgroupMode> {
    use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
    let is_cgroup2 = |p: &str| statfs(p).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC);
    if !Path::new("/sys/fs/cgroup").is_dir() {
        return None;
    }
    if is_cgroup2("/sys/fs/cgroup") {
        Some(CgroupMode::Unified)
    } else if is_cgroup2("/sys/fs/cgroup/unified") {
        Some(CgroupMode::Hybrid)
    } else if Path::new("/sys/fs/cgroup/memory").exists()
        || Path::new("/sys/fs/cgroup/cpu").exists()
    {
        Some(CgroupMode::Legacy)
    } else {
        None
    }
}

/// The layout detected once per process (the daemon's, a monitor's):
/// what the executor's join and the daemon's writes go by.
pub fn detected_mode() -> Option<CgroupMode> {
    static MODE: OnceLock<Option<CgroupMode>> = OnceLock::new();
    *MODE.get_or_init(cgroup_mode)
}

const ROOT: &str = "/sys/fs/cgroup";

/// Cgroup errors.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup parent that is relative or has `..`/empty components (cgroupfs), or is not a
    /// well-formed systemd slice name.
    #[error("invalid cgroup parent {0:?}")]
    InvalidParent(String),
    /// CRI resources that cannot be written as cgroup files: `unified` entries on cgroup v1 or
    /// with an unsafe key or a newline in the value, a malformed cpuset.
    #[error("invalid container resources: {0}")]
    InvalidResource(String),
    /// Neither a cgroup v1 hierarchy nor a v2 tree is mounted at `/sys/fs/cgroup`.
    #[error("no cgroup filesystem found under /sys/fs/cgroup")]
    NoCgroups,
    /// Creating, writing or removing a cgroup file or directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The cgroup file or directory involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// cgroup v2 refused to enable controllers for a level's children.
    #[error("enabling controllers ({wanted}) in {path}: {source}{hint}")]
    Controllers {
        /// The `cgroup.subtree_control` written.
        path: PathBuf,
        /// The controllers asked for, as written (`+cpu +memory …`).
        wanted: String,
        /// Why, when the error has a usual cause (processes in the level).
        hint: &'static str,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// A limit's interface file is missing: its controller is not enabled
    /// for (or not offered to) this cgroup.
    #[error("{path} does not exist: the {controller} controller is not available to this cgroup")]
    MissingFile {
        /// The interface file.
        path: PathBuf,
        /// The controller that provides it.
        controller: String,
    },
    /// The kernel refused a limit's value.
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        /// The interface file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The kernel's answer (EINVAL, ERANGE, EBUSY: the value's fault).
        #[source]
        source: std::io::Error,
    },
    /// systemd could not be reached or refused a unit (systemd driver).
    #[error(transparent)]
    Systemd(#[from] systemd::SystemdError),
    /// A cgroup the systemd driver cannot make: a scope without a
    /// process, a path that names no unit, no connection to systemd.
    #[error("systemd driver: {0}")]
    NoUnit(String),
    /// Loading or attaching the v2 device program failed.
    #[error("device filter for {path}: {op}: {source}{}", verifier_log(.log))]
    DeviceFilter {
        /// `load` or `attach`.
        op: &'static str,
        /// The container's cgroup.
        path: PathBuf,
        /// The bpf(2) error.
        #[source]
        source: std::io::Error,
        /// The verifier's log, when it said anything.
        log: String,
    },
}

fn verifier_log(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(" (verifier: {log})")
    }
}

impl CgroupError {
    /// Whether the request is at fault (a malformed resource, or a value
    /// the kernel refused as such), rather than the node.
    pub fn is_invalid_argument(&self) -> bool {
        match self {
            CgroupError::InvalidParent(_) | CgroupError::InvalidResource(_) => true,
            // systemd refused a property's value.
            CgroupError::Systemd(systemd::SystemdError::Call { source, .. }) => matches!(
                &**source,
                zbus::Error::MethodError(name, _, _)
                    if name.as_str() == "org.freedesktop.DBus.Error.InvalidArgs"
            ),
            CgroupError::Write { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::EINVAL) | Some(libc::ERANGE) | Some(libc::EBUSY)
            ),
            _ => false,
        }
    }
}

/// A cgroup failure by who must act: the request (a malformed or refused
/// value), the node (a controller it does not offer), or crius. Shared by
/// the container and pod paths that write limits.
impl From<CgroupError> for crate::error::Error {
    fn from(e: CgroupError) -> Self {
        use crate::error::Error;
        match e {
            e if e.is_invalid_argument() => Error::InvalidArgument(e.to_string()),
            e @ CgroupError::MissingFile { .. } => Error::FailedPrecondition(e.to_string()),
            e => Error::Internal(e.to_string()),
        }
    }
}

/// The node's cgroup layout and naming driver.
#[derive(Debug, Clone)]
pub struct Cgroups {
    mode: Option<CgroupMode>,
    driver: CgroupDriver,
    /// The connection the systemd driver makes its units through.
    systemd: Option<systemd::Systemd>,
}

impl Cgroups {
    /// Detects the layout once at start.
    pub fn detect(driver: CgroupDriver) -> Cgroups {
        Cgroups {
            mode: cgroup_mode(),
            driver,
            systemd: None,
        }
    }

    /// The same, making its units through `systemd` (the systemd driver).
    pub fn with_systemd(self, systemd: systemd::Systemd) -> Cgroups {
        Cgroups {
            systemd: Some(systemd),
            ..self
        }
    }

    /// Whether cgroups are systemd units: a container's scope then needs a
    /// process to start with (see [`Cgroups::create`]).
    pub fn units(&self) -> bool {
        self.driver == CgroupDriver::Systemd
    }

    /// Which cgroup version pod cgroups use here: "v1" (also in the hybrid
    /// layout) or "v2".
    pub fn version(&self) -> &'static str {
        match self.mode {
            Some(CgroupMode::Unified) => "v2",
            _ => "v1",
        }
    }

    /// The pod cgroup's path relative to the hierarchy root: a child named
    /// for the pod under `parent` (default `crius` / `crius.slice`); with
    /// the systemd driver the pod's own slice, `<parent>-crius_pod_<id>.slice`
    /// (a slice's name says where it sits).
    pub fn pod_path(&self, parent: &str, pod_id: &str) -> Result<String, CgroupError> {
        let short = &pod_id[..pod_id.len().min(12)];
        match self.driver {
            CgroupDriver::Cgroupfs => {
                let parent = if parent.is_empty() { "/crius" } else { parent };
                let clean = parent.trim_matches('/');
                if !parent.starts_with('/')
                    || clean
                        .split('/')
                        .any(|c| c.is_empty() || c == ".." || c == ".")
                {
                    return Err(CgroupError::InvalidParent(parent.into()));
                }
                Ok(format!("{clean}/crius-pod-{short}"))
            }
            CgroupDriver::Systemd => {
                // A slice's name says where it sits, so a parent given as a
                // path (`/test.slice` from critest, a cgroupfs-style
                // `/kubepods.slice/kubepods-pod1.slice`) is its last
                // component, as cri-o reads it.
                let parent = if parent.is_empty() {
                    "crius.slice"
                } else {
                    parent.rsplit('/').next().unwrap_or_default()
                };
                let stem = parent
                    .strip_suffix(".slice")
                    .ok_or_else(|| CgroupError::InvalidParent(parent.into()))?;
                expand_slice(&format!("{stem}-crius_pod_{short}.slice"))
            }
        }
    }

    /// A container's cgroup path under its pod's: `crius-<id>` (cgroupfs)
    /// or the scope `crius-<id>.scope` (systemd), short ids as the pod's.
    pub fn container_path(&self, pod: &str, id: &str) -> String {
        let short = &id[..id.len().min(12)];
        match self.driver {
            CgroupDriver::Cgroupfs => format!("{pod}/crius-{short}"),
            CgroupDriver::Systemd => format!("{pod}/crius-{short}.scope"),
        }
    }

    /// Moves a pod's monitor (process `pid`) out of the daemon's cgroup.
    /// With the systemd driver it gets a scope of its own in
    /// `system.slice`, `crius-monitor-<pod>.scope`, as cri-o gives conmon
    /// one: crius runs as a service whose stop or restart kills every
    /// process of its cgroup, and the monitor must outlive the daemon. The
    /// scope goes when the monitor exits. With cgroupfs nothing moves.
    /// Blocks: call it off the async workers.
    pub fn place_monitor(&self, pod_id: &str, pid: u32) -> Result<(), CgroupError> {
        let desc = format!("crius monitor of pod {pod_id}");
        self.scope_for(&monitor_scope(pod_id), MONITOR_SLICE, pid, desc)
    }

    /// Moves a pod's init (PID 1 of its PID namespace, `pid`) out of the
    /// daemon's cgroup, for the same reason as [`Self::place_monitor`]:
    /// its death would end every container of the pod. With the systemd
    /// driver it gets the scope `crius-init-<pod>.scope` in the pod's slice
    /// (`pod_cgroup`), as cri-o's infra container; with cgroupfs it stays
    /// (a v2 pod cgroup with containers in it can hold no process).
    pub fn place_pod_init(
        &self,
        pod_cgroup: &str,
        pod_id: &str,
        pid: u32,
    ) -> Result<(), CgroupError> {
        let slice = systemd::unit_of(pod_cgroup)
            .ok_or_else(|| CgroupError::NoUnit(format!("{pod_cgroup:?} names no unit")))?;
        let unit = format!("crius-init-{}.scope", &pod_id[..pod_id.len().min(12)]);
        let desc = format!("crius init of pod {pod_id}");
        self.scope_for(&unit, slice, pid, desc)
    }

    /// Starts scope `unit` in `slice` holding `pid` (systemd driver only).
    fn scope_for(
        &self,
        unit: &str,
        slice: &str,
        pid: u32,
        description: String,
    ) -> Result<(), CgroupError> {
        use zbus::zvariant::Value;
        if self.driver != CgroupDriver::Systemd {
            return Ok(());
        }
        let sd = self.connection()?;
        let mut props = systemd::base_properties(description);
        props.push(("Slice", Value::from(slice.to_string())));
        props.push((
            "TimeoutStopUSec",
            Value::from(systemd::SCOPE_STOP_TIMEOUT_USEC),
        ));
        props.push(("PIDs", Value::from(vec![pid])));
        Ok(sd.block_on(sd.start(unit, props))?)
    }

    /// The directories a relative cgroup path has, one per hierarchy.
    pub fn dirs(&self, rel: &str) -> Result<Vec<PathBuf>, CgroupError> {
        match self.mode {
            None => Err(CgroupError::NoCgroups),
            Some(CgroupMode::Unified) => Ok(vec![Path::new(ROOT).join(rel)]),
            Some(_) => Ok(v1_controllers().into_iter().map(|c| c.join(rel)).collect()),
        }
    }

    /// The directory holding `controller`'s files of cgroup `rel`: the one
    /// v2 directory, or that controller's v1 hierarchy (`cpuacct`, `memory`,
    /// `pids`: the kernel's names, which hybrid layouts link to merged
    /// hierarchies such as `cpu,cpuacct`). For readers such as the stats
    /// collector.
    pub fn controller_dir(&self, controller: &str, rel: &str) -> Option<PathBuf> {
        let rel = rel.trim_start_matches('/');
        match self.mode? {
            CgroupMode::Unified => Some(Path::new(ROOT).join(rel)),
            _ => Some(Path::new(ROOT).join(controller).join(rel)),
        }
    }

    /// Creates the cgroup in every hierarchy (parents too); on v2 with
    /// the controllers enabled from the root down to its parent.
    ///
    /// With the systemd driver it starts the unit the path names instead
    /// (a slice, or a `Delegate=yes` scope holding `pids`, which systemd
    /// needs: a scope cannot start empty), with `resources` as unit
    /// properties, and waits for it; on v2 it then enables the
    /// controllers systemd leaves alone (hugetlb) down to the unit's
    /// parent, as runc does. Blocks: call it off the async workers.
    pub fn create(
        &self,
        rel: &str,
        pids: &[u32],
        resources: &k8s_cri::v1::LinuxContainerResources,
    ) -> Result<(), CgroupError> {
        if self.driver == CgroupDriver::Systemd {
            self.start_unit(rel, pids, resources)?;
            if self.mode == Some(CgroupMode::Unified) {
                return v2::create(&fs::RealCgroupFs, Path::new(ROOT), rel);
            }
            return Ok(());
        }
        if self.mode == Some(CgroupMode::Unified) {
            return v2::create(&fs::RealCgroupFs, Path::new(ROOT), rel);
        }
        for dir in self.dirs(rel)? {
            create_with_parents(&dir)?;
        }
        Ok(())
    }

    fn connection(&self) -> Result<&systemd::Systemd, CgroupError> {
        self.systemd
            .as_ref()
            .ok_or_else(|| CgroupError::NoUnit("no connection to systemd".into()))
    }

    fn start_unit(
        &self,
        rel: &str,
        pids: &[u32],
        resources: &k8s_cri::v1::LinuxContainerResources,
    ) -> Result<(), CgroupError> {
        use zbus::zvariant::Value;
        let sd = self.connection()?;
        let unit = systemd::unit_of(rel)
            .ok_or_else(|| CgroupError::NoUnit(format!("{rel:?} names no unit")))?;
        let parent = rel
            .trim_end_matches('/')
            .rsplit('/')
            .nth(1)
            .unwrap_or("-.slice")
            .to_string();
        let mut props = systemd::base_properties(format!("crius {unit}"));
        if unit.ends_with(".slice") {
            // The parent slice (kubelet's, or one a test names) is started
            // with it if it is not running; placement follows the name.
            props.push(("Wants", Value::from(vec![parent])));
        } else {
            if pids.is_empty() {
                return Err(CgroupError::NoUnit(format!(
                    "scope {unit} needs a process to start with"
                )));
            }
            props.push(("Slice", Value::from(parent)));
            props.push(("Delegate", Value::from(true)));
            props.push((
                "TimeoutStopUSec",
                Value::from(systemd::SCOPE_STOP_TIMEOUT_USEC),
            ));
            props.push(("PIDs", Value::from(pids.to_vec())));
        }
        for accounting in [
            "CPUAccounting",
            "MemoryAccounting",
            "TasksAccounting",
            "IOAccounting",
        ] {
            props.push((accounting, Value::from(true)));
        }
        // The node's pids limit follows in `apply`, before the container's
        // process runs.
        props.extend(systemd::resource_properties(resources, 0));
        Ok(sd.block_on(sd.start(unit, props))?)
    }

    /// Writes CRI resources into the cgroup `rel` (which must exist), and
    /// `pids_limit` (the node's default, 0: none) as `pids.max` unless the
    /// resources set it or the pids controller is not there. With the
    /// systemd driver the unit's properties (the limit as `TasksMax`) are
    /// set first, so a `daemon-reload` keeps them.
    pub fn apply(
        &self,
        rel: &str,
        r: &k8s_cri::v1::LinuxContainerResources,
        pids_limit: u64,
    ) -> Result<(), CgroupError> {
        if let (Some(sd), Some(unit)) = (&self.systemd, systemd::unit_of(rel)) {
            let props = systemd::resource_properties(r, pids_limit);
            if !props.is_empty() {
                sd.block_on(sd.set_properties(unit, props))?;
            }
        }
        let base = Path::new(ROOT);
        let path_of = |file: &str| match file.split_once('/') {
            Some((ctrl, f)) => base.join(ctrl).join(rel).join(f),
            None => v2::dir(base, rel).join(file),
        };
        match self.mode {
            None => Err(CgroupError::NoCgroups),
            Some(CgroupMode::Unified) => {
                let mut files = resource_files(Version::V2, r)?;
                add_pids_limit(Version::V2, &mut files, pids_limit, |f| path_of(f).exists());
                v2::apply(&fs::RealCgroupFs, &v2::dir(base, rel), &files)
            }
            Some(_) => {
                let mut files = resource_files(Version::V1, r)?;
                add_pids_limit(Version::V1, &mut files, pids_limit, |f| path_of(f).exists());
                for (file, value) in files {
                    let path = path_of(&file);
                    std::fs::write(&path, &value).map_err(|source| CgroupError::Write {
                        path: path.clone(),
                        value,
                        source,
                    })?;
                }
                Ok(())
            }
        }
    }

    /// Device rules: deny every device but the standard ones and those
    /// given (a privileged container gets all). A container with
    /// CAP_MKNOD can otherwise open host disks. v1 writes them into the
    /// devices controller; v2 attaches them as an eBPF program (none for a
    /// privileged container: nothing to refuse).
    pub fn restrict_devices(
        &self,
        rel: &str,
        privileged: bool,
        devices: &[HostDevice],
    ) -> Result<(), CgroupError> {
        if self.mode == Some(CgroupMode::Unified) {
            if privileged {
                return Ok(());
            }
            return devices::attach_filter(
                &v2::dir(Path::new(ROOT), rel),
                &devices::rules(devices)?,
            );
        }
        let dir = Path::new(ROOT).join("devices").join(rel);
        if !dir.join("devices.allow").exists() {
            return Ok(());
        }
        let write = |f: &str, v: &str| {
            std::fs::write(dir.join(f), v).map_err(|source| CgroupError::Io {
                path: dir.join(f),
                source,
            })
        };
        if privileged {
            return write("devices.allow", "a");
        }
        write("devices.deny", "a")?;
        let mut allow = devices::standard_v1_lines();
        for d in devices {
            let perms = if d.permissions.is_empty() {
                "rwm"
            } else {
                &d.permissions
            };
            let kind = if d.char_device { 'c' } else { 'b' };
            allow.push(format!("{kind} {}:{} {perms}", d.major, d.minor));
        }
        for a in allow {
            write("devices.allow", &a)?;
        }
        Ok(())
    }

    /// SIGKILLs every process in the cgroup and its descendants, then
    /// removes them all, deepest first; missing ones are fine. Processes
    /// that outlived a container's init (in a shared PID namespace) or that
    /// a crash left keep a cgroup busy until they are gone, so a busy
    /// directory is killed and tried again for up to [`EMPTY_WAIT`].
    /// With the systemd driver the unit the path names is stopped after
    /// that (SIGKILL first, so nothing waits out systemd's SIGTERM; the
    /// stop ends the unit whose cgroup is gone; a missing unit is fine).
    /// Blocking: run it off the async workers.
    pub fn kill_and_remove(&self, rel: &str) -> Result<(), CgroupError> {
        for dir in self.dirs(rel)? {
            kill_and_remove_tree(&dir)?;
        }
        if self.driver == CgroupDriver::Systemd
            && let Some(unit) = systemd::unit_of(rel)
        {
            let sd = self.connection()?;
            sd.block_on(sd.stop(unit))?;
        }
        Ok(())
    }

    /// Removes the cgroup's own directories; missing ones are fine. With
    /// the systemd driver it stops the unit the path names (a pod's slice
    /// takes the scopes in it along; a missing unit is fine) and systemd
    /// removes the cgroup. Blocks: call it off the async workers.
    pub fn remove(&self, rel: &str) -> Result<(), CgroupError> {
        if self.driver == CgroupDriver::Systemd
            && let Some(unit) = systemd::unit_of(rel)
        {
            let sd = self.connection()?;
            return Ok(sd.block_on(sd.stop(unit))?);
        }
        for dir in self.dirs(rel)? {
            match std::fs::remove_dir(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(CgroupError::Io {
                        path: dir,
                        source: e,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// How long [`Cgroups::kill_and_remove`] waits for killed processes to
/// leave a cgroup (exit takes a moment, more for a process in D state).
pub const EMPTY_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn kill_and_remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let io = |source| CgroupError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let children = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    for child in children.flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            kill_and_remove_tree(&child.path())?;
        }
    }
    let deadline = std::time::Instant::now() + EMPTY_WAIT;
    loop {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(io(e)),
        }
    }
}

/// Turns on the kernel's `favordynmods` for cgroup migrations: on cgroup
/// v2 by remounting the hierarchy with the option, on v1 by keeping a
/// named, controller-less hierarchy mounted with it at `mountpoint` (the
/// lock it tunes is shared by all hierarchies). Idempotent.
pub fn favor_dynmods(mountpoint: &Path) -> Result<(), CgroupError> {
    use nix::mount::{MsFlags, mount};
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: nix::errno::Errno| CgroupError::Io {
            path,
            source: std::io::Error::from(e),
        }
    };
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if cgroup_mode() == Some(CgroupMode::Unified) {
        let root = Path::new(ROOT);
        if mounts
            .lines()
            .any(|l| l.contains(" /sys/fs/cgroup ") && l.contains("favordynmods"))
        {
            return Ok(());
        }
        return mount(
            None::<&str>,
            root,
            None::<&str>,
            MsFlags::MS_REMOUNT,
            Some("favordynmods"),
        )
        .map_err(io(root));
    }
    let point = mountpoint.display().to_string();
    if mounts
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(point.as_str()))
    {
        return Ok(());
    }
    std::fs::create_dir_all(mountpoint).map_err(|source| CgroupError::Io {
        path: mountpoint.to_path_buf(),
        source,
    })?;
    mount(
        Some("cgroup"),
        mountpoint,
        Some("cgroup"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("none,name=crius-favordynmods,favordynmods"),
    )
    .map_err(io(mountpoint))
}

/// v1 controller hierarchies (named ones like `name=systemd` and the
/// hybrid layout's empty cgroup2 `unified` are not resource controllers).
fn v1_controllers() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(ROOT)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    name != "unified" && name != "systemd" && p.join("cgroup.procs").exists()
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// mkdir -p, giving each new cpuset level its parent's cpus and mems (v1
/// cpusets start empty and refuse tasks otherwise).
fn create_with_parents(dir: &Path) -> Result<(), CgroupError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_with_parents(parent)?;
    }
    let io = |source| CgroupError::Io {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io(e)),
        _ => {}
    }
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let mine = dir.join(f);
        let empty =
            mine.exists() && std::fs::read_to_string(&mine).is_ok_and(|v| v.trim().is_empty());
        if let (true, Some(p)) = (empty, dir.parent()) {
            let v = std::fs::read_to_string(p.join(f)).map_err(io)?;
            std::fs::write(&mine, v.trim()).map_err(io)?;
        }
    }
    Ok(())
}

/// `kubepods-besteffort-pod1.slice` → `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice`.
fn expand_slice(slice: &str) -> Result<String, CgroupError> {
    let bad = || CgroupError::InvalidParent(slice.into());
    let name = slice.strip_suffix(".slice").ok_or_else(bad)?;
    if name.is_empty()
        || name.contains('/')
        || name.starts_with('-')
        || name.ends_with('-')
        || name.contains("--")
    {
        return Err(bad());
    }
    let mut path = Vec::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path.join("/"))
}

/// A device node found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    /// The device node on the host that is exposed.
    pub host_path: PathBuf,
    /// Where it appears inside the container.
    pub container_path: PathBuf,
    /// Character device when true, block device otherwise.
    pub char_device: bool,
    /// Device major number.
    pub major: i64,
    /// Device minor number.
    pub minor: i64,
    /// `st_mode` of the host node; only the permission bits are given to the container's node.
    pub mode: u32,
    /// Owner uid of the host node, kept for the container's node.
    pub uid: u32,
    /// Owner gid of the host node, kept for the container's node.
    pub gid: u32,
    /// cgroup device permissions, `rwm` subset.
    pub permissions: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_expand_like_systemd() {
        assert_eq!(
            expand_slice("kubepods-besteffort-pod1.slice").unwrap(),
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice"
        );
        assert!(expand_slice("kubepods").is_err());
        assert!(expand_slice("a--b.slice").is_err());
        assert!(expand_slice("../x.slice").is_err());
    }

    #[test]
    fn pod_paths() {
        let id = "0123456789abcdef0123";
        let fs = Cgroups {
            mode: Some(CgroupMode::Legacy),
            driver: CgroupDriver::Cgroupfs,
            systemd: None,
        };
        assert_eq!(
            fs.pod_path("/kubepods/burstable/podu1", id).unwrap(),
            "kubepods/burstable/podu1/crius-pod-0123456789ab"
        );
        assert_eq!(fs.pod_path("", id).unwrap(), "crius/crius-pod-0123456789ab");
        assert!(fs.pod_path("/a/../../etc", id).is_err());
        assert!(fs.pod_path("relative", id).is_err());
        assert_eq!(
            fs.container_path("crius/crius-pod-0123456789ab", id),
            "crius/crius-pod-0123456789ab/crius-0123456789ab"
        );
        let sd = Cgroups {
            mode: Some(CgroupMode::Unified),
            driver: CgroupDriver::Systemd,
            systemd: None,
        };
        let pod = sd.pod_path("kubepods-pod1.slice", id).unwrap();
        assert_eq!(
            pod,
            "kubepods.slice/kubepods-pod1.slice/kubepods-pod1-crius_pod_0123456789ab.slice"
        );
        assert_eq!(
            sd.pod_path("", id).unwrap(),
            "crius.slice/crius-crius_pod_0123456789ab.slice"
        );
        assert_eq!(
            sd.container_path(&pod, id),
            format!("{pod}/crius-0123456789ab.scope")
        );
        assert!(sd.pod_path("kubepods", id).is_err());
        // A path names its last component, as cri-o reads it.
        assert_eq!(
            sd.pod_path("/test.slice", id).unwrap(),
            "test.slice/test-crius_pod_0123456789ab.slice"
        );
        assert_eq!(
            sd.pod_path("/kubepods.slice/kubepods-pod1.slice", id)
                .unwrap(),
            pod
        );
        assert!(sd.pod_path("/", id).is_err());
        assert!(sd.pod_path("/test.slice/..", id).is_err());
        // Without a connection the driver fails clearly, never mkdirs.
        let e = sd
            .create(&pod, &[], &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no connection to systemd"), "{e}");
    }
}

/// Which cgroup interface files to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// cgroup v1: one hierarchy per controller; files are named `<controller>/<file>`.
    V1,
    /// cgroup v2: the unified tree.
    V2,
}

/// Adds the node's pids limit (`pids_limit`, 0: none) to `files` as
/// `pids.max` unless they set it already (a `pids.max` in the request's
/// `unified` map wins) or the controller is missing (`exists` says whether
/// the file is there: a node without the pids controller still runs
/// containers, unlimited).
pub fn add_pids_limit(
    version: Version,
    files: &mut Vec<(String, String)>,
    pids_limit: u64,
    exists: impl Fn(&str) -> bool,
) {
    let file = match version {
        Version::V1 => "pids/pids.max",
        Version::V2 => "pids.max",
    };
    if pids_limit == 0 || files.iter().any(|(f, _)| f == file) || !exists(file) {
        return;
    }
    files.push((file.to_string(), pids_limit.to_string()));
}

/// A memory limit or CPU quota of -1: no limit. The CRI refuses it for a
/// memory limit at the edge; crius uses it for a pod whose resources name
/// none (see `sandbox::resources`).
pub const UNLIMITED: i64 = -1;

/// The cgroup files (relative name, value) that apply CRI container
/// resources, for v1 controllers (`cpu/cpu.shares`) or the v2 tree
/// (`cpu.weight`). Unset (zero) fields write nothing; a memory limit or
/// quota of [`UNLIMITED`] lifts the limit.
pub fn resource_files(
    version: Version,
    r: &k8s_cri::v1::LinuxContainerResources,
) -> Result<Vec<(String, String)>, CgroupError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |f: &str, v: String| out.push((f.to_string(), v));
    let invalid = |what: &str| CgroupError::InvalidResource(what.to_string());
    match version {
        Version::V1 => {
            if r.cpu_shares > 0 {
                put("cpu/cpu.shares", r.cpu_shares.max(2).to_string());
            }
            if r.cpu_period > 0 {
                put("cpu/cpu.cfs_period_us", r.cpu_period.to_string());
            }
            if r.cpu_quota != 0 {
                put("cpu/cpu.cfs_quota_us", r.cpu_quota.to_string());
            }
            if r.memory_limit_in_bytes > 0 || r.memory_limit_in_bytes == UNLIMITED {
                put(
                    "memory/memory.limit_in_bytes",
                    r.memory_limit_in_bytes.to_string(),
                );
            }
            if r.memory_swap_limit_in_bytes != 0 {
                put(
                    "memory/memory.memsw.limit_in_bytes",
                    r.memory_swap_limit_in_bytes.to_string(),
                );
            }
            for h in &r.hugepage_limits {
                put(
                    &format!("hugetlb/hugetlb.{}.limit_in_bytes", h.page_size),
                    h.limit.to_string(),
                );
            }
            if !r.unified.is_empty() {
                return Err(invalid("unified resources need cgroup v2"));
            }
        }
        Version::V2 => {
            if r.cpu_shares > 0 {
                // runc's mapping of shares [2, 262144] onto weight [1, 10000].
                let shares = r.cpu_shares.clamp(2, 262_144);
                put(
                    "cpu.weight",
                    (1 + ((shares - 2) * 9999) / 262_142).to_string(),
                );
            }
            if r.cpu_quota != 0 || r.cpu_period > 0 {
                let quota = if r.cpu_quota > 0 {
                    r.cpu_quota.to_string()
                } else {
                    "max".into()
                };
                let period = if r.cpu_period > 0 {
                    r.cpu_period
                } else {
                    100_000
                };
                put("cpu.max", format!("{quota} {period}"));
            }
            if r.memory_limit_in_bytes > 0 {
                put("memory.max", r.memory_limit_in_bytes.to_string());
            } else if r.memory_limit_in_bytes == UNLIMITED {
                put("memory.max", "max".into());
            }
            // CRI's swap limit is memory+swap; v2 limits swap alone.
            match r.memory_swap_limit_in_bytes {
                -1 => put("memory.swap.max", "max".into()),
                s if s > 0 && r.memory_limit_in_bytes > 0 => put(
                    "memory.swap.max",
                    (s - r.memory_limit_in_bytes).max(0).to_string(),
                ),
                _ => {}
            }
            for h in &r.hugepage_limits {
                put(&format!("hugetlb.{}.max", h.page_size), h.limit.to_string());
            }
            let mut unified: Vec<_> = r.unified.iter().collect();
            unified.sort();
            for (k, v) in unified {
                v2::check_unified_key(k)?;
                if v.contains('\n') {
                    return Err(invalid(&format!("unified value for {k:?}")));
                }
                put(k, v.clone());
            }
        }
    }
    let cpuset = match version {
        Version::V1 => ("cpuset/cpuset.cpus", "cpuset/cpuset.mems"),
        Version::V2 => ("cpuset.cpus", "cpuset.mems"),
    };
    for (file, value) in [(cpuset.0, &r.cpuset_cpus), (cpuset.1, &r.cpuset_mems)] {
        if !value.is_empty() {
            if !value
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b',' || b == b'-')
            {
                return Err(invalid(&format!("cpuset {value:?}")));
            }
            out.push((file.to_string(), value.clone()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod resource_tests {
    use super::*;
    use k8s_cri::v1::{HugepageLimit, LinuxContainerResources};

    fn res() -> LinuxContainerResources {
        LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 256 << 20,
            memory_swap_limit_in_bytes: 512 << 20,
            cpuset_cpus: "0-1".into(),
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            ..Default::default()
        }
    }

    fn get(files: &[(String, String)], f: &str) -> Option<String> {
        files.iter().find(|(k, _)| k == f).map(|(_, v)| v.clone())
    }

    #[test]
    fn v1_files() {
        let f = resource_files(Version::V1, &res()).unwrap();
        assert_eq!(get(&f, "cpu/cpu.shares").as_deref(), Some("512"));
        assert_eq!(get(&f, "cpu/cpu.cfs_quota_us").as_deref(), Some("50000"));
        assert_eq!(
            get(&f, "memory/memory.limit_in_bytes").as_deref(),
            Some("268435456")
        );
        assert_eq!(
            get(&f, "memory/memory.memsw.limit_in_bytes").as_deref(),
            Some("536870912")
        );
        assert_eq!(
            get(&f, "hugetlb/hugetlb.2MB.limit_in_bytes").as_deref(),
            Some("4194304")
        );
        assert_eq!(get(&f, "cpuset/cpuset.cpus").as_deref(), Some("0-1"));
        let mut u = res();
        u.unified.insert("memory.high".into(), "1".into());
        assert!(resource_files(Version::V1, &u).is_err());
    }

    #[test]
    fn node_pids_limit_unless_the_request_sets_one() {
        let there = |_: &str| true;
        let mut f = resource_files(Version::V1, &res()).unwrap();
        add_pids_limit(Version::V1, &mut f, 4096, there);
        assert_eq!(get(&f, "pids/pids.max").as_deref(), Some("4096"));
        let mut r = res();
        r.unified.insert("pids.max".into(), "100".into());
        let mut f = resource_files(Version::V2, &r).unwrap();
        add_pids_limit(Version::V2, &mut f, 4096, there);
        assert_eq!(
            f.iter().filter(|(k, _)| k == "pids.max").count(),
            1,
            "{f:?}"
        );
        assert_eq!(get(&f, "pids.max").as_deref(), Some("100"));
        let mut f = resource_files(Version::V2, &res()).unwrap();
        add_pids_limit(Version::V2, &mut f, 0, there);
        assert_eq!(get(&f, "pids.max"), None, "0: no limit");
        add_pids_limit(Version::V2, &mut f, 4096, |_| false);
        assert_eq!(get(&f, "pids.max"), None, "no pids controller");
        add_pids_limit(Version::V2, &mut f, 4096, there);
        assert_eq!(get(&f, "pids.max").as_deref(), Some("4096"));
    }

    #[test]
    fn unlimited_memory_lifts_the_limit() {
        let r = LinuxContainerResources {
            memory_limit_in_bytes: UNLIMITED,
            cpu_quota: UNLIMITED,
            ..Default::default()
        };
        let f = resource_files(Version::V1, &r).unwrap();
        assert_eq!(
            get(&f, "memory/memory.limit_in_bytes").as_deref(),
            Some("-1")
        );
        assert_eq!(get(&f, "cpu/cpu.cfs_quota_us").as_deref(), Some("-1"));
        let f = resource_files(Version::V2, &r).unwrap();
        assert_eq!(get(&f, "memory.max").as_deref(), Some("max"));
        assert_eq!(get(&f, "cpu.max").as_deref(), Some("max 100000"));
    }

    #[test]
    fn v2_files() {
        let mut r = res();
        r.unified.insert("memory.high".into(), "100000000".into());
        let f = resource_files(Version::V2, &r).unwrap();
        assert_eq!(get(&f, "cpu.weight").as_deref(), Some("20"));
        assert_eq!(get(&f, "cpu.max").as_deref(), Some("50000 100000"));
        assert_eq!(get(&f, "memory.max").as_deref(), Some("268435456"));
        assert_eq!(get(&f, "memory.swap.max").as_deref(), Some("268435456"));
        assert_eq!(get(&f, "memory.high").as_deref(), Some("100000000"));
        assert_eq!(get(&f, "hugetlb.2MB.max").as_deref(), Some("4194304"));
        // Extremes of the shares → weight mapping, and an unlimited quota.
        let edge = LinuxContainerResources {
            cpu_shares: 2,
            cpu_quota: -1,
            ..Default::default()
        };
        let f = resource_files(Version::V2, &edge).unwrap();
        assert_eq!(get(&f, "cpu.weight").as_deref(), Some("1"));
        assert_eq!(get(&f, "cpu.max").as_deref(), Some("max 100000"));
        let big = LinuxContainerResources {
            cpu_shares: 262_144,
            ..Default::default()
        };
        assert_eq!(
            get(&resource_files(Version::V2, &big).unwrap(), "cpu.weight").as_deref(),
            Some("10000")
        );
        let mut bad = LinuxContainerResources::default();
        bad.unified.insert("../escape".into(), "1".into());
        assert!(resource_files(Version::V2, &bad).is_err());
        let cpus = LinuxContainerResources {
            cpuset_cpus: "0\n1".into(),
            ..Default::default()
        };
        assert!(resource_files(Version::V2, &cpus).is_err());
    }
}
