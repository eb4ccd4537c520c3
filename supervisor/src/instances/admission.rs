//! Handing out leases: the least loaded ready instance with a free slot, else a boot (one
//! per burst: single flight, more only for demand the booting instances will not absorb, up
//! to `max_instances`), a bounded wait queue, crash-loop backoff answers, and the host-wide
//! budget with least-recently-used eviction.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hako_policies::App;
use hako_proxy::{ActivateError, Lease};
use tokio::time::Instant;

use super::instance::Instance;
use super::state::State;
use super::{AppPool, BootFailure, PoolState, Supervisor};
use crate::metrics::StopReason;

/// How long a host-wide budget refusal tells the client to wait.
const BUDGET_RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often a request blocked by the host-wide budget looks again (room freed in another
/// app's pool does not wake this one).
const BUDGET_RECHECK: Duration = Duration::from_millis(25);

/// A request's place in its pool's wait queue. It is counted in `PoolState::waiters` (and
/// the `hako_queue_depth` gauge) from [`Waiter::join`] until [`Waiter::leave`] or until it is
/// dropped, whichever way the request ends: served, refused, timed out or abandoned by its
/// client.
struct Waiter {
    pool: Arc<AppPool>,
    queued: bool,
}

impl Waiter {
    fn new(pool: Arc<AppPool>) -> Self {
        Waiter {
            pool,
            queued: false,
        }
    }

    /// Joins the queue (no-op when already in it); false when the queue is full. Called with
    /// the pool locked.
    fn join(&mut self, st: &mut PoolState, limit: usize) -> bool {
        if self.queued {
            return true;
        }
        if st.waiters >= limit {
            return false;
        }
        st.waiters += 1;
        self.queued = true;
        self.pool.publish_gauges(st);
        true
    }

    /// Leaves the queue (no-op when not in it). Called with the pool locked, so the count
    /// changes together with the decision made under that lock.
    fn leave(&mut self, st: &mut PoolState) {
        if std::mem::take(&mut self.queued) {
            st.waiters -= 1;
            self.pool.publish_gauges(st);
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.queued {
            let pool = self.pool.clone();
            self.leave(&mut pool.lock());
        }
    }
}

/// The guard inside a [`Lease`]: releases the instance's concurrency slot when dropped.
struct LeaseGuard {
    instance: Arc<Instance>,
    pool: Arc<AppPool>,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.instance.touch();
        if self.instance.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.instance.idle.notify_waiters();
        }
        self.pool.changed.notify_waiters();
    }
}

/// The least loaded ready instance with a free slot.
fn pick(st: &PoolState) -> Option<Arc<Instance>> {
    st.instances
        .iter()
        .filter(|i| i.state() == State::Ready)
        .filter(|i| i.in_flight() < i.policy.scaling.concurrency)
        .min_by_key(|i| i.in_flight())
        .cloned()
}

/// A hibernated instance no request has asked to wake yet: the least recently used one is
/// left asleep longest (its neighbours are likelier to be needed again).
fn sleeping(st: &PoolState) -> Option<Arc<Instance>> {
    st.instances
        .iter()
        .filter(|i| i.state() == State::Hibernated && !i.waking.load(Ordering::Acquire))
        .max_by_key(|i| i.last_used_ms.load(Ordering::Relaxed))
        .cloned()
}

/// Asks a hibernated instance to wake (its task thaws it, makes it ready and wakes the
/// pool's waiters); false if another request did already. Called with the pool locked.
fn start_wake(inst: &Instance) -> bool {
    if inst.waking.swap(true, Ordering::AcqRel) {
        return false;
    }
    inst.sleep.notify_one();
    true
}

/// The answer while the app is in its crash-loop backoff window, if it is.
fn backing_off(st: &PoolState, app: &str) -> Option<ActivateError> {
    let (until, failure) = (st.backoff_until?, st.last_failure.as_ref()?);
    let now = Instant::now();
    if now >= until {
        return None;
    }
    let retry = until.saturating_duration_since(now);
    Some(match failure {
        BootFailure::Failed(e) if e.is_transient() => ActivateError::BootRetrying {
            app: app.to_string(),
            reason: e.reason.clone(),
            retry_after: retry,
        },
        BootFailure::Failed(e) => ActivateError::BootFailed {
            app: app.to_string(),
            reason: format!(
                "{} (next boot attempt in {:.1}s)",
                e.reason,
                retry.as_secs_f64()
            ),
        },
        BootFailure::NotReady(waited) => ActivateError::NotReady {
            app: app.to_string(),
            waited: *waited,
        },
    })
}

impl Supervisor {
    pub(super) async fn acquire_inner(
        self: Arc<Self>,
        app: String,
    ) -> Result<Lease, ActivateError> {
        let pool = match self.pools.get(&app) {
            Some(p) => p.value().clone(),
            None => return Err(ActivateError::UnknownApp(app)),
        };
        let policy = pool.policy();
        let deadline = Instant::now() + policy.scaling.queue_timeout.max(policy.readiness.timeout);
        let queue_full = |app: String| ActivateError::QueueFull {
            app,
            retry_after: BUDGET_RETRY_AFTER,
        };
        // The common case first: a ready instance with a free slot. Nothing waits, so no
        // waiter is registered with `pool.changed` (a lock every request of the app would
        // take twice, on the core of whichever worker runs it).
        if let Some(lease) = self.lease_ready(&pool) {
            return Ok(lease);
        }
        // Declared before every pool lock taken below, so it is dropped after them.
        let mut waiter = Waiter::new(pool.clone());
        loop {
            let notified = pool.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let blocked_by_budget;
            let nothing_coming;
            {
                let mut st = pool.lock();
                if self.shutting_down.load(Ordering::Acquire) {
                    return Err(ActivateError::ShuttingDown);
                }
                if let Some(inst) = pick(&st) {
                    inst.in_flight.fetch_add(1, Ordering::AcqRel);
                    inst.requests.fetch_add(1, Ordering::Relaxed);
                    waiter.leave(&mut st);
                    drop(st);
                    let guard = LeaseGuard {
                        instance: inst,
                        pool: pool.clone(),
                    };
                    match guard.instance.running() {
                        Some(r) => {
                            return Ok(Lease {
                                upstream: r.upstream(),
                                generation: guard.instance.conn_generation(),
                                guard: Box::new(guard),
                            })
                        }
                        // Died between the state check and now: release and retry.
                        None => continue,
                    }
                }
                let booting = st.booting();
                let waking = st.waking();
                let live = st.live();
                let asleep = sleeping(&st);
                if booting == 0 && waking == 0 && asleep.is_none() {
                    if let Some(refusal) = backing_off(&st, &app) {
                        return Err(refusal);
                    }
                }
                // Demand that the booting and waking instances will not absorb → wake a
                // hibernated instance, else boot another.
                let demand = st.waiters + usize::from(!waiter.queued);
                let capacity = (booting + waking) * policy.scaling.concurrency as usize;
                let woke = demand > capacity && asleep.is_some_and(|i| start_wake(&i));
                blocked_by_budget = if woke {
                    false
                } else if live < policy.scaling.max_instances as usize && demand > capacity {
                    let over = self.over_budget(&policy);
                    if !over {
                        self.start_boot(&pool, &mut st);
                    }
                    over
                } else {
                    false
                };
                if !waiter.join(&mut st, policy.scaling.queue as usize) {
                    return Err(queue_full(app));
                }
                nothing_coming = booting == 0 && live == 0 && !woke;
            }
            if blocked_by_budget {
                // Make room outside our pool's lock (eviction locks the other pools).
                let evicted = self.evict_lru();
                if !evicted && nothing_coming {
                    tracing::warn!(app = %app, "host-wide instance budget exhausted and nothing idle to evict");
                    return Err(queue_full(app));
                }
                if evicted {
                    continue;
                }
            }
            let mut remaining = deadline.saturating_duration_since(Instant::now());
            if blocked_by_budget {
                remaining = remaining.min(BUDGET_RECHECK);
            }
            if tokio::time::timeout(remaining, notified).await.is_err() {
                if blocked_by_budget && Instant::now() < deadline {
                    continue;
                }
                return Err(ActivateError::NotReady {
                    app,
                    waited: policy.scaling.queue_timeout,
                });
            }
        }
    }

    /// A lease on the least loaded ready instance with a free slot, if there is one now and
    /// no request is queued before this one.
    pub(super) fn lease_ready(&self, pool: &Arc<AppPool>) -> Option<Lease> {
        for _ in 0..2 {
            let st = pool.lock();
            // Queued requests go first; shutting down is answered by the full path.
            if st.waiters > 0 || self.shutting_down.load(Ordering::Acquire) {
                return None;
            }
            let inst = pick(&st)?;
            inst.in_flight.fetch_add(1, Ordering::AcqRel);
            inst.requests.fetch_add(1, Ordering::Relaxed);
            drop(st);
            let guard = LeaseGuard {
                instance: inst,
                pool: pool.clone(),
            };
            if let Some(r) = guard.instance.running() {
                return Some(Lease {
                    upstream: r.upstream(),
                    generation: guard.instance.conn_generation(),
                    guard: Box::new(guard),
                });
            }
            // Died between the state check and now: the guard releases the slot; look again.
        }
        None
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

    /// Evicts an instance of any app to make room: the least recently used hibernated one
    /// (not being woken), else the least recently used idle ready one. Returns true if one
    /// was asked to stop.
    fn evict_lru(&self) -> bool {
        // (awake, last used): hibernated instances sort first.
        let mut best: Option<((bool, u64), Arc<Instance>)> = None;
        for pool in self.pools.iter() {
            for i in &pool.lock().instances {
                let awake = match i.state() {
                    State::Hibernated if !i.waking.load(Ordering::Acquire) => false,
                    State::Ready if i.in_flight() == 0 => true,
                    _ => continue,
                };
                let key = (awake, i.last_used_ms.load(Ordering::Relaxed));
                if best.as_ref().is_none_or(|(k, _)| key < *k) {
                    best = Some((key, i.clone()));
                }
            }
        }
        match best {
            Some((_, i)) => i.request_stop(StopReason::Evicted),
            None => false,
        }
    }
}
