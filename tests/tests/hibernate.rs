//! Issue 20, hibernation, with real apps: a Flask app (gunicorn) and a Node app on
//! `rootfs: host`, their code on a read-only volume, `lifetime.hibernate_after: 1s`.
//!
//! Idle instances are frozen (and their memory pushed to swap when the host has some); a
//! request wakes the same process (no boot), concurrent requests share one wake, an instance
//! killed while hibernated is replaced, and stops, reloads and shutdowns leave nothing frozen
//! and nothing behind.
//!
//! Swap: the memory assertions need swap. The tests that make them create a zram swap
//! (`/dev/zram0`, 512M) under a host-wide lock and remove it after; when zram0 is absent or
//! in use by something else they run frozen-only and print why the memory checks are skipped.
//!
//! Needs root, `python3-flask`, `gunicorn` and `nodejs` (installed by `.ci/run`); prints why
//! it skips otherwise.
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hako_tests::*;

const FLASK_APP: &str = r#"
import os
from flask import Flask
app = Flask(__name__)
# Some warm state, as a real app has (caches, loaded data): 24 MiB of anonymous memory.
BALLAST = [bytearray(os.urandom(1 << 20)) for _ in range(24)]

@app.route("/")
def index():
    return "flask %d %d" % (os.getpid(), len(BALLAST))
"#;

const NODE_APP: &str = r#"
const http = require('http');
http.createServer((req, res) => {
  res.end('node ' + process.pid);
}).listen(8080, '0.0.0.0');
"#;

fn have(path: &str) -> bool {
    Path::new(path).exists()
}

/// Whether the real apps can run here; prints why not.
fn real_apps_available() -> bool {
    for (p, pkg) in [
        ("/usr/bin/gunicorn", "gunicorn"),
        ("/usr/lib/python3/dist-packages/flask", "python3-flask"),
        ("/usr/bin/node", "nodejs"),
    ] {
        if !have(p) {
            println!("skipped: {p} missing (apt-get install {pkg})");
            return false;
        }
    }
    true
}

/// The apps' code, in a private directory mounted read-only into the instances.
struct Code(tempfile::TempDir);

impl Code {
    fn new() -> Code {
        let d = tempfile::Builder::new()
            .prefix("hako-hibernate-")
            .tempdir()
            .expect("tempdir");
        fs::write(d.path().join("app.py"), FLASK_APP).unwrap();
        fs::write(d.path().join("server.js"), NODE_APP).unwrap();
        Code(d)
    }

    fn dir(&self) -> PathBuf {
        self.0.path().canonicalize().unwrap()
    }
}

/// The two apps, hibernating after 1 s idle and stopping after `idle_timeout`; `node_env`
/// is a value of the Node app's environment.
fn apps_yaml(code: &Code, idle_timeout: &str, node_env: &str) -> String {
    format!(
        r#"apps:
  - name: flask
    hosts: [flask.test]
    rootfs: host
    command: [/usr/bin/gunicorn, --bind, "0.0.0.0:8080", --chdir, /app, --workers, "1", "app:app"]
    env: {{PYTHONDONTWRITEBYTECODE: "1"}}
    volumes:
      - {{source: {code}, target: /app, read_only: true}}
    limits: {{memory: 256Mi}}
    lifetime: {{hibernate_after: 1s, idle_timeout: {idle_timeout}, stop_timeout: 2s}}
    readiness: {{timeout: 30s}}
  - name: node
    hosts: [node.test]
    rootfs: host
    command: [/usr/bin/node, /app/server.js]
    env: {{GENERATION: "{node_env}"}}
    volumes:
      - {{source: {code}, target: /app, read_only: true}}
    limits: {{memory: 256Mi}}
    lifetime: {{hibernate_after: 1s, idle_timeout: {idle_timeout}, stop_timeout: 2s}}
    readiness: {{timeout: 30s}}
"#,
        code = code.dir().display(),
    )
}

// ---------------------------------------------------------------------------------------------
// Swap on zram, made by the test and removed after
// ---------------------------------------------------------------------------------------------

const ZRAM: &str = "/sys/block/zram0";
const ZRAM_DEV: &str = "/dev/zram0";
const ZRAM_LOCK: &str = "/run/hako-test-zram.lock";

/// A zram swap this test made (removed on drop), holding the host-wide zram lock.
struct ZramSwap {
    _lock: fs::File,
}

fn sh(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    output_result(&out).map_err(|e| format!("{cmd} {}: {e}", args.join(" ")))
}

/// The host-wide lock of the zram device (held while a test's swap exists or while a test
/// depends on the host's swap staying as it is).
fn zram_lock() -> Result<fs::File, String> {
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(ZRAM_LOCK)
        .map_err(|e| format!("open {ZRAM_LOCK}: {e}"))?;
    // SAFETY: flock on a descriptor we own; blocks until the other holder is done.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "flock {ZRAM_LOCK}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(lock)
}

fn zram_in_swaps() -> bool {
    fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().any(|l| l.starts_with(ZRAM_DEV)))
}

impl ZramSwap {
    /// Creates a 512M zram swap, or says why not (absent, busy, a step failed).
    fn create() -> Result<ZramSwap, String> {
        if !Path::new(ZRAM).exists() {
            return Err(format!("{ZRAM} absent (modprobe zram)"));
        }
        let lock = zram_lock()?;
        if zram_in_swaps() {
            return Err(format!(
                "{ZRAM_DEV} is already swapped on by something else"
            ));
        }
        let mounted = fs::read_to_string("/proc/mounts").is_ok_and(|m| m.contains(ZRAM_DEV));
        if mounted {
            return Err(format!("{ZRAM_DEV} is mounted by something else"));
        }
        // From here on the device is ours: drop removes whatever was set up.
        let swap = ZramSwap { _lock: lock };
        fs::write(format!("{ZRAM}/reset"), "1")
            .map_err(|e| format!("reset {ZRAM_DEV} (busy?): {e}"))?;
        fs::write(format!("{ZRAM}/disksize"), "512M").map_err(|e| format!("disksize: {e}"))?;
        sh("mkswap", &[ZRAM_DEV])?;
        sh("swapon", &[ZRAM_DEV])?;
        Ok(swap)
    }
}

impl Drop for ZramSwap {
    fn drop(&mut self) {
        if zram_in_swaps() {
            if let Err(e) = sh("swapoff", &[ZRAM_DEV]) {
                eprintln!("zram: {e}");
            }
        }
        let _ = fs::write(format!("{ZRAM}/reset"), "1");
    }
}

/// Swap for the memory assertions: a zram swap made now, or `None` with the reason printed.
fn zram_swap_or_skip_reason() -> Option<ZramSwap> {
    match ZramSwap::create() {
        Ok(s) => Some(s),
        Err(why) => {
            println!("note: no zram swap ({why}): hibernation runs frozen-only; the memory assertions are skipped");
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Observing instances
// ---------------------------------------------------------------------------------------------

fn state_of(i: &serde_json::Value) -> &str {
    i["state"].as_str().unwrap_or("")
}

fn pid_of(i: &serde_json::Value) -> i32 {
    i["pid"].as_i64().expect("instance pid") as i32
}

/// Waits until `app` has exactly one instance, hibernated, and its cgroup frozen (the freeze
/// follows the state change); returns it.
fn wait_hibernated(h: &Hako, app: &str) -> serde_json::Value {
    wait_for(Duration::from_secs(20), || {
        let mine = h.instances_of(app);
        (mine.len() == 1
            && state_of(&mine[0]) == "hibernated"
            && freezer_dir_of(pid_of(&mine[0])).is_some_and(|g| is_frozen(&g)))
        .then(|| mine[0].clone())
    })
    .unwrap_or_else(|| {
        panic!(
            "{app} did not hibernate: {:?}\n{}",
            h.instances_of(app),
            h.log()
        )
    })
}

fn counter(h: &Hako, name: &str, labels: &[(&str, &str)]) -> f64 {
    h.metrics().sum(name, labels)
}

/// The instance cgroup directory of `pid` in the freezer hierarchy (v1) or in v2.
fn freezer_dir_of(pid: i32) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
        if cgroup_v2_unified() && ctrl.is_empty() {
            return Some(PathBuf::from(format!("/sys/fs/cgroup{path}")));
        }
        if ctrl.split(',').any(|c| c == "freezer") {
            return Some(PathBuf::from(format!("/sys/fs/cgroup/freezer{path}")));
        }
    }
    None
}

fn is_frozen(dir: &Path) -> bool {
    if cgroup_v2_unified() {
        fs::read_to_string(dir.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
    } else {
        fs::read_to_string(dir.join("freezer.state")).is_ok_and(|s| s.trim() != "THAWED")
    }
}

/// Frozen instance groups under the run's cgroup parent (any hierarchy).
fn frozen_groups(h: &Hako) -> Vec<PathBuf> {
    child_cgroups(&h.cgroup_parent)
        .into_iter()
        .filter(|d| is_frozen(d))
        .collect()
}

/// Waits until `pid` is gone and its freezer group removed.
fn wait_gone(h: &Hako, what: &str, pid: i32, group: &Path) {
    wait_for(Duration::from_secs(20), || {
        (!alive(pid, None) && !group.exists()).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{what}: pid {pid} alive={} group {} exists={}\n{}",
            alive(pid, None),
            group.display(),
            group.exists(),
            h.log()
        )
    });
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Hibernate, wake by request (same pid, no boot, one wake), concurrent requests sharing one
/// wake, and with swap: the hibernated Flask instance holds far less memory than warm.
#[test]
fn flask_and_node_hibernate_and_wake_by_request_without_a_boot() {
    require_root!();
    if !real_apps_available() {
        return;
    }
    let swap = zram_swap_or_skip_reason();
    let code = Code::new();
    let mut h = Hako::start(&apps_yaml(&code, "10m", "1"), &[]);

    for (app, host, prefix) in [
        ("flask", "flask.test", "flask "),
        ("node", "node.test", "node "),
    ] {
        let r = h.get(host, "/");
        assert_eq!(r.status, 200, "{app}: {}\n{}", r.text(), h.log());
        assert!(r.text().starts_with(prefix), "{app}: {}", r.text());
        let warm = h.the_instance_of(app);
        let pid = pid_of(&warm);
        let warm_mem = warm["memory_bytes"]
            .as_u64()
            .expect("memory_bytes of a warm instance");

        let hib = wait_hibernated(&h, app);
        assert_eq!(pid_of(&hib), pid, "{app}: hibernation kept the process");
        let group = freezer_dir_of(pid).expect("freezer group of the instance");
        assert!(is_frozen(&group), "{app}: {} not frozen", group.display());
        let mem = |i: &serde_json::Value| i["memory_bytes"].as_u64().expect("memory_bytes");
        if swap.is_some() && app == "flask" {
            // The reclaim follows the freeze: its memory goes down while it is hibernated.
            let reclaimed = wait_for(Duration::from_secs(20), || {
                let i = h.the_instance_of(app);
                (state_of(&i) == "hibernated" && mem(&i) * 2 <= warm_mem).then(|| mem(&i))
            });
            let hib_mem = mem(&h.the_instance_of(app));
            println!("{app}: memory_bytes warm {warm_mem}, hibernated {hib_mem} (zram swap)");
            assert!(
                reclaimed.is_some(),
                "flask: hibernated {hib_mem} bytes, warm {warm_mem}: not reclaimed\n{}",
                h.log()
            );
        } else {
            println!(
                "{app}: memory_bytes warm {warm_mem}, hibernated {}",
                mem(&hib)
            );
        }

        // A request wakes the same process: no boot, one wake.
        let boots = counter(&h, "hako_boots_total", &[("app", app)]);
        let wakes = counter(&h, "hako_wakes_total", &[("app", app), ("result", "ok")]);
        let r = h.get(host, "/");
        assert_eq!(
            r.status,
            200,
            "{app} after a wake: {}\n{}",
            r.text(),
            h.log()
        );
        assert!(r.text().starts_with(prefix), "{app}: {}", r.text());
        let now = h.the_instance_of(app);
        assert_eq!(
            pid_of(&now),
            pid,
            "{app}: the woken instance is the same process"
        );
        assert_eq!(state_of(&now), "ready");
        assert!(!is_frozen(&group), "{app}: still frozen after the wake");
        assert_eq!(
            counter(&h, "hako_boots_total", &[("app", app)]),
            boots,
            "{app}: a boot was counted"
        );
        assert_eq!(
            counter(&h, "hako_wakes_total", &[("app", app), ("result", "ok")]),
            wakes + 1.0,
            "{app}: one wake"
        );

        // Concurrent requests during a wake share it.
        wait_hibernated(&h, app);
        let addr = h.listen;
        let host_owned = host.to_string();
        let replies = concurrently(8, move |_| get(addr, &host_owned, "/"));
        for r in &replies {
            assert_eq!(r.status, 200, "{app} concurrent: {}", r.text());
            assert!(r.text().starts_with(prefix), "{app}: {}", r.text());
        }
        let now = h.the_instance_of(app);
        assert_eq!(
            pid_of(&now),
            pid,
            "{app}: concurrent requests reached the same process"
        );
        assert_eq!(
            counter(&h, "hako_boots_total", &[("app", app)]),
            boots,
            "{app}: a boot was counted"
        );
        assert_eq!(
            counter(&h, "hako_wakes_total", &[("app", app), ("result", "ok")]),
            wakes + 2.0,
            "{app}: concurrent requests shared one wake"
        );
    }
    assert!(
        counter(&h, "hako_hibernations_total", &[("app", "flask")]) >= 2.0,
        "hako_hibernations_total"
    );

    // Shutdown with both hibernated: nothing frozen, nothing left.
    wait_hibernated(&h, "flask");
    wait_hibernated(&h, "node");
    assert_eq!(frozen_groups(&h).len(), 2, "both instances frozen");
    let st = h.stop();
    assert!(st.success(), "hako exited with {st}\n{}", h.log());
    h.assert_clean();
    drop(swap);
}

/// An instance SIGKILLed while hibernated is noticed: the next request is answered by a new
/// process.
#[test]
fn an_instance_killed_while_hibernated_is_replaced() {
    require_root!();
    if !real_apps_available() {
        return;
    }
    let code = Code::new();
    let mut h = Hako::start(&apps_yaml(&code, "10m", "1"), &[]);
    for (app, host, prefix) in [
        ("node", "node.test", "node "),
        ("flask", "flask.test", "flask "),
    ] {
        let r = h.get(host, "/");
        assert_eq!(r.status, 200, "{app}: {}\n{}", r.text(), h.log());
        let pid = pid_of(&wait_hibernated(&h, app));
        let group = freezer_dir_of(pid).expect("freezer group");
        send_signal(pid, libc::SIGKILL).expect("kill the hibernated instance");

        let r = h.get(host, "/");
        assert_eq!(
            r.status,
            200,
            "{app} after the kill: {}\n{}",
            r.text(),
            h.log()
        );
        assert!(r.text().starts_with(prefix), "{app}: {}", r.text());
        let now = h.the_instance_of(app);
        let new_pid = pid_of(&now);
        assert_ne!(new_pid, pid, "{app}: answered by a new process");
        assert_eq!(state_of(&now), "ready");
        wait_gone(&h, app, pid, &group);
    }
    let st = h.stop();
    assert!(st.success(), "hako exited with {st}\n{}", h.log());
    h.assert_clean();
}

/// idle_timeout stops a hibernated instance; a reload keeps the hibernated instance of a
/// changed app (woken later, same process) and stops that of a removed app; neither leaves a
/// frozen group or a process behind.
#[test]
fn idle_stop_and_reload_of_hibernated_instances_leave_nothing_frozen() {
    require_root!();
    if !real_apps_available() {
        return;
    }
    let code = Code::new();
    // idle_timeout 6s: hibernated after 1 s, stopped 6 s after the last request.
    let mut h = Hako::start(&apps_yaml(&code, "6s", "1"), &[]);

    // Idle stop of a hibernated Flask instance.
    assert_eq!(h.get("flask.test", "/").status, 200, "{}", h.log());
    let pid = pid_of(&wait_hibernated(&h, "flask"));
    let group = freezer_dir_of(pid).expect("freezer group");
    wait_for(Duration::from_secs(30), || {
        h.instances_of("flask").is_empty().then_some(())
    })
    .unwrap_or_else(|| panic!("the hibernated flask instance was not stopped\n{}", h.log()));
    wait_gone(&h, "idle stop", pid, &group);
    assert_eq!(
        h.metrics().sum(
            "hako_instance_stops_total",
            &[("app", "flask"), ("reason", "idle")]
        ),
        1.0,
        "the stop reason of a hibernated instance that expires is idle"
    );

    // From now on no idle stops (instances booted after a reload take the new settings).
    h.rewrite_apps(&apps_yaml(&code, "10m", "1"));
    let r = post_reload(&h);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");

    // A reload while both are hibernated: the changed Flask app keeps its instance (running
    // instances keep their settings), the removed Node app's instance is stopped.
    assert_eq!(h.get("flask.test", "/").status, 200, "{}", h.log());
    assert_eq!(h.get("node.test", "/").status, 200, "{}", h.log());
    let flask_pid = pid_of(&wait_hibernated(&h, "flask"));
    let node_pid = pid_of(&wait_hibernated(&h, "node"));
    let node_group = freezer_dir_of(node_pid).expect("freezer group");
    let changed = apps_yaml(&code, "10m", "1");
    let flask_only = &changed[..changed.find("  - name: node").expect("node entry")];
    h.rewrite_apps(&flask_only.replace(
        "PYTHONDONTWRITEBYTECODE: \"1\"",
        "PYTHONDONTWRITEBYTECODE: \"1\", GENERATION: \"2\"",
    ));
    let r = post_reload(&h);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    wait_gone(&h, "reload", node_pid, &node_group);
    assert_eq!(
        h.get("node.test", "/").status,
        404,
        "the removed app is not routed"
    );
    let frozen = frozen_groups(&h);
    assert_eq!(
        frozen.len(),
        1,
        "only the Flask instance is still frozen: {frozen:?}"
    );
    let r = h.get("flask.test", "/");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), h.log());
    assert_eq!(
        pid_of(&h.the_instance_of("flask")),
        flask_pid,
        "woken, not rebooted"
    );
    assert!(
        frozen_groups(&h).is_empty(),
        "frozen: {:?}",
        frozen_groups(&h)
    );

    let st = h.stop();
    assert!(st.success(), "hako exited with {st}\n{}", h.log());
    h.assert_clean();
}

/// A Node server whose keep-alive connections expire after 2 s (Node's default is 5 s).
const NODE_KEEPALIVE_APP: &str = r#"
const http = require('http');
const server = http.createServer((req, res) => {
  res.end('node ' + process.pid);
});
server.keepAliveTimeout = 2000;
server.listen(8080, '0.0.0.0');
"#;

/// Regression: a wake later than the app's keep-alive timeout answered 502. The proxy kept a
/// pooled connection to the instance across the freeze; on thaw Node's overdue keep-alive
/// timer closed it just as the woken request was written on it. Connections pooled before a
/// hibernation are never reused after it. (keepAliveTimeout 2 s, not 1 s: with
/// `hibernate_after: 1s` a 1 s timer often closes the connection before the freeze, and the
/// bug does not show.)
#[test]
fn a_wake_after_the_apps_keep_alive_timeout_is_answered() {
    require_root!();
    if !real_apps_available() {
        return;
    }
    let code = Code::new();
    fs::write(code.0.path().join("keepalive.js"), NODE_KEEPALIVE_APP).unwrap();
    let yaml = format!(
        r#"apps:
  - name: node
    hosts: [node.test]
    rootfs: host
    command: [/usr/bin/node, /app/keepalive.js]
    volumes:
      - {{source: {code}, target: /app, read_only: true}}
    limits: {{memory: 256Mi}}
    lifetime: {{hibernate_after: 1s, idle_timeout: 10m, stop_timeout: 2s}}
    readiness: {{timeout: 30s}}
"#,
        code = code.dir().display(),
    );
    let mut h = Hako::start(&yaml, &[]);
    let r = h.get("node.test", "/");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), h.log());
    let pid = pid_of(&h.the_instance_of("node"));
    let mut last = std::time::Instant::now();
    let boots = counter(&h, "hako_boots_total", &[("app", "node")]);
    for round in 1..=3 {
        let hib = wait_hibernated(&h, "node");
        assert_eq!(
            pid_of(&hib),
            pid,
            "round {round}: hibernation kept the process"
        );
        // Past the app's keep-alive timeout (2 s) while frozen.
        std::thread::sleep(Duration::from_secs(3).saturating_sub(last.elapsed()));
        let wakes = counter(&h, "hako_wakes_total", &[("app", "node"), ("result", "ok")]);
        let idle = last.elapsed();
        let r = h.get("node.test", "/");
        last = std::time::Instant::now();
        assert_eq!(
            r.status,
            200,
            "round {round}: wake {idle:?} after the last request: {}\n{}",
            r.text(),
            h.log()
        );
        assert!(r.text().starts_with("node "), "round {round}: {}", r.text());
        let now = h.the_instance_of("node");
        assert_eq!(pid_of(&now), pid, "round {round}: woken, not replaced");
        assert_eq!(
            counter(&h, "hako_wakes_total", &[("app", "node"), ("result", "ok")]),
            wakes + 1.0,
            "round {round}: one wake"
        );
    }
    assert_eq!(
        counter(&h, "hako_boots_total", &[("app", "node")]),
        boots,
        "no boot after the first"
    );
    let st = h.stop();
    assert!(st.success(), "hako exited with {st}\n{}", h.log());
    h.assert_clean();
}

fn post_reload(h: &Hako) -> String {
    let admin = h.admin;
    let req = format!(
        "POST /v1/reload HTTP/1.1\r\nHost: {admin}\r\nX-Hako-Reload: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    let raw = raw_exchange(admin, req.as_bytes()).expect("admin request");
    String::from_utf8_lossy(&raw).into_owned()
}

/// `hako check` notes once (stderr, exit 0) that hibernating apps keep their memory on a host
/// without swap, and says nothing of it when the host has swap.
#[test]
fn hako_check_notes_a_host_without_swap() {
    require_root!();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("hako.yaml");
    let state = dir.path().join("state");
    let check = |swap_expected: bool| {
        let out = Command::new(hako_bin())
            .arg("check")
            .arg("--config")
            .arg(&cfg)
            .output()
            .expect("run hako check");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{}", output_text(&out));
        let notes = err.matches("no swap").count();
        assert_eq!(notes, usize::from(!swap_expected), "stderr: {err}");
        if !swap_expected {
            assert!(err.contains("web, api"), "names the apps: {err}");
        }
    };
    let app = |name: &str, hib: bool| {
        format!(
            "  - name: {name}\n    hosts: [{name}.test]\n    rootfs: host\n    command: [/bin/true]\n    lifetime: {{idle_timeout: 1m{}}}\n",
            if hib { ", hibernate_after: 10s" } else { "" }
        )
    };
    // The host's swap must not change under the check (another test's zram swap).
    let _lock = zram_lock().expect("zram lock");
    let host_swap = fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1);
    fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{}\nstate_dir: {}\napps:\n{}{}{}",
            free_port(),
            state.display(),
            app("web", true),
            app("api", true),
            app("static", false)
        ),
    )
    .unwrap();
    check(host_swap);
    // Without hibernating apps, no note either way.
    fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{}\nstate_dir: {}\napps:\n{}",
            free_port(),
            state.display(),
            app("static", false)
        ),
    )
    .unwrap();
    check(true);
}
