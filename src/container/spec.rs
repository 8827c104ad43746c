//! The OCI runtime spec of a container, built from the CRI request, the
//! image config and the pod it joins. Pure: everything the node provides
//! (paths, the resolved user, the pod's namespace pins) comes in through
//! [`SpecInput`], so every rule is unit-tested without a node.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use k8s_cri::v1::{ContainerConfig, LinuxContainerSecurityContext, MountPropagation};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDevice,
    LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

pub use crate::cgroups::HostDevice;

use super::process::User;

/// Paths hidden from unprivileged containers when kubelet sends none.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths read-only in unprivileged containers when kubelet sends none.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a spec cannot be built from the request.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A request value that cannot go into a spec (unknown capability,
    /// relative path, bad device permissions, out-of-range oom_score_adj).
    #[error("invalid {what}: {value}")]
    Invalid {
        /// Which value, e.g. `container path`.
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// oci-spec's builders refused a value.
    #[error("building the OCI spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
}

fn invalid(what: &'static str, value: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        what,
        value: value.into(),
    }
}

/// How the container's PID namespace is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidNamespace {
    /// Its own (Kubernetes' default).
    Container,
    /// The pod's pinned one (`ns`), whose /proc the pod init mounted at
    /// `proc`: the container's /proc is a bind of it, so nothing in the
    /// namespace has to mount one (see `executor::pod_init`).
    Pod {
        /// The pinned PID namespace file.
        ns: PathBuf,
        /// The pod init's /proc mount, bound as the container's /proc.
        proc: PathBuf,
    },
    /// The host's.
    Node,
    /// Another container's (`TARGET`, ephemeral debug containers).
    Target(PathBuf),
}

/// What the node provides for one container: paths and decisions the pure
/// rules cannot make themselves.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    /// The CRI container config being built into a spec.
    pub config: &'a ContainerConfig,
    /// argv, from [`super::process::command`].
    pub args: Vec<String>,
    /// From [`super::process::environment`].
    pub env: Vec<String>,
    /// The image's WORKDIR.
    pub image_workdir: Option<String>,
    /// Who the process runs as, resolved by [`super::process::resolve_user`].
    pub user: &'a User,
    /// The mounted overlay rootfs.
    pub rootfs: &'a Path,
    /// Pinned namespaces of the pod: net, ipc, uts (absent for host ones).
    pub pod_namespaces: Vec<(LinuxNamespaceType, PathBuf)>,
    /// Which PID namespace the container joins.
    pub pid: PidNamespace,
    /// The pod's `/etc/resolv.conf`, `/etc/hostname`, `/etc/hosts`.
    pub pod_files: Vec<(&'static str, PathBuf)>,
    /// The pod's /dev/shm (or the host's for host IPC pods).
    pub shm: Option<PathBuf>,
    /// The container cgroup, relative to each hierarchy root.
    pub cgroups_path: String,
    /// Whether the container gets its own cgroup namespace (cgroup v2).
    pub cgroup_namespace: bool,
    /// Host devices `(path, type, major, minor, mode, uid, gid)` for CRI
    /// `devices` and privileged containers, resolved by the caller.
    pub devices: Vec<HostDevice>,
    /// The node's default capability set (`[runtime] default_capabilities`).
    pub default_capabilities: &'a [String],
}

fn security(config: &ContainerConfig) -> LinuxContainerSecurityContext {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default()
}

/// Whether the request asks for a privileged container.
pub fn privileged(config: &ContainerConfig) -> bool {
    security(config).privileged
}

fn parse_capability(name: &str) -> Result<Capability, SpecError> {
    let full = capability_name(name);
    Capability::from_str(&full["CAP_".len()..]).map_err(|_| invalid("capability", name))
}

/// `net_admin`, `NET_ADMIN` and `CAP_NET_ADMIN` as `CAP_NET_ADMIN`.
pub fn capability_name(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

/// A container's capability sets, by name (`CAP_…`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CapabilitySets {
    /// Bounding, effective and permitted. For a non-root user the kernel
    /// empties effective and permitted at execve unless ambient keeps them.
    pub granted: Vec<String>,
    /// Inheritable and ambient: only what `add_ambient_capabilities` asks,
    /// so a non-root process keeps exactly those across execve.
    pub ambient: Vec<String>,
}

/// The capability sets, in cri-o's order: the node's `defaults` (or every
/// capability, privileged), `ALL` in `add_capabilities` for every one and
/// in `drop_capabilities` for none (the defaults are then not used), then
/// the named adds, then the named drops. `add_ambient_capabilities` (as
/// the CRI defines it) adds each to every set, ambient and inheritable
/// included; `ALL` is refused there: ambient capabilities are named.
/// cri-o and containerd ignore the ambient list; crius honours it.
pub fn capabilities(
    sec: &LinuxContainerSecurityContext,
    defaults: &[String],
) -> Result<CapabilitySets, SpecError> {
    let caps = sec.capabilities.clone().unwrap_or_default();
    let is_all = |c: &String| c.trim().eq_ignore_ascii_case("ALL");
    let named = |list: &[String]| -> Result<Vec<String>, SpecError> {
        list.iter()
            .filter(|c| !is_all(c))
            .map(|c| parse_capability(c).map(|_| capability_name(c)))
            .collect()
    };
    let (adds, drops) = (
        named(&caps.add_capabilities)?,
        named(&caps.drop_capabilities)?,
    );
    let mut ambient = Vec::new();
    for c in &caps.add_ambient_capabilities {
        if is_all(c) {
            return Err(invalid(
                "ambient capability",
                "ALL (ambient capabilities must be named)",
            ));
        }
        parse_capability(c)?;
        push_new(&mut ambient, capability_name(c));
    }
    let mut set: Vec<String> = Vec::new();
    if sec.privileged || caps.add_capabilities.iter().any(is_all) {
        set = all_capabilities();
    } else if !caps.drop_capabilities.iter().any(is_all) {
        for d in defaults {
            parse_capability(d)?;
            push_new(&mut set, capability_name(d));
        }
    }
    if !sec.privileged {
        for a in adds {
            push_new(&mut set, a);
        }
        set.retain(|c| !drops.contains(c));
    }
    for a in &ambient {
        push_new(&mut set, a.clone());
    }
    Ok(CapabilitySets {
        granted: set,
        ambient,
    })
}

fn push_new(v: &mut Vec<String>, c: String) {
    if !v.contains(&c) {
        v.push(c);
    }
}

/// Every capability the runtime itself may hand out: its own bounding set
/// (as containerd's `cap.Current()`). Nodes withhold some (here
/// CAP_SYS_RESOURCE): asking for those makes capset fail.
fn all_capabilities() -> Vec<String> {
    let mut out: Vec<String> = caps::read(None, caps::CapSet::Bounding)
        .unwrap_or_else(|_| caps::all())
        .into_iter()
        .map(|c| c.to_string())
        .collect();
    out.sort();
    out
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?)
}

fn bind(dest: &str, source: &Path, readonly: bool, propagation: &str) -> Result<Mount, SpecError> {
    let mut opts = vec!["rbind", if readonly { "ro" } else { "rw" }];
    if !propagation.is_empty() {
        opts.push(propagation);
    }
    opts.extend(["nosuid", "nodev"]);
    mount(dest, "bind", &source.to_string_lossy(), &opts)
}

/// Rejects container paths that are relative or climb out with `..`.
fn clean_container_path(p: &str) -> Result<String, SpecError> {
    if !p.starts_with('/') || p.split('/').any(|c| c == "..") || p.contains('\0') {
        return Err(invalid("container path", p));
    }
    let parts: Vec<&str> = p
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    Ok(format!("/{}", parts.join("/")))
}

/// The mounts: the standard filesystems, the pod's files and /dev/shm, and
/// the CRI mounts (which replace any standard one at the same path), parents
/// before children.
fn mounts(input: &SpecInput, privileged: bool) -> Result<(Vec<Mount>, Option<String>), SpecError> {
    let ro_sys = if privileged { "rw" } else { "ro" };
    let proc = match &input.pid {
        PidNamespace::Pod { proc, .. } => mount(
            "/proc",
            "bind",
            &proc.to_string_lossy(),
            &["bind", "nosuid", "noexec", "nodev"],
        )?,
        _ => mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
    };
    let mut out = vec![
        proc,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", ro_sys],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", ro_sys],
        )?,
    ];
    if let Some(shm) = &input.shm {
        out.push(bind("/dev/shm", shm, false, "")?);
    }
    let cri: Vec<(String, &k8s_cri::v1::Mount)> = input
        .config
        .mounts
        .iter()
        .map(|m| Ok((clean_container_path(&m.container_path)?, m)))
        .collect::<Result<_, SpecError>>()?;
    let taken: HashSet<&str> = cri.iter().map(|(p, _)| p.as_str()).collect();
    for (dest, path) in &input.pod_files {
        if !taken.contains(dest) {
            out.push(bind(dest, path, false, "")?);
        }
    }
    let mut root_propagation = None;
    for (dest, m) in &cri {
        if m.host_path.is_empty() || !m.host_path.starts_with('/') {
            return Err(invalid("mount host path", &m.host_path));
        }
        let propagation = match MountPropagation::try_from(m.propagation) {
            Ok(MountPropagation::PropagationPrivate) | Err(_) => "rprivate",
            Ok(MountPropagation::PropagationHostToContainer) => {
                if root_propagation.is_none() {
                    root_propagation = Some("rslave".to_string());
                }
                "rslave"
            }
            Ok(MountPropagation::PropagationBidirectional) => {
                if !privileged {
                    return Err(invalid(
                        "mount propagation",
                        format!("bidirectional on {dest} needs a privileged container"),
                    ));
                }
                root_propagation = Some("rshared".to_string());
                "rshared"
            }
        };
        out.retain(|x| x.destination() != Path::new(dest));
        let mut mount = bind(dest, Path::new(&m.host_path), m.readonly, propagation)?;
        if m.recursive_read_only {
            // OCI's recursive read-only option (runc, crun): the executor
            // makes every mount beneath read-only too. The server checked
            // that the mount is read-only and private.
            let mut opts = mount.options().clone().unwrap_or_default();
            opts.push("rro".into());
            mount.set_options(Some(opts));
        }
        if !m.uid_mappings.is_empty() {
            // An idmapped bind (OCI `uidMappings`/`gidMappings` on the
            // mount, as runc and crun read them): the server checked both
            // are the pod's user namespace's.
            mount
                .set_uid_mappings(Some(id_mappings(&m.uid_mappings)?))
                .set_gid_mappings(Some(id_mappings(&m.gid_mappings)?));
        }
        out.push(mount);
    }
    // Stable sort: a parent is mounted before anything beneath it.
    out.sort_by_key(|m| m.destination().components().count());
    Ok((out, root_propagation))
}

/// CRI id mappings as OCI ones.
fn id_mappings(
    maps: &[k8s_cri::v1::IdMapping],
) -> Result<Vec<oci_spec::runtime::LinuxIdMapping>, SpecError> {
    oci_id_mappings(maps.iter().map(|m| (m.container_id, m.host_id, m.length)))
}

/// `(container id, host id, length)` ranges as OCI id mappings.
fn oci_id_mappings(
    ranges: impl Iterator<Item = (u32, u32, u32)>,
) -> Result<Vec<oci_spec::runtime::LinuxIdMapping>, SpecError> {
    use oci_spec::runtime::LinuxIdMappingBuilder;
    Ok(ranges
        .map(|(container_id, host_id, size)| {
            LinuxIdMappingBuilder::default()
                .container_id(container_id)
                .host_id(host_id)
                .size(size)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?)
}

fn devices(
    input: &SpecInput,
) -> Result<(Vec<LinuxDevice>, Vec<oci_spec::runtime::LinuxDeviceCgroup>), SpecError> {
    let mut devs = Vec::new();
    let mut allow = Vec::new();
    for d in &input.devices {
        let typ = if d.char_device {
            LinuxDeviceType::C
        } else {
            LinuxDeviceType::B
        };
        let perms = if d.permissions.is_empty() {
            "rwm".to_string()
        } else {
            d.permissions.clone()
        };
        if perms.chars().any(|c| !"rwm".contains(c)) {
            return Err(invalid("device permissions", perms));
        }
        devs.push(
            LinuxDeviceBuilder::default()
                .path(d.container_path.clone())
                .typ(typ)
                .major(d.major)
                .minor(d.minor)
                .file_mode(d.mode & 0o7777)
                .uid(d.uid)
                .gid(d.gid)
                .build()?,
        );
        allow.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(typ)
                .major(d.major)
                .minor(d.minor)
                .access(perms)
                .build()?,
        );
    }
    Ok((devs, allow))
}

/// Puts a container in its pod's user namespace: joined through the pin
/// at `path`, with the namespace's mappings written as `uidMappings` and
/// `gidMappings` (what an OCI runtime reads; the embedded executor joins
/// the pinned namespace, whose maps are already set).
pub fn join_user_namespace(
    spec: &mut Spec,
    path: PathBuf,
    (uids, gids): &crate::sandbox::pinns::IdMaps,
) -> Result<(), SpecError> {
    let conv = |maps: &[crate::executor::userns::IdMap]| {
        oci_id_mappings(maps.iter().map(|m| (m.container_id, m.host_id, m.length)))
    };
    let (uid_mappings, gid_mappings) = (conv(uids)?, conv(gids)?);
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    namespaces.retain(|n| n.typ() != LinuxNamespaceType::User);
    namespaces.push(
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::User)
            .path(path)
            .build()?,
    );
    linux
        .set_namespaces(Some(namespaces))
        .set_uid_mappings(Some(uid_mappings))
        .set_gid_mappings(Some(gid_mappings));
    spec.set_linux(Some(linux));
    Ok(())
}

/// Builds the spec.
pub fn build(input: &SpecInput) -> Result<Spec, SpecError> {
    let config = input.config;
    let sec = security(config);
    let privileged = sec.privileged;
    let caps = capabilities(&sec, input.default_capabilities)?;
    let to_set = |names: &[String]| -> Result<HashSet<Capability>, SpecError> {
        names.iter().map(|c| parse_capability(c)).collect()
    };
    let (cap_set, ambient) = (to_set(&caps.granted)?, to_set(&caps.ambient)?);
    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else {
        input
            .image_workdir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    };
    if !cwd.starts_with('/') {
        return Err(invalid("working directory", cwd));
    }
    let mut env = input.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, PATH_ENV.to_string());
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", input.user.home));
    }
    let tty = config.tty;
    if !env.iter().any(|e| e.starts_with("TERM=")) && tty {
        env.push("TERM=xterm".into());
    }
    let user = UserBuilder::default()
        .uid(input.user.uid)
        .gid(input.user.gid)
        .additional_gids(input.user.additional_gids.clone())
        .build()?;
    let linux_caps = LinuxCapabilitiesBuilder::default()
        .bounding(cap_set.clone())
        .effective(cap_set.clone())
        .permitted(cap_set)
        // Never oci-spec's defaults (three capabilities): only what the
        // request names as ambient (CVE-2022-27652: nothing inheritable
        // unless asked).
        .inheritable(ambient.clone())
        .ambient(ambient)
        .build()?;
    let resources = config
        .linux
        .as_ref()
        .and_then(|l| l.resources.clone())
        .unwrap_or_default();
    let mut process = ProcessBuilder::default()
        .terminal(tty)
        .user(user)
        .args(input.args.clone())
        .env(env)
        .cwd(cwd)
        .capabilities(linux_caps)
        .no_new_privileges(sec.no_new_privs)
        .build()?;
    // oci-spec's builder defaults would cap open files at 1024: inherit the
    // node's limits instead, as cri-o does.
    process.set_rlimits(None);
    if resources.oom_score_adj != 0 {
        let adj = i32::try_from(resources.oom_score_adj)
            .ok()
            .filter(|a| (-1000..=1000).contains(a))
            .ok_or_else(|| invalid("oom_score_adj", resources.oom_score_adj.to_string()))?;
        process.set_oom_score_adj(Some(adj));
    }
    // The AppArmor profile and SELinux label depend on the node: set by
    // the caller (`container::lsm`).

    let mut namespaces = vec![
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Mount)
            .build()?,
    ];
    for (typ, path) in &input.pod_namespaces {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(*typ)
                .path(path.clone())
                .build()?,
        );
    }
    match &input.pid {
        PidNamespace::Container => namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Pid)
                .build()?,
        ),
        PidNamespace::Pod { ns: p, .. } | PidNamespace::Target(p) => namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Pid)
                .path(p.clone())
                .build()?,
        ),
        PidNamespace::Node => {}
    }
    // Privileged too, as runc and containerd do on cgroup v2: the
    // container's /sys/fs/cgroup is its own subtree either way.
    if input.cgroup_namespace {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Cgroup)
                .build()?,
        );
    }

    let (mounts, root_propagation) = mounts(input, privileged)?;
    let (devices, mut allow) = devices(input)?;
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(format!(
            "/{}",
            input.cgroups_path.trim_start_matches('/')
        )))
        .devices(devices);
    if !privileged {
        let masked: Vec<String> = if sec.masked_paths.is_empty() {
            DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect()
        } else {
            sec.masked_paths.clone()
        };
        let readonly: Vec<String> = if sec.readonly_paths.is_empty() {
            DEFAULT_READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            sec.readonly_paths.clone()
        };
        linux = linux.masked_paths(masked).readonly_paths(readonly);
    } else {
        linux = linux
            .masked_paths(Vec::<String>::new())
            .readonly_paths(Vec::<String>::new());
        allow.insert(
            0,
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .access("rwm")
                .build()?,
        );
    }
    if let Some(p) = root_propagation {
        linux = linux.rootfs_propagation(p);
    }
    let mut res = LinuxResourcesBuilder::default().devices(allow);
    let mut cpu = LinuxCpuBuilder::default();
    if resources.cpu_shares > 0 {
        cpu = cpu.shares(resources.cpu_shares as u64);
    }
    if resources.cpu_quota != 0 {
        cpu = cpu.quota(resources.cpu_quota);
    }
    if resources.cpu_period > 0 {
        cpu = cpu.period(resources.cpu_period as u64);
    }
    if !resources.cpuset_cpus.is_empty() {
        cpu = cpu.cpus(resources.cpuset_cpus.clone());
    }
    if !resources.cpuset_mems.is_empty() {
        cpu = cpu.mems(resources.cpuset_mems.clone());
    }
    res = res.cpu(cpu.build()?);
    if resources.memory_limit_in_bytes > 0 {
        let mut mem = LinuxMemoryBuilder::default().limit(resources.memory_limit_in_bytes);
        if resources.memory_swap_limit_in_bytes != 0 {
            mem = mem.swap(resources.memory_swap_limit_in_bytes);
        }
        res = res.memory(mem.build()?);
    }
    if !resources.unified.is_empty() {
        res = res.unified(resources.unified.clone());
    }
    linux = linux.resources(res.build()?);

    let mut annotations: HashMap<String, String> = config.annotations.clone();
    if let Some(m) = &config.metadata {
        annotations.insert("io.kubernetes.cri.container-name".into(), m.name.clone());
    }
    annotations.insert(
        "io.kubernetes.cri.container-type".into(),
        "container".into(),
    );
    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(input.rootfs)
                .readonly(sec.readonly_rootfs)
                .build()?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux.build()?)
        .annotations(annotations)
        .build()?;
    // Containers join the pod's UTS namespace: no hostname of their own.
    spec.set_hostname(None);
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{Capability as CriCaps, LinuxContainerConfig};

    fn user() -> User {
        User {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![10],
            home: "/home/u".into(),
        }
    }

    fn input<'a>(config: &'a ContainerConfig, u: &'a User) -> SpecInput<'a> {
        SpecInput {
            config,
            args: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: vec!["A=1".into()],
            image_workdir: Some("/work".into()),
            user: u,
            rootfs: Path::new("/r/merged"),
            pod_namespaces: vec![
                (LinuxNamespaceType::Network, "/run/p/ns/net".into()),
                (LinuxNamespaceType::Ipc, "/run/p/ns/ipc".into()),
                (LinuxNamespaceType::Uts, "/run/p/ns/uts".into()),
            ],
            pid: PidNamespace::Container,
            pod_files: vec![
                ("/etc/resolv.conf", "/run/p/resolv.conf".into()),
                ("/etc/hostname", "/run/p/hostname".into()),
                ("/etc/hosts", "/run/p/hosts".into()),
            ],
            shm: Some("/run/p/shm".into()),
            cgroups_path: "crius/crius-pod-1/crius-abc".into(),
            cgroup_namespace: false,
            devices: vec![],
            default_capabilities: defaults(),
        }
    }

    fn defaults() -> &'static [String] {
        static D: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        D.get_or_init(|| {
            crate::config::DEFAULT_CAPABILITIES
                .iter()
                .map(|s| s.to_string())
                .collect()
        })
    }

    fn with_security(sec: LinuxContainerSecurityContext) -> ContainerConfig {
        ContainerConfig {
            linux: Some(LinuxContainerConfig {
                security_context: Some(sec),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn dests(s: &Spec) -> Vec<String> {
        s.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect()
    }

    #[test]
    fn defaults_are_safe() {
        let c = ContainerConfig::default();
        let u = user();
        let s = build(&input(&c, &u)).unwrap();
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.cwd(), Path::new("/work"));
        assert_eq!(p.user().uid(), 1000);
        assert_eq!(p.user().additional_gids().as_ref().unwrap(), &vec![10]);
        let env = p.env().as_ref().unwrap();
        assert!(env[0].starts_with("PATH="));
        assert!(p.rlimits().is_none());
        assert!(s.hostname().is_none());
        assert!(env.contains(&"HOME=/home/u".to_string()));
        let caps = p
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .clone()
            .unwrap();
        assert_eq!(caps.len(), crate::config::DEFAULT_CAPABILITIES.len());
        assert!(!caps.contains(&Capability::SysAdmin));
        let c = p.capabilities().as_ref().unwrap();
        assert!(c.ambient().as_ref().is_none_or(|a| a.is_empty()));
        assert!(c.inheritable().as_ref().is_none_or(|a| a.is_empty()));
        let l = s.linux().as_ref().unwrap();
        assert!(
            l.masked_paths()
                .as_ref()
                .unwrap()
                .contains(&"/proc/kcore".to_string())
        );
        assert!(
            l.readonly_paths()
                .as_ref()
                .unwrap()
                .contains(&"/proc/sys".to_string())
        );
        let ns = l.namespaces().as_ref().unwrap();
        assert!(
            ns.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_none())
        );
        assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network
            && n.path().as_deref() == Some(Path::new("/run/p/ns/net"))));
        assert_eq!(
            l.cgroups_path().as_deref(),
            Some(Path::new("/crius/crius-pod-1/crius-abc"))
        );
        let d = dests(&s);
        let pos = |x: &str| d.iter().position(|m| m == x).unwrap();
        assert!(pos("/dev") < pos("/dev/pts") && pos("/dev") < pos("/dev/shm"));
        for want in [
            "/proc",
            "/sys/fs/cgroup",
            "/dev/shm",
            "/etc/hosts",
            "/etc/resolv.conf",
        ] {
            assert!(d.contains(&want.to_string()), "{want} in {d:?}");
        }
        let sys = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert!(sys.options().as_ref().unwrap().contains(&"ro".to_string()));
    }

    fn caps(add: &[&str], drop: &[&str], ambient: &[&str]) -> LinuxContainerSecurityContext {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        LinuxContainerSecurityContext {
            capabilities: Some(CriCaps {
                add_capabilities: v(add),
                drop_capabilities: v(drop),
                add_ambient_capabilities: v(ambient),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn capabilities_add_drop_all() {
        let granted = |sec: &LinuxContainerSecurityContext| {
            let mut g = capabilities(sec, defaults()).unwrap().granted;
            g.sort();
            g
        };
        let c = granted(&caps(&["SYS_ADMIN"], &["CAP_NET_RAW"], &[]));
        assert!(c.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(!c.contains(&"CAP_NET_RAW".to_string()));
        assert_eq!(c.len(), crate::config::DEFAULT_CAPABILITIES.len());
        // drop ALL + add X: only X (the defaults are not used).
        assert_eq!(
            granted(&caps(&["net_bind_service"], &["ALL"], &[])),
            vec!["CAP_NET_BIND_SERVICE"]
        );
        assert!(granted(&caps(&[], &["all"], &[])).is_empty());
        // add ALL: every capability the runtime holds, less named drops.
        let all = all_capabilities();
        assert_eq!(granted(&caps(&["ALL"], &[], &[])), all);
        let no_chown = granted(&caps(&["ALL"], &["CHOWN"], &[]));
        assert_eq!(no_chown.len(), all.len() - 1);
        assert!(!no_chown.contains(&"CAP_CHOWN".to_string()));
        // A named drop after a named add wins (cri-o's order).
        assert!(granted(&caps(&["SYS_ADMIN"], &["ALL", "SYS_ADMIN"], &[])).is_empty());
        assert!(capabilities(&caps(&["NOT_A_CAP"], &[], &[]), defaults()).is_err());
        let privileged = LinuxContainerSecurityContext {
            privileged: true,
            ..caps(&[], &["ALL"], &[])
        };
        assert_eq!(granted(&privileged), all);
    }

    #[test]
    fn node_defaults_and_ambient_capabilities() {
        let node = vec!["CHOWN".to_string(), "CAP_KILL".to_string()];
        let sets = capabilities(&caps(&[], &[], &[]), &node).unwrap();
        assert_eq!(sets.granted, vec!["CAP_CHOWN", "CAP_KILL"]);
        assert!(sets.ambient.is_empty());
        let bad = vec!["FLY".to_string()];
        assert!(capabilities(&caps(&[], &[], &[]), &bad).is_err());
        // Ambient capabilities join every set, dropped or not.
        let sets = capabilities(&caps(&[], &["ALL"], &["NET_BIND_SERVICE"]), &node).unwrap();
        assert_eq!(sets.granted, vec!["CAP_NET_BIND_SERVICE"]);
        assert_eq!(sets.ambient, vec!["CAP_NET_BIND_SERVICE"]);
        assert!(capabilities(&caps(&[], &[], &["ALL"]), &node).is_err());
        // In the spec: inheritable and ambient hold only the ambient ones.
        let c = with_security(caps(&[], &[], &["NET_ADMIN"]));
        let u = user();
        let s = build(&input(&c, &u)).unwrap();
        let pc = s
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        let one: HashSet<Capability> = [Capability::NetAdmin].into();
        assert_eq!(pc.ambient().as_ref(), Some(&one));
        assert_eq!(pc.inheritable().as_ref(), Some(&one));
        assert!(
            pc.bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::NetAdmin)
        );
        assert!(
            pc.effective()
                .as_ref()
                .unwrap()
                .contains(&Capability::NetAdmin)
        );
    }

    #[test]
    fn privileged_has_no_masks_and_rw_sys() {
        let c = with_security(LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        });
        let u = user();
        let s = build(&input(&c, &u)).unwrap();
        let l = s.linux().as_ref().unwrap();
        assert!(l.masked_paths().as_ref().is_none_or(|m| m.is_empty()));
        let sys = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert!(sys.options().as_ref().unwrap().contains(&"rw".to_string()));
    }

    #[test]
    fn cgroup_namespace_private_when_asked_privileged_or_not() {
        let u = user();
        let has_cgroupns = |privileged: bool, v2: bool| {
            let c = with_security(LinuxContainerSecurityContext {
                privileged,
                ..Default::default()
            });
            let mut i = input(&c, &u);
            i.cgroup_namespace = v2;
            let s = build(&i).unwrap();
            let l = s.linux().clone().unwrap();
            l.namespaces()
                .clone()
                .unwrap_or_default()
                .iter()
                .any(|n| n.typ() == LinuxNamespaceType::Cgroup && n.path().is_none())
        };
        for privileged in [false, true] {
            assert!(has_cgroupns(privileged, true), "privileged {privileged}");
            assert!(!has_cgroupns(privileged, false), "privileged {privileged}");
        }
    }

    #[test]
    fn cri_mounts_replace_and_propagate() {
        let c = ContainerConfig {
            mounts: vec![
                k8s_cri::v1::Mount {
                    container_path: "/etc/hosts".into(),
                    host_path: "/var/lib/kubelet/hosts".into(),
                    readonly: true,
                    ..Default::default()
                },
                k8s_cri::v1::Mount {
                    container_path: "/data/".into(),
                    host_path: "/srv".into(),
                    propagation: MountPropagation::PropagationHostToContainer as i32,
                    ..Default::default()
                },
                k8s_cri::v1::Mount {
                    container_path: "/rro".into(),
                    host_path: "/srv".into(),
                    readonly: true,
                    recursive_read_only: true,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let u = user();
        let s = build(&input(&c, &u)).unwrap();
        let ms = s.mounts().as_ref().unwrap();
        let hosts: Vec<_> = ms
            .iter()
            .filter(|m| m.destination() == Path::new("/etc/hosts"))
            .collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(
            hosts[0].source().as_deref(),
            Some(Path::new("/var/lib/kubelet/hosts"))
        );
        assert!(
            hosts[0]
                .options()
                .as_ref()
                .unwrap()
                .contains(&"ro".to_string())
        );
        let data = ms
            .iter()
            .find(|m| m.destination() == Path::new("/data"))
            .unwrap();
        assert!(
            data.options()
                .as_ref()
                .unwrap()
                .contains(&"rslave".to_string())
        );
        assert_eq!(
            s.linux().as_ref().unwrap().rootfs_propagation().as_deref(),
            Some("rslave")
        );
        let opts = |dest: &str| {
            ms.iter()
                .find(|m| m.destination() == Path::new(dest))
                .unwrap()
                .options()
                .clone()
                .unwrap()
        };
        let rro = opts("/rro");
        assert!(
            ["ro", "rro", "rprivate"]
                .iter()
                .all(|o| rro.contains(&o.to_string())),
            "{rro:?}"
        );
        assert!(!opts("/data").contains(&"rro".to_string()));
    }

    #[test]
    fn bad_requests_are_refused() {
        let u = user();
        for path in ["relative", "/a/../../etc"] {
            let c = ContainerConfig {
                mounts: vec![k8s_cri::v1::Mount {
                    container_path: path.into(),
                    host_path: "/srv".into(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            assert!(build(&input(&c, &u)).is_err(), "{path}");
        }
        let c = ContainerConfig {
            mounts: vec![k8s_cri::v1::Mount {
                container_path: "/x".into(),
                host_path: "/srv".into(),
                propagation: MountPropagation::PropagationBidirectional as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(build(&input(&c, &u)).is_err());
        let c = ContainerConfig {
            working_dir: "rel".into(),
            ..Default::default()
        };
        assert!(build(&input(&c, &u)).is_err());
    }

    #[test]
    fn spec_serialises_as_oci_json() {
        let c = ContainerConfig::default();
        let u = user();
        let s = build(&input(&c, &u)).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["root"]["path"], "/r/merged");
        assert_eq!(v["process"]["args"][0], "/bin/sh");
        let back: Spec = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
