//! Operability end to end: a real Prometheus server scrapes a real `hako serve`, `promtool`
//! lints hako's exposition, every metric family is documented in `docs/metrics.md`, removing
//! an app from the configuration removes its series, and `--log-format json` writes one JSON
//! object per line with the fields of a boot and a stop.
//!
//! Needs root (containers, cgroups); prints "skipped: needs root" otherwise. Needs the `hako`
//! binary beside the test executable (`cargo test --workspace` builds it) and, for the
//! Prometheus test, `/usr/bin/prometheus` and `promtool` (Debian package `prometheus`).
//! Shared helpers (the `hako serve` guard, HTTP client, waits) come from `hako_tests`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hako_tests::*;
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

/// Starts hako with the given `apps:` entries (host rootfs) and global CLI options.
fn start_hako(entries: &[String], global_args: &[&str]) -> Hako {
    Hako::start_with_args(&apps(entries), &[], "", global_args)
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
            match request(p.addr, &Request::get("prometheus", "/-/ready")) {
                Ok(r) if r.status == 200 => Some(()),
                _ => None,
            }
        });
        p
    }

    /// Runs an instant query; returns the value of each result sample.
    fn query(&self, promql: &str) -> Vec<f64> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let r = get(self.addr, "prometheus", &path);
        let body = r.text();
        assert_eq!(r.status, 200, "query {promql}: {body}");
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

    /// The sum of an instant query's samples (0 when it has none).
    fn sum(&self, promql: &str) -> f64 {
        self.query(promql).iter().sum()
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

/// An app entry serving the host's `/etc` with busybox httpd (`rootfs: host`).
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
    let hako = start_hako(&[app_yaml("web", "web.test", "1s")], &[]);
    let prom = Prometheus::start(dir.path(), hako.admin);

    // Prometheus has scraped hako at least once before the request...
    wait_until(
        "Prometheus to scrape hako (up == 1)",
        Duration::from_secs(20),
        || (prom.query(r#"up{job="hako"}"#) == vec![1.0]).then_some(()),
    );
    let before = prom.sum(r#"sum(hako_boots_total{app="web",result="ok"})"#);
    assert_eq!(before, 0.0, "no boot has happened yet");

    // ...then one cold request boots a container...
    let r = hako.get("web.test", "/hostname");
    assert_eq!(r.status, 200, "cold request: {}\n{}", r.text(), hako.log());

    // ...and the boot is visible through Prometheus's query API.
    let after = wait_until(
        "hako_boots_total to rise in Prometheus",
        Duration::from_secs(20),
        || {
            let v = prom.sum(r#"sum(hako_boots_total{app="web",result="ok"})"#);
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
            let v = prom.sum(r#"sum(hako_instance_stops_total{app="web",reason="idle"})"#);
            (v == 1.0).then_some(())
        },
    );

    // promtool lints the exposition hako serves (with every family populated by now).
    let text = hako.metrics().text;
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
    let hako = start_hako(&[app_yaml("web", "web.test", "60s")], &[]);
    let r = hako.get("web.test", "/hostname");
    assert_eq!(r.status, 200, "{}", hako.log());
    let text = hako.metrics().text;
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
    let both = [
        app_yaml("stay", "stay.test", "60s"),
        app_yaml("gone", "gone.test", "60s"),
    ];
    let mut hako = start_hako(&both, &["--log-format", "json"]);
    for host in ["stay.test", "gone.test"] {
        let r = hako.get(host, "/hostname");
        assert_eq!(r.status, 200, "{host}: {}\n{}", r.text(), hako.log());
    }
    assert!(hako.metrics().text.contains(r#"app="gone""#));

    hako.rewrite_apps(&apps(&[app_yaml("stay", "stay.test", "60s")]));
    let out = Command::new(hako_bin())
        .args(["reload", "--admin", &hako.admin.to_string()])
        .output()
        .expect("hako reload");
    assert!(out.status.success(), "hako reload: {}", output_text(&out));

    // The removed app's instance drains and stops (grace 1 s, stop_timeout 500 ms); once it is
    // gone no series of the app may remain, including ones its stop would have touched.
    wait_until(
        "the removed app's instance to stop",
        Duration::from_secs(20),
        || {
            let log = hako.log();
            let stopped = log.lines().any(|l| {
                serde_json::from_str::<Value>(l).is_ok_and(|e| {
                    e["app"] == "gone" && e["reason"] == "shutdown" && e.get("age_s").is_some()
                })
            });
            stopped.then_some(())
        },
    );
    let text = hako.metrics().text;
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
    let broken = "  - name: broken\n    hosts: [broken.test]\n    rootfs: host\n    command: [\"/bin/false\"]\n    \
         readiness: {timeout: 2s}\n    scaling: {queue_timeout: 3s}\n";
    let mut hako = start_hako(
        &[app_yaml("web", "web.test", "1s"), broken.to_string()],
        &["--log-format", "json"],
    );
    let r = hako.get("web.test", "/hostname");
    assert_eq!(r.status, 200, "{}", hako.log());
    let status = hako.get("broken.test", "/").status;
    assert!(
        status >= 500,
        "a request to an app that cannot boot fails, got {status}"
    );

    // idle_timeout 1s: the instance stops by itself.
    wait_until(
        "the idle stop to be logged",
        Duration::from_secs(20),
        || hako.log().contains("\"reason\":\"idle\"").then_some(()),
    );
    let st = hako.stop();
    assert!(st.success(), "hako did not exit cleanly on SIGTERM: {st}");
    let events = json_events(&hako.log());

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
