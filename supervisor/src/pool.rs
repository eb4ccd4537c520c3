//! Instances of every app and the decisions around them: single flight of cold boots, the
//! bounded wait queue, per-instance concurrency and scale-out, readiness, crash handling,
//! crash-loop backoff, idle timeout, maximum lifetime and draining.
//!
//! Processes are created through the [`Runtime`] seam, so this logic is tested without root
//! against a runtime that starts plain TCP servers.
//!
//! State machine of an instance:
//! `Booting` → `Ready` → `Draining` → (removed). `Booting` → (removed) when readiness fails or
//! the process dies; `Ready` → (removed) when the process dies (crashed/oom).
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hako_policies::{App, Probe};
use hako_proxy::{ActivateError, Activator, Lease, Upstream};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};

use crate::metrics::{AppMetrics, Metrics, StopReason};

/// A boxed future, the currency of the [`Runtime`] seam.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How an instance's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExitInfo {
    /// Exit code when the process exited normally.
    pub code: Option<i32>,
    /// Signal number when it was killed by a signal.
    pub signal: Option<i32>,
    /// The cgroup recorded an OOM kill.
    pub oom: bool,
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (_, Some(s)) if self.oom => write!(f, "killed by signal {s} (out of memory)"),
            (_, Some(s)) => write!(f, "killed by signal {s}"),
            (Some(c), _) => write!(f, "exited with status {c}"),
            _ => f.write_str("exited"),
        }
    }
}

/// Effective resource limits of an instance, as shown by `/v1/instances`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EffectiveLimits {
    pub cpu: Option<f64>,
    pub memory_max: Option<u64>,
    pub memory_high: Option<u64>,
    pub pids: Option<u64>,
}

/// Resource usage sampled from an instance's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub cpu_usage_usec: u64,
    pub memory_current: u64,
}

/// A process started by a [`Runtime`].
pub trait Running: Send + Sync + 'static {
    fn pid(&self) -> i32;
    fn upstream(&self) -> Arc<dyn Upstream>;
    /// Resolves when the process has exited and was reaped. Called exactly once.
    fn wait(&self) -> BoxFuture<'static, ExitInfo>;
    /// Sends a signal to the process (it is not reaped before `wait` resolved, so the pid is
    /// still ours).
    fn signal(&self, signal: i32);
    /// Removes what the instance left behind (cgroup, state record). Called after `wait`.
    fn cleanup(&self) -> BoxFuture<'static, ()>;
    /// Current usage; `None` when unavailable.
    fn usage(&self) -> Option<Usage> {
        None
    }
    /// Effective limits read back from the kernel.
    fn limits(&self) -> Option<EffectiveLimits> {
        None
    }
    /// Changes cpu quota (cores) and memory.high (bytes) live; used by the governor.
    /// Whether the process has a handler for `signal` (`None`: unknown). PID 1 of a pid
    /// namespace never gets a signal it does not handle, so SIGTERM to an app without a
    /// handler is pointless and the stop goes straight to SIGKILL.
    fn handles_signal(&self, signal: i32) -> Option<bool> {
        let _ = signal;
        None
    }
    fn set_soft_limits(&self, cpu: f64, memory_high: Option<u64>) -> Result<(), String> {
        let _ = (cpu, memory_high);
        Err("not supported by this runtime".into())
    }
}

/// Creates instance processes: real containers in production, plain processes in tests.
pub trait Runtime: Send + Sync + 'static {
    /// Starts an instance of `app`. Resolves once the process exists (it may not be ready).
    fn spawn(&self, app: Arc<App>, id: u64)
        -> BoxFuture<'static, Result<Arc<dyn Running>, String>>;

    /// The counter instance ids are taken from, when the runtime reserves ids ahead of boots
    /// (see [`Runtime::claim_id`]); `None`: the supervisor keeps its own.
    fn instance_ids(&self) -> Option<Arc<AtomicU64>> {
        None
    }

    /// An id reserved ahead for the next instance of `app` (the runtime prepared resources
    /// named after it, e.g. a cgroup), or `None` to take a fresh one. Called with the app's
    /// pool locked: must not block.
    fn claim_id(&self, app: &App) -> Option<u64> {
        let _ = app;
        None
    }
}

/// Lifecycle state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Booting,
    Ready,
    Draining,
}

impl State {
    fn index(self) -> usize {
        match self {
            State::Booting => 0,
            State::Ready => 1,
            State::Draining => 2,
        }
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// One instance of an app.
pub struct Instance {
    pub id: u64,
    pub app: String,
    policy: Arc<App>,
    started: Instant,
    state: Mutex<State>,
    running: Mutex<Option<Arc<dyn Running>>>,
    in_flight: AtomicU32,
    requests: AtomicU64,
    last_used_ms: AtomicU64,
    stop_reason: Mutex<Option<StopReason>>,
    stop: Notify,
    idle: Notify,
    successor_started: AtomicBool,
    /// Host-wide budget this instance is charged to while it is booting or ready.
    budget: Arc<Budget>,
    charged: AtomicBool,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("id", &self.id)
            .field("app", &self.app)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Instance {
    /// Requests leased to this instance so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests in flight right now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn state(&self) -> State {
        *self.state.lock().expect("instance state lock")
    }

    fn running(&self) -> Option<Arc<dyn Running>> {
        self.running.lock().expect("instance lock").clone()
    }

    /// Releases this instance's share of the host-wide budget (once). An instance stops
    /// counting when it starts draining: it takes no new work and is on its way out.
    fn uncharge(&self) {
        if self.charged.swap(false, Ordering::AcqRel) {
            self.budget.instances.fetch_sub(1, Ordering::AcqRel);
            self.budget
                .memory
                .fetch_sub(self.policy.limits.memory, Ordering::AcqRel);
        }
    }

    /// Asks the instance to drain and stop for `reason`. Returns false if it already stops.
    fn request_stop(&self, reason: StopReason) -> bool {
        let mut r = self.stop_reason.lock().expect("stop lock");
        if r.is_some() {
            return false;
        }
        *r = Some(reason);
        drop(r);
        {
            let mut s = self.state.lock().expect("instance state lock");
            if *s == State::Ready {
                *s = State::Draining;
            }
        }
        self.uncharge();
        self.stop.notify_one();
        true
    }
}

/// A live instance, its process handle and the policy it was booted with.
pub type RunningInstance = (Arc<Instance>, Arc<dyn Running>, Arc<App>);

/// A snapshot of an instance for the admin API and `hako ps`.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceInfo {
    pub app: String,
    pub id: String,
    pub pid: Option<i32>,
    pub state: State,
    pub age_seconds: f64,
    pub idle_seconds: f64,
    pub requests: u64,
    pub in_flight: u32,
    pub limits: EffectiveLimits,
}

#[derive(Debug, Clone)]
enum BootFailure {
    Failed(String),
    NotReady(Duration),
}

#[derive(Debug, Default)]
struct PoolState {
    instances: Vec<Arc<Instance>>,
    waiters: usize,
    consecutive_failures: u32,
    backoff_until: Option<Instant>,
    last_failure: Option<BootFailure>,
}

/// Instances of one app.
pub struct AppPool {
    policy: Mutex<Arc<App>>,
    state: Mutex<PoolState>,
    changed: Notify,
    pub metrics: AppMetrics,
}

impl std::fmt::Debug for AppPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppPool").finish_non_exhaustive()
    }
}

impl AppPool {
    fn policy(&self) -> Arc<App> {
        self.policy.lock().expect("policy lock").clone()
    }

    fn publish_gauges(&self, st: &PoolState) {
        let mut counts = [0usize; 3];
        for i in &st.instances {
            counts[i.state().index()] += 1;
        }
        self.metrics.set_instances(counts);
        self.metrics.set_queue_depth(st.waiters);
    }
}

/// The guard inside a [`Lease`]: releases the instance's concurrency slot when dropped.
struct LeaseGuard {
    instance: Arc<Instance>,
    pool: Arc<AppPool>,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.instance
            .last_used_ms
            .store(now_ms(), Ordering::Relaxed);
        if self.instance.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.instance.idle.notify_waiters();
        }
        self.pool.changed.notify_waiters();
    }
}

/// Crash-loop backoff after `failures` consecutive failed boots.
fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(5);
    Duration::from_millis(1000u64 << exp).min(Duration::from_secs(30))
}

/// What the booting and ready instances of every app use of the host-wide budget.
#[derive(Debug, Default)]
struct Budget {
    instances: AtomicU64,
    /// Sum of the memory limits.
    memory: AtomicU64,
}

/// Knobs that are not per app.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// Host-wide maximum of booting + ready instances; None = unlimited. When reached, the
    /// least recently used idle instance is evicted to make room, else 503.
    pub max_live_instances: Option<usize>,
    /// Host-wide maximum of the sum of memory limits of booting + ready instances.
    pub max_memory: Option<u64>,
    /// How often lifetimes are checked.
    pub tick: Duration,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            max_live_instances: None,
            max_memory: None,
            tick: Duration::from_millis(100),
        }
    }
}

/// The supervisor: implements the proxy's [`Activator`].
pub struct Supervisor {
    pools: DashMap<String, Arc<AppPool>>,
    runtime: Arc<dyn Runtime>,
    metrics: Metrics,
    next_id: Arc<AtomicU64>,
    shutting_down: AtomicBool,
    options: Mutex<SupervisorOptions>,
    budget: Arc<Budget>,
    tasks: tokio_util_tasks::TaskCounter,
    me: Weak<Supervisor>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").finish_non_exhaustive()
    }
}

mod tokio_util_tasks {
    //! Counts live instance tasks so shutdown can wait for all of them.
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::sync::Notify;

    #[derive(Debug, Default, Clone)]
    pub struct TaskCounter(Arc<(AtomicUsize, Notify)>);

    pub struct TaskToken(TaskCounter);

    impl TaskCounter {
        pub fn enter(&self) -> TaskToken {
            self.0 .0.fetch_add(1, Ordering::AcqRel);
            TaskToken(self.clone())
        }
        pub fn count(&self) -> usize {
            self.0 .0.load(Ordering::Acquire)
        }
        pub async fn wait_zero(&self) {
            loop {
                let n = self.0 .1.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                if self.count() == 0 {
                    return;
                }
                n.await;
            }
        }
    }

    impl Drop for TaskToken {
        fn drop(&mut self) {
            if self.0 .0 .0.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.0 .0 .1.notify_waiters();
            }
        }
    }
}

impl Supervisor {
    pub fn new(
        runtime: Arc<dyn Runtime>,
        metrics: Metrics,
        options: SupervisorOptions,
    ) -> Arc<Self> {
        let next_id = runtime
            .instance_ids()
            .unwrap_or_else(|| Arc::new(AtomicU64::new(1)));
        Arc::new_cyclic(|me| Supervisor {
            me: me.clone(),
            pools: DashMap::new(),
            runtime,
            metrics,
            next_id,
            shutting_down: AtomicBool::new(false),
            options: Mutex::new(options),
            budget: Arc::new(Budget::default()),
            tasks: Default::default(),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Installs a new set of apps. New apps get a pool; changed apps apply the new policy to
    /// new instances (running ones keep theirs and drain on their normal schedule); removed apps
    /// drain and stop.
    pub fn apply_apps(&self, apps: &[App], options: SupervisorOptions) {
        *self.options.lock().expect("options lock") = options;
        let mut keep = std::collections::HashSet::new();
        for app in apps {
            keep.insert(app.name.clone());
            let policy = Arc::new(app.clone());
            match self.pools.get(&app.name) {
                Some(pool) => {
                    *pool.policy.lock().expect("policy lock") = policy;
                    let mut st = pool.state.lock().expect("pool lock");
                    st.backoff_until = None;
                    st.consecutive_failures = 0;
                    st.last_failure = None;
                }
                None => {
                    let pool = Arc::new(AppPool {
                        policy: Mutex::new(policy),
                        state: Mutex::new(PoolState::default()),
                        changed: Notify::new(),
                        metrics: self.metrics.app(&app.name),
                    });
                    pool.metrics.set_instances([0, 0, 0]);
                    self.pools.insert(app.name.clone(), pool);
                }
            }
        }
        let removed: Vec<String> = self
            .pools
            .iter()
            .filter(|e| !keep.contains(e.key()))
            .map(|e| e.key().clone())
            .collect();
        for name in removed {
            if let Some((_, pool)) = self.pools.remove(&name) {
                let st = pool.state.lock().expect("pool lock");
                for inst in &st.instances {
                    inst.request_stop(StopReason::Shutdown);
                }
                drop(st);
                pool.changed.notify_waiters();
                self.metrics.remove_app(&name);
            }
        }
    }

    /// Snapshot of every live instance.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let mut out = Vec::new();
        for pool in self.pools.iter() {
            let st = pool.state.lock().expect("pool lock");
            for i in &st.instances {
                out.push(info_of(i));
            }
        }
        out.sort_by(|a, b| a.app.cmp(&b.app).then(a.id.cmp(&b.id)));
        out
    }

    /// Live instances of one app (for tests and the governor).
    pub fn live_instances(&self, app: &str) -> Vec<Arc<Instance>> {
        self.pools
            .get(app)
            .map(|p| p.state.lock().expect("pool lock").instances.clone())
            .unwrap_or_default()
    }

    /// Every live instance with its running handle (for the governor's sampler).
    pub fn running_instances(&self) -> Vec<RunningInstance> {
        let mut out = Vec::new();
        for pool in self.pools.iter() {
            let st = pool.state.lock().expect("pool lock");
            for i in &st.instances {
                if let Some(r) = i.running() {
                    out.push((i.clone(), r, i.policy.clone()));
                }
            }
        }
        out
    }

    /// Names of the configured apps.
    pub fn app_names(&self) -> Vec<String> {
        self.pools.iter().map(|e| e.key().clone()).collect()
    }

    /// Per-app metrics handles, if the app exists.
    pub fn app_metrics(&self, app: &str) -> Option<AppMetrics> {
        self.pools.get(app).map(|p| p.metrics.clone())
    }

    /// Whether booting one more instance of `policy` would exceed the host-wide budget.
    fn over_budget(&self, policy: &App) -> bool {
        let opts = self.options.lock().expect("options lock");
        let count = self.budget.instances.load(Ordering::Acquire) as usize;
        let memory = self.budget.memory.load(Ordering::Acquire);
        opts.max_live_instances.is_some_and(|max| count >= max)
            || opts
                .max_memory
                .is_some_and(|max| memory + policy.limits.memory > max)
    }

    /// Starts a boot of a new instance; the caller holds the pool lock and has checked limits.
    fn start_boot(self: &Arc<Self>, pool: &Arc<AppPool>, st: &mut PoolState) {
        let policy = pool.policy();
        let id = self
            .runtime
            .claim_id(&policy)
            .unwrap_or_else(|| self.next_id.fetch_add(1, Ordering::Relaxed));
        let inst = Arc::new(Instance {
            id,
            app: policy.name.clone(),
            policy: policy.clone(),
            started: Instant::now(),
            state: Mutex::new(State::Booting),
            running: Mutex::new(None),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            last_used_ms: AtomicU64::new(now_ms()),
            stop_reason: Mutex::new(None),
            stop: Notify::new(),
            idle: Notify::new(),
            successor_started: AtomicBool::new(false),
            budget: self.budget.clone(),
            charged: AtomicBool::new(true),
        });
        self.budget.instances.fetch_add(1, Ordering::AcqRel);
        self.budget
            .memory
            .fetch_add(policy.limits.memory, Ordering::AcqRel);
        st.instances.push(inst.clone());
        pool.publish_gauges(st);
        let this = self.clone();
        let pool = pool.clone();
        let token = self.tasks.enter();
        tokio::spawn(async move {
            let _token = token;
            this.run_instance(pool, inst, policy).await;
        });
    }

    /// The whole life of one instance: spawn, readiness, serve, stop, cleanup.
    async fn run_instance(
        self: Arc<Self>,
        pool: Arc<AppPool>,
        inst: Arc<Instance>,
        policy: Arc<App>,
    ) {
        let boot_start = Instant::now();
        let running = match self.runtime.spawn(policy.clone(), inst.id).await {
            Ok(r) => r,
            Err(reason) => {
                tracing::warn!(app = %inst.app, instance = inst.id, %reason, "boot failed");
                pool.metrics.boot("failed", None);
                self.forget(&pool, &inst, Some(BootFailure::Failed(reason)));
                return;
            }
        };
        let spawned_after = boot_start.elapsed();
        *inst.running.lock().expect("instance lock") = Some(running.clone());
        let (exit_tx, mut exit_rx) = watch::channel(None::<ExitInfo>);
        {
            let r = running.clone();
            tokio::spawn(async move {
                let info = r.wait().await;
                let _ = exit_tx.send(Some(info));
            });
        }

        // Readiness.
        let timeout = policy.readiness.timeout;
        let probe = policy.readiness.probe.clone();
        let upstream = running.upstream();
        let ready = tokio::select! {
            r = tokio::time::timeout(timeout, wait_ready(upstream.as_ref(), &probe)) => match r {
                Ok(()) => Ok(()),
                Err(_) => Err(BootFailure::NotReady(timeout)),
            },
            _ = exit_rx.changed() => {
                let info = (*exit_rx.borrow()).unwrap_or(ExitInfo { code: None, signal: None, oom: false });
                Err(BootFailure::Failed(format!("app {info} before it was ready")))
            }
            _ = inst.stop.notified() => Err(BootFailure::Failed("stopped while booting".into())),
        };
        match ready {
            Ok(()) => {
                let took = boot_start.elapsed();
                pool.metrics.boot("ok", Some(took));
                tracing::info!(app = %inst.app, instance = inst.id, pid = running.pid(),
                    boot_ms = took.as_secs_f64() * 1e3,
                    spawn_ms = spawned_after.as_secs_f64() * 1e3, "instance ready");
                let mut st = pool.state.lock().expect("pool lock");
                {
                    let mut s = inst.state.lock().expect("instance state lock");
                    if *s == State::Booting {
                        *s = State::Ready;
                    }
                }
                st.consecutive_failures = 0;
                st.backoff_until = None;
                st.last_failure = None;
                inst.last_used_ms.store(now_ms(), Ordering::Relaxed);
                pool.publish_gauges(&st);
                drop(st);
                pool.changed.notify_waiters();
            }
            Err(failure) => {
                let result = match failure {
                    BootFailure::NotReady(_) => "not_ready",
                    BootFailure::Failed(_) => "failed",
                };
                pool.metrics.boot(result, None);
                tracing::warn!(app = %inst.app, instance = inst.id, reason = ?failure, "instance failed to become ready");
                // The stop path below kills it; it counts as a boot failure, not a stop.
                let exit = stop_process(running.as_ref(), &mut exit_rx, Duration::ZERO).await;
                running.cleanup().await;
                pool.metrics.stop(StopReason::BootFailed);
                tracing::info!(app = %inst.app, instance = inst.id, %exit, "instance removed");
                self.forget(&pool, &inst, Some(failure));
                return;
            }
        }

        // Serve until asked to stop or the process dies.
        let reason = tokio::select! {
            _ = exit_rx.changed() => None,
            _ = inst.stop.notified() => *inst.stop_reason.lock().expect("stop lock"),
        };
        let (reason, exit) = match reason {
            Some(reason) => {
                {
                    let st = pool.state.lock().expect("pool lock");
                    *inst.state.lock().expect("instance state lock") = State::Draining;
                    inst.uncharge();
                    pool.publish_gauges(&st);
                }
                pool.changed.notify_waiters();
                // Drain: in-flight requests finish within the grace period.
                let grace = policy.lifetime.grace;
                let drained = tokio::time::timeout(grace, async {
                    loop {
                        let n = inst.idle.notified();
                        tokio::pin!(n);
                        n.as_mut().enable();
                        if inst.in_flight.load(Ordering::Acquire) == 0 {
                            break;
                        }
                        n.await;
                    }
                })
                .await;
                if drained.is_err() {
                    tracing::warn!(app = %inst.app, instance = inst.id,
                        in_flight = inst.in_flight.load(Ordering::Acquire),
                        "grace period over with requests still in flight");
                }
                let exit =
                    stop_process(running.as_ref(), &mut exit_rx, policy.lifetime.stop_timeout)
                        .await;
                // An instance stopped as suspect (refused connections) may really have been
                // OOM-killed.
                let reason = if reason == StopReason::Crashed && exit.oom {
                    StopReason::Oom
                } else {
                    reason
                };
                (reason, exit)
            }
            None => {
                // Dead: never hand it out again, even while its cgroup is being removed.
                {
                    let st = pool.state.lock().expect("pool lock");
                    *inst.state.lock().expect("instance state lock") = State::Draining;
                    inst.uncharge();
                    pool.publish_gauges(&st);
                }
                let exit = (*exit_rx.borrow()).unwrap_or(ExitInfo {
                    code: None,
                    signal: None,
                    oom: false,
                });
                let reason = if exit.oom {
                    StopReason::Oom
                } else {
                    StopReason::Crashed
                };
                (reason, exit)
            }
        };
        running.cleanup().await;
        pool.metrics.stop(reason);
        let age = inst.started.elapsed().as_secs_f64();
        match reason {
            StopReason::Crashed | StopReason::Oom => {
                tracing::warn!(app = %inst.app, instance = inst.id,
                %reason, %exit, age_s = age, requests = inst.requests.load(Ordering::Relaxed), "instance died")
            }
            _ => tracing::info!(app = %inst.app, instance = inst.id, %reason, %exit, age_s = age,
                requests = inst.requests.load(Ordering::Relaxed), "instance stopped"),
        }
        self.forget(&pool, &inst, None);
    }

    /// Removes an instance from its pool and wakes waiters.
    fn forget(&self, pool: &Arc<AppPool>, inst: &Arc<Instance>, failure: Option<BootFailure>) {
        let mut st = pool.state.lock().expect("pool lock");
        st.instances.retain(|i| i.id != inst.id);
        inst.uncharge();
        if let Some(f) = failure {
            st.consecutive_failures += 1;
            st.backoff_until = Some(Instant::now() + backoff(st.consecutive_failures));
            st.last_failure = Some(f);
        }
        pool.publish_gauges(&st);
        drop(st);
        *inst.running.lock().expect("instance lock") = None;
        pool.changed.notify_waiters();
    }

    /// Checks lifetimes of every instance; called every tick.
    pub fn tick(self: &Arc<Self>) {
        let now = now_ms();
        for pool in self.pools.iter() {
            let pool = pool.value().clone();
            let policy = pool.policy();
            let mut successors = 0usize;
            {
                let st = pool.state.lock().expect("pool lock");
                for inst in &st.instances {
                    if inst.state() != State::Ready {
                        continue;
                    }
                    let lt = &inst.policy.lifetime;
                    let idle_ms = now.saturating_sub(inst.last_used_ms.load(Ordering::Relaxed));
                    if inst.in_flight.load(Ordering::Acquire) == 0
                        && Duration::from_millis(idle_ms) >= lt.idle_timeout
                    {
                        inst.request_stop(StopReason::Idle);
                        continue;
                    }
                    if let Some(max) = lt.max_lifetime {
                        let age = inst.started.elapsed();
                        // Boot the successor ahead of the deadline so nobody waits for it.
                        let lead = Duration::from_millis(500).min(max / 4);
                        if lt.prestart_successor
                            && age + lead >= max
                            && !inst.successor_started.swap(true, Ordering::AcqRel)
                        {
                            successors += 1;
                        }
                        if age >= max {
                            inst.request_stop(StopReason::Lifetime);
                        }
                    }
                }
            }
            if successors > 0 && !self.shutting_down.load(Ordering::Acquire) {
                let mut st = pool.state.lock().expect("pool lock");
                for _ in 0..successors {
                    let live = st
                        .instances
                        .iter()
                        .filter(|i| i.state() != State::Draining)
                        .count();
                    // The successor may exceed max_instances by one for a moment: the old one
                    // is about to leave.
                    if live <= policy.scaling.max_instances as usize {
                        self.start_boot(&pool, &mut st);
                    }
                }
            }
        }
    }

    /// Stops accepting leases and stops every instance; returns when all are gone.
    pub async fn shutdown(&self, deadline: Duration) {
        self.shutting_down.store(true, Ordering::Release);
        for pool in self.pools.iter() {
            let st = pool.state.lock().expect("pool lock");
            for inst in &st.instances {
                inst.request_stop(StopReason::Shutdown);
            }
            drop(st);
            pool.changed.notify_waiters();
        }
        if tokio::time::timeout(deadline, self.tasks.wait_zero())
            .await
            .is_err()
        {
            tracing::error!(
                left = self.tasks.count(),
                "instances still stopping at the shutdown deadline"
            );
        }
    }

    /// Forces every live instance down now (second signal).
    pub fn kill_all(&self) {
        for pool in self.pools.iter() {
            let st = pool.state.lock().expect("pool lock");
            for inst in &st.instances {
                if let Some(r) = inst.running() {
                    r.signal(libc::SIGKILL);
                }
            }
        }
    }

    /// Evicts the least recently used idle instance of any app to make room. Returns true if
    /// one was asked to stop.
    fn evict_lru(&self) -> bool {
        let mut best: Option<(u64, Arc<Instance>)> = None;
        for pool in self.pools.iter() {
            let st = pool.state.lock().expect("pool lock");
            for i in &st.instances {
                if i.state() == State::Ready && i.in_flight.load(Ordering::Acquire) == 0 {
                    let used = i.last_used_ms.load(Ordering::Relaxed);
                    if best.as_ref().is_none_or(|(u, _)| used < *u) {
                        best = Some((used, i.clone()));
                    }
                }
            }
        }
        match best {
            Some((_, i)) => i.request_stop(StopReason::Evicted),
            None => false,
        }
    }

    async fn acquire_inner(self: Arc<Self>, app: String) -> Result<Lease, ActivateError> {
        let pool = match self.pools.get(&app) {
            Some(p) => p.value().clone(),
            None => return Err(ActivateError::UnknownApp(app)),
        };
        let policy = pool.policy();
        let deadline = Instant::now() + policy.scaling.queue_timeout.max(policy.readiness.timeout);
        let mut queued = false;
        let mut blocked_by_budget;
        let mut nothing_coming;
        loop {
            let notified = pool.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = pool.state.lock().expect("pool lock");
                if self.shutting_down.load(Ordering::Acquire) {
                    if queued {
                        st.waiters -= 1;
                        pool.publish_gauges(&st);
                    }
                    return Err(ActivateError::ShuttingDown);
                }
                let concurrency = policy.scaling.concurrency;
                // Least loaded ready instance with a free slot.
                let pick = st
                    .instances
                    .iter()
                    .filter(|i| i.state() == State::Ready)
                    .filter(|i| i.in_flight.load(Ordering::Acquire) < i.policy.scaling.concurrency)
                    .min_by_key(|i| i.in_flight.load(Ordering::Acquire))
                    .cloned();
                if let Some(inst) = pick {
                    inst.in_flight.fetch_add(1, Ordering::AcqRel);
                    inst.requests.fetch_add(1, Ordering::Relaxed);
                    if queued {
                        st.waiters -= 1;
                        pool.publish_gauges(&st);
                    }
                    drop(st);
                    let upstream = match inst.running() {
                        Some(r) => r.upstream(),
                        None => {
                            // Died between the state check and now: release and retry.
                            drop(LeaseGuard {
                                instance: inst,
                                pool: pool.clone(),
                            });
                            queued = false;
                            continue;
                        }
                    };
                    return Ok(Lease {
                        upstream,
                        guard: Box::new(LeaseGuard {
                            instance: inst,
                            pool: pool.clone(),
                        }),
                    });
                }
                let booting = st
                    .instances
                    .iter()
                    .filter(|i| i.state() == State::Booting)
                    .count();
                let live = st
                    .instances
                    .iter()
                    .filter(|i| i.state() != State::Draining)
                    .count();
                if booting == 0 {
                    if let (Some(until), Some(f)) = (st.backoff_until, st.last_failure.clone()) {
                        if Instant::now() < until {
                            if queued {
                                st.waiters -= 1;
                                pool.publish_gauges(&st);
                            }
                            let retry = until - Instant::now();
                            return Err(match f {
                                BootFailure::Failed(reason) => ActivateError::BootFailed {
                                    app,
                                    reason: format!(
                                        "{reason} (next boot attempt in {:.1}s)",
                                        retry.as_secs_f64()
                                    ),
                                },
                                BootFailure::NotReady(waited) => {
                                    ActivateError::NotReady { app, waited }
                                }
                            });
                        }
                    }
                }
                // Demand that the booting instances will not absorb → boot another.
                let demand = st.waiters + usize::from(!queued);
                let capacity = booting * concurrency as usize;
                if live < policy.scaling.max_instances as usize && demand > capacity {
                    if self.over_budget(&policy) {
                        blocked_by_budget = true;
                    } else {
                        blocked_by_budget = false;
                        self.start_boot(&pool, &mut st);
                    }
                } else {
                    blocked_by_budget = false;
                }
                if !queued {
                    if st.waiters >= policy.scaling.queue as usize {
                        return Err(ActivateError::QueueFull {
                            app,
                            retry_after: Duration::from_secs(1),
                        });
                    }
                    st.waiters += 1;
                    queued = true;
                    pool.publish_gauges(&st);
                }
                nothing_coming = booting == 0 && live == 0;
            }
            if blocked_by_budget {
                // Make room outside our pool's lock (eviction locks the other pools).
                let evicted = self.evict_lru();
                if !evicted && nothing_coming {
                    let mut st = pool.state.lock().expect("pool lock");
                    st.waiters -= 1;
                    pool.publish_gauges(&st);
                    tracing::warn!(app = %app, "host-wide instance budget exhausted and nothing idle to evict");
                    return Err(ActivateError::QueueFull {
                        app,
                        retry_after: Duration::from_secs(1),
                    });
                }
                if evicted {
                    continue;
                }
            }
            let mut remaining = deadline.saturating_duration_since(Instant::now());
            if blocked_by_budget {
                // Room elsewhere does not wake this pool: look again soon.
                remaining = remaining.min(Duration::from_millis(25));
            }
            if tokio::time::timeout(remaining, notified).await.is_err() {
                if blocked_by_budget && Instant::now() < deadline {
                    continue;
                }
                let mut st = pool.state.lock().expect("pool lock");
                st.waiters -= 1;
                pool.publish_gauges(&st);
                return Err(ActivateError::NotReady {
                    app,
                    waited: policy.scaling.queue_timeout,
                });
            }
        }
    }

    /// Marks the instance behind a failed upstream as suspect: if its process is gone the
    /// exit watcher removes it; here we only stop handing it out when connects are refused.
    fn suspect(&self, id: u64, error: &std::io::Error) {
        if error.kind() != std::io::ErrorKind::ConnectionRefused {
            return;
        }
        for pool in self.pools.iter() {
            let st = pool.state.lock().expect("pool lock");
            if let Some(inst) = st.instances.iter().find(|i| i.id == id) {
                tracing::warn!(app = %inst.app, instance = id, error = %error, "upstream refused connection; replacing instance");
                inst.request_stop(StopReason::Crashed);
                return;
            }
        }
    }
}

fn info_of(i: &Instance) -> InstanceInfo {
    let running = i.running();
    let policy = &i.policy.limits;
    let configured = EffectiveLimits {
        cpu: Some(policy.cpu),
        memory_max: Some(policy.memory),
        memory_high: None,
        pids: Some(policy.pids),
    };
    InstanceInfo {
        app: i.app.clone(),
        id: format!("{}-{}", i.app, i.id),
        pid: running.as_ref().map(|r| r.pid()),
        state: i.state(),
        age_seconds: i.started.elapsed().as_secs_f64(),
        idle_seconds: Duration::from_millis(
            now_ms().saturating_sub(i.last_used_ms.load(Ordering::Relaxed)),
        )
        .as_secs_f64(),
        requests: i.requests.load(Ordering::Relaxed),
        in_flight: i.in_flight.load(Ordering::Relaxed),
        limits: running.and_then(|r| r.limits()).unwrap_or(configured),
    }
}

/// SIGTERM, wait up to `timeout`, then SIGKILL; returns how the process ended.
async fn stop_process(
    running: &dyn Running,
    exit_rx: &mut watch::Receiver<Option<ExitInfo>>,
    timeout: Duration,
) -> ExitInfo {
    if let Some(info) = *exit_rx.borrow() {
        return info;
    }
    // Draining is over by now, so an app that cannot hear SIGTERM gets SIGKILL at once
    // (busybox httpd as PID 1, for one, would otherwise cost the whole stop timeout).
    if !timeout.is_zero() && running.handles_signal(libc::SIGTERM) != Some(false) {
        running.signal(libc::SIGTERM);
        if tokio::time::timeout(timeout, exit_rx.wait_for(Option::is_some))
            .await
            .is_ok()
        {
            if let Some(info) = *exit_rx.borrow() {
                return info;
            }
        }
    }
    running.signal(libc::SIGKILL);
    let _ = exit_rx.wait_for(Option::is_some).await;
    let exit = (*exit_rx.borrow()).unwrap_or(ExitInfo {
        code: None,
        signal: Some(libc::SIGKILL),
        oom: false,
    });
    exit
}

/// Waits until the upstream accepts a connection (and answers HTTP for `Probe::Http`); ready at
/// once for `Probe::ListenFds` (socket activation). Connect
/// attempts back off from 100 µs to 5 ms, so a fast app is seen ready within a fraction of a
/// millisecond of listening.
async fn wait_ready(upstream: &dyn Upstream, probe: &Probe) {
    if matches!(probe, Probe::ListenFds) {
        // The socket was created and is listening before the app started: nothing to wait
        // for, a connection made now is queued by the kernel until the app accepts it.
        return;
    }
    let mut delay = Duration::from_micros(100);
    loop {
        if let Ok(mut stream) = upstream.connect().await {
            match probe {
                Probe::Http { path } => {
                    if http_probe(&mut stream, path).await {
                        return;
                    }
                }
                _ => return,
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(5));
    }
}

async fn http_probe(stream: &mut tokio::net::TcpStream, path: &str) -> bool {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: hako-probe\r\nConnection: close\r\n\r\n");
    if stream.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    let mut n = 0;
    while n < 12 {
        match stream.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => n += k,
        }
    }
    // "HTTP/1.x NNN": any status below 500 means the app is serving.
    buf.starts_with(b"HTTP/1.") && (b'1'..=b'4').contains(&buf[9])
}

impl Activator for Supervisor {
    fn acquire(
        &self,
        app: &str,
    ) -> Pin<Box<dyn Future<Output = Result<Lease, ActivateError>> + Send + '_>> {
        let app = app.to_string();
        Box::pin(async move {
            // Boots spawn tasks that own the supervisor, so `acquire_inner` needs the Arc.
            let this = self.self_arc();
            this.acquire_inner(app).await
        })
    }

    fn record(&self, app: Option<&str>, status: u16, elapsed: Duration) {
        match app.and_then(|a| self.pools.get(a)) {
            Some(pool) => pool.metrics.request(status, elapsed),
            None => self.metrics.unrouted_request(status),
        }
        if status >= 500 {
            tracing::warn!(
                app = app.unwrap_or(""),
                status,
                elapsed_ms = elapsed.as_secs_f64() * 1e3,
                "request failed"
            );
        }
    }

    fn upstream_failed(&self, upstream_id: u64, error: &std::io::Error) {
        self.suspect(upstream_id, error);
    }
}

impl Supervisor {
    fn self_arc(&self) -> Arc<Supervisor> {
        self.me
            .upgrade()
            .expect("supervisor is alive while serving")
    }
}
