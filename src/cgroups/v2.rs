//! cgroup v2: controllers enabled on the way down, limits written into
//! files that must already exist.
//!
//! A v2 cgroup has `cpu.max`, `memory.max`, … only when its parent lists
//! the controller in `cgroup.subtree_control`, and a cgroup other than the
//! root may list controllers there only while it holds no processes of its
//! own. crius's tree (`<parent>/crius-pod-…/crius-…`) keeps processes in the
//! leaves only, so every level above a leaf can delegate.

use std::io;
use std::path::{Path, PathBuf};

use super::CgroupError;
use super::fs::CgroupFs;

/// The controllers crius delegates down its tree, where the kernel offers
/// them (`cgroup.controllers`).
pub const CONTROLLERS: [&str; 6] = ["cpuset", "cpu", "io", "memory", "hugetlb", "pids"];

/// Makes `root/rel` and its missing parents, enabling the controllers in
/// `cgroup.subtree_control` of `root` and of every level above `rel`.
pub fn create(fs: &dyn CgroupFs, root: &Path, rel: &str) -> Result<(), CgroupError> {
    let mut dir = root.to_path_buf();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        enable_controllers(fs, &dir)?;
        dir.push(part);
        match fs.mkdir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(CgroupError::Io {
                    path: dir,
                    source: e,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Enables in `dir`, for its children, those of [`CONTROLLERS`] it has
/// and has not enabled yet (one write; nothing when all are on).
pub fn enable_controllers(fs: &dyn CgroupFs, dir: &Path) -> Result<(), CgroupError> {
    let read = |f: &str| {
        let path = dir.join(f);
        fs.read(&path)
            .map_err(|source| CgroupError::Io { path, source })
    };
    let available = read("cgroup.controllers")?;
    let enabled = read("cgroup.subtree_control")?;
    let has = |list: &str, c: &str| list.split_whitespace().any(|w| w == c);
    let wanted: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| has(&available, c) && !has(&enabled, c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let wanted = wanted.join(" ");
    let path = dir.join("cgroup.subtree_control");
    fs.write(&path, &wanted).map_err(|source| {
        let hint = if source.raw_os_error() == Some(libc::EBUSY) {
            " (the cgroup holds processes of its own; cgroup v2 lets only cgroups without them, or the root, hand controllers down)"
        } else {
            ""
        };
        CgroupError::Controllers {
            path,
            wanted,
            hint,
            source,
        }
    })
}

/// Writes `files` (names relative to `dir`, as [`super::resource_files`]
/// gives them for v2). A missing file means the controller is not
/// delegated to this cgroup; a missing `memory.swap.max` (no swap
/// accounting) is fine when the value only turns swap off or leaves it
/// unlimited, as runc does.
pub fn apply(fs: &dyn CgroupFs, dir: &Path, files: &[(String, String)]) -> Result<(), CgroupError> {
    for (file, value) in files {
        let path = dir.join(file);
        match fs.write(&path, value) {
            Ok(()) => {}
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    && file == "memory.swap.max"
                    && (value == "max" || value == "0") => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CgroupError::MissingFile {
                    controller: file.split('.').next().unwrap_or_default().to_string(),
                    path,
                });
            }
            Err(source) => {
                return Err(CgroupError::Write {
                    path,
                    value: value.clone(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Checks a key of the CRI `unified` map: a plain interface file name
/// (`memory.high`, `hugetlb.2MB.max`), never a path, and none of the
/// `cgroup.*` core files that move, kill or reshape the cgroup.
pub fn check_unified_key(key: &str) -> Result<(), CgroupError> {
    let bad = |why: &str| CgroupError::InvalidResource(format!("unified key {key:?}: {why}"));
    let plain = !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
        && !key.starts_with('.')
        && !key.ends_with('.')
        && !key.contains("..");
    if !plain {
        return Err(bad("not a plain interface file name"));
    }
    let Some((controller, _)) = key.split_once('.') else {
        return Err(bad("not a <controller>.<file> name"));
    };
    if controller == "cgroup" && !matches!(key, "cgroup.max.depth" | "cgroup.max.descendants") {
        return Err(bad("a core cgroup file crius manages itself"));
    }
    Ok(())
}

/// The v2 directory of `rel` under `root`.
pub fn dir(root: &Path, rel: &str) -> PathBuf {
    root.join(rel.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::super::fs::fake::FakeCgroupFs;
    use super::super::{Version, resource_files};
    use super::*;
    use k8s_cri::v1::{HugepageLimit, LinuxContainerResources};

    const ROOT: &str = "/cg";

    fn fake(controllers: &[&str]) -> FakeCgroupFs {
        FakeCgroupFs::new(Path::new(ROOT), controllers)
    }

    fn p(rel: &str) -> PathBuf {
        Path::new(ROOT).join(rel)
    }

    #[test]
    fn controllers_are_enabled_from_the_root_down_to_the_leafs_parent() {
        let fs = fake(&["cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma"]);
        create(&fs, Path::new(ROOT), "crius/crius-pod-1").unwrap();
        create(&fs, Path::new(ROOT), "crius/crius-pod-1/crius-c1").unwrap();
        let all = "cpu cpuset hugetlb io memory pids";
        for level in ["", "crius", "crius/crius-pod-1"] {
            assert_eq!(
                fs.get(&p(level).join("cgroup.subtree_control")).as_deref(),
                Some(all),
                "level {level:?}"
            );
        }
        // rdma is not crius's to delegate; the leaf delegates nothing.
        assert_eq!(
            fs.get(&p("crius/crius-pod-1/crius-c1/cgroup.subtree_control"))
                .as_deref(),
            Some("")
        );
        assert!(
            fs.get(&p("crius/crius-pod-1/crius-c1/memory.max"))
                .is_some()
        );
        // A second container writes nothing new above it.
        let before = fs.writes().len();
        create(&fs, Path::new(ROOT), "crius/crius-pod-1/crius-c2").unwrap();
        assert_eq!(fs.writes().len(), before);
    }

    #[test]
    fn only_offered_controllers_are_enabled() {
        let fs = fake(&["cpu", "memory"]);
        create(&fs, Path::new(ROOT), "a/b").unwrap();
        assert_eq!(
            fs.get(&p("cgroup.subtree_control")).as_deref(),
            Some("cpu memory")
        );
        assert_eq!(fs.get(&p("a/pids.max")), None);
    }

    #[test]
    fn a_level_with_processes_cannot_delegate_and_says_why() {
        let fs = fake(&["cpu", "memory"]);
        fs.mkdir(&p("busy")).unwrap();
        fs.add_process(&p("busy"));
        let e = create(&fs, Path::new(ROOT), "busy/pod").unwrap_err();
        assert!(matches!(e, CgroupError::Controllers { .. }), "{e}");
        assert!(e.to_string().contains("processes of its own"), "{e}");
        assert!(!e.is_invalid_argument());
    }

    fn res() -> LinuxContainerResources {
        LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 1024,
            memory_limit_in_bytes: 256 << 20,
            memory_swap_limit_in_bytes: 256 << 20,
            cpuset_cpus: "0".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 0,
            }],
            unified: [
                ("memory.oom.group".to_string(), "1".to_string()),
                ("pids.max".to_string(), "100".to_string()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn limits_land_in_the_v2_files() {
        let fs = fake(&CONTROLLERS);
        let rel = "crius/crius-pod-1/crius-c1";
        create(&fs, Path::new(ROOT), rel).unwrap();
        let files = resource_files(Version::V2, &res()).unwrap();
        apply(&fs, &p(rel), &files).unwrap();
        let get = |f: &str| fs.get(&p(rel).join(f)).unwrap_or_default();
        assert_eq!(get("cpu.weight"), "39");
        assert_eq!(get("cpu.max"), "50000 100000");
        assert_eq!(get("memory.max"), (256u64 << 20).to_string());
        assert_eq!(get("memory.swap.max"), "0");
        assert_eq!(get("memory.oom.group"), "1");
        assert_eq!(get("pids.max"), "100");
        assert_eq!(get("hugetlb.2MB.max"), "0");
        assert_eq!(get("cpuset.cpus"), "0");
        assert_eq!(get("cpuset.mems"), "0");
    }

    #[test]
    fn a_missing_controller_is_a_clear_error_not_invalid_argument() {
        let fs = fake(&["cpu"]);
        let rel = "crius/pod/c";
        create(&fs, Path::new(ROOT), rel).unwrap();
        let files = vec![("memory.max".to_string(), "1000000".to_string())];
        let e = apply(&fs, &p(rel), &files).unwrap_err();
        assert!(
            matches!(&e, CgroupError::MissingFile { controller, .. } if controller == "memory"),
            "{e}"
        );
        assert!(!e.is_invalid_argument());
        assert!(e.to_string().contains("memory controller"), "{e}");
        // Swap off or unlimited without swap accounting is no error.
        for v in ["0", "max"] {
            let files = vec![("memory.swap.max".to_string(), v.to_string())];
            apply(&fs, &p(rel), &files).unwrap();
        }
        let files = vec![("memory.swap.max".to_string(), "4096".to_string())];
        assert!(apply(&fs, &p(rel), &files).is_err());
    }

    #[test]
    fn a_value_the_kernel_refuses_is_invalid_argument() {
        let e = CgroupError::Write {
            path: p("x/cpu.max"),
            value: "1 1".into(),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert!(e.is_invalid_argument());
        let e = CgroupError::Write {
            path: p("x/cpu.max"),
            value: "1 1".into(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(!e.is_invalid_argument());
    }

    #[test]
    fn unified_keys_are_plain_file_names() {
        for ok in [
            "memory.high",
            "memory.oom.group",
            "hugetlb.2MB.max",
            "io.bfq.weight",
            "cpu.uclamp_min",
            "cgroup.max.depth",
        ] {
            check_unified_key(ok).unwrap();
        }
        for bad in [
            "",
            "../memory.max",
            "a/memory.max",
            "/memory.max",
            ".memory",
            "memory.",
            "memory..max",
            "memory",
            "memory.max\n",
            "cgroup.procs",
            "cgroup.subtree_control",
            "cgroup.kill",
            "cgroup.type",
        ] {
            let e = check_unified_key(bad).unwrap_err();
            assert!(e.is_invalid_argument(), "{bad:?}");
        }
        let mut r = LinuxContainerResources::default();
        r.unified.insert("cgroup.procs".into(), "1".into());
        assert!(resource_files(Version::V2, &r).is_err());
    }
}
