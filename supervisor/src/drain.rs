//! Draining a node of a fleet (`hako drain`, `POST /v1/drain`) and what `/healthz` says about
//! the node itself.
//!
//! A fleet is several `hako serve` nodes behind a load balancer that hashes on `Host` and
//! checks `GET /healthz` on each node's admin port. To take a node out (a reboot, an upgrade):
//!
//! 1. `/healthz` answers 503 `draining` at once, so the balancer's check marks the node down
//!    after its `fall` count and sends that node's apps to the next node of its ring;
//! 2. until then the node keeps serving every request it still receives (booting an app if it
//!    must) and those in flight;
//! 3. instances stop as they go idle: an instance with no request in flight and none for
//!    [`DRAIN_IDLE_GRACE`] is stopped (stop reason `idle`), without waiting for its
//!    `idle_timeout`;
//! 4. when no instance is left and no request arrived for [`DRAIN_IDLE_GRACE`], or when
//!    `drain_timeout` has passed, the node shuts down as for SIGTERM (in-flight requests
//!    finish, every instance and cgroup is removed) and `hako serve` exits 0.
//!
//! `hako undrain` (`POST /v1/undrain`) cancels a drain until the node has begun to exit.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::instances::Supervisor;

pub use crate::node::{DrainChange, NodeState, DRAIN_IDLE_GRACE};

/// How often a drain looks at what is left.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Why a drain ended with the node exiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// Nothing was left.
    Empty,
    /// `drain_timeout` passed with this many instances left.
    Timeout { left: usize },
}

/// Runs drains until one ends: waits for a drain to start, follows it (undrain returns to
/// waiting), and returns when the node should exit. `timeout` is read when a drain starts
/// (so a reload's `drain_timeout` applies to the next drain).
pub async fn run(sup: Arc<Supervisor>, timeout: impl Fn() -> Duration) -> DrainEnd {
    let node = sup.node();
    let mut rx = node.draining.subscribe();
    loop {
        if rx.wait_for(|d| *d).await.is_err() {
            // The sender lives in the supervisor, which we hold.
            std::future::pending::<()>().await;
        }
        let limit = timeout();
        let started = Instant::now();
        tracing::info!(
            drain_timeout_s = limit.as_secs_f64(),
            instances = sup.instances().len(),
            "draining: /healthz answers 503, instances stop as they go idle"
        );
        let end = loop {
            tokio::time::sleep(DRAIN_POLL).await;
            if !node.is_draining() {
                break None;
            }
            let left = sup.instances().len();
            if left == 0 && node.quiet_for() >= DRAIN_IDLE_GRACE {
                break Some(DrainEnd::Empty);
            }
            if started.elapsed() >= limit {
                break Some(DrainEnd::Timeout { left });
            }
        };
        match end {
            None => tracing::info!(
                after_s = started.elapsed().as_secs_f64(),
                "undrained: serving again"
            ),
            Some(end) => {
                node.exiting.store(true, Ordering::Release);
                // An undrain that raced with the end still exits: say so in its answer.
                node.draining.send_replace(true);
                match end {
                    DrainEnd::Empty => tracing::info!(
                        after_s = started.elapsed().as_secs_f64(),
                        "drained: no instance left; exiting"
                    ),
                    DrainEnd::Timeout { left } => tracing::warn!(
                        after_s = started.elapsed().as_secs_f64(),
                        instances = left,
                        "drain_timeout reached; stopping what is left and exiting"
                    ),
                }
                return end;
            }
        }
    }
}
