//! cgroup v2: one directory per group in the unified hierarchy, written through the file layer
//! for every operation.
//!
//! Why not cgroups-rs here (0.3.4), operation by operation:
//! - create: `Cgroup::new` with controllers rewrites the parent's `cgroup.subtree_control`
//!   on every creation; a plain `mkdir` is all a group needs once `detect` enabled them;
//! - limits: its v2 `set_soft_limit` writes `memory.low` (a protection), not `memory.high`, and
//!   `set_memswap_limit` writes a memory+swap value into `memory.swap.max` (swap only); its
//!   `get_mem` fails unless `memory.low` and `memory.min` exist too;
//! - freeze: it writes `cgroup.freeze` but reads the state back from that same file (the
//!   request), not from `cgroup.events` (the effect), so it cannot wait for the freeze;
//! - pressure: it has no PSI reader;
//! - remove: its v2 `delete` tries `rmdir` once, and exiting tasks may still pin the group.
//!
//! The formats follow the kernel's `Documentation/admin-guide/cgroup-v2.rst`.
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::common::{
    cpu_quota, fmt_limit, io_err, is_cgroupfs, keyed_value, parse_limit, procs, read_key,
    read_limit, read_num, read_opt, remove_group, wait_until, write,
};
use super::types::{
    CgroupAttach, CgroupError, CgroupLimits, CgroupManager, CgroupPressure, CgroupStats,
    CgroupVersion, CPU_PERIOD_US, CPU_WEIGHT_MAX, CPU_WEIGHT_MIN,
};

/// Controllers hako enables for its groups (those the host has).
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

/// The parent group in the unified hierarchy.
#[derive(Debug, Clone)]
pub(super) struct V2Hierarchy {
    /// The parent group's directory.
    pub(super) parent: PathBuf,
    /// Real cgroupfs (false: a fake tree).
    pub(super) real: bool,
}

impl V2Hierarchy {
    /// `mount_root` is a v2 hierarchy when it has `cgroup.controllers`.
    pub(super) fn is_v2(mount_root: &Path) -> bool {
        mount_root.join("cgroup.controllers").exists()
    }

    /// Creates the parent group and enables hako's controllers in the root and in it.
    pub(super) fn detect(mount_root: &Path, parent: &str) -> Result<Self, CgroupError> {
        let f = mount_root.join("cgroup.controllers");
        let available = fs::read_to_string(&f).map_err(io_err("read", &f))?;
        let controllers: Vec<&str> = available
            .split_whitespace()
            .filter(|c| CONTROLLERS.contains(c))
            .collect();
        let dir = mount_root.join(parent);
        let _ = super::common::create_dir(&dir)?;
        if !controllers.is_empty() {
            let line = controllers
                .iter()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(" ");
            for d in [mount_root, dir.as_path()] {
                write(&d.join("cgroup.subtree_control"), &line)?;
            }
        }
        Ok(Self {
            parent: dir,
            real: is_cgroupfs(mount_root),
        })
    }

    pub(super) fn group(&self, name: &str) -> V2Group {
        V2Group {
            dir: self.parent.join(name),
            real: self.real,
        }
    }
}

/// One group of the unified hierarchy.
#[derive(Debug)]
pub(super) struct V2Group {
    dir: PathBuf,
    real: bool,
}

impl V2Group {
    fn file(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    /// `1` when `cgroup.events` says `frozen 1`.
    fn frozen(&self) -> Result<bool, CgroupError> {
        Ok(read_key(&self.file("cgroup.events"), "frozen")? == Some(1))
    }

    fn set_frozen(&self, on: bool, timeout: Duration) -> Result<(), CgroupError> {
        write(&self.file("cgroup.freeze"), if on { "1" } else { "0" })?;
        let events = self.file("cgroup.events");
        let what = if on { "frozen 1" } else { "frozen 0" };
        wait_until(&events, what, timeout, || Ok(self.frozen()? == on))
    }
}

/// `some`/`full` `total=` of a PSI file (µs); zeros for a missing `full` line (cpu before
/// Linux 5.13).
fn psi_totals(path: &Path, text: &str) -> Result<(u64, u64), CgroupError> {
    let mut out = (0, 0);
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let slot = match it.next() {
            Some("some") => &mut out.0,
            Some("full") => &mut out.1,
            _ => continue,
        };
        let total = it
            .find_map(|kv| kv.strip_prefix("total="))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| CgroupError::Parse {
                path: path.to_owned(),
                value: line.to_owned(),
            })?;
        *slot = total;
    }
    Ok(out)
}

impl CgroupManager for V2Group {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn dirs(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    fn create(&self) -> Result<bool, CgroupError> {
        super::common::create_dir(&self.dir)
    }

    fn set_limits(&self, l: &CgroupLimits, fresh: bool) -> Result<(), CgroupError> {
        let stale = !fresh;
        let cpu = self.file("cpu.max");
        if l.cpu.is_some() || stale && cpu.exists() {
            let q = l
                .cpu
                .map_or_else(|| "max".to_owned(), |c| cpu_quota(c).to_string());
            write(&cpu, &format!("{q} {CPU_PERIOD_US}"))?;
        }
        for (file, v) in [("memory.max", l.memory_max), ("memory.high", l.memory_high)] {
            let p = self.file(file);
            if v.is_some() || stale && p.exists() {
                write(&p, &fmt_limit(v))?;
            }
        }
        // No swapping around the memory limit: a hog is killed, not slowed to a crawl.
        if l.memory_max.is_some() || stale {
            let p = self.file("memory.swap.max");
            if p.exists() {
                write(&p, if l.memory_max.is_some() { "0" } else { "max" })?;
            }
        }
        let p = self.file("pids.max");
        if l.pids.is_some() || stale && p.exists() {
            write(&p, &fmt_limit(l.pids))?;
        }
        Ok(())
    }

    fn limits(&self) -> Result<CgroupLimits, CgroupError> {
        let mut l = CgroupLimits::default();
        let p = self.file("cpu.max");
        if let Some(s) = read_opt(&p)? {
            let mut it = s.split_whitespace();
            let (q, per) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            let per: f64 = per.parse().map_err(|_| CgroupError::Parse {
                path: p.clone(),
                value: s.clone(),
            })?;
            l.cpu = parse_limit(&p, q)?.map(|q| q as f64 / per);
        }
        l.memory_max = read_limit(&self.file("memory.max"))?;
        l.memory_high = read_limit(&self.file("memory.high"))?;
        l.pids = read_limit(&self.file("pids.max"))?;
        Ok(l)
    }

    fn set_cpu_weight(&self, weight: u32) -> Result<(), CgroupError> {
        let w = weight.clamp(CPU_WEIGHT_MIN, CPU_WEIGHT_MAX);
        write(&self.file("cpu.weight"), &w.to_string())
    }

    fn cpu_weight(&self) -> Result<Option<u32>, CgroupError> {
        let p = self.file("cpu.weight");
        read_num(&p)?
            .map(|w| {
                u32::try_from(w).map_err(|_| CgroupError::Parse {
                    path: p.clone(),
                    value: w.to_string(),
                })
            })
            .transpose()
    }

    fn attach(&self) -> CgroupAttach {
        CgroupAttach::V2 {
            dir: self.dir.clone(),
        }
    }

    fn freeze(&self, timeout: Duration) -> Result<(), CgroupError> {
        self.set_frozen(true, timeout)
    }

    fn thaw(&self, timeout: Duration) -> Result<(), CgroupError> {
        self.set_frozen(false, timeout)
    }

    fn stats(&self) -> Result<CgroupStats, CgroupError> {
        // One read of cpu.stat for the three counters.
        let stat = self.file("cpu.stat");
        let text = read_opt(&stat)?.unwrap_or_default();
        let key = |k: &str| keyed_value(&stat, &text, k).map(|v| v.unwrap_or(0));
        Ok(CgroupStats {
            cpu_usage_usec: key("usage_usec")?,
            nr_throttled: key("nr_throttled")?,
            throttled_usec: key("throttled_usec")?,
            memory_current: read_num(&self.file("memory.current"))?.unwrap_or(0),
            oom_kills: read_key(&self.file("memory.events"), "oom_kill")?.unwrap_or(0),
            pids_current: read_num(&self.file("pids.current"))?.unwrap_or(0),
        })
    }

    fn pressure(&self) -> Result<Option<CgroupPressure>, CgroupError> {
        let (cpu, mem) = (self.file("cpu.pressure"), self.file("memory.pressure"));
        let (c, m) = (read_opt(&cpu)?, read_opt(&mem)?);
        if c.is_none() && m.is_none() {
            // No PSI (a kernel without CONFIG_PSI, or booted with psi=0).
            return Ok(None);
        }
        let (cpu_some_usec, cpu_full_usec) = match c {
            Some(s) => psi_totals(&cpu, &s)?,
            None => (0, 0),
        };
        let (memory_some_usec, memory_full_usec) = match m {
            Some(s) => psi_totals(&mem, &s)?,
            None => (0, 0),
        };
        Ok(Some(CgroupPressure {
            cpu_some_usec,
            cpu_full_usec,
            memory_some_usec,
            memory_full_usec,
        }))
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        procs(std::slice::from_ref(&self.dir))
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        let kill = self.file("cgroup.kill");
        if self.real && kill.exists() {
            return write(&kill, "1");
        }
        // No cgroup.kill before Linux 5.14 (or a fake tree): signal each pid.
        super::common::kill_each(self, |_| Ok(()))
    }

    fn remove(&self) -> Result<(), CgroupError> {
        remove_group(self, self.real)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeTree;
    use super::super::tests::V2_HOST;
    use super::super::types::CPU_WEIGHT_DEFAULT;
    use super::super::CgroupRoot;
    use super::*;

    fn tree() -> (FakeTree, CgroupRoot) {
        let t = FakeTree::v2(V2_HOST);
        let root = t.root("hako");
        (t, root)
    }

    #[test]
    fn v2_create_writes_limits_in_kernel_formats_and_reads_them_back() {
        let (t, root) = tree();
        let limits = CgroupLimits {
            cpu: Some(0.5),
            memory_max: Some(64 << 20),
            memory_high: Some(48 << 20),
            pids: Some(32),
        };
        let cg = root.create("app-1", &limits).unwrap();
        assert_eq!(t.read("hako/app-1/cpu.max"), "10000 20000");
        assert_eq!(t.read("hako/app-1/memory.max"), "67108864");
        assert_eq!(t.read("hako/app-1/memory.high"), "50331648");
        assert_eq!(t.read("hako/app-1/pids.max"), "32");
        assert_eq!(cg.limits().unwrap(), limits);
        assert_eq!(
            cg.attach(),
            CgroupAttach::V2 {
                dir: t.join("hako/app-1")
            }
        );

        // Relaxing to unlimited writes "max".
        cg.set_limits(&CgroupLimits::default()).unwrap();
        assert_eq!(t.read("hako/app-1/cpu.max"), "max 20000");
        assert_eq!(t.read("hako/app-1/memory.max"), "max");
        assert_eq!(t.read("hako/app-1/memory.high"), "max");
        assert_eq!(t.read("hako/app-1/pids.max"), "max");
        assert_eq!(cg.limits().unwrap(), CgroupLimits::default());
    }

    #[test]
    fn v2_swap_is_disabled_with_a_memory_limit_when_the_file_exists() {
        let (t, root) = tree();
        t.write("hako/s/memory.swap.max", "max");
        let cg = root
            .create(
                "s",
                &CgroupLimits {
                    memory_max: Some(1 << 20),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(t.read("hako/s/memory.swap.max"), "0");
        // Without a memory limit swap is allowed again.
        cg.set_limits(&CgroupLimits::default()).unwrap();
        assert_eq!(t.read("hako/s/memory.swap.max"), "max");
        cg.remove().unwrap();
        // A host without swap accounting has no such file, and none is made.
        let cg = root
            .create(
                "n",
                &CgroupLimits {
                    memory_max: Some(1 << 20),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(!t.exists("hako/n/memory.swap.max"));
        cg.remove().unwrap();
    }

    #[test]
    fn v2_stats_parse_kernel_files() {
        let (t, root) = tree();
        let cg = root.create("st", &CgroupLimits::default()).unwrap();
        t.write(
            "hako/st/cpu.stat",
            "usage_usec 12345\nuser_usec 10000\nsystem_usec 2345\n\
             nr_periods 50\nnr_throttled 7\nthrottled_usec 91000\n",
        );
        t.write("hako/st/memory.current", "4096000\n");
        t.write(
            "hako/st/memory.events",
            "low 0\nhigh 3\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n",
        );
        t.write("hako/st/pids.current", "3\n");
        t.write("hako/st/cgroup.procs", "42\n7\n");
        assert_eq!(
            cg.stats().unwrap(),
            CgroupStats {
                cpu_usage_usec: 12345,
                memory_current: 4_096_000,
                oom_kills: 1,
                pids_current: 3,
                nr_throttled: 7,
                throttled_usec: 91_000,
            }
        );
        assert_eq!(cg.pids().unwrap(), vec![7, 42]);
        t.write("hako/st/memory.current", "garbage");
        assert!(matches!(cg.stats(), Err(CgroupError::Parse { .. })));
    }

    #[test]
    fn v2_cpu_weight_is_written_to_cpu_weight_clamped_and_read_back() {
        let (t, root) = tree();
        let cg = root.create("w", &CgroupLimits::default()).unwrap();
        assert_eq!(cg.cpu_weight().unwrap(), None, "no file yet");
        cg.set_cpu_weight(5).unwrap();
        assert_eq!(t.read("hako/w/cpu.weight"), "5");
        assert_eq!(cg.cpu_weight().unwrap(), Some(5));
        cg.set_cpu_weight(0).unwrap();
        assert_eq!(t.read("hako/w/cpu.weight"), "1", "the kernel's minimum");
        cg.set_cpu_weight(1_000_000).unwrap();
        assert_eq!(t.read("hako/w/cpu.weight"), "10000", "the kernel's maximum");
        cg.set_cpu_weight(CPU_WEIGHT_DEFAULT).unwrap();
        assert_eq!(cg.cpu_weight().unwrap(), Some(100));
        // Setting the weight leaves the quota alone.
        assert!(!t.exists("hako/w/cpu.max"));
    }

    #[test]
    fn v2_pressure_is_parsed_into_totals() {
        let (t, root) = tree();
        let cg = root.create("p", &CgroupLimits::default()).unwrap();
        assert_eq!(cg.pressure().unwrap(), None, "no PSI files: no pressure");
        t.write(
            "hako/p/cpu.pressure",
            "some avg10=1.50 avg60=0.40 avg300=0.10 total=123456\n\
             full avg10=0.00 avg60=0.00 avg300=0.00 total=789\n",
        );
        t.write(
            "hako/p/memory.pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=42\n\
             full avg10=0.00 avg60=0.00 avg300=0.00 total=17\n",
        );
        assert_eq!(
            cg.pressure().unwrap(),
            Some(CgroupPressure {
                cpu_some_usec: 123_456,
                cpu_full_usec: 789,
                memory_some_usec: 42,
                memory_full_usec: 17,
            })
        );
        // cpu.pressure before Linux 5.13: no `full` line.
        t.write(
            "hako/p/cpu.pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n",
        );
        let p = cg.pressure().unwrap().unwrap();
        assert_eq!((p.cpu_some_usec, p.cpu_full_usec), (5, 0));
        t.write("hako/p/memory.pressure", "some avg10=0.00 total=x\n");
        assert!(matches!(cg.pressure(), Err(CgroupError::Parse { .. })));
    }

    #[test]
    fn v2_freeze_and_thaw_write_cgroup_freeze_and_wait_for_cgroup_events() {
        let (t, root) = tree();
        let cg = root.create("fz", &CgroupLimits::default()).unwrap();
        // The fake kernel applies each request 50 ms late: the calls return only once
        // `cgroup.events` shows the new state. The bound is generous (not FREEZE_TIMEOUT): on a
        // loaded machine the fake kernel's thread may be scheduled late, and what is checked
        // here is that the calls wait for the effect, not how fast it comes.
        let kernel = t.v2_freezer_kernel("hako/fz", Duration::from_millis(50));
        const PATIENT: Duration = Duration::from_secs(60);
        cg.manager.freeze(PATIENT).unwrap();
        assert_eq!(t.read("hako/fz/cgroup.freeze"), "1");
        assert!(t.read("hako/fz/cgroup.events").contains("frozen 1\n"));
        cg.manager.thaw(PATIENT).unwrap();
        assert_eq!(t.read("hako/fz/cgroup.freeze"), "0");
        assert!(t.read("hako/fz/cgroup.events").contains("frozen 0\n"));
        drop(kernel);
        // Nobody applies the request: a timeout naming cgroup.events.
        let err = cg.manager.freeze(Duration::from_millis(30)).unwrap_err();
        match err {
            CgroupError::Timeout { path, what, .. } => {
                assert_eq!(path, t.join("hako/fz/cgroup.events"));
                assert_eq!(what, "frozen 1");
            }
            other => panic!("unexpected {other}"),
        }
        cg.remove().unwrap();
    }

    #[test]
    fn v2_kill_all_on_a_fake_tree_signals_nothing_when_empty_and_remove_clears_it() {
        let (t, root) = tree();
        let cg = root.create("k", &CgroupLimits::default()).unwrap();
        // cgroup.kill is only written on a real cgroupfs (here it would be a plain file).
        t.write("hako/k/cgroup.kill", "");
        t.write("hako/k/cgroup.procs", "");
        cg.kill_all().unwrap();
        assert_eq!(t.read("hako/k/cgroup.kill"), "");
        cg.remove().unwrap();
        assert!(!t.exists("hako/k"));
    }
}
