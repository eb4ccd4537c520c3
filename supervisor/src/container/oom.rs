//! Whether an instance's death was an OOM kill of its own: the cgroup's OOM-kill counter
//! compared with a reading confirmed to predate the death.
use std::time::Duration;

/// How long an instance must be seen alive after a reading of its cgroup's OOM-kill counter
/// before that reading counts as "before its death": an OOM-killed process may still be
/// exiting when the counter has already risen.
const OOM_CONFIRM: Duration = Duration::from_millis(200);

/// The cgroup's OOM-kill counter as it was earlier in the instance's life, so that its death
/// is reported as an OOM kill only when the counter rose since: an earlier OOM kill of another
/// process inside the instance must not turn a later SIGKILL from the host into `oom`.
/// Readings come from the sampler ([`Running::usage`]); one counts once the instance was still
/// alive [`OOM_CONFIRM`] after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct OomBaseline {
    /// OOM kills known to predate the instance's death.
    confirmed: u64,
    /// The oldest unconfirmed reading and when it was taken (the process was alive then).
    pending: Option<(u64, tokio::time::Instant)>,
}

impl OomBaseline {
    /// A reading of the counter at `now`, taken while the instance was alive.
    pub(super) fn sample(&mut self, count: u64, now: tokio::time::Instant) {
        self.confirm(now);
        if self.pending.is_none() {
            self.pending = Some((count, now));
        }
    }

    /// Promotes the pending reading once the instance was alive [`OOM_CONFIRM`] after it.
    fn confirm(&mut self, alive_at: tokio::time::Instant) {
        if let Some((count, at)) = self.pending {
            if alive_at.saturating_duration_since(at) >= OOM_CONFIRM {
                self.confirmed = self.confirmed.max(count);
                self.pending = None;
            }
        }
    }

    /// Whether a death by `signal` with the counter at `count` now was an OOM kill: the
    /// kernel's OOM killer sends SIGKILL, and counts it.
    pub(super) fn killed_by_oom(&self, count: u64, signal: Option<i32>) -> bool {
        signal == Some(libc::SIGKILL) && count > self.confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_sigkill_after_an_earlier_oom_kill_inside_is_not_oom() {
        let t0 = tokio::time::Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut b = OomBaseline::default();
        // Nothing sampled: a SIGKILL with an OOM kill counted is one.
        assert!(b.killed_by_oom(1, Some(libc::SIGKILL)));
        assert!(!b.killed_by_oom(0, Some(libc::SIGKILL)));
        // A worker inside was OOM-killed (count 1), the instance lived on (sampled again
        // later), then the host SIGKILLed it: crashed, not oom. The old rule (count > 0)
        // said oom.
        b.sample(1, ms(0));
        b.sample(1, ms(100));
        assert!(
            b.killed_by_oom(1, Some(libc::SIGKILL)),
            "not yet confirmed alive long enough after the reading"
        );
        b.sample(1, ms(250));
        assert_eq!(b.confirmed, 1);
        assert!(!b.killed_by_oom(1, Some(libc::SIGKILL)));
        // The instance itself OOM-killed later: the count rose since.
        assert!(b.killed_by_oom(2, Some(libc::SIGKILL)));
        // Only SIGKILL deaths are OOM kills.
        assert!(!b.killed_by_oom(2, None));
        assert!(!b.killed_by_oom(2, Some(libc::SIGSEGV)));
    }

    #[test]
    fn an_oom_kill_counted_just_before_the_death_is_not_taken_as_earlier() {
        // The sampler read the counter after the OOM kill but before the process had exited:
        // that reading is never confirmed (the process is not seen alive 200 ms later).
        let t0 = tokio::time::Instant::now();
        let mut b = OomBaseline::default();
        b.sample(0, t0);
        b.sample(0, t0 + Duration::from_millis(300));
        b.sample(1, t0 + Duration::from_millis(310));
        assert_eq!(b.confirmed, 0);
        assert!(b.killed_by_oom(1, Some(libc::SIGKILL)));
    }
}
