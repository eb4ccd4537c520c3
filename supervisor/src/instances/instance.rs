//! One instance of an app: its state, its process handle, its load and its share of the
//! host-wide budget.
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hako_policies::App;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::runtime::{EffectiveLimits, Running};
use super::state::State;
use super::Budget;
use crate::metrics::StopReason;

/// One instance of an app.
pub struct Instance {
    pub id: u64,
    pub app: String,
    pub(super) policy: Arc<App>,
    pub(super) started: Instant,
    /// The supervisor's clock origin: `last_used_ms` counts from it, so instances of every app
    /// compare (least recently used eviction).
    pub(super) epoch: Instant,
    state: Mutex<State>,
    pub(super) running: Mutex<Option<Arc<dyn Running>>>,
    pub(super) in_flight: AtomicU32,
    pub(super) requests: AtomicU64,
    pub(super) last_used_ms: AtomicU64,
    pub(super) stop_reason: Mutex<Option<StopReason>>,
    pub(super) stop: Notify,
    pub(super) idle: Notify,
    pub(super) successor_started: AtomicBool,
    /// Asks the instance's task to look at its hibernation: hibernate (state `Hibernated`
    /// and not `waking`) or wake (`waking`). Notifications coalesce; the task re-reads both.
    pub(super) sleep: Notify,
    /// A request asked a hibernated instance to wake (single flight: set once per wake).
    pub(super) waking: AtomicBool,
    /// The process is frozen (hibernated, or stopping and not yet thawed).
    pub(super) frozen: AtomicBool,
    /// Hibernation failed once (e.g. no freezer): the instance stays awake.
    pub(super) hibernate_refused: AtomicBool,
    /// The proxy's connection generation for this instance ([`hako_proxy::Lease::generation`]),
    /// advanced before each hibernation: keep-alive connections pooled before the freeze are
    /// never reused after the wake (the app's overdue keep-alive timers close them on thaw,
    /// racing the first request).
    conn_generation: AtomicU64,
    /// Host-wide budget this instance is charged to while it is booting, ready or hibernated.
    budget: Arc<Budget>,
    charged: AtomicBool,
    /// The memory it is charged with: its limit, or its resident size while hibernated.
    charged_memory: AtomicU64,
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
    /// A new instance in state `Booting`, charged to `budget`.
    pub(super) fn booting(id: u64, policy: Arc<App>, epoch: Instant, budget: Arc<Budget>) -> Self {
        budget.charge(&policy);
        let policy_memory = policy.limits.memory;
        let inst = Instance {
            id,
            app: policy.name.clone(),
            policy,
            started: Instant::now(),
            epoch,
            state: Mutex::new(State::Booting),
            running: Mutex::new(None),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            last_used_ms: AtomicU64::new(0),
            stop_reason: Mutex::new(None),
            stop: Notify::new(),
            idle: Notify::new(),
            successor_started: AtomicBool::new(false),
            sleep: Notify::new(),
            waking: AtomicBool::new(false),
            hibernate_refused: AtomicBool::new(false),
            conn_generation: AtomicU64::new(0),
            frozen: AtomicBool::new(false),
            charged_memory: AtomicU64::new(policy_memory),
            budget,
            charged: AtomicBool::new(true),
        };
        inst.touch();
        inst
    }

    /// The connection generation leases carry (see `conn_generation`).
    pub(super) fn conn_generation(&self) -> u64 {
        self.conn_generation.load(Ordering::Acquire)
    }

    /// Retires every pooled connection to this instance: later leases carry a new generation.
    pub(super) fn retire_connections(&self) {
        self.conn_generation.fetch_add(1, Ordering::AcqRel);
    }

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

    /// Moves to `to` if the state machine allows it (see [`State::allows`]); staying in the
    /// same state is a no-op. Returns whether the instance is in `to` now.
    pub(super) fn transition(&self, to: State) -> bool {
        let mut s = self.state.lock().expect("instance state lock");
        if *s == to {
            return true;
        }
        if s.allows(to) {
            *s = to;
            true
        } else {
            false
        }
    }

    pub(super) fn running(&self) -> Option<Arc<dyn Running>> {
        self.running.lock().expect("instance lock").clone()
    }

    /// Milliseconds since the supervisor's epoch.
    pub(super) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Records a use now (for the idle timeout and LRU eviction).
    pub(super) fn touch(&self) {
        self.last_used_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long since the instance was last used.
    pub(super) fn idle_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_used_ms.load(Ordering::Relaxed)),
        )
    }

    /// Releases this instance's share of the host-wide budget (once). An instance stops
    /// counting when it starts draining: it takes no new work and is on its way out.
    pub(super) fn uncharge(&self) {
        if self.charged.swap(false, Ordering::AcqRel) {
            self.budget
                .uncharge(self.charged_memory.load(Ordering::Acquire));
        }
    }

    /// Charges the host-wide budget `bytes` of memory for this instance instead of what it
    /// was charged so far (its limit while awake, its resident size while hibernated).
    pub(super) fn recharge_memory(&self, bytes: u64) {
        if self.charged.load(Ordering::Acquire) {
            let old = self.charged_memory.swap(bytes, Ordering::AcqRel);
            self.budget.memory.fetch_add(bytes, Ordering::AcqRel);
            self.budget.memory.fetch_sub(old, Ordering::AcqRel);
        }
    }

    /// Asks the instance to drain and stop for `reason`. Returns false if it already stops.
    pub(super) fn request_stop(&self, reason: StopReason) -> bool {
        let mut r = self.stop_reason.lock().expect("stop lock");
        if r.is_some() {
            return false;
        }
        *r = Some(reason);
        drop(r);
        // A ready instance starts draining; a booting one stays `Booting` (the state machine
        // has no Booting -> Draining) and notices the stop in its readiness wait.
        self.transition(State::Draining);
        self.uncharge();
        self.stop.notify_one();
        true
    }

    /// A snapshot for the admin API and `hako ps`.
    pub(super) fn info(&self) -> InstanceInfo {
        let running = self.running();
        let policy = &self.policy.limits;
        let configured = EffectiveLimits {
            cpu: Some(policy.cpu),
            memory_max: Some(policy.memory),
            memory_high: None,
            pids: Some(policy.pids),
        };
        InstanceInfo {
            node: String::new(),
            app: self.app.clone(),
            id: format!("{}-{}", self.app, self.id),
            pid: running.as_ref().map(|r| r.pid()),
            state: self.state(),
            age_seconds: self.started.elapsed().as_secs_f64(),
            idle_seconds: self.idle_for().as_secs_f64(),
            requests: self.requests.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            memory_bytes: running.as_ref().and_then(|r| r.resident_bytes()),
            limits: running.and_then(|r| r.limits()).unwrap_or(configured),
        }
    }
}

/// A live instance, its process handle and the policy it was booted with.
pub type RunningInstance = (Arc<Instance>, Arc<dyn Running>, Arc<App>);

/// A snapshot of an instance for the admin API and `hako ps`.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceInfo {
    /// The node (`node_name`) this instance runs on; filled in by the supervisor.
    pub node: String,
    pub app: String,
    pub id: String,
    pub pid: Option<i32>,
    pub state: State,
    pub age_seconds: f64,
    pub idle_seconds: f64,
    pub requests: u64,
    pub in_flight: u32,
    /// Memory the instance holds in RAM (its cgroup's usage; for a hibernated instance what
    /// is left after reclaim).
    pub memory_bytes: Option<u64>,
    pub limits: EffectiveLimits,
}
