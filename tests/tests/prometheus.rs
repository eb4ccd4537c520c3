//! Operability end to end: a real Prometheus server scrapes a real `hako serve`, `promtool`
//! lints hako's exposition, every metric family is documented in `docs/metrics.md`, removing
//! an app from the configuration removes its series, and `--log-format json` writes one JSON
//! object per line with the fields of a boot and a stop.
//!
//! Needs root (containers, cgroups); prints "skipped: needs root" otherwise. Needs the `hako`
//! binary beside the test executable (`cargo test --workspace` builds it) and, for the
//! Prometheus test, `/usr/bin/prometheus` and `promtool` (Debian package `prometheus`).
//! Self-contained on purpose: the helpers below are private to this file.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const HTTPD: &str = r#"["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"]"#;

/// The contract's metric families (DESIGN.md) with their Prometheus types.
const FAMILIES: [(&str, &str); 10] = [
    ("hako_boots_total", "counter"),
    ("hako_boot_duration_seconds", "histogram"),
    ("hako_instances", "gauge"),
    ("hako_requests_total", "counter"),
    ("hako_request_duration_seconds", "histogram"),
    ("hako_queue_depth", "gauge"),
    ("hako_instance_stops_total", "counter"),
    ("hako_limit_changes_total", "counter"),
    ("hako_cgroup_cpu_seconds_total", "counter"),
    ("hako_cgroup_memory_bytes", "gauge"),
];

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// target/<profile>/deps/<test> → target/<profile>/hako
fn hako_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("hako");
    assert!(
        bin.is_file(),
        "{} not found: build it first (`cargo build -p hako-supervisor` or `cargo test --workspace`)",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local_addr").port()
}

/// One HTTP/1.0 exchange; returns (status, body).
fn http(addr: SocketAddr, method: &str, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("malformed reply: {head:?}")))?;
    Ok((status, body.to_string()))
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running `hako serve`; dropping it stops hako (SIGTERM, SIGKILL after 20 s) and removes
/// the cgroup parent it created.
struct Hako {
    child: Child,
    cgroup_parent: String,
    listen: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    log: PathBuf,
}

impl Hako {
    /// Starts hako with `apps_yaml` (the YAML list under `apps:`) in `dir`.
    fn start(dir: &Path, tag: &str, apps_yaml: &str, extra_args: &[&str]) -> Hako {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let cgroup_parent = format!("hako-ops-{}-{tag}", std::process::id());
        let config = dir.join("hako.yaml");
        std::fs::write(
            &config,
            Self::config_text(listen, admin, dir, &cgroup_parent, apps_yaml),
        )
        .expect("write config");
        let log = dir.join("hako.log");
        let stderr = std::fs::File::create(&log).expect("create log file");
        let child = Command::new(hako_bin())
            .args(extra_args)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn hako");
        let mut hako = Hako {
            child,
            cgroup_parent,
            listen,
            admin,
            config,
            log,
        };
        wait_until("hako's /healthz", Duration::from_secs(20), || {
            if let Ok(Some(status)) = hako.child.try_wait() {
                panic!("hako exited early ({status}):\n{}", hako.log_text());
            }
            match http(hako.admin, "GET", "admin", "/healthz") {
                Ok((200, _)) => Some(()),
                _ => None,
            }
        });
        hako
    }

    fn config_text(
        listen: SocketAddr,
        admin: SocketAddr,
        dir: &Path,
        cgroup_parent: &str,
        apps_yaml: &str,
    ) -> String {
        format!(
            "listen: {listen}\nadmin: {admin}\nstate_dir: {}\ncgroup_parent: {cgroup_parent}\n\
             governor: {{enabled: false}}\napps:\n{apps_yaml}",
            dir.join("state").display()
        )
    }

    /// Rewrites the configuration with other apps (same addresses and state).
    fn rewrite_apps(&self, apps_yaml: &str) {
        let dir = self.config.parent().expect("config dir");
        let text = Self::config_text(self.listen, self.admin, dir, &self.cgroup_parent, apps_yaml);
        std::fs::write(&self.config, text).expect("rewrite config");
    }

    fn get(&self, host: &str, path: &str) -> (u16, String) {
        http(self.listen, "GET", host, path).unwrap_or_else(|e| panic!("GET {host}{path}: {e}"))
    }

    fn metrics(&self) -> String {
        let (status, body) = http(self.admin, "GET", "admin", "/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait (SIGKILL after 20 s); returns whether hako exited on SIGTERM alone.
    fn stop(&mut self) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet; no memory involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Hako {
    fn drop(&mut self) {
        self.stop();
        remove_cgroup_tree(Path::new("/sys/fs/cgroup"), &self.cgroup_parent);
    }
}

/// Removes `<root>/<parent>` and `<root>/<controller>/<parent>` (v1 and v2 layouts), deepest
/// directories first. Only empty cgroups can be removed; hako has stopped by then.
fn remove_cgroup_tree(root: &Path, parent: &str) {
    let mut tops = vec![root.join(parent)];
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            tops.push(e.path().join(parent));
        }
    }
    fn rm(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    rm(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    for t in tops {
        if t.is_dir() {
            rm(&t);
        }
    }
}

/// A running Prometheus server; dropping it kills it.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(dir: &Path, target: SocketAddr) -> Prometheus {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: hako\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let data = dir.join("tsdb");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn /usr/bin/prometheus");
        let mut p = Prometheus { child, addr };
        wait_until("Prometheus /-/ready", Duration::from_secs(30), || {
            if let Ok(Some(status)) = p.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
                panic!("prometheus exited early ({status}):\n{log}");
            }
            match http(p.addr, "GET", "prometheus", "/-/ready") {
                Ok((200, _)) => Some(()),
                _ => None,
            }
        });
        p
    }

    /// Runs an instant query; returns the value of each result sample.
    fn query(&self, promql: &str) -> Vec<f64> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (status, body) = http(self.addr, "GET", "prometheus", &path).expect("query API");
        assert_eq!(status, 200, "query {promql}: {body}");
        let v: Value = serde_json::from_str(&body).expect("query API answers JSON");
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"]
            .as_array()
            .expect("vector result")
            .iter()
            .map(|s| {
                s["value"][1]
                    .as_str()
                    .and_then(|x| x.parse().ok())
                    .expect("sample value")
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn app_yaml(name: &str, host: &str, idle: &str) -> String {
    format!(
        "  - name: {name}\n    hosts: [{host}]\n    rootfs: host\n    command: {HTTPD}\n    \
         lifetime: {{idle_timeout: {idle}, grace: 1s, stop_timeout: 500ms}}\n"
    )
}

/// `# TYPE name type` lines of an exposition.
fn declared_types(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.trim().to_string()))
        .collect()
}

#[test]
fn prometheus_scrapes_a_cold_boot_and_promtool_accepts_the_exposition() {
    require_root!();
    let dir = tempfile::tempdir().expect("tempdir");
    let hako = Hako::start(dir.path(), "prom", &app_yaml("web", "web.test", "1s"), &[]);
    let prom = Prometheus::start(dir.path(), hako.admin);

    // Prometheus has scraped hako at least once before the request...
    wait_until(
        "Prometheus to scrape hako (up == 1)",
        Duration::from_secs(20),
        || (prom.query(r#"up{job="hako"}"#) == vec![1.0]).then_some(()),
    );
    let before: f64 = prom
        .query(r#"sum(hako_boots_total{app="web",result="ok"})"#)
        .iter()
        .sum();
    assert_eq!(before, 0.0, "no boot has happened yet");

    // ...then one cold request boots a container...
    let (status, body) = hako.get("web.test", "/hostname");
    assert_eq!(status, 200, "cold request: {body}\n{}", hako.log_text());

    // ...and the boot is visible through Prometheus's query API.
    let after = wait_until(
        "hako_boots_total to rise in Prometheus",
        Duration::from_secs(20),
        || {
            let v: f64 = prom
                .query(r#"sum(hako_boots_total{app="web",result="ok"})"#)
                .iter()
                .sum();
            (v > before).then_some(v)
        },
    );
    assert_eq!(after, 1.0, "one cold request, one boot");
    let boot_count = wait_until(
        "boot duration histogram in Prometheus",
        Duration::from_secs(20),
        || {
            prom.query(r#"hako_boot_duration_seconds_count{app="web"}"#)
                .first()
                .copied()
        },
    );
    assert_eq!(boot_count, 1.0);
    // idle_timeout 1s: the instance stops by itself, and the stop is counted with its reason.
    wait_until(
        "an idle stop in Prometheus",
        Duration::from_secs(20),
        || {
            let v: f64 = prom
                .query(r#"sum(hako_instance_stops_total{app="web",reason="idle"})"#)
                .iter()
                .sum();
            (v == 1.0).then_some(())
        },
    );

    // promtool lints the exposition hako serves (with every family populated by now).
    let text = hako.metrics();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every family of the contract is exposed with HELP and its type. Families without a
    // sample are not rendered at all: hako_limit_changes_total needs a governor decision,
    // which this test does not provoke.
    let types = declared_types(&text);
    for (name, kind) in FAMILIES {
        if name == "hako_limit_changes_total" && !types.iter().any(|(n, _)| n == name) {
            continue;
        }
        assert!(
            types.iter().any(|(n, t)| n == name && t == kind),
            "{name} is not exposed as a {kind}:\n{text}"
        );
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP:\n{text}"
        );
    }
}

#[test]
fn every_exposed_metric_is_documented_with_its_type() {
    require_root!();
    let dir = tempfile::tempdir().expect("tempdir");
    let hako = Hako::start(dir.path(), "doc", &app_yaml("web", "web.test", "60s"), &[]);
    let (status, _) = hako.get("web.test", "/hostname");
    assert_eq!(status, 200, "{}", hako.log_text());
    let text = hako.metrics();
    let doc =
        std::fs::read_to_string(repo_root().join("docs/metrics.md")).expect("docs/metrics.md");
    // The contract's families (some are only rendered after their first event) and whatever
    // else hako exposes.
    let mut types: Vec<(String, String)> = FAMILIES
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    for (n, t) in declared_types(&text) {
        assert!(n.starts_with("hako_"), "{n} lacks the hako_ prefix");
        if !types.iter().any(|(m, _)| *m == n) {
            types.push((n, t));
        }
    }
    for (name, kind) in types {
        // The reference has a heading per family and states its type in the summary table row.
        let row = doc
            .lines()
            .find(|l| l.starts_with('|') && l.contains(&format!("`{name}`")))
            .unwrap_or_else(|| panic!("docs/metrics.md has no table row for `{name}`"));
        assert!(
            row.contains(&kind),
            "docs/metrics.md row for {name} does not say {kind}: {row}"
        );
    }
}

#[test]
fn removing_an_app_from_the_config_removes_its_series() {
    require_root!();
    let dir = tempfile::tempdir().expect("tempdir");
    let both = format!(
        "{}{}",
        app_yaml("stay", "stay.test", "60s"),
        app_yaml("gone", "gone.test", "60s")
    );
    let hako = Hako::start(dir.path(), "rm", &both, &["--log-format", "json"]);
    for host in ["stay.test", "gone.test"] {
        let (status, body) = hako.get(host, "/hostname");
        assert_eq!(status, 200, "{host}: {body}\n{}", hako.log_text());
    }
    assert!(hako.metrics().contains(r#"app="gone""#));

    hako.rewrite_apps(&app_yaml("stay", "stay.test", "60s"));
    let out = Command::new(hako_bin())
        .args(["reload", "--admin", &hako.admin.to_string()])
        .output()
        .expect("hako reload");
    assert!(
        out.status.success(),
        "hako reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The removed app's instance drains and stops (grace 1 s, stop_timeout 500 ms); once it is
    // gone no series of the app may remain, including ones its stop would have touched.
    wait_until(
        "the removed app's instance to stop",
        Duration::from_secs(20),
        || {
            let log = hako.log_text();
            let stopped = log.lines().any(|l| {
                serde_json::from_str::<Value>(l).is_ok_and(|e| {
                    e["app"] == "gone" && e["reason"] == "shutdown" && e.get("age_s").is_some()
                })
            });
            stopped.then_some(())
        },
    );
    let text = hako.metrics();
    let leftovers: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(r#"app="gone""#))
        .collect();
    assert!(
        leftovers.is_empty(),
        "series of the removed app remain:\n{}",
        leftovers.join("\n")
    );
    assert!(
        text.contains(r#"hako_boots_total{app="stay",result="ok"} 1"#),
        "{text}"
    );
}

/// The JSON log events of one hako run, one object per line.
fn json_events(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v.is_object(), "not a JSON object: {l}");
            v
        })
        .collect()
}

#[test]
fn json_logs_have_one_object_per_line_with_boot_and_stop_fields() {
    require_root!();
    let dir = tempfile::tempdir().expect("tempdir");
    let apps = format!(
        "{}  - name: broken\n    hosts: [broken.test]\n    rootfs: host\n    command: [\"/bin/false\"]\n    \
         readiness: {{timeout: 2s}}\n    scaling: {{queue_timeout: 3s}}\n",
        app_yaml("web", "web.test", "1s")
    );
    let mut hako = Hako::start(dir.path(), "log", &apps, &["--log-format", "json"]);
    let (status, _) = hako.get("web.test", "/hostname");
    assert_eq!(status, 200, "{}", hako.log_text());
    let (status, _) = hako.get("broken.test", "/");
    assert!(
        status >= 500,
        "a request to an app that cannot boot fails, got {status}"
    );

    // idle_timeout 1s: the instance stops by itself.
    wait_until(
        "the idle stop to be logged",
        Duration::from_secs(20),
        || {
            hako.log_text()
                .contains("\"reason\":\"idle\"")
                .then_some(())
        },
    );
    assert!(hako.stop(), "hako did not exit on SIGTERM");
    let events = json_events(&hako.log_text());

    let boot = events
        .iter()
        .find(|e| e["app"] == "web" && e.get("boot_ms").is_some())
        .unwrap_or_else(|| panic!("no boot event for web: {events:#?}"));
    assert_eq!(boot["level"], "INFO");
    assert!(
        boot["timestamp"].is_string() && boot["message"].is_string(),
        "{boot}"
    );
    let id = boot["instance"]
        .as_u64()
        .unwrap_or_else(|| panic!("boot event without instance id: {boot}"));
    assert!(
        boot["boot_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{boot}"
    );
    assert!(boot["pid"].as_u64().is_some(), "{boot}");

    let stop = events
        .iter()
        .find(|e| e["app"] == "web" && e["instance"].as_u64() == Some(id) && e["reason"] == "idle")
        .unwrap_or_else(|| panic!("no stop event for web instance {id}: {events:#?}"));
    assert!(
        stop["age_s"].as_f64().is_some_and(|s| s >= 1.0),
        "age covers the idle timeout: {stop}"
    );
    assert!(stop["message"].is_string(), "{stop}");

    let failed = events
        .iter()
        .find(|e| e["app"] == "broken" && e["status"].as_u64().is_some_and(|s| s >= 500))
        .unwrap_or_else(|| panic!("no failed-request event for broken: {events:#?}"));
    assert!(failed["elapsed_ms"].as_f64().is_some(), "{failed}");
    assert!(
        events
            .iter()
            .any(|e| e["app"] == "broken" && e["instance"].is_u64() && e["reason"].is_string()),
        "the failed boot is logged with its instance id and reason: {events:#?}"
    );
}
