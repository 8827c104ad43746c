//! The descriptor and process syscalls the monitor's loop, the executor's
//! forked children, the pod init and the streaming server need, behind safe
//! functions, so `unsafe` stays here.
//!
//! Which library, call by call:
//! - **rustix** where it has a safe wrapper over [`AsFd`]: file status flags
//!   (`fcntl`), `poll`, `sendmsg`/`recvmsg` with SCM_RIGHTS (received
//!   descriptors come back as [`OwnedFd`], with no `from_raw_fd`), `waitpid`
//!   (its status stays a number, so any signal decodes) and the terminal
//!   window size. The monitor reads and writes its pipes with rustix too.
//! - **nix** where rustix has nothing or nix's wrapper is the one the crate
//!   already builds: the signal mask and signalfd, pseudo-terminals,
//!   `setns`, `socket`, `dup2` onto stdout.
//! - **libc** where neither wraps the call safely for its use here: `kill`
//!   and `waitid`, because a container's stop signal may be a real-time one
//!   (systemd's is SIGRTMIN+3), which nix's `Signal` cannot name (its
//!   `kill` cannot send it, its `waitid` fails to decode such a death) and
//!   rustix only builds through an unsafe constructor (and its `waitid` does
//!   not say which child exited); `madvise`, `close_range`, the interface
//!   flag ioctls, `_exit`, `mallopt`; and the raw descriptors of forked
//!   children.
//!
//! Descriptors a caller owns are passed as [`AsFd`]/[`BorrowedFd`]. Only
//! the `pub(crate)` helpers for forked children take [`RawFd`]: after
//! [`arrange_fds`] a child's descriptors are numbers it holds outside
//! Rust's types until it execs or `_exit`s.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

pub use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

fn last() -> io::Error {
    io::Error::last_os_error()
}

/// Adds what failed to an error.
fn context(op: &'static str) -> impl Fn(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{op}: {e}"))
}

/// Sets O_NONBLOCK on a descriptor.
pub fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    let fd = fd.as_fd();
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

/// `poll(2)` over `fds` for at most `timeout` (`None`: until one is
/// ready); how many are ready. A poll interrupted by a signal answers 0, as
/// a timeout does: every caller goes round its loop and recomputes its
/// deadline either way.
pub fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<usize> {
    let timeout = timeout
        .map(rustix::event::Timespec::try_from)
        .transpose()
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    match rustix::event::poll(fds, timeout.as_ref()) {
        Err(Errno::INTR) => Ok(0),
        r => Ok(r?),
    }
}

/// Sends `signal` (any number, real-time ones included) to the process
/// `pid`. A process that is already gone is not an error; an invalid
/// signal (`EINVAL`) or a refused one (`EPERM`) is. `pid` must name one
/// process: 0 and negative values (groups, everything) are refused.
pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    if pid <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{pid} is not a process"),
        ));
    }
    // SAFETY: kill(2) takes no pointers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } == 0 {
        return Ok(());
    }
    match last() {
        e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        e => Err(e),
    }
}

/// Reaps the child `pid`, blocking until it has exited.
pub fn reap(pid: i32) -> io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid 0"))?;
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Err(Errno::INTR) => continue,
            r => return r.map(drop).map_err(io::Error::from),
        }
    }
}

/// An exited child, without reaping it (`WNOWAIT`): its pid and how it
/// ended. The caller records the exit while the zombie still holds the
/// pid, then calls [`reap`]. `None`: no child has exited (or there is no
/// child at all).
pub fn peek_exited() -> io::Result<Option<(i32, ExitStatus)>> {
    loop {
        // SAFETY: siginfo_t is plain data, for which all zeroes is valid;
        // waitid leaves it zeroed when no child has exited (WNOHANG).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: info is a valid, writable siginfo_t.
        let rc = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if rc < 0 {
            let e = last();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) => return Ok(None),
                _ => return Err(e),
            }
        }
        // SAFETY: waitid succeeded: info is zeroed (si_pid 0) or a CLD_*
        // siginfo, whose si_pid and si_status are set.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        // Back to a wait status: the code in the second byte for an exit,
        // the signal in the low 7 bits for a death by signal.
        let wait_status = if info.si_code == libc::CLD_EXITED {
            (status & 0xff) << 8
        } else {
            status & 0x7f
        };
        return Ok(Some((pid, ExitStatus::from_raw(wait_status))));
    }
}

/// SIGCHLD as a readable descriptor: blocked in the calling thread and
/// queued to a non-blocking signalfd instead. The thread must be the
/// process's only one (the monitor), or another thread may take the signal.
pub struct SigChld(nix::sys::signalfd::SignalFd);

impl SigChld {
    /// Blocks SIGCHLD in the calling thread and opens the non-blocking signalfd that receives it.
    pub fn block() -> io::Result<SigChld> {
        use nix::sys::signal::{SigSet, Signal};
        use nix::sys::signalfd::{SfdFlags, SignalFd};
        let mut set = SigSet::empty();
        set.add(Signal::SIGCHLD);
        set.thread_block()
            .map_err(|e| context("blocking SIGCHLD")(e.into()))?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| context("signalfd")(e.into()))?;
        Ok(SigChld(fd))
    }

    /// Consumes what is queued. Notifications coalesce, so the caller
    /// reaps every exited child afterwards, whatever their number.
    pub fn clear(&self) -> io::Result<()> {
        while self.0.read_signal()?.is_some() {}
        Ok(())
    }
}

impl AsFd for SigChld {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Points this process's stdout at `fd`.
pub fn redirect_stdout(fd: impl AsFd) -> io::Result<()> {
    nix::unistd::dup2_stdout(fd)?;
    Ok(())
}

/// A pseudo-terminal pair `(master, slave)`, both close-on-exec and
/// neither the caller's controlling terminal. The master comes from
/// `/dev/ptmx` as the caller's mount namespace sees it (a container's own
/// devpts, for a process inside one).
///
/// No `grantpt`: on devpts the kernel gives the slave its owner, group and
/// mode itself; an older glibc's `grantpt` would try to chown it, which a
/// container's user inside an exec may not be allowed to do.
pub fn pty() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let master =
        nix::pty::posix_openpt(flags).map_err(|e| context("opening /dev/ptmx")(e.into()))?;
    nix::pty::unlockpt(&master).map_err(|e| context("unlockpt")(e.into()))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| context("ptsname")(e.into()))?;
    let slave = nix::fcntl::open(name.as_str(), flags, nix::sys::stat::Mode::empty())
        .map_err(|e| context("opening the pty slave")(e.into()))?;
    Ok((master.into(), slave))
}

/// Drops this process's mapped program text (its own and its libraries')
/// and turns off read-around for it, so only the code pages a long-lived
/// helper keeps running stay resident; the rest stays in the shared page
/// cache and faults back in on demand. Only executable file mappings are
/// touched: they are never written, so dropping them loses nothing.
///
/// Best effort: a mapping that cannot be read or advised stays resident,
/// which costs memory and nothing else, so failures are not reported.
pub fn trim_text() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let offset = f.next().unwrap_or("");
        let file = f.nth(2).is_some_and(|p| p.starts_with('/'));
        // Text, and the read-only segment at offset 0 (headers, .rodata):
        // never written. Never RELRO (r--p at a later offset), whose
        // relocated pages would be lost.
        let clean =
            perms == "r-xp" || (perms == "r--p" && offset.trim_start_matches('0').is_empty());
        if !clean || !file {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        else {
            continue;
        };
        // SAFETY: [start, end) is a whole never-written file mapping:
        // MADV_RANDOM/MADV_DONTNEED only drop clean file pages,
        // which fault back in from the page cache when run. (No safe
        // madvise exists: nix's and rustix's are unsafe for this reason.)
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM);
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// Most descriptors [`recv_with_fds`] takes with one message.
pub const MAX_FDS: usize = 8;

/// Receives bytes into `buf` and the descriptors sent along with them
/// (SCM_RIGHTS, at most [`MAX_FDS`]; close-on-exec).
pub fn recv_with_fds(sock: impl AsFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [io::IoSliceMut::new(buf)];
    let got = loop {
        match recvmsg(&sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Err(Errno::INTR) => continue,
            r => break r?,
        }
    };
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    Ok((got.bytes, fds))
}

/// Sends all of `data` on `sock`, with `fds` attached to its first byte
/// (SCM_RIGHTS).
pub fn send_with_fds(sock: impl AsFd, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let sock = sock.as_fd();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors do not fit the control message",
        ));
    }
    let sent = loop {
        match sendmsg(
            sock,
            &[io::IoSlice::new(data)],
            &mut control,
            SendFlags::empty(),
        ) {
            Err(Errno::INTR) => continue,
            r => break r?,
        }
    };
    let mut rest = &data[sent..];
    while !rest.is_empty() {
        match rustix::io::write(sock, rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Sets a terminal's window size (the pty master of a TTY exec).
pub fn set_winsize(fd: impl AsFd, cols: u16, rows: u16) -> io::Result<()> {
    let size = rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(fd, size)?;
    Ok(())
}

/// Connects to `127.0.0.1:port` (then `[::1]:port`) inside the network
/// namespace pinned at `netns` (the host's when `None`). A short-lived
/// thread enters the namespace, so the daemon's threads never change theirs;
/// the socket stays in the namespace it was made in.
pub fn connect_in_netns(
    netns: Option<&std::path::Path>,
    port: u16,
) -> io::Result<std::net::TcpStream> {
    let ns = netns.map(std::fs::File::open).transpose()?;
    std::thread::spawn(move || {
        if let Some(f) = &ns {
            // On this (new, private) thread only: CLONE_NEWNET applies
            // per thread.
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
        }
        std::net::TcpStream::connect(("127.0.0.1", port))
            .or_else(|_| std::net::TcpStream::connect(("::1", port)))
    })
    .join()
    .map_err(|_| io::Error::other("connect thread panicked"))?
}

/// Brings the loopback interface of the caller's network namespace up, as
/// the CNI `loopback` plugin would, without starting a plugin process (3–4
/// ms per pod here).
pub fn set_loopback_up() -> io::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // Neither nix nor rustix wraps SIOCGIFFLAGS/SIOCSIFFLAGS.
    // SAFETY: req is a valid ifreq naming "lo"; the ioctl fills its flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(last());
    }
    // SAFETY: the flags member was just filled by SIOCGIFFLAGS.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: req is a valid ifreq with the new flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(last());
    }
    Ok(())
}

/// Marks every descriptor numbered `first` and up close-on-exec, so
/// nothing this process inherited (from whatever started the daemon, say)
/// reaches the programs it starts. Needs Linux 5.11.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag; no
    // descriptor is closed, so nothing Rust owns is invalidated. (rustix's
    // close_range is unsafe for the closing case; nix has none.)
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc < 0 { Err(last()) } else { Ok(()) }
}

/// Caps glibc's malloc arenas at `max`. glibc gives each thread that
/// allocates while the others hold theirs an arena of its own (up to 8 per
/// CPU) and keeps what each arena freed; the daemon's short-lived blocking
/// threads would each leave one behind. Call before threads start.
pub fn limit_malloc_arenas(max: i32) {
    // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX takes
    // any positive count. It returns 0 on failure, which leaves glibc's
    // default: nothing to report.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, max);
    }
}

/// Closes every descriptor except `keep` (`close_range` over the gaps).
/// Only for a freshly forked child that must hold nothing of its parent's:
/// it closes descriptors owned by objects the child never uses again.
pub(crate) fn close_fds_except(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from = 0u32;
    for k in keep.into_iter().chain(std::iter::once(u32::MAX)) {
        if k > from {
            // SAFETY: closes descriptors only; the callers (forked
            // children) own every descriptor they did not list and never
            // touch the objects that held them again.
            if unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0u32) } < 0 {
                return Err(context("close_range")(last()));
            }
        }
        from = k.saturating_add(1);
    }
    Ok(())
}

/// Puts `slots[i]` at descriptor `i` (inheritable across exec), copies each
/// of `keep` above them (close-on-exec) and closes every other descriptor.
/// Answers the new numbers of `keep`. Sources are first copied above the
/// slots, so filling a slot never clobbers a source not yet placed.
///
/// Only for a forked child about to exec or `_exit`: descriptors are raw
/// numbers here because the objects that owned them in the parent's image
/// are never used again once their numbers are closed or moved.
pub(crate) fn arrange_fds(slots: &[RawFd], keep: &[RawFd]) -> io::Result<Vec<RawFd>> {
    let floor = slots.len() as RawFd;
    let lift = |fd: RawFd| {
        // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor; nothing is touched.
        let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
        if n < 0 { Err(last()) } else { Ok(n) }
    };
    let lifted: Vec<RawFd> = slots.iter().map(|&fd| lift(fd)).collect::<Result<_, _>>()?;
    let kept: Vec<RawFd> = keep.iter().map(|&fd| lift(fd)).collect::<Result<_, _>>()?;
    for (i, &fd) in lifted.iter().enumerate() {
        // SAFETY: dup2 onto a slot below every lifted copy.
        if unsafe { libc::dup2(fd, i as RawFd) } < 0 {
            return Err(last());
        }
    }
    let mut all: Vec<RawFd> = (0..floor).collect();
    all.extend(&kept);
    close_fds_except(&all)?;
    Ok(kept)
}

/// Writes all of `data` to the raw descriptor `fd` of a forked child (a
/// report channel). Errors are ignored on purpose: they mean the reader is
/// gone, and a child that cannot report has no one left to tell.
pub(crate) fn write_all(fd: RawFd, mut data: &[u8]) {
    while !data.is_empty() {
        // SAFETY: writing from a valid slice.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n <= 0 {
            if n < 0 && last().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        data = &data[n as usize..];
    }
}

/// Writes `data` to a /proc attribute file (an LSM's `attr/exec`) in one
/// write(2), as the kernel wants such a value: a short write is an error.
pub(crate) fn write_attr(path: &str, data: &[u8]) -> io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
    let n = loop {
        match rustix::io::write(&fd, data) {
            Err(Errno::INTR) => continue,
            r => break r?,
        }
    };
    if n != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("{path}: wrote {n} of {} bytes", data.len()),
        ));
    }
    Ok(())
}

/// Closes a raw descriptor a process owns outside Rust's types (the pod
/// init's report channel). A close error is ignored: the descriptor is
/// released either way, and what was written is already with the reader.
pub(crate) fn close(fd: RawFd) {
    // SAFETY: closing a descriptor the caller owns and no object holds.
    unsafe { libc::close(fd) };
}

/// Ends the process at once (`_exit`): no destructors, no atexit, as a
/// forked child or a sealed process must.
pub fn exit(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no memory.
    unsafe { libc::_exit(code) }
}

/// Writes `E<why>` to a forked child's raw report descriptor and ends the
/// process with 127.
pub(crate) fn report_and_exit(fd: RawFd, why: &str) -> ! {
    let mut msg = Vec::with_capacity(1 + why.len());
    msg.push(b'E');
    msg.extend_from_slice(why.as_bytes());
    write_all(fd, &msg);
    exit(127)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(inode, close-on-exec)` of an open descriptor, `None` if closed.
    fn probe(fd: RawFd) -> Option<(u64, bool)> {
        // SAFETY: fcntl/fstat on a raw number, into a local stat buffer.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 {
                return None;
            }
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(fd, &mut st);
            Some((st.st_ino, flags & libc::FD_CLOEXEC != 0))
        }
    }

    /// Runs `f` in a forked child (it may touch process-wide state: other
    /// tests' children, descriptors) and asserts it returned 0.
    fn in_child(f: impl FnOnce() -> i32) {
        // SAFETY: the child only makes syscalls, then _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => exit(f()),
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn arrange_places_slots_keeps_and_closes_the_rest() {
        // In a forked child: it closes descriptors the test harness owns.
        let (a, b) = std::io::pipe().unwrap();
        let extra = std::fs::File::open("/dev/null").unwrap();
        let (a, b, extra) = (a.as_raw_fd(), b.as_raw_fd(), extra.as_raw_fd());
        let (ino_a, ino_b) = (probe(a).unwrap().0, probe(b).unwrap().0);
        in_child(|| match arrange_fds(&[b, a, a], &[extra]) {
            Err(_) => 2,
            Ok(kept) if kept.len() != 1 => 3,
            Ok(kept) => {
                let slots = [probe(0), probe(1), probe(2)];
                let placed = slots
                    == [
                        Some((ino_b, false)),
                        Some((ino_a, false)),
                        Some((ino_a, false)),
                    ];
                let keep_ok = probe(kept[0]).is_some_and(|(_, cloexec)| cloexec);
                let others = (3..1024)
                    .filter(|&f| f != kept[0])
                    .any(|f| probe(f).is_some());
                match (placed, keep_ok, others) {
                    (true, true, false) => 0,
                    (false, _, _) => 4,
                    (_, false, _) => 5,
                    _ => 6,
                }
            }
        });
    }

    #[test]
    fn an_exit_is_seen_before_the_reap_and_gone_after_it() {
        // In a forked child: waitid(P_ALL) would see other tests' children.
        in_child(|| {
            let spawn = |code: i32, signal: Option<i32>| {
                // SAFETY: the grandchild only sleeps or exits.
                match unsafe { nix::unistd::fork() } {
                    Ok(nix::unistd::ForkResult::Child) => {
                        if let Some(sig) = signal {
                            // SAFETY: raising a signal at ourselves.
                            unsafe { libc::raise(sig) };
                        }
                        exit(code)
                    }
                    Ok(nix::unistd::ForkResult::Parent { child }) => child.as_raw(),
                    Err(_) => exit(20),
                }
            };
            let peek = || loop {
                match peek_exited() {
                    Ok(Some(e)) => return e,
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => exit(21),
                }
            };
            let rt = libc::SIGRTMIN() + 3;
            for (code, signal, want_code, want_signal) in
                [(7, None, Some(7), None), (0, Some(rt), None, Some(rt))]
            {
                let pid = spawn(code, signal);
                let (got, status) = peek();
                if got != pid || status.code() != want_code || status.signal() != want_signal {
                    return 22;
                }
                // Still a zombie: seen again, its /proc entry still there.
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    return 23;
                }
                if peek().0 != pid || reap(pid).is_err() {
                    return 24;
                }
                if !matches!(peek_exited(), Ok(None)) {
                    return 25;
                }
            }
            0
        });
    }

    #[test]
    fn kill_tells_a_gone_process_from_a_bad_signal() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let e = kill(pid, 1000).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        assert_eq!(
            kill(0, libc::SIGKILL).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        kill(pid, libc::SIGRTMIN() + 3).unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGRTMIN() + 3));
        // Reaped: gone, and that is no error.
        kill(pid, libc::SIGKILL).unwrap();
    }

    #[test]
    fn descriptors_travel_with_the_bytes() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (r, mut w) = std::io::pipe().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let data = vec![7u8; 300_000];
        let sender = std::thread::spawn(move || {
            send_with_fds(&a, &data, &[r.as_fd(), file.as_fd()]).unwrap();
        });
        let mut first = [0u8; 4];
        let (n, fds) = recv_with_fds(&b, &mut first).unwrap();
        assert_eq!((n, fds.len()), (4, 2));
        let mut rest = vec![0u8; 300_000 - 4];
        std::io::Read::read_exact(&mut &b, &mut rest).unwrap();
        sender.join().unwrap();
        assert!(rest.iter().all(|&x| x == 7));
        // The pipe's read end came across: what we write, it reads.
        std::io::Write::write_all(&mut w, b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(rustix::io::read(&fds[0], &mut buf).unwrap(), 1);
        let flags = rustix::io::fcntl_getfd(&fds[0]).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn nonblocking_reads_poll_and_terminals() {
        let (r, w) = std::io::pipe().unwrap();
        set_nonblocking(&r).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(rustix::io::read(&r, &mut buf), Err(Errno::AGAIN));
        let mut fds = [PollFd::new(&r, PollFlags::IN)];
        assert_eq!(poll(&mut fds, Some(Duration::from_millis(10))).unwrap(), 0);
        rustix::io::write(&w, b"hi").unwrap();
        assert_eq!(poll(&mut fds, None).unwrap(), 1);
        assert!(fds[0].revents().contains(PollFlags::IN));

        let (master, slave) = pty().unwrap();
        set_winsize(&master, 120, 40).unwrap();
        let size = rustix::termios::tcgetwinsize(&slave).unwrap();
        assert_eq!((size.ws_col, size.ws_row), (120, 40));
        rustix::io::write(&slave, b"ok").unwrap();
        assert_eq!(rustix::io::read(&master, &mut buf).unwrap(), 2);
    }
}
