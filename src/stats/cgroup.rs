//! Reading one cgroup's CPU, memory, swap and pids numbers, from the v1
//! controller hierarchies or the v2 tree. Each reader takes the directory
//! of the files, so the parsers are tested on fixture directories.

use std::collections::HashMap;
use std::path::Path;

/// v1 reports "no limit" as a page-rounded `i64::MAX`; anything this large
/// is no limit.
const UNLIMITED: u64 = 1 << 62;

/// One cgroup's numbers at one moment. A part whose files are missing (a
/// controller not enabled, the cgroup gone) is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupSample {
    /// Cumulative CPU time, nanoseconds.
    pub cpu_ns: Option<u64>,
    /// Memory and swap, from the memory controller.
    pub memory: Option<Memory>,
    /// Task count and limit, from the pids controller.
    pub pids: Option<Pids>,
    /// CPU detail for the cAdvisor metrics.
    pub cpu_detail: Option<CpuDetail>,
    /// Open descriptors of the cgroup's processes.
    pub fds: Option<Fds>,
}

/// CPU time by mode and CFS throttling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuDetail {
    /// Nanoseconds of CPU time in user mode: cpu.stat user_usec (v2) or
    /// cpuacct.stat `user` ticks (v1).
    pub user_ns: u64,
    /// Nanoseconds of CPU time in kernel mode: cpu.stat system_usec (v2)
    /// or cpuacct.stat `system` ticks (v1).
    pub system_ns: u64,
    /// CFS enforcement periods elapsed (cpu.stat nr_periods).
    pub periods: u64,
    /// Periods in which the cgroup was throttled (cpu.stat nr_throttled).
    pub throttled_periods: u64,
    /// Nanoseconds spent throttled: cpu.stat throttled_usec (v2) or
    /// throttled_time (v1).
    pub throttled_ns: u64,
}

/// Descriptors the cgroup's processes hold, and how many are sockets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fds {
    /// Entries of `/proc/<pid>/fd` over the processes in cgroup.procs.
    pub open: u64,
    /// Of those, the ones that are sockets (link target `socket:[…]`).
    pub sockets: u64,
}

/// Memory as kubelet reads it (cAdvisor's definitions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    /// Bytes in use, page cache included: memory.current (v2) or
    /// memory.usage_in_bytes (v1).
    pub usage: u64,
    /// usage − inactive file pages: what eviction counts.
    pub working_set: u64,
    /// Anonymous memory (and swap cache).
    pub rss: u64,
    /// Page cache bytes: memory.stat `file` (v2) or `total_cache` (v1).
    pub cache: u64,
    /// Page faults, minor and major: memory.stat `pgfault` (v1:
    /// `total_pgfault`).
    pub page_faults: u64,
    /// Major page faults: memory.stat `pgmajfault` (v1: `total_pgmajfault`).
    pub major_page_faults: u64,
    /// The limit; `None` when unlimited.
    pub limit: Option<u64>,
    /// Swap in use; `None` where the cgroup accounts no swap.
    pub swap: Option<u64>,
    /// The swap limit (swap alone); `None` when unlimited or unaccounted.
    pub swap_limit: Option<u64>,
    /// Times the limit was hit (v1 failcnt, v2 `max` events).
    pub failcnt: u64,
    /// Kernel memory bytes: memory.stat `kernel` (v2; on older kernels the
    /// sum of kernel_stack, pagetables, slab and sock) or
    /// memory.kmem.usage_in_bytes (v1).
    pub kernel: u64,
    /// Bytes of memory-mapped files: memory.stat `file_mapped` (v2) or
    /// `total_mapped_file` (v1).
    pub mapped_file: u64,
    /// The highest usage seen (v2 without `memory.peak`: none).
    pub max_usage: Option<u64>,
    /// Processes the OOM killer killed: `oom_kill` in memory.events (v2)
    /// or memory.oom_control (v1).
    pub oom_kills: u64,
}

impl Memory {
    /// Bytes left before the limit counts the working set out of memory.
    pub fn available(&self) -> Option<u64> {
        self.limit.map(|l| l.saturating_sub(self.working_set))
    }
}

/// Processes (threads, as the kernel counts tasks) in the cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pids {
    /// Tasks in the cgroup now (pids.current).
    pub current: u64,
    /// pids.max; `None` when unlimited.
    pub limit: Option<u64>,
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

fn number(dir: &Path, file: &str) -> Option<u64> {
    read(dir, file)?.trim().parse().ok()
}

/// A limit file: a number, or `max` (v2) / a huge number (v1) for none.
fn limit(dir: &Path, file: &str) -> Option<u64> {
    let text = read(dir, file)?;
    text.trim().parse().ok().filter(|&n: &u64| n < UNLIMITED)
}

/// `key value` lines (memory.stat, cpu.stat).
pub fn flat_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k, v.trim().parse().ok()?))
        })
        .collect()
}

/// The v2 cgroup in `dir`.
pub fn read_v2(dir: &Path) -> CgroupSample {
    let cpu_ns = read(dir, "cpu.stat").and_then(|t| {
        flat_keyed(&t)
            .get("usage_usec")
            .map(|us| us.saturating_mul(1000))
    });
    let memory = number(dir, "memory.current").map(|usage| {
        let stat = read(dir, "memory.stat").unwrap_or_default();
        let stat = flat_keyed(&stat);
        let events = read(dir, "memory.events").unwrap_or_default();
        let events = flat_keyed(&events);
        let get = |k: &str| stat.get(k).copied().unwrap_or(0);
        Memory {
            usage,
            working_set: usage.saturating_sub(get("inactive_file")),
            rss: get("anon"),
            cache: get("file"),
            page_faults: get("pgfault"),
            major_page_faults: get("pgmajfault"),
            limit: limit(dir, "memory.max"),
            swap: number(dir, "memory.swap.current"),
            swap_limit: limit(dir, "memory.swap.max"),
            failcnt: events.get("max").copied().unwrap_or(0),
            kernel: stat.get("kernel").copied().unwrap_or_else(|| {
                get("kernel_stack") + get("pagetables") + get("slab") + get("sock")
            }),
            mapped_file: get("file_mapped"),
            max_usage: number(dir, "memory.peak"),
            oom_kills: events.get("oom_kill").copied().unwrap_or(0),
        }
    });
    let pids = number(dir, "pids.current").map(|current| Pids {
        current,
        limit: limit(dir, "pids.max"),
    });
    let cpu_detail = read(dir, "cpu.stat").map(|t| {
        let stat = flat_keyed(&t);
        let us = |k: &str| stat.get(k).copied().unwrap_or(0).saturating_mul(1000);
        CpuDetail {
            user_ns: us("user_usec"),
            system_ns: us("system_usec"),
            periods: stat.get("nr_periods").copied().unwrap_or(0),
            throttled_periods: stat.get("nr_throttled").copied().unwrap_or(0),
            throttled_ns: us("throttled_usec"),
        }
    });
    CgroupSample {
        cpu_ns,
        memory,
        pids,
        cpu_detail,
        fds: fds(dir),
    }
}

/// USER_HZ: the unit of v1's cpuacct.stat (100 on every Linux ABI).
const USER_HZ: u64 = 100;

/// Counts the descriptors of the processes in the cgroup at `dir`.
fn fds(dir: &Path) -> Option<Fds> {
    let procs = read(dir, "cgroup.procs")?;
    let mut out = Fds::default();
    for pid in procs.lines().filter(|l| !l.is_empty()) {
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in entries.flatten() {
            out.open += 1;
            if std::fs::read_link(e.path())
                .is_ok_and(|t| t.as_os_str().as_encoded_bytes().starts_with(b"socket:"))
            {
                out.sockets += 1;
            }
        }
    }
    Some(out)
}

/// The v1 controller directories of one cgroup.
#[derive(Debug, Clone)]
pub struct V1Dirs {
    /// The cpu controller's directory (cpu.stat: CFS throttling).
    pub cpu: std::path::PathBuf,
    /// The cpuacct controller's directory (total, user and system time).
    pub cpuacct: std::path::PathBuf,
    /// The memory controller's directory.
    pub memory: std::path::PathBuf,
    /// The pids controller's directory; its cgroup.procs also lists the
    /// processes whose descriptors are counted.
    pub pids: std::path::PathBuf,
}

/// The v1 cgroup in `dirs`.
pub fn read_v1(dirs: &V1Dirs) -> CgroupSample {
    let (cpuacct, memory, pids) = (&dirs.cpuacct, &dirs.memory, &dirs.pids);
    let cpu_ns = number(cpuacct, "cpuacct.usage");
    let mem = number(memory, "memory.usage_in_bytes").map(|usage| {
        let stat = read(memory, "memory.stat").unwrap_or_default();
        let stat = flat_keyed(&stat);
        let get = |k: &str| stat.get(k).copied().unwrap_or(0);
        // memsw counts memory + swap; without swap accounting it is absent.
        let swap = number(memory, "memory.memsw.usage_in_bytes").map(|m| m.saturating_sub(usage));
        let limit_v = limit(memory, "memory.limit_in_bytes");
        let swap_limit = limit(memory, "memory.memsw.limit_in_bytes")
            .zip(limit_v)
            .map(|(sw, m)| sw.saturating_sub(m));
        Memory {
            usage,
            working_set: usage.saturating_sub(get("total_inactive_file")),
            rss: get("total_rss"),
            cache: get("total_cache"),
            page_faults: get("total_pgfault"),
            major_page_faults: get("total_pgmajfault"),
            limit: limit_v,
            swap,
            swap_limit,
            failcnt: number(memory, "memory.failcnt").unwrap_or(0),
            kernel: number(memory, "memory.kmem.usage_in_bytes").unwrap_or(0),
            mapped_file: get("total_mapped_file"),
            max_usage: number(memory, "memory.max_usage_in_bytes"),
            oom_kills: read(memory, "memory.oom_control")
                .and_then(|t| flat_keyed(&t).get("oom_kill").copied())
                .unwrap_or(0),
        }
    });
    let pids = number(pids, "pids.current").map(|current| Pids {
        current,
        limit: limit(pids, "pids.max"),
    });
    let modes = read(cpuacct, "cpuacct.stat").unwrap_or_default();
    let modes = flat_keyed(&modes);
    let ticks = |k: &str| {
        modes
            .get(k)
            .copied()
            .unwrap_or(0)
            .saturating_mul(1_000_000_000 / USER_HZ)
    };
    let cpu_detail = read(&dirs.cpu, "cpu.stat").map(|t| {
        let stat = flat_keyed(&t);
        CpuDetail {
            user_ns: ticks("user"),
            system_ns: ticks("system"),
            periods: stat.get("nr_periods").copied().unwrap_or(0),
            throttled_periods: stat.get("nr_throttled").copied().unwrap_or(0),
            throttled_ns: stat.get("throttled_time").copied().unwrap_or(0),
        }
    });
    CgroupSample {
        cpu_ns,
        memory: mem,
        pids,
        cpu_detail,
        fds: fds(&dirs.pids),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn v2_files_parse() {
        let d = fixture(&[
            (
                "cpu.stat",
                "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\nnr_periods 7\nnr_throttled 1\nthrottled_usec 30\n",
            ),
            ("memory.events", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n"),
            ("memory.peak", "209715200\n"),
            ("memory.current", "104857600\n"),
            (
                "memory.stat",
                "anon 67108864\nfile 33554432\nkernel 4096\nfile_mapped 8192\ninactive_file 20971520\npgfault 1234\npgmajfault 5\n",
            ),
            ("memory.max", "268435456\n"),
            ("memory.swap.current", "4096\n"),
            ("memory.swap.max", "max\n"),
            ("pids.current", "3\n"),
            ("pids.max", "max\n"),
        ]);
        let s = read_v2(d.path());
        assert_eq!(s.cpu_ns, Some(2_500_000));
        let m = s.memory.unwrap();
        assert_eq!(m.usage, 100 << 20);
        assert_eq!(m.working_set, 80 << 20);
        assert_eq!(m.rss, 64 << 20);
        assert_eq!((m.page_faults, m.major_page_faults), (1234, 5));
        assert_eq!(m.limit, Some(256 << 20));
        assert_eq!(m.available(), Some(176 << 20));
        assert_eq!((m.swap, m.swap_limit), (Some(4096), None));
        assert_eq!(
            (m.failcnt, m.oom_kills, m.kernel, m.mapped_file),
            (4, 1, 4096, 8192)
        );
        assert_eq!(m.max_usage, Some(200 << 20));
        let c = s.cpu_detail.clone().unwrap();
        assert_eq!((c.user_ns, c.system_ns), (2_000_000, 500_000));
        assert_eq!(
            (c.periods, c.throttled_periods, c.throttled_ns),
            (7, 1, 30_000)
        );
        assert_eq!(
            s.pids,
            Some(Pids {
                current: 3,
                limit: None
            })
        );
    }

    #[test]
    fn v2_unlimited_and_missing() {
        let d = fixture(&[
            ("memory.current", "10\n"),
            ("memory.max", "max\n"),
            ("memory.stat", "inactive_file 20\n"),
        ]);
        let s = read_v2(d.path());
        assert_eq!(s.cpu_ns, None);
        assert_eq!(s.pids, None);
        let m = s.memory.unwrap();
        assert_eq!(m.working_set, 0, "never below zero");
        assert_eq!((m.limit, m.available(), m.swap), (None, None, None));
        assert_eq!(read_v2(&d.path().join("gone")), CgroupSample::default());
    }

    #[test]
    fn v1_files_parse() {
        let d = fixture(&[
            ("cpuacct.usage", "123456789\n"),
            ("memory.usage_in_bytes", "1000\n"),
            (
                "memory.stat",
                "rss 1\ntotal_rss 600\ntotal_cache 400\ntotal_inactive_file 300\ntotal_pgfault 7\ntotal_pgmajfault 1\n",
            ),
            ("memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory.memsw.usage_in_bytes", "1500\n"),
            ("pids.current", "2\n"),
            ("pids.max", "100\n"),
            ("cpuacct.stat", "user 150\nsystem 50\n"),
            (
                "cpu.stat",
                "nr_periods 10\nnr_throttled 4\nthrottled_time 2000\n",
            ),
            ("memory.failcnt", "3\n"),
            (
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            ),
            ("cgroup.procs", ""),
        ]);
        let p = d.path().to_path_buf();
        let s = read_v1(&V1Dirs {
            cpu: p.clone(),
            cpuacct: p.clone(),
            memory: p.clone(),
            pids: p,
        });
        assert_eq!(s.cpu_ns, Some(123_456_789));
        let m = s.memory.unwrap();
        assert_eq!(
            (m.usage, m.working_set, m.rss, m.cache),
            (1000, 700, 600, 400)
        );
        assert_eq!((m.limit, m.swap), (None, Some(500)));
        assert_eq!(s.pids.unwrap().limit, Some(100));
        assert_eq!(
            s.cpu_detail,
            Some(CpuDetail {
                user_ns: 1_500_000_000,
                system_ns: 500_000_000,
                periods: 10,
                throttled_periods: 4,
                throttled_ns: 2000,
            })
        );
        assert_eq!((m.failcnt, m.oom_kills), (3, 2));
        assert_eq!(s.fds, Some(Fds::default()));
    }
}
