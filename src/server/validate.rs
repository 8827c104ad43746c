//! Request validation at the edge: every field a CRI request carries is
//! checked for shape and size before the core sees it, and bad input is
//! answered `InvalidArgument` with a message that quotes at most a short
//! prefix of it. Limits follow Kubernetes' own where it has one; they are
//! listed in the README ("Request limits"). Checks that need the node's
//! state (does the pod exist, is a port free) stay in the core.

use k8s_cri::v1::*;
use tonic::Status;

use crate::error::shown as quote;

/// Sizes and counts a request may not exceed.
pub mod limits {
    /// Pod and container names, namespaces, uids (a DNS subdomain).
    pub const NAME: usize = 253;
    /// A label or annotation key: a DNS-subdomain prefix, `/`, a 63-byte name.
    pub const KEY: usize = 253 + 1 + 63;
    /// A label value. Kubernetes' object labels stop at 63, but kubelet
    /// copies the pod's name (up to 253) into `io.kubernetes.pod.name`.
    pub const LABEL_VALUE: usize = 253;
    /// Labels and annotations of one object together (Kubernetes allows
    /// 256 KiB of annotations per object).
    pub const METADATA_BYTES: usize = 256 * 1024;
    /// Command, arguments and environment together: what execve takes
    /// (ARG_MAX is a quarter of the 8 MiB default stack limit).
    pub const EXEC_BYTES: usize = 1 << 20;
    /// Environment variables of one container.
    pub const ENV_ENTRIES: usize = 4096;
    /// Mounts, devices, port mappings, sysctls, DNS entries, groups, ...
    pub const ENTRIES: usize = 1024;
    /// A path.
    pub const PATH: usize = 4096;
    /// An image reference.
    pub const IMAGE: usize = 1024;
    /// A registry credential field.
    pub const AUTH: usize = 64 * 1024;
    /// A container or pod id as clients send it (crius's are 64 hex digits,
    /// prefixes allowed; critest asks for unknown ids as UUIDs).
    pub const ID: usize = 128;
}

fn bad(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

type Check = Result<(), Status>;

/// No NUL, newline or other control character.
fn printable(what: &str, s: &str) -> Check {
    if s.chars().any(char::is_control) {
        return Err(bad(format!("{what} {} has a control character", quote(s))));
    }
    Ok(())
}

fn max_len(what: &str, s: &str, max: usize) -> Check {
    if s.len() > max {
        return Err(bad(format!(
            "{what} {} is longer than {max} bytes",
            quote(s)
        )));
    }
    Ok(())
}

fn max_count(what: &str, n: usize, max: usize) -> Check {
    if n > max {
        return Err(bad(format!("{n} {what} is more than the {max} allowed")));
    }
    Ok(())
}

/// Supplemental group ids: at most [`limits::ENTRIES`], each a valid gid.
fn supplemental_groups(groups: &[i64]) -> Check {
    max_count("supplemental groups", groups.len(), limits::ENTRIES)?;
    if groups.iter().any(|g| !(0..=u32::MAX as i64).contains(g)) {
        return Err(bad("a supplemental group is out of range"));
    }
    Ok(())
}

/// A name, namespace or uid: 1–253 bytes of letters, digits, `.`, `_`, `-`,
/// starting with a letter or digit. Kubernetes' names are stricter (no
/// upper case, no `_`), but CRI clients such as critest use both.
pub fn name(what: &str, s: &str) -> Check {
    if s.is_empty() {
        return Err(bad(format!("{what} is empty")));
    }
    max_len(what, s, limits::NAME)?;
    let ok = s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(bad(format!(
            "{what} {} may hold only letters, digits, '.', '_' and '-', and must start with a letter or digit",
            quote(s)
        )));
    }
    Ok(())
}

/// A container or pod id as a client sends it: empty (some RPCs allow
/// that, the caller decides) or up to 128 letters, digits, `.`, `_`, `-`
/// not starting with `.`. Well-formed but unknown ids keep their CRI
/// meaning (NotFound, or success for Stop and Remove).
pub fn id(what: &str, s: &str) -> Check {
    let ok = s.len() <= limits::ID
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(bad(format!("{what} {} is not an id", quote(s))));
    }
    Ok(())
}

/// An absolute path without `..`, NUL or control characters.
pub fn abs_path(what: &str, s: &str) -> Check {
    max_len(what, s, limits::PATH)?;
    printable(what, s)?;
    if !s.starts_with('/') {
        return Err(bad(format!("{what} {} is not absolute", quote(s))));
    }
    if s.split('/').any(|c| c == "..") {
        return Err(bad(format!("{what} {} climbs out with ..", quote(s))));
    }
    Ok(())
}

fn labels(what: &str, m: &std::collections::HashMap<String, String>, values: bool) -> Check {
    for (k, v) in m {
        if k.is_empty() {
            return Err(bad(format!("{what} key is empty")));
        }
        max_len(&format!("{what} key"), k, limits::KEY)?;
        printable(&format!("{what} key"), k)?;
        if values {
            max_len(&format!("{what} value"), v, limits::LABEL_VALUE)?;
            printable(&format!("{what} value"), v)?;
        }
    }
    Ok(())
}

/// Labels and annotations of one object: keys, label values, total size.
fn metadata_maps(
    labels_map: &std::collections::HashMap<String, String>,
    annotations: &std::collections::HashMap<String, String>,
) -> Check {
    labels("label", labels_map, true)?;
    labels("annotation", annotations, false)?;
    let total: usize = labels_map
        .iter()
        .chain(annotations)
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if total > limits::METADATA_BYTES {
        return Err(bad(format!(
            "labels and annotations hold {total} bytes, more than the {} allowed",
            limits::METADATA_BYTES
        )));
    }
    Ok(())
}

fn namespace_mode(what: &str, v: i32) -> Check {
    NamespaceMode::try_from(v)
        .map(|_| ())
        .map_err(|_| bad(format!("{what} namespace mode {v} is unknown")))
}

/// A user namespace request (`namespace_options.userns_options`): NODE
/// (the host's, also when absent) or POD with exactly one uid and one gid
/// range each, mapping container id 0, non-empty and inside the 32-bit id
/// space. CONTAINER and TARGET have no meaning for user namespaces.
fn user_namespace(u: &UserNamespace) -> Check {
    match NamespaceMode::try_from(u.mode) {
        Ok(NamespaceMode::Node) => {
            if !u.uids.is_empty() || !u.gids.is_empty() {
                return Err(bad("user namespace mode NODE takes no id mappings"));
            }
            Ok(())
        }
        Ok(NamespaceMode::Pod) => {
            for (what, maps) in [("uid", &u.uids), ("gid", &u.gids)] {
                let [m] = maps.as_slice() else {
                    return Err(bad(format!(
                        "user namespace mode POD needs exactly one {what} mapping, got {}",
                        maps.len()
                    )));
                };
                id_range(&format!("user namespace {what} mapping"), m)?;
            }
            Ok(())
        }
        Ok(mode) => Err(bad(format!(
            "user namespace mode {} is not supported: only POD and NODE",
            mode.as_str_name()
        ))),
        Err(_) => Err(bad(format!("user namespace mode {} is unknown", u.mode))),
    }
}

/// One id mapping range (a pod user namespace's, or an idmapped mount's):
/// it maps container id 0, is non-empty and stays inside the 32-bit id
/// space.
fn id_range(what: &str, m: &IdMapping) -> Check {
    if m.container_id != 0 {
        return Err(bad(format!(
            "{what} must map container id 0 (starts at {})",
            m.container_id
        )));
    }
    if m.length == 0 {
        return Err(bad(format!("{what} has length 0")));
    }
    if u64::from(m.host_id) + u64::from(m.length) > u64::from(u32::MAX) {
        return Err(bad(format!(
            "{what} {}+{} runs past the last id",
            m.host_id, m.length
        )));
    }
    Ok(())
}

/// An idmapped mount's `uid_mappings` and `gid_mappings` (kubelet sets the
/// pod's on every volume of a pod with a user namespace): both or neither
/// (as runc requires), one range each like the pod's. That they are the
/// pod's is checked where the pod is known (`container::create`).
fn mount_mappings(m: &Mount) -> Check {
    if m.uid_mappings.is_empty() && m.gid_mappings.is_empty() {
        return Ok(());
    }
    let at = quote(&m.container_path);
    if m.uid_mappings.is_empty() || m.gid_mappings.is_empty() {
        return Err(bad(format!(
            "idmapped mount at {at} needs both uid and gid mappings"
        )));
    }
    for (what, maps) in [("uid", &m.uid_mappings), ("gid", &m.gid_mappings)] {
        let [r] = maps.as_slice() else {
            return Err(bad(format!(
                "idmapped mount at {at} needs exactly one {what} mapping, like its pod's user namespace, got {}",
                maps.len()
            )));
        };
        id_range(&format!("idmapped mount at {at}: {what} mapping"), r)?;
    }
    Ok(())
}

/// A pod's config, as RunPodSandbox gets it.
pub fn pod_config(c: &PodSandboxConfig) -> Check {
    let m = c
        .metadata
        .as_ref()
        .ok_or_else(|| bad("pod sandbox config needs metadata"))?;
    name("pod metadata.name", &m.name)?;
    name("pod metadata.namespace", &m.namespace)?;
    name("pod metadata.uid", &m.uid)?;
    if m.attempt > u32::MAX / 2 {
        return Err(bad("pod metadata.attempt is out of range"));
    }
    max_len("hostname", &c.hostname, 64)?;
    if !c.log_directory.is_empty() {
        abs_path("log directory", &c.log_directory)?;
        for fs in ["/proc", "/sys", "/dev"] {
            if c.log_directory == fs || c.log_directory.starts_with(&format!("{fs}/")) {
                return Err(bad(format!(
                    "log directory {} is inside {fs}",
                    quote(&c.log_directory)
                )));
            }
        }
    }
    metadata_maps(&c.labels, &c.annotations)?;
    if let Some(dns) = &c.dns_config {
        dns_config(dns)?;
    }
    max_count("port mappings", c.port_mappings.len(), limits::ENTRIES)?;
    for p in &c.port_mappings {
        port_mapping(p)?;
    }
    if let Some(l) = &c.linux {
        max_len("cgroup parent", &l.cgroup_parent, limits::PATH)?;
        printable("cgroup parent", &l.cgroup_parent)?;
        if l.cgroup_parent.split('/').any(|c| c == "..") {
            return Err(bad(format!(
                "cgroup parent {} climbs out with ..",
                quote(&l.cgroup_parent)
            )));
        }
        max_count("sysctls", l.sysctls.len(), limits::ENTRIES)?;
        for (k, v) in &l.sysctls {
            sysctl(k, v)?;
        }
        if let Some(s) = &l.security_context {
            if let Some(ns) = &s.namespace_options {
                namespace_mode("network", ns.network)?;
                namespace_mode("pid", ns.pid)?;
                namespace_mode("ipc", ns.ipc)?;
                if let Some(u) = &ns.userns_options {
                    user_namespace(u)?;
                }
            }
            supplemental_groups(&s.supplemental_groups)?;
            for (what, v) in [
                ("run_as_user", s.run_as_user.as_ref().map(|v| v.value)),
                ("run_as_group", s.run_as_group.as_ref().map(|v| v.value)),
            ] {
                if v.is_some_and(|v| !(0..=u32::MAX as i64).contains(&v)) {
                    return Err(bad(format!("{what} is out of range")));
                }
            }
        }
        for r in [&l.overhead, &l.resources].into_iter().flatten() {
            resources(r)?;
        }
    }
    Ok(())
}

fn dns_config(dns: &DnsConfig) -> Check {
    max_count("DNS servers", dns.servers.len(), limits::ENTRIES)?;
    for s in &dns.servers {
        if s.parse::<std::net::IpAddr>().is_err() {
            return Err(bad(format!("DNS server {} is not an IP address", quote(s))));
        }
    }
    // Kubernetes allows 32 search domains of 2048 bytes in all.
    max_count("DNS search domains", dns.searches.len(), 32)?;
    let total: usize = dns.searches.iter().map(String::len).sum();
    if total > 2048 {
        return Err(bad("DNS search domains hold more than 2048 bytes"));
    }
    for s in dns.searches.iter().chain(&dns.options) {
        max_len("DNS entry", s, 253)?;
        if s.is_empty() || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad(format!(
                "DNS entry {} is empty or has blanks",
                quote(s)
            )));
        }
    }
    max_count("DNS options", dns.options.len(), limits::ENTRIES)
}

/// A port mapping: container port 1–65535, host port 0–65535 (0: none),
/// a known protocol, an empty or valid host IP.
pub fn port_mapping(p: &PortMapping) -> Check {
    if !(1..=65535).contains(&p.container_port) {
        return Err(bad(format!(
            "container port {} is out of range 1-65535",
            p.container_port
        )));
    }
    if !(0..=65535).contains(&p.host_port) {
        return Err(bad(format!(
            "host port {} is out of range 0-65535",
            p.host_port
        )));
    }
    if Protocol::try_from(p.protocol).is_err() {
        return Err(bad(format!("port protocol {} is unknown", p.protocol)));
    }
    if !p.host_ip.is_empty() && p.host_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(bad(format!(
            "host IP {} is not an IP address",
            quote(&p.host_ip)
        )));
    }
    Ok(())
}

/// A sysctl: a dotted or slashed name of letters, digits, `_`, `-`, and a
/// one-line value. Whether the kernel knows it is found out when it is
/// written (an unknown one is InvalidArgument too).
fn sysctl(key: &str, value: &str) -> Check {
    let ok = !key.is_empty()
        && key.len() <= 256
        && !key.contains("..")
        && !key.starts_with(['.', '/'])
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if !ok {
        return Err(bad(format!("sysctl name {} is malformed", quote(key))));
    }
    max_len("sysctl value", value, 4096)?;
    printable("sysctl value", value)
}

/// Linux resources of a container (CreateContainer, UpdateContainerResources)
/// or a pod. Unset is 0; odd values are refused, not silently changed.
pub fn resources(r: &LinuxContainerResources) -> Check {
    let range = |what: &str, v: i64, lo: i64, hi: i64| -> Check {
        if v != 0 && !(lo..=hi).contains(&v) {
            return Err(bad(format!("{what} {v} is out of range {lo}-{hi}")));
        }
        Ok(())
    };
    // The kernel's own bounds (CFS period 1 ms–1 s; shares 2–262144).
    range("cpu_period", r.cpu_period, 1000, 1_000_000)?;
    if r.cpu_quota != -1 {
        range("cpu_quota", r.cpu_quota, 1000, i64::MAX)?;
    }
    range("cpu_shares", r.cpu_shares, 2, 262_144)?;
    // Below a few MiB no process (and not the container's set-up) can live;
    // Docker's floor is 6 MiB.
    range(
        "memory_limit_in_bytes",
        r.memory_limit_in_bytes,
        MEMORY_FLOOR,
        i64::MAX,
    )?;
    if r.memory_swap_limit_in_bytes < -1 {
        return Err(bad(format!(
            "memory_swap_limit_in_bytes {} is negative",
            r.memory_swap_limit_in_bytes
        )));
    }
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(bad(format!(
            "oom_score_adj {} is out of range -1000-1000",
            r.oom_score_adj
        )));
    }
    for (what, s) in [
        ("cpuset_cpus", &r.cpuset_cpus),
        ("cpuset_mems", &r.cpuset_mems),
    ] {
        let ok = s.len() <= 4096
            && s.bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b',' | b'-'));
        if !ok {
            return Err(bad(format!("{what} {} is not a CPU list", quote(s))));
        }
    }
    max_count("hugepage limits", r.hugepage_limits.len(), limits::ENTRIES)?;
    for h in &r.hugepage_limits {
        let ok = h.page_size.len() <= 16 && h.page_size.bytes().all(|b| b.is_ascii_alphanumeric());
        if !ok || h.limit > i64::MAX as u64 {
            return Err(bad(format!(
                "hugepage limit {} is malformed",
                quote(&h.page_size)
            )));
        }
    }
    max_count("unified cgroup entries", r.unified.len(), limits::ENTRIES)?;
    for (k, v) in &r.unified {
        let ok = !k.is_empty()
            && k.len() <= 256
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            && !k.starts_with('.');
        if !ok {
            return Err(bad(format!("unified cgroup key {} is malformed", quote(k))));
        }
        max_len("unified cgroup value", v, 4096)?;
        printable("unified cgroup value", v)?;
    }
    Ok(())
}

/// The smallest memory limit a container may ask for.
pub const MEMORY_FLOOR: i64 = 6 << 20;

fn exec_args<'a>(what: &str, args: impl Iterator<Item = &'a String>, total: &mut usize) -> Check {
    for a in args {
        if a.contains('\0') {
            return Err(bad(format!("{what} {} has a NUL byte", quote(a))));
        }
        *total += a.len() + 1;
        if *total > limits::EXEC_BYTES {
            return Err(bad(format!(
                "command, arguments and environment exceed {} bytes",
                limits::EXEC_BYTES
            )));
        }
    }
    Ok(())
}

/// A command for ExecSync, Exec: not empty, no NUL, within execve's limit.
pub fn command(cmd: &[String]) -> Check {
    if cmd.first().is_none_or(|c| c.is_empty()) {
        return Err(bad("exec command is empty"));
    }
    exec_args("command argument", cmd.iter(), &mut 0)
}

/// A container's config, as CreateContainer gets it.
pub fn container_config(c: &ContainerConfig) -> Check {
    let m = c
        .metadata
        .as_ref()
        .ok_or_else(|| bad("container config needs metadata"))?;
    name("container metadata.name", &m.name)?;
    if m.attempt > u32::MAX / 2 {
        return Err(bad("container metadata.attempt is out of range"));
    }
    let image = c.image.as_ref().map(|i| i.image.as_str()).unwrap_or("");
    image_ref(image)?;
    let mut total = 0;
    exec_args("command", c.command.iter(), &mut total)?;
    exec_args("argument", c.args.iter(), &mut total)?;
    max_count("environment variables", c.envs.len(), limits::ENV_ENTRIES)?;
    for kv in &c.envs {
        if kv.key.is_empty() || kv.key.contains(['=', '\0']) {
            return Err(bad(format!(
                "environment variable name {} is empty or has '=' or NUL",
                quote(&kv.key)
            )));
        }
        // Values are bytes on the wire since CRI v0.36; a process's
        // environment (and the OCI spec) holds text.
        let value = std::str::from_utf8(&kv.value).map_err(|_| {
            bad(format!(
                "environment variable {} has a value that is not UTF-8",
                quote(&kv.key)
            ))
        })?;
        let entry = format!("{}={value}", kv.key);
        exec_args("environment variable", std::iter::once(&entry), &mut total)?;
    }
    if !c.working_dir.is_empty() {
        abs_path("working directory", &c.working_dir)?;
    }
    metadata_maps(&c.labels, &c.annotations)?;
    if !c.log_path.is_empty() {
        max_len("log path", &c.log_path, limits::PATH)?;
        printable("log path", &c.log_path)?;
        let rel = std::path::Path::new(&c.log_path);
        if rel.is_absolute()
            || rel
                .components()
                .any(|p| !matches!(p, std::path::Component::Normal(_)))
        {
            return Err(bad(format!(
                "log path {} must stay inside the pod's log directory",
                quote(&c.log_path)
            )));
        }
    }
    max_count("mounts", c.mounts.len(), limits::ENTRIES)?;
    for mt in &c.mounts {
        mount(mt)?;
    }
    max_count("devices", c.devices.len(), limits::ENTRIES)?;
    for d in &c.devices {
        abs_path("device host path", &d.host_path)?;
        if !d.container_path.is_empty() {
            abs_path("device container path", &d.container_path)?;
        }
        if !d
            .permissions
            .bytes()
            .all(|b| matches!(b, b'r' | b'w' | b'm'))
        {
            return Err(bad(format!(
                "device permissions {} are not a subset of \"rwm\"",
                quote(&d.permissions)
            )));
        }
    }
    if let Some(l) = &c.linux {
        if let Some(r) = &l.resources {
            resources(r)?;
        }
        if let Some(s) = &l.security_context {
            container_security(s)?;
        }
    }
    Ok(())
}

/// A CRI mount: a host path, or an image volume (an image named like a
/// container's, read-only, optionally a relative sub path of it).
/// Recursive read-only only with read-only and private propagation;
/// idmapping as [`mount_mappings`] says.
fn mount(m: &Mount) -> Check {
    abs_path("mount container path", &m.container_path)?;
    let clean: Vec<&str> = m
        .container_path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if clean.is_empty() {
        return Err(bad("a mount cannot replace the container's root"));
    }
    if clean[0] == "proc" {
        return Err(bad(format!(
            "mount container path {} is inside /proc, which the runtime manages",
            quote(&m.container_path)
        )));
    }
    match &m.image {
        Some(image) => image_volume(m, &image.image)?,
        None if !m.image_sub_path.is_empty() => {
            return Err(bad(
                "image_sub_path is set on a mount that is not an image volume",
            ));
        }
        None => abs_path("mount host path", &m.host_path)?,
    }
    let propagation = MountPropagation::try_from(m.propagation)
        .map_err(|_| bad(format!("mount propagation {} is unknown", m.propagation)))?;
    // cri-o's and containerd's rules: a recursive read-only mount is
    // read-only, and private (a slave or shared mount would receive the
    // host's later mounts writable).
    if m.recursive_read_only && !m.readonly {
        return Err(bad(format!(
            "recursive read-only mount at {} must also be read-only (readonly: true)",
            quote(&m.container_path)
        )));
    }
    if m.recursive_read_only && propagation != MountPropagation::PropagationPrivate {
        return Err(bad(format!(
            "recursive read-only mount at {} needs private propagation, not {}",
            quote(&m.container_path),
            propagation.as_str_name()
        )));
    }
    mount_mappings(m)
}

/// The image side of an image volume mount (KEP-4639): the image is mounted
/// read-only, so a writable request is refused, as the CRI asks.
fn image_volume(m: &Mount, image: &str) -> Check {
    image_ref(image)?;
    if !m.host_path.is_empty() {
        return Err(bad("an image volume mount has no host path"));
    }
    if !m.readonly {
        return Err(bad(format!(
            "image volume {} at {} must be read-only",
            quote(image),
            quote(&m.container_path)
        )));
    }
    let sub = &m.image_sub_path;
    max_len("image sub path", sub, limits::PATH)?;
    printable("image sub path", sub)?;
    if sub.starts_with('/') || sub.split('/').any(|c| c == "..") {
        return Err(bad(format!(
            "image sub path {} must be relative and stay inside the image",
            quote(sub)
        )));
    }
    Ok(())
}

fn container_security(s: &LinuxContainerSecurityContext) -> Check {
    if let Some(ns) = &s.namespace_options {
        namespace_mode("network", ns.network)?;
        namespace_mode("pid", ns.pid)?;
        namespace_mode("ipc", ns.ipc)?;
        id("target container id", &ns.target_id)?;
        if let Some(u) = &ns.userns_options {
            user_namespace(u)?;
        }
    }
    for (what, v) in [
        ("run_as_user", s.run_as_user.as_ref().map(|v| v.value)),
        ("run_as_group", s.run_as_group.as_ref().map(|v| v.value)),
    ] {
        if v.is_some_and(|v| !(0..=u32::MAX as i64).contains(&v)) {
            return Err(bad(format!("{what} is out of range")));
        }
    }
    max_len("run_as_username", &s.run_as_username, limits::NAME)?;
    printable("run_as_username", &s.run_as_username)?;
    supplemental_groups(&s.supplemental_groups)?;
    if SupplementalGroupsPolicy::try_from(s.supplemental_groups_policy).is_err() {
        return Err(bad(format!(
            "supplemental_groups_policy {} is unknown",
            s.supplemental_groups_policy
        )));
    }
    if let Some(caps) = &s.capabilities {
        for c in caps
            .add_capabilities
            .iter()
            .chain(&caps.drop_capabilities)
            .chain(&caps.add_ambient_capabilities)
        {
            capability(c)?;
        }
    }
    for p in s.masked_paths.iter().chain(&s.readonly_paths) {
        abs_path("masked or read-only path", p)?;
    }
    Ok(())
}

/// A capability name as CRI sends it (`NET_ADMIN`, `CAP_NET_ADMIN`, `ALL`).
fn capability(c: &str) -> Check {
    if c.eq_ignore_ascii_case("ALL") {
        return Ok(());
    }
    let full = if c.to_ascii_uppercase().starts_with("CAP_") {
        c.to_ascii_uppercase()
    } else {
        format!("CAP_{}", c.to_ascii_uppercase())
    };
    full.parse::<caps::Capability>()
        .map(|_| ())
        .map_err(|_| bad(format!("capability {} is unknown", quote(c))))
}

/// UpdateRuntimeConfig's pod CIDR: a short printable string (the core
/// parses it; a dual-stack pair of IPv6 CIDRs is under 100 bytes).
pub fn pod_cidr(s: &str) -> Check {
    max_len("pod CIDR", s, 256)?;
    printable("pod CIDR", s)
}

/// An image reference: not empty, bounded, no blanks or control characters
/// (the parser says whether it is well-formed).
pub fn image_ref(s: &str) -> Check {
    if s.is_empty() {
        return Err(bad("image reference is empty"));
    }
    max_len("image reference", s, limits::IMAGE)?;
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad(format!("image reference {} has blanks", quote(s))));
    }
    Ok(())
}

/// Registry credentials in a PullImage request.
pub fn auth(a: &AuthConfig) -> Check {
    for (what, v) in [
        ("username", &a.username),
        ("password", &a.password),
        ("auth", &a.auth),
        ("server address", &a.server_address),
        ("identity token", &a.identity_token),
        ("registry token", &a.registry_token),
    ] {
        max_len(what, v, limits::AUTH)
            .map_err(|_| bad(format!("{what} is longer than {} bytes", limits::AUTH)))?;
    }
    Ok(())
}

/// A timeout in seconds from a request: not negative.
pub fn timeout(what: &str, secs: i64) -> Result<std::time::Duration, Status> {
    u64::try_from(secs)
        .map(std::time::Duration::from_secs)
        .map_err(|_| bad(format!("{what} {secs} is negative")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn pod(name: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                namespace: "ns".into(),
                uid: "uid-1".into(),
                attempt: 0,
            }),
            ..Default::default()
        }
    }

    fn code(r: Check) -> tonic::Code {
        r.err().map(|s| s.code()).unwrap_or(tonic::Code::Ok)
    }

    #[test]
    fn names_refuse_separators_and_size() {
        assert_eq!(
            code(pod_config(&pod("PodSandbox-for-test-1"))),
            tonic::Code::Ok
        );
        for n in ["x;IP=10.88.250.250", "a=b", "a/b", "a\nb", "a\0b", "", "-a"] {
            assert_eq!(
                code(pod_config(&pod(n))),
                tonic::Code::InvalidArgument,
                "{n:?}"
            );
        }
        let long = "a".repeat(1 << 20);
        let err = pod_config(&pod(&long)).unwrap_err();
        assert!(
            err.message().len() < 300,
            "the message echoes a prefix only"
        );
    }

    #[test]
    fn metadata_size_is_bounded() {
        let mut p = pod("a");
        p.annotations = HashMap::from([("k".into(), "v".repeat(300 * 1024))]);
        assert_eq!(code(pod_config(&p)), tonic::Code::InvalidArgument);
        p.annotations = HashMap::from([("k".into(), "v".repeat(200 * 1024))]);
        assert_eq!(code(pod_config(&p)), tonic::Code::Ok);
        p.labels = HashMap::from([("k".into(), "v".repeat(300))]);
        assert_eq!(code(pod_config(&p)), tonic::Code::InvalidArgument);
    }

    #[test]
    fn ports_and_dns() {
        let ok = PortMapping {
            container_port: 80,
            host_port: 8080,
            ..Default::default()
        };
        assert!(port_mapping(&ok).is_ok());
        for bad in [
            PortMapping {
                container_port: 0,
                ..ok.clone()
            },
            PortMapping {
                container_port: -1,
                ..ok.clone()
            },
            PortMapping {
                host_port: 65536,
                ..ok.clone()
            },
            PortMapping {
                protocol: 9,
                ..ok.clone()
            },
            PortMapping {
                host_ip: "nope".into(),
                ..ok.clone()
            },
        ] {
            assert!(port_mapping(&bad).is_err(), "{bad:?}");
        }
        let dns = DnsConfig {
            servers: vec!["8.8.8.8; rm".into()],
            ..Default::default()
        };
        assert!(dns_config(&dns).is_err());
    }

    #[test]
    fn resources_refuse_odd_values() {
        let r = |f: fn(&mut LinuxContainerResources)| {
            let mut r = LinuxContainerResources::default();
            f(&mut r);
            resources(&r)
        };
        assert!(r(|_| {}).is_ok());
        assert!(r(|r| r.memory_limit_in_bytes = 1).is_err());
        assert!(r(|r| r.memory_limit_in_bytes = -5).is_err());
        assert!(r(|r| r.memory_limit_in_bytes = 64 << 20).is_ok());
        assert!(r(|r| r.cpu_shares = -2).is_err());
        assert!(r(|r| r.cpu_period = -100_000).is_err());
        assert!(r(|r| r.cpu_quota = -1).is_ok());
        assert!(r(|r| r.oom_score_adj = 1001).is_err());
        assert!(r(|r| r.cpuset_cpus = "0-1;x".into()).is_err());
    }

    #[test]
    fn mounts_outside_the_rules() {
        let m = |path: &str| Mount {
            container_path: path.into(),
            host_path: "/tmp".into(),
            ..Default::default()
        };
        assert!(mount(&m("/data")).is_ok());
        for p in [
            "/",
            "relative",
            "/proc/self/root/..",
            "/proc/sys/kernel",
            "/proc",
        ] {
            assert_eq!(code(mount(&m(p))), tonic::Code::InvalidArgument, "{p}");
        }
        let rro = Mount {
            readonly: true,
            recursive_read_only: true,
            ..m("/data")
        };
        assert!(mount(&rro).is_ok());
        for bad in [
            Mount {
                readonly: false,
                ..rro.clone()
            },
            Mount {
                propagation: MountPropagation::PropagationHostToContainer as i32,
                ..rro.clone()
            },
            Mount {
                propagation: MountPropagation::PropagationBidirectional as i32,
                ..rro.clone()
            },
        ] {
            assert_eq!(code(mount(&bad)), tonic::Code::InvalidArgument, "{bad:?}");
        }
        let range = |host_id| IdMapping {
            container_id: 0,
            host_id,
            length: 65536,
        };
        let idmapped = Mount {
            uid_mappings: vec![range(100_000)],
            gid_mappings: vec![range(100_000)],
            ..m("/data")
        };
        assert!(mount(&idmapped).is_ok());
        for bad in [
            Mount {
                gid_mappings: vec![],
                ..idmapped.clone()
            },
            Mount {
                uid_mappings: vec![],
                ..idmapped.clone()
            },
            Mount {
                uid_mappings: vec![range(100_000), range(300_000)],
                ..idmapped.clone()
            },
            Mount {
                gid_mappings: vec![IdMapping {
                    length: 0,
                    ..range(1)
                }],
                ..idmapped.clone()
            },
            Mount {
                uid_mappings: vec![IdMapping {
                    container_id: 1,
                    ..range(1)
                }],
                ..idmapped.clone()
            },
            Mount {
                uid_mappings: vec![range(u32::MAX - 5)],
                ..idmapped.clone()
            },
        ] {
            assert_eq!(code(mount(&bad)), tonic::Code::InvalidArgument, "{bad:?}");
        }
        let image = Mount {
            image: Some(ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            host_path: String::new(),
            readonly: true,
            ..m("/data")
        };
        assert!(mount(&image).is_ok());
        for bad in [
            Mount {
                readonly: false,
                ..image.clone()
            },
            Mount {
                host_path: "/srv".into(),
                ..image.clone()
            },
            Mount {
                image_sub_path: "../etc".into(),
                ..image.clone()
            },
            Mount {
                image_sub_path: "/etc".into(),
                ..image.clone()
            },
            Mount {
                image_sub_path: "etc".into(),
                image: None,
                ..image.clone()
            },
        ] {
            assert_eq!(code(mount(&bad)), tonic::Code::InvalidArgument, "{bad:?}");
        }
        assert!(
            mount(&Mount {
                image_sub_path: "etc/ssl".into(),
                ..image
            })
            .is_ok()
        );
    }

    #[test]
    fn commands_and_env() {
        assert!(command(&["true".into()]).is_ok());
        assert!(command(&[]).is_err());
        assert!(command(&["a\0b".into()]).is_err());
        assert!(command(&["x".repeat(2 << 20)]).is_err());
        let c = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "c".into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            envs: vec![KeyValue {
                key: "A=B".into(),
                value: "x".into(),
            }],
            ..Default::default()
        };
        assert!(container_config(&c).is_err());
    }

    #[test]
    fn user_namespaces() {
        let map = |c, h, l| IdMapping {
            container_id: c,
            host_id: h,
            length: l,
        };
        let pod = |uids: Vec<IdMapping>, gids: Vec<IdMapping>| UserNamespace {
            mode: NamespaceMode::Pod as i32,
            uids,
            gids,
        };
        let one = vec![map(0, 1000, 100_000)];
        assert!(user_namespace(&pod(one.clone(), one.clone())).is_ok());
        assert!(
            user_namespace(&UserNamespace::default()).is_err(),
            "POD needs maps"
        );
        let node = UserNamespace {
            mode: NamespaceMode::Node as i32,
            ..Default::default()
        };
        assert!(user_namespace(&node).is_ok());
        for bad in [
            pod(vec![map(0, 1000, 10), map(10, 2000, 10)], one.clone()),
            pod(one.clone(), vec![]),
            pod(vec![map(1, 1000, 10)], one.clone()),
            pod(one.clone(), vec![map(0, 1000, 0)]),
            pod(vec![map(0, u32::MAX - 5, 10)], one.clone()),
            UserNamespace {
                mode: NamespaceMode::Container as i32,
                ..Default::default()
            },
            UserNamespace {
                mode: NamespaceMode::Target as i32,
                ..Default::default()
            },
            UserNamespace {
                mode: 9,
                ..Default::default()
            },
            UserNamespace {
                uids: one.clone(),
                ..node.clone()
            },
        ] {
            assert_eq!(
                code(user_namespace(&bad)),
                tonic::Code::InvalidArgument,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn capabilities_and_ids() {
        assert!(capability("NET_ADMIN").is_ok());
        assert!(capability("CAP_SYS_PTRACE").is_ok());
        assert!(capability("ALL").is_ok());
        assert!(capability("FLY").is_err());
        let policy = |p| LinuxContainerSecurityContext {
            supplemental_groups_policy: p,
            ..Default::default()
        };
        assert!(container_security(&policy(SupplementalGroupsPolicy::Strict as i32)).is_ok());
        assert_eq!(
            code(container_security(&policy(7))),
            tonic::Code::InvalidArgument
        );
        assert!(id("id", "abc123").is_ok());
        assert!(id("id", "5e8b33a4-8d1c-4b0e-9a43-0c2f6c4d7a51").is_ok());
        assert!(id("id", "../etc").is_err());
        assert!(id("id", "a/b").is_err());
        assert!(id("id", "a\0b").is_err());
        assert!(id("id", &"a".repeat(129)).is_err());
        assert!(timeout("t", -1).is_err());
    }
}
