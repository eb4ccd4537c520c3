//! The life of one instance: spawn, readiness, serving, draining, stop and cleanup; crash
//! handling and the crash-loop backoff of failed boots.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hako_policies::{App, HookPoint, Probe};
use hako_proxy::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::instance::Instance;
use super::runtime::{BootError, BootErrorClass, BootErrorSource, ExitInfo, Running};
use super::state::State;
use super::{AppPool, BootFailure, PoolState, Supervisor};
use crate::metrics::StopReason;

/// The longest crash-loop backoff, and the backoff after a permanent failure.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Crash-loop backoff after `failures` consecutive failed boots, the last one `failure`:
/// - a permanent failure (missing executable, bad rootfs, invalid spec) will not heal by
///   retrying: [`MAX_BACKOFF`] at once;
/// - a transient failure of the launcher or its zygote (EAGAIN, ENOMEM, a zygote restart) is
///   retried soon: 100 ms, doubling;
/// - the app's own failures (it exited or did not answer before it was ready): 1 s, doubling.
///
/// Every schedule stops at [`MAX_BACKOFF`].
fn backoff(failure: &BootFailure, failures: u32) -> Duration {
    let first = match failure {
        BootFailure::Failed(e) => match (e.class, e.origin) {
            // Not counted (see `forget`): the next boot goes at once.
            (BootErrorClass::Interrupted, _) => return Duration::ZERO,
            (BootErrorClass::Permanent, BootErrorSource::Launcher | BootErrorSource::Zygote) => {
                return MAX_BACKOFF
            }
            (BootErrorClass::Transient, BootErrorSource::Launcher | BootErrorSource::Zygote) => {
                Duration::from_millis(100)
            }
            (_, BootErrorSource::AppExit | BootErrorSource::Readiness | BootErrorSource::Hook) => {
                Duration::from_secs(1)
            }
        },
        BootFailure::NotReady(_) => Duration::from_secs(1),
    };
    let exp = failures.saturating_sub(1).min(16);
    (first * (1u32 << exp)).min(MAX_BACKOFF)
}

/// How often a hibernated instance is checked for a kill waiting for its thaw.
const FROZEN_CHECK: Duration = Duration::from_secs(1);

/// What a process that vanished without a recorded status is reported as.
const UNKNOWN_EXIT: ExitInfo = ExitInfo {
    code: None,
    signal: None,
    oom: false,
};

impl Supervisor {
    /// Starts a boot of a new instance; the caller holds the pool lock and has checked limits.
    pub(super) fn start_boot(self: &Arc<Self>, pool: &Arc<AppPool>, st: &mut PoolState) {
        let policy = pool.policy();
        let id = self
            .runtime
            .claim_id(&policy)
            .unwrap_or_else(|| self.next_id.fetch_add(1, Ordering::Relaxed));
        let inst = Arc::new(Instance::booting(
            id,
            policy.clone(),
            self.epoch,
            self.budget.clone(),
        ));
        st.instances.push(inst.clone());
        pool.publish_gauges(st);
        let this = self.clone();
        let pool = pool.clone();
        let run = async move { this.run_instance(pool, inst, policy).await };
        match &self.home {
            Some(home) => self.tasks.spawn_on(run, home),
            None => self.tasks.spawn(run),
        };
    }

    /// The whole life of one instance: spawn, readiness, serve, stop, cleanup.
    async fn run_instance(
        self: Arc<Self>,
        pool: Arc<AppPool>,
        inst: Arc<Instance>,
        policy: Arc<App>,
    ) {
        let boot_start = Instant::now();
        // A failing before_boot hook fails the boot (502 naming the hook, 1 s doubling backoff).
        if let Err(why) = crate::hooks::fire(
            &policy,
            HookPoint::BeforeBoot,
            inst.id,
            None,
            "boot",
            &pool.metrics,
        )
        .await
        {
            tracing::warn!(app = %inst.app, instance = inst.id, reason = %why, "boot failed");
            pool.metrics.boot("failed", None);
            let e = BootError::permanent(BootErrorSource::Hook, why);
            self.forget(&pool, &inst, Some(BootFailure::Failed(e)));
            return;
        }
        let running = match self.runtime.spawn(policy.clone(), inst.id).await {
            Ok(r) => r,
            Err(reason) => {
                tracing::warn!(app = %inst.app, instance = inst.id, %reason,
                    class = ?reason.class, source = ?reason.origin, "boot failed");
                pool.metrics.boot("failed", None);
                self.forget(&pool, &inst, Some(BootFailure::Failed(reason)));
                return;
            }
        };
        let spawned_after = boot_start.elapsed();
        *inst.running.lock().expect("instance lock") = Some(running.clone());
        let (exit_tx, mut exit_rx) = watch::channel(None::<ExitInfo>);
        {
            let r = running.clone();
            tokio::spawn(async move {
                let info = r.wait().await;
                let _ = exit_tx.send(Some(info));
            });
        }

        // Readiness.
        let timeout = policy.readiness.timeout;
        let probe = policy.readiness.probe.clone();
        let upstream = running.upstream();
        let ready = tokio::select! {
            r = tokio::time::timeout(timeout, wait_ready(upstream.as_ref(), &probe)) => match r {
                Ok(()) => Ok(()),
                Err(_) => Err(BootFailure::NotReady(timeout)),
            },
            _ = exit_rx.changed() => {
                let info = (*exit_rx.borrow()).unwrap_or(UNKNOWN_EXIT);
                Err(BootFailure::Failed(BootError::permanent(
                    BootErrorSource::AppExit,
                    format!("app {info} before it was ready"),
                )))
            }
            _ = inst.stop.notified() => Err(BootFailure::Failed(BootError::transient(
                BootErrorSource::Readiness,
                "stopped while booting",
            ))),
        };
        if let Err(failure) = ready {
            let result = match failure {
                BootFailure::NotReady(_) => "not_ready",
                BootFailure::Failed(_) => "failed",
            };
            pool.metrics.boot(result, None);
            tracing::warn!(app = %inst.app, instance = inst.id, reason = ?failure, "instance failed to become ready");
            // The stop path below kills it; it counts as a boot failure, not a stop.
            let exit = stop_process(running.as_ref(), &mut exit_rx, Duration::ZERO).await;
            running.cleanup().await;
            pool.metrics.stop(StopReason::BootFailed);
            let pid = Some(running.pid());
            let after = HookPoint::AfterStop;
            if let Some(f) = hook_later(&policy, after, inst.id, pid, "boot_failed", &pool) {
                self.tasks.spawn(f);
            }
            tracing::info!(app = %inst.app, instance = inst.id, %exit, "instance removed");
            self.forget(&pool, &inst, Some(failure));
            return;
        }
        let took = boot_start.elapsed();
        pool.metrics.boot("ok", Some(took));
        tracing::info!(app = %inst.app, instance = inst.id, pid = running.pid(),
            boot_ms = took.as_secs_f64() * 1e3,
            spawn_ms = spawned_after.as_secs_f64() * 1e3, "instance ready");
        {
            let mut st = pool.lock();
            inst.transition(State::Ready);
            st.clear_failures();
            inst.touch();
            pool.publish_gauges(&st);
        }
        pool.changed.notify_waiters();
        let pid = Some(running.pid());
        if let Some(f) = hook_later(&policy, HookPoint::AfterReady, inst.id, pid, "ready", &pool) {
            self.tasks.spawn(f);
        }

        // Serve until asked to stop or the process dies; hibernate and wake on the way.
        let reason = loop {
            let frozen = inst.frozen.load(Ordering::Acquire);
            tokio::select! {
                _ = exit_rx.changed() => break None,
                _ = inst.stop.notified() => break *inst.stop_reason.lock().expect("stop lock"),
                _ = inst.sleep.notified() => self.hibernation_step(&pool, &inst, &running).await,
                // A frozen task killed on cgroup v1 dies only once thawed: look now and then.
                _ = tokio::time::sleep(FROZEN_CHECK), if frozen => {
                    if running.killed_while_frozen() {
                        tracing::warn!(app = %inst.app, instance = inst.id, "hibernated instance was killed; replacing it");
                        inst.request_stop(StopReason::Crashed);
                    }
                }
            }
        };
        // Asked to stop or dead: never hand it out again, even while its cgroup is removed.
        {
            let st = pool.lock();
            inst.transition(State::Draining);
            inst.uncharge();
            pool.publish_gauges(&st);
        }
        if inst.waking.swap(false, Ordering::AcqRel) {
            pool.metrics.wake(None);
        }
        // A frozen process cannot hear SIGTERM (and on cgroup v1 not even SIGKILL): thaw it
        // first; if even that fails, SIGKILL and thaw again so the kill lands.
        if inst.frozen.swap(false, Ordering::AcqRel) {
            if let Err(e) = running.wake().await {
                tracing::warn!(app = %inst.app, instance = inst.id, error = %e, "thaw before stop failed; killing");
                running.signal(libc::SIGKILL);
                let _ = running.wake().await;
            }
        }
        let (reason, exit) = match reason {
            Some(reason) => {
                pool.changed.notify_waiters();
                // No new requests reach it any more: the hook delays only the stop.
                let (point, pid) = (HookPoint::BeforeStop, Some(running.pid()));
                let _ = crate::hooks::fire(
                    &policy,
                    point,
                    inst.id,
                    pid,
                    reason.as_str(),
                    &pool.metrics,
                )
                .await;
                drain(&inst, policy.lifetime.grace).await;
                let exit =
                    stop_process(running.as_ref(), &mut exit_rx, policy.lifetime.stop_timeout)
                        .await;
                // An instance stopped as suspect (refused connections) may really have been
                // OOM-killed.
                let reason = if reason == StopReason::Crashed && exit.oom {
                    StopReason::Oom
                } else {
                    reason
                };
                (reason, exit)
            }
            None => {
                let exit = (*exit_rx.borrow()).unwrap_or(UNKNOWN_EXIT);
                let reason = if exit.oom {
                    StopReason::Oom
                } else {
                    StopReason::Crashed
                };
                (reason, exit)
            }
        };
        running.cleanup().await;
        pool.metrics.stop(reason);
        let age = inst.started.elapsed().as_secs_f64();
        match reason {
            StopReason::Crashed | StopReason::Oom => {
                tracing::warn!(app = %inst.app, instance = inst.id,
                %reason, %exit, age_s = age, requests = inst.requests(), "instance died")
            }
            _ => tracing::info!(app = %inst.app, instance = inst.id, %reason, %exit, age_s = age,
                requests = inst.requests(), "instance stopped"),
        }
        let pid = Some(running.pid());
        if let Some(f) = hook_later(
            &policy,
            HookPoint::AfterStop,
            inst.id,
            pid,
            reason.as_str(),
            &pool,
        ) {
            self.tasks.spawn(f);
        }
        self.forget(&pool, &inst, None);
    }

    /// Hibernates or wakes `inst`, whichever its state asks for (see `Instance::sleep`).
    async fn hibernation_step(
        &self,
        pool: &Arc<AppPool>,
        inst: &Arc<Instance>,
        running: &Arc<dyn Running>,
    ) {
        let frozen = inst.frozen.load(Ordering::Acquire);
        if inst.waking.load(Ordering::Acquire) {
            let started = Instant::now();
            let woken = if frozen {
                running.wake().await
            } else {
                // Woken before it was frozen: nothing to thaw.
                Ok(())
            };
            inst.frozen.store(false, Ordering::Release);
            match woken {
                Ok(()) => {
                    {
                        let st = pool.lock();
                        inst.waking.store(false, Ordering::Release);
                        if inst.transition(State::Ready) {
                            inst.recharge_memory(inst.policy.limits.memory);
                        }
                        pool.publish_gauges(&st);
                    }
                    pool.changed.notify_waiters();
                    let took = started.elapsed();
                    pool.metrics.wake(Some(took));
                    tracing::debug!(app = %inst.app, instance = inst.id,
                        wake_ms = took.as_secs_f64() * 1e3, "instance woken");
                }
                Err(e) => {
                    tracing::warn!(app = %inst.app, instance = inst.id, error = %e,
                        "hibernated instance could not be woken; replacing it");
                    // The stop path counts the failed wake (`waking` is still set).
                    inst.request_stop(StopReason::Crashed);
                }
            }
            return;
        }
        if frozen || inst.state() != State::Hibernated {
            return;
        }
        // Before the freeze: no connection pooled until now is reused after the wake.
        inst.retire_connections();
        match running.hibernate().await {
            Ok(h) => {
                inst.frozen.store(true, Ordering::Release);
                pool.metrics.hibernated();
                inst.recharge_memory(h.resident_after);
                tracing::info!(app = %inst.app, instance = inst.id,
                    resident_before = h.resident_before, resident_after = h.resident_after,
                    reclaimed = h.reclaimed, "instance hibernated");
                // A request may have asked for a wake meanwhile: look again.
                if inst.waking.load(Ordering::Acquire) {
                    inst.sleep.notify_one();
                }
            }
            Err(e) => {
                tracing::warn!(app = %inst.app, instance = inst.id, error = %e,
                    "hibernation failed; the instance stays awake");
                inst.hibernate_refused.store(true, Ordering::Release);
                {
                    let st = pool.lock();
                    inst.waking.store(false, Ordering::Release);
                    inst.transition(State::Ready);
                    pool.publish_gauges(&st);
                }
                pool.changed.notify_waiters();
            }
        }
    }

    /// Removes an instance from its pool and wakes waiters; a boot `failure` extends the
    /// crash-loop backoff.
    fn forget(&self, pool: &Arc<AppPool>, inst: &Arc<Instance>, failure: Option<BootFailure>) {
        let mut st = pool.lock();
        st.instances.retain(|i| i.id != inst.id);
        inst.transition(State::Stopped);
        inst.uncharge();
        // A boot interrupted by a launcher fault being repaired (the zygote died under it) is
        // not the app's crash loop: the next boot goes at once and waits for the new zygote.
        let interrupted = |f: &BootFailure| matches!(f, BootFailure::Failed(e) if e.class == BootErrorClass::Interrupted);
        if let Some(f) = failure.filter(|f| !interrupted(f)) {
            st.consecutive_failures += 1;
            st.backoff_until = Some(Instant::now() + backoff(&f, st.consecutive_failures));
            st.last_failure = Some(f);
        }
        pool.publish_gauges(&st);
        drop(st);
        *inst.running.lock().expect("instance lock") = None;
        pool.changed.notify_waiters();
    }
}

/// The app's hook at `point` as a future to spawn (see [`crate::hooks::fire_later`]).
fn hook_later(
    policy: &Arc<App>,
    point: HookPoint,
    id: u64,
    pid: Option<i32>,
    reason: &str,
    pool: &AppPool,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    crate::hooks::fire_later(policy, point, id, pid, reason.to_owned(), &pool.metrics)
}

/// Waits until the instance has no request in flight, at most `grace`.
async fn drain(inst: &Instance, grace: Duration) {
    let drained = tokio::time::timeout(grace, async {
        loop {
            let n = inst.idle.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if inst.in_flight() == 0 {
                break;
            }
            n.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(app = %inst.app, instance = inst.id, in_flight = inst.in_flight(),
            "grace period over with requests still in flight");
    }
}

/// SIGTERM, wait up to `timeout`, then SIGKILL; returns how the process ended.
async fn stop_process(
    running: &dyn Running,
    exit_rx: &mut watch::Receiver<Option<ExitInfo>>,
    timeout: Duration,
) -> ExitInfo {
    if let Some(info) = *exit_rx.borrow() {
        return info;
    }
    // Draining is over by now, so an app that cannot hear SIGTERM gets SIGKILL at once
    // (busybox httpd as PID 1, for one, would otherwise cost the whole stop timeout).
    if !timeout.is_zero() && running.handles_signal(libc::SIGTERM) != Some(false) {
        running.signal(libc::SIGTERM);
        if tokio::time::timeout(timeout, exit_rx.wait_for(Option::is_some))
            .await
            .is_ok()
        {
            if let Some(info) = *exit_rx.borrow() {
                return info;
            }
        }
    }
    running.signal(libc::SIGKILL);
    let _ = exit_rx.wait_for(Option::is_some).await;
    let exit = (*exit_rx.borrow()).unwrap_or(ExitInfo {
        code: None,
        signal: Some(libc::SIGKILL),
        oom: false,
    });
    exit
}

/// Waits until the upstream accepts a connection (and answers HTTP for `Probe::Http`); ready at
/// once for `Probe::ListenFds` (socket activation). Connect attempts back off from 100 µs to
/// 5 ms, so a fast app is seen ready within a fraction of a millisecond of listening.
async fn wait_ready(upstream: &dyn Upstream, probe: &Probe) {
    if matches!(probe, Probe::ListenFds) {
        // The socket was created and is listening before the app started: nothing to wait
        // for, a connection made now is queued by the kernel until the app accepts it.
        return;
    }
    let mut delay = Duration::from_micros(100);
    loop {
        if let Ok(mut stream) = upstream.connect().await {
            match probe {
                Probe::Http { path } => {
                    if http_probe(&mut stream, path).await {
                        return;
                    }
                }
                _ => return,
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(5));
    }
}

async fn http_probe(stream: &mut tokio::net::TcpStream, path: &str) -> bool {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: hako-probe\r\nConnection: close\r\n\r\n");
    if stream.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    let mut n = 0;
    while n < 12 {
        match stream.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => n += k,
        }
    }
    // "HTTP/1.x NNN": any status below 500 means the app is serving.
    buf.starts_with(b"HTTP/1.") && (b'1'..=b'4').contains(&buf[9])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(class: BootErrorClass, origin: BootErrorSource) -> BootFailure {
        BootFailure::Failed(BootError {
            class,
            origin,
            reason: "x".into(),
        })
    }

    #[test]
    fn backoff_follows_the_class_and_the_source_of_the_failure() {
        use BootErrorClass::*;
        use BootErrorSource::*;
        let permanent = failed(Permanent, Launcher);
        let transient = failed(Transient, Zygote);
        let crashed = failed(Permanent, AppExit);
        let ms = |f: &BootFailure, n| backoff(f, n).as_millis();
        assert_eq!([1, 2, 9].map(|n| ms(&permanent, n)), [30_000; 3]);
        assert_eq!(
            [1, 2, 3, 9, 40].map(|n| ms(&transient, n)),
            [100, 200, 400, 25_600, 30_000]
        );
        assert_eq!(
            [1, 2, 3, 6, 40].map(|n| ms(&crashed, n)),
            [1000, 2000, 4000, 30_000, 30_000]
        );
        let slow = BootFailure::NotReady(Duration::from_secs(5));
        assert_eq!([1, 5].map(|n| ms(&slow, n)), [1000, 16_000]);
    }
}
