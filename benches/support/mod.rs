//! Shared by the benchmarks: summaries, Debian's containerd 1.6 as the
//! comparison runtime, and process memory.
#![allow(dead_code)] // each bench uses a different part

pub mod fleet;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::testenv::testenv;
use crate::common::{Runtime, bridge_conflist, mounts_under, wait_timeout};
use k8s_cri::v1::{RemovePodSandboxRequest, StopPodSandboxRequest};

/// (min, median, p90) of milliseconds.
pub fn summary(mut ms: Vec<f64>) -> (f64, f64, f64) {
    ms.sort_by(|a, b| a.total_cmp(b));
    (ms[0], ms[ms.len() / 2], ms[ms.len() * 9 / 10])
}

/// A containerd 1.6 with its CRI plugin on a private root, the bridge CNI
/// config `bridge`/`subnet`, and the test registry as an http mirror.
pub struct Containerd {
    pub child: Child,
    pub sock: PathBuf,
    pub dir: PathBuf,
    bridge: String,
}

impl Containerd {
    pub fn start(dir: &Path, bridge: &str, subnet: &str) -> Result<Containerd, String> {
        let env = testenv();
        let netd = dir.join("net.d");
        std::fs::create_dir_all(&netd).map_err(|e| e.to_string())?;
        std::fs::write(
            netd.join("10-bench.conflist"),
            bridge_conflist("crius-bench-ctrd", bridge, subnet),
        )
        .map_err(|e| e.to_string())?;
        // Its volatile state on a tmpfs, as crius's runroot in the bench.
        crate::common::mount_tmpfs(&dir.join("state"));
        let sock = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
address = "{sock}"
[plugins."io.containerd.grpc.v1.cri"]
sandbox_image = "{pause}"
# This node cannot lower oom_score_adj (no CAP_SYS_RESOURCE); without this
# runc fails every sandbox here.
restrict_oom_score_adj = true
[plugins."io.containerd.grpc.v1.cri".cni]
bin_dir = "/usr/lib/cni"
conf_dir = "{netd}"
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."{reg}"]
endpoint = ["http://{reg}"]
"#,
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = sock.display(),
                pause = env.image("pause:latest"),
                netd = netd.display(),
                reg = env.registry,
            ),
        )
        .map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("containerd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(Containerd {
            child,
            sock,
            dir: dir.to_path_buf(),
            bridge: bridge.to_string(),
        })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = wait_timeout(&mut self.child, Duration::from_secs(10));
        // Its shims outlive it; so would their containers.
        for pid in pids_matching(|cmd| {
            cmd.contains("containerd-shim") && cmd.contains(&self.dir.display().to_string())
        }) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Its bridge exists only if a pod with a network namespace ran.
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            let _ = Command::new("ip")
                .args(["link", "del", &self.bridge])
                .status();
        }
        let _ = nix::mount::umount2(&self.dir.join("state"), nix::mount::MntFlags::MNT_DETACH);
        // Its images and snapshots; the config and log stay for a look.
        if mounts_under(&self.dir).is_empty() {
            let _ = std::fs::remove_dir_all(self.dir.join("root"));
            let _ = std::fs::remove_dir(self.dir.join("state"));
        }
    }
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Pids whose command line (NULs as spaces) satisfies `pred`.
pub fn pids_matching(pred: impl Fn(&str) -> bool) -> Vec<i32> {
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        if pred(&String::from_utf8_lossy(&cmd).replace('\0', " ")) {
            out.push(pid);
        }
    }
    out
}

/// Stops and removes pods (untimed cleanup between rounds).
pub async fn remove_pods(rt: &mut Runtime, ids: Vec<String>) {
    for id in ids {
        let _ = rt
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await;
        let _ = rt
            .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
            .await;
    }
}

/// "v1" or "v2", as the runtime sees the node.
pub fn cgroup_version() -> &'static str {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2"
    } else {
        "v1"
    }
}
