//! The lifecycle state machine of one instance.
//!
//! ```text
//! Booting ──ready──▶ Ready ──stop / died──▶ Draining ──gone──▶ Stopped
//!    │                ▲  │                      ▲
//!    │          woken │  │ idle hibernate_after │ stop / died / woken dead
//!    │                │  ▼                      │
//!    │               Hibernated ────────────────┘
//!    └──────────── boot failed / stopped while booting ─────────▶ Stopped
//! ```
//!
//! [`State::allows`] is the one place that decides which transitions exist; every change of
//! an instance's state goes through [`Instance::transition`](super::instance::Instance),
//! which refuses the others. Adding a state (e.g. a future `Hibernated`, between `Ready` and
//! `Draining`) is a change to this file only: the variant, its arms in [`State::allows`],
//! and, if it should be counted by the `hako_instances` gauge, its slot in
//! [`State::gauge_slot`] (and the matching label in `crate::metrics`).
use serde::Serialize;

/// Lifecycle state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Spawned (or spawning), not yet ready: counts against the budget, gets no requests.
    Booting,
    /// Serving: leases are handed out on it.
    Ready,
    /// Takes no new requests; in-flight ones finish, then the process is stopped.
    Draining,
    /// Idle, frozen (no CPU) and its memory reclaimed into swap when the host has some; gets
    /// no leases until a request wakes it (thaw), which makes it `Ready` again.
    Hibernated,
    /// Gone: the process was reaped and cleaned up, the instance left its pool.
    Stopped,
}

impl State {
    /// Whether an instance in state `self` may move to `to`. Staying in the same state is
    /// not a transition (and is refused here; [`Instance::transition`] treats it as a no-op).
    ///
    /// [`Instance::transition`]: super::instance::Instance::transition
    pub fn allows(self, to: State) -> bool {
        use State::*;
        matches!(
            (self, to),
            (Booting, Ready)
                | (Booting, Stopped)
                | (Ready, Draining)
                | (Ready, Hibernated)
                | (Hibernated, Ready)
                | (Hibernated, Draining)
                | (Draining, Stopped)
        )
    }

    /// The instance's slot in the `hako_instances` gauges (booting, ready, draining,
    /// hibernated, as `crate::metrics::INSTANCE_STATES`); `None`
    /// for a state that is not counted.
    pub fn gauge_slot(self) -> Option<usize> {
        match self {
            State::Booting => Some(0),
            State::Ready => Some(1),
            State::Draining => Some(2),
            State::Hibernated => Some(3),
            State::Stopped => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::State::*;

    #[test]
    fn only_the_lifecycle_transitions_are_allowed() {
        let all = [Booting, Ready, Draining, Hibernated, Stopped];
        let mut allowed = Vec::new();
        for from in all {
            for to in all {
                if from.allows(to) {
                    allowed.push((from, to));
                }
            }
        }
        assert_eq!(
            allowed,
            vec![
                (Booting, Ready),
                (Booting, Stopped),
                (Ready, Draining),
                (Ready, Hibernated),
                (Draining, Stopped),
                (Hibernated, Ready),
                (Hibernated, Draining),
            ]
        );
    }

    #[test]
    fn stopped_is_final_and_not_counted() {
        assert!([Booting, Ready, Draining, Hibernated, Stopped]
            .iter()
            .all(|s| !Stopped.allows(*s)));
        assert_eq!(Stopped.gauge_slot(), None);
        assert_eq!(
            [Booting, Ready, Draining, Hibernated].map(|s| s.gauge_slot()),
            [Some(0), Some(1), Some(2), Some(3)]
        );
    }
}
