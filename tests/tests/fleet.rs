//! A fleet: three `hako serve` nodes behind a real HAProxy configured from `dist/haproxy.cfg`
//! (hash on Host, consistent ring, health checks on each node's admin `/healthz`), 50 apps.
//!
//! 1. Each app is booted on exactly one node across a few hundred requests.
//! 2. `hako drain` on one node under load: no request fails, the node's apps move to the
//!    others, the node exits 0 by itself and leaves nothing behind (processes, cgroups, locks).
//! 3. `kill -9` of one node under load: the failed requests are counted (printed with the
//!    check settings), its apps cold-start elsewhere; restarted on the same state_dir and
//!    cgroup_parent, its orphans are removed and it takes its apps back.
//!
//! Also: `dist/haproxy.cfg` passes `haproxy -c` and `dist/nginx-fleet.conf` passes `nginx -t`.
//!
//! Needs root and haproxy (else prints `skipped: ...`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hako_tests::*;

const APPS: usize = 50;
const NODES: usize = 3;
/// The health check settings of the test's HAProxy (dist/haproxy.cfg uses 2 s / 3 / 2).
const CHECK: &str = "inter 200ms fastinter 100ms downinter 300ms fall 2 rise 2";

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn app_name(i: usize) -> String {
    format!("app{i:02}")
}

/// One `hako serve` of the fleet; SIGTERM (then SIGKILL) and cleanup on drop.
struct Node {
    name: String,
    listen: SocketAddr,
    admin: SocketAddr,
    cgroup_parent: String,
    state_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Instance pids seen (with start times), for the leftover checks.
    seen: Mutex<Vec<(i32, Option<u64>)>>,
}

impl Node {
    fn new(k: usize, dir: &Path, apps_yaml: &str) -> Node {
        let name = format!("node{k}");
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        while admin.port() == listen.port() {
            admin.set_port(free_port());
        }
        let cgroup_parent = format!("hako-e2e-fleet-{}-{k}", std::process::id());
        let state_dir = dir.join(format!("state-{k}"));
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "node_name: {name}\nlisten: {listen}\nadmin: {admin}\nstate_dir: {}\n\
                 cgroup_parent: {cgroup_parent}\ndrain_timeout: 20s\ngovernor:\n  enabled: false\n{apps_yaml}",
                state_dir.display()
            ),
        )
        .unwrap();
        let mut n = Node {
            log: dir.join(format!("{name}.log")),
            name,
            listen,
            admin,
            cgroup_parent,
            state_dir,
            config,
            child: None,
            seen: Mutex::new(Vec::new()),
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let err = log.try_clone().unwrap();
        self.child = Some(
            Command::new(hako_bin())
                .arg("serve")
                .arg("--config")
                .arg(&self.config)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(err))
                .spawn()
                .expect("spawn hako"),
        );
        let admin = self.admin;
        let up = wait_for(Duration::from_secs(15), || {
            match request_timeout(
                admin,
                &Request::get("admin", "/healthz"),
                Duration::from_secs(2),
            ) {
                Ok(r) if r.status == 200 => Some(()),
                _ => None,
            }
        });
        assert!(
            up.is_some(),
            "{} did not become healthy:\n{}",
            self.name,
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn healthz(&self) -> Option<(u16, String)> {
        request_timeout(
            self.admin,
            &Request::get("admin", "/healthz"),
            Duration::from_secs(2),
        )
        .ok()
        .map(|r| (r.status, r.text()))
    }

    /// `hako_boots_total{result="ok"}` per app.
    fn boots(&self) -> BTreeMap<String, u64> {
        let r = get(self.admin, "admin", "/metrics");
        assert_eq!(r.status, 200);
        let m = Metrics::parse(&r.text());
        (0..APPS)
            .map(app_name)
            .map(|a| {
                let n = m.sum("hako_boots_total", &[("app", &a), ("result", "ok")]) as u64;
                (a, n)
            })
            .collect()
    }

    /// `/v1/instances`, remembering the pids.
    fn instances(&self) -> Vec<serde_json::Value> {
        let r = get(self.admin, "admin", "/v1/instances");
        assert_eq!(r.status, 200);
        let v: Vec<serde_json::Value> = serde_json::from_slice(&r.body).unwrap();
        let mut seen = self.seen.lock().unwrap();
        for i in &v {
            if let Some(pid) = i["pid"].as_i64() {
                let pid = pid as i32;
                if !seen.iter().any(|(p, _)| *p == pid) {
                    seen.push((pid, start_time(pid)));
                }
            }
        }
        v
    }

    fn hako_cli(&self, cmd: &str) -> std::process::Output {
        Command::new(hako_bin())
            .arg(cmd)
            .arg("--admin")
            .arg(self.admin.to_string())
            .output()
            .expect("run hako CLI")
    }

    fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        // Our own child, not yet reaped.
        let _ = send_signal(c.id() as i32, libc::SIGKILL);
        let _ = c.wait();
    }

    /// Waits for the node to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn stop(&mut self) -> Option<ExitStatus> {
        let pid = self.child.as_ref()?.id() as i32;
        // Our own child, not yet reaped.
        let _ = send_signal(pid, libc::SIGTERM);
        match self.wait_exit(Duration::from_secs(20)) {
            Some(st) => Some(st),
            None => {
                let mut c = self.child.take()?;
                let _ = c.kill();
                c.wait().ok()
            }
        }
    }

    /// What is left of this node once it is gone.
    fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (pid, start) in self.seen.lock().unwrap().iter() {
            if alive(*pid, *start) {
                out.push(format!("instance process {pid} alive: {}", cmdline(*pid)));
            }
        }
        for (pid, cmd) in processes_in_cgroup_parent(&self.cgroup_parent) {
            out.push(format!("process {pid} in {}: {cmd}", self.cgroup_parent));
        }
        for cg in child_cgroups(&self.cgroup_parent) {
            out.push(format!("cgroup {} exists", cg.display()));
        }
        for d in cgroup_parent_dirs(&self.cgroup_parent) {
            if d.exists() {
                out.push(format!("cgroup parent {} exists", d.display()));
            }
        }
        let lock = Path::new("/run/hako-locks").join(format!("cgroup-{}.lock", self.cgroup_parent));
        for l in [lock, self.state_dir.join("lock")] {
            if l.exists() {
                out.push(format!("lock file {} exists", l.display()));
            }
        }
        for m in mounts_mentioning(&[self.state_dir.as_path()]) {
            out.push(format!("mount {m}"));
        }
        out
    }

    fn force_cleanup(&self) {
        for (pid, _) in processes_in_cgroup_parent(&self.cgroup_parent) {
            // A process in this node's private cgroup parent.
            let _ = send_signal(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
        for m in mounts_mentioning(&[self.state_dir.as_path()]) {
            if let Some(mp) = m.split_whitespace().nth(4) {
                let _ = Command::new("umount").arg("-l").arg(mp).status();
            }
        }
        for cg in child_cgroups(&self.cgroup_parent) {
            let _ = std::fs::remove_dir(&cg);
        }
        for d in cgroup_parent_dirs(&self.cgroup_parent) {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- {} log (tail) ---", self.name);
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            for l in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{l}");
            }
        }
        self.force_cleanup();
    }
}

/// HAProxy run in the foreground by the test; killed on drop.
struct Haproxy {
    child: Child,
    socket: PathBuf,
    addr: SocketAddr,
}

impl Haproxy {
    /// `dist/haproxy.cfg` with the test's addresses, check settings and a stats socket.
    fn config(dist: &str, addr: SocketAddr, socket: &Path, nodes: &[&Node]) -> String {
        let mut out = String::new();
        for line in dist.lines() {
            let t = line.trim_start();
            if t.starts_with("server ") {
                continue;
            }
            if t.starts_with("log stdout") {
                out.push_str(&format!(
                    "    stats socket {} mode 600 level admin\n",
                    socket.display()
                ));
            }
            if t.starts_with("maxconn ") {
                // HAProxy needs twice maxconn open files; the test's host may allow fewer.
                out.push_str("    maxconn 2000\n");
                continue;
            }
            if t.starts_with("bind ") {
                out.push_str(&format!("    bind {addr}\n"));
                continue;
            }
            if t.starts_with("default-server ") {
                out.push_str(&format!("    default-server {CHECK} check\n"));
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        for n in nodes {
            out.push_str(&format!(
                "    server {} {} check port {}\n",
                n.name,
                n.listen,
                n.admin.port()
            ));
        }
        out
    }

    fn start(dir: &Path, nodes: &[&Node]) -> Haproxy {
        let dist = std::fs::read_to_string(repo_root().join("dist/haproxy.cfg")).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let socket = dir.join("haproxy.sock");
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, Self::config(&dist, addr, &socket, nodes)).unwrap();
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy -c: {}",
            output_text(&check)
        );
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn haproxy");
        let h = Haproxy {
            child,
            socket,
            addr,
        };
        let up = wait_for(Duration::from_secs(10), || {
            let st = h.states();
            (st.len() == nodes.len() && st.values().all(|s| s == "UP")).then_some(())
        });
        assert!(
            up.is_some(),
            "haproxy did not see every node UP: {:?}",
            h.states()
        );
        h
    }

    /// Server name -> status (`UP`, `DOWN`, ...) from `show stat`.
    fn states(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Ok(mut s) = UnixStream::connect(&self.socket) else {
            return out;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"show stat\n").is_err() {
            return out;
        }
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let mut lines = text.lines();
        let Some(head) = lines.next() else { return out };
        let cols: Vec<&str> = head.trim_start_matches("# ").split(',').collect();
        let (Some(px), Some(sv), Some(st)) = (
            cols.iter().position(|c| *c == "pxname"),
            cols.iter().position(|c| *c == "svname"),
            cols.iter().position(|c| *c == "status"),
        ) else {
            return out;
        };
        for l in lines {
            let f: Vec<&str> = l.split(',').collect();
            if f.len() > st && f[px] == "hako" && f[sv].starts_with("node") {
                out.insert(f[sv].to_owned(), f[st].to_owned());
            }
        }
        out
    }

    fn state_of(&self, node: &str) -> String {
        self.states().get(node).cloned().unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request through HAProxy; Ok(status) or the transport error.
fn through(addr: SocketAddr, app: &str) -> Result<u16, String> {
    let host = format!("{app}.test");
    request_timeout(addr, &Request::get(&host, "/"), Duration::from_secs(10))
        .map(|r| r.status)
        .map_err(|e| e.to_string())
}

/// One request of a load: when it ended, the app, the status or the transport error.
type Outcome = (Instant, String, Result<u16, String>);

/// A client thread looping over the apps until stopped (at most `max` requests): every
/// outcome with its time.
struct Load {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Outcome>>,
}

impl Load {
    fn start(addr: SocketAddr, offset: usize, max: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            for i in 0..max {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let app = app_name((i * 7 + offset) % APPS);
                let r = through(addr, &app);
                out.push((Instant::now(), app, r));
            }
            out
        });
        Load { stop, thread }
    }

    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("load thread")
    }
}

fn failures(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter(|(_, _, r)| r.as_ref().map_or(true, |s| *s != 200))
        .map(|(_, app, r)| format!("{app}: {r:?}"))
        .collect()
}

fn total(m: &BTreeMap<String, u64>) -> u64 {
    m.values().sum()
}

#[test]
fn dist_configs_pass_their_checkers() {
    if have("haproxy") {
        let out = Command::new("haproxy")
            .args(["-c", "-f"])
            .arg(repo_root().join("dist/haproxy.cfg"))
            .output()
            .unwrap();
        assert!(out.status.success(), "haproxy -c: {}", output_text(&out));
    } else {
        println!("skipped haproxy -c: haproxy is not installed");
    }
    if have("nginx") {
        let prefix = tempfile::tempdir().unwrap();
        let out = Command::new("nginx")
            .args(["-t", "-e", "stderr", "-p"])
            .arg(prefix.path())
            .arg("-c")
            .arg(repo_root().join("dist/nginx-fleet.conf"))
            .arg("-g")
            .arg(format!("pid {}/nginx.pid;", prefix.path().display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "nginx -t: {}", output_text(&out));
    } else {
        println!("skipped nginx -t: nginx is not installed");
    }
}

#[test]
fn fleet_behind_haproxy_drain_and_kill() {
    require_root!();
    if !have("haproxy") {
        println!("skipped: haproxy is not installed (apt-get install haproxy)");
        return;
    }
    let t0 = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("hako-e2e-fleet-")
        .tempdir()
        .unwrap();
    let rootfs = Rootfs::new();
    let entries: Vec<String> = (0..APPS)
        .map(|i| httpd_app(&app_name(i), &rootfs, &["lifetime: {idle_timeout: 5m}"]))
        .collect();
    let apps_yaml = apps(&entries);
    let mut nodes: Vec<Node> = (0..NODES)
        .map(|k| Node::new(k, dir.path(), &apps_yaml))
        .collect();
    let hap = Haproxy::start(dir.path(), &nodes.iter().collect::<Vec<_>>());
    let mut sent = 0usize;
    let mut failed = 0usize;

    // (1) A few hundred requests: every app boots on exactly one node. One client: with
    // concurrent requests, `hash-balance-factor` may (by design) spill an app whose node
    // already has more than 150% of the average outstanding requests to the next node.
    let addr = hap.addr;
    for _ in 0..6 {
        for i in 0..APPS {
            let app = app_name(i);
            assert_eq!(through(addr, &app), Ok(200), "{app} through haproxy");
            sent += 1;
        }
    }
    let boots: Vec<BTreeMap<String, u64>> = nodes.iter().map(Node::boots).collect();
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    for a in (0..APPS).map(app_name) {
        let on: Vec<usize> = (0..NODES).filter(|k| boots[*k][&a] > 0).collect();
        if on.len() != 1 {
            let needle = format!("app={a} ");
            let lines: Vec<String> = nodes
                .iter()
                .flat_map(|n| {
                    n.log_text()
                        .lines()
                        .filter(|l| l.contains(&needle))
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect();
            let hlog = std::fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default();
            let hl: Vec<&str> = hlog
                .lines()
                .filter(|l| l.contains(&format!("{a}.test")) || !l.contains("GET"))
                .collect();
            panic!(
                "{a} booted on nodes {on:?}:\n{}\n--- haproxy ---\n{}",
                lines.join("\n"),
                hl.join("\n")
            );
        }
        assert_eq!(
            boots[on[0]][&a], 1,
            "{a} booted more than once on node{}",
            on[0]
        );
        owner.insert(a, on[0]);
    }
    let per_node: Vec<usize> = (0..NODES)
        .map(|k| owner.values().filter(|o| **o == k).count())
        .collect();
    println!("phase 1: {sent} requests, 0 failed; apps per node {per_node:?}");
    assert!(
        per_node.iter().all(|n| *n > 0),
        "every node owns apps: {per_node:?}"
    );
    // The node is named in /v1/instances.
    let inst = nodes[0].instances();
    assert!(!inst.is_empty());
    assert!(inst.iter().all(|i| i["node"] == "node0"), "{inst:?}");

    // (2) Drain node0 under load.
    let loads: Vec<Load> = (0..2).map(|o| Load::start(addr, o * 3, 4000)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let drained_apps: Vec<String> = owner
        .iter()
        .filter(|(_, o)| **o == 0)
        .map(|(a, _)| a.clone())
        .collect();
    let other_boots_before: Vec<BTreeMap<String, u64>> =
        nodes[1..].iter().map(Node::boots).collect();
    let drain_at = Instant::now();
    let out = nodes[0].hako_cli("drain");
    assert!(out.status.success(), "hako drain: {}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "draining");
    let hz = nodes[0].healthz();
    assert!(
        matches!(&hz, Some((503, body)) if body.contains("draining")),
        "healthz while draining: {hz:?}"
    );
    let down = wait_for(Duration::from_secs(10), || {
        (hap.state_of("node0").starts_with("DOWN")).then(|| drain_at.elapsed())
    });
    let hap_down_after_drain = down.expect("haproxy marks the draining node down");
    let st = nodes[0].wait_exit(Duration::from_secs(25));
    let drained_exit = drain_at.elapsed();
    let st = st.unwrap_or_else(|| panic!("node0 did not exit after the drain"));
    assert!(st.success(), "node0 exited with {st}");
    std::thread::sleep(Duration::from_millis(300));
    let outcomes: Vec<_> = loads.into_iter().flat_map(Load::finish).collect();
    let fails = failures(&outcomes);
    sent += outcomes.len();
    failed += fails.len();
    println!(
        "phase 2 (drain node0): {} requests during the drain, {} failed; haproxy marked node0 \
         down after {:.2} s, node0 exited 0 after {:.2} s",
        outcomes.len(),
        fails.len(),
        hap_down_after_drain.as_secs_f64(),
        drained_exit.as_secs_f64()
    );
    assert!(
        fails.is_empty(),
        "requests failed during the drain: {fails:?}"
    );
    assert!(
        nodes[0]
            .log_text()
            .contains("drained: no instance left; exiting"),
        "the drain's exit is logged"
    );
    let left = wait_for(Duration::from_secs(3), || {
        nodes[0].leftovers().is_empty().then_some(())
    });
    assert!(left.is_some(), "node0 left: {:?}", nodes[0].leftovers());
    // The drained node's apps now run on the others (a request for each, to be sure).
    for a in &drained_apps {
        assert_eq!(through(addr, a), Ok(200), "{a} after the drain");
        sent += 1;
    }
    let other_boots_after: Vec<BTreeMap<String, u64>> =
        nodes[1..].iter().map(Node::boots).collect();
    for a in &drained_apps {
        let moved: u64 = (0..NODES - 1)
            .map(|k| other_boots_after[k][a] - other_boots_before[k][a])
            .sum();
        assert!(moved >= 1, "{a} of node0 booted on the other nodes");
    }

    // node0 comes back (same state_dir and cgroup_parent): haproxy marks it up, its apps
    // return to it.
    nodes[0].spawn();
    let up = wait_for(Duration::from_secs(10), || {
        (hap.state_of("node0") == "UP").then_some(())
    });
    assert!(up.is_some(), "node0 back up: {:?}", hap.states());

    // (3) kill -9 of node1 under load.
    let victim_apps: Vec<String> = owner
        .iter()
        .filter(|(_, o)| **o == 1)
        .map(|(a, _)| a.clone())
        .collect();
    for a in &victim_apps {
        assert_eq!(through(addr, a), Ok(200), "{a} before the kill");
        sent += 1;
    }
    let orphans: Vec<(i32, Option<u64>)> = nodes[1]
        .instances()
        .iter()
        .filter_map(|i| i["pid"].as_i64())
        .map(|p| (p as i32, start_time(p as i32)))
        .collect();
    assert!(!orphans.is_empty(), "node1 runs instances before the kill");
    let survivors_before: Vec<BTreeMap<String, u64>> =
        [&nodes[0], &nodes[2]].iter().map(|n| n.boots()).collect();
    let loads: Vec<Load> = (0..2).map(|o| Load::start(addr, o * 5 + 1, 4000)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let kill_at = Instant::now();
    nodes[1].kill9();
    let down = wait_for(Duration::from_secs(10), || {
        (hap.state_of("node1").starts_with("DOWN")).then(|| kill_at.elapsed())
    });
    let hap_down_after_kill = down.expect("haproxy marks the killed node down");
    let down_at = kill_at + hap_down_after_kill;
    std::thread::sleep(Duration::from_millis(700));
    let outcomes: Vec<_> = loads.into_iter().flat_map(Load::finish).collect();
    let fails = failures(&outcomes);
    let late: Vec<_> = outcomes
        .iter()
        .filter(|(t, _, r)| *t > down_at && r.as_ref().map_or(true, |s| *s != 200))
        .collect();
    let after_kill = outcomes.iter().filter(|(t, _, _)| *t > kill_at).count();
    sent += outcomes.len();
    failed += fails.len();
    println!(
        "phase 3 (kill -9 node1): {} requests ({after_kill} after the kill), {} failed; haproxy \
         marked node1 down after {:.2} s (check {CHECK}; retries 3, retry-on conn-failure \
         empty-response, option redispatch)",
        outcomes.len(),
        fails.len(),
        hap_down_after_kill.as_secs_f64()
    );
    assert!(
        late.is_empty(),
        "requests failed after haproxy marked node1 down: {late:?}"
    );
    for a in &victim_apps {
        assert_eq!(through(addr, a), Ok(200), "{a} after the kill");
        sent += 1;
    }
    let survivors_after: Vec<BTreeMap<String, u64>> =
        [&nodes[0], &nodes[2]].iter().map(|n| n.boots()).collect();
    for a in &victim_apps {
        let moved: u64 = (0..2)
            .map(|k| survivors_after[k][a] - survivors_before[k][a])
            .sum();
        assert!(moved >= 1, "{a} of the killed node cold-started elsewhere");
    }
    // Restart node1: its orphans are removed, haproxy marks it up, it takes its apps back.
    let restart_at = Instant::now();
    nodes[1].spawn();
    for (pid, start) in &orphans {
        assert!(
            !alive(*pid, *start),
            "orphan {pid} of node1 survived its restart"
        );
    }
    assert!(
        nodes[1]
            .log_text()
            .contains("cleaned up after a previous hako"),
        "the restart reports its orphans"
    );
    let up = wait_for(Duration::from_secs(10), || {
        (hap.state_of("node1") == "UP").then(|| restart_at.elapsed())
    });
    let back_up = up.unwrap_or_else(|| panic!("node1 back up: {:?}", hap.states()));
    for a in &victim_apps {
        assert_eq!(through(addr, a), Ok(200), "{a} after node1's restart");
        sent += 1;
    }
    let b1 = nodes[1].boots();
    for a in &victim_apps {
        assert!(b1[a] >= 1, "{a} back on node1");
    }
    println!(
        "node1 restarted: orphans removed, up in haproxy after {:.2} s, its {} apps back",
        back_up.as_secs_f64(),
        victim_apps.len()
    );

    // Everything stops cleanly.
    let all_boots: Vec<u64> = nodes.iter().map(|n| total(&n.boots())).collect();
    for n in nodes.iter_mut() {
        let _ = n.instances();
        let st = n.stop().expect("running");
        assert!(st.success(), "{} exited with {st}", n.name);
    }
    for n in &nodes {
        let left = wait_for(Duration::from_secs(3), || {
            n.leftovers().is_empty().then_some(())
        });
        assert!(left.is_some(), "{} left: {:?}", n.name, n.leftovers());
    }
    drop(hap);
    println!(
        "fleet: {sent} requests sent, {failed} failed; boots per node since each node's last \
         start {all_boots:?}; settle after drain {:.2} s (haproxy down) / {:.2} s (node exited); \
         settle after kill {:.2} s (haproxy down); total {:.1} s",
        hap_down_after_drain.as_secs_f64(),
        drained_exit.as_secs_f64(),
        hap_down_after_kill.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
