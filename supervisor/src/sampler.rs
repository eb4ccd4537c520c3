//! The sampling loop: every `governor.interval` it reads host PSI and each instance's cgroup
//! usage, updates the `hako_cgroup_*` metrics, asks the [`Governor`] what to change and applies
//! its decisions to the cgroups (logging and counting each change).
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hako_policies::{App, Config, HookPoint};
use tokio::time::Instant;

use crate::governor::{
    read_host_pressure, Governor, GovernorParams, InstanceSample, Limits, PressureSource, Sample,
    SpikeRule,
};
use crate::instances::Supervisor;

/// Maps the configuration's governor section onto the governor's parameters.
pub fn params_of(cfg: &Config) -> GovernorParams {
    let g = &cfg.governor;
    GovernorParams {
        interval: g.interval,
        cpu_pressure: g.cpu_pressure,
        memory_pressure: g.memory_pressure,
        relax_after: g.relax_after,
        relax_step: g.relax_step,
        floor_cpu: g.floor_cpu,
        floor_memory: g.floor_memory,
        host_cpus: host_cpus(),
    }
}

/// The CPUs this process may run on (the capacity the governor shares among tenants).
fn host_cpus() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// An instance that used less than this (in cores) since its last reading, with no request in
/// flight and none since, is idle and read only every [`COLD_INTERVAL`].
const HOT_CORES: f64 = 0.01;
/// Reading interval of idle instances. A tenant that starts burning CPU without requests is
/// seen within this time (then read every interval again).
const COLD_INTERVAL: Duration = Duration::from_secs(2);

/// The last reading of one instance.
#[derive(Debug)]
struct Activity {
    app: String,
    at: Duration,
    cpu_usec: u64,
    memory: u64,
    requests: u64,
    hot: bool,
}

impl Activity {
    fn due(&self, now: Duration, requests: u64, in_flight: u32) -> bool {
        self.hot
            || in_flight > 0
            || requests != self.requests
            || now.saturating_sub(self.at) >= COLD_INTERVAL
    }
}

/// Runs until `stop` turns true.
///
/// Samples are taken on a fixed period (a slow tick is followed by the next one a full period
/// later, never by a catch-up burst). An instance whose usage cannot be read at one tick is
/// kept by the governor (only instances that are gone are forgotten). When a decision cannot be
/// applied, the limits in force are read back and handed to [`Governor::resync`], so the
/// governor's view never drifts from the cgroup; if even that fails, the instance is forgotten
/// and starts afresh at its next sample.
pub async fn run(
    sup: Arc<Supervisor>,
    config: Arc<Mutex<Config>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    run_with_proc(sup, config, stop, PathBuf::from("/proc")).await
}

/// [`run`], reading host pressure below `proc` (`<proc>/pressure/{cpu,memory}`) instead of
/// `/proc`.
pub async fn run_with_proc(
    sup: Arc<Supervisor>,
    config: Arc<Mutex<Config>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    proc: PathBuf,
) {
    let proc = Arc::new(proc);
    let start = Instant::now();
    let mut params: GovernorParams = params_of(&config.lock().expect("config lock"));
    let mut governor = Governor::new(params.clone());
    let mut ticker = ticker(params.interval);
    // What each live instance did at its last reading: when it is due again, and the base of
    // the cpu seconds counter. The entry of an instance that could not be read is kept:
    // forgetting it would count its whole lifetime's CPU again at its next reading.
    let mut activity: HashMap<u64, Activity> = HashMap::new();
    let mut source: Option<PressureSource> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let enabled = {
            let c = config.lock().expect("config lock");
            let p = params_of(&c);
            if p != params {
                if p.interval != params.interval {
                    ticker = self::ticker(p.interval);
                }
                params = p;
                governor.set_params(params.clone());
            }
            c.governor.enabled
        };
        // The one place where the governed instances are chosen: `running_instances` leaves out
        // hibernated instances (never sampled, never tightened).
        let running = sup.running_instances();
        let live: HashSet<u64> = running.iter().map(|(inst, _, _)| inst.id).collect();
        activity.retain(|id, _| live.contains(id));
        // Idle instances are read every COLD_INTERVAL only: with a thousand of them, reading
        // every cgroup every tick would cost more CPU than the tenants use.
        let tick_at = start.elapsed();
        let (due, skipped): (Vec<_>, Vec<_>) =
            running.into_iter().partition(|(inst, _, policy)| {
                // A tightened instance is followed every tick so that it relaxes on time.
                let _ = policy;
                governor.adjusted(inst.id)
                    || activity
                        .get(&inst.id)
                        .is_none_or(|a| a.due(tick_at, inst.requests(), inst.in_flight()))
            });
        let proc_dir = proc.clone();
        let sampled = tokio::task::spawn_blocking(move || {
            let host = read_host_pressure(&proc_dir);
            let mut rows = Vec::with_capacity(due.len());
            let mut unsampled: Vec<u64> = skipped.iter().map(|(inst, _, _)| inst.id).collect();
            for (inst, r, policy) in due {
                match r.reading() {
                    Some(u) => rows.push((inst, u, policy, r)),
                    None => unsampled.push(inst.id),
                }
            }
            // The time of the readings, not of the end of this task's scheduling.
            (start.elapsed(), host, rows, unsampled)
        })
        .await;
        let Ok((now, host, rows, unsampled)) = sampled else {
            continue;
        };
        let mut cpu_by_app: HashMap<String, f64> = HashMap::new();
        for (inst, reading, _, _) in &rows {
            let u = &reading.usage;
            // CPU since the last reading (since the start, at the first one).
            let used = match activity.entry(inst.id) {
                Entry::Occupied(mut e) => {
                    let a = e.get_mut();
                    let elapsed = now.saturating_sub(a.at).as_secs_f64();
                    let used = u.cpu_usage_usec.saturating_sub(a.cpu_usec) as f64 / 1e6;
                    a.hot = inst.in_flight() > 0 || (elapsed > 0.0 && used / elapsed >= HOT_CORES);
                    a.at = now;
                    a.cpu_usec = u.cpu_usage_usec;
                    a.memory = u.memory_current;
                    a.requests = inst.requests();
                    used
                }
                Entry::Vacant(v) => {
                    v.insert(Activity {
                        app: inst.app.clone(),
                        at: now,
                        cpu_usec: u.cpu_usage_usec,
                        memory: u.memory_current,
                        requests: inst.requests(),
                        hot: inst.in_flight() > 0,
                    });
                    u.cpu_usage_usec as f64 / 1e6
                }
            };
            *cpu_by_app.entry(inst.app.clone()).or_default() += used;
        }
        let mut per_app_mem: HashMap<String, u64> = HashMap::new();
        for a in activity.values() {
            *per_app_mem.entry(a.app.clone()).or_default() += a.memory;
        }
        for (app, secs) in &cpu_by_app {
            if let Some(m) = sup.app_metrics(app) {
                m.add_cpu_seconds(*secs);
            }
        }
        // Apps without a live instance use no memory: their gauge drops to zero.
        for app in sup.app_names() {
            if let Some(m) = sup.app_metrics(&app) {
                m.set_memory_bytes(per_app_mem.get(&app).copied().unwrap_or(0));
            }
        }
        if !enabled {
            continue;
        }
        let sample = Sample {
            now,
            host,
            instances: rows
                .iter()
                .map(|(inst, reading, policy, _)| InstanceSample {
                    id: inst.id,
                    app: inst.app.clone(),
                    cpu_usage_usec: reading.usage.cpu_usage_usec,
                    memory_current: reading.usage.memory_current,
                    burst_cpu: policy.limits.burst_cpu,
                    throttled_usec: reading.throttled_usec,
                    cpu_stall_usec: reading.cpu_stall_usec,
                    policy: policy_limits(policy),
                    spike: policy.spike.as_ref().map(|s| SpikeRule {
                        cpu_above: s.cpu_above,
                        for_: s.for_,
                        tighten_cpu: s.tighten_cpu,
                        tighten_memory_high: s.tighten_memory_high,
                    }),
                })
                .collect(),
            unsampled,
        };
        let decisions = governor.observe(&sample);
        if governor.pressure_source() != source {
            source = governor.pressure_source();
            match source {
                Some(PressureSource::Usage) => tracing::warn!(
                    proc = %proc.display(),
                    "no PSI on this host (no readable pressure/cpu): the governor detects CPU \
                     contention from busy CPU and the tenants' usage and throttling counters"
                ),
                Some(PressureSource::Psi) => tracing::info!(
                    proc = %proc.display(),
                    "the governor detects CPU contention from host PSI over each interval"
                ),
                None => {}
            }
        }
        for d in decisions {
            let Some((_, _, policy, r)) = rows.iter().find(|row| row.0.id == d.id) else {
                continue;
            };
            let hook_pid = r.pid();
            let r = r.clone();
            let (before, after) = (d.before, d.after);
            let applied = tokio::task::spawn_blocking(move || {
                // The weight first when it goes down (it is what protects the neighbours at
                // once), last when it goes back up.
                let weight = |r: &Arc<dyn crate::instances::Running>| {
                    if after.weight == before.weight {
                        Ok(())
                    } else {
                        r.set_cpu_weight(after.weight)
                    }
                };
                let soft = |r: &Arc<dyn crate::instances::Running>| {
                    if after.cpu == before.cpu && after.memory_high == before.memory_high {
                        Ok(())
                    } else {
                        r.set_soft_limits(after.cpu, after.memory_high)
                            .map_err(|e| e.to_string())
                    }
                };
                let res = if after.weight < before.weight {
                    weight(&r).and_then(|()| soft(&r))
                } else {
                    soft(&r).and_then(|()| weight(&r))
                };
                // On failure, read back what is in force so the governor can resync.
                let in_force = res.is_err().then(|| r.limits()).flatten();
                (res, in_force)
            })
            .await;
            match applied {
                Ok((Ok(()), _)) => {
                    tracing::info!(
                        app = %d.app, instance = d.id, direction = d.direction.as_str(),
                        cpu_before = d.before.cpu, cpu_after = d.after.cpu,
                        weight_before = d.before.weight, weight_after = d.after.weight,
                        memory_high_before = ?d.before.memory_high, memory_high_after = ?d.after.memory_high,
                        reason = %d.reason, "limits changed"
                    );
                    if let Some(m) = sup.app_metrics(&d.app) {
                        m.limit_change(d.direction.as_str());
                        // on_pressure: in a task of its own, never delaying the sampler.
                        if d.direction.as_str() == "tighten" {
                            let (point, pid) = (HookPoint::OnPressure, Some(hook_pid));
                            let why = d.reason.to_string();
                            if let Some(f) =
                                crate::hooks::fire_later(policy, point, d.id, pid, why, &m)
                            {
                                tokio::spawn(f);
                            }
                        }
                    }
                }
                Ok((Err(e), in_force)) => {
                    tracing::warn!(
                        app = %d.app, instance = d.id, direction = d.direction.as_str(),
                        cpu_after = d.after.cpu, error = %e, "cannot change limits"
                    );
                    match in_force {
                        // The weight cannot be read back here: assume the old one is in force
                        // (a later decision rewrites it either way).
                        Some(l) => governor.resync(
                            d.id,
                            Limits {
                                cpu: l.cpu.unwrap_or(policy.limits.cpu),
                                memory_high: l.memory_high,
                                weight: d.before.weight,
                            },
                        ),
                        None => governor.forget(d.id),
                    }
                }
                Err(e) => {
                    tracing::warn!(app = %d.app, instance = d.id, error = %e, "limit change task failed");
                    governor.forget(d.id);
                }
            }
        }
    }
}

/// The limits the governor moves, as configured for an app.
fn policy_limits(app: &App) -> Limits {
    Limits::new(app.limits.cpu, None)
}

/// A fixed-period ticker whose first tick is one period from now.
fn ticker(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

#[cfg(test)]
mod tests {
    //! The loop against a fake runtime whose one instance burns CPU on a simple model: usage
    //! grows with wall time × min(demand, the CPU limit last written). Reads and writes can be
    //! made to fail.
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use hako_policies::{Rootfs, Spike};
    use hako_proxy::Activator;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::container::HostUpstream;
    use crate::instances::BootErrorSource::Launcher;
    use crate::instances::{
        BootError, BoxFuture, EffectiveLimits, ExitInfo, Running, Runtime, SupervisorOptions, Usage,
    };
    use crate::metrics::Metrics;

    /// The one instance's knobs, shared by the test and the fake.
    #[derive(Default)]
    struct Knobs {
        /// Cores the app would use without a limit.
        demand: Mutex<f64>,
        /// `usage()` answers `None`.
        unreadable: AtomicBool,
        /// `usage()` has been called while unreadable (the sampler did try).
        unreadable_reads: AtomicUsize,
        /// Every `usage()` call.
        reads: AtomicUsize,
        /// The next `n` writes fail (and change nothing).
        failing_writes: AtomicUsize,
        /// CPU limit in force (cores) and writes that succeeded.
        cpu: Mutex<f64>,
        writes: Mutex<Vec<f64>>,
        /// (last reading time, cumulative usage in µs).
        clock: Mutex<Option<(Instant, u64)>>,
    }

    impl Knobs {
        fn advance(&self) -> u64 {
            let mut clock = self.clock.lock().unwrap();
            let now = Instant::now();
            let (then, usage) = clock.unwrap_or((now, 0));
            let cores = self.demand.lock().unwrap().min(*self.cpu.lock().unwrap());
            let usage = usage + (now.duration_since(then).as_micros() as f64 * cores) as u64;
            *clock = Some((now, usage));
            usage
        }
    }

    struct Fake {
        knobs: Arc<Knobs>,
        addr: SocketAddr,
        _server: tokio::task::JoinHandle<()>,
        exit: tokio::sync::watch::Sender<Option<ExitInfo>>,
    }

    impl Running for Fake {
        fn pid(&self) -> i32 {
            4242
        }
        fn upstream(&self) -> Arc<dyn hako_proxy::Upstream> {
            Arc::new(HostUpstream {
                id: 1,
                addr: self.addr,
            })
        }
        fn wait(&self) -> BoxFuture<'static, ExitInfo> {
            let mut rx = self.exit.subscribe();
            Box::pin(async move {
                let _ = rx.wait_for(Option::is_some).await;
                rx.borrow().expect("set")
            })
        }
        fn signal(&self, signal: i32) {
            self.exit.send_replace(Some(ExitInfo {
                code: None,
                signal: Some(signal),
                oom: false,
            }));
        }
        fn cleanup(&self) -> BoxFuture<'static, ()> {
            Box::pin(async {})
        }
        fn usage(&self) -> Option<Usage> {
            self.knobs.reads.fetch_add(1, Ordering::SeqCst);
            let usage = self.knobs.advance();
            if self.knobs.unreadable.load(Ordering::SeqCst) {
                self.knobs.unreadable_reads.fetch_add(1, Ordering::SeqCst);
                return None;
            }
            Some(Usage {
                cpu_usage_usec: usage,
                memory_current: 1 << 20,
            })
        }
        fn limits(&self) -> Option<EffectiveLimits> {
            Some(EffectiveLimits {
                cpu: Some(*self.knobs.cpu.lock().unwrap()),
                memory_max: None,
                memory_high: None,
                pids: None,
            })
        }
        fn set_soft_limits(
            &self,
            cpu: f64,
            memory_high: Option<u64>,
        ) -> Result<(), crate::instances::runtime::SoftLimitError> {
            self.knobs.advance();
            let failing = &self.knobs.failing_writes;
            if failing
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(crate::instances::runtime::SoftLimitError::Cgroup {
                    cgroup: "fake".into(),
                    cpu,
                    memory_high,
                    source: Box::new(hako_launcher::cgroup::CgroupError::Io {
                        op: "write",
                        path: "cpu.max".into(),
                        source: std::io::Error::from_raw_os_error(libc::ENODEV),
                    }),
                });
            }
            *self.knobs.cpu.lock().unwrap() = cpu;
            self.knobs.writes.lock().unwrap().push(cpu);
            Ok(())
        }
    }

    struct FakeRuntime(Arc<Knobs>);

    impl Runtime for FakeRuntime {
        fn spawn(
            &self,
            _app: Arc<App>,
            _id: u64,
        ) -> BoxFuture<'static, Result<Arc<dyn Running>, BootError>> {
            let knobs = self.0.clone();
            Box::pin(async move {
                let io = |e: std::io::Error| BootError::transient(Launcher, e.to_string());
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(io)?;
                let addr = listener.local_addr().map_err(io)?;
                let server = tokio::spawn(async move {
                    while let Ok((mut s, _)) = listener.accept().await {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                });
                let (exit, _) = tokio::sync::watch::channel(None);
                Ok(Arc::new(Fake {
                    knobs,
                    addr,
                    _server: server,
                    exit,
                }) as Arc<dyn Running>)
            })
        }
    }

    const POLICY_CPU: f64 = 1.0;
    const TIGHT_CPU: f64 = 0.25;

    fn config() -> Config {
        let mut app = App::with_defaults("burner", Rootfs::Host, vec!["/bin/true".into()]);
        app.hosts = vec!["burner.test".into()];
        app.limits.cpu = POLICY_CPU;
        app.spike = Some(Spike {
            cpu_above: 0.8,
            for_: Duration::from_millis(60),
            tighten_cpu: Some(TIGHT_CPU),
            tighten_memory_high: None,
        });
        Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            allow_public_admin: false,
            state_dir: PathBuf::from("/nonexistent"),
            cgroup_parent: "hako-sampler-test".into(),
            apps: vec![app],
            governor: hako_policies::Governor {
                interval: Duration::from_millis(20),
                relax_after: Duration::from_millis(200),
                relax_step: 1.0,
                ..Default::default()
            },
            clients: Default::default(),
            egress: Default::default(),
            node_name: None,
            drain_timeout: hako_policies::DEFAULT_DRAIN_TIMEOUT,
            tls: None,
            registries: Vec::new(),
        }
    }

    struct Rig {
        knobs: Arc<Knobs>,
        sup: Arc<Supervisor>,
        stop: tokio::sync::watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn rig() -> Rig {
        let knobs = Arc::new(Knobs::default());
        *knobs.cpu.lock().unwrap() = POLICY_CPU;
        let cfg = config();
        let sup = Supervisor::new(
            Arc::new(FakeRuntime(knobs.clone())),
            Metrics::new(),
            SupervisorOptions::default(),
        );
        sup.apply_apps(&cfg.apps, SupervisorOptions::default());
        drop(sup.acquire("burner").await.expect("boot"));
        let (stop, rx) = tokio::sync::watch::channel(false);
        // No pressure files: host PSI plays no part.
        let proc = PathBuf::from("/nonexistent-proc");
        let task = tokio::spawn(run_with_proc(
            sup.clone(),
            Arc::new(Mutex::new(cfg)),
            rx,
            proc,
        ));
        Rig {
            knobs,
            sup,
            stop,
            task,
        }
    }

    impl Rig {
        fn cpu(&self) -> f64 {
            *self.knobs.cpu.lock().unwrap()
        }

        async fn wait_cpu(&self, cpu: f64, within: Duration) {
            let t = Instant::now();
            while self.cpu() != cpu {
                assert!(
                    t.elapsed() < within,
                    "cpu {} never became {cpu}; writes {:?}",
                    self.cpu(),
                    self.knobs.writes.lock().unwrap()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }

        fn changes(&self, direction: &str) -> f64 {
            let needle =
                format!("hako_limit_changes_total{{app=\"burner\",direction=\"{direction}\"}}");
            self.sup
                .metrics()
                .render()
                .lines()
                .find(|l| l.starts_with(&needle))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0.0)
        }

        fn cpu_seconds(&self) -> f64 {
            self.sup
                .metrics()
                .render()
                .lines()
                .find(|l| l.starts_with("hako_cgroup_cpu_seconds_total{app=\"burner\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0.0)
        }

        async fn finish(self) {
            self.stop.send_replace(true);
            self.task.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_tightened_instance_missing_from_some_samples_still_relaxes_to_its_policy() {
        let rig = rig().await;
        *rig.knobs.demand.lock().unwrap() = 2.0;
        rig.wait_cpu(TIGHT_CPU, Duration::from_secs(5)).await;
        // The burst ends while the usage cannot be read for a few samples.
        rig.knobs.unreadable.store(true, Ordering::SeqCst);
        *rig.knobs.demand.lock().unwrap() = 0.0;
        let t = Instant::now();
        while rig.knobs.unreadable_reads.load(Ordering::SeqCst) < 3 {
            assert!(t.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        rig.knobs.unreadable.store(false, Ordering::SeqCst);
        // Calm again: back to exactly the policy (a forgotten instance would stay tightened).
        rig.wait_cpu(POLICY_CPU, Duration::from_secs(5)).await;
        assert_eq!(
            *rig.knobs.writes.lock().unwrap(),
            vec![TIGHT_CPU, POLICY_CPU]
        );
        assert_eq!((rig.changes("tighten"), rig.changes("relax")), (1.0, 1.0));
        rig.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn failed_writes_are_retried_and_only_applied_changes_are_counted() {
        let rig = rig().await;
        // The first tighten and the first relax both fail.
        rig.knobs.failing_writes.store(1, Ordering::SeqCst);
        *rig.knobs.demand.lock().unwrap() = 2.0;
        rig.wait_cpu(TIGHT_CPU, Duration::from_secs(5)).await;
        assert_eq!(rig.knobs.failing_writes.load(Ordering::SeqCst), 0);
        assert_eq!(rig.changes("tighten"), 1.0);
        rig.knobs.failing_writes.store(1, Ordering::SeqCst);
        *rig.knobs.demand.lock().unwrap() = 0.0;
        rig.wait_cpu(POLICY_CPU, Duration::from_secs(5)).await;
        assert_eq!(rig.knobs.failing_writes.load(Ordering::SeqCst), 0);
        assert_eq!(
            *rig.knobs.writes.lock().unwrap(),
            vec![TIGHT_CPU, POLICY_CPU]
        );
        assert_eq!((rig.changes("tighten"), rig.changes("relax")), (1.0, 1.0));
        rig.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn cpu_seconds_are_not_counted_twice_across_an_unreadable_sample() {
        let rig = rig().await;
        *rig.knobs.demand.lock().unwrap() = 0.5; // below the rule's threshold: no tightening
        tokio::time::sleep(Duration::from_millis(300)).await;
        rig.knobs.unreadable.store(true, Ordering::SeqCst);
        let t = Instant::now();
        while rig.knobs.unreadable_reads.load(Ordering::SeqCst) < 2 {
            assert!(t.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        rig.knobs.unreadable.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        *rig.knobs.demand.lock().unwrap() = 0.0;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let burnt = rig.knobs.advance() as f64 / 1e6;
        let counted = rig.cpu_seconds();
        let writes = rig.knobs.writes.lock().unwrap().clone();
        rig.finish().await;
        assert!(writes.is_empty(), "{writes:?}");
        assert!(burnt > 0.2, "burnt {burnt}");
        assert!(
            (counted - burnt).abs() < 0.02,
            "counted {counted} s of CPU, the instance used {burnt} s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_instances_are_read_rarely_and_busy_ones_every_interval() {
        let rig = rig().await;
        // Idle: no requests, no CPU. Let the first readings settle, then count.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = rig.knobs.reads.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let idle_reads = rig.knobs.reads.load(Ordering::SeqCst) - before;
        // Busy (below the rule's threshold, so nothing is tightened): read every 100 ms.
        *rig.knobs.demand.lock().unwrap() = 0.5;
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let before = rig.knobs.reads.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let busy_reads = rig.knobs.reads.load(Ordering::SeqCst) - before;
        rig.finish().await;
        assert!(
            idle_reads <= 1,
            "an idle instance was read {idle_reads} times in 1.5 s"
        );
        assert!(
            busy_reads >= 10,
            "a busy instance was read only {busy_reads} times in 1.5 s"
        );
    }
}
