//! The governor's input and output types: parameters, samples, limits and decisions.
use std::fmt;
use std::time::Duration;

use super::DEFAULT_WEIGHT;

/// The global `governor` section, mirrored (the lead maps the configuration onto it).
#[derive(Debug, Clone, PartialEq)]
pub struct GovernorParams {
    /// Sampling period; also the shortest period between two relax steps.
    pub interval: Duration,
    /// Share of the interval (percent) during which some task waited for CPU (host PSI) at or
    /// above which the host is under CPU pressure; the same threshold applies to an instance's
    /// own `cpu.pressure` (v2).
    pub cpu_pressure: f64,
    /// The same for memory (host `/proc/pressure/memory`).
    pub memory_pressure: f64,
    /// Uninterrupted calm needed before relaxing starts.
    pub relax_after: Duration,
    /// Fraction of the remaining gap to the policy value restored per relax step (0 < x ≤ 1).
    pub relax_step: f64,
    /// Never tighten CPU below this many cores.
    pub floor_cpu: f64,
    /// Never tighten `memory.high` below this many bytes.
    pub floor_memory: u64,
    /// The host's CPU count: the capacity shared among tenants, and what lending may fill.
    pub host_cpus: f64,
}

impl Default for GovernorParams {
    fn default() -> Self {
        GovernorParams {
            interval: Duration::from_millis(100),
            cpu_pressure: 20.0,
            memory_pressure: 10.0,
            relax_after: Duration::from_secs(2),
            relax_step: 0.25,
            floor_cpu: 0.05,
            floor_memory: 32 * 1024 * 1024,
            host_cpus: std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
        }
    }
}

/// The per-app `spike` policy, mirrored.
#[derive(Debug, Clone, PartialEq)]
pub struct SpikeRule {
    /// Hot threshold: fraction of the instance's CPU limit.
    pub cpu_above: f64,
    /// How long the instance must stay hot before it is tightened.
    pub for_: Duration,
    /// CPU limit (cores) while spiking; `None` → half the policy limit.
    pub tighten_cpu: Option<f64>,
    /// `memory.high` (bytes) while spiking; `None` → unchanged.
    pub tighten_memory_high: Option<u64>,
}

/// The limits the governor moves. `memory.max` is never touched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// CPU quota in cores.
    pub cpu: f64,
    /// `memory.high` in bytes; `None` = no `memory.high` ("max").
    pub memory_high: Option<u64>,
    /// CPU weight on the v2 scale (1..=10000; [`DEFAULT_WEIGHT`] unless lowered).
    pub weight: u32,
}

impl Limits {
    /// A policy: these limits at the default weight.
    pub fn new(cpu: f64, memory_high: Option<u64>) -> Self {
        Limits {
            cpu,
            memory_high,
            weight: DEFAULT_WEIGHT,
        }
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu={:.3} weight={} memory.high=", self.cpu, self.weight)?;
        match self.memory_high {
            Some(bytes) => write!(f, "{bytes}"),
            None => f.write_str("max"),
        }
    }
}

/// One instance as seen by one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSample {
    /// The instance id (stable for the instance's life).
    pub id: u64,
    /// The app it belongs to.
    pub app: String,
    /// Cumulative CPU time of its cgroup, in microseconds.
    pub cpu_usage_usec: u64,
    /// Current memory usage of its cgroup, in bytes.
    pub memory_current: u64,
    /// The app's configured limits.
    pub policy: Limits,
    /// The app's spike rule, if it has one.
    pub spike: Option<SpikeRule>,
    /// `limits.burst_cpu` (cores, ≥ `policy.cpu`); `None`: no lending.
    pub burst_cpu: Option<f64>,
    /// Cumulative time the group was throttled (`cpu.stat`), µs; `None` when unknown.
    pub throttled_usec: Option<u64>,
    /// Cumulative `some` stall of the group's own `cpu.pressure` (v2), µs; `None` without
    /// per-cgroup PSI (v1).
    pub cpu_stall_usec: Option<u64>,
}

/// Host-wide readings; `None` where unavailable. The governor uses the deltas of the
/// cumulative counters over the sampling interval; `avg10` (percent) only where no `total` is
/// given.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HostPressure {
    /// `/proc/pressure/cpu` `some avg10`.
    pub cpu_some_avg10: Option<f64>,
    /// `/proc/pressure/memory` `some avg10`.
    pub memory_some_avg10: Option<f64>,
    /// `/proc/pressure/cpu` `some total`, µs.
    pub cpu_some_total_usec: Option<u64>,
    /// `/proc/pressure/memory` `some total`, µs.
    pub memory_some_total_usec: Option<u64>,
    /// Busy CPU time of the whole host summed over its CPUs (`/proc/stat`), µs.
    pub cpu_busy_usec: Option<u64>,
}

/// Everything the governor sees at one sampling tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Monotonic time since an arbitrary start.
    pub now: Duration,
    /// Host pressure.
    pub host: HostPressure,
    /// Every live instance whose usage was read.
    pub instances: Vec<InstanceSample>,
    /// Live instances whose usage could not be read this time: kept, not forgotten.
    pub unsampled: Vec<u64>,
}

/// Which way a decision moves the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Limits go down.
    Tighten,
    /// Limits go back toward the policy (including lent CPU returned when unused).
    Relax,
    /// CPU lent above the policy (`limits.burst_cpu`) while the host has spare CPU.
    Burst,
}

impl Direction {
    /// The metric label value: `tighten` or `relax`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Tighten => "tighten",
            Direction::Relax => "relax",
            Direction::Burst => "burst",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of one instance's limits, to be applied to its cgroup.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The instance.
    pub id: u64,
    /// Its app.
    pub app: String,
    /// Tighten or relax.
    pub direction: Direction,
    /// Limits in force before.
    pub before: Limits,
    /// Limits to apply.
    pub after: Limits,
    /// Human-readable cause, for the tracing event.
    pub reason: String,
}
