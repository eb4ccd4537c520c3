//! The periodic lifetime check: idle timeout, maximum lifetime and the successor booted
//! ahead of a lifetime's end. Stopped instances drain in their own task
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
        for pool in self.pools.iter() {
            let pool = pool.value().clone();
            let policy = pool.policy();
            let mut successors = 0usize;
            for inst in &pool.lock().instances {
                if inst.state() != State::Ready {
                    continue;
                }
                let lt = &inst.policy.lifetime;
                if inst.in_flight() == 0 && inst.idle_for() >= lt.idle_timeout {
                    inst.request_stop(StopReason::Idle);
                    continue;
                }
                if let Some(max) = lt.max_lifetime {
                    let age = inst.started.elapsed();
                    let lead = SUCCESSOR_LEAD.min(max / 4);
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
            if successors > 0 && !self.shutting_down.load(Ordering::Acquire) {
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
