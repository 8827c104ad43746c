//! The isolation report of one running process, read from `/proc` and the
//! cgroup filesystem as the host sees them: what an operator would
//! otherwise assemble with `ls -l /proc/PID/ns`, `capsh --print`,
//! `/proc/PID/status` and `/proc/PID/mountinfo`.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cgroups::{CgroupMode, cgroup_mode};

/// The namespaces `/proc/PID/ns` names, in `lsns` order.
const NAMESPACES: &[&str] = &["cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"];

/// One namespace of the process beside the host's (PID 1's) and the pod's.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Namespace {
    /// `net`, `pid`, …
    pub kind: String,
    /// The process's, e.g. `net:[4026532301]`.
    pub container: Option<String>,
    /// The pod init's, where the pod has one.
    pub pod: Option<String>,
    /// The host's: PID 1's, or this command's where PID 1's cannot be
    /// read (a runner that hides it).
    pub host: Option<String>,
}

impl Namespace {
    /// `own`, `pod` or `host`: whose namespace the process is in.
    pub fn shared_with(&self) -> &'static str {
        match (&self.container, &self.pod, &self.host) {
            (None, _, _) => "?",
            (c, _, h) if c == h => "host",
            (c, p, _) if c == p => "pod",
            _ => "own",
        }
    }
}

/// The cgroup the process is in and the limits read from its files.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Cgroup {
    /// Its path from the hierarchy root (the memory controller's on v1).
    pub path: String,
    /// `memory.max` (v2) or `memory.limit_in_bytes` (v1).
    pub memory_max: Option<String>,
    /// `pids.max`.
    pub pids_max: Option<String>,
    /// `cpu.max` (v2) or `cpu.cfs_quota_us cpu.cfs_period_us` (v1).
    pub cpu_max: Option<String>,
    /// `cpu.weight` (v2) or `cpu.shares` (v1).
    pub cpu_weight: Option<String>,
}

/// Mounts that shape what the process sees of the kernel.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Mounts {
    /// Paths hidden behind /dev/null or an empty read-only tmpfs.
    pub masked: Vec<String>,
    /// Read-only mounts (besides the masked ones).
    pub read_only: Vec<String>,
    /// The root mount's propagation: `shared`, `slave` or `private`.
    pub root_propagation: String,
}

/// Everything the report says about one process.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The container the process belongs to.
    pub container_id: String,
    /// Its pod.
    pub pod_id: String,
    /// The process's pid on the host.
    pub pid: i32,
    /// The pod init's pid on the host, where the pod has one.
    pub pod_pid: Option<i32>,
    /// Each namespace beside the pod's and the host's.
    pub namespaces: Vec<Namespace>,
    /// `/proc/PID/uid_map`, one mapping per entry.
    pub uid_map: Vec<String>,
    /// `/proc/PID/gid_map`.
    pub gid_map: Vec<String>,
    /// The five capability sets by name: inheritable, permitted,
    /// effective, bounding, ambient.
    pub capabilities: BTreeMap<String, Vec<String>>,
    /// `disabled`, `strict` or `filter`.
    pub seccomp: String,
    /// How many filters are stacked (`Seccomp_filters`).
    pub seccomp_filters: Option<u32>,
    /// `NoNewPrivs`.
    pub no_new_privs: bool,
    /// `/proc/PID/attr/current`, where an LSM answers.
    pub lsm_label: Option<String>,
    /// Its cgroup and limits.
    pub cgroup: Cgroup,
    /// Masked and read-only paths, root propagation.
    pub mounts: Mounts,
}

/// Why a report could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {source}")]
pub struct ReadError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

fn read(path: impl AsRef<Path>) -> Result<String, ReadError> {
    let path = path.as_ref();
    std::fs::read_to_string(path).map_err(|source| ReadError {
        path: path.to_path_buf(),
        source,
    })
}

fn ns_link(pid: impl fmt::Display, kind: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

fn map_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

/// The capabilities in a `Cap*` hex mask, by name.
pub fn cap_names(mask: u64) -> Vec<String> {
    let mut v: Vec<(u8, String)> = caps::all()
        .into_iter()
        .filter(|c| mask & c.bitmask() != 0)
        .map(|c| (c.index(), c.to_string()))
        .collect();
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

/// The report for `pid` (a process of container `container_id` in pod
/// `pod_id`, whose init is `pod_pid`).
pub fn gather(
    container_id: &str,
    pod_id: &str,
    pid: i32,
    pod_pid: Option<i32>,
) -> Result<Report, ReadError> {
    let status = read(format!("/proc/{pid}/status"))?;
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
            .map(str::trim)
    };
    let mut capabilities = BTreeMap::new();
    for (key, name) in [
        ("CapInh", "inheritable"),
        ("CapPrm", "permitted"),
        ("CapEff", "effective"),
        ("CapBnd", "bounding"),
        ("CapAmb", "ambient"),
    ] {
        let mask = field(key)
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .unwrap_or(0);
        capabilities.insert(name.to_string(), cap_names(mask));
    }
    let seccomp = match field("Seccomp") {
        Some("0") => "disabled",
        Some("1") => "strict",
        Some("2") => "filter",
        _ => "unknown",
    };
    let namespaces = NAMESPACES
        .iter()
        .map(|k| Namespace {
            kind: k.to_string(),
            container: ns_link(pid, k),
            pod: pod_pid.and_then(|p| ns_link(p, k)),
            host: ns_link(1, k).or_else(|| ns_link("self", k)),
        })
        .collect();
    let lsm_label = std::fs::read_to_string(format!("/proc/{pid}/attr/current"))
        .ok()
        .map(|s| s.trim_end_matches(['\0', '\n']).to_string())
        .filter(|s| !s.is_empty());
    Ok(Report {
        container_id: container_id.to_string(),
        pod_id: pod_id.to_string(),
        pid,
        pod_pid,
        namespaces,
        uid_map: map_lines(&read(format!("/proc/{pid}/uid_map"))?),
        gid_map: map_lines(&read(format!("/proc/{pid}/gid_map"))?),
        capabilities,
        seccomp: seccomp.to_string(),
        seccomp_filters: field("Seccomp_filters").and_then(|v| v.parse().ok()),
        no_new_privs: field("NoNewPrivs") == Some("1"),
        lsm_label,
        cgroup: cgroup(&read(format!("/proc/{pid}/cgroup"))?),
        mounts: mounts(&read(format!("/proc/{pid}/mountinfo"))?),
    })
}

fn cgroup_file(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The cgroup path in `/proc/PID/cgroup` (as a reader in the host's cgroup
/// namespace sees it) and the limits in its files.
fn cgroup(proc_cgroup: &str) -> Cgroup {
    let path_of = |pred: &dyn Fn(&str) -> bool| {
        proc_cgroup.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            pred(ctrls).then(|| path.to_string())
        })
    };
    let root = Path::new("/sys/fs/cgroup");
    let under =
        |hierarchy: &str, path: &str| root.join(hierarchy).join(path.trim_start_matches('/'));
    if cgroup_mode() == Some(CgroupMode::Unified) {
        let path = path_of(&|c| c.is_empty()).unwrap_or_default();
        let dir = under("", &path);
        return Cgroup {
            memory_max: cgroup_file(&dir, "memory.max"),
            pids_max: cgroup_file(&dir, "pids.max"),
            cpu_max: cgroup_file(&dir, "cpu.max"),
            cpu_weight: cgroup_file(&dir, "cpu.weight"),
            path,
        };
    }
    let has = |want: &'static str| move |c: &str| c.split(',').any(|x| x == want);
    let memory = path_of(&has("memory")).unwrap_or_default();
    let pids = path_of(&has("pids")).unwrap_or_default();
    let cpu = path_of(&has("cpu")).unwrap_or_default();
    let cpu_dir = under("cpu", &cpu);
    let quota = cgroup_file(&cpu_dir, "cpu.cfs_quota_us");
    let period = cgroup_file(&cpu_dir, "cpu.cfs_period_us");
    Cgroup {
        memory_max: cgroup_file(&under("memory", &memory), "memory.limit_in_bytes"),
        pids_max: cgroup_file(&under("pids", &pids), "pids.max"),
        cpu_max: quota.zip(period).map(|(q, p)| format!("{q} {p}")),
        cpu_weight: cgroup_file(&cpu_dir, "cpu.shares"),
        path: memory,
    }
}

/// Masked paths, read-only mounts and the root's propagation from a
/// `mountinfo` text.
pub fn mounts(mountinfo: &str) -> Mounts {
    let mut out = Mounts {
        root_propagation: "private".into(),
        ..Default::default()
    };
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let f: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if f.len() < 6 || r.len() < 3 {
            continue;
        }
        let (root, point, opts, optional) = (f[3], unescape(f[4]), f[5], &f[6..]);
        let (fstype, super_opts) = (r[0], r[2]);
        if point == "/" {
            out.root_propagation = if optional.iter().any(|o| o.starts_with("shared:")) {
                "shared"
            } else if optional.iter().any(|o| o.starts_with("master:")) {
                "slave"
            } else {
                "private"
            }
            .into();
        }
        let ro = opts.split(',').any(|o| o == "ro");
        let null = root.ends_with("/null") && point != "/dev/null";
        let empty = fstype == "tmpfs" && ro && super_opts.split(',').any(|o| o == "size=0k");
        if null || empty {
            out.masked.push(point);
        } else if ro {
            out.read_only.push(point);
        }
    }
    out.masked.sort();
    out.masked.dedup();
    out.read_only.sort();
    out.read_only.dedup();
    out
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(Ok(v)) = s.get(i + 1..i + 4).map(|o| u8::from_str_radix(o, 8))
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(", ")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        let pod_pid = self.pod_pid.map_or("-".into(), |p| p.to_string());
        let _ = writeln!(s, "container   {}", self.container_id);
        let _ = writeln!(
            s,
            "pid         {} (pod {}, pod init pid {pod_pid})",
            self.pid, self.pod_id
        );
        let _ = writeln!(
            s,
            "namespaces  {:<8} {:<22} {:<22} {:<22} in",
            "", "container", "pod", "host"
        );
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        for n in &self.namespaces {
            let _ = writeln!(
                s,
                "            {:<8} {:<22} {:<22} {:<22} {}",
                n.kind,
                dash(&n.container),
                dash(&n.pod),
                dash(&n.host),
                n.shared_with()
            );
        }
        let _ = writeln!(s, "uid_map     {}", list(&self.uid_map));
        let _ = writeln!(s, "gid_map     {}", list(&self.gid_map));
        for set in [
            "effective",
            "permitted",
            "inheritable",
            "bounding",
            "ambient",
        ] {
            let names = self.capabilities.get(set).cloned().unwrap_or_default();
            let _ = writeln!(s, "cap {set:<12}{}", list(&names));
        }
        let filters = self
            .seccomp_filters
            .map_or(String::new(), |n| format!(", {n} filter(s)"));
        let _ = writeln!(s, "seccomp     {}{filters}", self.seccomp);
        let _ = writeln!(s, "no_new_privs {}", self.no_new_privs);
        let _ = writeln!(
            s,
            "lsm label   {}",
            self.lsm_label.as_deref().unwrap_or("- (no LSM)")
        );
        let c = &self.cgroup;
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let _ = writeln!(s, "cgroup      {}", c.path);
        let _ = writeln!(
            s,
            "limits      memory {}, pids {}, cpu max {}, cpu weight {}",
            opt(&c.memory_max),
            opt(&c.pids_max),
            opt(&c.cpu_max),
            opt(&c.cpu_weight)
        );
        let _ = writeln!(s, "masked      {}", list(&self.mounts.masked));
        let _ = writeln!(s, "read-only   {}", list(&self.mounts.read_only));
        let _ = write!(s, "root propagation {}", self.mounts.root_propagation);
        writeln!(f, "{s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_gives_masks_read_only_paths_and_propagation() {
        let text = "\
600 500 0:50 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/a
601 600 0:51 / /proc rw,nosuid - proc proc rw
602 601 0:6 /null /proc/kcore rw,nosuid - devtmpfs udev rw,size=10k
603 601 0:52 / /proc/acpi ro,relatime - tmpfs tmpfs ro,size=0k
604 601 0:51 /sys /proc/sys ro,nosuid - proc proc rw
605 600 0:53 / /sys ro,nosuid - sysfs sysfs ro
606 600 0:6 /null /dev/null rw - devtmpfs udev rw
607 600 0:54 / /my\\040dir ro - tmpfs tmpfs rw
";
        let m = mounts(text);
        assert_eq!(m.masked, ["/proc/acpi", "/proc/kcore"]);
        assert_eq!(m.read_only, ["/my dir", "/proc/sys", "/sys"]);
        assert_eq!(m.root_propagation, "slave");
        assert_eq!(
            mounts("1 0 0:1 / / rw shared:3 - ext4 /dev/sda rw").root_propagation,
            "shared"
        );
        assert_eq!(
            mounts("1 0 0:1 / / rw - ext4 /dev/sda rw").root_propagation,
            "private"
        );
    }

    #[test]
    fn capability_masks_become_names() {
        assert_eq!(cap_names(0), Vec::<String>::new());
        assert_eq!(cap_names(0b1 | 1 << 21), ["CAP_CHOWN", "CAP_SYS_ADMIN"]);
    }

    #[test]
    fn namespaces_say_whose_they_are() {
        let ns = |c: &str, p: Option<&str>, h: &str| Namespace {
            kind: "net".into(),
            container: Some(c.into()),
            pod: p.map(Into::into),
            host: Some(h.into()),
        };
        assert_eq!(ns("a", Some("a"), "b").shared_with(), "pod");
        assert_eq!(ns("b", Some("a"), "b").shared_with(), "host");
        assert_eq!(ns("c", Some("a"), "b").shared_with(), "own");
        assert_eq!(ns("c", None, "b").shared_with(), "own");
    }
}
