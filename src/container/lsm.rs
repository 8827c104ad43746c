//! Linux security modules for a container: which AppArmor profile it runs
//! under and which SELinux label it gets, decided in the daemon and written
//! into the OCI spec (`process.apparmorProfile`, `process.selinuxLabel`);
//! the executor applies them right before execve (`executor::lsm`).
//!
//! AppArmor, as cri-o and containerd do: RuntimeDefault (or the deprecated
//! `runtime/default`, or nothing at all) is crius's own profile
//! ([`DEFAULT_PROFILE`], generated from [`default_profile`] and loaded with
//! `apparmor_parser` at first use) or the configured one; Localhost names a
//! profile that must already be loaded; Unconfined is none; privileged
//! containers run unconfined. Where the host has no AppArmor (the kernel's
//! `enabled` flag, and `apparmor_parser` to load profiles with, as
//! containerd requires) nothing is applied, and a request for a profile is
//! refused rather than run unconfined.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_cri::v1::LinuxContainerSecurityContext;
use k8s_cri::v1::security_profile::ProfileType;

use crate::error::{Error, Result};

/// The profile crius generates and loads for RuntimeDefault.
pub const DEFAULT_PROFILE: &str = "crius-default";

/// The prefix of the deprecated field's (and critest's `localhost_ref`'s)
/// profile names.
const LOCALHOST_PREFIX: &str = "localhost/";

/// How long `apparmor_parser` may take to load the default profile.
const PARSER_DEADLINE: Duration = Duration::from_secs(30);

/// The AppArmor profile a request asks for, before the host is consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppArmorRequest {
    /// RuntimeDefault, `runtime/default`, or nothing.
    Default,
    /// Explicitly unconfined.
    Unconfined,
    /// A profile loaded on the node, by name.
    Localhost(String),
}

/// Reads the request's AppArmor fields: the structured `apparmor` wins
/// over the deprecated `apparmor_profile`.
pub fn apparmor_request(sec: &LinuxContainerSecurityContext) -> Result<AppArmorRequest> {
    if let Some(p) = &sec.apparmor {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(AppArmorRequest::Default),
            Ok(ProfileType::Unconfined) => Ok(AppArmorRequest::Unconfined),
            Ok(ProfileType::Localhost) => {
                let name = p
                    .localhost_ref
                    .strip_prefix(LOCALHOST_PREFIX)
                    .unwrap_or(&p.localhost_ref);
                profile_name(name).map(AppArmorRequest::Localhost)
            }
            Err(_) => Err(Error::InvalidArgument(format!(
                "unknown AppArmor profile type {}",
                p.profile_type
            ))),
        };
    }
    #[allow(deprecated)] // kubelet still sends the old field to old runtimes
    let old = sec.apparmor_profile.as_str();
    match old {
        "" | "runtime/default" => Ok(AppArmorRequest::Default),
        "unconfined" => Ok(AppArmorRequest::Unconfined),
        p => match p.strip_prefix(LOCALHOST_PREFIX) {
            Some(name) => profile_name(name).map(AppArmorRequest::Localhost),
            None => Err(Error::InvalidArgument(format!(
                "unknown AppArmor profile {} (want runtime/default, unconfined or localhost/<name>)",
                crate::error::shown(p)
            ))),
        },
    }
}

/// A profile name as the kernel's `exec <name>` takes it: not empty, no
/// control characters or whitespace, a sane length.
fn profile_name(name: &str) -> Result<String> {
    if name.is_empty()
        || name.len() > 1024
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(Error::InvalidArgument(format!(
            "invalid AppArmor profile name {}",
            crate::error::shown(name)
        )));
    }
    Ok(name.to_string())
}

/// What the node offers: kept apart so the rules are tested without
/// AppArmor.
pub trait AppArmorHost {
    /// Why AppArmor cannot be used here, or `None` when it can.
    fn unavailable(&self) -> Option<String>;
    /// Whether a profile of that name is loaded in the kernel.
    fn is_loaded(&self, name: &str) -> Result<bool>;
    /// Loads crius's default profile (once per daemon, again after a
    /// failure).
    fn load_default(&self) -> Result<()>;
}

/// The profile the container runs under (`None`: unconfined), checked
/// against the node: a Localhost profile must be loaded; the default is
/// loaded at first use when it is crius's own (`default` names it).
pub fn apparmor_profile(
    sec: &LinuxContainerSecurityContext,
    default: &str,
    host: &dyn AppArmorHost,
) -> Result<Option<String>> {
    let request = apparmor_request(sec)?;
    let explicit = sec.apparmor.is_some() || {
        #[allow(deprecated)]
        let old = !sec.apparmor_profile.is_empty();
        old
    };
    if let Some(why) = host.unavailable() {
        return match request {
            AppArmorRequest::Unconfined => Ok(None),
            AppArmorRequest::Default if !explicit => Ok(None),
            AppArmorRequest::Default => Err(Error::FailedPrecondition(format!(
                "the container asks for the runtime's default AppArmor profile, but {why}"
            ))),
            AppArmorRequest::Localhost(name) => Err(Error::FailedPrecondition(format!(
                "the container asks for AppArmor profile {name:?}, but {why}"
            ))),
        };
    }
    if sec.privileged {
        // As cri-o: privileged containers are not confined.
        return Ok(None);
    }
    let name = match request {
        AppArmorRequest::Unconfined => return Ok(None),
        AppArmorRequest::Default if default == DEFAULT_PROFILE => {
            host.load_default()?;
            return Ok(Some(DEFAULT_PROFILE.to_string()));
        }
        AppArmorRequest::Default => default.to_string(),
        AppArmorRequest::Localhost(name) => name,
    };
    if !host.is_loaded(&name)? {
        return Err(Error::FailedPrecondition(format!(
            "AppArmor profile {name:?} is not loaded on this node (load it with apparmor_parser first)"
        )));
    }
    Ok(Some(name))
}

/// crius's default AppArmor profile, named `name`: everything a container
/// normally does (files, network, capabilities it holds, signals among
/// its own processes and from the host), minus what Docker's default also
/// denies: writes to /proc outside the process's own entries and
/// /proc/sys/kernel/shm*, sysrq-trigger and kcore, mounting, writes to
/// /sys outside the cgroup filesystem, the firmware, powercap and
/// securityfs trees; ptrace only among the container's processes.
pub fn default_profile(name: &str) -> String {
    format!(
        r#"#include <tunables/global>

profile {name} flags=(attach_disconnected,mediate_deleted) {{
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,

  # Signals from the host (crius's monitor, kubelet through crius) and
  # among the container's own processes.
  signal (receive) peer=unconfined,
  signal (send,receive) peer={name},

  # /proc: files directly in it, anything but a process's own entries and
  # /proc/sys/kernel/shm* are not written to.
  deny @{{PROC}}/* w,
  deny @{{PROC}}/{{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9]*}}/** w,
  deny @{{PROC}}/sys/[^k]** w,
  deny @{{PROC}}/sys/kernel/{{?,??,[^s][^h][^m]**}} w,
  deny @{{PROC}}/sysrq-trigger rwklx,
  deny @{{PROC}}/kcore rwklx,

  deny mount,

  # /sys: only the cgroup filesystem is written to.
  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,
  deny /sys/kernel/security/** rwklx,

  # ps and friends inside the container, nothing outside it.
  ptrace (trace,read,tracedby,readby) peer={name},
}}
"#
    )
}

/// The node's AppArmor: the kernel's flag and `apparmor_parser`, read once
/// when the daemon starts (as cri-o does), and the loaded profiles in
/// securityfs, read per request.
pub struct NodeAppArmor {
    /// `apparmor_parser`, when found.
    parser: Option<PathBuf>,
    /// Why AppArmor cannot be used here, if it cannot.
    unavailable: Option<String>,
    /// Set once crius's default profile is loaded by this daemon.
    loaded: Mutex<bool>,
}

impl Default for NodeAppArmor {
    fn default() -> Self {
        let parser = parser();
        let unavailable = if !kernel_enabled() {
            Some("AppArmor is not enabled on this node".into())
        } else if parser.is_none() {
            Some(
                "AppArmor's apparmor_parser is not installed on this node (crius uses AppArmor only with it)"
                    .into(),
            )
        } else {
            None
        };
        NodeAppArmor {
            parser,
            unavailable,
            loaded: Mutex::new(false),
        }
    }
}

/// Whether the kernel runs AppArmor (`/sys/module/apparmor/parameters/enabled`).
pub fn kernel_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
}

/// Where `apparmor_parser` is: on the PATH, or in /sbin, /usr/sbin.
pub fn parser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/sbin".into(), "/usr/sbin".into()])
        .map(|d| d.join("apparmor_parser"))
        .find(|p| p.is_file())
}

/// The names in securityfs's list of loaded profiles (`name (mode)` lines).
pub fn loaded_profiles(list: &str) -> impl Iterator<Item = &str> {
    list.lines().map(|l| match l.rsplit_once(" (") {
        Some((name, _)) => name,
        None => l,
    })
}

impl AppArmorHost for NodeAppArmor {
    fn unavailable(&self) -> Option<String> {
        self.unavailable.clone()
    }

    fn is_loaded(&self, name: &str) -> Result<bool> {
        let list = "/sys/kernel/security/apparmor/profiles";
        let text = std::fs::read_to_string(list).map_err(|e| {
            Error::FailedPrecondition(format!(
                "reading the loaded AppArmor profiles ({list}): {e}"
            ))
        })?;
        Ok(loaded_profiles(&text).any(|p| p == name))
    }

    fn load_default(&self) -> Result<()> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if *loaded {
            return Ok(());
        }
        let parser = self
            .parser
            .as_deref()
            .ok_or_else(|| Error::FailedPrecondition("apparmor_parser is not installed".into()))?;
        load_profile(parser, &default_profile(DEFAULT_PROFILE)).map_err(|e| {
            Error::Internal(format!(
                "loading the AppArmor profile {DEFAULT_PROFILE}: {e}"
            ))
        })?;
        tracing::info!(profile = DEFAULT_PROFILE, "AppArmor profile loaded");
        *loaded = true;
        Ok(())
    }
}

/// `apparmor_parser -Kr` (replace, no cache) with the profile on stdin,
/// under [`PARSER_DEADLINE`].
fn load_profile(parser: &Path, text: &str) -> std::result::Result<(), String> {
    let mut child = Command::new(parser)
        .args(["-K", "-r"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", parser.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("writing to apparmor_parser: {e}"))?;
    }
    let deadline = Instant::now() + PARSER_DEADLINE;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "apparmor_parser did not finish in {}s",
                    PARSER_DEADLINE.as_secs()
                ));
            }
            Err(e) => return Err(format!("waiting for apparmor_parser: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("apparmor_parser: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "apparmor_parser failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Whether SELinux runs on this node (selinuxfs is mounted).
pub fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// The SELinux process label for the request's `selinux_options`: `None`
/// when it sets none. Fields it leaves empty take the container defaults
/// of container-selinux (`system_u:system_r:container_t:s0`).
pub fn selinux_label(sec: &LinuxContainerSecurityContext) -> Result<Option<String>> {
    let Some(o) = &sec.selinux_options else {
        return Ok(None);
    };
    if o.user.is_empty() && o.role.is_empty() && o.r#type.is_empty() && o.level.is_empty() {
        return Ok(None);
    }
    let or = |v: &str, d: &'static str| {
        if v.is_empty() {
            d.to_string()
        } else {
            v.to_string()
        }
    };
    let parts = [
        or(&o.user, "system_u"),
        or(&o.role, "system_r"),
        or(&o.r#type, "container_t"),
    ];
    let bad = |s: &str| s.chars().any(|c| c.is_control() || c.is_whitespace());
    if parts.iter().any(|p| p.contains(':') || bad(p)) || bad(&o.level) {
        return Err(Error::InvalidArgument(format!(
            "invalid SELinux options {}",
            crate::error::shown(&format!("{}:{}:{}:{}", o.user, o.role, o.r#type, o.level))
        )));
    }
    Ok(Some(format!("{}:{}", parts.join(":"), or(&o.level, "s0"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{SeLinuxOption, SecurityProfile};
    use std::cell::Cell;

    struct Fake {
        why: Option<&'static str>,
        loaded: &'static [&'static str],
        defaults_loaded: Cell<u32>,
    }

    impl Fake {
        fn on() -> Fake {
            Fake {
                why: None,
                loaded: &["crius-default", "mine", "other-default"],
                defaults_loaded: Cell::new(0),
            }
        }
        fn off() -> Fake {
            Fake {
                why: Some("AppArmor is not enabled on this node"),
                ..Fake::on()
            }
        }
    }

    impl AppArmorHost for Fake {
        fn unavailable(&self) -> Option<String> {
            self.why.map(String::from)
        }
        fn is_loaded(&self, name: &str) -> Result<bool> {
            Ok(self.loaded.contains(&name))
        }
        fn load_default(&self) -> Result<()> {
            self.defaults_loaded.set(self.defaults_loaded.get() + 1);
            Ok(())
        }
    }

    fn new_field(t: ProfileType, r: &str) -> LinuxContainerSecurityContext {
        LinuxContainerSecurityContext {
            apparmor: Some(SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            }),
            ..Default::default()
        }
    }

    #[allow(deprecated)]
    fn old_field(p: &str) -> LinuxContainerSecurityContext {
        LinuxContainerSecurityContext {
            apparmor_profile: p.into(),
            ..Default::default()
        }
    }

    fn resolve(sec: &LinuxContainerSecurityContext, host: &Fake) -> Result<Option<String>> {
        apparmor_profile(sec, DEFAULT_PROFILE, host)
    }

    #[test]
    fn default_is_crius_default_loaded_at_first_use() {
        let host = Fake::on();
        for sec in [
            LinuxContainerSecurityContext::default(),
            new_field(ProfileType::RuntimeDefault, ""),
            old_field("runtime/default"),
        ] {
            assert_eq!(
                resolve(&sec, &host).unwrap().as_deref(),
                Some("crius-default")
            );
        }
        assert_eq!(host.defaults_loaded.get(), 3);
        // A configured default is not generated, only checked.
        let sec = LinuxContainerSecurityContext::default();
        assert_eq!(
            apparmor_profile(&sec, "other-default", &host)
                .unwrap()
                .as_deref(),
            Some("other-default")
        );
        let e = apparmor_profile(&sec, "absent", &host).unwrap_err();
        assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
        assert_eq!(host.defaults_loaded.get(), 3);
    }

    #[test]
    fn localhost_profiles_must_be_loaded_and_lose_their_prefix() {
        let host = Fake::on();
        for sec in [
            new_field(ProfileType::Localhost, "mine"),
            new_field(ProfileType::Localhost, "localhost/mine"),
            old_field("localhost/mine"),
        ] {
            assert_eq!(resolve(&sec, &host).unwrap().as_deref(), Some("mine"));
        }
        for sec in [
            new_field(ProfileType::Localhost, "localhost/absent"),
            old_field("localhost/absent"),
        ] {
            let e = resolve(&sec, &host).unwrap_err();
            assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
            assert!(e.to_string().contains("\"absent\" is not loaded"), "{e}");
        }
    }

    #[test]
    fn the_new_field_wins_over_the_deprecated_one() {
        let host = Fake::on();
        let mut sec = new_field(ProfileType::Localhost, "localhost/mine");
        #[allow(deprecated)]
        {
            sec.apparmor_profile = "localhost/absent".into();
        }
        assert_eq!(resolve(&sec, &host).unwrap().as_deref(), Some("mine"));
    }

    #[test]
    fn unconfined_and_privileged_run_without_a_profile() {
        let host = Fake::on();
        for sec in [
            new_field(ProfileType::Unconfined, ""),
            old_field("unconfined"),
            LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            },
        ] {
            assert_eq!(resolve(&sec, &host).unwrap(), None);
        }
        assert_eq!(host.defaults_loaded.get(), 0);
    }

    #[test]
    fn bad_requests_are_invalid_arguments() {
        let host = Fake::on();
        let mut bad_type = new_field(ProfileType::Localhost, "x");
        bad_type.apparmor.as_mut().unwrap().profile_type = 7;
        for sec in [
            old_field("docker-default"),
            old_field("localhost/"),
            new_field(ProfileType::Localhost, ""),
            new_field(ProfileType::Localhost, "localhost/a b"),
            new_field(ProfileType::Localhost, "a\nb"),
            bad_type,
        ] {
            let e = resolve(&sec, &host).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{sec:?}: {e}");
        }
    }

    #[test]
    fn without_apparmor_requests_for_a_profile_are_refused() {
        let host = Fake::off();
        assert_eq!(
            resolve(&LinuxContainerSecurityContext::default(), &host).unwrap(),
            None
        );
        assert_eq!(resolve(&old_field("unconfined"), &host).unwrap(), None);
        for sec in [
            new_field(ProfileType::RuntimeDefault, ""),
            old_field("runtime/default"),
            new_field(ProfileType::Localhost, "mine"),
            old_field("localhost/mine"),
        ] {
            let e = resolve(&sec, &host).unwrap_err();
            assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
            assert!(e.to_string().contains("AppArmor is not enabled"), "{e}");
        }
        assert_eq!(host.defaults_loaded.get(), 0);
    }

    #[test]
    fn the_default_profile_names_itself_and_denies_what_docker_denies() {
        let p = default_profile("crius-default");
        assert!(p.contains("profile crius-default flags=(attach_disconnected,mediate_deleted) {"));
        assert!(p.contains("signal (send,receive) peer=crius-default,"));
        assert!(p.contains("ptrace (trace,read,tracedby,readby) peer=crius-default,"));
        for rule in [
            "deny mount,",
            "deny @{PROC}/* w,",
            "deny /sys/kernel/security/** rwklx,",
        ] {
            assert!(p.contains(rule), "{rule}");
        }
        assert_eq!(p.matches('{').count(), p.matches('}').count());
    }

    #[test]
    fn loaded_profiles_are_read_from_securityfs_lines() {
        let list = "crius-default (enforce)\nsome profile (complain)\n/usr/bin/man (enforce)\n";
        let names: Vec<&str> = loaded_profiles(list).collect();
        assert_eq!(names, ["crius-default", "some profile", "/usr/bin/man"]);
    }

    #[test]
    fn selinux_labels_fill_in_container_defaults() {
        let with = |user: &str, role: &str, typ: &str, level: &str| LinuxContainerSecurityContext {
            selinux_options: Some(SeLinuxOption {
                user: user.into(),
                role: role.into(),
                r#type: typ.into(),
                level: level.into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            selinux_label(&LinuxContainerSecurityContext::default()).unwrap(),
            None
        );
        assert_eq!(selinux_label(&with("", "", "", "")).unwrap(), None);
        assert_eq!(
            selinux_label(&with("", "", "", "s0:c1,c2"))
                .unwrap()
                .as_deref(),
            Some("system_u:system_r:container_t:s0:c1,c2")
        );
        assert_eq!(
            selinux_label(&with("u", "r", "t", "")).unwrap().as_deref(),
            Some("u:r:t:s0")
        );
        assert!(selinux_label(&with("a:b", "", "", "")).is_err());
        assert!(selinux_label(&with("", "", "", "s0\n")).is_err());
    }
}
