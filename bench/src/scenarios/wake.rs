//! `hako-bench wake`: the first response after hibernation (a wake) beside the first response
//! after an idle stop (a cold boot), for a Flask app (gunicorn), a Node `http` server and
//! busybox httpd, side by side in one `hako serve`; and the resident memory of each instance
//! warm and hibernated (`memory_bytes` of `/v1/instances`, with the anonymous/file split of its
//! memory cgroup).
//!
//! Every app runs twice: `<kind>-h` with `lifetime.hibernate_after` (and a long idle_timeout)
//! and `<kind>-c` with only a short `idle_timeout`. A round warms all of them, waits until the
//! `-h` ones are hibernated and the `-c` ones stopped, then times one request to each (a new
//! connection, to the end of the body: what curl's total shows), then a second one (warm).
//!
//! `--density N` then starts a second `hako serve` with N Flask apps, boots each once, waits
//! until all are hibernated and reports the host memory they use (`MemAvailable` before the
//! serve started minus after, divided by N) and the wake latency at that count.
//!
//! The host's swap is the operator's: the scenario reports `SwapTotal` and does not create any.
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::launcher::percentile;
use super::util::ServeProc;

/// What to run.
#[derive(Debug, Clone)]
pub struct WakeSpec {
    /// The hako binary (`hako serve`; needs root).
    pub hako: PathBuf,
    /// Rounds (wakes and cold boots per app).
    pub rounds: usize,
    /// App kinds to run: `flask`, `node`, `busybox`.
    pub apps: Vec<String>,
    /// `HAKO_RECLAIM` for the served hako (`cgroup` or `madvise`), else hako's default.
    pub reclaim: Option<String>,
    /// Hibernated Flask instances of the density part (0: skipped).
    pub density: usize,
}

/// Errors of the scenario.
#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    #[error("{0}")]
    Setup(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

const FLASK_APP: &str = r#"
import os
from flask import Flask
app = Flask(__name__)

@app.route("/")
def index():
    return "flask %d\n" % os.getpid()
"#;

/// Node's defaults (keep-alive timeout 5 s: hako never reuses a connection pooled before a
/// hibernation, so a wake later than that is answered too).
const NODE_APP: &str = r#"
const http = require('http');
http.createServer((req, res) => { res.end('node ' + process.pid + '\n'); }).listen(8080, '0.0.0.0');
"#;

fn write(path: &Path, text: &str) -> Result<(), WakeError> {
    std::fs::write(path, text).map_err(|source| WakeError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn free_port() -> Result<u16, WakeError> {
    super::util::free_port().map_err(|e| WakeError::Setup(format!("free port: {e}")))
}

/// One GET on a new connection; status, body and the time from connect to the body's end.
fn timed_get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String, f64)> {
    super::util::http_get(
        addr,
        host,
        path,
        Duration::from_secs(5),
        Duration::from_secs(60),
    )
}

fn wait_for<T>(what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> Result<T, WakeError> {
    super::util::poll_until(Duration::from_secs(secs), Duration::from_millis(20), f)
        .ok_or_else(|| WakeError::Setup(format!("{what}: not within {secs} s")))
}

/// A `key: N kB` line of `/proc/meminfo`, in bytes.
pub fn meminfo_bytes(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        Some(rest.split_whitespace().next()?.parse::<u64>().ok()? * 1024)
    })
}

fn meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| meminfo_bytes(&t, key))
        .unwrap_or(0)
}

/// Anonymous and file bytes in RAM of `pid`'s memory cgroup (v1 `total_rss`/`total_cache`,
/// v2 `anon`/`file`).
fn cgroup_anon_file(pid: u64) -> Option<(u64, u64)> {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let stat = cg.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
        if ctrl.split(',').any(|c| c == "memory") {
            Some(format!("/sys/fs/cgroup/memory{path}/memory.stat"))
        } else if ctrl.is_empty() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            Some(format!("/sys/fs/cgroup{path}/memory.stat"))
        } else {
            None
        }
    })?;
    let text = std::fs::read_to_string(stat).ok()?;
    let key = |k: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(k)?
                .strip_prefix(' ')?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Some(match (key("total_rss"), key("total_cache")) {
        (Some(a), Some(f)) => (a, f),
        _ => (key("anon")?, key("file")?),
    })
}

/// One `hako serve` of this benchmark.
struct Serve {
    proc: ServeProc,
}

impl Serve {
    fn start(spec: &WakeSpec, dir: &Path, name: &str, apps: &str) -> Result<Serve, WakeError> {
        let (listen, admin) = (free_port()?, free_port()?);
        let cgroup_parent = format!("hako-bench-{name}-{}", std::process::id());
        let cfg = format!(
            "listen: 127.0.0.1:{listen}\nadmin: 127.0.0.1:{admin}\nstate_dir: {d}/state-{name}\n\
cgroup_parent: {cgroup_parent}\ngovernor: {{enabled: false}}\napps:\n{apps}",
            d = dir.display()
        );
        let cfg_path = dir.join(format!("{name}.yaml"));
        write(&cfg_path, &cfg)?;
        let mut cmd = Command::new(&spec.hako);
        cmd.arg("serve").arg("--config").arg(&cfg_path).env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or("warn".into()),
        );
        match &spec.reclaim {
            Some(m) => cmd.env("HAKO_RECLAIM", m),
            None => cmd.env_remove("HAKO_RECLAIM"),
        };
        let proc = ServeProc::start(
            cmd,
            &dir.join(format!("{name}.log")),
            ([127, 0, 0, 1], listen).into(),
            ([127, 0, 0, 1], admin).into(),
            cgroup_parent,
            Duration::from_secs(30),
        )
        .map_err(WakeError::Setup)?;
        Ok(Serve { proc })
    }

    fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// `/v1/instances`, by app: (state, pid, memory_bytes).
    fn instances(&self) -> Vec<(String, String, u64, u64)> {
        let Ok((200, body, _)) = timed_get(self.proc.admin, "127.0.0.1", "/v1/instances") else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|i| {
                        (
                            i["app"].as_str().unwrap_or("").to_string(),
                            i["state"].as_str().unwrap_or("").to_string(),
                            i["pid"].as_u64().unwrap_or(0),
                            i["memory_bytes"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn get(&self, host: &str) -> Result<f64, WakeError> {
        let (status, body, ms) = timed_get(self.proc.listen, host, "/")
            .map_err(|e| WakeError::Setup(format!("GET {host}: {e}")))?;
        if status != 200 {
            return Err(WakeError::Setup(format!(
                "GET {host}: {status} {body}\n{}",
                self.log_text()
            )));
        }
        Ok(ms)
    }

    fn stop(&mut self) {
        self.proc.stop();
    }
}

/// The app entry of `kind` named `name`; `lifetime` is its flow mapping's content.
fn app_entry(kind: &str, name: &str, code: &Path, lifetime: &str) -> Result<String, WakeError> {
    let (command, vol_target) = match kind {
        "flask" => (
            r#"[/usr/bin/gunicorn, --bind, "0.0.0.0:8080", --chdir, /app, --workers, "1", "app:app"]"#,
            "/app",
        ),
        "node" => ("[/usr/bin/node, /app/server.js]", "/app"),
        "busybox" => ("[/bin/busybox, httpd, -f, -p, '8080', -h, /www]", "/www"),
        k => {
            return Err(WakeError::Setup(format!(
                "unknown app kind {k} (flask, node, busybox)"
            )))
        }
    };
    Ok(format!(
        "  - name: {name}\n    hosts: [{name}.wake.test]\n    rootfs: host\n    command: {command}\n    env: {{PYTHONDONTWRITEBYTECODE: \"1\"}}\n    volumes:\n      - {{source: {src}, target: {vol_target}, read_only: true}}\n    lifetime: {{{lifetime}}}\n    readiness: {{timeout: 60s}}\n",
        src = code.display()
    ))
}

/// Latencies of one kind of first response, in ms.
#[derive(Debug, Default, Clone)]
struct Series(Vec<f64>);

impl Series {
    fn line(&self) -> String {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return "-".into();
        }
        format!(
            "p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms (n={})",
            percentile(&v, 0.50),
            percentile(&v, 0.90),
            percentile(&v, 0.99),
            v[v.len() - 1],
            v.len()
        )
    }
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1 << 20) as f64)
}

/// Runs the scenario; `print` gets every line as it is measured, then the summary.
pub fn run_wake(spec: &WakeSpec, print: &mut dyn FnMut(&str)) -> Result<(), WakeError> {
    let tmp = tempfile::Builder::new()
        .prefix("hako-bench-wake-")
        .tempdir()
        .map_err(|e| WakeError::Setup(format!("tempdir: {e}")))?;
    let dir = tmp.path();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| WakeError::Setup(format!("chmod: {e}")))?;
    let code = dir.join("code");
    std::fs::create_dir(&code).map_err(|e| WakeError::Setup(format!("mkdir: {e}")))?;
    write(&code.join("app.py"), FLASK_APP)?;
    write(&code.join("server.js"), NODE_APP)?;
    write(&code.join("index.html"), "busybox\n")?;
    print(&format!(
        "wake: host SwapTotal {} MiB, reclaim {}, {} rounds",
        mib(meminfo("SwapTotal")),
        spec.reclaim.as_deref().unwrap_or("default"),
        spec.rounds
    ));

    if spec.rounds > 0 {
        side_by_side(spec, dir, &code, print)?;
    }
    if spec.density > 0 {
        density(spec, dir, &code, print)?;
    }
    Ok(())
}

fn side_by_side(
    spec: &WakeSpec,
    dir: &Path,
    code: &Path,
    print: &mut dyn FnMut(&str),
) -> Result<(), WakeError> {
    let mut apps = String::new();
    for k in &spec.apps {
        apps += &app_entry(
            k,
            &format!("{k}-h"),
            code,
            "hibernate_after: 1s, idle_timeout: 1h",
        )?;
        apps += &app_entry(k, &format!("{k}-c"), code, "idle_timeout: 1s")?;
    }
    let mut serve = Serve::start(spec, dir, "wake", &apps)?;
    let n = spec.apps.len();
    let (mut wake, mut cold, mut warm) = (
        vec![Series::default(); n],
        vec![Series::default(); n],
        vec![Series::default(); n],
    );
    let mut mem_warm = vec![Vec::new(); n];
    let mut mem_hib = vec![Vec::new(); n];
    let mut split = vec![((0u64, 0u64), (0u64, 0u64)); n];
    // Round 0 boots everything (not measured).
    for round in 0..=spec.rounds {
        for k in &spec.apps {
            serve.get(&format!("{k}-h.wake.test"))?;
            serve.get(&format!("{k}-c.wake.test"))?;
        }
        let inst = serve.instances();
        // Warm means just booted: after a wake, what went to swap stays there until touched.
        for (i, k) in spec.apps.iter().enumerate().filter(|_| round == 0) {
            if let Some(x) = inst.iter().find(|x| x.0 == format!("{k}-h")) {
                mem_warm[i].push(x.3);
                if let Some(s) = cgroup_anon_file(x.2) {
                    split[i].0 = s;
                }
            }
        }
        wait_for("hibernated and stopped", 120, || {
            let inst = serve.instances();
            spec.apps
                .iter()
                .all(|k| {
                    inst.iter()
                        .any(|x| x.0 == format!("{k}-h") && x.1 == "hibernated")
                        && !inst.iter().any(|x| x.0 == format!("{k}-c"))
                })
                .then_some(inst)
        })
        .map(|inst| {
            for (i, k) in spec.apps.iter().enumerate() {
                if let Some(x) = inst.iter().find(|x| x.0 == format!("{k}-h")) {
                    mem_hib[i].push(x.3);
                    if let Some(s) = cgroup_anon_file(x.2) {
                        split[i].1 = s;
                    }
                }
            }
        })
        .map_err(|e| {
            WakeError::Setup(format!(
                "{e}: {:?}\n{}",
                serve.instances(),
                serve.log_text()
            ))
        })?;
        if round == 0 {
            continue;
        }
        let mut line = format!("round {round}:");
        for (i, k) in spec.apps.iter().enumerate() {
            let w = serve.get(&format!("{k}-h.wake.test"))?;
            let again = serve.get(&format!("{k}-h.wake.test"))?;
            let c = serve.get(&format!("{k}-c.wake.test"))?;
            wake[i].0.push(w);
            warm[i].0.push(again);
            cold[i].0.push(c);
            let _ = write!(line, " {k} wake {w:.2} cold {c:.2} warm {again:.2} ms;");
        }
        print(&line);
    }
    serve.stop();

    print("--- summary (first response, new connection, ms) ---");
    for (i, k) in spec.apps.iter().enumerate() {
        let med = |v: &Vec<u64>| {
            let mut v: Vec<f64> = v.iter().map(|&b| b as f64).collect();
            v.sort_by(f64::total_cmp);
            if v.is_empty() {
                0
            } else {
                percentile(&v, 0.5) as u64
            }
        };
        let (w, h) = (med(&mem_warm[i]), med(&mem_hib[i]));
        print(&format!("{k:8} wake  {}", wake[i].line()));
        print(&format!("{k:8} cold  {}", cold[i].line()));
        print(&format!("{k:8} warm  {}", warm[i].line()));
        let ((wa, wf), (ha, hf)) = split[i];
        print(&format!(
            "{k:8} memory_bytes warm (booted) {} MiB, hibernated {} MiB ({:.1}%) (median of the rounds; cgroup split: warm anon {} file {}, last hibernated anon {} file {} MiB)",
            mib(w),
            mib(h),
            if w > 0 { h as f64 * 100.0 / w as f64 } else { 0.0 },
            mib(wa),
            mib(wf),
            mib(ha),
            mib(hf),
        ));
    }
    Ok(())
}

fn density(
    spec: &WakeSpec,
    dir: &Path,
    code: &Path,
    print: &mut dyn FnMut(&str),
) -> Result<(), WakeError> {
    let n = spec.density;
    let mut apps = String::new();
    for i in 0..n {
        apps += &app_entry(
            "flask",
            &format!("d{i}"),
            code,
            "hibernate_after: 1s, idle_timeout: 1h",
        )?;
    }
    let (avail0, swap0) = (meminfo("MemAvailable"), meminfo("SwapFree"));
    let serve = Serve::start(spec, dir, "density", &apps)?;
    let t = Instant::now();
    for i in 0..n {
        serve.get(&format!("d{i}.wake.test"))?;
    }
    let booted = t.elapsed();
    wait_for("all hibernated", 600, || {
        let inst = serve.instances();
        (inst.len() == n && inst.iter().all(|x| x.1 == "hibernated")).then_some(())
    })?;
    // Let reclaim settle.
    std::thread::sleep(Duration::from_secs(2));
    let (avail1, swap1) = (meminfo("MemAvailable"), meminfo("SwapFree"));
    let inst = serve.instances();
    let resident: u64 = inst.iter().map(|x| x.3).sum();
    let used = avail0.saturating_sub(avail1);
    print(&format!(
        "density: {n} Flask instances booted in {:.1} s, all hibernated; MemAvailable {} -> {} MiB: {} MiB used, {} MiB per instance; swap used {} MiB ({} MiB per instance); memory_bytes sum {} MiB ({} MiB per instance)",
        booted.as_secs_f64(),
        mib(avail0),
        mib(avail1),
        mib(used),
        mib(used / n as u64),
        mib(swap0.saturating_sub(swap1)),
        mib(swap0.saturating_sub(swap1) / n as u64),
        mib(resident),
        mib(resident / n as u64),
    ));
    let mut wakes = Series::default();
    for i in 0..n {
        wakes.0.push(serve.get(&format!("d{i}.wake.test"))?);
    }
    print(&format!(
        "density: wake of each of the {n} (one after another) {}",
        wakes.line()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_lines() {
        let t = "MemTotal:       24683000 kB\nMemAvailable:   100 kB\nSwapTotal: 0 kB\n";
        assert_eq!(meminfo_bytes(t, "MemAvailable"), Some(102_400));
        assert_eq!(meminfo_bytes(t, "SwapTotal"), Some(0));
        assert_eq!(meminfo_bytes(t, "Mem"), None);
    }

    #[test]
    fn app_entries_name_the_runtime() {
        let e = app_entry("node", "node-h", Path::new("/c"), "idle_timeout: 1s").unwrap();
        assert!(
            e.contains("command: [/usr/bin/node, /app/server.js]"),
            "{e}"
        );
        assert!(
            e.contains("{source: /c, target: /app, read_only: true}"),
            "{e}"
        );
        assert!(e.contains("lifetime: {idle_timeout: 1s}"), "{e}");
        assert!(app_entry("rails", "x", Path::new("/c"), "").is_err());
    }
}
