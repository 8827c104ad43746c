//! `crius check`: a host readiness report, so an operator learns what the node
//! lacks before kubelet reports a cryptic pod failure.

use std::fmt;
use std::path::Path;

use crate::cgroups::{CgroupMode, cgroup_mode};
use crate::config::Config;
use crate::network;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Present and working.
    Ok,
    /// Works, but some feature is missing or degraded.
    Warn,
    /// A hard requirement: crius cannot run pods here.
    Fail,
    /// Worth knowing; neither required nor missing (e.g. whether AppArmor is enabled).
    Info,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    /// How much it matters.
    pub level: Level,
    /// What was checked, e.g. `cgroups`; a short column label.
    pub item: &'static str,
    /// What was found, for the operator.
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.level {
            Level::Ok => " ok ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
            Level::Info => "info",
        };
        write!(f, "[{tag}] {:<18} {}", self.item, self.detail)
    }
}

/// The configured cgroup driver: cgroupfs needs nothing more; systemd
/// needs systemd as init, answering on the system bus (the daemon refuses
/// to start otherwise, for the same reason).
fn cgroup_driver(config: &Config) -> (Level, String) {
    use crate::config::CgroupDriver;
    if config.runtime.cgroup_driver == CgroupDriver::Cgroupfs {
        return (Level::Ok, "cgroupfs (crius makes the cgroups)".into());
    }
    let probe = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(crate::cgroups::systemd::Systemd::connect())
                .map_err(|e| e.to_string())
        });
    match probe {
        Ok(_) => (
            Level::Ok,
            "systemd (pods and containers are transient units; systemd answers on the system bus)"
                .into(),
        ),
        Err(e) => (Level::Fail, e),
    }
}

/// Runs every check.
pub fn run(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |level, item, detail: String| {
        out.push(Finding {
            level,
            item,
            detail,
        })
    };

    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let kernel_ok = kernel_at_least(&release, 4, 18);
    add(
        if kernel_ok { Level::Ok } else { Level::Fail },
        "kernel",
        format!("{release} (need 4.18 or newer)"),
    );

    add(
        if nix::unistd::geteuid().is_root() {
            Level::Ok
        } else {
            Level::Fail
        },
        "privileges",
        if nix::unistd::geteuid().is_root() {
            "running as root".into()
        } else {
            "crius must run as root".into()
        },
    );

    match cgroup_mode() {
        Some(CgroupMode::Unified) => {
            // The controllers crius delegates down its tree, as the root offers them.
            let offered =
                std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
            let missing: Vec<&str> = crate::cgroups::v2::CONTROLLERS
                .iter()
                .copied()
                .filter(|c| !offered.split_whitespace().any(|o| o == *c))
                .collect();
            if missing.is_empty() {
                add(
                    Level::Ok,
                    "cgroups",
                    format!("v2 (unified), controllers {}", offered.trim()),
                );
            } else {
                add(
                    Level::Warn,
                    "cgroups",
                    format!(
                        "v2 (unified), without the {} controller(s): limits on them fail",
                        missing.join(", ")
                    ),
                );
            }
        }
        Some(CgroupMode::Hybrid) => add(
            Level::Ok,
            "cgroups",
            "v1 hybrid (v1 controllers, empty cgroup2 at /sys/fs/cgroup/unified)".into(),
        ),
        Some(CgroupMode::Legacy) => add(Level::Ok, "cgroups", "v1 (legacy)".into()),
        None => add(
            Level::Fail,
            "cgroups",
            "no cgroup filesystem under /sys/fs/cgroup".into(),
        ),
    }

    let (level, detail) = cgroup_driver(config);
    add(level, "cgroup driver", detail);

    let required_ns = ["net", "ipc", "uts", "pid", "mnt"];
    let missing: Vec<&str> = required_ns
        .iter()
        .copied()
        .filter(|ns| !Path::new("/proc/self/ns").join(ns).exists())
        .collect();
    if missing.is_empty() {
        add(Level::Ok, "namespaces", required_ns.join(", "));
    } else {
        add(
            Level::Fail,
            "namespaces",
            format!("missing: {}", missing.join(", ")),
        );
    }
    let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    add(
        if userns > 0 { Level::Ok } else { Level::Warn },
        "user namespaces",
        format!("max_user_namespaces = {userns}"),
    );

    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let overlay = fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"));
    add(
        if overlay { Level::Ok } else { Level::Fail },
        "overlayfs",
        if overlay {
            "available".into()
        } else {
            "not in /proc/filesystems (modprobe overlay)".into()
        },
    );

    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let seccomp = status.lines().any(|l| l.starts_with("Seccomp:"));
    add(
        if seccomp { Level::Ok } else { Level::Warn },
        "seccomp",
        if seccomp {
            "supported".into()
        } else {
            "not supported by the kernel: containers run unfiltered".into()
        },
    );

    let apparmor = crate::container::lsm::kernel_enabled();
    let parser = crate::container::lsm::parser();
    add(
        Level::Info,
        "apparmor",
        match (apparmor, parser) {
            (true, Some(p)) => format!(
                "enabled ({}; RuntimeDefault is {})",
                p.display(),
                config.runtime.apparmor_default_profile
            ),
            (true, None) => {
                "enabled in the kernel, but apparmor_parser is not installed: not used".into()
            }
            (false, _) => "not enabled".into(),
        },
    );
    let selinux = Path::new("/sys/fs/selinux/enforce").exists();
    add(
        Level::Info,
        "selinux",
        if selinux { "enabled" } else { "not enabled" }.into(),
    );

    match network::default_network(&config.network.conf_dir) {
        Ok(Some(f)) => {
            add(
                Level::Ok,
                "cni config",
                format!("{} (network {:?})", f.path.display(), f.name),
            );
            for plugin in &f.plugins {
                match network::find_plugin(&config.network.plugin_dirs, plugin) {
                    Some(p) => add(
                        Level::Ok,
                        "cni plugin",
                        format!("{plugin}: {}", p.display()),
                    ),
                    None => add(
                        Level::Warn,
                        "cni plugin",
                        format!("{plugin}: not found in {:?}", config.network.plugin_dirs),
                    ),
                }
            }
        }
        Ok(None) => add(
            Level::Warn,
            "cni config",
            format!(
                "none in {}: NetworkReady stays false until one appears",
                config.network.conf_dir.display()
            ),
        ),
        Err(e) => add(Level::Warn, "cni config", e),
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let shared = root_is_shared(&mountinfo);
    add(
        if shared { Level::Ok } else { Level::Warn },
        "mount propagation",
        if shared {
            "/ is a shared mount".into()
        } else {
            "/ is private: Bidirectional/HostToContainer mounts will not propagate \
             (run `mount --make-rshared /`)"
                .into()
        },
    );

    match can_lower_oom_score_adj() {
        Ok(true) => add(Level::Ok, "oom_score_adj", "can be lowered".into()),
        Ok(false) => add(
            Level::Warn,
            "oom_score_adj",
            "cannot be lowered (no CAP_SYS_RESOURCE): lower requests are clamped".into(),
        ),
        Err(e) => add(Level::Warn, "oom_score_adj", format!("unknown: {e}")),
    }
    out
}

/// True when no finding is a hard failure.
pub fn passed(findings: &[Finding]) -> bool {
    !findings.iter().any(|f| f.level == Level::Fail)
}

fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
        return false;
    };
    (a, b) >= (major, minor)
}

/// Whether the mount at `/` carries a `shared:N` propagation tag.
fn root_is_shared(mountinfo: &str) -> bool {
    mountinfo.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            return false;
        };
        fields.get(4) == Some(&"/") && fields[6..sep].iter().any(|f| f.starts_with("shared:"))
    })
}

/// Tries to lower this process's oom_score_adj by one, then restores it.
fn can_lower_oom_score_adj() -> std::io::Result<bool> {
    let path = "/proc/self/oom_score_adj";
    let current: i32 = std::fs::read_to_string(path)?
        .trim()
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if current <= -1000 {
        return Ok(true);
    }
    match std::fs::write(path, (current - 1).to_string()) {
        Ok(()) => {
            std::fs::write(path, current.to_string())?;
            Ok(true)
        }
        Err(e)
            if e.raw_os_error() == Some(libc::EPERM) || e.raw_os_error() == Some(libc::EACCES) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert!(kernel_at_least("6.18.44-fc-v509", 4, 18));
        assert!(kernel_at_least("4.18.0-553.el8", 4, 18));
        assert!(!kernel_at_least("4.9.0", 4, 18));
        assert!(!kernel_at_least("garbage", 4, 18));
    }

    #[test]
    fn shared_root_detection() {
        let private = "22 1 253:1 / / rw,relatime - ext4 /dev/vda rw\n";
        let shared = "22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n";
        let other = "30 22 0:5 / /dev rw shared:2 - devtmpfs udev rw\n";
        assert!(!root_is_shared(&format!("{private}{other}")));
        assert!(root_is_shared(shared));
    }
}
