//! cgroup v1: one directory per group in each controller's hierarchy.
//!
//! Where cgroups-rs (0.3.4) is used, and why, operation by operation. Its controllers are
//! built on the group's directory (`CpuController::new(dir, false)`, ...), so they work the same
//! on the real hierarchy and on a fake tree in tests — one implementation either way:
//! - cpu limits (`cpu.cfs_period_us`, `cpu.cfs_quota_us`), written and read back: cgroups-rs,
//!   which writes the kernel's formats and reports every write error;
//! - memory limits, written: cgroups-rs (`set_limit`, `set_memswap_limit`, `set_soft_limit` —
//!   on v1 they write the right files and report errors, e.g. EBUSY when the limit is lowered
//!   below what the kernel can reclaim); the order of the memsw and memory writes is ours;
//! - memory limits, read back: the file layer (cgroups-rs reads them only as part of
//!   `memory_stat`, eleven files, with read errors turned into zero limits);
//! - `pids.max`, written and read back: cgroups-rs;
//! - freeze and thaw: cgroups-rs's freezer (`freezer.state` FROZEN/THAWED, FREEZING parsed);
//!   the wait until the kernel reports FROZEN is ours;
//! - create and remove: the file layer (v1 `Cgroup::create` logs and swallows `mkdir`
//!   errors, and needs its own parse of `/proc/self/mountinfo`, so it cannot serve a fake tree);
//! - statistics: the file layer (the governor's hot path: cgroups-rs's v1 readers open 19
//!   files, `memory.stat`, `numa_stat`, ..., and measured 255 µs per call against 59 µs);
//! - pids and placement (`cgroup.procs`), hierarchy discovery: the file layer;
//! - `cpu.shares` (the governor's CPU weight, written every time contention starts or ends):
//!   the file layer, one small write on the hot path beside the statistics.
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cgroups_rs::cpu::CpuController;
use cgroups_rs::freezer::{FreezerController, FreezerState};
use cgroups_rs::memory::MemController;
use cgroups_rs::pid::PidController;
use cgroups_rs::MaxValue;

use super::common::{
    absent, cpu_quota, create_dir, io_err, is_cgroupfs, procs, read_key, read_limit, read_num,
    remove_group, rs_err, rs_i64, rs_opt, unhuge, wait_until, write,
};
use super::types::{
    cpu_shares_of_weight, cpu_weight_of_shares, CgroupAttach, CgroupError, CgroupLimits,
    CgroupManager, CgroupOptions, CgroupPressure, CgroupStats, CgroupVersion, CPU_PERIOD_US,
};

/// v1 controllers hako uses by default, in the order they are attached. No freezer: every
/// container is the init of its own pid namespace, so killing it kills every process of the
/// group at once (nothing can fork meanwhile), and each hierarchy costs every boot a directory
/// to create, join and remove. [`CgroupOptions::v1_freezer`] adds it.
const CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "pids"];

/// The parent group in each v1 hierarchy.
#[derive(Debug, Clone)]
pub(super) struct V1Hierarchy {
    /// (controller, directory of the parent group in that controller's hierarchy).
    pub(super) parents: Arc<[(String, PathBuf)]>,
    /// Real cgroupfs (false: a fake tree).
    pub(super) real: bool,
}

impl V1Hierarchy {
    /// Finds the hierarchy of each controller under `mount_root` and creates the parent group
    /// in each; [`CgroupError::NoHierarchy`] if there is none.
    pub(super) fn detect(
        mount_root: &Path,
        parent: &str,
        opts: &CgroupOptions,
    ) -> Result<Self, CgroupError> {
        let mut parents = Vec::new();
        let mut real = true;
        // Resolved once; each hierarchy below is then one `readlink` away.
        let root = mount_root
            .canonicalize()
            .map_err(io_err("canonicalize", mount_root))?;
        let freezer = opts.v1_freezer.then_some("freezer");
        for c in CONTROLLERS.iter().copied().chain(freezer) {
            let Some(h) = hierarchy_dir(&root, c)? else {
                continue;
            };
            real &= is_cgroupfs(&h);
            let dir = h.join(parent);
            let _ = create_dir(&dir)?;
            parents.push((c.to_owned(), dir));
        }
        if parents.is_empty() {
            return Err(CgroupError::NoHierarchy(mount_root.to_owned()));
        }
        Ok(Self {
            parents: parents.into(),
            real,
        })
    }

    pub(super) fn group(&self, name: &str) -> V1Group {
        V1Group {
            name: name.to_owned(),
            parents: self.parents.clone(),
            real: self.real,
        }
    }
}

/// The directory of the v1 hierarchy `controller` under the canonical mount root `root`, with
/// the usual symlink there (`cpu -> cpu,cpuacct`) resolved, so that controllers sharing a
/// hierarchy share a directory; `None` if there is no such hierarchy.
fn hierarchy_dir(root: &Path, controller: &str) -> Result<Option<PathBuf>, CgroupError> {
    let h = root.join(controller);
    let dir = match std::fs::read_link(&h) {
        // A sibling name (the common case): no further lookups needed.
        Ok(t)
            if matches!(
                t.components().collect::<Vec<_>>()[..],
                [Component::Normal(_)]
            ) =>
        {
            root.join(t)
        }
        Ok(_) => match h.canonicalize() {
            Ok(d) => d,
            Err(e) if absent(&e) => return Ok(None),
            Err(e) => return Err(io_err("canonicalize", &h)(e)),
        },
        // Not a symlink.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => h,
        Err(e) if absent(&e) => return Ok(None),
        Err(e) => return Err(io_err("readlink", &h)(e)),
    };
    Ok(dir.is_dir().then_some(dir))
}

/// v1 keeps `memory.memsw.limit_in_bytes >= memory.limit_in_bytes` at all times (EINVAL
/// otherwise): when the limit goes up (or to unlimited) memsw is written first, when it goes
/// down the limit is written first. `None` = unlimited.
pub(super) fn memsw_first(current: Option<u64>, new: Option<u64>) -> bool {
    match (current, new) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(c), Some(n)) => n >= c,
    }
}

fn from_rs_max(v: MaxValue) -> Option<u64> {
    match v {
        MaxValue::Max => None,
        MaxValue::Value(v) => u64::try_from(v).ok().and_then(unhuge),
    }
}

/// One group, a directory in each hierarchy.
#[derive(Debug)]
pub(super) struct V1Group {
    name: String,
    parents: Arc<[(String, PathBuf)]>,
    real: bool,
}

impl V1Group {
    /// The group's directory in the hierarchy of `controller`, if the host has it.
    fn dir(&self, controller: &str) -> Option<PathBuf> {
        self.parents
            .iter()
            .find(|(c, _)| c == controller)
            .map(|(_, p)| p.join(&self.name))
    }

    /// An interface file, in the hierarchy of the controller named by its prefix.
    fn file(&self, file: &str) -> Option<PathBuf> {
        self.dir(file.split('.').next().unwrap_or(""))
            .map(|d| d.join(file))
    }

    fn set_cpu(&self, l: &CgroupLimits, fresh: bool) -> Result<(), CgroupError> {
        match self.dir("cpu") {
            // Unlimited already.
            Some(_) if l.cpu.is_none() && fresh => Ok(()),
            Some(d) => {
                let c = CpuController::new(d.clone(), false);
                c.set_cfs_period(CPU_PERIOD_US)
                    .map_err(rs_err("write cpu.cfs_period_us", &d))?;
                c.set_cfs_quota(l.cpu.map_or(-1, |c| rs_i64(Some(cpu_quota(c)))))
                    .map_err(rs_err("write cpu.cfs_quota_us", &d))
            }
            None if l.cpu.is_some() => Err(CgroupError::NoController {
                what: "cpu",
                controller: "cpu",
            }),
            None => Ok(()),
        }
    }

    /// With swap accounting the memsw limit follows the memory limit (no swapping around it,
    /// as `memory.swap.max = 0` on v2), written in the order the kernel accepts.
    fn set_memory(&self, l: &CgroupLimits, fresh: bool) -> Result<(), CgroupError> {
        let wanted = l.memory_max.is_some() || l.memory_high.is_some();
        let Some(d) = self.dir("memory") else {
            return match wanted {
                true => Err(CgroupError::NoController {
                    what: "memory",
                    controller: "memory",
                }),
                false => Ok(()),
            };
        };
        if !wanted && fresh {
            return Ok(());
        }
        let m = MemController::new(d.clone(), false);
        let max = rs_i64(l.memory_max);
        let limit = || {
            m.set_limit(max)
                .map_err(rs_err("write memory.limit_in_bytes", &d))
        };
        let memsw = || {
            m.set_memswap_limit(max)
                .map_err(rs_err("write memory.memsw.limit_in_bytes", &d))
        };
        if d.join("memory.memsw.limit_in_bytes").exists() {
            let cur = read_limit(&d.join("memory.limit_in_bytes"))?;
            if memsw_first(cur, l.memory_max) {
                memsw()?;
                limit()?;
            } else {
                limit()?;
                memsw()?;
            }
        } else {
            limit()?;
        }
        m.set_soft_limit(rs_i64(l.memory_high))
            .map_err(rs_err("write memory.soft_limit_in_bytes", &d))
    }

    fn set_pids(&self, l: &CgroupLimits, fresh: bool) -> Result<(), CgroupError> {
        match self.dir("pids") {
            Some(_) if l.pids.is_none() && fresh => Ok(()),
            Some(d) => {
                let max = l
                    .pids
                    .map_or(MaxValue::Max, |v| MaxValue::Value(rs_i64(Some(v))));
                PidController::new(d.clone(), false)
                    .set_pid_max(max)
                    .map_err(rs_err("write pids.max", &d))
            }
            None if l.pids.is_some() => Err(CgroupError::NoController {
                what: "pids",
                controller: "pids",
            }),
            None => Ok(()),
        }
    }

    fn freezer(&self) -> Result<(PathBuf, FreezerController), CgroupError> {
        let d = self.dir("freezer").ok_or(CgroupError::NoController {
            what: "freeze",
            controller: "freezer",
        })?;
        let f = FreezerController::new(d.clone(), false);
        Ok((d, f))
    }

    fn set_frozen(&self, on: bool, timeout: Duration) -> Result<(), CgroupError> {
        let (d, f) = self.freezer()?;
        let (res, what) = if on {
            (f.freeze(), "FROZEN")
        } else {
            (f.thaw(), "THAWED")
        };
        res.map_err(rs_err("write freezer.state", &d))?;
        // The kernel reports FREEZING until every task has stopped.
        wait_until(&d.join("freezer.state"), what, timeout, || {
            let state = f.state().map_err(rs_err("read freezer.state", &d))?;
            Ok(match state {
                FreezerState::Frozen => on,
                FreezerState::Thawed => !on,
                FreezerState::Freezing => false,
            })
        })
    }
}

impl CgroupManager for V1Group {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self
            .parents
            .iter()
            .map(|(_, p)| p.join(&self.name))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn create(&self) -> Result<bool, CgroupError> {
        let mut fresh = true;
        for d in self.dirs() {
            fresh &= create_dir(&d)?;
        }
        Ok(fresh)
    }

    fn set_limits(&self, l: &CgroupLimits, fresh: bool) -> Result<(), CgroupError> {
        self.set_cpu(l, fresh)?;
        self.set_memory(l, fresh)?;
        self.set_pids(l, fresh)
    }

    fn limits(&self) -> Result<CgroupLimits, CgroupError> {
        let mut l = CgroupLimits::default();
        if let Some(d) = self.dir("cpu") {
            let c = CpuController::new(d.clone(), false);
            if let (Some(q), Some(per)) = (
                rs_opt(c.cfs_quota(), "read cpu.cfs_quota_us", &d)?,
                rs_opt(c.cfs_period(), "read cpu.cfs_period_us", &d)?,
            ) {
                l.cpu = (q >= 0).then(|| q as f64 / per as f64);
            }
        }
        if let Some(d) = self.dir("memory") {
            l.memory_max = read_limit(&d.join("memory.limit_in_bytes"))?;
            l.memory_high = read_limit(&d.join("memory.soft_limit_in_bytes"))?;
        }
        if let Some(d) = self.dir("pids") {
            let c = PidController::new(d.clone(), false);
            l.pids = rs_opt(c.get_pid_max(), "read pids.max", &d)?.and_then(from_rs_max);
        }
        Ok(l)
    }

    fn set_cpu_weight(&self, weight: u32) -> Result<(), CgroupError> {
        let d = self.dir("cpu").ok_or(CgroupError::NoController {
            what: "cpu weight",
            controller: "cpu",
        })?;
        write(
            &d.join("cpu.shares"),
            &cpu_shares_of_weight(weight).to_string(),
        )
    }

    fn cpu_weight(&self) -> Result<Option<u32>, CgroupError> {
        match self.file("cpu.shares") {
            Some(p) => Ok(read_num(&p)?.map(cpu_weight_of_shares)),
            None => Ok(None),
        }
    }

    fn attach(&self) -> CgroupAttach {
        CgroupAttach::V1 {
            procs: self
                .dirs()
                .into_iter()
                .map(|d| d.join("cgroup.procs"))
                .collect(),
        }
    }

    fn freeze(&self, timeout: Duration) -> Result<(), CgroupError> {
        self.set_frozen(true, timeout)
    }

    fn thaw(&self, timeout: Duration) -> Result<(), CgroupError> {
        self.set_frozen(false, timeout)
    }

    fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let num = |f: &str| self.file(f).map_or(Ok(None), |p| read_num(&p));
        let oom_kills = match self.file("memory.oom_control") {
            Some(p) => match read_key(&p, "oom_kill")? {
                Some(n) => n,
                // Before Linux 4.13: at least one kill if the limit was ever hit.
                None => num("memory.failcnt")?.map_or(0, |f| u64::from(f > 0)),
            },
            None => 0,
        };
        let (nr_throttled, throttled_ns) = match self.file("cpu.stat") {
            Some(p) => (
                read_key(&p, "nr_throttled")?.unwrap_or(0),
                read_key(&p, "throttled_time")?.unwrap_or(0),
            ),
            None => (0, 0),
        };
        Ok(CgroupStats {
            cpu_usage_usec: num("cpuacct.usage")?.unwrap_or(0) / 1000,
            nr_throttled,
            throttled_usec: throttled_ns / 1000,
            memory_current: num("memory.usage_in_bytes")?.unwrap_or(0),
            oom_kills,
            pids_current: num("pids.current")?.unwrap_or(0),
        })
    }

    /// v1 has no per-group pressure (PSI is a v2 interface).
    fn pressure(&self) -> Result<Option<CgroupPressure>, CgroupError> {
        Ok(None)
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        procs(&self.dirs())
    }

    /// SIGKILL to each pid, under the freezer when the group has one (with the default
    /// controllers it does not, see `CONTROLLERS`).
    fn kill_all(&self) -> Result<(), CgroupError> {
        let freezer = self.freezer().ok().filter(|_| self.real);
        super::common::kill_each(self, |on| {
            if let Some((d, f)) = &freezer {
                let r = if on { f.freeze() } else { f.thaw() };
                r.map_err(rs_err("write freezer.state", d))?;
            }
            Ok(())
        })
    }

    fn remove(&self) -> Result<(), CgroupError> {
        remove_group(self, self.real)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeTree;
    use super::*;

    const ALL: &[&str] = &["cpu", "cpuacct", "memory", "pids"];

    #[test]
    fn v1_layout_uses_one_hierarchy_per_controller() {
        let t = FakeTree::v1(&["cpu", "memory", "pids"]);
        let root = t.root("hako");
        assert_eq!(root.version(), CgroupVersion::V1);
        let limits = CgroupLimits {
            cpu: Some(1.5),
            memory_max: Some(1 << 30),
            memory_high: None,
            pids: Some(9),
        };
        let cg = root.create("i", &limits).unwrap();
        assert_eq!(t.read("cpu/hako/i/cpu.cfs_quota_us"), "30000");
        assert_eq!(t.read("cpu/hako/i/cpu.cfs_period_us"), "20000");
        assert_eq!(t.read("memory/hako/i/memory.limit_in_bytes"), "1073741824");
        assert_eq!(t.read("memory/hako/i/memory.soft_limit_in_bytes"), "-1");
        assert_eq!(t.read("pids/hako/i/pids.max"), "9");
        assert_eq!(cg.limits().unwrap(), limits);
        match cg.attach() {
            CgroupAttach::V1 { procs } => assert_eq!(procs.len(), 3),
            other => panic!("unexpected {other:?}"),
        }
        cg.remove().unwrap();
        assert!(!t.exists("memory/hako/i"));
    }

    /// `cpu -> cpu,cpuacct` (the usual symlinks of a co-mounted hierarchy): one directory.
    #[test]
    fn v1_co_mounted_controllers_share_one_directory() {
        let t = FakeTree::v1(&["cpu,cpuacct", "memory"]);
        std::os::unix::fs::symlink("cpu,cpuacct", t.join("cpu")).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", t.join("cpuacct")).unwrap();
        let root = t.root("hako");
        let cg = root
            .create(
                "c",
                &CgroupLimits {
                    cpu: Some(0.25),
                    ..Default::default()
                },
            )
            .unwrap();
        let base = t.path().canonicalize().unwrap();
        assert_eq!(
            cg.dirs(),
            vec![base.join("cpu,cpuacct/hako/c"), base.join("memory/hako/c")]
        );
        assert_eq!(t.read("cpu,cpuacct/hako/c/cpu.cfs_quota_us"), "5000");
        t.write("cpu,cpuacct/hako/c/cpuacct.usage", "7000000\n");
        assert_eq!(cg.stats().unwrap().cpu_usage_usec, 7000);
        cg.remove().unwrap();
    }

    #[test]
    fn v1_memsw_follows_the_memory_limit_when_swap_accounting_exists() {
        let t = FakeTree::v1(&["memory"]);
        let root = t.root("hako");
        t.write(
            "memory/hako/m/memory.memsw.limit_in_bytes",
            "9223372036854771712",
        );
        let limits = CgroupLimits {
            memory_max: Some(32 << 20),
            ..Default::default()
        };
        let cg = root.create("m", &limits).unwrap();
        assert_eq!(
            t.read("memory/hako/m/memory.memsw.limit_in_bytes"),
            "33554432"
        );
        assert_eq!(t.read("memory/hako/m/memory.limit_in_bytes"), "33554432");
        cg.set_limits(&CgroupLimits::default()).unwrap();
        assert_eq!(t.read("memory/hako/m/memory.memsw.limit_in_bytes"), "-1");
        assert_eq!(cg.limits().unwrap(), CgroupLimits::default());
    }

    #[test]
    fn memsw_is_written_first_exactly_when_the_limit_does_not_go_down() {
        let mib = |n: u64| Some(n << 20);
        assert!(memsw_first(mib(16), mib(64)), "raise");
        assert!(memsw_first(mib(16), mib(16)), "same");
        assert!(memsw_first(mib(16), None), "to unlimited");
        assert!(memsw_first(None, None));
        assert!(!memsw_first(mib(64), mib(16)), "lower");
        assert!(!memsw_first(None, mib(16)), "from unlimited");
    }

    /// A leftover v1 group gets every limit rewritten, the unset ones to "unlimited".
    #[test]
    fn v1_leftover_group_is_reset_in_full() {
        let t = FakeTree::v1(ALL);
        let root = t.root("hako");
        t.write("cpu/hako/old/cpu.cfs_quota_us", "1000");
        t.write("memory/hako/old/memory.limit_in_bytes", "4096");
        t.write("memory/hako/old/memory.soft_limit_in_bytes", "2048");
        t.write("pids/hako/old/pids.max", "3");
        let cg = root.create("old", &CgroupLimits::default()).unwrap();
        assert_eq!(t.read("cpu/hako/old/cpu.cfs_quota_us"), "-1");
        assert_eq!(t.read("memory/hako/old/memory.limit_in_bytes"), "-1");
        assert_eq!(t.read("memory/hako/old/memory.soft_limit_in_bytes"), "-1");
        assert_eq!(t.read("pids/hako/old/pids.max"), "max");
        assert_eq!(cg.limits().unwrap(), CgroupLimits::default());
        // A fresh group: nothing written for unset limits.
        root.create("new", &CgroupLimits::default()).unwrap();
        for f in [
            "cpu/hako/new/cpu.cfs_quota_us",
            "memory/hako/new/memory.limit_in_bytes",
            "pids/hako/new/pids.max",
        ] {
            assert!(!t.exists(f), "{f}");
        }
    }

    #[test]
    fn v1_cpu_weight_is_written_as_cpu_shares_and_read_back_on_the_v2_scale() {
        let t = FakeTree::v1(ALL);
        let root = t.root("hako");
        let cg = root.create("w", &CgroupLimits::default()).unwrap();
        assert_eq!(cg.cpu_weight().unwrap(), None, "no file yet");
        cg.set_cpu_weight(100).unwrap();
        assert_eq!(t.read("cpu/hako/w/cpu.shares"), "1024", "v1's default");
        cg.set_cpu_weight(5).unwrap();
        assert_eq!(t.read("cpu/hako/w/cpu.shares"), "51");
        assert_eq!(cg.cpu_weight().unwrap(), Some(5));
        cg.set_cpu_weight(0).unwrap();
        assert_eq!(t.read("cpu/hako/w/cpu.shares"), "10", "weight 1 at least");
        t.write("cpu/hako/w/cpu.shares", "2\n");
        assert_eq!(cg.cpu_weight().unwrap(), Some(1));
        // No cpu hierarchy: a typed error naming the controller.
        let t = FakeTree::v1(&["memory"]);
        let cg = t
            .root("hako")
            .create("w", &CgroupLimits::default())
            .unwrap();
        assert!(matches!(
            cg.set_cpu_weight(50),
            Err(CgroupError::NoController {
                controller: "cpu",
                ..
            })
        ));
    }

    #[test]
    fn v1_stats_parse_kernel_files_and_pids_span_hierarchies() {
        let t = FakeTree::v1(ALL);
        let root = t.root("hako");
        let cg = root.create("st", &CgroupLimits::default()).unwrap();
        t.write("cpuacct/hako/st/cpuacct.usage", "12345678\n");
        t.write("memory/hako/st/memory.usage_in_bytes", "4096000\n");
        t.write(
            "memory/hako/st/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        t.write("pids/hako/st/pids.current", "3\n");
        t.write(
            "cpu/hako/st/cpu.stat",
            "nr_periods 40\nnr_throttled 4\nthrottled_time 2500000\n",
        );
        t.write("cpu/hako/st/cgroup.procs", "42\n7\n");
        t.write("memory/hako/st/cgroup.procs", "7\n42\n");
        t.write("pids/hako/st/cgroup.procs", "42\n");
        assert_eq!(
            cg.stats().unwrap(),
            CgroupStats {
                cpu_usage_usec: 12345,
                memory_current: 4_096_000,
                oom_kills: 2,
                pids_current: 3,
                nr_throttled: 4,
                throttled_usec: 2500,
            }
        );
        assert_eq!(cg.pids().unwrap(), vec![7, 42]);
        // Before Linux 4.13 there is no oom_kill line: a hit limit counts as one kill.
        t.write("memory/hako/st/memory.oom_control", "oom_kill_disable 0\n");
        t.write("memory/hako/st/memory.failcnt", "5\n");
        assert_eq!(cg.stats().unwrap().oom_kills, 1);
        assert_eq!(cg.pressure().unwrap(), None, "no per-group PSI on v1");
    }

    #[test]
    fn v1_freezer_is_opt_in_and_freeze_writes_freezer_state() {
        // Default: the freezer hierarchy is left alone, and freezing is refused.
        let t = FakeTree::v1(&["cpu", "cpuacct", "memory", "pids", "freezer"]);
        let cg = t
            .root("hako")
            .create("d", &CgroupLimits::default())
            .unwrap();
        assert!(!t.exists("freezer/hako"), "default layout unchanged");
        match cg.attach() {
            CgroupAttach::V1 { procs } => assert_eq!(procs.len(), 4),
            other => panic!("unexpected {other:?}"),
        }
        let err = cg.freeze().unwrap_err();
        assert!(
            matches!(
                err,
                CgroupError::NoController {
                    controller: "freezer",
                    ..
                }
            ),
            "{err}"
        );
        cg.remove().unwrap();

        let opts = CgroupOptions { v1_freezer: true };
        let root = t.root_with("hako", &opts);
        let cg = root.create("f", &CgroupLimits::default()).unwrap();
        assert!(t.exists("freezer/hako/f"));
        match cg.attach() {
            CgroupAttach::V1 { procs } => {
                assert_eq!(procs.len(), 5);
                assert!(procs.contains(&t.join("freezer/hako/f/cgroup.procs")));
            }
            other => panic!("unexpected {other:?}"),
        }
        cg.freeze().unwrap();
        assert_eq!(t.read("freezer/hako/f/freezer.state"), "FROZEN");
        cg.thaw().unwrap();
        assert_eq!(t.read("freezer/hako/f/freezer.state"), "THAWED");
        // A state the kernel never reaches (stuck FREEZING) is a timeout, not a success.
        let d = t.join("freezer/hako/f");
        let f = FreezerController::new(d.clone(), false);
        std::fs::write(d.join("freezer.state"), "FREEZING").unwrap();
        assert!(matches!(f.state(), Ok(FreezerState::Freezing)));
        let err = wait_until(&d, "FROZEN", Duration::from_millis(20), || {
            Ok(matches!(f.state(), Ok(FreezerState::Frozen)))
        })
        .unwrap_err();
        assert!(matches!(err, CgroupError::Timeout { .. }), "{err}");
        cg.remove().unwrap();
        assert!(!t.exists("freezer/hako/f"));
        assert!(root.remove_parent_if_empty().unwrap());
        assert!(!t.exists("freezer/hako"));
    }
}
