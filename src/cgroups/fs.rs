//! The filesystem seam of the cgroup v2 logic (youki's idea): controller
//! enabling and limit writes go through [`CgroupFs`], so they are
//! unit-tested against [`fake::FakeCgroupFs`], which behaves like cgroup2
//! where it matters (interface files appear only for enabled controllers,
//! no internal processes), without root.

use std::io;
use std::path::Path;

/// The few filesystem operations the v2 logic needs.
pub trait CgroupFs {
    /// Reads a whole interface file.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// Writes an existing interface file; never creates one, so a missing
    /// file is `NotFound` (cgroupfs answers a create with EACCES).
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
    /// Makes one cgroup directory (its parent exists).
    fn mkdir(&self, path: &Path) -> io::Result<()>;
}

/// The real cgroup filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealCgroupFs;

impl CgroupFs for RealCgroupFs {
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        use std::io::Write;
        // One write(2): the kernel parses each write as a whole.
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(value.as_bytes())
    }

    fn mkdir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }
}

#[cfg(test)]
pub mod fake {
    //! An in-memory cgroup2 tree.

    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::PathBuf;
    use std::sync::Mutex;

    /// Interface files each controller adds to a child cgroup.
    fn files_of(controller: &str) -> &'static [&'static str] {
        match controller {
            "cpu" => &["cpu.weight", "cpu.max", "cpu.stat"],
            "cpuset" => &["cpuset.cpus", "cpuset.mems"],
            "io" => &["io.max", "io.weight"],
            "memory" => &[
                "memory.max",
                "memory.high",
                "memory.swap.max",
                "memory.oom.group",
                "memory.events",
            ],
            "hugetlb" => &["hugetlb.2MB.max", "hugetlb.1GB.max"],
            "pids" => &["pids.max"],
            _ => &[],
        }
    }

    /// A cgroup2 hierarchy in memory, rooted at `root`.
    #[derive(Debug)]
    pub struct FakeCgroupFs {
        root: PathBuf,
        state: Mutex<State>,
    }

    #[derive(Debug, Default)]
    struct State {
        dirs: BTreeSet<PathBuf>,
        files: BTreeMap<PathBuf, String>,
        /// Every write, in order.
        writes: Vec<(PathBuf, String)>,
    }

    impl FakeCgroupFs {
        /// A root offering `controllers` (as `cgroup.controllers` lists).
        pub fn new(root: &Path, controllers: &[&str]) -> FakeCgroupFs {
            let mut s = State::default();
            s.dirs.insert(root.to_path_buf());
            s.files
                .insert(root.join("cgroup.controllers"), controllers.join(" "));
            s.files
                .insert(root.join("cgroup.subtree_control"), String::new());
            s.files.insert(root.join("cgroup.procs"), String::new());
            FakeCgroupFs {
                root: root.to_path_buf(),
                state: Mutex::new(s),
            }
        }

        /// Puts a process into `dir` (for the no-internal-processes rule).
        pub fn add_process(&self, dir: &Path) {
            let mut s = self.state.lock().unwrap();
            s.files.insert(dir.join("cgroup.procs"), "1\n".into());
        }

        /// The value of a file, if it exists.
        pub fn get(&self, path: &Path) -> Option<String> {
            self.state.lock().unwrap().files.get(path).cloned()
        }

        /// The writes so far, in order.
        pub fn writes(&self) -> Vec<(PathBuf, String)> {
            self.state.lock().unwrap().writes.clone()
        }
    }

    fn words(s: &str) -> BTreeSet<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn err(kind: i32) -> io::Error {
        io::Error::from_raw_os_error(kind)
    }

    impl CgroupFs for FakeCgroupFs {
        fn read(&self, path: &Path) -> io::Result<String> {
            let s = self.state.lock().unwrap();
            s.files.get(path).cloned().ok_or_else(|| err(libc::ENOENT))
        }

        fn write(&self, path: &Path, value: &str) -> io::Result<()> {
            let mut s = self.state.lock().unwrap();
            if !s.files.contains_key(path) {
                return Err(err(libc::ENOENT));
            }
            let dir = path
                .parent()
                .ok_or_else(|| err(libc::EINVAL))?
                .to_path_buf();
            if path
                .file_name()
                .is_some_and(|n| n == "cgroup.subtree_control")
            {
                let available = words(&s.files[&dir.join("cgroup.controllers")]);
                let busy = dir != self.root && !s.files[&dir.join("cgroup.procs")].is_empty();
                let mut enabled = words(&s.files[path]);
                for w in value.split_whitespace() {
                    let (add, c) = match w.split_at(1) {
                        ("+", c) => (true, c),
                        ("-", c) => (false, c),
                        _ => return Err(err(libc::EINVAL)),
                    };
                    if !available.contains(c) {
                        return Err(err(libc::ENOENT));
                    }
                    if busy {
                        return Err(err(libc::EBUSY));
                    }
                    if add {
                        enabled.insert(c.to_string());
                    } else {
                        enabled.remove(c);
                    }
                }
                let list = enabled.iter().cloned().collect::<Vec<_>>().join(" ");
                s.files.insert(path.to_path_buf(), list.clone());
                // Existing children gain the controllers' files.
                let children: Vec<PathBuf> = s
                    .dirs
                    .iter()
                    .filter(|d| d.parent() == Some(dir.as_path()))
                    .cloned()
                    .collect();
                for child in children {
                    s.files
                        .insert(child.join("cgroup.controllers"), list.clone());
                    for c in &enabled {
                        for f in files_of(c) {
                            s.files.entry(child.join(f)).or_default();
                        }
                    }
                }
            } else {
                s.files.insert(path.to_path_buf(), value.to_string());
            }
            s.writes.push((path.to_path_buf(), value.to_string()));
            Ok(())
        }

        fn mkdir(&self, path: &Path) -> io::Result<()> {
            let mut s = self.state.lock().unwrap();
            let parent = path.parent().ok_or_else(|| err(libc::EINVAL))?;
            if !s.dirs.contains(parent) {
                return Err(err(libc::ENOENT));
            }
            if !s.dirs.insert(path.to_path_buf()) {
                return Err(err(libc::EEXIST));
            }
            let enabled = s.files[&parent.join("cgroup.subtree_control")].clone();
            for c in enabled.split_whitespace() {
                for f in files_of(c) {
                    s.files.insert(path.join(f), String::new());
                }
            }
            s.files.insert(path.join("cgroup.controllers"), enabled);
            s.files
                .insert(path.join("cgroup.subtree_control"), String::new());
            s.files.insert(path.join("cgroup.procs"), String::new());
            Ok(())
        }
    }
}
