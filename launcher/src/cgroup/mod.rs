//! Per-instance cgroups, v1 and v2.
//!
//! [`CgroupRoot::detect`] finds the host's hierarchy under a mount root (the real one at
//! [`SYS_FS_CGROUP`], or a fake tree in a temp dir in tests) and creates hako's parent group;
//! [`CgroupRoot::create`] makes one [`InstanceCgroup`] per instance. Every operation on a group
//! is a method of the `CgroupManager` trait (`types.rs`), implemented once per version:
//!
//! - `v2.rs`: the unified hierarchy, through the file layer (interface files read and written
//!   directly); the module says why cgroups-rs is not used there, operation by operation;
//! - `v1.rs`: one directory per controller hierarchy; cpu, memory-limit, pids and freezer
//!   writes go through cgroups-rs controllers built on the group's directory, the rest through
//!   the file layer (reasons in that module).
//!
//! The same code serves the real hierarchy and fake trees, so the unit tests (`fake.rs` builds
//! v1 and v2 trees) exercise what production runs; `launcher/tests/cgroups_real.rs` runs the same
//! operations against the kernel. `common.rs` holds what both versions share (name
//! validation, limit formats, reads, the kill, wait and removal loops), `pool.rs` the groups
//! created ahead of their boots. The formats follow the kernel's
//! `Documentation/admin-guide/cgroup-v2.rst` and the v1 controller documents.
use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;
#[cfg(test)]
pub(crate) mod fake;
pub mod pool;
mod reclaim;
mod types;
mod v1;
mod v2;

use common::{io_err, validate_name};
pub use reclaim::{
    host_swap_bytes, pageout_anon, private_writable_ranges, sigkill_pending, MemoryBreakdown,
    Pageout, PageoutError, V1_SQUEEZE_SLACK,
};
pub(crate) use types::CgroupManager;
pub use types::{
    cpu_shares_of_weight, cpu_weight_of_shares, CPU_WEIGHT_DEFAULT, CPU_WEIGHT_MAX, CPU_WEIGHT_MIN,
};
pub use types::{
    CgroupAttach, CgroupError, CgroupLimits, CgroupOptions, CgroupPressure, CgroupStats,
    CgroupVersion, CPU_PERIOD_US,
};

/// The host's cgroup mount root (`cgroups_rs::hierarchies::UNIFIED_MOUNTPOINT`).
pub const SYS_FS_CGROUP: &str = cgroups_rs::hierarchies::UNIFIED_MOUNTPOINT;

/// How long [`InstanceCgroup::freeze`] and [`InstanceCgroup::thaw`] wait for the kernel.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(2);

/// The parent group in the detected hierarchy.
#[derive(Debug, Clone)]
enum Hierarchy {
    V1(v1::V1Hierarchy),
    V2(v2::V2Hierarchy),
}

/// The parent group under which hako creates one group per instance.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    hierarchy: Hierarchy,
    mount_root: PathBuf,
    parent: String,
}

impl CgroupRoot {
    /// Detects v2 (`<mount_root>/cgroup.controllers` exists) or v1 (`<mount_root>/<controller>`
    /// directories) and creates the parent group `parent` (e.g. `hako`) in every hierarchy
    /// hako uses, with the default [`CgroupOptions`].
    pub fn detect(mount_root: &Path, parent: &str) -> Result<Self, CgroupError> {
        Self::detect_with(mount_root, parent, &CgroupOptions::default())
    }

    /// [`detect`](Self::detect) with options.
    pub fn detect_with(
        mount_root: &Path,
        parent: &str,
        opts: &CgroupOptions,
    ) -> Result<Self, CgroupError> {
        validate_name(parent)?;
        let hierarchy = if v2::V2Hierarchy::is_v2(mount_root) {
            Hierarchy::V2(v2::V2Hierarchy::detect(mount_root, parent)?)
        } else {
            Hierarchy::V1(v1::V1Hierarchy::detect(mount_root, parent, opts)?)
        };
        let root = Self {
            hierarchy,
            mount_root: mount_root.to_owned(),
            parent: parent.to_owned(),
        };
        tracing::debug!(root = %mount_root.display(), parent, version = ?root.version(), "cgroup root");
        Ok(root)
    }

    pub fn version(&self) -> CgroupVersion {
        match self.hierarchy {
            Hierarchy::V1(_) => CgroupVersion::V1,
            Hierarchy::V2(_) => CgroupVersion::V2,
        }
    }

    /// The parent group name (e.g. `hako`).
    pub fn parent(&self) -> &str {
        &self.parent
    }

    pub fn mount_root(&self) -> &Path {
        &self.mount_root
    }

    /// The parent group's directories, one per hierarchy.
    fn parent_dirs(&self) -> Vec<PathBuf> {
        let set: BTreeSet<PathBuf> = match &self.hierarchy {
            Hierarchy::V1(h) => h.parents.iter().map(|(_, p)| p.clone()).collect(),
            Hierarchy::V2(h) => [h.parent.clone()].into(),
        };
        set.into_iter().collect()
    }

    fn instance(&self, name: &str) -> InstanceCgroup {
        let manager: Box<dyn CgroupManager> = match &self.hierarchy {
            Hierarchy::V1(h) => Box::new(h.group(name)),
            Hierarchy::V2(h) => Box::new(h.group(name)),
        };
        InstanceCgroup {
            name: name.to_owned(),
            manager,
        }
    }

    /// Creates the group `name` in every hierarchy and writes `limits`. On failure nothing of
    /// it is left (directories already made in other hierarchies are removed). A group that
    /// existed already (a leftover) has its limits rewritten in full.
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> Result<InstanceCgroup, CgroupError> {
        validate_name(name)?;
        let inst = self.instance(name);
        let m = &inst.manager;
        if let Err(e) = m.create().and_then(|fresh| m.set_limits(limits, fresh)) {
            let _ = m.remove();
            return Err(e);
        }
        Ok(inst)
    }

    /// An existing group (for orphan cleanup); `None` if it does not exist.
    pub fn open(&self, name: &str) -> Result<Option<InstanceCgroup>, CgroupError> {
        validate_name(name)?;
        let inst = self.instance(name);
        let exists = inst.dirs().iter().any(|d| d.is_dir());
        Ok(exists.then_some(inst))
    }

    /// Names of the groups under the parent, in every hierarchy.
    pub fn list(&self) -> Result<Vec<String>, CgroupError> {
        let mut names = BTreeSet::new();
        for p in self.parent_dirs() {
            for entry in fs::read_dir(&p).map_err(io_err("read_dir", &p))? {
                let entry = entry.map_err(io_err("read_dir", &p))?;
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    names.insert(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Removes the parent group from every hierarchy if no instance group is left in it (at
    /// shutdown, so a stopped hako leaves no cgroup behind). Returns whether it is gone.
    pub fn remove_parent_if_empty(&self) -> Result<bool, CgroupError> {
        if !self.list()?.is_empty() {
            return Ok(false);
        }
        let real = match &self.hierarchy {
            Hierarchy::V1(h) => h.real,
            Hierarchy::V2(h) => h.real,
        };
        for p in self.parent_dirs() {
            // A fake tree's directories hold plain files, removed with them.
            let res = if real {
                fs::remove_dir(&p)
            } else {
                fs::remove_dir_all(&p)
            };
            match res {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Busy: someone else (another process) put something there.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(false),
                Err(e) => return Err(io_err("rmdir", &p)(e)),
            }
        }
        Ok(true)
    }
}

/// One instance's group.
#[derive(Debug)]
pub struct InstanceCgroup {
    name: String,
    manager: Box<dyn CgroupManager>,
}

impl InstanceCgroup {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> CgroupVersion {
        self.manager.version()
    }

    /// Directories of this group, one per hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.manager.dirs()
    }

    /// What the launcher needs to place a child into this group.
    pub fn attach(&self) -> CgroupAttach {
        self.manager.attach()
    }

    /// Writes the limits (used at creation and live by the governor).
    ///
    /// v1: `memory.limit_in_bytes` cannot go below what the kernel can reclaim (the write fails
    /// with EBUSY, reported as an error, nothing else changed); with swap accounting the memsw
    /// limit follows the memory limit (no swapping around it, as `memory.swap.max = 0` on v2),
    /// written in the order the kernel accepts.
    pub fn set_limits(&self, l: &CgroupLimits) -> Result<(), CgroupError> {
        self.manager.set_limits(l, false)
    }

    /// Reads back the effective limits from the interface files.
    pub fn limits(&self) -> Result<CgroupLimits, CgroupError> {
        self.manager.limits()
    }

    /// Writes the CPU weight (v2 scale, 1..=10000, default [`CPU_WEIGHT_DEFAULT`]): v2
    /// `cpu.weight`, v1 `cpu.shares` = weight × 1024 / 100. The governor lowers it for the
    /// tenants driving CPU contention.
    pub fn set_cpu_weight(&self, weight: u32) -> Result<(), CgroupError> {
        self.manager.set_cpu_weight(weight)
    }

    /// The CPU weight in force (v2 scale); `None` where the host has no such file.
    pub fn cpu_weight(&self) -> Result<Option<u32>, CgroupError> {
        self.manager.cpu_weight()
    }

    /// Usage counters. The governor's hot path (every instance, every ~100 ms): a few small
    /// files read directly.
    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        self.manager.stats()
    }

    /// Pressure stall totals; `None` on v1 (no per-group PSI) or without PSI.
    pub fn pressure(&self) -> Result<Option<CgroupPressure>, CgroupError> {
        self.manager.pressure()
    }

    /// Stops every task of the group (v2 `cgroup.freeze`; v1 `freezer.state`, which needs
    /// [`CgroupOptions::v1_freezer`], else [`CgroupError::NoController`]) and returns once the
    /// kernel reports the group frozen, or [`CgroupError::Timeout`] after
    /// [`FREEZE_TIMEOUT`].
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.manager.freeze(FREEZE_TIMEOUT)
    }

    /// Lets a frozen group run again; returns once the kernel reports it thawed.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.manager.thaw(FREEZE_TIMEOUT)
    }

    /// Pids in the group (all hierarchies).
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        self.manager.pids()
    }

    /// Kills every process: `cgroup.kill` on v2 when present, else SIGKILL to each pid (under
    /// the freezer when a v1 group has one).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        self.manager.kill_all()
    }

    /// Kills leftovers, waits for them to leave (up to 2 s), removes the group everywhere.
    pub fn remove(self) -> Result<(), CgroupError> {
        self.manager.remove()?;
        tracing::debug!(name = %self.name, "cgroup removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeTree;
    use super::*;

    /// The controllers a typical v2 host offers.
    pub(super) const V2_HOST: &str = "cpuset cpu io memory hugetlb pids rdma";

    #[test]
    fn v2_detect_enables_controllers_in_root_and_parent() {
        let t = FakeTree::v2(V2_HOST);
        let root = t.root("hako");
        assert_eq!(root.version(), CgroupVersion::V2);
        assert_eq!(t.read("cgroup.subtree_control"), "+cpu +memory +pids");
        assert_eq!(t.read("hako/cgroup.subtree_control"), "+cpu +memory +pids");
    }

    #[test]
    fn v2_list_open_remove() {
        let t = FakeTree::v2(V2_HOST);
        let root = t.root("hako");
        root.create("a", &CgroupLimits::default()).unwrap();
        root.create(
            "b",
            &CgroupLimits {
                pids: Some(5),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(root.list().unwrap(), vec!["a".to_owned(), "b".to_owned()]);
        assert!(root.open("zzz").unwrap().is_none());
        let b = root.open("b").unwrap().unwrap();
        assert_eq!(b.limits().unwrap().pids, Some(5));
        b.remove().unwrap();
        assert!(!t.exists("hako/b"));
        assert_eq!(root.list().unwrap(), vec!["a".to_owned()]);
        assert!(matches!(
            root.create("../x", &CgroupLimits::default()),
            Err(CgroupError::InvalidName(_))
        ));
        assert!(!root.remove_parent_if_empty().unwrap(), "a is still there");
        root.open("a").unwrap().unwrap().remove().unwrap();
        assert!(root.remove_parent_if_empty().unwrap());
        assert!(!t.exists("hako"));
    }

    #[test]
    fn v1_list_open_remove_span_every_hierarchy() {
        let t = FakeTree::v1(&["cpu", "cpuacct", "memory", "pids"]);
        let root = t.root("hako");
        // A group left only in one hierarchy (a crash mid-creation) is still listed and opened.
        std::fs::create_dir(t.join("pids/hako/half")).unwrap();
        root.create("full", &CgroupLimits::default()).unwrap();
        assert_eq!(root.list().unwrap(), vec!["full", "half"]);
        let half = root.open("half").unwrap().expect("found in pids only");
        half.remove().unwrap();
        assert!(!t.exists("pids/hako/half"));
        let full = root.open("full").unwrap().unwrap();
        assert_eq!(full.dirs().len(), 4);
        full.remove().unwrap();
        for h in ["cpu", "cpuacct", "memory", "pids"] {
            assert!(!t.exists(&format!("{h}/hako/full")), "{h}");
        }
        assert!(root.remove_parent_if_empty().unwrap());
        for h in ["cpu", "cpuacct", "memory", "pids"] {
            assert!(!t.exists(&format!("{h}/hako")), "{h}");
        }
    }

    /// A group that already existed (left over) gets every limit rewritten, the unset ones to
    /// "unlimited"; a fresh one only the limits that are set.
    #[test]
    fn create_resets_a_leftover_group_in_full() {
        let t = FakeTree::v2(V2_HOST);
        let root = t.root("hako");
        for (f, v) in [
            ("memory.max", "1234"),
            ("pids.max", "7"),
            ("cpu.max", "1000 20000"),
        ] {
            t.write(&format!("hako/left/{f}"), v);
        }
        let cg = root.create("left", &CgroupLimits::default()).unwrap();
        assert_eq!(cg.limits().unwrap(), CgroupLimits::default());
        assert_eq!(t.read("hako/left/memory.max"), "max");
        assert_eq!(t.read("hako/left/pids.max"), "max");
        assert!(t.read("hako/left/cpu.max").starts_with("max "));

        root.create(
            "new",
            &CgroupLimits {
                pids: Some(9),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(t.read("hako/new/pids.max"), "9");
        assert!(
            !t.exists("hako/new/memory.max"),
            "an unset limit is not written"
        );
    }

    /// A creation that fails in one hierarchy leaves nothing in the others.
    #[test]
    fn failed_v1_creation_leaves_no_directory_behind() {
        let t = FakeTree::v1(&["cpu", "cpuacct", "memory", "pids"]);
        let root = t.root("hako");
        // The memory hierarchy's parent turns into a regular file: mkdir fails there.
        std::fs::remove_dir(t.join("memory/hako")).unwrap();
        t.write("memory/hako", "");
        assert!(root.create("app-1", &CgroupLimits::default()).is_err());
        for c in ["cpu", "cpuacct", "pids"] {
            let d = t.join(c).join("hako/app-1");
            assert!(!d.exists(), "{} left behind", d.display());
        }
    }

    #[test]
    fn v1_without_pids_controller_rejects_a_pids_limit() {
        let t = FakeTree::v1(&["memory"]);
        let root = t.root("hako");
        let err = root
            .create(
                "p",
                &CgroupLimits {
                    pids: Some(3),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                CgroupError::NoController {
                    controller: "pids",
                    ..
                }
            ),
            "{err}"
        );
        assert!(!t.exists("memory/hako/p"), "failed create must clean up");
    }

    #[test]
    fn empty_root_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        assert!(matches!(
            CgroupRoot::detect(t.path(), "hako"),
            Err(CgroupError::NoHierarchy(_))
        ));
        assert!(matches!(
            CgroupRoot::detect(Path::new("/nonexistent/cgroup"), "hako"),
            Err(CgroupError::Io { .. })
        ));
        let t = FakeTree::v2(V2_HOST);
        assert!(matches!(
            CgroupRoot::detect(t.path(), ".."),
            Err(CgroupError::InvalidName(_))
        ));
    }
}
