//! End to end: the governor tightens a CPU-burning tenant and leaves a quiet one alone.
//!
//! Real `hako serve`, real containers (busybox httpd in a throwaway rootfs), real cgroups. App
//! `noisy` serves a CGI that burns CPU; app `quiet` serves a static page. A burst on noisy (from
//! in-test clients) must tighten noisy's CPU quota (read from the cgroup files themselves),
//! never touch quiet's, be logged and counted, show in `/v1/instances` and `hako ps`, and relax
//! back to exactly the policy once the burst is over, without flapping. Two ways to be
//! tightened:
//!
//! - a per-app `spike` rule (independent of host pressure, so deterministic on a busy host);
//! - the default rule, gated by host PSI: the test holds the host under CPU pressure itself
//!   (nice-19 spinners) for the whole run, so the relax must come from noisy's own calm.
//!
//! The time from noisy's utilisation crossing the threshold to the cgroup write is measured
//! (the test polls the cgroup files every 20 ms) and printed: the 500 ms goal is reported, not
//! asserted; the assertion is a generous bound.
//!
//! Needs root (skips otherwise) and a built `hako` binary next to the test's target directory:
//! `cargo build -p hako-supervisor --bin hako && cargo test -p hako-tests --test governor -- --nocapture`.

use std::fs;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hako_tests::*;

/// noisy's configured CPU limit (cores).
const NOISY_CPU: f64 = 0.5;
/// quiet's configured CPU limit (cores).
const QUIET_CPU: f64 = 0.5;
/// noisy's spike rule: hot above this share of its limit...
const CPU_ABOVE: f64 = 0.8;
/// ...for this long...
const SPIKE_FOR: Duration = Duration::from_millis(300);
/// ...is tightened to this many cores.
const TIGHTEN_CPU: f64 = 0.2;
/// Default rule (no `spike`): hot above half the limit for 300 ms, tightened to half the policy.
const DEFAULT_CPU_ABOVE: f64 = 0.5;
/// Default rule's tighten target for noisy.
const DEFAULT_TIGHTEN_CPU: f64 = NOISY_CPU * 0.5;
/// `governor.cpu_pressure` of the default-rule scenario (PSI `cpu some avg10`, percent).
const CPU_PRESSURE: f64 = 10.0;
/// How long the in-test clients hammer noisy.
const BURST: Duration = Duration::from_secs(3);
/// Client threads of the burst.
const BURST_CLIENTS: usize = 4;
/// Period at which the test itself samples the cgroup files.
const POLL: Duration = Duration::from_millis(20);
/// Window over which the test computes utilisation (the governor's own interval).
const WINDOW: Duration = Duration::from_millis(100);
/// Generous bound for threshold crossing → cgroup write (the goal, 500 ms, is only reported).
const LATENCY_BOUND: Duration = Duration::from_millis(1500);
/// Bound for burst end → quota back at the policy (relax_after 1s + steps of 250 ms).
const RELAX_BOUND: Duration = Duration::from_secs(20);

/// Body of noisy's CPU-burning CGI (`/cgi-bin/burn`).
const CGI_BURN: &str = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo burned";
/// quiet's static page.
const QUIET_PAGE: &str = "quiet page\n";

/// The busybox rootfs of both apps: noisy's burn CGI and quiet's static page.
fn make_rootfs() -> Rootfs {
    let rootfs = Rootfs::with_cgi("burn", CGI_BURN);
    rootfs.write("www/index.html", QUIET_PAGE);
    rootfs
}

/// The `apps:` section (noisy with the spike rule for [`Rule::App`], quiet) and the
/// `governor:` section of the scenario's configuration.
fn config(rootfs: &Rootfs, rule: Rule) -> (String, String) {
    let rootfs = rootfs.path().display();
    let for_ms = SPIKE_FOR.as_millis();
    let spike = match rule {
        Rule::App => format!(
            ", spike: {{cpu_above: {CPU_ABOVE}, for: {for_ms}ms, tighten_cpu: {TIGHTEN_CPU}}}"
        ),
        Rule::HostPressure => String::new(),
    };
    let httpd = r#"command: [/bin/httpd, -f, -p, "8080", -h, /www]"#;
    let lifetime = "lifetime: {idle_timeout: 5m, stop_timeout: 500ms, grace: 1s}";
    let apps = [
        "apps:".to_string(),
        format!(
            "  - {{name: noisy, hosts: [noisy.local], rootfs: {rootfs}, {httpd}, \
             limits: {{cpu: {NOISY_CPU}, memory: 64Mi, pids: 64}}, {lifetime}{spike}}}"
        ),
        format!(
            "  - {{name: quiet, hosts: [quiet.local], rootfs: {rootfs}, {httpd}, \
             limits: {{cpu: {QUIET_CPU}, memory: 64Mi, pids: 64}}, {lifetime}}}"
        ),
    ];
    let governor = [
        "governor:".to_string(),
        "  interval: 100ms".to_string(),
        "  relax_after: 1s".to_string(),
        "  relax_step: 0.5".to_string(),
        format!("  cpu_pressure: {CPU_PRESSURE}"),
        "  # host memory pressure on a shared build machine must not tighten memory.high"
            .to_string(),
        "  memory_pressure: 100".to_string(),
    ];
    (apps.join("\n") + "\n", governor.join("\n") + "\n")
}

/// One HTTP/1.1 GET with `Connection: close` and `timeout`; returns the status.
fn get_status(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> Result<u16, String> {
    request_timeout(addr, &Request::get(host, path), timeout)
        .map(|r| r.status)
        .map_err(|e| format!("{host}{path}: {e}"))
}

/// One observation of the cgroup files by the test's own poller.
#[derive(Debug, Clone, Copy)]
struct Obs {
    t: Instant,
    noisy_usage_usec: Option<u64>,
    noisy_quota: Option<f64>,
    quiet_quota: Option<f64>,
    /// Host PSI `cpu some avg10`.
    psi: Option<f64>,
}

/// Which governor rule is to tighten noisy.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    /// noisy's own `spike` rule.
    App,
    /// The default rule, gated by host CPU pressure.
    HostPressure,
}

impl Rule {
    /// noisy's hot threshold in cores and the limit it is tightened to.
    fn threshold_and_target(self) -> (f64, f64) {
        match self {
            Rule::App => (CPU_ABOVE * NOISY_CPU, TIGHTEN_CPU),
            Rule::HostPressure => (DEFAULT_CPU_ABOVE * NOISY_CPU, DEFAULT_TIGHTEN_CPU),
        }
    }
}

/// Host PSI `cpu some avg10` (percent).
fn host_cpu_psi() -> Option<f64> {
    let s = fs::read_to_string("/proc/pressure/cpu").ok()?;
    let line = s.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?
        .parse()
        .ok()
}

/// Busy threads at nice 19, one more than the host has CPUs: some task always waits for a CPU,
/// so the host's CPU PSI stays high, while everyone else (noisy included) is served first.
struct Spinners {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Spinners {
    fn start() -> Spinners {
        let stop = Arc::new(AtomicBool::new(false));
        let n = thread::available_parallelism().map_or(2, |n| n.get()) + 1;
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    // SAFETY: plain syscalls on the calling thread only.
                    unsafe {
                        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19)
                    };
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                        }
                    }
                })
            })
            .collect();
        Spinners { stop, threads }
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The test's own poller of the cgroup files and host PSI, every [`POLL`].
struct Poller {
    obs: Arc<Mutex<Vec<Obs>>>,
    running: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Poller {
    fn start(parent: &str, noisy: &str, quiet: &str) -> Poller {
        let obs: Arc<Mutex<Vec<Obs>>> = Arc::default();
        let running = Arc::new(AtomicBool::new(true));
        let (o, r) = (obs.clone(), running.clone());
        let (parent, noisy, quiet) = (parent.to_string(), noisy.to_string(), quiet.to_string());
        let thread = thread::spawn(move || {
            while r.load(Ordering::Relaxed) {
                let ob = Obs {
                    t: Instant::now(),
                    noisy_usage_usec: cgroup_cpu_usage_usec(&parent, &noisy),
                    noisy_quota: cgroup_cpu_limit(&parent, &noisy),
                    quiet_quota: cgroup_cpu_limit(&parent, &quiet),
                    psi: host_cpu_psi(),
                };
                o.lock().unwrap().push(ob);
                thread::sleep(POLL);
            }
        });
        Poller {
            obs,
            running,
            thread: Some(thread),
        }
    }

    /// Index of the first observation matching `f`.
    fn find(&self, f: impl Fn(&Obs) -> bool) -> Option<usize> {
        self.obs.lock().unwrap().iter().position(f)
    }

    fn stop(mut self) -> Vec<Obs> {
        self.running.store(false, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("poller");
        }
        self.obs.lock().unwrap().clone()
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
    }
}

/// A client thread: GETs `host`/`path` (each with `timeout`, `pause` between two) until
/// [`BURST`] after `start`; returns every outcome.
fn hammer(
    addr: SocketAddr,
    (host, path): (&'static str, &'static str),
    timeout: Duration,
    pause: Duration,
    start: Instant,
) -> thread::JoinHandle<Vec<Result<u16, String>>> {
    thread::spawn(move || {
        let mut codes = Vec::new();
        while start.elapsed() < BURST {
            codes.push(get_status(addr, host, path, timeout));
            thread::sleep(pause);
        }
        codes
    })
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-3)
}

/// `hako_limit_changes_total{app,direction}` from `/metrics` (0 when absent).
fn limit_changes(hako: &Hako, app: &str, direction: &str) -> f64 {
    hako.metrics().sum(
        "hako_limit_changes_total",
        &[("app", app), ("direction", direction)],
    )
}

/// Every "limits changed" event of the JSON log.
fn limit_events(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "limits changed")
        .collect()
}

/// Utilisation in cores over the window ending at `i` (at least [`WINDOW`] long), with the
/// window's start time.
fn window_util(obs: &[Obs], i: usize) -> Option<(Instant, f64)> {
    let end = obs[i];
    let j = (0..i)
        .rev()
        .find(|&j| end.t.duration_since(obs[j].t) >= WINDOW)?;
    let start = obs[j];
    let du = end.noisy_usage_usec?.checked_sub(start.noisy_usage_usec?)?;
    let dt = end.t.duration_since(start.t).as_micros() as f64;
    Some((start.t, du as f64 / dt))
}

#[test]
fn an_app_rule_tightens_the_noisy_tenant_only_and_relaxes_it_after_the_burst() {
    scenario(Rule::App);
}

#[test]
fn under_lasting_host_pressure_the_noisy_tenant_is_tightened_and_relaxes_once_calm() {
    scenario(Rule::HostPressure);
}

fn scenario(rule: Rule) {
    require_root!();
    let (threshold, target) = rule.threshold_and_target();
    let rootfs = make_rootfs();
    let (apps, governor) = config(&rootfs, rule);
    // The guard runs the tests one at a time (they share the host's CPUs), checks that hako
    // exits cleanly and leaves no process, cgroup or mount behind, and removes its cgroups.
    let mut hako = Hako::start_with_args(&apps, &[&rootfs], &governor, &["--log-format", "json"]);
    let (listen, parent) = (hako.listen, hako.cgroup_parent.clone());
    println!(
        "{rule:?}: cgroup v2 {}, parent {parent}, config {}",
        cgroup_v2_unified(),
        hako.config_path.display()
    );
    // Foreign host pressure for the whole run (dropped before hako stops).
    let spinners = (rule == Rule::HostPressure).then(Spinners::start);

    // Boot one instance of each app with a cheap request.
    let r = request_timeout(
        listen,
        &Request::get("quiet.local", "/"),
        Duration::from_secs(20),
    )
    .expect("boot quiet");
    assert_eq!((r.status, r.text().as_str()), (200, QUIET_PAGE));
    let st = get_status(
        listen,
        "noisy.local",
        "/index.html",
        Duration::from_secs(20),
    )
    .expect("boot noisy");
    assert_eq!(st, 200);
    let noisy = hako.the_instance_of("noisy")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let quiet = hako.the_instance_of("quiet")["id"]
        .as_str()
        .expect("id")
        .to_string();
    for (name, cpu) in [(&noisy, NOISY_CPU), (&quiet, QUIET_CPU)] {
        let q = cgroup_cpu_limit(&parent, name);
        assert!(close(q, cpu), "{name} starts at its policy {cpu}: {q:?}");
    }
    assert!(
        cgroup_cpu_usage_usec(&parent, &noisy).is_some(),
        "noisy's CPU usage is readable"
    );

    if rule == Rule::HostPressure {
        // The gate must be open before the burst: wait for the lagging avg10 to get there.
        let t = Instant::now();
        while host_cpu_psi().is_none_or(|p| p < 2.0 * CPU_PRESSURE) {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "host CPU PSI stays below {}",
                2.0 * CPU_PRESSURE
            );
            thread::sleep(Duration::from_millis(100));
        }
        println!(
            "host cpu some avg10 {:?}% (cpu_pressure {CPU_PRESSURE})",
            host_cpu_psi()
        );
    }

    let poller = Poller::start(&parent, &noisy, &quiet);
    thread::sleep(Duration::from_millis(300)); // a calm baseline

    // The burst on noisy, and quiet served meanwhile.
    let burst_start = Instant::now();
    let clients: Vec<_> = (0..BURST_CLIENTS)
        .map(|_| {
            let burn = ("noisy.local", "/cgi-bin/burn");
            hammer(
                listen,
                burn,
                Duration::from_secs(60),
                Duration::ZERO,
                burst_start,
            )
        })
        .collect();
    let quiet_client = hammer(
        listen,
        ("quiet.local", "/"),
        Duration::from_secs(10),
        Duration::from_millis(100),
        burst_start,
    );

    // While the burst runs: the tightened limit shows in the cgroup, the API and `hako ps`.
    let tightened = loop {
        if let Some(i) = poller.find(|o| close(o.noisy_quota, target)) {
            break i;
        }
        assert!(
            burst_start.elapsed() < BURST + Duration::from_secs(2),
            "noisy was never tightened; quota now {:?}; log:\n{}",
            cgroup_cpu_limit(&parent, &noisy),
            hako.log()
        );
        thread::sleep(POLL);
    };
    let api_cpu = hako.the_instance_of("noisy")["limits"]["cpu"].as_f64();
    let ps = Command::new(hako_bin())
        .args(["ps", "--admin"])
        .arg(hako.admin.to_string())
        .output()
        .expect("run hako ps");
    let ps_out = String::from_utf8_lossy(&ps.stdout).into_owned();
    let still_tight = close(cgroup_cpu_limit(&parent, &noisy), target);
    assert!(
        still_tight,
        "noisy relaxed while the burst was still running"
    );
    assert!(
        close(api_cpu, target),
        "/v1/instances shows noisy's effective cpu {api_cpu:?}"
    );
    let row = ps_out
        .lines()
        .find(|l| l.contains(&noisy))
        .unwrap_or_default();
    assert!(
        row.split_whitespace().any(|c| c == format!("{target:.2}")),
        "hako ps shows the tightened cpu for noisy: {ps_out}"
    );
    println!("hako ps while tightened:\n{ps_out}");

    for c in clients {
        let codes = c.join().expect("burst client");
        assert!(!codes.is_empty());
        assert!(
            codes.iter().all(|c| *c == Ok(200)),
            "noisy burst answers: {codes:?}"
        );
    }
    let quiet_codes = quiet_client.join().expect("quiet client");
    assert!(
        quiet_codes.iter().all(|c| *c == Ok(200)),
        "quiet served during the burst: {quiet_codes:?}"
    );
    let burst_end = Instant::now();

    // After the burst noisy relaxes back to exactly its policy.
    let relaxed_at = loop {
        if close(cgroup_cpu_limit(&parent, &noisy), NOISY_CPU) {
            break burst_end.elapsed();
        }
        assert!(
            burst_end.elapsed() < RELAX_BOUND,
            "noisy not relaxed {RELAX_BOUND:?} after the burst: quota {:?}, host cpu psi {:?}",
            cgroup_cpu_limit(&parent, &noisy),
            host_cpu_psi()
        );
        thread::sleep(POLL);
    };
    thread::sleep(Duration::from_millis(300));
    let obs = poller.stop();

    // Latency. The crossing: the start of the first 20 ms poll interval in which noisy's
    // utilisation reached the rule's threshold (noisy was idle before the burst, so this is
    // when the burst's load crossed it; the figure is an upper bound by at most one poll
    // period, like the write, first seen at a poll). Also reported: the start of the first
    // 100 ms window (the governor's own measurement period) over the threshold.
    let write = obs[tightened].t;
    let interval_util = |k: usize| {
        let (a, b) = (obs[k - 1], obs[k]);
        let du = b.noisy_usage_usec?.checked_sub(a.noisy_usage_usec?)?;
        Some(du as f64 / b.t.duration_since(a.t).as_micros() as f64)
    };
    let crossing = (1..=tightened)
        .find(|&k| interval_util(k).is_some_and(|u| u >= threshold))
        .map(|k| obs[k - 1].t)
        .expect("noisy's utilisation crossed the threshold before the write");
    assert!(
        crossing + POLL >= burst_start,
        "noisy was already busy before the burst: {:?} early",
        burst_start.duration_since(crossing)
    );
    let first_window = (0..=tightened)
        .find_map(|i| window_util(&obs, i).filter(|w| w.1 >= threshold))
        .map(|w| w.0);
    let latency = write.duration_since(crossing);
    println!(
        "{rule:?} governor latency: crossing -> cgroup write {:.0} ms (goal 500 ms; for 300 ms, \
         interval 100 ms, poll {} ms); first 100 ms window over the threshold -> write {:?} ms; \
         burst start -> write {:.0} ms; burst end -> back at policy {:.0} ms",
        latency.as_secs_f64() * 1e3,
        POLL.as_millis(),
        first_window.map(|t| write.duration_since(t).as_millis()),
        write.duration_since(burst_start).as_secs_f64() * 1e3,
        relaxed_at.as_secs_f64() * 1e3,
    );
    assert!(
        latency < LATENCY_BOUND,
        "threshold crossing -> cgroup write took {latency:?}"
    );

    if rule == Rule::HostPressure {
        // The host never calmed down: the relax came from noisy's own calm, not from PSI.
        let psi: Vec<f64> = obs.iter().filter_map(|o| o.psi).collect();
        let low = psi.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "host cpu some avg10 during the run: min {low:.1}%, leave threshold {}%",
            CPU_PRESSURE * 0.5
        );
        assert!(!psi.is_empty());
        assert!(
            low >= CPU_PRESSURE * 0.5,
            "host CPU pressure fell to {low}%: this run does not prove relaxing under pressure"
        );
    }

    // The quota path: policy → tightened → (monotonic steps up) → policy, no flapping.
    let quotas: Vec<f64> = obs.iter().filter_map(|o| o.noisy_quota).collect();
    let lowest = quotas
        .iter()
        .position(|q| (q - target).abs() < 1e-3)
        .expect("tightened");
    assert!(
        quotas[..lowest]
            .iter()
            .all(|q| (q - NOISY_CPU).abs() < 1e-3),
        "before tightening: {quotas:?}"
    );
    assert!(
        quotas[lowest..].windows(2).all(|w| w[1] >= w[0] - 1e-6),
        "noisy's quota only rises after the tightening (no flapping): {quotas:?}"
    );
    assert!(close(quotas.last().copied(), NOISY_CPU));
    // quiet: never changed, and always readable.
    assert!(
        obs.iter().all(|o| close(o.quiet_quota, QUIET_CPU)),
        "quiet's quota changed: {:?}",
        obs.iter().map(|o| o.quiet_quota).collect::<Vec<_>>()
    );

    // Metrics, API and log agree.
    assert_eq!(
        limit_changes(&hako, "noisy", "tighten"),
        1.0,
        "exactly one tightening of noisy"
    );
    assert!(
        limit_changes(&hako, "noisy", "relax") >= 1.0,
        "relax steps are counted"
    );
    assert_eq!(
        limit_changes(&hako, "quiet", "tighten") + limit_changes(&hako, "quiet", "relax"),
        0.0
    );
    assert!(close(
        hako.the_instance_of("noisy")["limits"]["cpu"].as_f64(),
        NOISY_CPU
    ));
    assert!(close(
        hako.the_instance_of("quiet")["limits"]["cpu"].as_f64(),
        QUIET_CPU
    ));
    let events = limit_events(&hako.log());
    assert!(
        events.iter().all(|e| e["app"] == "noisy"),
        "only noisy changes: {events:?}"
    );
    let tighten: Vec<_> = events
        .iter()
        .filter(|e| e["direction"] == "tighten")
        .collect();
    assert_eq!(tighten.len(), 1, "{events:?}");
    assert!(
        close(tighten[0]["cpu_before"].as_f64(), NOISY_CPU)
            && close(tighten[0]["cpu_after"].as_f64(), target),
        "{:?}",
        tighten[0]
    );
    let reason = tighten[0]["reason"].as_str().unwrap_or_default();
    let expected = match rule {
        Rule::App => "app rule",
        Rule::HostPressure => "host cpu pressure",
    };
    assert!(
        reason.contains(expected),
        "tightened by the {rule:?} rule: {reason}"
    );
    let relax: Vec<_> = events
        .iter()
        .filter(|e| e["direction"] == "relax")
        .collect();
    assert!(!relax.is_empty());
    for pair in relax.windows(2) {
        assert_eq!(
            pair[0]["cpu_after"], pair[1]["cpu_before"],
            "relax steps chain: {relax:?}"
        );
    }
    assert_eq!(relax[0]["cpu_before"], tighten[0]["cpu_after"]);
    assert!(close(
        relax.last().unwrap()["cpu_after"].as_f64(),
        NOISY_CPU
    ));
    println!(
        "{rule:?} tighten reason: {reason}; relax path: {:?}",
        relax
            .iter()
            .map(|e| e["cpu_after"].as_f64().unwrap_or(f64::NAN))
            .collect::<Vec<_>>()
    );
    drop(spinners);

    // Shutdown: hako removes its instances' cgroups (and processes and mounts); the parents
    // can then be removed.
    let status = hako.stop();
    assert!(status.success(), "hako serve exited with {status}");
    hako.assert_clean();
    let left = hako.remove_cgroup_parent();
    assert!(left.is_empty(), "cgroup parents left behind: {left:?}");
}
