//! Instances of every app and the decisions around them, by concern:
//!
//! - [`runtime`]: the seam to the processes ([`Runtime`], [`Running`], [`ExitInfo`], ...);
//! - [`state`]: an instance's lifecycle state machine;
//! - [`instance`]: one instance (its state, load, process handle and budget share);
//! - [`admission`]: handing out leases: single flight of cold boots, the bounded wait queue,
//!   per-instance concurrency and scale-out, the host-wide budget and eviction;
//! - [`lifecycle`]: the life of one instance: boot, readiness, serving, stop, crash handling
//!   and crash-loop backoff;
//! - [`lifetimes`]: the periodic tick: idle timeout, maximum lifetime (and its successor);
//! - this module: the [`Supervisor`] that holds the pools, and its public API.
//!
//! Processes are created through the [`Runtime`] seam, so this logic is tested without root
//! against a runtime that starts plain TCP servers. Time is `tokio::time`, so the tests run
//! on paused time.
mod admission;
mod instance;
mod lifecycle;
mod lifetimes;
pub mod runtime;
pub mod state;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dashmap::DashMap;
use hako_policies::App;
use hako_proxy::{ActivateError, Activator, Lease};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::metrics::{AppMetrics, Metrics, StopReason};

pub use instance::{Instance, InstanceInfo, RunningInstance};
pub use runtime::{
    BootError, BootErrorClass, BootErrorSource, BoxFuture, EffectiveLimits, ExitInfo, Hibernation,
    Running, Runtime, Usage,
};
pub use state::State;

/// Why the last boot of an app failed (kept for the crash-loop backoff window).
#[derive(Debug, Clone)]
enum BootFailure {
    Failed(BootError),
    NotReady(Duration),
}

#[derive(Debug, Default)]
struct PoolState {
    instances: Vec<Arc<Instance>>,
    /// Requests queued for a lease (see `admission::Waiter`).
    waiters: usize,
    consecutive_failures: u32,
    backoff_until: Option<Instant>,
    last_failure: Option<BootFailure>,
}

impl PoolState {
    /// Instances that take or will take requests (booting, ready or hibernated).
    fn live(&self) -> usize {
        self.instances
            .iter()
            .filter(|i| matches!(i.state(), State::Booting | State::Ready | State::Hibernated))
            .count()
    }

    /// Hibernated instances a request asked to wake.
    fn waking(&self) -> usize {
        self.instances
            .iter()
            .filter(|i| i.state() == State::Hibernated && i.waking.load(Ordering::Acquire))
            .count()
    }

    fn booting(&self) -> usize {
        self.instances
            .iter()
            .filter(|i| i.state() == State::Booting)
            .count()
    }

    /// Forgets the crash-loop history (a boot succeeded, or the policy changed).
    fn clear_failures(&mut self) {
        self.consecutive_failures = 0;
        self.backoff_until = None;
        self.last_failure = None;
    }
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

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().expect("pool lock")
    }

    fn publish_gauges(&self, st: &PoolState) {
        let mut counts = [0usize; 4];
        for i in &st.instances {
            if let Some(slot) = i.state().gauge_slot() {
                counts[slot] += 1;
            }
        }
        self.metrics.set_instances(counts);
        self.metrics.set_queue_depth(st.waiters);
    }

    /// Asks every instance to stop for `reason` and wakes the waiters.
    fn stop_all(&self, reason: StopReason) {
        for inst in &self.lock().instances {
            inst.request_stop(reason);
        }
        self.changed.notify_waiters();
    }
}

/// What the booting, ready and hibernated instances of every app use of the host-wide budget:
/// each counts as one instance, with its memory limit while awake and its resident memory
/// (after reclaim) while hibernated.
#[derive(Debug, Default)]
struct Budget {
    instances: AtomicU64,
    /// Sum of the memory limits.
    memory: AtomicU64,
}

impl Budget {
    fn charge(&self, policy: &App) {
        self.instances.fetch_add(1, Ordering::AcqRel);
        self.memory
            .fetch_add(policy.limits.memory, Ordering::AcqRel);
    }

    /// Releases one instance charged `memory` bytes (see `Instance::recharge_memory`).
    fn uncharge(&self, memory: u64) {
        self.instances.fetch_sub(1, Ordering::AcqRel);
        self.memory.fetch_sub(memory, Ordering::AcqRel);
    }
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
    /// Clock origin of every instance's `last_used_ms`.
    epoch: Instant,
    /// The instance tasks, so shutdown can wait for all of them.
    tasks: TaskTracker,
    /// The runtime the supervisor was made on: instance tasks run there even when a boot is
    /// started by a request on one of the proxy's worker runtimes (which stop before the
    /// instances do, and must not carry boots on their request threads).
    home: Option<tokio::runtime::Handle>,
    /// This node: its name, listening and draining (see [`crate::drain`]).
    node: crate::node::NodeState,
    me: Weak<Supervisor>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").finish_non_exhaustive()
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
        runtime.attach_metrics(&metrics);
        Arc::new_cyclic(|me| Supervisor {
            me: me.clone(),
            pools: DashMap::new(),
            runtime,
            metrics,
            next_id,
            shutting_down: AtomicBool::new(false),
            options: Mutex::new(options),
            budget: Arc::new(Budget::default()),
            epoch: Instant::now(),
            tasks: TaskTracker::new(),
            home: tokio::runtime::Handle::try_current().ok(),
            node: crate::node::NodeState::default(),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Why this node cannot serve right now, one reason each (empty: healthy); `/healthz`
    /// answers 503 with them: the proxy does not listen, the node drains
    /// ([`crate::node::NodeState::problems`]), the runtime cannot boot
    /// ([`Runtime::cannot_boot`]).
    pub fn health_problems(&self) -> Vec<String> {
        let mut out = self.node.problems();
        out.extend(self.runtime.cannot_boot());
        out
    }

    /// This node's name, listening and draining state.
    pub fn node(&self) -> &crate::node::NodeState {
        &self.node
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
                    pool.lock().clear_failures();
                }
                None => {
                    let pool = Arc::new(AppPool {
                        policy: Mutex::new(policy),
                        state: Mutex::new(PoolState::default()),
                        changed: Notify::new(),
                        metrics: self.metrics.app(&app.name),
                    });
                    pool.metrics.set_instances([0; 4]);
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
                pool.stop_all(StopReason::Shutdown);
                self.metrics.remove_app(&name);
            }
        }
    }

    /// Snapshot of every live instance.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let mut out = Vec::new();
        let node = self.node.name();
        for pool in self.pools.iter() {
            out.extend(pool.lock().instances.iter().map(|i| {
                let mut info = i.info();
                info.node.clone_from(&node);
                info
            }));
        }
        out.sort_by(|a, b| a.app.cmp(&b.app).then(a.id.cmp(&b.id)));
        out
    }

    /// Live instances of one app (for tests and the governor).
    pub fn live_instances(&self, app: &str) -> Vec<Arc<Instance>> {
        self.pools
            .get(app)
            .map(|p| p.lock().instances.clone())
            .unwrap_or_default()
    }

    /// Every live instance with its running handle (for the governor's sampler), except the
    /// hibernated ones: frozen, with their memory reclaimed, they are neither sampled nor
    /// tightened.
    pub fn running_instances(&self) -> Vec<RunningInstance> {
        let mut out = Vec::new();
        for pool in self.pools.iter() {
            for i in &pool.lock().instances {
                if i.state() == State::Hibernated {
                    continue;
                }
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

    /// Stops accepting leases and stops every instance; returns when all are gone.
    pub async fn shutdown(&self, deadline: Duration) {
        self.shutting_down.store(true, Ordering::Release);
        for pool in self.pools.iter() {
            pool.stop_all(StopReason::Shutdown);
        }
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!(
                left = self.tasks.len(),
                "instances still stopping at the shutdown deadline"
            );
        }
    }

    /// Forces every live instance down now (second signal).
    pub fn kill_all(&self) {
        for pool in self.pools.iter() {
            for inst in &pool.lock().instances {
                if let Some(r) = inst.running() {
                    r.signal(libc::SIGKILL);
                    // A frozen task (cgroup v1) gets the SIGKILL only once thawed.
                    if inst.frozen.load(Ordering::Acquire) {
                        tokio::spawn(r.wake());
                    }
                }
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
            let st = pool.lock();
            if let Some(inst) = st.instances.iter().find(|i| i.id == id) {
                tracing::warn!(app = %inst.app, instance = id, error = %error, "upstream refused connection; replacing instance");
                inst.request_stop(StopReason::Crashed);
                return;
            }
        }
    }

    fn self_arc(&self) -> Arc<Supervisor> {
        self.me
            .upgrade()
            .expect("supervisor is alive while serving")
    }
}

impl Activator for Supervisor {
    fn acquire(
        &self,
        app: &str,
    ) -> Pin<Box<dyn Future<Output = Result<Lease, ActivateError>> + Send + '_>> {
        let app = app.to_string();
        self.node.touch();
        Box::pin(async move {
            // Boots spawn tasks that own the supervisor, so `acquire_inner` needs the Arc.
            let this = self.self_arc();
            this.acquire_inner(app).await
        })
    }

    fn try_acquire(&self, app: &str) -> Option<Lease> {
        let pool = self.pools.get(app)?.value().clone();
        let lease = self.lease_ready(&pool)?;
        self.node.touch();
        Some(lease)
    }

    fn record(&self, app: Option<&str>, status: u16, elapsed: Duration) {
        self.node.touch();
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
