//! Namespaces and cgroups a new process enters, and the /proc a container
//! joining an existing PID namespace borrows from a process in it.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::ExecutorError;

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn ns_flag(t: LinuxNamespaceType) -> libc::c_int {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
    }
}

/// Which namespaces to enter (opened files) and which to create.
///
/// A user namespace to join (a pod's, CRI mode POD) is kept apart and
/// entered last, by [`enter_user`], once the mounts are made: the pod's
/// other namespaces and the container's mount namespace belong to the
/// host's user namespace, so they are entered and set up as host root, and
/// only the process itself runs in the pod's user namespace.
pub(super) struct Namespaces {
    pub(super) join: Vec<(libc::c_int, File)>,
    pub(super) unshare: libc::c_int,
    pub(super) user: Option<File>,
}

impl Namespaces {
    /// The container gets a PID namespace of its own: its init is PID 1
    /// and alone there until it execs.
    pub(super) fn new_pid(&self) -> bool {
        self.unshare & libc::CLONE_NEWPID != 0
    }

    /// The PID namespace the container joins, if it joins one.
    pub(super) fn joined_pid(&self) -> Option<&File> {
        self.join
            .iter()
            .find(|(flag, _)| *flag == libc::CLONE_NEWPID)
            .map(|(_, f)| f)
    }

    /// Their descriptors, which the forked child keeps until it entered.
    pub(super) fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.join
            .iter()
            .map(|(_, f)| f)
            .chain(&self.user)
            .map(|f| f.as_raw_fd())
    }

    /// Splits a user namespace to join off the others (see the type).
    fn user_apart(mut self) -> Namespaces {
        if let Some(i) = self
            .join
            .iter()
            .position(|(flag, _)| *flag == libc::CLONE_NEWUSER)
        {
            self.user = Some(self.join.remove(i).1);
        }
        self
    }
}

pub(super) fn plan_namespaces(spec: &Spec) -> Result<Namespaces, ExecutorError> {
    let mut join = Vec::new();
    let mut unshare = 0;
    let list = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for ns in list {
        let flag = ns_flag(ns.typ());
        match ns.path() {
            Some(p) => {
                let f = File::open(p)
                    .map_err(|e| ExecutorError::Spec(format!("namespace {}: {e}", p.display())))?;
                join.push((flag, f));
            }
            None => unshare |= flag,
        }
    }
    Ok(Namespaces {
        join,
        unshare,
        user: None,
    }
    .user_apart())
}

/// The namespaces of a running process, for exec: every kind it does not
/// share with us.
pub(super) fn process_namespaces(pid: i32) -> Result<Namespaces, ExecutorError> {
    let mut join = Vec::new();
    for (name, flag) in [
        ("user", libc::CLONE_NEWUSER),
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("pid", libc::CLONE_NEWPID),
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("mnt", libc::CLONE_NEWNS),
    ] {
        let theirs = format!("/proc/{pid}/ns/{name}");
        let ours = format!("/proc/self/ns/{name}");
        let (Ok(t), Ok(o)) = (std::fs::metadata(&theirs), std::fs::metadata(&ours)) else {
            continue;
        };
        use std::os::unix::fs::MetadataExt;
        if t.ino() == o.ino() && t.dev() == o.dev() {
            continue;
        }
        let f = File::open(&theirs).map_err(|e| ExecutorError::Sys {
            op: "open namespace",
            source: e,
        })?;
        join.push((flag, f));
    }
    Ok(Namespaces {
        join,
        unshare: 0,
        user: None,
    }
    .user_apart())
}

/// Joins the cgroup in every hierarchy through `file`, the one the host's
/// cgroup version has ([`join_file`], decided before the fork).
///
/// On v1 the calling thread is moved through `tasks`: the kernel moves a
/// lone `current` thread without write-locking the global threadgroup
/// rwsem, whose RCU grace period made a `cgroup.procs` write cost 10–14 ms
/// here (0.6 ms through `tasks`). Callers are single-threaded (forked
/// from the monitor), so the thread is the whole process. v2 has no
/// `tasks` (and answers EACCES for it): there it is `cgroup.procs`.
pub(super) fn join_cgroups(dirs: &[PathBuf], file: &str) -> Result<(), String> {
    for d in dirs {
        std::fs::write(d.join(file), "0")
            .map_err(|e| format!("joining cgroup {} through {file}: {e}", d.display()))?;
    }
    Ok(())
}

/// The file a process joins a cgroup through: `tasks` on v1 (also in the
/// hybrid layout, whose cgroup2 holds no container cgroups), `cgroup.procs`
/// on v2.
pub(super) fn join_file(mode: Option<crate::cgroups::CgroupMode>) -> &'static str {
    match mode {
        Some(crate::cgroups::CgroupMode::Unified) => "cgroup.procs",
        _ => "tasks",
    }
}

/// Joins the user namespace kept apart (see [`Namespaces`]; its
/// descriptor, which a forked child may hold under another number), if
/// any: the
/// last step before the process takes on its credentials, which are then
/// ids inside it. The caller is single-threaded and shares no fs_struct.
pub(super) fn enter_user(user: Option<BorrowedFd<'_>>) -> Result<(), String> {
    if let Some(f) = user {
        // SAFETY: f is an open user namespace file; setns has no memory effects.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWUSER) } < 0 {
            return Err(format!("joining the pod's user namespace: {}", errno()));
        }
    }
    Ok(())
}

pub(super) fn enter(ns: &Namespaces) -> Result<(), String> {
    for (flag, f) in &ns.join {
        // SAFETY: f is an open namespace file; setns has no memory effects.
        if unsafe { libc::setns(f.as_raw_fd(), *flag) } < 0 {
            return Err(format!("setns({flag:#x}): {}", errno()));
        }
    }
    if ns.unshare != 0 {
        // SAFETY: unshare with flags only.
        if unsafe { libc::unshare(ns.unshare) } < 0 {
            return Err(format!("unshare({:#x}): {}", ns.unshare, errno()));
        }
    }
    Ok(())
}

/// A clone of the /proc mount of `peer` (a mount namespace of a process in
/// the PID namespace `pid_ns`): the /proc of a container that joins that
/// namespace, made by a process outside it (a fresh proc mount shows the
/// mounter's namespace). Runs in the single-threaded intermediate before it
/// unshares its mount namespace; it returns to its own namespace on every
/// path. The clone must be a proc instance of `pid_ns`, so a peer that
/// mounted something else over its /proc cannot hand that over.
pub(super) fn clone_peer_proc(peer: &File, pid_ns: &File) -> Result<OwnedFd, String> {
    use std::os::unix::fs::MetadataExt;
    let own = File::open("/proc/self/ns/mnt").map_err(|e| format!("own mount namespace: {e}"))?;
    // SAFETY: setns on an open mount namespace file (single-threaded caller).
    if unsafe { libc::setns(peer.as_raw_fd(), libc::CLONE_NEWNS) } < 0 {
        return Err(format!("entering the peer's mount namespace: {}", errno()));
    }
    let cloned = rustix::mount::open_tree(
        rustix::fs::CWD,
        "/proc",
        rustix::mount::OpenTreeFlags::OPEN_TREE_CLONE
            | rustix::mount::OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| format!("cloning the peer's /proc: {e}"));
    // SAFETY: as above, back to the namespace we came from.
    if unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNS) } < 0 {
        return Err(format!("returning to our mount namespace: {}", errno()));
    }
    let cloned = cloned?;
    let is_proc = nix::sys::statfs::fstatfs(&cloned)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC);
    let want = pid_ns.metadata().map_err(|e| e.to_string())?;
    let got = rustix::fs::statat(&cloned, "1/ns/pid", rustix::fs::AtFlags::empty())
        .map_err(|e| format!("the peer's /proc: {e}"))?;
    if !is_proc || got.st_ino != want.ino() || got.st_dev != want.dev() {
        return Err("the peer's /proc is not a proc of the namespace joined".into());
    }
    Ok(cloned)
}
