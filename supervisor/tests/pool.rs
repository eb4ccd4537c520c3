//! The supervisor's decisions (single flight, scale-out, queue, backoff, readiness timeout,
//! lifetimes, crash handling) against a fake runtime whose "instances" are in-process TCP
//! servers. No root needed.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::{app, metric};
use hako_policies::App;
use hako_proxy::{ActivateError, Activator};
use hako_supervisor::instances::{
    BootError, BootErrorSource, BoxFuture, ExitInfo, Running, Runtime, State, Supervisor,
    SupervisorOptions,
};
use hako_supervisor::metrics::Metrics;
use tokio::sync::watch;

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Serve,
    FailSpawn,
    /// The launcher is short of something for a moment (EAGAIN).
    FailSpawnTransient,
    /// The first boot is cut short by the zygote's death; the next ones serve.
    FirstInterrupted,
    NeverListen,
}

struct FakeRuntime {
    behaviour: Behaviour,
    boot_delay: Duration,
    spawns: AtomicUsize,
    live: Arc<AtomicUsize>,
    signals: Arc<Mutex<Vec<i32>>>,
    instances: Arc<Mutex<Vec<Arc<FakeInstance>>>>,
}

impl FakeRuntime {
    fn new(behaviour: Behaviour, boot_delay: Duration) -> Arc<Self> {
        Arc::new(FakeRuntime {
            behaviour,
            boot_delay,
            spawns: AtomicUsize::new(0),
            live: Arc::new(AtomicUsize::new(0)),
            signals: Arc::new(Mutex::new(Vec::new())),
            instances: Arc::new(Mutex::new(Vec::new())),
        })
    }
}

struct FakeInstance {
    id: u64,
    addr: SocketAddr,
    exit_tx: watch::Sender<Option<ExitInfo>>,
    live: Arc<AtomicUsize>,
    signals: Arc<Mutex<Vec<i32>>>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl FakeInstance {
    /// Simulates the process dying on its own.
    fn crash(&self, code: i32) {
        if let Some(h) = self.server.lock().unwrap().take() {
            h.abort();
        }
        self.exit_tx.send_replace(Some(ExitInfo {
            code: Some(code),
            signal: None,
            oom: false,
        }));
    }
}

impl Running for FakeInstance {
    fn pid(&self) -> i32 {
        common::fake_pid(self.id)
    }
    fn upstream(&self) -> Arc<dyn hako_proxy::Upstream> {
        common::upstream(self.id, self.addr)
    }
    fn wait(&self) -> BoxFuture<'static, ExitInfo> {
        let exit = common::wait_exit(&self.exit_tx);
        let live = self.live.clone();
        Box::pin(async move {
            let e = exit.await;
            live.fetch_sub(1, Ordering::SeqCst);
            e
        })
    }
    fn signal(&self, signal: i32) {
        self.signals.lock().unwrap().push(signal);
        if let Some(h) = self.server.lock().unwrap().take() {
            h.abort();
        }
        self.exit_tx.send_replace(Some(common::signaled(signal)));
    }
    fn cleanup(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

impl Runtime for FakeRuntime {
    fn spawn(
        &self,
        _app: Arc<App>,
        id: u64,
    ) -> BoxFuture<'static, Result<Arc<dyn Running>, BootError>> {
        let nth = self.spawns.fetch_add(1, Ordering::SeqCst);
        let behaviour = self.behaviour;
        let delay = self.boot_delay;
        let live = self.live.clone();
        let signals = self.signals.clone();
        let this_instances = Arc::new(Mutex::new(None::<Arc<FakeInstance>>));
        let out = this_instances.clone();
        let fut = async move {
            if behaviour == Behaviour::FailSpawn {
                return Err(BootError::permanent(
                    BootErrorSource::Launcher,
                    "exec /bin/nope: No such file or directory (ENOENT)",
                ));
            }
            if behaviour == Behaviour::FailSpawnTransient {
                return Err(BootError::transient(
                    BootErrorSource::Launcher,
                    "clone: Resource temporarily unavailable (EAGAIN)",
                ));
            }
            if behaviour == Behaviour::FirstInterrupted && nth == 0 {
                return Err(BootError::interrupted(
                    BootErrorSource::Zygote,
                    "the launcher zygote (pid 7) died during the call",
                ));
            }
            // A slow boot: the process exists but listens only after `delay`.
            tokio::time::sleep(delay).await;
            let (addr, server) = common::ok_server()
                .await
                .map_err(|e| BootError::transient(BootErrorSource::Launcher, e.to_string()))?;
            let server = match behaviour {
                Behaviour::NeverListen => {
                    // Nothing listens at `addr` once the server is gone.
                    server.abort();
                    let _ = server.await;
                    None
                }
                _ => Some(server),
            };
            let (exit_tx, _) = watch::channel(None);
            live.fetch_add(1, Ordering::SeqCst);
            let inst = Arc::new(FakeInstance {
                id,
                addr,
                exit_tx,
                live,
                signals,
                server: Mutex::new(server),
            });
            *out.lock().unwrap() = Some(inst.clone());
            Ok(inst as Arc<dyn Running>)
        };
        let instances = this_instances;
        let me = self.instances.clone();
        Box::pin(async move {
            let r = fut.await;
            if let Some(i) = instances.lock().unwrap().take() {
                me.lock().unwrap().push(i);
            }
            r
        })
    }
}

fn supervisor(rt: Arc<FakeRuntime>, apps: &[App]) -> Arc<Supervisor> {
    let sup = Supervisor::new(rt, Metrics::new(), SupervisorOptions::default());
    sup.apply_apps(apps, SupervisorOptions::default());
    sup
}

/// Waits until `n` requests of `app` are queued, as the `hako_queue_depth` gauge shows; fails
/// after 10 s of (paused, so instant) test time.
async fn until_queued(sup: &Supervisor, app: &str, n: f64) {
    let needle = format!(r#"hako_queue_depth{{app="{app}"}}"#);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(sup, &needle) != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{needle} never became {n}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_cold_requests_share_one_boot() {
    let rt = FakeRuntime::new(Behaviour::Serve, Duration::from_millis(50));
    let mut a = app("cold");
    a.scaling.concurrency = 1000;
    a.scaling.max_instances = 4;
    let sup = supervisor(rt.clone(), &[a]);
    let mut tasks = Vec::new();
    for _ in 0..300 {
        let sup = sup.clone();
        tasks.push(tokio::spawn(async move {
            sup.acquire("cold").await.map(|l| l.upstream.id())
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().expect("lease"));
    }
    assert_eq!(
        rt.spawns.load(Ordering::SeqCst),
        1,
        "exactly one boot for the burst"
    );
    assert_eq!(ids.len(), 1);
    assert_eq!(
        metric(&sup, r#"hako_boots_total{app="cold",result="ok"}"#),
        1.0
    );
    sup.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        rt.live.load(Ordering::SeqCst),
        0,
        "shutdown stops every instance"
    );
}

#[tokio::test(start_paused = true)]
async fn scales_out_to_max_instances_and_never_more() {
    let rt = FakeRuntime::new(Behaviour::Serve, Duration::from_millis(20));
    let mut a = app("scale");
    a.scaling.concurrency = 10;
    a.scaling.max_instances = 3;
    a.scaling.queue_timeout = Duration::from_millis(500);
    a.readiness.timeout = Duration::from_millis(500);
    let sup = supervisor(rt.clone(), &[a]);
    // Hold 30 leases at once: exactly fills 3 instances × 10.
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let sup = sup.clone();
        tasks.push(tokio::spawn(async move { sup.acquire("scale").await }));
    }
    let mut leases = Vec::new();
    for t in tasks {
        leases.push(t.await.unwrap().expect("lease"));
    }
    assert_eq!(rt.spawns.load(Ordering::SeqCst), 3);
    let mut per_instance = std::collections::HashMap::new();
    for l in &leases {
        *per_instance.entry(l.upstream.id()).or_insert(0) += 1;
    }
    assert!(per_instance.values().all(|n| *n <= 10), "{per_instance:?}");
    // A 31st request waits (no 4th boot) and times out in the queue.
    let r = sup.acquire("scale").await;
    assert!(matches!(r, Err(ActivateError::NotReady { .. })), "{r:?}");
    assert_eq!(rt.spawns.load(Ordering::SeqCst), 3);
    // Releasing one lease lets a waiter in.
    let waiter = {
        let sup = sup.clone();
        tokio::spawn(async move { sup.acquire("scale").await.map(|_| ()) })
    };
    until_queued(&sup, "scale", 1.0).await;
    leases.pop();
    waiter.await.unwrap().expect("served after a release");
    drop(leases);
    sup.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn failed_boot_is_reported_and_backs_off() {
    let rt = FakeRuntime::new(Behaviour::FailSpawn, Duration::ZERO);
    let sup = supervisor(rt.clone(), &[app("broken")]);
    let first = sup.acquire("broken").await;
    match first {
        Err(ActivateError::BootFailed { reason, .. }) => {
            assert!(reason.contains("/bin/nope"), "{reason}")
        }
        other => panic!("expected BootFailed, got {other:?}"),
    }
    for _ in 0..10 {
        let r = sup.acquire("broken").await;
        assert!(matches!(r, Err(ActivateError::BootFailed { .. })), "{r:?}");
    }
    assert_eq!(
        rt.spawns.load(Ordering::SeqCst),
        1,
        "crash-loop backoff: no boot per request"
    );
    assert_eq!(
        metric(&sup, r#"hako_boots_total{app="broken",result="failed"}"#),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_transient_boot_failure_asks_to_retry_soon_and_is_retried_soon() {
    let rt = FakeRuntime::new(Behaviour::FailSpawnTransient, Duration::ZERO);
    let sup = supervisor(rt.clone(), &[app("strained")]);
    match sup.acquire("strained").await {
        Err(ActivateError::BootRetrying {
            reason,
            retry_after,
            ..
        }) => {
            assert!(reason.contains("EAGAIN"), "{reason}");
            assert!(retry_after <= Duration::from_millis(100), "{retry_after:?}");
        }
        other => panic!("expected BootRetrying, got {other:?}"),
    }
    assert_eq!(rt.spawns.load(Ordering::SeqCst), 1);
    // The next boot is attempted once the short backoff is over, not after seconds.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = sup.acquire("strained").await;
    assert!(
        matches!(r, Err(ActivateError::BootRetrying { .. })),
        "{r:?}"
    );
    assert_eq!(rt.spawns.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_boot_interrupted_by_the_zygote_death_is_retried_at_once_without_backoff() {
    let rt = FakeRuntime::new(Behaviour::FirstInterrupted, Duration::ZERO);
    let sup = supervisor(rt.clone(), &[app("cut")]);
    // No crash-loop backoff for it: the waiting request gets the next boot, which serves.
    let lease = sup
        .acquire("cut")
        .await
        .expect("served by the boot after the interrupted one");
    drop(lease);
    assert_eq!(rt.spawns.load(Ordering::SeqCst), 2);
    assert_eq!(
        metric(&sup, r#"hako_boots_total{app="cut",result="failed"}"#),
        1.0
    );
    let lease = sup
        .acquire("cut")
        .await
        .expect("the next request is served");
    drop(lease);
    sup.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn app_that_never_listens_times_out_and_is_killed() {
    let rt = FakeRuntime::new(Behaviour::NeverListen, Duration::ZERO);
    let mut a = app("mute");
    a.readiness.timeout = Duration::from_millis(300);
    let sup = supervisor(rt.clone(), &[a]);
    let r = sup.acquire("mute").await;
    assert!(matches!(r, Err(ActivateError::NotReady { .. })), "{r:?}");
    // The instance was killed and removed.
    for _ in 0..50 {
        if rt.live.load(Ordering::SeqCst) == 0 && sup.instances().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rt.live.load(Ordering::SeqCst), 0);
    assert!(rt.signals.lock().unwrap().contains(&libc::SIGKILL));
    assert_eq!(
        metric(&sup, r#"hako_boots_total{app="mute",result="not_ready"}"#),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn full_queue_answers_queue_full() {
    let rt = FakeRuntime::new(Behaviour::Serve, Duration::from_millis(300));
    let mut a = app("q");
    a.scaling.queue = 2;
    let sup = supervisor(rt.clone(), &[a]);
    let w1 = {
        let s = sup.clone();
        tokio::spawn(async move { s.acquire("q").await.map(|_| ()) })
    };
    let w2 = {
        let s = sup.clone();
        tokio::spawn(async move { s.acquire("q").await.map(|_| ()) })
    };
    until_queued(&sup, "q", 2.0).await;
    let r = sup.acquire("q").await;
    assert!(matches!(r, Err(ActivateError::QueueFull { .. })), "{r:?}");
    w1.await.unwrap().expect("first waiter served");
    w2.await.unwrap().expect("second waiter served");
    sup.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn idle_instances_stop_and_the_next_request_boots_again() {
    let rt = FakeRuntime::new(Behaviour::Serve, Duration::ZERO);
    let mut a = app("idle");
    a.lifetime.idle_timeout = Duration::from_millis(200);
    a.lifetime.stop_timeout = Duration::from_millis(200);
    let sup = supervisor(rt.clone(), &[a]);
    drop(sup.acquire("idle").await.expect("lease"));
    assert_eq!(sup.live_instances("idle").len(), 1);
    // Not idle long enough yet.
    sup.tick();
    assert_eq!(sup.live_instances("idle")[0].state(), State::Ready);
    tokio::time::sleep(Duration::from_millis(250)).await;
    sup.tick();
    for _ in 0..100 {
        if sup.live_instances("idle").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(sup.live_instances("idle").is_empty());
    assert_eq!(
        metric(
            &sup,
            r#"hako_instance_stops_total{app="idle",reason="idle"}"#
        ),
        1.0
    );
    assert!(
        rt.signals.lock().unwrap().contains(&libc::SIGTERM),
        "graceful stop starts with SIGTERM"
    );
    drop(sup.acquire("idle").await.expect("new lease"));
    assert_eq!(rt.spawns.load(Ordering::SeqCst), 2);
    sup.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn lifetime_drains_in_flight_requests_before_stopping() {
    let rt = FakeRuntime::new(Behaviour::Serve, Duration::ZERO);
    let mut a = app("old");
    a.lifetime.max_lifetime = Some(Duration::from_millis(200));
    a.lifetime.grace = Duration::from_secs(5);
    let sup = supervisor(rt.clone(), &[a]);
    let lease = sup.acquire("old").await.expect("lease");
    let first = lease.upstream.id();
    tokio::time::sleep(Duration::from_millis(250)).await;
    sup.tick();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Draining: the old instance is not handed out; a new request goes to a successor.
    assert_eq!(
        sup.live_instances("old")
            .iter()
            .find(|i| i.id == first)
            .map(|i| i.state()),
        Some(State::Draining)
    );
    let next = sup.acquire("old").await.expect("successor lease");
    assert_ne!(next.upstream.id(), first);
    // The old one is still alive while its request is in flight.
    assert!(
        rt.signals.lock().unwrap().is_empty(),
        "no signal before the lease is released"
    );
    drop(lease);
    for _ in 0..100 {
        if !sup.live_instances("old").iter().any(|i| i.id == first) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!sup.live_instances("old").iter().any(|i| i.id == first));
    assert_eq!(
        metric(
            &sup,
            r#"hako_instance_stops_total{app="old",reason="lifetime"}"#
        ),
        1.0
    );
    drop(next);
    sup.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_crashed_instance_is_replaced_and_counted() {
    let rt = FakeRuntime::new(Behaviour::Serve, Duration::ZERO);
    let sup = supervisor(rt.clone(), &[app("crashy")]);
    let id = sup.acquire("crashy").await.expect("lease").upstream.id();
    let inst = rt
        .instances
        .lock()
        .unwrap()
        .iter()
        .find(|i| i.id == id)
        .cloned()
        .expect("instance");
    inst.crash(3);
    for _ in 0..100 {
        if sup.live_instances("crashy").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        metric(
            &sup,
            r#"hako_instance_stops_total{app="crashy",reason="crashed"}"#
        ),
        1.0
    );
    let next = sup
        .acquire("crashy")
        .await
        .expect("served by a new instance");
    assert_ne!(next.upstream.id(), id);
    drop(next);
    sup.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn unknown_app_is_refused() {
    let rt = FakeRuntime::new(Behaviour::Serve, Duration::ZERO);
    let sup = supervisor(rt, &[app("a")]);
    assert!(matches!(
        sup.acquire("nope").await,
        Err(ActivateError::UnknownApp(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn host_budget_evicts_the_least_recently_used_idle_instance() {
    let rt = FakeRuntime::new(Behaviour::Serve, Duration::ZERO);
    let apps: Vec<App> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            let mut a = app(n);
            a.lifetime.stop_timeout = Duration::from_millis(100);
            a
        })
        .collect();
    let opts = SupervisorOptions {
        max_live_instances: Some(2),
        ..SupervisorOptions::default()
    };
    let sup = Supervisor::new(rt.clone(), Metrics::new(), opts.clone());
    sup.apply_apps(&apps, opts);
    drop(sup.acquire("a").await.expect("a"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(sup.acquire("b").await.expect("b"));
    // The budget is full; "a" is the least recently used idle instance.
    let c = sup
        .acquire("c")
        .await
        .expect("c is served after an eviction");
    // The stop is counted once the instance is gone.
    for _ in 0..100 {
        if sup.live_instances("a").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        metric(
            &sup,
            r#"hako_instance_stops_total{app="a",reason="evicted"}"#
        ),
        1.0
    );
    assert!(sup.live_instances("a").is_empty(), "a was evicted");
    assert_eq!(
        sup.live_instances("b").len(),
        1,
        "b was used more recently and stays"
    );
    // Everything busy: b and c hold leases, so a new app cannot be booted → 503.
    let b = sup.acquire("b").await.expect("b");
    let r = sup.acquire("a").await;
    assert!(matches!(r, Err(ActivateError::QueueFull { .. })), "{r:?}");
    drop((b, c));
    sup.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn host_memory_budget_counts_memory_limits() {
    let rt = FakeRuntime::new(Behaviour::Serve, Duration::ZERO);
    let mut big = app("big");
    big.limits.memory = 600 << 20;
    let mut small = app("small");
    small.limits.memory = 300 << 20;
    let opts = SupervisorOptions {
        max_memory: Some(800 << 20),
        ..SupervisorOptions::default()
    };
    let sup = Supervisor::new(rt.clone(), Metrics::new(), opts.clone());
    sup.apply_apps(&[big, small], opts);
    let held = sup.acquire("big").await.expect("big fits");
    // 600Mi + 300Mi > 800Mi and the only instance is busy: refused, not booted.
    let r = sup.acquire("small").await;
    assert!(matches!(r, Err(ActivateError::QueueFull { .. })), "{r:?}");
    assert_eq!(rt.spawns.load(Ordering::SeqCst), 1);
    drop(held);
    // Now big is idle and can be evicted to make room.
    sup.acquire("small")
        .await
        .expect("small after evicting big");
    sup.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_request_abandoned_while_queued_leaves_the_queue() {
    let rt = FakeRuntime::new(Behaviour::Serve, Duration::from_secs(1));
    let sup = supervisor(rt.clone(), &[app("gone")]);
    let waiter = {
        let s = sup.clone();
        tokio::spawn(async move { s.acquire("gone").await.map(|_| ()) })
    };
    until_queued(&sup, "gone", 1.0).await;
    // The client goes away while its request waits for the boot.
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    assert_eq!(metric(&sup, r#"hako_queue_depth{app="gone"}"#), 0.0);
    sup.shutdown(Duration::from_secs(5)).await;
}
