//! The container's filesystem view, built inside its new mount namespace:
//! propagation, the spec's mounts (every target resolved inside the rootfs
//! with `openat2(RESOLVE_IN_ROOT)`, so a hostile image's symlinks cannot
//! point a mount at the host), /dev, pivot_root, masked and read-only paths.
//!
//! [`plan`] runs in the monitor and turns the spec into plain data;
//! [`apply`] runs in the forked process that sets the container up (see
//! `linux.rs` for which one).

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceType, Spec};

use super::ExecutorError;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// What kind of mount.
#[derive(Debug, Clone)]
enum Kind {
    Bind {
        source: PathBuf,
    },
    Fs {
        fstype: String,
        source: String,
    },
    /// The container's own cgroups at /sys/fs/cgroup, read-only.
    Cgroup,
}

#[derive(Debug, Clone)]
struct PlannedMount {
    /// Inside the rootfs, relative, no `..`.
    dest: PathBuf,
    kind: Kind,
    flags: libc::c_ulong,
    propagation: libc::c_ulong,
    /// `rro`: the bind and every mount beneath it read-only
    /// (`mount_setattr`, see `mount_attr`), not only its top.
    recursive_readonly: bool,
    /// An idmapped bind (the spec mount's `uidMappings`/`gidMappings`):
    /// a clone of the source idmapped with the user namespace the
    /// container joins, whose mappings they are (see `plan`).
    idmapped: bool,
    data: String,
}

#[derive(Debug, Clone)]
struct Device {
    dest: PathBuf,
    mode: libc::mode_t,
    dev: libc::dev_t,
    uid: u32,
    gid: u32,
}

/// The prepared mount work for one container.
#[derive(Debug, Clone)]
pub struct Plan {
    rootfs: CString,
    root_propagation: libc::c_ulong,
    readonly_root: bool,
    mounts: Vec<PlannedMount>,
    devices: Vec<Device>,
    masked: Vec<CString>,
    readonly: Vec<CString>,
    /// v1: (hierarchy name, the container's dir in it); v2: empty.
    cgroup_v1: Vec<(String, PathBuf)>,
    /// Host symlinks in /sys/fs/cgroup like `cpu -> cpu,cpuacct`.
    cgroup_links: Vec<(String, String)>,
}

impl Plan {
    /// Whether the spec asks for a proc mount of its own (not a bind).
    pub fn wants_fresh_proc(&self) -> bool {
        self.mounts
            .iter()
            .any(|m| matches!(&m.kind, Kind::Fs { fstype, .. } if fstype == "proc"))
    }
}

fn spec_err(m: impl Into<String>) -> ExecutorError {
    ExecutorError::Spec(m.into())
}

/// Cleans an absolute container path into a relative one without `..`.
fn relative(p: &Path) -> Result<PathBuf, ExecutorError> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            _ => return Err(spec_err(format!("mount destination {}", p.display()))),
        }
    }
    Ok(out)
}

fn parse_options(opts: &[String]) -> (libc::c_ulong, libc::c_ulong, bool, String) {
    let mut flags = 0;
    let mut prop = 0;
    let mut recursive_bind = false;
    let mut data = Vec::new();
    for o in opts {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => flags &= !libc::MS_RDONLY,
            "nosuid" => flags |= libc::MS_NOSUID,
            "suid" => flags &= !libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "dev" => flags &= !libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "exec" => flags &= !libc::MS_NOEXEC,
            "relatime" => flags |= libc::MS_RELATIME,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            "noatime" => flags |= libc::MS_NOATIME,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "bind" => {}
            "rbind" => recursive_bind = true,
            "private" => prop = libc::MS_PRIVATE,
            "rprivate" => prop = libc::MS_PRIVATE | libc::MS_REC,
            "slave" => prop = libc::MS_SLAVE,
            "rslave" => prop = libc::MS_SLAVE | libc::MS_REC,
            "shared" => prop = libc::MS_SHARED,
            "rshared" => prop = libc::MS_SHARED | libc::MS_REC,
            "unbindable" => prop = libc::MS_UNBINDABLE,
            "runbindable" => prop = libc::MS_UNBINDABLE | libc::MS_REC,
            // Handled by `plan` (recursive read-only): no mount(2) flag.
            "rro" => {}
            other => data.push(other.to_string()),
        }
    }
    if recursive_bind {
        flags |= libc::MS_REC;
    }
    (flags, prop, recursive_bind, data.join(","))
}

/// Whether a spec mount is an idmapped bind: it carries `uidMappings` and
/// `gidMappings`, which must be those of the user namespace the container
/// joins (the spec's `linux.uidMappings`/`gidMappings` with a user
/// namespace path): the executor maps with that namespace, it makes no
/// other.
fn idmapped(
    m: &oci_spec::runtime::Mount,
    kind: &Kind,
    linux: &oci_spec::runtime::Linux,
    dest: &Path,
) -> Result<bool, ExecutorError> {
    let (uids, gids) = (m.uid_mappings(), m.gid_mappings());
    if uids.is_none() && gids.is_none() {
        return Ok(false);
    }
    let at = dest.display();
    if !matches!(kind, Kind::Bind { .. }) {
        return Err(spec_err(format!(
            "idmapped mount /{at}: only bind mounts can be idmapped"
        )));
    }
    if uids.is_none() || gids.is_none() {
        return Err(spec_err(format!(
            "idmapped mount /{at}: needs both uid and gid mappings"
        )));
    }
    let joins_userns = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User && n.path().is_some());
    if !joins_userns || uids != linux.uid_mappings() || gids != linux.gid_mappings() {
        return Err(spec_err(format!(
            "idmapped mount /{at}: its mappings must be those of the user namespace the container joins"
        )));
    }
    Ok(true)
}

fn cstr(p: &Path) -> Result<CString, ExecutorError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| spec_err("NUL in path"))
}

/// Turns the spec into mount work; fails on anything malformed before any
/// process exists.
pub fn plan(spec: &Spec, cgroup_dirs: &[PathBuf]) -> Result<Plan, ExecutorError> {
    let root = spec.root().as_ref().ok_or_else(|| spec_err("no root"))?;
    let linux = spec.linux().clone().unwrap_or_default();
    let root_propagation = match linux.rootfs_propagation().as_deref() {
        Some("rshared") | Some("shared") => libc::MS_SHARED | libc::MS_REC,
        Some("rprivate") | Some("private") => libc::MS_PRIVATE | libc::MS_REC,
        _ => libc::MS_SLAVE | libc::MS_REC,
    };
    let mut mounts = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let dest = relative(m.destination())?;
        let (flags, propagation, _, data) = parse_options(&m.options().clone().unwrap_or_default());
        let typ = m.typ().clone().unwrap_or_default();
        let is_bind = typ == "bind"
            || m.options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        let kind = if is_bind {
            Kind::Bind {
                source: m.source().clone().ok_or_else(|| {
                    spec_err(format!("bind mount {} without source", dest.display()))
                })?,
            }
        } else if typ == "cgroup" || typ == "cgroup2" {
            Kind::Cgroup
        } else {
            Kind::Fs {
                fstype: typ,
                source: m
                    .source()
                    .as_ref()
                    .map(|s| s.display().to_string())
                    .unwrap_or_else(|| "none".into()),
            }
        };
        let recursive_readonly = m.options().iter().flatten().any(|o| o == "rro");
        if recursive_readonly && !matches!(kind, Kind::Bind { .. }) {
            return Err(spec_err(format!(
                "rro on {}: recursive read-only is for bind mounts",
                dest.display()
            )));
        }
        let idmapped = idmapped(m, &kind, &linux, &dest)?;
        mounts.push(PlannedMount {
            dest,
            kind,
            flags: if recursive_readonly {
                flags | libc::MS_RDONLY
            } else {
                flags
            },
            propagation,
            recursive_readonly,
            idmapped,
            data,
        });
    }
    let mut devices = Vec::new();
    let defaults: [(&str, u64, u64); 6] = [
        ("dev/null", 1, 3),
        ("dev/zero", 1, 5),
        ("dev/full", 1, 7),
        ("dev/random", 1, 8),
        ("dev/urandom", 1, 9),
        ("dev/tty", 5, 0),
    ];
    for (p, maj, min) in defaults {
        devices.push(Device {
            dest: p.into(),
            mode: libc::S_IFCHR | 0o666,
            dev: libc::makedev(maj as u32, min as u32),
            uid: 0,
            gid: 0,
        });
    }
    for d in linux.devices().iter().flatten() {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
            LinuxDeviceType::B => libc::S_IFBLK,
            LinuxDeviceType::P => libc::S_IFIFO,
            LinuxDeviceType::A => continue,
        };
        let dest = relative(d.path())?;
        devices.retain(|x| x.dest != dest);
        devices.push(Device {
            dest,
            mode: kind | (d.file_mode().unwrap_or(0o666) & 0o7777),
            dev: libc::makedev(d.major() as u32, d.minor() as u32),
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    let v2 = nix::sys::statfs::statfs(CGROUP_ROOT)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    let mut cgroup_v1 = Vec::new();
    let mut cgroup_links = Vec::new();
    if !v2 {
        for d in cgroup_dirs {
            if let Ok(rest) = d.strip_prefix(CGROUP_ROOT)
                && let Some(Component::Normal(h)) = rest.components().next()
            {
                cgroup_v1.push((h.to_string_lossy().into_owned(), d.clone()));
            }
        }
        for e in std::fs::read_dir(CGROUP_ROOT)
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_type().is_ok_and(|t| t.is_symlink())
                && let Ok(target) = std::fs::read_link(e.path())
            {
                cgroup_links.push((
                    e.file_name().to_string_lossy().into_owned(),
                    target.to_string_lossy().into_owned(),
                ));
            }
        }
    }
    let to_c = |v: &Option<Vec<String>>| -> Result<Vec<CString>, ExecutorError> {
        v.iter()
            .flatten()
            .map(|p| CString::new(p.as_str()).map_err(|_| spec_err("NUL in path")))
            .collect()
    };
    Ok(Plan {
        rootfs: cstr(root.path())?,
        root_propagation,
        readonly_root: root.readonly().unwrap_or(false),
        mounts,
        devices,
        masked: to_c(linux.masked_paths())?,
        readonly: to_c(linux.readonly_paths())?,
        cgroup_v1,
        cgroup_links,
    })
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn mount_raw(
    src: Option<&CString>,
    target: &CString,
    fstype: Option<&CString>,
    flags: libc::c_ulong,
    data: Option<&CString>,
) -> Result<(), String> {
    let p = |c: Option<&CString>| c.map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: all pointers are NUL-terminated strings or NULL, alive for the call.
    let rc = unsafe { libc::mount(p(src), target.as_ptr(), p(fstype), flags, p(data).cast()) };
    if rc < 0 {
        return Err(format!("mount {:?}: {}", target, errno()));
    }
    Ok(())
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}
const RESOLVE_IN_ROOT: u64 = 0x10;

fn openat2_in_root(root: RawFd, rel: &Path, flags: i32) -> std::io::Result<OwnedFd> {
    let path = CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT,
    };
    // openat2 answers EAGAIN when a `..` in the walk raced a rename or a
    // mount anywhere on the system (a link like `/../../tmp` while other
    // containers mount); the kernel asks the caller to retry.
    let mut tries = 0;
    let fd = loop {
        // SAFETY: path and how are valid for the call; the result is a new fd.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root,
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            break fd;
        }
        let e = errno();
        tries += 1;
        if e.raw_os_error() != Some(libc::EAGAIN) || tries >= 64 {
            return Err(e);
        }
    };
    // SAFETY: openat2 returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Opens (O_PATH) `rel` inside the root, creating missing directories, and
/// the last component as a directory or an empty file. Symlinks are
/// resolved as if the root were `/`.
fn open_create(root: RawFd, rel: &Path, file: bool) -> Result<OwnedFd, String> {
    let comps: Vec<&OsStr> = rel.iter().collect();
    if comps.is_empty() {
        return openat2_in_root(root, Path::new("."), libc::O_PATH).map_err(|e| e.to_string());
    }
    let mut prefix = PathBuf::new();
    let mut parent =
        openat2_in_root(root, Path::new("."), libc::O_PATH).map_err(|e| e.to_string())?;
    for (i, comp) in comps.iter().enumerate() {
        prefix.push(comp);
        match openat2_in_root(root, &prefix, libc::O_PATH) {
            Ok(fd) => parent = fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let name = CString::new(comp.as_bytes()).map_err(|e| e.to_string())?;
                let last = i + 1 == comps.len();
                // SAFETY: parent is an open directory fd; name is one component.
                let rc = unsafe {
                    if last && file {
                        let fd = libc::openat(
                            parent.as_raw_fd(),
                            name.as_ptr(),
                            libc::O_CREAT
                                | libc::O_EXCL
                                | libc::O_NOFOLLOW
                                | libc::O_WRONLY
                                | libc::O_CLOEXEC,
                            0o644,
                        );
                        if fd >= 0 {
                            libc::close(fd);
                        }
                        fd
                    } else {
                        libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755)
                    }
                };
                if rc < 0 && errno().raw_os_error() != Some(libc::EEXIST) {
                    return Err(format!("creating {}: {}", prefix.display(), errno()));
                }
                parent = openat2_in_root(root, &prefix, libc::O_PATH)
                    .map_err(|e| format!("opening {}: {e}", prefix.display()))?;
            }
            Err(e) => return Err(format!("opening {}: {e}", prefix.display())),
        }
    }
    Ok(parent)
}

fn fd_path(fd: &OwnedFd) -> CString {
    c(&format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Applies the plan, in the container's new mount namespace; ends in it,
/// pivoted. `proc` (a detached clone of a proc mount, see
/// `namespaces::clone_peer_proc`) stands in for the spec's proc mount;
/// `userns` (the user namespace the container joins after this) maps the
/// idmapped binds.
pub fn apply(
    plan: &Plan,
    mut proc: Option<OwnedFd>,
    userns: Option<BorrowedFd<'_>>,
) -> Result<(), String> {
    let slash = c("/");
    mount_raw(None, &slash, None, plan.root_propagation, None)
        .map_err(|e| format!("root propagation: {e}"))?;
    if plan.root_propagation & libc::MS_SHARED != 0 {
        // pivot_root refuses a shared parent: keep only `/` itself private.
        mount_raw(None, &slash, None, libc::MS_PRIVATE, None)?;
    }
    // The overlay mount becomes the private parent of its own bind, which
    // is what pivot_root needs.
    let _ = mount_raw(None, &plan.rootfs, None, libc::MS_PRIVATE, None);
    mount_raw(
        Some(&plan.rootfs),
        &plan.rootfs,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    let root = std::fs::File::open(OsStr::from_bytes(plan.rootfs.as_bytes()))
        .map_err(|e| format!("opening rootfs: {e}"))?;
    let rootfd = root.as_raw_fd();
    for m in &plan.mounts {
        mount_one(rootfd, m, plan, &mut proc, userns)
            .map_err(|e| format!("{}: {e}", m.dest.display()))?;
    }
    for d in &plan.devices {
        make_device(rootfd, d).map_err(|e| format!("device {}: {e}", d.dest.display()))?;
    }
    let dev = openat2_in_root(rootfd, Path::new("dev"), libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| format!("/dev: {e}"))?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        // SAFETY: dev is a directory fd; both strings are NUL-terminated.
        unsafe { libc::symlinkat(c(target).as_ptr(), dev.as_raw_fd(), c(name).as_ptr()) };
    }
    drop(dev);
    pivot(rootfd)?;
    drop(root);
    for p in &plan.masked {
        mask(p)?;
    }
    for p in &plan.readonly {
        readonly(p)?;
    }
    if plan.readonly_root {
        mount_raw(
            None,
            &slash,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            None,
        )
        .map_err(|e| format!("read-only rootfs: {e}"))?;
    }
    Ok(())
}

fn mount_one(
    rootfd: RawFd,
    m: &PlannedMount,
    plan: &Plan,
    proc: &mut Option<OwnedFd>,
    userns: Option<BorrowedFd<'_>>,
) -> Result<(), String> {
    let is_file = match &m.kind {
        Kind::Bind { source } => std::fs::metadata(source)
            .map(|md| !md.is_dir())
            .map_err(|e| format!("source {}: {e}", source.display()))?,
        _ => false,
    };
    let target = open_create(rootfd, &m.dest, is_file)?;
    let tpath = fd_path(&target);
    let data = (!m.data.is_empty()).then(|| c(&m.data));
    match &m.kind {
        Kind::Bind { source } if m.idmapped => {
            let userns = userns.ok_or("idmapped bind without a user namespace to map with")?;
            super::mount_attr::idmapped_bind_at(
                source,
                m.flags & libc::MS_REC != 0,
                userns,
                &target,
            )?;
            remount_flags(rootfd, m)?;
        }
        Kind::Bind { source } => {
            let src = CString::new(source.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
            mount_raw(
                Some(&src),
                &tpath,
                None,
                libc::MS_BIND | (m.flags & libc::MS_REC),
                None,
            )?;
            remount_flags(rootfd, m)?;
        }
        Kind::Fs { fstype, .. } if fstype == "proc" && proc.is_some() => {
            if let Some(clone) = proc.take() {
                rustix::mount::move_mount(
                    &clone,
                    "",
                    &target,
                    "",
                    rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH
                        | rustix::mount::MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
                )
                .map_err(|e| format!("attaching the joined namespace's /proc: {e}"))?;
                let top = reopen(rootfd, &m.dest)?;
                mount_raw(
                    None,
                    &fd_path(&top),
                    None,
                    libc::MS_BIND | libc::MS_REMOUNT | m.flags,
                    None,
                )?;
            }
        }
        Kind::Fs { fstype, source } => {
            mount_raw(
                Some(&c(source)),
                &tpath,
                Some(&c(fstype)),
                m.flags,
                data.as_ref(),
            )?;
        }
        Kind::Cgroup => {
            if plan.cgroup_v1.is_empty() {
                mount_raw(
                    Some(&c("cgroup2")),
                    &tpath,
                    Some(&c("cgroup2")),
                    m.flags,
                    None,
                )?;
            } else {
                cgroup_v1(rootfd, m, plan, &tpath)?;
            }
        }
    }
    if m.propagation != 0 {
        let top = reopen(rootfd, &m.dest)?;
        mount_raw(None, &fd_path(&top), None, m.propagation, None)?;
    }
    if m.recursive_readonly {
        // After the propagation change: with a private mount nothing the
        // host mounts later appears beneath it writable.
        let top = reopen(rootfd, &m.dest)?;
        super::mount_attr::make_recursively_readonly(&top)
            .map_err(|e| format!("recursive read-only (mount_setattr): {e}"))?;
    }
    Ok(())
}

/// A bind's flags (`ro`, `nosuid`, ...) on its top mount: a bind mount
/// takes them only through a remount.
fn remount_flags(rootfd: RawFd, m: &PlannedMount) -> Result<(), String> {
    let flags = m.flags & !libc::MS_REC;
    if flags != 0 {
        let top = reopen(rootfd, &m.dest)?;
        mount_raw(
            None,
            &fd_path(&top),
            None,
            libc::MS_BIND | libc::MS_REMOUNT | flags,
            None,
        )?;
    }
    Ok(())
}

fn reopen(rootfd: RawFd, rel: &Path) -> Result<OwnedFd, String> {
    openat2_in_root(rootfd, rel, libc::O_PATH).map_err(|e| format!("reopening: {e}"))
}

/// v1: a tmpfs holding a read-only bind of the container's own directory
/// in each hierarchy (never the host's whole tree, never writable: a
/// container must not raise its own limits).
fn cgroup_v1(rootfd: RawFd, m: &PlannedMount, plan: &Plan, tpath: &CString) -> Result<(), String> {
    let base = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount_raw(
        Some(&c("tmpfs")),
        tpath,
        Some(&c("tmpfs")),
        base,
        Some(&c("mode=755")),
    )?;
    for (name, dir) in &plan.cgroup_v1 {
        let dest = m.dest.join(name);
        let t = open_create(rootfd, &dest, false)?;
        let src = CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        mount_raw(Some(&src), &fd_path(&t), None, libc::MS_BIND, None)?;
        let top = reopen(rootfd, &dest)?;
        mount_raw(
            None,
            &fd_path(&top),
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | base,
            None,
        )?;
    }
    let dir = reopen(rootfd, &m.dest)?;
    let dirfd = openat2_in_root(rootfd, &m.dest, libc::O_DIRECTORY | libc::O_RDONLY)
        .map_err(|e| e.to_string())?;
    for (name, target) in &plan.cgroup_links {
        if plan.cgroup_v1.iter().any(|(h, _)| h == target) {
            // SAFETY: dirfd is a directory; strings are NUL-terminated.
            unsafe { libc::symlinkat(c(target).as_ptr(), dirfd.as_raw_fd(), c(name).as_ptr()) };
        }
    }
    drop(dirfd);
    mount_raw(
        None,
        &fd_path(&dir),
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | base,
        Some(&c("mode=755")),
    )
}

fn make_device(rootfd: RawFd, d: &Device) -> Result<(), String> {
    let parent = d.dest.parent().unwrap_or(Path::new(""));
    let name = d.dest.file_name().ok_or("no file name")?;
    let dir = open_create(rootfd, parent, false)?;
    let cname = CString::new(name.as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: dir is a directory fd inside the rootfs; name is one component.
    let rc = unsafe { libc::mknodat(dir.as_raw_fd(), cname.as_ptr(), d.mode, d.dev) };
    if rc < 0 && errno().raw_os_error() != Some(libc::EEXIST) {
        return Err(format!("mknod: {}", errno()));
    }
    // SAFETY: as above; AT_SYMLINK_NOFOLLOW so a planted link is not followed.
    unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            cname.as_ptr(),
            d.uid,
            d.gid,
            libc::AT_SYMLINK_NOFOLLOW,
        );
        // mknod applies the umask; set the mode exactly.
        let fd = libc::openat(
            dir.as_raw_fd(),
            cname.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            libc::fchmodat(
                libc::AT_FDCWD,
                c(&format!("/proc/self/fd/{fd}")).as_ptr(),
                d.mode & 0o7777,
                0,
            );
            libc::close(fd);
        }
    }
    Ok(())
}

/// pivot_root into the rootfs with the old root parked on a temporary
/// directory, falling back to MS_MOVE + chroot where pivot_root is refused.
/// A named put_old (not the `.`/`.` form) matters: a propagation change on
/// `.` after pivot_root reaches the new root, not the old one, and would
/// turn bidirectional mounts into slaves.
fn pivot(rootfd: RawFd) -> Result<(), String> {
    let dot = c(".");
    let put_old = c(".crius-old-root");
    let old_abs = c("/.crius-old-root");
    // SAFETY: fchdir on an open directory fd.
    if unsafe { libc::fchdir(rootfd) } < 0 {
        return Err(format!("chdir rootfs: {}", errno()));
    }
    // SAFETY: mkdirat relative to the rootfs directory fd.
    let made = unsafe { libc::mkdirat(rootfd, put_old.as_ptr(), 0o700) } == 0;
    let rc = if made {
        // SAFETY: pivot_root with two NUL-terminated paths that outlive the call.
        unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), put_old.as_ptr()) }
    } else {
        -1
    };
    if rc == 0 {
        // Make the old root a slave so detaching it cannot propagate to the
        // host, then drop it.
        mount_raw(None, &old_abs, None, libc::MS_SLAVE | libc::MS_REC, None)?;
        // SAFETY: umount2 and rmdir of the parked old root.
        unsafe {
            if libc::umount2(old_abs.as_ptr(), libc::MNT_DETACH) < 0 {
                return Err(format!("detaching old root: {}", errno()));
            }
            libc::rmdir(old_abs.as_ptr());
        }
    } else {
        if made {
            // SAFETY: removing the directory made above.
            unsafe { libc::unlinkat(rootfd, put_old.as_ptr(), libc::AT_REMOVEDIR) };
        }
        mount_raw(Some(&dot), &c("/"), None, libc::MS_MOVE, None)
            .map_err(|e| format!("pivot_root failed ({}), move: {e}", errno()))?;
        // SAFETY: chroot to the moved rootfs.
        if unsafe { libc::chroot(dot.as_ptr()) } < 0 {
            return Err(format!("chroot: {}", errno()));
        }
    }
    // SAFETY: chdir to a static path.
    if unsafe { libc::chdir(c("/").as_ptr()) } < 0 {
        return Err(format!("chdir /: {}", errno()));
    }
    Ok(())
}

fn mask(p: &CString) -> Result<(), String> {
    let path = Path::new(OsStr::from_bytes(p.as_bytes()));
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(md) if md.is_dir() => mount_raw(
            Some(&c("tmpfs")),
            p,
            Some(&c("tmpfs")),
            libc::MS_RDONLY,
            Some(&c("size=0k")),
        ),
        Ok(_) => mount_raw(Some(&c("/dev/null")), p, None, libc::MS_BIND, None),
    }
}

fn readonly(p: &CString) -> Result<(), String> {
    if std::fs::symlink_metadata(Path::new(OsStr::from_bytes(p.as_bytes()))).is_err() {
        return Ok(());
    }
    mount_raw(Some(p), p, None, libc::MS_BIND | libc::MS_REC, None)?;
    mount_raw(
        None,
        p,
        None,
        libc::MS_BIND
            | libc::MS_REMOUNT
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_into_flags_and_data() {
        let (f, p, rec, d) = parse_options(&[
            "rbind".into(),
            "ro".into(),
            "rslave".into(),
            "nosuid".into(),
            "mode=755".into(),
            "size=10k".into(),
        ]);
        assert!(rec);
        assert_eq!(f & libc::MS_RDONLY, libc::MS_RDONLY);
        assert_eq!(f & libc::MS_REC, libc::MS_REC);
        assert_eq!(p, libc::MS_SLAVE | libc::MS_REC);
        assert_eq!(d, "mode=755,size=10k");
    }

    #[test]
    fn rro_is_a_read_only_bind() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "/r"},
            "mounts": [{"destination": "/data", "type": "bind", "source": "/srv",
                        "options": ["rbind", "rro", "rprivate"]}],
        }))
        .unwrap();
        let p = plan(&spec, &[]).unwrap();
        let m = &p.mounts[0];
        assert!(m.recursive_readonly);
        assert_eq!(m.flags & libc::MS_RDONLY, libc::MS_RDONLY);
        assert!(m.data.is_empty(), "rro is no mount data: {:?}", m.data);
        let tmpfs: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "/r"},
            "mounts": [{"destination": "/t", "type": "tmpfs", "source": "tmpfs",
                        "options": ["rro"]}],
        }))
        .unwrap();
        assert!(plan(&tmpfs, &[]).is_err());
    }

    #[test]
    fn idmapped_binds_carry_the_joined_namespaces_mappings() {
        let map =
            |host: u32| serde_json::json!([{"containerID": 0, "hostID": host, "size": 65536}]);
        let spec = |mount: serde_json::Value, userns_path: Option<&str>| -> Spec {
            let mut ns = vec![serde_json::json!({"type": "mount"})];
            if let Some(p) = userns_path {
                ns.push(serde_json::json!({"type": "user", "path": p}));
            }
            serde_json::from_value(serde_json::json!({
                "ociVersion": "1.0.2",
                "root": {"path": "/r"},
                "mounts": [mount],
                "linux": {"namespaces": ns, "uidMappings": map(1000), "gidMappings": map(2000)},
            }))
            .unwrap()
        };
        let bind = |uids, gids| {
            serde_json::json!({"destination": "/data", "type": "bind", "source": "/srv",
                "options": ["rbind", "rw"], "uidMappings": uids, "gidMappings": gids})
        };
        let ok = plan(&spec(bind(map(1000), map(2000)), Some("/p/ns/user")), &[]).unwrap();
        assert!(ok.mounts[0].idmapped);
        assert_eq!(ok.mounts[0].flags & libc::MS_REC, libc::MS_REC);
        let plain = serde_json::json!({"destination": "/data", "type": "bind", "source": "/srv",
            "options": ["rbind"]});
        assert!(!plan(&spec(plain, None), &[]).unwrap().mounts[0].idmapped);
        for (what, s) in [
            (
                "other mappings",
                spec(bind(map(1001), map(2000)), Some("/p/ns/user")),
            ),
            (
                "no user namespace to join",
                spec(bind(map(1000), map(2000)), None),
            ),
            (
                "uids only",
                spec(bind(map(1000), serde_json::Value::Null), Some("/p/ns/user")),
            ),
            (
                "not a bind",
                spec(
                    serde_json::json!({"destination": "/t", "type": "tmpfs", "source": "tmpfs",
                        "uidMappings": map(1000), "gidMappings": map(2000)}),
                    Some("/p/ns/user"),
                ),
            ),
        ] {
            assert!(plan(&s, &[]).is_err(), "{what}");
        }
    }

    #[test]
    fn destinations_never_climb() {
        assert_eq!(relative(Path::new("/a/./b")).unwrap(), PathBuf::from("a/b"));
        assert!(relative(Path::new("/a/../../b")).is_err());
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        // The same absolute path exists inside the root: a hostile image's
        // `/etc -> <host path>` must land there, not on the host.
        let inside = root.join(outside.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc")).unwrap();
        let r = std::fs::File::open(&root).unwrap();
        open_create(r.as_raw_fd(), Path::new("etc/hosts"), true).unwrap();
        assert!(!outside.join("hosts").exists(), "escaped the root");
        assert!(inside.join("hosts").exists());
        // A link to a path missing inside the root is refused, never
        // followed to the host.
        std::os::unix::fs::symlink(&outside, root.join("dangling")).unwrap();
        let top = outside.strip_prefix("/").unwrap().iter().next().unwrap();
        std::fs::remove_dir_all(root.join(top)).unwrap();
        assert!(open_create(r.as_raw_fd(), Path::new("dangling/x"), false).is_err());
        assert!(!outside.join("x").exists(), "escaped the root");
    }
}
