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
    pub memory: Option<Memory>,
    pub pids: Option<Pids>,
}

/// Memory as kubelet reads it (cAdvisor's definitions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    pub usage: u64,
    /// usage − inactive file pages: what eviction counts.
    pub working_set: u64,
    /// Anonymous memory (and swap cache).
    pub rss: u64,
    pub cache: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// The limit; `None` when unlimited.
    pub limit: Option<u64>,
    /// Swap in use; `None` where the cgroup accounts no swap.
    pub swap: Option<u64>,
    /// The swap limit (swap alone); `None` when unlimited or unaccounted.
    pub swap_limit: Option<u64>,
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
    pub current: u64,
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
        }
    });
    let pids = number(dir, "pids.current").map(|current| Pids {
        current,
        limit: limit(dir, "pids.max"),
    });
    CgroupSample {
        cpu_ns,
        memory,
        pids,
    }
}

/// The v1 cgroup whose controller directories are `cpuacct`, `memory`
/// and `pids`.
pub fn read_v1(cpuacct: &Path, memory: &Path, pids: &Path) -> CgroupSample {
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
        }
    });
    let pids = number(pids, "pids.current").map(|current| Pids {
        current,
        limit: limit(pids, "pids.max"),
    });
    CgroupSample {
        cpu_ns,
        memory: mem,
        pids,
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
                "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
            ),
            ("memory.current", "104857600\n"),
            (
                "memory.stat",
                "anon 67108864\nfile 33554432\ninactive_file 20971520\npgfault 1234\npgmajfault 5\n",
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
        ]);
        let s = read_v1(d.path(), d.path(), d.path());
        assert_eq!(s.cpu_ns, Some(123_456_789));
        let m = s.memory.unwrap();
        assert_eq!(
            (m.usage, m.working_set, m.rss, m.cache),
            (1000, 700, 600, 400)
        );
        assert_eq!((m.limit, m.swap), (None, Some(500)));
        assert_eq!(s.pids.unwrap().limit, Some(100));
    }
}
