//! Decision-logic tests on synthetic sample sequences.
//!
//! [`Sim`] plays the host: every tick (100 ms) each instance burns `min(demand, cpu limit the
//! governor set)` cores (the kernel's quota), and the test sets demand, memory and host PSI.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;

const MIB: u64 = 1024 * 1024;
const TICK: Duration = Duration::from_millis(100);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn limits(cpu: f64, memory_high: Option<u64>) -> Limits {
    Limits::new(cpu, memory_high)
}

fn rule(cpu_above: f64, for_ms: u64, cpu: Option<f64>, mem: Option<u64>) -> Option<SpikeRule> {
    Some(SpikeRule {
        cpu_above,
        for_: ms(for_ms),
        tighten_cpu: cpu,
        tighten_memory_high: mem,
    })
}

struct App {
    id: u64,
    policy: Limits,
    spike: Option<SpikeRule>,
    burst_cpu: Option<f64>,
}

fn app(id: u64, policy: Limits, spike: Option<SpikeRule>) -> App {
    App {
        id,
        policy,
        spike,
        burst_cpu: None,
    }
}

struct Sim {
    gov: Governor,
    now: Duration,
    apps: Vec<App>,
    usage: BTreeMap<u64, u64>,
    demand: BTreeMap<u64, f64>,
    memory: BTreeMap<u64, u64>,
    host: HostPressure,
    /// Cumulative throttled time per instance (µs), when the test models throttling.
    throttled: BTreeMap<u64, u64>,
    /// Cumulative own CPU stall per instance (µs), when the test models v2 per-cgroup PSI.
    stall: BTreeMap<u64, u64>,
    /// Host CPU stall share per tick, accumulated into `host.cpu_some_total_usec`.
    cpu_stall: Option<f64>,
    /// Own CPU stall share per tick per instance (v2 per-cgroup PSI), accumulated.
    stall_frac: BTreeMap<u64, f64>,
    /// Instances whose usage cannot be read at the next samples.
    unreadable: BTreeSet<u64>,
    log: Vec<(Duration, Decision)>,
}

impl Sim {
    fn new(apps: Vec<App>) -> Self {
        Self::with(
            GovernorParams {
                host_cpus: 2.0,
                ..Default::default()
            },
            apps,
        )
    }

    fn with(params: GovernorParams, apps: Vec<App>) -> Self {
        let mut sim = Sim {
            gov: Governor::new(params),
            now: Duration::ZERO,
            apps,
            usage: BTreeMap::new(),
            demand: BTreeMap::new(),
            memory: BTreeMap::new(),
            host: HostPressure::default(),
            throttled: BTreeMap::new(),
            stall: BTreeMap::new(),
            cpu_stall: None,
            stall_frac: BTreeMap::new(),
            unreadable: BTreeSet::new(),
            log: Vec::new(),
        };
        sim.observe(); // first sample at t=0: establishes the counters
        sim
    }

    fn sample(&self) -> Sample {
        Sample {
            now: self.now,
            host: self.host,
            instances: self
                .apps
                .iter()
                .filter(|a| !self.unreadable.contains(&a.id))
                .map(|a| InstanceSample {
                    id: a.id,
                    app: format!("app{}", a.id),
                    cpu_usage_usec: self.usage.get(&a.id).copied().unwrap_or(0),
                    memory_current: self.memory.get(&a.id).copied().unwrap_or(0),
                    policy: a.policy,
                    spike: a.spike.clone(),
                    burst_cpu: a.burst_cpu,
                    throttled_usec: self.throttled.get(&a.id).copied(),
                    cpu_stall_usec: self.stall.get(&a.id).copied(),
                })
                .collect(),
            unsampled: self
                .apps
                .iter()
                .map(|a| a.id)
                .filter(|id| self.unreadable.contains(id))
                .collect(),
        }
    }

    fn observe(&mut self) -> Vec<Decision> {
        let decisions = self.gov.observe(&self.sample());
        for d in &decisions {
            // The lead applies every decision; check the governor's own view agrees.
            assert_eq!(self.gov.current(d.id), Some(d.after));
            self.log.push((self.now, d.clone()));
        }
        decisions
    }

    /// One tick: time advances, instances burn CPU (capped by their limit), then a sample.
    fn tick(&mut self) -> Vec<Decision> {
        self.now += TICK;
        for a in &self.apps {
            let limit = self.gov.current(a.id).map_or(a.policy.cpu, |l| l.cpu);
            let demand = self.demand.get(&a.id).copied().unwrap_or(0.0);
            let cores = demand.min(limit);
            *self.usage.entry(a.id).or_default() += (cores * TICK.as_micros() as f64) as u64;
            // The kernel throttles a group whose demand exceeds its quota.
            if let Some(t) = self.throttled.get_mut(&a.id) {
                if demand > limit {
                    *t += 1_000;
                }
            }
            if let Some(f) = self.stall_frac.get(&a.id) {
                *self.stall.entry(a.id).or_default() += (f * TICK.as_micros() as f64) as u64;
            }
        }
        if let Some(f) = self.cpu_stall {
            let total = self.host.cpu_some_total_usec.get_or_insert(0);
            *total += (f * TICK.as_micros() as f64) as u64;
        }
        self.observe()
    }

    fn run(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.tick();
        }
    }

    fn set_demand(&mut self, id: u64, cores: f64) {
        self.demand.insert(id, cores);
    }

    fn decisions_for(&self, id: u64) -> Vec<&(Duration, Decision)> {
        self.log.iter().filter(|(_, d)| d.id == id).collect()
    }

    fn count(&self, direction: Direction) -> usize {
        self.log
            .iter()
            .filter(|(_, d)| d.direction == direction)
            .count()
    }
}

fn psi(cpu: f64) -> HostPressure {
    HostPressure {
        cpu_some_avg10: Some(cpu),
        memory_some_avg10: Some(0.0),
        ..Default::default()
    }
}

fn mem_psi(memory: f64) -> HostPressure {
    HostPressure {
        cpu_some_avg10: Some(0.0),
        memory_some_avg10: Some(memory),
        ..Default::default()
    }
}

/// The standard per-app-rule tenant: 1 core, memory.high 256 MiB, rule 90 % for 300 ms.
fn ruled_app() -> App {
    app(
        1,
        limits(1.0, Some(256 * MIB)),
        rule(0.9, 300, Some(0.25), Some(64 * MIB)),
    )
}

#[test]
fn direction_labels() {
    assert_eq!(Direction::Tighten.to_string(), "tighten");
    assert_eq!(Direction::Relax.to_string(), "relax");
}

#[test]
fn rule_spike_tightens_within_the_for_window() {
    let mut sim = Sim::new(vec![ruled_app()]);
    sim.run(ms(1000));
    assert!(sim.log.is_empty(), "calm tenant touched: {:?}", sim.log);

    let start = sim.now;
    sim.set_demand(1, 1.0);
    sim.run(ms(1000));
    let tightens = sim.decisions_for(1);
    assert_eq!(tightens.len(), 1, "{tightens:?}");
    let (at, d) = tightens[0];
    // Not before `for` has elapsed, and no later than `for` plus one sampling interval.
    assert!(
        *at >= start + ms(300) && *at <= start + ms(400),
        "tightened at {at:?}"
    );
    assert_eq!(d.direction, Direction::Tighten);
    assert_eq!(d.before, limits(1.0, Some(256 * MIB)));
    assert_eq!(d.after, limits(0.25, Some(64 * MIB)));
    assert_eq!(sim.gov.current(1), Some(limits(0.25, Some(64 * MIB))));
    assert!(d.reason.contains("app rule"), "{}", d.reason);
}

#[test]
fn a_burst_shorter_than_for_does_not_tighten() {
    let mut sim = Sim::new(vec![ruled_app()]);
    sim.run(ms(500));
    sim.set_demand(1, 1.0);
    sim.run(ms(200));
    sim.set_demand(1, 0.1);
    sim.run(ms(3000));
    assert!(sim.log.is_empty(), "{:?}", sim.log);
}

#[test]
fn sustained_calm_relaxes_step_by_step_back_to_exactly_the_policy() {
    let mut sim = Sim::new(vec![ruled_app()]);
    sim.set_demand(1, 1.0);
    sim.run(ms(600));
    assert_eq!(sim.count(Direction::Tighten), 1);
    let tightened_at = sim.log[0].0;

    sim.set_demand(1, 0.05);
    sim.run(ms(20_000));
    let relaxes: Vec<_> = sim
        .log
        .iter()
        .filter(|(_, d)| d.direction == Direction::Relax)
        .collect();
    assert!(
        relaxes.len() >= 3,
        "expected several steps, got {relaxes:?}"
    );
    let params = GovernorParams::default();
    // The first step waits for relax_after of calm.
    assert!(
        relaxes[0].0 >= tightened_at + params.relax_after,
        "{:?}",
        relaxes[0].0
    );
    let mut previous = limits(0.25, Some(64 * MIB));
    let mut previous_at = tightened_at;
    for (at, d) in &relaxes {
        assert_eq!(d.before, previous);
        assert!(d.after.cpu > d.before.cpu, "cpu must go up: {d:?}");
        assert!(
            d.after.memory_high > d.before.memory_high,
            "memory.high must go up: {d:?}"
        );
        assert!(d.after.cpu <= 1.0 && d.after.memory_high <= Some(256 * MIB));
        assert!(
            *at - previous_at >= params.relax_after / 4,
            "steps too close: {at:?}"
        );
        previous = d.after;
        previous_at = *at;
    }
    // The first step restores relax_step (25 %) of the gap.
    assert!((relaxes[0].1.after.cpu - (0.25 + 0.75 * 0.25)).abs() < 1e-9);
    // The last step lands exactly on the policy, and nothing moves afterwards.
    assert_eq!(previous, limits(1.0, Some(256 * MIB)));
    assert_eq!(sim.gov.current(1), Some(limits(1.0, Some(256 * MIB))));
    let log_len = sim.log.len();
    sim.run(ms(5000));
    assert_eq!(sim.log.len(), log_len);
}

#[test]
fn load_returning_during_relax_re_tightens_then_holds() {
    let mut sim = Sim::new(vec![ruled_app()]);
    sim.set_demand(1, 1.0);
    sim.run(ms(600));
    sim.set_demand(1, 0.0);
    sim.run(ms(3000)); // relax_after + a couple of steps
    let relaxed = sim.gov.current(1).unwrap();
    assert!(relaxed.cpu > 0.25 && relaxed.cpu < 1.0, "{relaxed:?}");

    let log_len = sim.log.len();
    sim.set_demand(1, 1.0);
    sim.run(ms(3000));
    let new: Vec<_> = sim.log[log_len..]
        .iter()
        .map(|(_, d)| d.direction)
        .collect();
    assert_eq!(new, vec![Direction::Tighten], "{:?}", &sim.log[log_len..]);
    assert_eq!(sim.gov.current(1), Some(limits(0.25, Some(64 * MIB))));
}

#[test]
fn oscillating_signals_tighten_at_most_once_and_never_flap() {
    struct Case {
        name: &'static str,
        app: App,
        /// Sets the signal for tick `n`.
        signal: fn(&mut Sim, u64),
        max_tightens: usize,
    }
    let rule_app = || app(1, limits(1.0, None), rule(0.9, 300, None, None));
    let default_app = || app(1, limits(1.0, None), None);
    let cases = [
        Case {
            name: "utilisation crosses the rule threshold every sample",
            app: rule_app(),
            signal: |sim, n| sim.set_demand(1, if n % 2 == 0 { 1.0 } else { 0.5 }),
            max_tightens: 0,
        },
        Case {
            name: "utilisation two samples above, one below",
            app: rule_app(),
            signal: |sim, n| sim.set_demand(1, if n % 3 == 2 { 0.3 } else { 1.0 }),
            max_tightens: 0,
        },
        Case {
            name: "host PSI 25/15 around the 20 threshold, heavy tenant",
            app: default_app(),
            signal: |sim, n| {
                sim.set_demand(1, 1.0);
                sim.host = psi(if n % 2 == 0 { 25.0 } else { 15.0 });
            },
            max_tightens: 1,
        },
        Case {
            name: "host PSI 25/5 (below the leave threshold every other sample)",
            app: default_app(),
            signal: |sim, n| {
                sim.set_demand(1, 1.0);
                sim.host = psi(if n % 2 == 0 { 25.0 } else { 5.0 });
            },
            max_tightens: 1,
        },
    ];
    for case in cases {
        let mut sim = Sim::new(vec![case.app]);
        for n in 0..100 {
            (case.signal)(&mut sim, n);
            sim.tick();
        }
        assert!(
            sim.count(Direction::Tighten) <= case.max_tightens,
            "{}: {:?}",
            case.name,
            sim.log
        );
        assert_eq!(
            sim.count(Direction::Relax),
            0,
            "{}: {:?}",
            case.name,
            sim.log
        );
    }
}

#[test]
fn a_tightened_tenant_whose_load_oscillates_is_not_relaxed() {
    let mut sim = Sim::new(vec![app(
        1,
        limits(1.0, None),
        rule(0.9, 300, Some(0.5), None),
    )]);
    sim.set_demand(1, 1.0);
    sim.run(ms(600));
    assert_eq!(sim.count(Direction::Tighten), 1);
    // Now saturating its 0.5-core quota every other sample, idle in between, for 10 s.
    for n in 0..100 {
        sim.set_demand(1, if n % 2 == 0 { 1.0 } else { 0.0 });
        sim.tick();
    }
    assert_eq!(sim.count(Direction::Tighten), 1, "{:?}", sim.log);
    assert_eq!(sim.count(Direction::Relax), 0, "{:?}", sim.log);
    assert_eq!(sim.gov.current(1), Some(limits(0.5, None)));
}

#[test]
fn floors_hold_even_with_tiny_targets() {
    let params = GovernorParams::default();
    let mut sim = Sim::new(vec![app(
        1,
        limits(1.0, Some(512 * MIB)),
        rule(0.9, 300, Some(0.001), Some(MIB)),
    )]);
    sim.set_demand(1, 1.0);
    sim.run(ms(2000));
    assert_eq!(sim.count(Direction::Tighten), 1, "{:?}", sim.log);
    assert_eq!(
        sim.gov.current(1),
        Some(limits(params.floor_cpu, Some(params.floor_memory)))
    );

    // Memory pressure on a tenant using almost nothing: memory.high stops at the floor.
    let mut sim = Sim::new(vec![app(2, limits(1.0, None), None)]);
    sim.memory.insert(2, 4 * MIB);
    sim.host = mem_psi(50.0);
    sim.run(ms(1000));
    assert_eq!(
        sim.gov.current(2),
        Some(limits(1.0, Some(params.floor_memory)))
    );
}

#[test]
fn a_policy_already_below_the_floor_is_never_raised() {
    let mut sim = Sim::new(vec![app(
        1,
        limits(0.03, Some(16 * MIB)),
        rule(0.5, 300, None, Some(MIB)),
    )]);
    sim.set_demand(1, 1.0);
    sim.memory.insert(1, 16 * MIB);
    sim.host = HostPressure {
        cpu_some_avg10: Some(90.0),
        memory_some_avg10: Some(90.0),
        ..Default::default()
    };
    sim.run(ms(3000));
    assert!(sim.log.is_empty(), "{:?}", sim.log);
    assert_eq!(sim.gov.current(1), Some(limits(0.03, Some(16 * MIB))));
}

#[test]
fn a_rule_without_targets_halves_the_cpu_and_keeps_memory_high() {
    let mut sim = Sim::new(vec![app(
        1,
        limits(2.0, Some(128 * MIB)),
        rule(0.8, 200, None, None),
    )]);
    sim.set_demand(1, 2.0);
    sim.run(ms(1000));
    assert_eq!(sim.gov.current(1), Some(limits(1.0, Some(128 * MIB))));
}

#[test]
fn memory_pressure_tightens_the_heaviest_memory_user_once_then_relaxes() {
    let mut sim = Sim::new(vec![
        app(1, limits(1.0, None), None),
        app(2, limits(1.0, Some(1024 * MIB)), None),
        app(3, limits(1.0, None), None),
    ]);
    sim.memory.insert(1, 100 * MIB);
    sim.memory.insert(2, 400 * MIB);
    sim.memory.insert(3, 50 * MIB);
    sim.host = mem_psi(15.0);
    sim.tick();
    assert_eq!(sim.log.len(), 1);
    let d = &sim.log[0].1;
    assert_eq!(d.id, 2);
    assert_eq!(d.after, limits(1.0, Some(360 * MIB)));
    assert!(d.reason.contains("memory pressure"), "{}", d.reason);

    // Reclaim shrinks it; pressure lags: no ratchet, nobody else.
    sim.memory.insert(2, 360 * MIB);
    sim.run(ms(5000));
    assert_eq!(sim.log.len(), 1, "{:?}", sim.log);

    // Between the thresholds (10 × 0.5 ≤ 7 < 10): not calm, held.
    sim.host = mem_psi(7.0);
    sim.run(ms(5000));
    assert_eq!(sim.log.len(), 1, "{:?}", sim.log);

    sim.host = mem_psi(1.0);
    sim.run(ms(30_000));
    assert!(sim.count(Direction::Relax) >= 2, "{:?}", sim.log);
    assert_eq!(sim.gov.current(2), Some(limits(1.0, Some(1024 * MIB))));
    assert!(sim.log.iter().all(|(_, d)| d.id == 2));
}

#[test]
fn memory_high_is_lifted_when_the_policy_has_none() {
    let mut sim = Sim::new(vec![app(1, limits(1.0, None), None)]);
    sim.memory.insert(1, 200 * MIB);
    sim.host = mem_psi(20.0);
    sim.tick();
    assert_eq!(sim.gov.current(1), Some(limits(1.0, Some(180 * MIB))));
    sim.host = mem_psi(0.0);
    sim.run(ms(30_000));
    let last = &sim.log.last().unwrap().1;
    assert_eq!(last.direction, Direction::Relax);
    assert_eq!(last.after, limits(1.0, None));
    assert_eq!(sim.gov.current(1), Some(limits(1.0, None)));
    // Every step in between went up.
    for (_, d) in sim.log.iter().skip(1) {
        assert!(
            d.after
                .memory_high
                .is_none_or(|a| Some(a) > d.before.memory_high),
            "{d:?}"
        );
    }
}

#[test]
fn instances_absent_from_a_sample_are_forgotten() {
    let mut sim = Sim::new(vec![ruled_app(), app(2, limits(1.0, None), None)]);
    sim.set_demand(1, 1.0);
    sim.run(ms(600));
    assert_eq!(sim.gov.current(1), Some(limits(0.25, Some(64 * MIB))));
    sim.apps.retain(|a| a.id != 1);
    sim.tick();
    assert_eq!(sim.gov.current(1), None);
    assert!(sim.gov.current(2).is_some());

    // The same id coming back starts afresh at its policy.
    sim.apps.push(ruled_app());
    sim.set_demand(1, 0.0);
    sim.tick();
    assert_eq!(sim.gov.current(1), Some(limits(1.0, Some(256 * MIB))));

    sim.gov.forget(2);
    assert_eq!(sim.gov.current(2), None);
}

#[test]
fn policy_changes_are_followed_and_clamp_a_tightened_instance() {
    let mut sim = Sim::new(vec![ruled_app(), app(2, limits(1.0, None), None)]);
    sim.set_demand(1, 1.0);
    sim.run(ms(600));
    // Untightened instance follows its new policy without a decision.
    sim.apps[1].policy = limits(3.0, Some(64 * MIB));
    // Tightened instance: new policy below the tightened cpu clamps it.
    sim.apps[0].policy = limits(0.2, Some(512 * MIB));
    sim.tick();
    assert_eq!(sim.gov.current(2), Some(limits(3.0, Some(64 * MIB))));
    assert_eq!(sim.gov.current(1), Some(limits(0.2, Some(64 * MIB))));
}

#[test]
fn a_cpu_counter_reset_is_not_a_spike() {
    let mut sim = Sim::new(vec![ruled_app()]);
    sim.run(ms(500));
    sim.usage.insert(1, 1_000_000_000); // jump: as if the counter wrapped the other way
    sim.tick();
    sim.usage.insert(1, 0); // backwards
    sim.tick();
    sim.run(ms(500));
    // Only the forward jump looks like utilisation, for one window: shorter than `for`.
    assert!(sim.log.is_empty(), "{:?}", sim.log);
}

#[test]
fn an_instance_whose_usage_cannot_be_read_for_a_while_is_not_forgotten() {
    let mut sim = Sim::new(vec![ruled_app(), app(2, limits(1.0, None), None)]);
    sim.set_demand(1, 1.0);
    sim.run(ms(600));
    let tight = limits(0.25, Some(64 * MIB));
    assert_eq!(sim.gov.current(1), Some(tight));
    // Three samples without a reading: no decision, state kept.
    sim.unreadable.insert(1);
    sim.set_demand(1, 0.0);
    for _ in 0..3 {
        assert!(sim.tick().is_empty());
        assert_eq!(sim.gov.current(1), Some(tight));
    }
    // Readable again and calm: it relaxes back to exactly its policy, as usual.
    sim.unreadable.clear();
    sim.run(ms(20_000));
    assert_eq!(sim.gov.current(1), Some(limits(1.0, Some(256 * MIB))));
    assert!(sim.count(Direction::Relax) >= 1);
    assert_eq!(sim.count(Direction::Tighten), 1, "{:?}", sim.log);
}

#[test]
fn a_failed_tighten_is_resynced_and_retried() {
    let mut sim = Sim::new(vec![ruled_app()]);
    sim.set_demand(1, 1.0);
    let first = loop {
        let d = sim.tick();
        if !d.is_empty() {
            break d;
        }
    };
    assert_eq!(first[0].direction, Direction::Tighten);
    // The write failed: the cgroup is still at the policy (read back with rounding noise).
    sim.gov.resync(1, limits(0.999_999, Some(256 * MIB)));
    assert_eq!(sim.gov.current(1), Some(limits(1.0, Some(256 * MIB))));
    // Still hot: the next sample decides the same tightening again.
    let again = sim.tick();
    assert_eq!(again.len(), 1, "{:?}", sim.log);
    assert_eq!(again[0].direction, Direction::Tighten);
    assert_eq!(again[0].after, first[0].after);
}

#[test]
fn a_failed_relax_step_is_resynced_and_the_instance_still_reaches_its_policy() {
    let mut sim = Sim::new(vec![ruled_app()]);
    sim.set_demand(1, 1.0);
    sim.run(ms(600));
    sim.set_demand(1, 0.0);
    let failed = loop {
        let d = sim.tick();
        if let Some(d) = d.into_iter().find(|d| d.direction == Direction::Relax) {
            break d;
        }
    };
    sim.gov.resync(1, failed.before);
    assert_eq!(sim.gov.current(1), Some(failed.before));
    sim.run(ms(20_000));
    assert_eq!(sim.gov.current(1), Some(limits(1.0, Some(256 * MIB))));
    let relaxes: Vec<_> = sim
        .decisions_for(1)
        .into_iter()
        .filter(|(_, d)| d.direction == Direction::Relax)
        .collect();
    assert_eq!(
        relaxes[1].1.before, failed.before,
        "the failed step is redone"
    );
}

#[test]
fn resync_of_an_unknown_id_is_ignored() {
    let mut sim = Sim::new(vec![ruled_app()]);
    sim.gov.resync(9, limits(0.1, None));
    assert_eq!(sim.gov.current(9), None);
}

#[test]
fn new_parameters_keep_a_tightened_instance_and_it_relaxes_under_them() {
    let mut sim = Sim::new(vec![ruled_app()]);
    sim.set_demand(1, 1.0);
    sim.run(ms(600));
    let tight = sim.gov.current(1).expect("known");
    assert!(tight.cpu < 1.0);
    sim.gov.set_params(GovernorParams {
        relax_after: ms(500),
        relax_step: 1.0,
        host_cpus: 2.0,
        ..GovernorParams::default()
    });
    assert_eq!(sim.gov.current(1), Some(tight));
    sim.set_demand(1, 0.0);
    sim.run(ms(1_000));
    // relax_step 1.0: one step straight back to the policy.
    assert_eq!(sim.gov.current(1), Some(limits(1.0, Some(256 * MIB))));
    assert_eq!(sim.count(Direction::Relax), 1, "{:?}", sim.log);
}

/// Host PSI over the interval: `stall` of every tick (from `total`), no memory pressure.
fn stall(sim: &mut Sim, share: f64) {
    sim.host.cpu_some_avg10 = None;
    sim.host.memory_some_avg10 = Some(0.0);
    sim.host.cpu_some_total_usec.get_or_insert(0);
    sim.cpu_stall = Some(share);
}

fn weight_of(sim: &Sim, id: u64) -> u32 {
    sim.gov.current(id).expect("known").weight
}

/// The noisy/quiet pair of the bench: noisy's limit is the host's two cores; quiet is a light
/// tenant. Changed semantics (issue 17): the default rule no longer waits for `avg10` nor
/// halves the hog's quota; it lowers the driver's weight at the first contended interval.
#[test]
fn contention_lowers_the_drivers_weight_at_once_and_leaves_its_quota() {
    let mut sim = Sim::new(vec![
        app(1, limits(2.0, None), None), // noisy
        app(2, limits(1.0, None), None), // quiet
    ]);
    sim.set_demand(1, 0.1);
    sim.set_demand(2, 0.03);
    stall(&mut sim, 0.01);
    sim.run(ms(2000));
    assert!(sim.log.is_empty(), "no contention, nothing: {:?}", sim.log);

    let start = sim.now;
    sim.set_demand(1, 6.0); // 12 CGIs on 2 cores
    stall(&mut sim, 0.8);
    sim.run(ms(1000));
    let d = sim.decisions_for(1);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].0, start + TICK, "the first contended interval");
    assert_eq!(d[0].1.direction, Direction::Tighten);
    assert_eq!(d[0].1.after.weight, CONTENDED_WEIGHT);
    assert_eq!(d[0].1.after.cpu, 2.0, "the quota is not touched");
    assert!(
        d[0].1.reason.contains("host cpu stall"),
        "{}",
        d[0].1.reason
    );
    assert!(sim.decisions_for(2).is_empty(), "quiet is never touched");

    // Calm returns: after relax_after the weight goes back, in one step.
    sim.set_demand(1, 0.1);
    stall(&mut sim, 0.0);
    sim.run(ms(3000));
    assert_eq!(sim.gov.current(1), Some(limits(2.0, None)));
    let last = &sim.log.last().unwrap().1;
    assert_eq!(last.direction, Direction::Relax);
    assert_eq!(
        (last.before.weight, last.after.weight),
        (CONTENDED_WEIGHT, DEFAULT_WEIGHT)
    );
    assert_eq!(sim.count(Direction::Relax), 1);
}

#[test]
fn weight_first_then_the_quota_goes_to_the_fair_share_when_a_neighbour_stays_stalled() {
    let mut sim = Sim::new(vec![
        app(1, limits(2.0, None), None),
        app(2, limits(2.0, None), None),
        app(3, limits(1.0, None), None), // the neighbour
    ]);
    for id in [1, 2, 3] {
        sim.stall.insert(id, 0); // v2: every group has its own cpu.pressure
    }
    sim.set_demand(1, 1.5);
    sim.set_demand(2, 1.5);
    sim.set_demand(3, 0.2);
    stall(&mut sim, 0.6);
    // The weight is enough: the neighbour does not stall. Weights only, quotas untouched.
    sim.run(ms(2000));
    for id in [1, 2] {
        assert_eq!(weight_of(&sim, id), CONTENDED_WEIGHT, "instance {id}");
        assert_eq!(sim.gov.current(id).unwrap().cpu, 2.0, "instance {id}");
    }
    assert_eq!(sim.gov.current(3), Some(limits(1.0, None)));

    // It is not: the neighbour's own stall stays high. The drivers' quotas go to the max-min
    // fair share of 2 cores: (2 - 0.2) / 2 = 0.9.
    sim.stall_frac.insert(3, 0.5);
    let t = sim.now;
    sim.run(ms(1000));
    for id in [1, 2] {
        let cpu = sim.gov.current(id).unwrap().cpu;
        assert!((cpu - 0.9).abs() < 0.01, "instance {id}: {cpu}");
        let (at, d) = sim
            .decisions_for(id)
            .last()
            .map(|(a, d)| (*a, d.clone()))
            .unwrap();
        assert!(at <= t + 2 * TICK, "{at:?}");
        assert!(d.reason.contains("fair share"), "{}", d.reason);
    }
    assert!(sim.decisions_for(3).is_empty());
}

#[test]
fn flapping_load_lowers_the_weight_once_and_never_flaps() {
    let mut sim = Sim::new(vec![
        app(1, limits(2.0, None), None),
        app(2, limits(1.0, None), None),
    ]);
    sim.set_demand(2, 0.05);
    for i in 0..40 {
        // 300 ms on, 300 ms off, well within relax_after (2 s).
        let on = i % 2 == 0;
        sim.set_demand(1, if on { 4.0 } else { 0.0 });
        stall(&mut sim, if on { 0.7 } else { 0.0 });
        sim.run(ms(300));
    }
    assert_eq!(sim.log.len(), 1, "{:?}", sim.log);
    assert_eq!(weight_of(&sim, 1), CONTENDED_WEIGHT);
    // Calm for good: relaxed once.
    sim.set_demand(1, 0.0);
    stall(&mut sim, 0.0);
    sim.run(ms(3000));
    assert_eq!(sim.count(Direction::Relax), 1, "{:?}", sim.log);
    assert_eq!(sim.gov.current(1), Some(limits(2.0, None)));
}

#[test]
fn many_tenants_only_the_drivers_are_touched() {
    let mut apps: Vec<App> = (1..=200)
        .map(|id| app(id, limits(1.0, None), None))
        .collect();
    apps.push(app(500, limits(2.0, None), None));
    apps.push(app(501, limits(2.0, None), None));
    let mut sim = Sim::new(apps);
    for id in 1..=200 {
        sim.set_demand(id, 0.004); // 0.8 cores in all
    }
    sim.set_demand(500, 2.0);
    sim.set_demand(501, 0.6);
    stall(&mut sim, 0.5);
    sim.run(ms(2000));
    let touched: BTreeSet<u64> = sim.log.iter().map(|(_, d)| d.id).collect();
    assert_eq!(touched, BTreeSet::from([500, 501]), "{:?}", sim.log);
    // The heavy one: weight first, then (the host stays contended while 200 neighbours are
    // active) its quota to the max-min fair share: (2 - 0.8) / 2 = 0.6 cores.
    let d500: Vec<Limits> = sim
        .decisions_for(500)
        .iter()
        .map(|(_, d)| d.after)
        .collect();
    assert_eq!(d500.len(), 2, "{d500:?}");
    assert_eq!((d500[0].cpu, d500[0].weight), (2.0, CONTENDED_WEIGHT));
    assert!((d500[1].cpu - 0.6).abs() < 1e-6, "{d500:?}");
    assert_eq!(weight_of(&sim, 501), CONTENDED_WEIGHT);
    // A rule app is governed by its rule only, even when it is the heaviest user.
    let mut sim = Sim::new(vec![
        app(1, limits(2.0, None), rule(0.95, 300, Some(1.0), None)),
        app(2, limits(1.0, None), None),
    ]);
    sim.set_demand(1, 1.5);
    sim.set_demand(2, 0.9);
    stall(&mut sim, 0.5);
    sim.run(ms(2000));
    assert!(sim.decisions_for(1).is_empty(), "{:?}", sim.log);
    assert_eq!(weight_of(&sim, 2), CONTENDED_WEIGHT);
}

#[test]
fn without_psi_contention_is_seen_from_usage_counters() {
    let mut sim = Sim::new(vec![
        app(1, limits(2.0, None), None),
        app(2, limits(1.0, None), None),
    ]);
    sim.set_demand(1, 0.5);
    sim.run(ms(2000));
    assert!(sim.log.is_empty(), "{:?}", sim.log);
    assert_eq!(sim.gov.pressure_source(), Some(PressureSource::Usage));
    // The tenants saturate the host's 2 cores: contention, seen within one interval.
    let start = sim.now;
    sim.set_demand(1, 3.0);
    sim.set_demand(2, 0.1);
    sim.run(ms(1000));
    let d = sim.decisions_for(1);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].0, start + TICK);
    assert!(d[0].1.reason.contains("no PSI"), "{}", d[0].1.reason);
    // /proc/stat busy time, when known, is used instead of the tenants' sum: a foreign
    // process saturating the host is contention too (the weight is free to lower).
    let mut sim = Sim::new(vec![app(1, limits(1.0, None), None)]);
    sim.set_demand(1, 0.5);
    sim.host.cpu_busy_usec = Some(0);
    for _ in 0..5 {
        sim.host.cpu_busy_usec = sim.host.cpu_busy_usec.map(|b| b + 50_000);
        sim.tick();
    }
    assert!(sim.log.is_empty(), "{:?}", sim.log);
    sim.host.cpu_busy_usec = sim.host.cpu_busy_usec.map(|b| b + 200_000);
    sim.tick();
    assert_eq!(sim.log.len(), 1, "{:?}", sim.log);
    assert!(
        sim.log[0].1.reason.contains("busy 2.00 of 2"),
        "{:?}",
        sim.log
    );
    assert_eq!(
        sim.log[0].1.after,
        Limits {
            weight: CONTENDED_WEIGHT,
            ..limits(1.0, None)
        }
    );
}

fn lender(id: u64, cpu: f64, burst: f64) -> App {
    App {
        burst_cpu: Some(burst),
        ..app(id, limits(cpu, None), None)
    }
}

#[test]
fn spare_cpu_is_lent_step_by_step_and_taken_back_at_once_under_contention() {
    let mut sim = Sim::new(vec![lender(1, 0.5, 2.0), app(2, limits(1.0, None), None)]);
    sim.throttled.insert(1, 0);
    stall(&mut sim, 0.0);
    sim.run(ms(500));
    assert!(sim.log.is_empty());
    // A lone busy tenant at its quota on an idle host.
    let start = sim.now;
    sim.set_demand(1, 4.0);
    let mut reached = None;
    for _ in 0..20 {
        sim.tick();
        if reached.is_none() && sim.gov.current(1).unwrap().cpu >= 1.6 {
            reached = Some(sim.now - start);
        }
    }
    let reached = reached.expect("lent up to 1.6 cores");
    assert!(reached <= ms(2000), "{reached:?}");
    assert_eq!(
        sim.gov.current(1).unwrap().cpu,
        2.0,
        "up to burst_cpu, no further"
    );
    let raises: Vec<f64> = sim.log.iter().map(|(_, d)| d.after.cpu).collect();
    assert!(raises.len() >= 3, "step by step: {raises:?}");
    assert!(raises.windows(2).all(|w| w[0] < w[1]), "{raises:?}");
    assert!(sim.log.iter().all(|(_, d)| d.direction == Direction::Burst));

    // A second tenant becomes busy: the host is contended, the lent CPU goes back at the very
    // next sample.
    let busy = sim.now;
    sim.set_demand(2, 1.0);
    stall(&mut sim, 0.5);
    sim.tick();
    let last = *sim.decisions_for(1).last().unwrap();
    assert_eq!(last.0, busy + TICK);
    assert_eq!(last.1.direction, Direction::Tighten);
    assert_eq!(last.1.after.cpu, 0.5, "{:?}", last.1);
    assert!(
        last.1.reason.contains("lent cpu taken back"),
        "{}",
        last.1.reason
    );
    // No lending while the neighbour stays busy.
    sim.run(ms(2000));
    assert!(sim.gov.current(1).unwrap().cpu <= 0.5, "{:?}", sim.log);

    // The neighbour leaves: lending resumes. The tenant's load ends: the lent CPU is returned
    // after relax_after.
    sim.set_demand(2, 0.0);
    stall(&mut sim, 0.0);
    sim.run(ms(2000));
    assert_eq!(sim.gov.current(1).unwrap().cpu, 2.0);
    sim.set_demand(1, 0.1);
    sim.run(ms(4000));
    assert_eq!(sim.gov.current(1), Some(limits(0.5, None)));
    assert_eq!(
        sim.decisions_for(1).last().unwrap().1.direction,
        Direction::Relax
    );
}

#[test]
fn no_lending_without_spare_cpu_or_without_hitting_the_quota() {
    // Under its quota: nothing lent.
    let mut sim = Sim::new(vec![lender(1, 1.0, 2.0)]);
    sim.throttled.insert(1, 0);
    sim.set_demand(1, 0.7);
    sim.run(ms(2000));
    assert!(sim.log.is_empty(), "{:?}", sim.log);
    // At its quota, but a foreign process keeps the host busy (/proc/stat): nothing lent.
    let mut sim = Sim::new(vec![lender(1, 1.0, 2.0)]);
    sim.throttled.insert(1, 0);
    sim.set_demand(1, 3.0);
    sim.host.cpu_busy_usec = Some(0);
    for _ in 0..20 {
        sim.host.cpu_busy_usec = sim.host.cpu_busy_usec.map(|b| b + 199_000);
        sim.tick();
    }
    assert_eq!(sim.gov.current(1).unwrap().cpu, 1.0, "{:?}", sim.log);
    assert_eq!(sim.count(Direction::Burst), 0, "{:?}", sim.log);
}
