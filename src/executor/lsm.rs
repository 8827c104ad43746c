//! The spec's AppArmor profile and SELinux label, applied as runc applies
//! them: written to the task's `exec` attribute in /proc, so the kernel
//! switches at the next execve and the set-up code itself runs
//! unconfined. The write is the last step before execve of the container's
//! process and of every exec (an exec inherits the container's process
//! spec, so it runs under the same profile), made by the process that will
//! exec, inside the container's PID namespace (its /proc knows the task).
//!
//! AppArmor: `exec <profile>` to `/proc/thread-self/attr/apparmor/exec`
//! (the per-LSM file, kernel 5.8+), else the shared
//! `/proc/thread-self/attr/exec`. SELinux: the label to the shared file.
//! The writes go through [`AttrFs`], so the rules are tested without an
//! LSM.

use std::io;

use oci_spec::runtime::Process;

use super::process::Failure;
use super::{ExecutorError, FailureKind};

/// AppArmor's own exec attribute.
pub(super) const APPARMOR_EXEC: &str = "/proc/thread-self/attr/apparmor/exec";
/// The major LSM's exec attribute.
pub(super) const SHARED_EXEC: &str = "/proc/thread-self/attr/exec";

/// Where the labels are written: /proc, or a fake in tests.
pub(super) trait AttrFs {
    /// Writes `data` to the attribute file `path` in one write.
    fn write(&mut self, path: &str, data: &[u8]) -> io::Result<()>;
}

/// The kernel's /proc.
pub(super) struct Proc;

impl AttrFs for Proc {
    fn write(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        super::sys::write_attr(path, data)
    }
}

/// The labels a process execs under.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Labels {
    apparmor: Option<String>,
    selinux: Option<String>,
}

/// Reads them from the process spec, refusing what cannot be written as
/// one attribute (empty, with a NUL or a newline).
pub(super) fn labels(process: &Process) -> Result<Labels, ExecutorError> {
    let check = |what: &str, v: &Option<String>| match v {
        Some(s) if s.is_empty() || s.contains(['\0', '\n']) => {
            Err(ExecutorError::Spec(format!("invalid {what} {s:?}")))
        }
        _ => Ok(v.clone()),
    };
    Ok(Labels {
        apparmor: check("AppArmor profile", process.apparmor_profile())?,
        selinux: check("SELinux label", process.selinux_label())?,
    })
}

fn failure(what: String, e: io::Error) -> Failure {
    let kind = match e.raw_os_error() {
        // AppArmor: no such profile (unloaded since the create); SELinux:
        // a label the policy does not know.
        Some(libc::ENOENT | libc::EINVAL) => FailureKind::InvalidArgument,
        Some(libc::EACCES | libc::EPERM) => FailureKind::PermissionDenied,
        _ => FailureKind::Internal,
    };
    Failure {
        kind,
        message: format!("{what}: {e}"),
    }
}

/// Sets the labels for the coming execve.
pub(super) fn apply(l: &Labels, fs: &mut impl AttrFs) -> Result<(), Failure> {
    if let Some(profile) = &l.apparmor {
        let data = format!("exec {profile}");
        let wrote = match fs.write(APPARMOR_EXEC, data.as_bytes()) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                fs.write(SHARED_EXEC, data.as_bytes())
            }
            r => r,
        };
        wrote.map_err(|e| failure(format!("AppArmor profile {profile:?}"), e))?;
    }
    if let Some(label) = &l.selinux {
        fs.write(SHARED_EXEC, label.as_bytes()).map_err(|e| {
            // The kernel answers EINVAL for a context its policy lacks
            // (an unknown user, role, type or level, or a role not
            // allowed that type): say so, not only "Invalid argument".
            let what = if e.raw_os_error() == Some(libc::EINVAL) {
                format!("SELinux label {label:?} is not valid in the loaded policy")
            } else {
                format!("SELinux label {label:?}")
            };
            failure(what, e)
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::ProcessBuilder;

    /// Records writes; answers ENOENT for the paths in `missing`.
    #[derive(Default)]
    struct Fake {
        missing: Vec<&'static str>,
        fail: Option<i32>,
        writes: Vec<(String, String)>,
    }

    impl AttrFs for Fake {
        fn write(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
            if self.missing.contains(&path) {
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            }
            if let Some(e) = self.fail {
                return Err(io::Error::from_raw_os_error(e));
            }
            self.writes
                .push((path.into(), String::from_utf8_lossy(data).into()));
            Ok(())
        }
    }

    fn process(apparmor: Option<&str>, selinux: Option<&str>) -> Process {
        let mut p = ProcessBuilder::default().build().unwrap();
        p.set_apparmor_profile(apparmor.map(String::from));
        p.set_selinux_label(selinux.map(String::from));
        p
    }

    #[test]
    fn nothing_asked_nothing_written() {
        let mut fs = Fake::default();
        apply(&labels(&process(None, None)).unwrap(), &mut fs).unwrap();
        assert!(fs.writes.is_empty());
    }

    #[test]
    fn apparmor_goes_to_its_own_file_else_the_shared_one() {
        let l = labels(&process(Some("crius-default"), None)).unwrap();
        let mut fs = Fake::default();
        apply(&l, &mut fs).unwrap();
        assert_eq!(
            fs.writes,
            [(APPARMOR_EXEC.into(), "exec crius-default".into())]
        );
        let mut old_kernel = Fake {
            missing: vec![APPARMOR_EXEC],
            ..Default::default()
        };
        apply(&l, &mut old_kernel).unwrap();
        assert_eq!(
            old_kernel.writes,
            [(SHARED_EXEC.into(), "exec crius-default".into())]
        );
    }

    #[test]
    fn selinux_label_goes_to_the_shared_file() {
        let l = labels(&process(None, Some("system_u:system_r:container_t:s0"))).unwrap();
        let mut fs = Fake::default();
        apply(&l, &mut fs).unwrap();
        assert_eq!(
            fs.writes,
            [(
                SHARED_EXEC.into(),
                "system_u:system_r:container_t:s0".into()
            )]
        );
    }

    #[test]
    fn refusals_say_what_and_whose_fault() {
        let l = labels(&process(Some("gone"), None)).unwrap();
        let mut fs = Fake {
            missing: vec![APPARMOR_EXEC, SHARED_EXEC],
            ..Default::default()
        };
        let f = apply(&l, &mut fs).unwrap_err();
        assert_eq!(f.kind, FailureKind::InvalidArgument);
        assert!(
            f.message.contains("AppArmor profile \"gone\""),
            "{}",
            f.message
        );
        let mut fs = Fake {
            fail: Some(libc::EACCES),
            ..Default::default()
        };
        let f = apply(&l, &mut fs).unwrap_err();
        assert_eq!(f.kind, FailureKind::PermissionDenied);
        let l = labels(&process(None, Some("u:r:no_such_t:s0"))).unwrap();
        let mut fs = Fake {
            fail: Some(libc::EINVAL),
            ..Default::default()
        };
        let f = apply(&l, &mut fs).unwrap_err();
        assert_eq!(f.kind, FailureKind::InvalidArgument);
        assert!(
            f.message
                .contains("SELinux label \"u:r:no_such_t:s0\" is not valid in the loaded policy"),
            "{}",
            f.message
        );
    }

    #[test]
    fn unwritable_labels_are_refused_before_any_fork() {
        for bad in ["", "a\nb", "a\0b"] {
            assert!(labels(&process(Some(bad), None)).is_err(), "{bad:?}");
            assert!(labels(&process(None, Some(bad))).is_err(), "{bad:?}");
        }
    }
}
