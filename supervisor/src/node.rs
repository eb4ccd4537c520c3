//! This node's own state: its name, whether its proxy is listening, and whether it is
//! draining (see [`crate::drain`] for what a drain does). The supervisor holds one
//! [`NodeState`]; `/healthz` reports its [`NodeState::problems`].
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// While draining, an instance with nothing in flight for this long is stopped, and the node
/// exits once it has no instance and no request arrived for this long.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// The node's own state: its name, whether its proxy listens, whether it drains.
#[derive(Debug)]
pub struct NodeState {
    name: Mutex<String>,
    listening: AtomicBool,
    pub(crate) draining: watch::Sender<bool>,
    /// Set once a drain ended and the node is exiting: too late to undrain.
    pub(crate) exiting: AtomicBool,
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

    pub(crate) fn quiet_for(&self) -> Duration {
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
