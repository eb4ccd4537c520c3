//! The periodic lifetime check: idle timeout, hibernation (`lifetime.hibernate_after`), maximum
//! lifetime and the successor booted ahead of a lifetime's end. Stopped instances drain in their own task
//! (`lifecycle::run_instance`).
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::state::State;
use super::Supervisor;
use crate::metrics::StopReason;

/// How long before its maximum lifetime an instance's successor is booted (at most a quarter
/// of the lifetime), so nobody waits for it.
const SUCCESSOR_LEAD: Duration = Duration::from_millis(500);

impl Supervisor {
    /// Checks lifetimes of every instance; called every tick.
    pub fn tick(self: &Arc<Self>) {
        // A draining node stops instances as soon as they are idle (see `crate::drain`).
        let draining = self.node.is_draining();
        for pool in self.pools.iter() {
            let pool = pool.value().clone();
            let policy = pool.policy();
            let mut successors = 0usize;
            let mut slept = false;
            let st = pool.lock();
            for inst in &st.instances {
                // The idle timeout and the maximum lifetime count for hibernated instances too.
                let state = inst.state();
                if state != State::Ready && state != State::Hibernated {
                    continue;
                }
                let lt = &inst.policy.lifetime;
                let idle_limit = if draining {
                    lt.idle_timeout.min(crate::node::DRAIN_IDLE_GRACE)
                } else {
                    lt.idle_timeout
                };
                if inst.in_flight() == 0 && inst.idle_for() >= idle_limit {
                    inst.request_stop(StopReason::Idle);
                    continue;
                }
                if let Some(after) = lt.hibernate_after.filter(|_| !draining) {
                    // Under the pool lock, so no lease is handed out on it from here on.
                    if state == State::Ready
                        && inst.in_flight() == 0
                        && inst.idle_for() >= after
                        && !inst.hibernate_refused.load(Ordering::Acquire)
                        && inst.transition(State::Hibernated)
                    {
                        inst.sleep.notify_one();
                        slept = true;
                    }
                }
                if let Some(max) = lt.max_lifetime {
                    let age = inst.started.elapsed();
                    let lead = SUCCESSOR_LEAD.min(max / 4);
                    if lt.prestart_successor
                        && state == State::Ready
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
            if slept {
                pool.publish_gauges(&st);
            }
            drop(st);
            if successors > 0 && !self.shutting_down.load(Ordering::Acquire) && !draining {
                let mut st = pool.lock();
                for _ in 0..successors {
                    // The successor may exceed max_instances by one for a moment: the old one
                    // is about to leave.
                    if st.live() <= policy.scaling.max_instances as usize {
                        self.start_boot(&pool, &mut st);
                    }
                }
            }
        }
    }
}
