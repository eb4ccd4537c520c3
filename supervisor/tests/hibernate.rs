//! Hibernation decisions against a fake runtime (in-process TCP servers whose "freeze" and
//! "thaw" are recorded): idle instances hibernate, a request wakes one instead of booting,
//! concurrent requests share one wake, idle timeout / eviction / shutdown thaw before they
//! stop, an instance killed while frozen is replaced. Paused tokio time, no root.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::metric;
use hako_policies::App;
use hako_proxy::Activator;
use hako_supervisor::instances::{
    BootError, BootErrorSource, BoxFuture, ExitInfo, Hibernation, Running, Runtime, State,
    Supervisor, SupervisorOptions,
};
use hako_supervisor::metrics::Metrics;
use tokio::sync::watch;

/// Everything the fake processes did, in order: "spawn 1", "freeze 1", "thaw 1", "sig15 1"...
type Log = Arc<Mutex<Vec<String>>>;

struct FakeRuntime {
    log: Log,
    wake_delay: Duration,
    spawns: AtomicUsize,
    instances: Arc<Mutex<Vec<Arc<Fake>>>>,
}

struct Fake {
    id: u64,
    addr: SocketAddr,
    exit_tx: watch::Sender<Option<ExitInfo>>,
    log: Log,
    wake_delay: Duration,
    frozen: Arc<AtomicBool>,
    /// Killed while frozen: the kill lands at the thaw (cgroup v1).
    doomed: Arc<AtomicBool>,
}

impl Fake {
    fn note(&self, what: &str) {
        self.log.lock().unwrap().push(format!("{what} {}", self.id));
    }
    fn exit(&self, signal: i32) {
        self.exit_tx.send_replace(Some(common::signaled(signal)));
    }
}

impl Running for Fake {
    fn pid(&self) -> i32 {
        common::fake_pid(self.id)
    }
    fn upstream(&self) -> Arc<dyn hako_proxy::Upstream> {
        common::upstream(self.id, self.addr)
    }
    fn wait(&self) -> BoxFuture<'static, ExitInfo> {
        common::wait_exit(&self.exit_tx)
    }
    fn signal(&self, signal: i32) {
        self.note(&format!("sig{signal}"));
        // A frozen task gets no signal until thawed (cgroup v1).
        if self.frozen.load(Ordering::SeqCst) {
            if signal == libc::SIGKILL {
                self.doomed.store(true, Ordering::SeqCst);
            }
            return;
        }
        self.exit(signal);
    }
    fn cleanup(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
    fn hibernate(&self) -> BoxFuture<'static, Result<Hibernation, String>> {
        self.note("freeze");
        self.frozen.store(true, Ordering::SeqCst);
        Box::pin(async {
            Ok(Hibernation {
                resident_before: 40 << 20,
                resident_after: 2 << 20,
                reclaimed: true,
            })
        })
    }
    fn wake(&self) -> BoxFuture<'static, Result<(), String>> {
        self.note("thaw");
        let delay = self.wake_delay;
        let frozen = self.frozen.clone();
        let doomed = self.doomed.load(Ordering::SeqCst);
        let tx = self.exit_tx.clone();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            frozen.store(false, Ordering::SeqCst);
            if doomed {
                tx.send_replace(Some(common::signaled(libc::SIGKILL)));
                return Err("killed while hibernated".into());
            }
            Ok(())
        })
    }
    fn killed_while_frozen(&self) -> bool {
        self.doomed.load(Ordering::SeqCst)
    }
    fn resident_bytes(&self) -> Option<u64> {
        Some(if self.frozen.load(Ordering::SeqCst) {
            2 << 20
        } else {
            40 << 20
        })
    }
}

impl Runtime for FakeRuntime {
    fn spawn(
        &self,
        _app: Arc<App>,
        id: u64,
    ) -> BoxFuture<'static, Result<Arc<dyn Running>, BootError>> {
        self.spawns.fetch_add(1, Ordering::SeqCst);
        let log = self.log.clone();
        let wake_delay = self.wake_delay;
        let all = self.instances.clone();
        Box::pin(async move {
            let (addr, _server) = common::ok_server()
                .await
                .map_err(|e| BootError::transient(BootErrorSource::Launcher, e.to_string()))?;
            let (exit_tx, _) = watch::channel(None);
            let f = Arc::new(Fake {
                id,
                addr,
                exit_tx,
                log,
                wake_delay,
                frozen: Arc::new(AtomicBool::new(false)),
                doomed: Arc::new(AtomicBool::new(false)),
            });
            f.note("spawn");
            all.lock().unwrap().push(f.clone());
            Ok(f as Arc<dyn Running>)
        })
    }
}

fn runtime(wake_delay: Duration) -> Arc<FakeRuntime> {
    Arc::new(FakeRuntime {
        log: Log::default(),
        wake_delay,
        spawns: AtomicUsize::new(0),
        instances: Default::default(),
    })
}

fn app(name: &str) -> App {
    let mut a = common::app(name);
    a.lifetime.hibernate_after = Some(Duration::from_millis(100));
    a.lifetime.idle_timeout = Duration::from_secs(10);
    a.lifetime.stop_timeout = Duration::from_millis(200);
    a
}

fn supervisor(rt: Arc<FakeRuntime>, apps: &[App], opts: SupervisorOptions) -> Arc<Supervisor> {
    let sup = Supervisor::new(rt, Metrics::new(), opts.clone());
    sup.apply_apps(apps, opts);
    sup
}

fn log(rt: &FakeRuntime) -> Vec<String> {
    rt.log.lock().unwrap().clone()
}

/// Ticks (every 10 ms of paused time) until `cond`, at most 10 s.
async fn until(sup: &Arc<Supervisor>, what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        sup.tick();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

fn state_of(sup: &Supervisor, app: &str) -> Vec<State> {
    sup.live_instances(app).iter().map(|i| i.state()).collect()
}

#[tokio::test(start_paused = true)]
async fn an_idle_instance_hibernates_and_a_request_wakes_it_without_a_boot() {
    let rt = runtime(Duration::from_millis(5));
    let sup = supervisor(rt.clone(), &[app("web")], SupervisorOptions::default());
    let first = sup.acquire("web").await.expect("lease");
    let id = first.upstream.id();
    drop(first);
    // Busy or recently used: awake.
    sup.tick();
    assert_eq!(state_of(&sup, "web"), [State::Ready]);
    until(&sup, "hibernated", || {
        log(&rt).contains(&format!("freeze {id}"))
    })
    .await;
    assert_eq!(state_of(&sup, "web"), [State::Hibernated]);
    assert!(
        sup.running_instances().is_empty(),
        "the governor never samples it"
    );
    assert_eq!(
        metric(&sup, r#"hako_instances{app="web",state="hibernated"}"#),
        1.0
    );
    assert_eq!(metric(&sup, r#"hako_hibernations_total{app="web"}"#), 1.0);
    let info = &sup.instances()[0];
    assert_eq!(
        info.memory_bytes,
        Some(2 << 20),
        "resident size after reclaim"
    );

    let lease = sup.acquire("web").await.expect("woken lease");
    assert_eq!(lease.upstream.id(), id, "the same instance");
    assert_eq!(rt.spawns.load(Ordering::SeqCst), 1, "no boot");
    assert_eq!(state_of(&sup, "web"), [State::Ready]);
    assert_eq!(
        metric(&sup, r#"hako_wakes_total{app="web",result="ok"}"#),
        1.0
    );
    assert_eq!(
        metric(&sup, r#"hako_wake_duration_seconds_count{app="web"}"#),
        1.0
    );
    assert_eq!(
        metric(&sup, r#"hako_boots_total{app="web",result="ok"}"#),
        1.0
    );
    drop(lease);
    sup.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_during_a_wake_share_it() {
    let rt = runtime(Duration::from_millis(50));
    let mut a = app("web");
    a.scaling.concurrency = 100;
    a.scaling.max_instances = 4;
    let sup = supervisor(rt.clone(), &[a], SupervisorOptions::default());
    drop(sup.acquire("web").await.expect("lease"));
    until(&sup, "hibernated", || {
        state_of(&sup, "web") == [State::Hibernated]
    })
    .await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let sup = sup.clone();
        tasks.push(tokio::spawn(async move {
            sup.acquire("web").await.map(|l| l.upstream.id())
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("lease");
    }
    let thaws = log(&rt).iter().filter(|l| l.starts_with("thaw")).count();
    assert_eq!(thaws, 1, "one wake for the burst: {:?}", log(&rt));
    assert_eq!(rt.spawns.load(Ordering::SeqCst), 1, "and no boot");
    assert_eq!(
        metric(&sup, r#"hako_wakes_total{app="web",result="ok"}"#),
        1.0
    );
    sup.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_stops_a_hibernated_instance_thawing_it_first() {
    let rt = runtime(Duration::ZERO);
    let mut a = app("web");
    a.lifetime.idle_timeout = Duration::from_millis(500);
    let sup = supervisor(rt.clone(), &[a], SupervisorOptions::default());
    let id = sup.acquire("web").await.expect("lease").upstream.id();
    until(&sup, "hibernated", || {
        state_of(&sup, "web") == [State::Hibernated]
    })
    .await;
    until(&sup, "stopped", || sup.live_instances("web").is_empty()).await;
    assert_eq!(
        metric(
            &sup,
            r#"hako_instance_stops_total{app="web",reason="idle"}"#
        ),
        1.0
    );
    let l = log(&rt);
    let thaw = l
        .iter()
        .position(|x| *x == format!("thaw {id}"))
        .expect("thawed");
    let term = l
        .iter()
        .position(|x| *x == format!("sig15 {id}"))
        .expect("SIGTERM");
    assert!(thaw < term, "thawed before the stop signal: {l:?}");
    assert_eq!(
        metric(&sup, r#"hako_instances{app="web",state="hibernated"}"#),
        0.0
    );
    sup.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_thaws_hibernated_instances_before_stopping_them() {
    let rt = runtime(Duration::ZERO);
    let sup = supervisor(
        rt.clone(),
        &[app("a"), app("b")],
        SupervisorOptions::default(),
    );
    drop(sup.acquire("a").await.expect("lease"));
    drop(sup.acquire("b").await.expect("lease"));
    until(&sup, "both hibernated", || {
        state_of(&sup, "a") == [State::Hibernated] && state_of(&sup, "b") == [State::Hibernated]
    })
    .await;
    sup.shutdown(Duration::from_secs(5)).await;
    assert!(sup.instances().is_empty());
    for f in rt.instances.lock().unwrap().iter() {
        assert!(
            !f.frozen.load(Ordering::SeqCst),
            "instance {} left frozen",
            f.id
        );
        assert!(
            f.exit_tx.borrow().is_some(),
            "instance {} not stopped",
            f.id
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_instance_killed_while_hibernated_is_noticed_and_replaced() {
    let rt = runtime(Duration::ZERO);
    let sup = supervisor(rt.clone(), &[app("web")], SupervisorOptions::default());
    let id = sup.acquire("web").await.expect("lease").upstream.id();
    until(&sup, "hibernated", || {
        state_of(&sup, "web") == [State::Hibernated]
    })
    .await;
    // kill -9 from outside: on cgroup v1 it lands only at the thaw.
    rt.instances.lock().unwrap()[0].signal(libc::SIGKILL);
    let lease = sup.acquire("web").await.expect("served by a new instance");
    assert_ne!(lease.upstream.id(), id);
    assert_eq!(rt.spawns.load(Ordering::SeqCst), 2, "replaced by a boot");
    let dead = rt.instances.lock().unwrap()[0].exit_tx.borrow().is_some();
    assert!(dead, "the killed one died at its thaw");
    until(&sup, "old one gone", || {
        sup.live_instances("web").len() == 1
    })
    .await;
    assert_eq!(
        metric(
            &sup,
            r#"hako_instance_stops_total{app="web",reason="crashed"}"#
        ),
        1.0
    );
    drop(lease);
    sup.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_kill_while_hibernated_is_noticed_without_a_request() {
    let rt = runtime(Duration::ZERO);
    let sup = supervisor(rt.clone(), &[app("web")], SupervisorOptions::default());
    drop(sup.acquire("web").await.expect("lease"));
    until(&sup, "hibernated", || {
        state_of(&sup, "web") == [State::Hibernated]
    })
    .await;
    rt.instances.lock().unwrap()[0].signal(libc::SIGKILL);
    until(&sup, "removed", || sup.live_instances("web").is_empty()).await;
    assert_eq!(
        metric(
            &sup,
            r#"hako_instance_stops_total{app="web",reason="crashed"}"#
        ),
        1.0
    );
    sup.shutdown(Duration::from_secs(5)).await;
}

/// The host-wide budget counts a hibernated instance (at its reclaimed size) and evicts it
/// before any awake one, even a less recently used one.
#[tokio::test(start_paused = true)]
async fn the_budget_evicts_hibernated_instances_first() {
    let rt = runtime(Duration::ZERO);
    let mut awake = app("awake");
    awake.lifetime.hibernate_after = None;
    let opts = SupervisorOptions {
        max_live_instances: Some(2),
        ..Default::default()
    };
    let sup = supervisor(rt.clone(), &[awake, app("sleepy"), app("third")], opts);
    drop(sup.acquire("awake").await.expect("lease"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(sup.acquire("sleepy").await.expect("lease"));
    until(&sup, "sleepy hibernated", || {
        state_of(&sup, "sleepy") == [State::Hibernated]
    })
    .await;
    assert_eq!(state_of(&sup, "awake"), [State::Ready], "older, but awake");
    // Two live instances: the budget is full, a third app needs room.
    drop(sup.acquire("third").await.expect("lease after eviction"));
    until(&sup, "sleepy evicted", || {
        sup.live_instances("sleepy").is_empty()
    })
    .await;
    assert_eq!(state_of(&sup, "awake"), [State::Ready]);
    assert_eq!(
        metric(
            &sup,
            r#"hako_instance_stops_total{app="sleepy",reason="evicted"}"#
        ),
        1.0
    );
    sup.shutdown(Duration::from_secs(5)).await;
}

/// `max_memory` counts a hibernated instance at its resident size, not its limit.
#[tokio::test(start_paused = true)]
async fn the_memory_budget_counts_hibernated_instances_at_their_reclaimed_size() {
    let rt = runtime(Duration::ZERO);
    let mut a = app("a");
    a.limits.memory = 100 << 20;
    let mut b = app("b");
    b.limits.memory = 100 << 20;
    b.lifetime.hibernate_after = None;
    let opts = SupervisorOptions {
        // a awake (100 Mi) + b (100 Mi) would not fit; a hibernated (2 Mi) + b does.
        max_memory: Some(150 << 20),
        ..Default::default()
    };
    let sup = supervisor(rt.clone(), &[a, b], opts);
    drop(sup.acquire("a").await.expect("lease"));
    until(&sup, "a hibernated", || {
        state_of(&sup, "a") == [State::Hibernated]
            && sup.instances()[0].memory_bytes == Some(2 << 20)
    })
    .await;
    drop(sup.acquire("b").await.expect("lease"));
    assert_eq!(
        state_of(&sup, "a"),
        [State::Hibernated],
        "not evicted: it fits"
    );
    assert_eq!(rt.spawns.load(Ordering::SeqCst), 2);
    sup.shutdown(Duration::from_secs(5)).await;
}
