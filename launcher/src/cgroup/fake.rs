//! Fake cgroup trees for unit tests: a temp dir laid out like a v1 or v2 mount root, so that
//! [`CgroupRoot::detect`] and both managers run on it unchanged, plus a stand-in for the
//! kernel's asynchronous v2 freezer.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{CgroupOptions, CgroupRoot};

pub(crate) struct FakeTree {
    dir: tempfile::TempDir,
}

impl FakeTree {
    /// A v2 mount root whose `cgroup.controllers` offers `controllers` (a kernel line, e.g.
    /// `"cpuset cpu io memory pids"`).
    pub(crate) fn v2(controllers: &str) -> Self {
        let t = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        t.write("cgroup.controllers", &format!("{controllers}\n"));
        t.write("cgroup.subtree_control", "");
        t
    }

    /// A v1 mount root with one hierarchy directory per name (`"cpu"`, `"memory"`, ...).
    pub(crate) fn v1(hierarchies: &[&str]) -> Self {
        let t = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        for h in hierarchies {
            std::fs::create_dir(t.path().join(h)).unwrap();
        }
        t
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn join(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }

    /// `CgroupRoot::detect` on this tree.
    pub(crate) fn root(&self, parent: &str) -> CgroupRoot {
        CgroupRoot::detect(self.path(), parent).unwrap()
    }

    pub(crate) fn root_with(&self, parent: &str, opts: &CgroupOptions) -> CgroupRoot {
        CgroupRoot::detect_with(self.path(), parent, opts).unwrap()
    }

    /// A file's content; panics if it is missing.
    pub(crate) fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// Writes a file as the kernel would show it, making its directories first.
    pub(crate) fn write(&self, rel: &str, content: &str) {
        let p = self.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub(crate) fn exists(&self, rel: &str) -> bool {
        self.join(rel).exists()
    }

    /// Plays the kernel's v2 freezer for the group directory `rel`: each new value written to
    /// its `cgroup.freeze` shows in `cgroup.events` as `frozen N`, `delay` later. Stops when
    /// the returned handle is dropped.
    pub(crate) fn v2_freezer_kernel(&self, rel: &str, delay: Duration) -> FakeKernel {
        let dir = self.join(rel);
        std::fs::write(dir.join("cgroup.freeze"), "0\n").unwrap();
        std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut applied = "0".to_owned();
            while !s.load(Ordering::Relaxed) {
                let want = std::fs::read_to_string(dir.join("cgroup.freeze"))
                    .map(|v| v.trim().to_owned())
                    .unwrap_or_default();
                if want != applied && (want == "0" || want == "1") {
                    std::thread::sleep(delay);
                    let events = format!("populated 1\nfrozen {want}\n");
                    std::fs::write(dir.join("cgroup.events"), events).unwrap();
                    applied = want;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        FakeKernel {
            stop,
            thread: Some(thread),
        }
    }
}

/// The thread of [`FakeTree::v2_freezer_kernel`]; stopped and joined on drop.
pub(crate) struct FakeKernel {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FakeKernel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
