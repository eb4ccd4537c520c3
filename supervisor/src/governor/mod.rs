//! The governor: detects load spikes and decides how to tighten and relax cgroup limits.
//!
//! This module is pure decision logic plus a reader of the host's PSI files whose paths are
//! parameters (cgroup usage is read through the launcher's cgroup API). It writes nothing: the
//! supervisor's sampling loop feeds a [`Sample`] every [`GovernorParams::interval`] to
//! [`Governor::observe`], applies each returned [`Decision`] through the launcher's cgroup API
//! and emits a tracing event with `before` and `after`. The governor moves only the CPU quota and `memory.high`; `memory.max` is never
//! touched and nothing is ever killed.
//!
//! # Semantics
//!
//! **Utilisation.** An instance's CPU utilisation, in cores, is
//! `Δ cpu_usage_usec / Δ now` between two consecutive samples of that instance. The first
//! sample of an instance, a sample whose `now` does not advance, and a counter that goes
//! backwards give no new measurement (a backwards counter also restarts the spike clock). The
//! *ratio* is the utilisation divided by the CPU limit **currently in force** (the policy limit
//! unless the governor has tightened it). An instance is *hot* when its ratio is at least the
//! threshold of the rule that governs it (below); it has been hot "since" the start of the
//! first measurement window of its current hot streak, so a condition observed over the window
//! `[t-100ms, t]` counts from `t-100ms`.
//!
//! **Spike, per-app rule** ([`SpikeRule`]): hot with threshold `cpu_above` continuously for at
//! least `for`. Host pressure plays no part. An app with a rule is governed on CPU by its rule
//! only.
//!
//! **Spike, default CPU rule** (apps without a rule): host PSI `cpu some avg10` ≥
//! `cpu_pressure` at this sample, AND the instance has been hot with threshold
//! [`DEFAULT_CPU_ABOVE`] (50 % of its limit) for at least [`DEFAULT_SPIKE_FOR`] (300 ms), AND
//! it is the heaviest CPU user (absolute cores, ties → lowest id) among the instances without a
//! rule that are either hot that long or already tightened by this rule. PSI `avg10` lags by
//! seconds, so the debounce is on the instance's own utilisation and the pressure is only a
//! gate: an instance that is already heavy is tightened at the first sample where the host
//! pressure crosses the threshold. Counting already-tightened instances among the candidates
//! keeps the rule from cascading onto the next tenant while PSI is still catching up: as long
//! as the tightened hog remains the heaviest user, nobody else is touched. A tightened instance
//! that has gone *idle* (ratio below `DEFAULT_CPU_ABOVE × HYSTERESIS`, 25 % of the limit in
//! force) is no longer a candidate.
//!
//! **Spike, memory** (every app, rule or not): host PSI `memory some avg10` ≥
//! `memory_pressure` → the heaviest memory user (`memory_current`, ties → lowest id) gets
//! `memory.high = max(floor_memory, memory_current × 0.9)` ([`MEMORY_TIGHTEN_FRACTION`]): the
//! kernel reclaims and throttles it, it is not killed. An instance is tightened this way once
//! per episode (no ratchet while PSI lags).
//!
//! **Tighten targets.** CPU: the rule's `tighten_cpu`, else `policy.cpu × 0.5`
//! ([`DEFAULT_TIGHTEN_CPU_FRACTION`]). `memory.high`: the rule's `tighten_memory_high` (none →
//! unchanged by a CPU spike), or the memory target above. Every target is clamped: never below
//! `floor_cpu` / `floor_memory`, never above the limit currently in force (tightening never
//! raises). A decision is returned at the very sample where the condition is met; with 100 ms
//! sampling and `for` = 300 ms that is at most ~400 ms after the load crosses the threshold.
//!
//! **Relax.** Each tightened instance remembers which causes (rule, host CPU, host memory)
//! tightened it in this episode. It is *calm* when every cause is calm, with hysteresis
//! ([`HYSTERESIS`] = 0.5): rule → ratio below `cpu_above × 0.5`; host CPU → cpu PSI below
//! `cpu_pressure × 0.5` (or unavailable), or the instance itself idle (above): PSI is host-wide
//! and lags, and on a busy host other processes can hold it up indefinitely, so an instance
//! whose own load is gone relaxes even while the host stays under pressure (should its load
//! come back, the default rule tightens it again); host memory → memory PSI below
//! `memory_pressure × 0.5` (or unavailable). Any non-calm sample restarts the calm clock; a
//! spike condition met again re-tightens (to the target, if lower than the current value).
//! After `relax_after` of uninterrupted calm, one relax step is made every
//! `max(interval, relax_after / 4)`: each step restores `relax_step` of the remaining gap to the
//! policy value, and snaps to the policy value when within 1 % of it ([`SNAP_FRACTION`]). When
//! the policy has no `memory.high`, the gap is measured to twice the value the governor set,
//! and `memory.high` is lifted (back to `None`) at the snap. When every limit is back at the
//! policy the episode ends.
//!
//! **Flapping.** Entering needs the hot condition for `for` (or the PSI gate above the upper
//! threshold); leaving needs the lower threshold for a full `relax_after`. A signal oscillating
//! around the threshold therefore tightens at most once and never relaxes while it oscillates.
//!
//! **Bookkeeping.** Instances absent from a sample are forgotten, as are ids passed to
//! [`Governor::forget`], except those listed in [`Sample::unsampled`] (alive, but their usage
//! could not be read at this tick): they keep their state untouched, make no decision, and
//! their next measurement spans the gap. The governor assumes every decision is applied; when a
//! write fails the caller reports the limits actually in force with [`Governor::resync`] (or
//! forgets the instance), and the governor retries from there. [`Governor::set_params`]
//! changes the parameters without losing what is tightened. If an instance's policy changes,
//! an untightened instance follows it and a tightened one is clamped to be no higher than it.
//! `policy.cpu` must be the app's CPU limit in cores; pass the host's core count for an app
//! without a CPU limit.
#![forbid(unsafe_code)]

mod psi;

#[cfg(test)]
mod tests;

pub use psi::{read_host_pressure, read_psi, Psi, PsiError, PsiLine};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// How long an app without a rule must be hot before the default CPU rule may tighten it: the
/// same debounce as a rule's default `spike.for`.
pub use hako_policies::DEFAULT_SPIKE_FOR;
/// Hot threshold of the default CPU rule: this fraction of the instance's CPU limit.
pub const DEFAULT_CPU_ABOVE: f64 = 0.5;
/// Default CPU tighten target: this fraction of the policy CPU limit.
pub const DEFAULT_TIGHTEN_CPU_FRACTION: f64 = 0.5;
/// Memory-pressure tighten target: this fraction of the instance's current memory usage.
pub const MEMORY_TIGHTEN_FRACTION: f64 = 0.9;
/// Leave thresholds are the enter thresholds times this factor.
pub const HYSTERESIS: f64 = 0.5;
/// A relax step that lands within this fraction of the policy value snaps to it.
pub const SNAP_FRACTION: f64 = 0.01;

/// The global `governor` section, mirrored (the lead maps the configuration onto it).
#[derive(Debug, Clone, PartialEq)]
pub struct GovernorParams {
    /// Sampling period; also the shortest period between two relax steps.
    pub interval: Duration,
    /// Host PSI `cpu some avg10` percentage at or above which the host is under CPU pressure.
    pub cpu_pressure: f64,
    /// Host PSI `memory some avg10` percentage at or above which the host is under memory
    /// pressure.
    pub memory_pressure: f64,
    /// Uninterrupted calm needed before relaxing starts.
    pub relax_after: Duration,
    /// Fraction of the remaining gap to the policy value restored per relax step (0 < x ≤ 1).
    pub relax_step: f64,
    /// Never tighten CPU below this many cores.
    pub floor_cpu: f64,
    /// Never tighten `memory.high` below this many bytes.
    pub floor_memory: u64,
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
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu={:.3} memory.high=", self.cpu)?;
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
}

/// Host-wide pressure (PSI `some avg10`, in percent); `None` where PSI is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HostPressure {
    /// `/proc/pressure/cpu` `some avg10`.
    pub cpu_some_avg10: Option<f64>,
    /// `/proc/pressure/memory` `some avg10`.
    pub memory_some_avg10: Option<f64>,
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
    /// Limits go back up toward the policy.
    Relax,
}

impl Direction {
    /// The metric label value: `tighten` or `relax`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Tighten => "tighten",
            Direction::Relax => "relax",
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

/// What tightened an instance during the current episode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Causes {
    rule: bool,
    host_cpu: bool,
    host_memory: bool,
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

    /// Measures utilisation from the CPU counter; updates the hot streak.
    fn measure(&mut self, now: Duration, usage: u64, hot_threshold: f64) {
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
    }
}

/// `min` over `memory.high` values where `None` means unlimited.
fn min_mem(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (Some(x), None) | (None, Some(x)) => Some(x),
        (None, None) => None,
    }
}

/// The decision engine. Feed it one [`Sample`] per tick.
#[derive(Debug, Clone)]
pub struct Governor {
    params: GovernorParams,
    states: BTreeMap<u64, State>,
}

impl Governor {
    /// A governor with these parameters (`relax_step` is clamped into (0, 1]).
    pub fn new(params: GovernorParams) -> Self {
        Governor {
            params: clamp_params(params),
            states: BTreeMap::new(),
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

        // Bookkeeping: forget the absent, update policy and utilisation of the present.
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
            state.measure(now, inst.cpu_usage_usec, threshold);
        }

        let cpu_psi = sample.host.cpu_some_avg10;
        let mem_psi = sample.host.memory_some_avg10;
        let cpu_pressed = cpu_psi.is_some_and(|v| v >= p.cpu_pressure);
        let mem_pressed = mem_psi.is_some_and(|v| v >= p.memory_pressure);
        let cpu_calm_host = cpu_psi.is_none_or(|v| v < p.cpu_pressure * HYSTERESIS);
        let mem_calm_host = mem_psi.is_none_or(|v| v < p.memory_pressure * HYSTERESIS);

        // Default CPU rule: the heaviest of the rule-less instances that are hot long enough or
        // already tightened by this rule.
        let cpu_victim = if cpu_pressed {
            heaviest(sample.instances.iter().filter_map(|inst| {
                let state = &self.states[&inst.id];
                let eligible = inst.spike.is_none()
                    && (state.hot_for(now).is_some_and(|d| d >= DEFAULT_SPIKE_FOR)
                        || (state.causes.host_cpu && !state.idle()));
                eligible.then_some((inst.id, state.util?))
            }))
        } else {
            None
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
            let mut reasons = Vec::new();
            let mut cpu_target: Option<f64> = None;
            let mut mem_target: Option<u64> = None;
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
                        "app rule: cpu {:.2} cores >= {:.2} of limit {:.2} for {:?}",
                        state.util.unwrap_or_default(),
                        rule.cpu_above,
                        state.current.cpu,
                        hot_for,
                    ));
                }
            }
            if cpu_victim == Some(inst.id) {
                fired.host_cpu = true;
                let target = state.policy.cpu * DEFAULT_TIGHTEN_CPU_FRACTION;
                cpu_target = Some(cpu_target.map_or(target, |t| t.min(target)));
                reasons.push(format!(
                    "host cpu pressure {:.1}% >= {:.1}%, heaviest cpu user {:.2} cores",
                    cpu_psi.unwrap_or_default(),
                    p.cpu_pressure,
                    state.util.unwrap_or_default(),
                ));
            }
            if mem_victim == Some(inst.id) && !state.causes.host_memory {
                fired.host_memory = true;
                let target = (inst.memory_current as f64 * MEMORY_TIGHTEN_FRACTION) as u64;
                mem_target = Some(mem_target.map_or(target, |t| t.min(target)));
                reasons.push(format!(
                    "host memory pressure {:.1}% >= {:.1}%, heaviest memory user {} bytes",
                    mem_psi.unwrap_or_default(),
                    p.memory_pressure,
                    inst.memory_current,
                ));
            }

            let before = state.current;
            if fired != Causes::default() {
                // A spike condition holds: tighten (never below floors, never raising).
                let mut after = before;
                if let Some(target) = cpu_target {
                    after.cpu = before.cpu.min(target.max(p.floor_cpu));
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
                if after != before {
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
            let calm = (!state.causes.rule || rule_calm)
                && (!state.causes.host_cpu || cpu_calm_host || state.idle())
                && (!state.causes.host_memory || mem_calm_host);
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

/// `relax_step` clamped into (0, 1].
fn clamp_params(mut params: GovernorParams) -> GovernorParams {
    if !(params.relax_step > 0.0 && params.relax_step <= 1.0) {
        params.relax_step = if params.relax_step > 1.0 { 1.0 } else { 0.25 };
    }
    params
}

/// The id with the largest value (ties → lowest id).
fn heaviest(items: impl Iterator<Item = (u64, f64)>) -> Option<u64> {
    let mut best: Option<(u64, f64)> = None;
    for (id, value) in items {
        best = match best {
            Some((bid, bv)) if bv > value || (bv == value && bid < id) => Some((bid, bv)),
            _ => Some((id, value)),
        };
    }
    best.map(|(id, _)| id)
}

/// One relax step of `state.current` toward `state.policy`.
fn relax_step(state: &State, step: f64) -> Limits {
    let policy = state.policy;
    let cur = state.current;
    let cpu = if cur.cpu >= policy.cpu {
        policy.cpu
    } else {
        let next = cur.cpu + (policy.cpu - cur.cpu) * step;
        if policy.cpu - next <= policy.cpu * SNAP_FRACTION {
            policy.cpu
        } else {
            next
        }
    };
    let memory_high = match (cur.memory_high, policy.memory_high) {
        (None, _) => policy.memory_high,
        (Some(c), Some(target)) => Some(step_toward(c, target, step).unwrap_or(target)),
        (Some(c), None) => {
            let ceiling = state.mem_tightened_to.unwrap_or(c).saturating_mul(2);
            step_toward(c, ceiling, step)
        }
    };
    Limits { cpu, memory_high }
}

/// `cur` moved `step` of the way to `target`; `None` when it lands within the snap distance
/// (or was already there).
fn step_toward(cur: u64, target: u64, step: f64) -> Option<u64> {
    if cur >= target {
        return None;
    }
    let gap = (target - cur) as f64;
    let next = cur + (gap * step) as u64;
    let remaining = (target - next) as f64;
    if remaining <= target as f64 * SNAP_FRACTION {
        None
    } else {
        Some(next)
    }
}
