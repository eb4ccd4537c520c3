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
    Limits { cpu, memory_high }
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
}

fn app(id: u64, policy: Limits, spike: Option<SpikeRule>) -> App {
    App { id, policy, spike }
}

struct Sim {
    gov: Governor,
    now: Duration,
    apps: Vec<App>,
    usage: BTreeMap<u64, u64>,
    demand: BTreeMap<u64, f64>,
    memory: BTreeMap<u64, u64>,
    host: HostPressure,
    /// Instances whose usage cannot be read at the next samples.
    unreadable: BTreeSet<u64>,
    log: Vec<(Duration, Decision)>,
}

impl Sim {
    fn new(apps: Vec<App>) -> Self {
        Self::with(GovernorParams::default(), apps)
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
            let cores = self.demand.get(&a.id).copied().unwrap_or(0.0).min(limit);
            *self.usage.entry(a.id).or_default() += (cores * TICK.as_micros() as f64) as u64;
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
    }
}

fn mem_psi(memory: f64) -> HostPressure {
    HostPressure {
        cpu_some_avg10: Some(0.0),
        memory_some_avg10: Some(memory),
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
    };
    sim.run(ms(3000));
    assert!(sim.log.is_empty(), "{:?}", sim.log);
    assert_eq!(sim.gov.current(1), Some(limits(0.03, Some(16 * MIB))));
}

#[test]
fn default_rule_tightens_a_cpu_hungry_tenant_under_host_pressure() {
    let mut sim = Sim::new(vec![app(1, limits(2.0, Some(256 * MIB)), None)]);
    sim.set_demand(1, 2.0);
    sim.host = psi(3.0);
    sim.run(ms(2000));
    assert!(
        sim.log.is_empty(),
        "no host pressure, no tightening: {:?}",
        sim.log
    );

    // avg10 lags: the tenant has been heavy for a while, the gate opens now.
    let crossing = sim.now;
    sim.host = psi(22.0);
    sim.run(ms(1000));
    let d = sim.decisions_for(1);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].0 <= crossing + TICK,
        "tightened at {:?}, crossing {crossing:?}",
        d[0].0
    );
    assert_eq!(
        d[0].1.after,
        limits(1.0, Some(256 * MIB)),
        "half the cpu, memory untouched"
    );
    assert!(
        d[0].1.reason.contains("host cpu pressure"),
        "{}",
        d[0].1.reason
    );
}

#[test]
fn default_rule_meets_the_budget_when_load_and_pressure_start_together() {
    let mut sim = Sim::new(vec![app(1, limits(2.0, None), None)]);
    sim.run(ms(1000));
    let start = sim.now;
    sim.set_demand(1, 2.0);
    sim.host = psi(40.0);
    sim.run(ms(1000));
    let d = sim.decisions_for(1);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].0 <= start + ms(400),
        "tightened at {:?}, start {start:?}",
        d[0].0
    );
}

#[test]
fn default_rule_does_nothing_without_pressure_data_or_below_half_the_limit() {
    // PSI unavailable.
    let mut sim = Sim::new(vec![app(1, limits(1.0, None), None)]);
    sim.set_demand(1, 1.0);
    sim.run(ms(3000));
    assert!(sim.log.is_empty(), "{:?}", sim.log);
    // Host pressed, but the tenant uses under half its limit.
    let mut sim = Sim::new(vec![app(1, limits(4.0, None), None)]);
    sim.set_demand(1, 1.9);
    sim.host = psi(80.0);
    sim.run(ms(3000));
    assert!(sim.log.is_empty(), "{:?}", sim.log);
}

#[test]
fn the_heaviest_of_several_is_chosen_and_the_others_are_never_touched() {
    let mut sim = Sim::new(vec![
        app(1, limits(1.0, None), None), // busy but modest: 0.8 cores (80 %)
        app(2, limits(2.0, None), None), // the hog: 1.6 cores (80 %)
        app(3, limits(1.0, None), None), // quiet
        app(4, limits(1.0, None), None), // idle
    ]);
    sim.set_demand(1, 0.8);
    sim.set_demand(2, 1.6);
    sim.set_demand(3, 0.1);
    sim.host = psi(30.0);
    sim.run(ms(10_000)); // pressure stays high (PSI lags): still nobody else is touched
    assert_eq!(sim.log.len(), 1, "{:?}", sim.log);
    assert_eq!(sim.log[0].1.id, 2);
    assert_eq!(sim.gov.current(2), Some(limits(1.0, None)));
    for id in [1, 3, 4] {
        assert_eq!(sim.gov.current(id).unwrap().cpu, 1.0, "instance {id}");
    }
}

#[test]
fn ties_choose_the_lowest_id_and_decisions_come_in_id_order() {
    let mut sim = Sim::new(vec![
        app(7, limits(1.0, None), None),
        app(3, limits(1.0, None), None),
    ]);
    sim.set_demand(7, 1.0);
    sim.set_demand(3, 1.0);
    sim.host = psi(30.0);
    sim.run(ms(1000));
    // The tie goes to the lowest id; once it is tightened below the other, the other is the
    // heaviest user and is tightened at a later sample.
    let order: Vec<(Duration, u64)> = sim.log.iter().map(|(at, d)| (*at, d.id)).collect();
    assert_eq!(order.len(), 2, "{order:?}");
    assert_eq!(order[0].1, 3);
    assert_eq!(order[1].1, 7);
    assert!(order[0].0 < order[1].0, "{order:?}");

    // Two rule apps spiking together: both tightened in the same sample, ordered by id.
    let mut sim = Sim::new(vec![
        app(9, limits(1.0, None), rule(0.9, 300, None, None)),
        app(5, limits(1.0, None), rule(0.9, 300, None, None)),
    ]);
    sim.set_demand(9, 1.0);
    sim.set_demand(5, 1.0);
    sim.run(ms(1000));
    let ids: Vec<u64> = sim.log.iter().map(|(_, d)| d.id).collect();
    assert_eq!(ids, vec![5, 9]);
    assert_eq!(sim.log[0].0, sim.log[1].0);
}

#[test]
fn per_app_rule_and_default_rule_govern_their_own_apps() {
    let mut sim = Sim::new(vec![
        // Rule app, the heaviest user, below its own 95 % threshold: left alone even under
        // host pressure (its rule governs it, not the default).
        app(1, limits(4.0, None), rule(0.95, 300, Some(1.0), None)),
        // Rule-less app at 90 % of its limit: the default rule picks it.
        app(2, limits(1.0, None), None),
    ]);
    sim.set_demand(1, 3.0);
    sim.set_demand(2, 0.9);
    sim.host = psi(50.0);
    sim.run(ms(2000));
    assert_eq!(sim.log.len(), 1, "{:?}", sim.log);
    assert_eq!(sim.log[0].1.id, 2);
    assert_eq!(sim.gov.current(1), Some(limits(4.0, None)));

    // The rule app crosses its own threshold with no host pressure at all: its rule fires.
    sim.host = HostPressure::default();
    sim.set_demand(1, 4.0);
    sim.run(ms(1000));
    let d = sim.decisions_for(1);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].1.after, limits(1.0, None));
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
fn host_cpu_tightening_relaxes_only_below_the_lower_threshold() {
    let mut sim = Sim::new(vec![app(1, limits(2.0, None), None)]);
    sim.set_demand(1, 2.0);
    sim.host = psi(30.0);
    sim.run(ms(1000));
    assert_eq!(sim.count(Direction::Tighten), 1);
    sim.host = psi(12.0); // below 20 but above 20 × 0.5: still held
    sim.run(ms(10_000));
    assert_eq!(sim.count(Direction::Relax), 0, "{:?}", sim.log);
    sim.host = psi(8.0);
    sim.set_demand(1, 0.5);
    sim.run(ms(20_000));
    assert!(sim.count(Direction::Relax) >= 2, "{:?}", sim.log);
    assert_eq!(sim.gov.current(1), Some(limits(2.0, None)));
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
        ..GovernorParams::default()
    });
    assert_eq!(sim.gov.current(1), Some(tight));
    sim.set_demand(1, 0.0);
    sim.run(ms(1_000));
    // relax_step 1.0: one step straight back to the policy.
    assert_eq!(sim.gov.current(1), Some(limits(1.0, Some(256 * MIB))));
    assert_eq!(sim.count(Direction::Relax), 1, "{:?}", sim.log);
}

#[test]
fn a_host_cpu_victim_whose_own_load_is_gone_relaxes_while_foreign_pressure_persists() {
    let mut sim = Sim::new(vec![
        app(1, limits(2.0, None), None),
        app(2, limits(1.0, None), None),
    ]);
    sim.set_demand(1, 2.0);
    sim.host = psi(40.0); // others keep the host pressed for the whole test
    sim.run(ms(1000));
    assert_eq!(sim.gov.current(1), Some(limits(1.0, None)));
    // Still using more than a quarter of its tightened limit: held.
    sim.set_demand(1, 0.3);
    sim.run(ms(10_000));
    assert_eq!(sim.count(Direction::Relax), 0, "{:?}", sim.log);
    // Its own load is gone: it relaxes back to exactly its policy, PSI notwithstanding.
    sim.set_demand(1, 0.0);
    sim.run(ms(10_000));
    assert_eq!(sim.gov.current(1), Some(limits(2.0, None)));
    assert!(sim.count(Direction::Relax) >= 2, "{:?}", sim.log);
    assert_eq!(
        sim.count(Direction::Tighten),
        1,
        "no flapping while idle: {:?}",
        sim.log
    );
    assert!(
        sim.decisions_for(2).is_empty(),
        "the idle neighbour is never touched"
    );
    // The load comes back under the same pressure: tightened again within the debounce.
    let back = sim.now;
    sim.set_demand(1, 2.0);
    sim.run(ms(1000));
    let last = sim
        .decisions_for(1)
        .last()
        .map(|(t, d)| (*t, d.clone()))
        .expect("decisions");
    assert_eq!(last.1.direction, Direction::Tighten);
    assert!(last.0 <= back + DEFAULT_SPIKE_FOR + TICK, "{:?}", sim.log);
}
