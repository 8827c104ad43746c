//! Device rules: the list both cgroup versions enforce, written as v1
//! `devices.allow` lines or, on cgroup v2 (which has no devices
//! controller), compiled into a `BPF_PROG_TYPE_CGROUP_DEVICE` program
//! attached to the container's cgroup. Without either, a container with
//! CAP_MKNOD could make and open a node for a host disk.
//!
//! The program is assembled by hand, as runc's `devicefilter` does: it
//! loads the access type, major and minor the kernel hands it, tries each
//! allow rule in turn (returning 1 on the first match) and ends in 0,
//! refusing everything else. This module holds the only `unsafe` of the
//! cgroup code: the bpf(2) calls and taking ownership of their fds.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::{CgroupError, HostDevice};

/// mknod, read, write: the v1 `m`, `r`, `w` and the kernel's
/// `BPF_DEVCG_ACC_*` bits.
pub const ACC_MKNOD: u32 = 1;
/// See [`ACC_MKNOD`].
pub const ACC_READ: u32 = 2;
/// See [`ACC_MKNOD`].
pub const ACC_WRITE: u32 = 4;
const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// `BPF_DEVCG_DEV_BLOCK`, `BPF_DEVCG_DEV_CHAR`.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

/// Which devices a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// v1 `a`.
    All,
    /// Character devices (v1 `c`).
    Char,
    /// Block devices (v1 `b`).
    Block,
}

/// One allow rule; `None` is the v1 `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Character, block or both.
    pub kind: Kind,
    /// The device's major number; `None` matches any.
    pub major: Option<u32>,
    /// The device's minor number; `None` matches any.
    pub minor: Option<u32>,
    /// `ACC_*` bits allowed.
    pub access: u32,
}

/// What every unprivileged container may use: mknod of any node (opening
/// it is another matter), the standard character devices (null, zero,
/// full, random, urandom, tty, console, ptmx), the pty slaves and the tun
/// device. Kept in the v1 order.
const STANDARD: [(Kind, Option<u32>, Option<u32>, u32); 12] = [
    (Kind::Char, None, None, ACC_MKNOD),
    (Kind::Block, None, None, ACC_MKNOD),
    (Kind::Char, Some(1), Some(3), ACC_ALL),
    (Kind::Char, Some(1), Some(5), ACC_ALL),
    (Kind::Char, Some(1), Some(7), ACC_ALL),
    (Kind::Char, Some(1), Some(8), ACC_ALL),
    (Kind::Char, Some(1), Some(9), ACC_ALL),
    (Kind::Char, Some(5), Some(0), ACC_ALL),
    (Kind::Char, Some(5), Some(1), ACC_ALL),
    (Kind::Char, Some(5), Some(2), ACC_ALL),
    (Kind::Char, Some(136), None, ACC_ALL),
    (Kind::Char, Some(10), Some(200), ACC_ALL),
];

/// The allow rules of an unprivileged container: the standard ones, then
/// each device it was given, with its permissions.
pub fn rules(devices: &[HostDevice]) -> Result<Vec<Rule>, CgroupError> {
    let mut out: Vec<Rule> = STANDARD
        .iter()
        .map(|&(kind, major, minor, access)| Rule {
            kind,
            major,
            minor,
            access,
        })
        .collect();
    for d in devices {
        let bad = |what: &str| {
            CgroupError::InvalidResource(format!("device {}: {what}", d.host_path.display()))
        };
        let number = |n: i64| u32::try_from(n).map_err(|_| bad("device number out of range"));
        out.push(Rule {
            kind: if d.char_device {
                Kind::Char
            } else {
                Kind::Block
            },
            major: Some(number(d.major)?),
            minor: Some(number(d.minor)?),
            access: parse_access(&d.permissions).ok_or_else(|| bad("permissions not in rwm"))?,
        });
    }
    Ok(out)
}

/// `rwm` letters to bits; empty is all (as the v1 path writes `rwm`).
fn parse_access(perms: &str) -> Option<u32> {
    if perms.is_empty() {
        return Some(ACC_ALL);
    }
    perms.chars().try_fold(0, |acc, c| match c {
        'r' => Some(acc | ACC_READ),
        'w' => Some(acc | ACC_WRITE),
        'm' => Some(acc | ACC_MKNOD),
        _ => None,
    })
}

/// The standard rules as v1 `devices.allow` lines (`c 1:3 rwm`).
pub fn standard_v1_lines() -> Vec<String> {
    STANDARD
        .iter()
        .map(|&(kind, major, minor, access)| {
            let kind = match kind {
                Kind::All => 'a',
                Kind::Char => 'c',
                Kind::Block => 'b',
            };
            let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
            let perms: String = [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')]
                .iter()
                .filter(|(bit, _)| access & bit != 0)
                .map(|(_, c)| *c)
                .collect();
            format!("{kind} {}:{} {perms}", num(major), num(minor))
        })
        .collect()
}

/// One eBPF instruction, as `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// The opcode (class | size/op | source).
    pub code: u8,
    /// dst in the low nibble, src in the high one.
    pub regs: u8,
    /// Memory offset or jump distance.
    pub off: i16,
    /// Immediate operand.
    pub imm: i32,
}

// Opcodes used (class | size/op | source).
/// `dst = *(u32 *)(src + off)`
pub const LDX_MEM_W: u8 = 0x61;
/// `dst &= imm`
pub const ALU32_AND_K: u8 = 0x54;
/// `dst >>= imm`
pub const ALU32_RSH_K: u8 = 0x74;
/// `dst = imm`
pub const ALU32_MOV_K: u8 = 0xb4;
/// `dst = src`
pub const ALU32_MOV_X: u8 = 0xbc;
/// `if dst != imm: pc += off`
pub const JNE_K: u8 = 0x55;
/// `if dst != src: pc += off`
pub const JNE_X: u8 = 0x5d;
/// `return r0`
pub const EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// The program: r2 = type, r3 = access, r4 = major, r5 = minor (from
/// `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`,
/// access_type = access << 16 | type), one block per rule that jumps to
/// the next on a mismatch or returns 1, and a final return 0.
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for r in rules {
        // Jumps carry a placeholder offset, fixed once the block's end is known.
        let mut block: Vec<Insn> = Vec::new();
        match r.kind {
            Kind::All => {}
            Kind::Char => block.push(insn(JNE_K, 2, 0, 0, DEV_CHAR)),
            Kind::Block => block.push(insn(JNE_K, 2, 0, 0, DEV_BLOCK)),
        }
        if r.access & ACC_ALL != ACC_ALL {
            // Allowed when every asked-for bit is in the rule: (r3 & acc) == r3.
            block.push(insn(ALU32_MOV_X, 1, 3, 0, 0));
            block.push(insn(ALU32_AND_K, 1, 0, 0, (r.access & ACC_ALL) as i32));
            block.push(insn(JNE_X, 1, 3, 0, 0));
        }
        if let Some(major) = r.major {
            block.push(insn(JNE_K, 4, 0, 0, major as i32));
        }
        if let Some(minor) = r.minor {
            block.push(insn(JNE_K, 5, 0, 0, minor as i32));
        }
        block.push(insn(ALU32_MOV_K, 0, 0, 0, 1));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JNE_K || ins.code == JNE_X {
                // Past this block: relative to the next instruction.
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.push(insn(ALU32_MOV_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

// bpf(2) commands, program and attach types, flags (uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Other programs (a parent's, an older one of ours) stay in force too.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The BPF_PROG_LOAD part of `union bpf_attr`; the kernel zero-fills
/// what follows. No padding: every byte is a field.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The BPF_PROG_ATTACH part of `union bpf_attr`.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Loads `insns` as a cgroup device program; on a refusal other than
/// EPERM, loads it again with the verifier's log to return it.
fn load(insns: &[Insn]) -> Result<OwnedFd, (io::Error, String)> {
    match load_once(insns, &mut []) {
        Ok(fd) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Err((e, String::new())),
        Err(first) => {
            let mut log = vec![0u8; 64 * 1024];
            match load_once(insns, &mut log) {
                Ok(fd) => Ok(fd),
                Err(_) => {
                    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                    Err((
                        first,
                        String::from_utf8_lossy(&log[..end]).trim().to_string(),
                    ))
                }
            }
        }
    }
}

/// One BPF_PROG_LOAD; a non-empty `log` asks for the verifier's log in it.
fn load_once(insns: &[Insn], log: &mut [u8]) -> io::Result<OwnedFd> {
    let license = c"Apache";
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"crius_device");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: log.len() as u32,
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: BPF_CGROUP_DEVICE,
    };
    // SAFETY: attr is a fully initialised prefix of union bpf_attr for
    // BPF_PROG_LOAD with its size; insns, license and log point to live
    // buffers of the lengths given, which outlive the call (the kernel
    // writes only into log, which we borrow mutably).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel returned a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches `prog` to the cgroup open as `cgroup`, beside any others.
fn attach(cgroup: &OwnedFd, prog: &OwnedFd) -> io::Result<()> {
    let attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: attr is a fully initialised prefix of union bpf_attr for
    // BPF_PROG_ATTACH with its size; both descriptors are open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Loads the program for `rules` and attaches it to the cgroup v2
/// directory `dir`. The attachment lives as long as the cgroup; the
/// descriptors are closed on return.
pub fn attach_filter(dir: &Path, rules: &[Rule]) -> Result<(), CgroupError> {
    let err = |op: &'static str, source: io::Error, log: String| CgroupError::DeviceFilter {
        op,
        path: PathBuf::from(dir),
        source,
        log,
    };
    let cgroup: OwnedFd = std::fs::File::open(dir)
        .map_err(|e| err("opening the cgroup", e, String::new()))?
        .into();
    let prog = load(&program(rules)).map_err(|(e, log)| err("loading the program", e, log))?;
    attach(&cgroup, &prog).map_err(|e| err("attaching the program", e, String::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program the way the kernel would for one access; only the
    /// instructions `program` emits are understood.
    fn run(p: &[Insn], kind: i32, access: u32, major: u32, minor: u32) -> u32 {
        let ctx = [(access << 16) | kind as u32, major, minor];
        let mut r = [0u32; 11];
        let mut pc = 0usize;
        for _ in 0..10_000 {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    r[dst] = ctx[i.off as usize / 4];
                }
                ALU32_AND_K => r[dst] &= i.imm as u32,
                ALU32_RSH_K => r[dst] >>= i.imm as u32,
                ALU32_MOV_K => r[dst] = i.imm as u32,
                ALU32_MOV_X => r[dst] = r[src],
                JNE_K if r[dst] != i.imm as u32 => pc += i.off as usize,
                JNE_X if r[dst] != r[src] => pc += i.off as usize,
                JNE_K | JNE_X => {}
                EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
        panic!("no exit");
    }

    const R: u32 = ACC_READ;
    const W: u32 = ACC_WRITE;
    const M: u32 = ACC_MKNOD;

    #[test]
    fn the_standard_rules_match_the_v1_lines() {
        assert_eq!(
            standard_v1_lines(),
            [
                "c *:* m",
                "b *:* m",
                "c 1:3 rwm",
                "c 1:5 rwm",
                "c 1:7 rwm",
                "c 1:8 rwm",
                "c 1:9 rwm",
                "c 5:0 rwm",
                "c 5:1 rwm",
                "c 5:2 rwm",
                "c 136:* rwm",
                "c 10:200 rwm",
            ]
        );
    }

    #[test]
    fn standard_devices_open_block_devices_do_not() {
        let p = program(&rules(&[]).unwrap());
        for (maj, min) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
        ] {
            assert_eq!(run(&p, DEV_CHAR, R | W, maj, min), 1, "c {maj}:{min}");
        }
        assert_eq!(run(&p, DEV_CHAR, R | W, 136, 7), 1, "pty slaves");
        assert_eq!(run(&p, DEV_CHAR, R, 10, 200), 1, "tun");
        // Nodes may be made, not opened.
        assert_eq!(run(&p, DEV_BLOCK, M, 8, 0), 1);
        assert_eq!(run(&p, DEV_CHAR, M, 1, 1), 1);
        assert_eq!(run(&p, DEV_BLOCK, R, 8, 0), 0, "a host disk");
        assert_eq!(run(&p, DEV_BLOCK, R, 7, 0), 0, "a loop device");
        assert_eq!(run(&p, DEV_BLOCK, W, 1, 3), 0, "block 1:3 is not /dev/null");
        assert_eq!(run(&p, DEV_BLOCK, R | M, 8, 0), 0, "mknod with read");
        assert_eq!(run(&p, DEV_CHAR, R, 1, 1), 0, "/dev/mem");
        assert_eq!(run(&p, DEV_CHAR, W, 10, 237), 0, "loop-control");
        assert_eq!(run(&p, DEV_CHAR, R, 4, 1), 0, "a host tty");
    }

    #[test]
    fn given_devices_get_their_permissions_only() {
        let dev = |char_device, perms: &str| HostDevice {
            host_path: "/dev/x".into(),
            container_path: "/dev/x".into(),
            char_device,
            major: 8,
            minor: 16,
            mode: 0o660,
            uid: 0,
            gid: 0,
            permissions: perms.into(),
        };
        let p = program(&rules(&[dev(false, "r")]).unwrap());
        assert_eq!(run(&p, DEV_BLOCK, R, 8, 16), 1);
        assert_eq!(run(&p, DEV_BLOCK, W, 8, 16), 0, "not writable");
        assert_eq!(run(&p, DEV_BLOCK, R | W, 8, 16), 0, "read-write asks for w");
        assert_eq!(
            run(&p, DEV_CHAR, R, 8, 16),
            0,
            "the char device of that number"
        );
        assert_eq!(run(&p, DEV_BLOCK, R, 8, 17), 0, "another minor");
        let p = program(&rules(&[dev(true, "")]).unwrap());
        assert_eq!(run(&p, DEV_CHAR, R | W | M, 8, 16), 1, "empty means rwm");
        assert!(rules(&[dev(true, "rwx")]).is_err());
        let mut neg = dev(true, "r");
        neg.major = -1;
        assert!(rules(&[neg]).is_err());
    }

    #[test]
    fn jumps_stay_inside_the_program() {
        let p = program(&rules(&[]).unwrap());
        for (pc, i) in p.iter().enumerate() {
            if i.code == JNE_K || i.code == JNE_X {
                let to = pc + 1 + i.off as usize;
                assert!(to < p.len(), "jump at {pc} leaves the program");
            }
        }
        assert_eq!(p.last().map(|i| i.code), Some(EXIT));
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 72);
        assert_eq!(std::mem::size_of::<ProgAttachAttr>(), 20);
    }
}
