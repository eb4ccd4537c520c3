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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::instances::Supervisor;

/// While draining, an instance with nothing in flight for this long is stopped, and the node
/// exits once it has no instance and no request arrived for this long.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// How often a drain looks at what is left.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// The node's own state: its name, whether its proxy listens, whether it drains.
#[derive(Debug)]
pub struct NodeState {
    name: Mutex<String>,
    listening: AtomicBool,
    draining: watch::Sender<bool>,
    /// Set once a drain ended and the node is exiting: too late to undrain.
    exiting: AtomicBool,
    /// Clock origin of `last_request_ms`.
    epoch: Instant,
    /// When a request last started or ended (ms since `epoch`).
    last_request_ms: AtomicU64,
}

impl Default for NodeState {
    fn default() -> Self {
        NodeState {
            name: Mutex::new(String::new()),
            // A supervisor without a proxy (unit tests) is not held unhealthy for it; `hako
            // serve` clears it until its listener is bound and after the proxy stopped.
            listening: AtomicBool::new(true),
            draining: watch::channel(false).0,
            exiting: AtomicBool::new(false),
            epoch: Instant::now(),
            last_request_ms: AtomicU64::new(0),
        }
    }
}

/// What `POST /v1/drain` and `/v1/undrain` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainChange {
    /// The state changed.
    Changed,
    /// It was already so.
    Already,
    /// The drain is over and the node is exiting: undrain is too late.
    TooLate,
}

impl NodeState {
    /// This node's name (`node_name`, default the host name).
    pub fn name(&self) -> String {
        self.name.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_name(&self, name: &str) {
        *self.name.lock().unwrap_or_else(|p| p.into_inner()) = name.to_owned();
    }

    /// Whether the proxy accepts connections (false before the bind and after it stopped).
    pub fn set_listening(&self, yes: bool) {
        self.listening.store(yes, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Starts a drain (idempotent).
    pub fn drain(&self) -> DrainChange {
        if self.exiting.load(Ordering::Acquire) {
            return DrainChange::Already;
        }
        if self.draining.send_replace(true) {
            DrainChange::Already
        } else {
            DrainChange::Changed
        }
    }

    /// Cancels a drain, unless the node already exits.
    pub fn undrain(&self) -> DrainChange {
        if self.exiting.load(Ordering::Acquire) {
            return DrainChange::TooLate;
        }
        if self.draining.send_replace(false) {
            DrainChange::Changed
        } else {
            DrainChange::Already
        }
    }

    /// Records a request starting or ending (the drain waits for a quiet node).
    pub fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_request_ms.store(ms, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_request_ms.load(Ordering::Relaxed)))
    }

    /// Why the node itself cannot serve (the runtime's reasons are added by the supervisor).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.listening.load(Ordering::Acquire) {
            out.push("not listening: the proxy does not accept connections".to_owned());
        }
        if self.is_draining() {
            out.push("draining".to_owned());
        }
        out
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_and_undrain_change_health() {
        let n = NodeState::default();
        assert!(n.problems().is_empty());
        assert_eq!(n.drain(), DrainChange::Changed);
        assert_eq!(n.drain(), DrainChange::Already);
        assert_eq!(n.problems(), vec!["draining".to_owned()]);
        assert_eq!(n.undrain(), DrainChange::Changed);
        assert_eq!(n.undrain(), DrainChange::Already);
        assert!(n.problems().is_empty());
        n.set_listening(false);
        assert_eq!(n.problems().len(), 1);
        assert!(n.problems()[0].starts_with("not listening"));
    }

    #[test]
    fn undrain_is_too_late_once_exiting() {
        let n = NodeState::default();
        n.drain();
        n.exiting.store(true, Ordering::Release);
        assert_eq!(n.undrain(), DrainChange::TooLate);
        assert!(n.is_draining());
    }
}
