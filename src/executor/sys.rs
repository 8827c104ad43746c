//! Safe wrappers over the process and descriptor syscalls the monitor's
//! event loop needs, so `unsafe` stays in the executor.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn last() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Sets O_NONBLOCK on a descriptor.
pub fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl flag manipulation on a descriptor the caller owns.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// One `read(2)`: bytes read, 0 at EOF.
pub fn read_some(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 { Err(last()) } else { Ok(n as usize) }
}

/// `poll(2)` over `fds`; the number ready, or a negative value on error.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> i32 {
    // SAFETY: fds is a valid slice of pollfds.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) }
}

/// Sends a signal; a process that is gone is not an error.
pub fn kill(pid: i32, signal: i32) {
    if pid > 0 {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Reaps a child, blocking until it exits.
pub fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: status is a valid out-pointer.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && last().raw_os_error() == Some(libc::EINTR)
    {}
}

/// An exited child, without reaping it (WNOWAIT): `(pid, wait status)`.
/// The caller records the exit while the zombie still holds the pid, then
/// calls [`reap`].
pub fn peek_exited() -> Option<(i32, i32)> {
    // SAFETY: siginfo_t is plain data; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: info is a valid out-pointer.
    let rc = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: for a CLD_* siginfo from waitid, si_pid/si_status are set.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if rc < 0 || pid == 0 {
        return None;
    }
    let wait_status = if info.si_code == libc::CLD_EXITED {
        (status & 0xff) << 8
    } else {
        status & 0x7f
    };
    Some((pid, wait_status))
}

/// Blocks SIGCHLD and returns a signalfd that becomes readable on it.
pub fn sigchld_fd() -> Result<OwnedFd, String> {
    // SAFETY: sigset operations on a local set; signalfd returns a new fd.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(format!("signalfd: {}", last()));
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Points this process's stdout at `fd`.
pub fn redirect_stdout(fd: &OwnedFd) {
    // SAFETY: dup2 onto descriptor 1.
    unsafe { libc::dup2(fd.as_raw_fd(), 1) };
}

/// A pseudo-terminal pair `(master, slave)`.
pub fn pty() -> Result<(OwnedFd, OwnedFd), String> {
    // SAFETY: posix_openpt/grantpt/unlockpt/ptsname_r on the fd we get back;
    // name is a valid buffer.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if m < 0 {
            return Err(format!("posix_openpt: {}", last()));
        }
        let master = OwnedFd::from_raw_fd(m);
        if libc::grantpt(m) < 0 || libc::unlockpt(m) < 0 {
            return Err(format!("unlockpt: {}", last()));
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
            return Err("ptsname".into());
        }
        let s = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if s < 0 {
            return Err(format!("opening pty slave: {}", last()));
        }
        Ok((master, OwnedFd::from_raw_fd(s)))
    }
}

/// Drops this process's mapped program text (its own and its libraries')
/// and turns off read-around for it, so only the code pages a long-lived
/// helper keeps running stay resident; the rest stays in the shared page
/// cache and faults back in on demand. Only executable file mappings are
/// touched: they are never written, so dropping them loses nothing.
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
        // which fault back in from the page cache when run.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM);
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// Receives bytes and any descriptors sent along (SCM_RIGHTS) on a unix
/// socket; at most 8 descriptors.
pub fn recv_with_fds(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for r in raw {
                // SAFETY: the kernel just installed these descriptors for us.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    Ok((msg.bytes, fds))
}

/// Sends all of `data` with `fds` attached to its first byte.
pub fn send_with_fds(fd: RawFd, data: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let iov = [std::io::IoSlice::new(data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let sent =
        sendmsg::<()>(fd, &iov, &cmsg, MsgFlags::empty(), None).map_err(std::io::Error::from)?;
    let mut rest = &data[sent..];
    while !rest.is_empty() {
        // SAFETY: writing from a valid slice.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            let e = last();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        rest = &rest[n as usize..];
    }
    Ok(())
}

/// Sets a terminal's window size (the pty master of a TTY exec).
pub fn set_winsize(fd: RawFd, cols: u16, rows: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(last());
    }
    Ok(())
}

/// Connects to `127.0.0.1:port` (then `[::1]:port`) inside the network
/// namespace pinned at `netns` (the host's when `None`). A short-lived
/// thread enters the namespace, so the daemon's threads never change theirs;
/// the socket stays in the namespace it was made in.
pub fn connect_in_netns(
    netns: Option<&std::path::Path>,
    port: u16,
) -> std::io::Result<std::net::TcpStream> {
    let ns = netns.map(std::fs::File::open).transpose()?;
    std::thread::spawn(move || {
        if let Some(f) = &ns {
            // SAFETY: setns on this (new, private) thread only: CLONE_NEWNET
            // applies per thread.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                return Err(last());
            }
        }
        std::net::TcpStream::connect(("127.0.0.1", port))
            .or_else(|_| std::net::TcpStream::connect(("::1", port)))
    })
    .join()
    .map_err(|_| std::io::Error::other("connect thread panicked"))?
}

/// Brings the loopback interface of the caller's network namespace up, as
/// the CNI `loopback` plugin would, without starting a plugin process (3–4
/// ms per pod here).
pub fn set_loopback_up() -> std::io::Result<()> {
    // SAFETY: a plain datagram socket; the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last());
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
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

/// Marks every descriptor from `first` up close-on-exec, so nothing this
/// process inherited (from whatever started the daemon, say) reaches the
/// programs it starts.
pub fn cloexec_from(first: RawFd) {
    // SAFETY: only sets the close-on-exec flag; no descriptor is closed.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first.max(0) as u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
}

/// Closes every descriptor except `keep` (`close_range` over the gaps).
/// For a freshly forked child that must hold nothing of its parent's.
pub fn close_fds_except(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from = 0u32;
    for k in keep.into_iter().chain(std::iter::once(u32::MAX)) {
        if k > from {
            // SAFETY: closes descriptors only; the callers own every
            // descriptor they did not list (forked children).
            unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0u32) };
        }
        from = k.saturating_add(1);
    }
}

/// Puts `slots[i]` at descriptor `i` (inheritable across exec), copies each
/// of `keep` above them (close-on-exec) and closes every other descriptor.
/// Answers the new numbers of `keep`. Sources are first copied above the
/// slots, so filling a slot never clobbers a source not yet placed.
pub fn arrange_fds(slots: &[RawFd], keep: &[RawFd]) -> std::io::Result<Vec<RawFd>> {
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
    close_fds_except(&all);
    Ok(kept)
}

/// Writes all of `data` to `fd`, ignoring errors (a report channel whose
/// reader may be gone).
pub fn write_all(fd: RawFd, mut data: &[u8]) {
    while !data.is_empty() {
        // SAFETY: writing from a valid slice.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n <= 0 {
            if n < 0 && last().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        data = &data[n as usize..];
    }
}

/// Closes a raw descriptor this process owns outside Rust's types.
pub fn close(fd: RawFd) {
    // SAFETY: closing a descriptor the caller owns and no object holds.
    unsafe { libc::close(fd) };
}

/// Ends the process at once (`_exit`): no destructors, no atexit, as a
/// forked child or a sealed process must.
pub fn exit(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no memory.
    unsafe { libc::_exit(code) }
}

/// Writes `E<why>` to a report channel and ends the process with 127.
pub fn report_and_exit(fd: RawFd, why: &str) -> ! {
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

    #[test]
    fn arrange_places_slots_keeps_and_closes_the_rest() {
        // In a forked child: it closes descriptors the test harness owns.
        let (a, b) = std::io::pipe().unwrap();
        let extra = std::fs::File::open("/dev/null").unwrap();
        let (a, b, extra) = (a.as_raw_fd(), b.as_raw_fd(), extra.as_raw_fd());
        let (ino_a, ino_b) = (probe(a).unwrap().0, probe(b).unwrap().0);
        // SAFETY: the child only makes syscalls, then _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = match arrange_fds(&[b, a, a], &[extra]) {
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
                };
                exit(code);
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
