//! When background helpers (warm namespaces, pooled cgroups) may build: not while a boot is
//! starting, whose setup and exec they would compete with for the CPU and for kernel locks,
//! but at least every so often under a steady stream of boots.
use std::time::{Duration, Instant};

/// Quiet needed after a boot before building.
pub(crate) const BUILD_QUIET: Duration = Duration::from_millis(5);
/// Longest a build is put off while boots keep coming.
pub(crate) const BUILD_MAX_DEFER: Duration = Duration::from_millis(10);

/// Nice value of the builder threads (and of the namespace holders they clone). Below the
/// apps, but not at 19: with the CPU saturated, nice-19 builders barely ran, so boots went
/// cold, and one preempted while holding a kernel lock (cgroup creation) delayed boots waiting
/// for it. `bench-spawn -n 100 --interval-ms 10` with two busy loops on the two cores, two runs
/// each: nice 19 p50 9.7 / 9.5 ms, p99 38 / 41 ms; nice 10 p50 6.1 / 6.1 ms, p99 14 / 13 ms;
/// unloaded no difference beyond the noise.
pub(crate) const BUILDER_NICE: libc::c_int = 10;

/// Lowers the calling thread to [`BUILDER_NICE`] (a builder thread, at its start).
pub(crate) fn lower_builder_priority() {
    // SAFETY: setpriority on the calling thread (who = 0 on Linux: the caller's tid); no
    // pointers involved.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, BUILDER_NICE);
    }
}

/// Tracks boots and answers how long a helper should still wait.
#[derive(Debug, Default)]
pub(crate) struct QuietGate {
    last_boot: Option<Instant>,
    deferred_since: Option<Instant>,
}

impl QuietGate {
    /// A boot started now.
    pub fn boot(&mut self, now: Instant) {
        self.last_boot = Some(now);
    }

    /// How long to hold off building for an app with `ready` sets (namespaces, groups) made:
    /// not at all when it has none (its next boot would build its own anyway, slower), else
    /// [`wait`](Self::wait).
    pub fn hold(&mut self, now: Instant, ready: usize) -> Duration {
        if ready == 0 {
            Duration::ZERO
        } else {
            self.wait(now)
        }
    }

    /// How long to hold off building: zero when no boot started in the last [`BUILD_QUIET`],
    /// or when building has been put off for [`BUILD_MAX_DEFER`] already.
    pub fn wait(&mut self, now: Instant) -> Duration {
        let wait = self
            .last_boot
            .map_or(Duration::ZERO, |t| BUILD_QUIET.saturating_sub(now - t));
        if wait.is_zero() {
            self.deferred_since = None;
            return wait;
        }
        let since = *self.deferred_since.get_or_insert(now);
        if now - since >= BUILD_MAX_DEFER {
            self.deferred_since = None;
            return Duration::ZERO;
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_quiet_but_not_forever() {
        let t0 = Instant::now();
        let mut g = QuietGate::default();
        assert_eq!(g.wait(t0), Duration::ZERO, "no boot yet");
        g.boot(t0);
        assert_eq!(g.wait(t0), BUILD_QUIET);
        assert_eq!(g.wait(t0 + BUILD_QUIET), Duration::ZERO, "quiet reached");
        let mut h = QuietGate::default();
        h.boot(t0);
        assert_eq!(
            h.hold(t0, 0),
            Duration::ZERO,
            "nothing ready: build at once"
        );
        assert_eq!(h.hold(t0, 1), BUILD_QUIET);
        // Boots every 2 ms: the wait never ends on its own, but is capped.
        let mut now = t0 + Duration::from_millis(20);
        let first_deferral = now;
        loop {
            g.boot(now);
            now += Duration::from_millis(2);
            if g.wait(now).is_zero() {
                break;
            }
            assert!(now - first_deferral <= BUILD_MAX_DEFER + Duration::from_millis(2));
        }
        assert!(now - first_deferral >= BUILD_MAX_DEFER);
    }
}
