//! The governor: detects contention and load spikes and decides how to move each instance's
//! CPU weight, CPU quota and `memory.high`.
//!
//! This module is pure decision logic plus a reader of the host's PSI files whose paths are
//! parameters (cgroup usage is read through the launcher's cgroup API). It writes nothing: the
//! supervisor's sampling loop feeds a [`Sample`] every [`GovernorParams::interval`] to
//! [`Governor::observe`], applies each returned [`Decision`] through the launcher's cgroup API
//! and emits a tracing event with `before`, `after` and the reason. `memory.max` is never
//! touched and nothing is ever killed.
//!
//! # Semantics
//!
//! **Measurements over the interval.** An instance's CPU utilisation, in cores, is
//! `Δ cpu_usage_usec / Δ now` between two consecutive samples of that instance; it *hit its
//! quota* when its throttled time grew in that interval (`cpu.stat`; without that counter: it
//! used at least [`share::QUOTA_HIT`] of the quota in force). Host pressure is the share of the
//! interval during which some task stalled: `Δ total / Δ now` of `/proc/pressure/cpu` and
//! `/memory` (the `avg10` percentage only when no `total` is given); host busy CPU is
//! `Δ busy / Δ now` of `/proc/stat` (else the sum of the tenants' utilisations). The first
//! sample, a sample whose `now` does not advance, and a counter that goes backwards give no new
//! measurement (a backwards CPU counter also restarts the hot streak). The *ratio* is the
//! utilisation divided by the CPU quota **currently in force**. An instance is *hot* when its
//! ratio is at least its rule's `cpu_above`; it has been hot "since" the start of the first
//! measurement window of its current hot streak.
//!
//! **Host CPU contention** (apps without a rule): with PSI, the CPU stall over the interval
//! ≥ `cpu_pressure` % (calm below half of it); without PSI ([`PressureSource::Usage`], logged
//! once by the sampler), busy CPU ≥ [`share::SATURATED`] of `host_cpus` (calm below
//! [`share::UNSATURATED`]). The tenants *driving* it are the rule-less instances using at least
//! [`share::DRIVER_MIN_CORES`] and at least [`share::DRIVER_SHARE`] of the heaviest rule-less
//! user, plus those already lowered by this rule that are not idle.
//!
//! **Weight first** (work-conserving): at the first contended sample every driver's CPU weight
//! goes to [`share::CONTENDED_WEIGHT`] (v2 `cpu.weight`; v1 `cpu.shares` × 1024 / 100). An idle
//! host still gives it everything; a neighbour that wakes up runs first.
//!
//! **Quota when weight is not enough**: when a driver's weight has been low for
//! [`share::QUOTA_AFTER`] and a neighbour is still stalled (v2: an active non-driver instance
//! whose own `cpu.pressure` stall ≥ `cpu_pressure` %; without per-cgroup PSI: the host is still
//! contended and an active non-driver exists), its quota goes to the max-min fair share of
//! `host_cpus` among the tenants ([`share::fair_share`] of their utilisations), never below
//! `floor_cpu`, never raising.
//!
//! **Lending** (`limits.burst_cpu` > `limits.cpu`, any app): an instance that hit its quota in
//! the last interval while the host has at least [`share::SPARE_MIN_CORES`] idle and is not
//! contended by another active tenant is raised one step per interval: `max(+0.25 core, ×1.5)`,
//! capped by the idle CPU and by `burst_cpu` (direction `burst`). **Take-back**: under
//! contention with another active tenant, lent CPU goes back to `limits.cpu` at once (first,
//! before any weight or quota tightening is felt). Lent CPU that is no longer used (usage ≤
//! [`share::LENT_IDLE`] of `limits.cpu` for `relax_after`) is returned too.
//!
//! **Spike, per-app rule** ([`SpikeRule`]): hot with threshold `cpu_above` continuously for at
//! least `for` → CPU quota to `tighten_cpu` (else half the policy) and `memory.high` to
//! `tighten_memory_high`. Host pressure plays no part. An app with a rule is governed on CPU by
//! its rule only (never a driver of the default protection; it may still borrow CPU).
//!
//! **Spike, memory** (every app): host memory stall over the interval ≥ `memory_pressure` % →
//! the heaviest memory user (`memory_current`, ties → lowest id) gets
//! `memory.high = max(floor_memory, memory_current × 0.9)` ([`MEMORY_TIGHTEN_FRACTION`]),
//! once per episode.
//!
//! **Relax.** Each adjusted instance remembers which causes (rule, host CPU, host memory,
//! lending) moved it in this episode. It is *calm* when every cause is calm, with hysteresis
//! ([`HYSTERESIS`] = 0.5): rule → ratio below `cpu_above × 0.5`; host CPU → contention calm
//! (above), or the instance itself idle (ratio below 25 % of the quota in force): PSI is
//! host-wide and other processes can hold it up, so an instance whose own load is gone relaxes
//! even while the host stays pressed; host memory → memory stall below half its threshold;
//! lending → usage ≤ [`share::LENT_IDLE`] of `limits.cpu`. Any non-calm sample restarts the calm
//! clock; a condition met again re-tightens. After `relax_after` of uninterrupted calm, one
//! relax step is made every `max(interval, relax_after / 4)`: the weight and lent CPU go back at
//! once, a tightened quota and `memory.high` regain `relax_step` of the remaining gap and snap
//! to the policy within 1 % ([`SNAP_FRACTION`]). When the policy has no `memory.high`, the gap
//! is measured to twice the value the governor set, and `memory.high` is lifted at the snap.
//!
//! **Flapping.** Entering needs one contended sample (weight) or the rule's `for`; leaving needs
//! calm for a full `relax_after`. A load oscillating faster than that is handled once and
//! never relaxed while it oscillates.
//!
//! **Bookkeeping.** Instances absent from a sample are forgotten, as are ids passed to
//! [`Governor::forget`], except those listed in [`Sample::unsampled`] (alive, but their usage
//! could not be read at this tick): they keep their state untouched, make no decision, and
//! their next measurement spans the gap. The governor assumes every decision is applied; when a
//! write fails the caller reports the limits actually in force with [`Governor::resync`] (or
//! forgets the instance), and the governor retries from there. [`Governor::set_params`]
//! changes the parameters without losing what is adjusted. If an instance's policy changes, an
//! unadjusted instance follows it and a tightened one is clamped to be no higher than it.
//! `policy.cpu` must be the app's CPU limit in cores; pass the host's core count for an app
//! without a CPU limit.
#![forbid(unsafe_code)]

mod psi;
mod relax;
pub mod share;
mod types;

#[cfg(test)]
mod tests;

pub use psi::{read_host_pressure, read_psi, Psi, PsiError, PsiLine};
pub use share::{PressureSource, CONTENDED_WEIGHT, DEFAULT_WEIGHT};

pub use types::{
    Decision, Direction, GovernorParams, HostPressure, InstanceSample, Limits, Sample, SpikeRule,
};

use relax::{clamp_params, heaviest, min_mem, relax_step};
use share::HostView;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long an app without a rule must be hot before the default CPU rule may tighten it: the
/// same debounce as a rule's default `spike.for`.
pub use hako_policies::DEFAULT_SPIKE_FOR;
/// An instance below `DEFAULT_CPU_ABOVE × HYSTERESIS` of its quota in force is idle.
pub const DEFAULT_CPU_ABOVE: f64 = 0.5;
/// CPU tighten target of a rule without `tighten_cpu`: this fraction of the policy CPU limit.
pub const DEFAULT_TIGHTEN_CPU_FRACTION: f64 = 0.5;
/// Memory-pressure tighten target: this fraction of the instance's current memory usage.
pub const MEMORY_TIGHTEN_FRACTION: f64 = 0.9;
/// Leave thresholds are the enter thresholds times this factor.
pub const HYSTERESIS: f64 = 0.5;
/// A relax step that lands within this fraction of the policy value snaps to it.
pub const SNAP_FRACTION: f64 = 0.01;

/// What tightened an instance during the current episode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Causes {
    rule: bool,
    host_cpu: bool,
    host_memory: bool,
    lent: bool,
}

/// Per-instance state.
#[derive(Debug, Clone)]
struct State {
    policy: Limits,
    current: Limits,
    /// Previous sample of the CPU counter: (now, usage).
    last: Option<(Duration, u64)>,
    /// Last measured utilisation in cores.
    util: Option<f64>,
    /// Start of the current hot streak.
    hot_since: Option<Duration>,
    /// Previous throttled-time and own-stall counters.
    last_throttled: Option<u64>,
    last_stall: Option<u64>,
    /// Hit its quota in the last interval (`None`: no measurement).
    throttled: Option<bool>,
    /// Own CPU stall share over the last interval (v2 `cpu.pressure`).
    stall: Option<f64>,
    /// Since when the weight has been lowered.
    weight_low_since: Option<Duration>,
    causes: Causes,
    calm_since: Option<Duration>,
    last_change: Duration,
    /// The `memory.high` value the governor set when the policy has none.
    mem_tightened_to: Option<u64>,
}

impl State {
    fn new(policy: Limits, now: Duration) -> Self {
        State {
            policy,
            current: policy,
            last: None,
            util: None,
            hot_since: None,
            last_throttled: None,
            last_stall: None,
            throttled: None,
            stall: None,
            weight_low_since: None,
            causes: Causes::default(),
            calm_since: None,
            last_change: now,
            mem_tightened_to: None,
        }
    }

    fn tightened(&self) -> bool {
        self.current != self.policy
    }

    /// Utilisation relative to the CPU limit in force.
    fn ratio(&self) -> Option<f64> {
        let util = self.util?;
        (self.current.cpu > 0.0).then(|| util / self.current.cpu)
    }

    /// Below the default rule's leave threshold: its own usage no longer adds to host CPU
    /// pressure, whatever the (lagging, possibly foreign) PSI says.
    fn idle(&self) -> bool {
        self.ratio()
            .is_some_and(|r| r < DEFAULT_CPU_ABOVE * HYSTERESIS)
    }

    /// How long the instance has been hot; `None` when it is not hot.
    fn hot_for(&self, now: Duration) -> Option<Duration> {
        self.hot_since.map(|since| now.saturating_sub(since))
    }

    /// Follows a policy change: untightened follows, tightened is clamped below it.
    fn update_policy(&mut self, policy: Limits) {
        if policy == self.policy {
            return;
        }
        if self.tightened() {
            self.current.cpu = self.current.cpu.min(policy.cpu);
            self.current.memory_high = min_mem(self.current.memory_high, policy.memory_high);
        } else {
            self.current = policy;
        }
        self.policy = policy;
        if !self.tightened() {
            self.end_episode();
        }
    }

    /// Lent CPU in force.
    fn lent(&self) -> bool {
        self.current.cpu > self.policy.cpu
    }

    /// Measures utilisation, throttling and own stall from the counters; updates the hot
    /// streak.
    fn measure(&mut self, now: Duration, inst: &InstanceSample, hot_threshold: f64) {
        let usage = inst.cpu_usage_usec;
        let span = self
            .last
            .filter(|(then, before)| now > *then && usage >= *before)
            .map(|(then, _)| (now - then).as_micros() as f64);
        self.throttled = match (span, self.last_throttled, inst.throttled_usec) {
            (Some(_), Some(old), Some(new)) => Some(new > old),
            _ => None,
        };
        self.stall = match (span, self.last_stall, inst.cpu_stall_usec) {
            (Some(dt), Some(old), Some(new)) if new >= old => {
                Some(((new - old) as f64 / dt).min(1.0))
            }
            _ => None,
        };
        if span.is_some() || self.last.is_none() {
            self.last_throttled = inst.throttled_usec;
            self.last_stall = inst.cpu_stall_usec;
        }
        match self.last {
            Some((_, before)) if usage < before => {
                // Counter reset: no measurement, the streak restarts.
                self.util = None;
                self.hot_since = None;
                self.last = Some((now, usage));
            }
            Some((then, before)) if now > then => {
                let micros = (now - then).as_micros() as f64;
                self.util = Some((usage - before) as f64 / micros);
                self.last = Some((now, usage));
                let hot = self.ratio().is_some_and(|r| r >= hot_threshold);
                if hot {
                    self.hot_since.get_or_insert(then);
                } else {
                    self.hot_since = None;
                }
            }
            Some(_) => {} // time did not advance: keep the previous measurement
            None => self.last = Some((now, usage)),
        }
    }

    fn end_episode(&mut self) {
        self.causes = Causes::default();
        self.calm_since = None;
        self.mem_tightened_to = None;
        self.weight_low_since = None;
    }
}

/// The decision engine. Feed it one [`Sample`] per tick.
#[derive(Debug, Clone)]
pub struct Governor {
    params: GovernorParams,
    states: BTreeMap<u64, State>,
    /// The previous host reading, for deltas.
    host_last: Option<(Duration, HostPressure)>,
    source: Option<PressureSource>,
}

impl Governor {
    /// A governor with these parameters (`relax_step` is clamped into (0, 1]).
    pub fn new(params: GovernorParams) -> Self {
        Governor {
            params: clamp_params(params),
            states: BTreeMap::new(),
            host_last: None,
            source: None,
        }
    }

    /// Replaces the parameters (a configuration reload), keeping every instance's state: a
    /// tightened instance stays known as tightened and relaxes under the new parameters.
    pub fn set_params(&mut self, params: GovernorParams) {
        self.params = clamp_params(params);
    }

    /// Declares the limits actually in force for `id` after a decision could not be applied
    /// (read back from the kernel). Values within [`SNAP_FRACTION`] of the policy count as the
    /// policy. A tighten that did not take effect is retried at the next sample where the spike
    /// condition holds; a relax step that did not take effect is retried later.
    /// Unknown ids are ignored.
    pub fn resync(&mut self, id: u64, in_force: Limits) {
        let Some(state) = self.states.get_mut(&id) else {
            return;
        };
        let policy = state.policy;
        let mut current = in_force;
        if (current.cpu - policy.cpu).abs() <= policy.cpu * SNAP_FRACTION {
            current.cpu = policy.cpu;
        }
        if let (Some(cur), Some(pol)) = (current.memory_high, policy.memory_high) {
            if cur.abs_diff(pol) as f64 <= pol as f64 * SNAP_FRACTION {
                current.memory_high = Some(pol);
            }
        }
        state.current = current;
        if !state.tightened() {
            state.end_episode();
        }
    }

    /// Where the last sample's view of host CPU contention came from (`None` before the
    /// first sample).
    pub fn pressure_source(&self) -> Option<PressureSource> {
        self.source
    }

    /// Whether the governor has moved any limit of `id` away from its policy (it is then
    /// followed every tick so that it relaxes on time).
    pub fn adjusted(&self, id: u64) -> bool {
        self.states.get(&id).is_some_and(|s| s.tightened())
    }

    /// The parameters in use.
    pub fn params(&self) -> &GovernorParams {
        &self.params
    }

    /// The limits the governor believes are in force for `id` (the policy until tightened).
    pub fn current(&self, id: u64) -> Option<Limits> {
        self.states.get(&id).map(|s| s.current)
    }

    /// Drops all state of `id` (the instance stopped).
    pub fn forget(&mut self, id: u64) {
        self.states.remove(&id);
    }

    /// The period between two relax steps.
    fn step_period(&self) -> Duration {
        self.params.interval.max(self.params.relax_after / 4)
    }

    /// Takes one sample and returns the changes to apply, at most one per instance, ordered by
    /// instance id. The governor assumes every decision is applied.
    pub fn observe(&mut self, sample: &Sample) -> Vec<Decision> {
        let now = sample.now;
        let p = self.params.clone();

        // Bookkeeping: forget the absent, update policy and measurements of the present.
        let present: BTreeSet<u64> = sample
            .instances
            .iter()
            .map(|i| i.id)
            .chain(sample.unsampled.iter().copied())
            .collect();
        self.states.retain(|id, _| present.contains(id));
        for inst in &sample.instances {
            let state = self
                .states
                .entry(inst.id)
                .or_insert_with(|| State::new(inst.policy, now));
            state.update_policy(inst.policy);
            let threshold = inst
                .spike
                .as_ref()
                .map_or(DEFAULT_CPU_ABOVE, |r| r.cpu_above);
            state.measure(now, inst, threshold);
        }

        // The host over the interval.
        let view = HostView::between(self.host_last, now, &sample.host);
        self.host_last = Some((now, sample.host));
        let utils: BTreeMap<u64, f64> = sample
            .instances
            .iter()
            .filter_map(|i| Some((i.id, self.states[&i.id].util?)))
            .collect();
        let busy = view.busy.unwrap_or_else(|| utils.values().sum());
        // A host whose /proc/stat is read but has no interval yet has no known spare CPU.
        let spare = match view.busy {
            None if sample.host.cpu_busy_usec.is_some() => 0.0,
            _ => (p.host_cpus - busy).max(0.0),
        };
        let psi = sample.host.cpu_some_total_usec.is_some() || sample.host.cpu_some_avg10.is_some();
        self.source = Some(if psi {
            PressureSource::Psi
        } else {
            PressureSource::Usage
        });
        let stall_pct = view.cpu_stall.map(|s| s * 100.0);
        let (cpu_pressed, cpu_calm_host, contention) = if psi {
            (
                stall_pct.is_some_and(|v| v >= p.cpu_pressure),
                stall_pct.is_none_or(|v| v < p.cpu_pressure * HYSTERESIS),
                format!(
                    "host cpu stall {:.1}% of the last interval >= {:.1}%",
                    stall_pct.unwrap_or_default(),
                    p.cpu_pressure
                ),
            )
        } else {
            (
                busy >= share::SATURATED * p.host_cpus,
                busy < share::UNSATURATED * p.host_cpus,
                format!(
                    "host cpu busy {busy:.2} of {} cores (no PSI: usage counters)",
                    p.host_cpus
                ),
            )
        };
        let mem_pct = view.mem_stall.map(|s| s * 100.0);
        let mem_pressed = mem_pct.is_some_and(|v| v >= p.memory_pressure);
        let mem_calm_host = mem_pct.is_none_or(|v| v < p.memory_pressure * HYSTERESIS);

        // Default CPU protection: the drivers of the contention among rule-less instances.
        let ruleless = || {
            sample
                .instances
                .iter()
                .filter(|i| i.spike.is_none())
                .filter_map(|i| Some((i.id, *utils.get(&i.id)?)))
        };
        let max_ruleless = ruleless().map(|(_, u)| u).fold(0.0, f64::max);
        let drivers: BTreeSet<u64> = if cpu_pressed {
            ruleless()
                .filter(|&(id, u)| {
                    let state = &self.states[&id];
                    (u >= share::DRIVER_MIN_CORES && u >= share::DRIVER_SHARE * max_ruleless)
                        || (state.causes.host_cpu && !state.idle())
                })
                .map(|(id, _)| id)
                .collect()
        } else {
            BTreeSet::new()
        };
        let active = |id: u64| utils.get(&id).is_some_and(|u| *u >= share::ACTIVE_CORES);
        let others_active = |me: u64| utils.keys().any(|&id| id != me && active(id));
        let own_psi = utils.keys().any(|id| self.states[id].stall.is_some());
        let neighbour_stalled = |me: u64| {
            utils.keys().any(|&id| {
                id != me
                    && !drivers.contains(&id)
                    && active(id)
                    && if own_psi {
                        self.states[&id]
                            .stall
                            .is_some_and(|s| s * 100.0 >= p.cpu_pressure)
                    } else {
                        // No per-group PSI (v1): the host staying contended is the only sign.
                        cpu_pressed
                    }
            })
        };
        let fair = share::fair_share(p.host_cpus, &utils.values().copied().collect::<Vec<_>>());
        let stalled: BTreeSet<u64> = drivers
            .iter()
            .copied()
            .filter(|&id| neighbour_stalled(id))
            .collect();
        let contended_by_others: BTreeSet<u64> = if cpu_pressed {
            utils
                .keys()
                .copied()
                .filter(|&id| others_active(id))
                .collect()
        } else {
            BTreeSet::new()
        };

        // Memory rule: the heaviest memory user.
        let mem_victim = if mem_pressed {
            heaviest(
                sample
                    .instances
                    .iter()
                    .map(|i| (i.id, i.memory_current as f64)),
            )
        } else {
            None
        };

        let step_period = self.step_period();
        let mut decisions = Vec::new();
        let mut order: Vec<&InstanceSample> = sample.instances.iter().collect();
        order.sort_by_key(|i| i.id);
        order.dedup_by_key(|i| i.id);
        for inst in order {
            let Some(state) = self.states.get_mut(&inst.id) else {
                continue;
            };
            let util = state.util.unwrap_or_default();
            let mut reasons = Vec::new();
            let mut cpu_target: Option<f64> = None;
            let mut mem_target: Option<u64> = None;
            let mut weight_target: Option<u32> = None;
            let mut fired = Causes::default();

            if let Some(rule) = &inst.spike {
                if let Some(hot_for) = state.hot_for(now).filter(|d| *d >= rule.for_) {
                    fired.rule = true;
                    cpu_target = Some(
                        rule.tighten_cpu
                            .unwrap_or(state.policy.cpu * DEFAULT_TIGHTEN_CPU_FRACTION),
                    );
                    mem_target = rule.tighten_memory_high;
                    reasons.push(format!(
                        "app rule: cpu {util:.2} cores >= {:.2} of limit {:.2} for {hot_for:?}",
                        rule.cpu_above, state.current.cpu,
                    ));
                }
            }
            if state.lent() && contended_by_others.contains(&inst.id) {
                fired.host_cpu = true;
                let target = state.policy.cpu;
                cpu_target = Some(cpu_target.map_or(target, |t| t.min(target)));
                reasons.push(format!(
                    "{contention} with another tenant active: lent cpu taken back to limits.cpu {target:.2}"
                ));
            }
            if drivers.contains(&inst.id) {
                fired.host_cpu = true;
                weight_target = Some(CONTENDED_WEIGHT);
                reasons.push(format!(
                    "{contention}, driver using {util:.2} cores: weight {CONTENDED_WEIGHT}"
                ));
                let low_for = state.weight_low_since.map(|t| now.saturating_sub(t));
                // Without per-group PSI the host's stall cannot tell the driver's own waiting
                // tasks from a starved neighbour: only a fair share well below the quota in
                // force counts there.
                let worth = if own_psi {
                    fair < state.current.cpu
                } else {
                    fair < state.current.cpu * share::V1_QUOTA_MARGIN
                };
                if low_for.is_some_and(|d| d >= share::QUOTA_AFTER)
                    && stalled.contains(&inst.id)
                    && worth
                {
                    cpu_target = Some(cpu_target.map_or(fair, |t| t.min(fair)));
                    reasons.push(format!(
                        "a neighbour still stalled after {:?} at a low weight: quota to the fair share {fair:.2} of {} cores",
                        low_for.unwrap_or_default(),
                        p.host_cpus
                    ));
                }
            }
            if mem_victim == Some(inst.id) && !state.causes.host_memory {
                fired.host_memory = true;
                let target = (inst.memory_current as f64 * MEMORY_TIGHTEN_FRACTION) as u64;
                mem_target = Some(mem_target.map_or(target, |t| t.min(target)));
                reasons.push(format!(
                    "host memory pressure {:.1}% >= {:.1}%, heaviest memory user {} bytes",
                    mem_pct.unwrap_or_default(),
                    p.memory_pressure,
                    inst.memory_current,
                ));
            }

            let before = state.current;
            if fired != Causes::default() {
                // A condition holds: tighten (never below floors, never raising).
                let mut after = before;
                if let Some(target) = cpu_target {
                    after.cpu = before.cpu.min(target.max(p.floor_cpu));
                }
                if let Some(target) = weight_target {
                    after.weight = before.weight.min(target);
                }
                if let Some(target) = mem_target {
                    let target = target.max(p.floor_memory);
                    if before.memory_high.is_none_or(|cur| target < cur) {
                        after.memory_high = Some(target);
                        if state.policy.memory_high.is_none() {
                            state.mem_tightened_to = Some(target);
                        }
                    }
                }
                state.calm_since = None;
                if after.weight < state.policy.weight {
                    state.weight_low_since.get_or_insert(now);
                }
                let changed = after != before;
                if changed {
                    state.current = after;
                    state.last_change = now;
                    decisions.push(Decision {
                        id: inst.id,
                        app: inst.app.clone(),
                        direction: Direction::Tighten,
                        before,
                        after,
                        reason: reasons.join("; "),
                    });
                }
                if state.tightened() {
                    state.causes.rule |= fired.rule;
                    state.causes.host_cpu |= fired.host_cpu;
                    state.causes.host_memory |= fired.host_memory;
                }
                state.causes.lent &= state.lent();
                if changed || cpu_target.is_some() {
                    continue;
                }
            }

            // Lending: a tenant at its quota on a host with idle CPU borrows, step by step.
            if let Some(burst) = inst.burst_cpu {
                let cur = state.current.cpu;
                let hit = state.util.is_some()
                    && state
                        .throttled
                        .unwrap_or_else(|| state.ratio().is_some_and(|r| r >= share::QUOTA_HIT));
                let target = burst
                    .min((cur + share::LEND_STEP_CORES).max(cur * share::LEND_STEP_FACTOR))
                    .min(cur + spare);
                if hit
                    && cur >= state.policy.cpu
                    && spare >= share::SPARE_MIN_CORES
                    && !contended_by_others.contains(&inst.id)
                    && now.saturating_sub(state.last_change) >= p.interval * 3 / 4
                    && target > cur + 0.01
                {
                    let after = Limits {
                        cpu: target,
                        ..before
                    };
                    state.current = after;
                    state.last_change = now;
                    state.causes.lent = true;
                    state.calm_since = None;
                    decisions.push(Decision {
                        id: inst.id,
                        app: inst.app.clone(),
                        direction: Direction::Burst,
                        before,
                        after,
                        reason: format!(
                            "at its quota ({util:.2} cores, throttled) with {spare:.2} cores idle on the host: lent up to burst_cpu {burst:.2}"
                        ),
                    });
                    continue;
                }
            }
            if fired != Causes::default() {
                continue;
            }

            if !state.tightened() {
                state.end_episode();
                continue;
            }
            let rule_calm = match &inst.spike {
                Some(rule) => state
                    .ratio()
                    .is_none_or(|r| r < rule.cpu_above * HYSTERESIS),
                None => true,
            };
            let lent_calm = state
                .util
                .is_none_or(|u| u <= state.policy.cpu * share::LENT_IDLE);
            let calm = (!state.causes.rule || rule_calm)
                && (!state.causes.host_cpu || cpu_calm_host || state.idle())
                && (!state.causes.host_memory || mem_calm_host)
                && (!state.lent() || lent_calm);
            if !calm {
                state.calm_since = None;
                continue;
            }
            let calm_for = now.saturating_sub(*state.calm_since.get_or_insert(now));
            if calm_for < p.relax_after || now.saturating_sub(state.last_change) < step_period {
                continue;
            }
            let after = relax_step(state, p.relax_step);
            state.current = after;
            state.last_change = now;
            if after.weight >= state.policy.weight {
                state.weight_low_since = None;
            }
            let done = !state.tightened();
            decisions.push(Decision {
                id: inst.id,
                app: inst.app.clone(),
                direction: Direction::Relax,
                before,
                after,
                reason: format!(
                    "calm for {calm_for:?}: {}",
                    if done {
                        "back at the policy limits"
                    } else {
                        "step toward the policy"
                    }
                ),
            });
            if done {
                state.end_episode();
            }
        }
        decisions
    }
}
