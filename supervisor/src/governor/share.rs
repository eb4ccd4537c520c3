//! The host's side of the default CPU protection and of lending: pressure and busy CPU measured
//! over the sampling interval itself (deltas of cumulative counters), the max-min fair share of
//! the host's CPUs among the tenants, and the constants of both behaviours.
//!
//! Semantics in the module documentation of [`super`].
use std::time::Duration;

use super::HostPressure;

/// The CPU weight (v2 scale: 1..=10000) of an instance the governor has not touched: the
/// kernel's default (v1 `cpu.shares` 1024).
pub const DEFAULT_WEIGHT: u32 = 100;
/// The weight given at once to a tenant driving host CPU contention. Weights only matter while
/// groups compete for CPU (an idle host still gives the tenant everything), so this costs
/// nothing without contention; with it, a neighbour that wakes up runs ahead of the driver.
pub const CONTENDED_WEIGHT: u32 = 1;
/// A tenant using at least this many cores over the interval is *active* (a neighbour whose
/// presence makes lent CPU worth taking back, and whose stall makes a lowered weight "not
/// enough").
pub const ACTIVE_CORES: f64 = 0.05;
/// A tenant drives contention when it uses at least this many cores ...
pub const DRIVER_MIN_CORES: f64 = 0.2;
/// ... and at least this fraction of the heaviest rule-less tenant's usage.
pub const DRIVER_SHARE: f64 = 0.5;
/// How long a lowered weight must have failed to end the contention (a neighbour still
/// stalled) before the driver's quota is tightened toward its fair share.
pub const QUOTA_AFTER: Duration = Duration::from_millis(200);
/// Without per-group PSI (v1), a driver's quota is tightened only to a fair share below this
/// fraction of the quota in force.
pub const V1_QUOTA_MARGIN: f64 = 0.9;
/// Without PSI: the host is contended when its busy CPU reaches this fraction of its CPUs ...
pub const SATURATED: f64 = 0.9;
/// ... and calm again below this fraction.
pub const UNSATURATED: f64 = 0.7;
/// Lending: the host has spare CPU when at least this many cores are idle.
pub const SPARE_MIN_CORES: f64 = 0.1;
/// Lending: each raise adds at least this many cores ...
pub const LEND_STEP_CORES: f64 = 0.25;
/// ... or this factor of the quota in force, whichever is more (capped by `burst_cpu` and by
/// the idle CPU).
pub const LEND_STEP_FACTOR: f64 = 1.5;
/// Lending: without throttling counters, an instance using this fraction of its quota hits it.
pub const QUOTA_HIT: f64 = 0.9;
/// Lent CPU is returned (after `relax_after`) once the instance's usage fits in this fraction
/// of its own `limits.cpu`.
pub const LENT_IDLE: f64 = 0.8;

/// Where the governor's view of host CPU contention comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PressureSource {
    /// Host PSI (`/proc/pressure/cpu`): the stall over the sampling interval.
    Psi,
    /// No PSI on this host: busy CPU (`/proc/stat`, else the tenants' own usage counters)
    /// against the host's CPU count.
    Usage,
}

/// The host over the last sampling interval.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(super) struct HostView {
    /// Share of the interval (0..=1) during which some task waited for CPU; `None` without
    /// PSI. From the delta of `total`; the `avg10` percentage when only that is known.
    pub cpu_stall: Option<f64>,
    /// Same for memory.
    pub mem_stall: Option<f64>,
    /// Busy CPU of the whole host, in cores; `None` when `/proc/stat` was not read (the
    /// caller then uses the tenants' own usage).
    pub busy: Option<f64>,
}

impl HostView {
    /// The view between two readings (`prev` at `then`, `cur` at `now`); the first reading,
    /// or a counter that went backwards, gives only what `avg10` says.
    pub fn between(
        prev: Option<(Duration, HostPressure)>,
        now: Duration,
        cur: &HostPressure,
    ) -> HostView {
        let dt = prev
            .map(|(then, _)| now.saturating_sub(then).as_micros() as f64)
            .filter(|dt| *dt > 0.0);
        let rate = |old: Option<u64>, new: Option<u64>| -> Option<f64> {
            let (old, new, dt) = (old?, new?, dt?);
            (new >= old).then(|| (new - old) as f64 / dt)
        };
        let p = prev.map(|(_, p)| p).unwrap_or_default();
        let stall = |old, new, avg10: Option<f64>, total: Option<u64>| match total {
            Some(_) => rate(old, new).map(|r| r.min(1.0)),
            None => avg10.map(|a| a / 100.0),
        };
        HostView {
            cpu_stall: stall(
                p.cpu_some_total_usec,
                cur.cpu_some_total_usec,
                cur.cpu_some_avg10,
                cur.cpu_some_total_usec,
            ),
            mem_stall: stall(
                p.memory_some_total_usec,
                cur.memory_some_total_usec,
                cur.memory_some_avg10,
                cur.memory_some_total_usec,
            ),
            busy: rate(p.cpu_busy_usec, cur.cpu_busy_usec),
        }
    }
}

/// The max-min fair share ("water level") of `capacity` cores among tenants using `usages`
/// cores: tenants below the level keep what they use, those at it share the rest equally.
/// `f64::INFINITY` when everyone's usage fits (nobody is short).
pub fn fair_share(capacity: f64, usages: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = usages.iter().copied().filter(|u| *u > 0.0).collect();
    sorted.sort_by(f64::total_cmp);
    let mut remaining = capacity;
    for (i, u) in sorted.iter().enumerate() {
        let level = remaining / (sorted.len() - i) as f64;
        if *u > level {
            return level.max(0.0);
        }
        remaining -= u;
    }
    f64::INFINITY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fair_share_is_max_min() {
        // A light tenant keeps what it uses; the two heavy ones share the rest.
        assert_eq!(fair_share(2.0, &[0.2, 1.5, 1.5]), 0.9);
        assert_eq!(fair_share(2.0, &[3.0]), 2.0);
        assert_eq!(fair_share(2.0, &[2.0]), f64::INFINITY, "it fits");
        assert_eq!(fair_share(2.0, &[0.5, 0.5]), f64::INFINITY);
        assert_eq!(fair_share(4.0, &[]), f64::INFINITY);
        assert_eq!(fair_share(2.0, &[0.0, 3.0, 1.0]), 1.0);
    }

    #[test]
    fn host_view_uses_deltas_over_the_interval() {
        let at = |cpu: u64, busy: u64| HostPressure {
            cpu_some_avg10: Some(1.0),
            memory_some_avg10: Some(0.0),
            cpu_some_total_usec: Some(cpu),
            memory_some_total_usec: Some(7),
            cpu_busy_usec: Some(busy),
        };
        let first = HostView::between(None, Duration::ZERO, &at(1_000, 0));
        assert_eq!(first.cpu_stall, None, "one reading is no interval");
        let v = HostView::between(
            Some((Duration::ZERO, at(1_000, 0))),
            Duration::from_millis(100),
            &at(31_000, 180_000),
        );
        assert_eq!(v.cpu_stall, Some(0.3), "30 ms of stall in 100 ms");
        assert_eq!(v.mem_stall, Some(0.0));
        assert_eq!(v.busy, Some(1.8));
        // Only avg10 known (an old reader, or a test): the percentage as a fraction.
        let avg_only = HostPressure {
            cpu_some_avg10: Some(40.0),
            ..Default::default()
        };
        let v = HostView::between(None, Duration::ZERO, &avg_only);
        assert_eq!((v.cpu_stall, v.mem_stall, v.busy), (Some(0.4), None, None));
    }
}
