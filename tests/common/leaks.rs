//! What a daemon under test must not leave behind once every pod and
//! container it made was removed: mounts, cgroups, host-local leases,
//! veths, monitor and container processes, temporary files, state
//! directories. The churn and load tests check the same list.

use std::path::Path;
use std::time::Duration;

use super::net::Net;
use super::{Daemon, monitor_pids, mounts_under, pod_cgroup_dirs, wait_for};

/// Waits for the daemon's monitors and the processes whose command line
/// has `marker` (what the test's containers run) to exit, then returns one
/// line per leftover of the pods `pods` on `net`; empty when nothing leaked.
pub async fn after_removal<'a>(
    d: &Daemon,
    pods: impl IntoIterator<Item = &'a String>,
    net: &Net,
    marker: &str,
) -> Vec<String> {
    let (root, runroot) = (&d.paths.root, &d.paths.runroot);
    let mut leaks = Vec::new();
    // A monitor still there after the wait is a leak, described enough to
    // tell why (its state, parent, directory, where it sleeps, its log).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !monitor_pids(runroot).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    leaks.extend(monitor_pids(runroot).into_iter().map(describe_monitor));
    wait_for(
        "container processes to exit",
        Duration::from_secs(10),
        || async { marked_processes(marker).is_empty().then_some(()) },
    )
    .await;
    for m in mounts_under(&d.paths.base) {
        leaks.push(format!("mount {}", m.display()));
    }
    for id in pods {
        for dir in pod_cgroup_dirs(id).into_iter().filter(|d| d.exists()) {
            leaks.push(format!("cgroup {}", dir.display()));
        }
    }
    for ip in net.leases() {
        leaks.push(format!("host-local lease {ip}"));
    }
    let veths = net.veths();
    if !veths.is_empty() {
        leaks.push(format!("veths: {veths}"));
    }
    let mut temps = Vec::new();
    temp_files(root, &mut temps);
    temp_files(runroot, &mut temps);
    leaks.extend(temps.into_iter().map(|t| format!("temporary file {t}")));
    for dir in [
        runroot.join("pods"),
        runroot.join("containers"),
        root.join("containers"),
        root.join("pods"),
    ] {
        for e in entries(&dir) {
            leaks.push(format!("{}/{e}", dir.display()));
        }
    }
    leaks
}

/// A monitor process that should have exited: its state and parent, its
/// directory, its kernel wait channel and the end of its `monitor.log`.
fn describe_monitor(pid: i32) -> String {
    let proc = Path::new("/proc").join(pid.to_string());
    let status = std::fs::read_to_string(proc.join("status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or("?")
            .trim()
            .to_string()
    };
    let cwd = std::fs::read_link(proc.join("cwd")).unwrap_or_default();
    let wchan = std::fs::read_to_string(proc.join("wchan")).unwrap_or_default();
    let log = std::fs::read_to_string(cwd.join("monitor.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(5).collect();
    format!(
        "monitor {pid} (state {}, ppid {}) in {} waiting in {wchan}; monitor.log: {tail:?}",
        field("State:"),
        field("PPid:"),
        cwd.display()
    )
}

/// Processes whose command line has `marker` as an argument.
pub fn marked_processes(marker: &str) -> Vec<String> {
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if p.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        if cmd.split(|b| *b == 0).any(|a| a == marker.as_bytes()) {
            out.push(format!(
                "{}: {}",
                p.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmd)
            ));
        }
    }
    out
}

/// Files under `dir` (not following symlinks) whose names look temporary.
fn temp_files(dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ty = e.file_type().ok();
        if name.starts_with('.') || name.ends_with(".tmp") || name.contains(".tmp.") {
            out.push(e.path().display().to_string());
        }
        if ty.is_some_and(|t| t.is_dir()) {
            temp_files(&e.path(), out);
        }
    }
}

/// Entries of `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
