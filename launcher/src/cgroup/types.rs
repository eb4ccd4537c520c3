//! The data types and the [`CgroupManager`] trait shared by the v1 and v2 managers (a leaf
//! module: it imports nothing else of the crate).
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// CPU period written with every quota, in microseconds. 20 ms rather than the kernel's
/// default 100 ms: a throttled tenant then runs in short slices instead of monopolising a core
/// for up to 100 ms at a time, which is what its neighbours' tail latency feels (measured
/// with `hako-bench spike`: quiet's p99 during a noisy burst 1.3-1.7x its calm p99 with 20 ms,
/// 3.4x with 100 ms).
pub const CPU_PERIOD_US: u64 = 20_000;

/// Limits of one instance; `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CgroupLimits {
    /// CPU bandwidth in cores (0.5 = half a core).
    pub cpu: Option<f64>,
    pub memory_max: Option<u64>,
    /// v2 `memory.high`; v1 `memory.soft_limit_in_bytes`.
    pub memory_high: Option<u64>,
    pub pids: Option<u64>,
}

/// Usage counters of one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupStats {
    pub cpu_usage_usec: u64,
    pub memory_current: u64,
    pub oom_kills: u64,
    pub pids_current: u64,
    /// CFS bandwidth periods in which the group hit its quota (`cpu.stat` `nr_throttled`).
    pub nr_throttled: u64,
    /// Time the group spent throttled, microseconds (v2 `cpu.stat` `throttled_usec`; v1
    /// `throttled_time`, nanoseconds, converted).
    pub throttled_usec: u64,
}

/// The default CPU weight (v2 `cpu.weight`), the scale [`CgroupManager::set_cpu_weight`]
/// takes on both versions: v1 `cpu.shares` = weight × 1024 / 100 (1024 is v1's default).
pub const CPU_WEIGHT_DEFAULT: u32 = 100;
/// The range the kernel accepts for v2 `cpu.weight`; weights are clamped into it.
pub const CPU_WEIGHT_MIN: u32 = 1;
/// See [`CPU_WEIGHT_MIN`].
pub const CPU_WEIGHT_MAX: u32 = 10_000;

/// v1 `cpu.shares` for a v2-scale weight (clamped to the kernel's minimum of 2).
pub fn cpu_shares_of_weight(weight: u32) -> u64 {
    (u64::from(weight.clamp(CPU_WEIGHT_MIN, CPU_WEIGHT_MAX)) * 1024 / 100).max(2)
}

/// The v2-scale weight of a v1 `cpu.shares` value (rounded to nearest, clamped).
pub fn cpu_weight_of_shares(shares: u64) -> u32 {
    let w = (shares * 100 + 512) / 1024;
    (w.min(u64::from(CPU_WEIGHT_MAX)) as u32).max(CPU_WEIGHT_MIN)
}

/// Pressure stall totals of one group (v2 `cpu.pressure` and `memory.pressure`, the `total=`
/// of their `some` and `full` lines): microseconds during which some (or all non-idle) tasks
/// of the group waited for the resource. Cumulative; rates come from two readings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPressure {
    pub cpu_some_usec: u64,
    /// 0 on kernels before 5.13 (no `full` line for cpu).
    pub cpu_full_usec: u64,
    pub memory_some_usec: u64,
    pub memory_full_usec: u64,
}

/// Which cgroup hierarchy the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Where a new process must be placed before its first instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupAttach {
    /// The group directory, opened and passed to `clone3(CLONE_INTO_CGROUP)`.
    V2 { dir: PathBuf },
    /// One `cgroup.procs` per hierarchy; the child writes `0` to each first thing.
    V1 { procs: Vec<PathBuf> },
}

/// Choices made once per root, at [`CgroupRoot::detect_with`](crate::cgroup::CgroupRoot::detect_with).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupOptions {
    /// v1 only: also create the groups in the freezer hierarchy, so that
    /// [`InstanceCgroup::freeze`](crate::cgroup::InstanceCgroup::freeze) works (v2 freezes
    /// every group, no option needed). Off by default: it costs every boot one more directory
    /// to create, one more `cgroup.procs` for the child to join and one more `rmdir` at removal
    /// (`timing_create_remove_and_stats` in `launcher/tests/cgroups_real.rs`, v1 test host:
    /// create + remove p50 291 → 338 µs), and the freezer hierarchy gets a `<parent>`
    /// directory.
    pub v1_freezer: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy under {0}")]
    NoHierarchy(PathBuf),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path}: cannot parse {value:?}")]
    Parse { path: PathBuf, value: String },
    #[error("invalid cgroup name {0:?}")]
    InvalidName(String),
    #[error("{path}: processes still present after kill")]
    Busy { path: PathBuf },
    #[error("{what} needs the {controller} controller, which is not available")]
    NoController {
        what: &'static str,
        controller: &'static str,
    },
    /// A cgroups-rs operation failed (v1: lowering `memory.limit_in_bytes` below what the
    /// kernel can reclaim fails here with EBUSY).
    #[error("{op} {path} (cgroups-rs): {source}")]
    CgroupsRs {
        op: &'static str,
        path: PathBuf,
        source: cgroups_rs::error::Error,
    },
    /// The kernel did not reach a state in time (a freeze waiting for tasks in the kernel).
    #[error("{path}: not {what} after {timeout:?}")]
    Timeout {
        path: PathBuf,
        what: &'static str,
        timeout: Duration,
    },
}

/// The operations on one instance group, implemented once per hierarchy version (`v1.rs`,
/// `v2.rs`). [`InstanceCgroup`](crate::cgroup::InstanceCgroup) is the handle the rest of hako holds.
pub(crate) trait CgroupManager: std::fmt::Debug + Send + Sync {
    fn version(&self) -> CgroupVersion;
    /// The group's directories, one per hierarchy (v2: one), sorted.
    fn dirs(&self) -> Vec<PathBuf>;
    /// Makes the directories; `true` if none existed before (a fresh group, all of whose
    /// limits are still the kernel's defaults).
    fn create(&self) -> Result<bool, CgroupError>;
    /// Writes `limits`; `fresh` (see [`create`](Self::create)): an unset limit needs no write.
    fn set_limits(&self, limits: &CgroupLimits, fresh: bool) -> Result<(), CgroupError>;
    /// The limits in force, read back from the kernel's files.
    fn limits(&self) -> Result<CgroupLimits, CgroupError>;
    /// Writes the group's CPU weight, on the v2 scale (1..=10000, default 100; clamped): v2
    /// `cpu.weight`, v1 `cpu.shares` (× 1024 / 100). Work-conserving: it only matters while
    /// groups compete for CPU.
    fn set_cpu_weight(&self, weight: u32) -> Result<(), CgroupError>;
    /// The CPU weight in force, on the v2 scale; `None` where the file does not exist.
    fn cpu_weight(&self) -> Result<Option<u32>, CgroupError>;
    fn attach(&self) -> CgroupAttach;
    /// Stops every task of the group and waits until the kernel says so.
    fn freeze(&self, timeout: Duration) -> Result<(), CgroupError>;
    fn thaw(&self, timeout: Duration) -> Result<(), CgroupError>;
    fn stats(&self) -> Result<CgroupStats, CgroupError>;
    /// `None` where the kernel has no per-group pressure (v1, or PSI disabled).
    fn pressure(&self) -> Result<Option<CgroupPressure>, CgroupError>;
    /// Pids in the group (all hierarchies), sorted, without duplicates.
    fn pids(&self) -> Result<Vec<i32>, CgroupError>;
    fn kill_all(&self) -> Result<(), CgroupError>;
    /// Kills leftovers, waits for them to leave (up to 2 s), removes every directory.
    fn remove(&self) -> Result<(), CgroupError>;
}
