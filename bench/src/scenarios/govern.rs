//! `hako-bench spike --hako PATH`: the governor's benchmarks on a `hako serve` this scenario
//! configures and starts itself (root; busybox-static).
//!
//! Four busybox httpd apps in one throwaway rootfs, each with its own document root:
//! `noisy` (`limits.cpu` = the host's CPU count unless `--noisy-cpu`) and `quiet`
//! (`limits.cpu: 1.0`), and for the scale-up part `lender` (`limits.cpu: 0.5, burst_cpu: 2.0`)
//! and `other` (`limits.cpu: 1.0`). `/cgi-bin/burn` burns about `--burn-ms` of CPU on noisy,
//! lender and other (a busybox `sh` loop whose length is calibrated on the host first, by the
//! CPU time of the children), and is a trivial CGI on quiet. No `spike` rule unless `--rule`;
//! the governor section is hako's defaults except `enabled` (`--governor on|off`).
//!
//! 1. **protection** (`--runs`): quiet polled open loop at `--rate`/s through calm, burst and
//!    calm phases; during the burst `-c` (default 12) closed-loop connections request noisy's
//!    burn CGI. quiet's p99 in the burst vs in the calm phase.
//! 2. **detection** (`--bursts`): bursts of `-c` connections on noisy alone, each after noisy is
//!    back at its policy; the time from the burst's first request to the first `limits changed`
//!    log line for noisy (hako runs with `--log-format json`; the line is logged right after
//!    the cgroup write, its `timestamp` is compared with the bench's wall clock).
//! 3. **scale-up** (`--lend-rounds`): lender alone with `--lend-connections` closed-loop burn
//!    connections; its CPU use read from its cgroup (`cpuacct.usage` / `cpu.stat`) every 100 ms:
//!    the time until a 200 ms window averages ≥ 1.6 cores; after `--lend-for`, `other` gets the
//!    same load: the time from its first request to the log line taking lender's CPU back.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::engine::{run_load_detailed, LoadSpec, RequestSpec, Stop, Target};
use crate::scenarios::util::ServeProc;
use crate::scenarios::{spike, ScenarioError, SpikeSpec};

/// Inputs of the self-configured governor benchmarks.
#[derive(Debug, Clone)]
pub struct GovernSpec {
    /// The hako binary.
    pub hako: PathBuf,
    /// `governor.enabled`.
    pub governor: bool,
    /// Give noisy the old `spike` rule (`cpu_above: 0.8, for: 300ms, tighten_cpu: 0.2`).
    pub rule: bool,
    /// noisy's `limits.cpu` (cores).
    pub noisy_cpu: f64,
    /// Protection runs.
    pub runs: usize,
    /// calm, burst, calm of a protection run.
    pub phases: [Duration; 3],
    /// quiet's open-loop rate.
    pub rate: f64,
    /// Concurrent burn requests on noisy.
    pub connections: usize,
    /// CPU per burn request (ms).
    pub burn_ms: u64,
    /// Detection bursts.
    pub bursts: usize,
    /// Length of one detection burst.
    pub burst_len: Duration,
    /// Scale-up rounds.
    pub lend_rounds: usize,
    /// Burn connections of lender and of other.
    pub lend_connections: usize,
    /// How long lender runs alone before other starts.
    pub lend_for: Duration,
}

/// Seconds since the epoch, now.
fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `YYYY-MM-DDTHH:MM:SS[.frac]Z` (what tracing's JSON format writes) as seconds since the
/// epoch.
pub fn parse_utc(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) as f64 + sec)
}

/// One `limits changed` line of hako's JSON log.
#[derive(Debug, Clone)]
pub struct Change {
    /// Wall time of the line.
    pub at: f64,
    /// The app.
    pub app: String,
    /// `tighten`, `relax`, `burst`.
    pub direction: String,
    /// CPU quota before and after (cores).
    pub cpu: (f64, f64),
    /// Weight before and after.
    pub weight: (u64, u64),
    /// Why.
    pub reason: String,
}

/// The `limits changed` lines of a JSON log text.
pub fn changes(log: &str) -> Vec<Change> {
    log.lines()
        .filter(|l| l.contains("limits changed"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some(Change {
                at: parse_utc(v["timestamp"].as_str()?)?,
                app: v["app"].as_str()?.to_string(),
                direction: v["direction"].as_str()?.to_string(),
                cpu: (v["cpu_before"].as_f64()?, v["cpu_after"].as_f64()?),
                weight: (
                    v["weight_before"].as_u64().unwrap_or(0),
                    v["weight_after"].as_u64().unwrap_or(0),
                ),
                reason: v["reason"].as_str().unwrap_or("").to_string(),
            })
        })
        .collect()
}

fn setup(what: impl std::fmt::Display) -> ScenarioError {
    ScenarioError::Args(what.to_string())
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), ScenarioError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(|source| ScenarioError::Io {
            path: p.display().to_string(),
            source,
        })?;
    }
    std::fs::write(path, text)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
        .map_err(|source| ScenarioError::Io {
            path: path.display().to_string(),
            source,
        })
}

const BUSYBOX: &str = "/usr/bin/busybox";

/// Loop iterations of the burn CGI for `ms` of CPU: 200,000 iterations timed on the host by
/// the CPU time of the child (user + system), median of three.
fn calibrate(ms: u64) -> Result<u64, ScenarioError> {
    const PROBE: u64 = 200_000;
    let mut per = Vec::new();
    for _ in 0..3 {
        let before = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
            .map_err(|e| setup(format!("getrusage: {e}")))?;
        let st = Command::new(BUSYBOX)
            .args([
                "sh",
                "-c",
                &format!("i=0; while [ $i -lt {PROBE} ]; do i=$((i+1)); done"),
            ])
            .status()
            .map_err(|e| setup(format!("{BUSYBOX} sh (install busybox-static): {e}")))?;
        if !st.success() {
            return Err(setup("busybox sh calibration loop failed"));
        }
        let after = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
            .map_err(|e| setup(format!("getrusage: {e}")))?;
        let us = |r: &nix::sys::resource::Usage| {
            let (u, s) = (r.user_time(), r.system_time());
            (u.tv_sec() + s.tv_sec()) as f64 * 1e6 + (u.tv_usec() + s.tv_usec()) as f64
        };
        per.push((us(&after) - us(&before)).max(1.0) / PROBE as f64);
    }
    per.sort_by(f64::total_cmp);
    Ok(((ms as f64 * 1e3) / per[1]).round().max(1.0) as u64)
}

/// The rootfs: busybox with relative applet links, `/www-<app>/` per app.
fn make_rootfs(root: &Path, iterations: u64) -> Result<(), ScenarioError> {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).map_err(|source| ScenarioError::Io {
            path: root.join(d).display().to_string(),
            source,
        })?;
    }
    let bb = root.join("bin/busybox");
    if std::fs::hard_link(BUSYBOX, &bb).is_err() {
        std::fs::copy(BUSYBOX, &bb).map_err(|source| ScenarioError::Io {
            path: BUSYBOX.into(),
            source,
        })?;
    }
    let out = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .map_err(|e| setup(format!("busybox --list: {e}")))?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let a = applet.trim();
        if !a.is_empty() && a != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(a));
        }
    }
    write(
        &root.join("etc/passwd"),
        "root:x:0:0:root:/:/bin/sh\n",
        0o644,
    )?;
    write(&root.join("etc/group"), "root:x:0:\n", 0o644)?;
    let head = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n";
    let burn =
        format!("{head}i=0; while [ $i -lt {iterations} ]; do i=$((i+1)); done; echo burned\n");
    for app in ["noisy", "lender", "other"] {
        write(&root.join(format!("www-{app}/cgi-bin/burn")), &burn, 0o755)?;
    }
    write(
        &root.join("www-quiet/cgi-bin/burn"),
        &format!("{head}echo quiet\n"),
        0o755,
    )?;
    Ok(())
}

fn free_port() -> Result<u16, ScenarioError> {
    super::util::free_port().map_err(|e| setup(format!("free port: {e}")))
}

/// One GET on a new connection: status and body.
fn get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let (status, body, _) = super::util::http_get(
        addr,
        host,
        path,
        Duration::from_secs(5),
        Duration::from_secs(30),
    )?;
    Ok((status, body))
}

/// The `hako serve` of these benchmarks.
struct Serve {
    proc: ServeProc,
}

impl Serve {
    fn start(spec: &GovernSpec, dir: &Path) -> Result<Serve, ScenarioError> {
        let (listen, admin) = (free_port()?, free_port()?);
        let cgroup_parent = format!("hako-bench-govern-{}", std::process::id());
        let root = dir.join("rootfs");
        let httpd = |app: &str| format!(r#"command: [/bin/httpd, -f, -p, "8080", -h, /www-{app}]"#);
        let life = "lifetime: {idle_timeout: 30m}";
        let rule = if spec.rule {
            ", spike: {cpu_above: 0.8, for: 300ms, tighten_cpu: 0.2}"
        } else {
            ""
        };
        let app = |name: &str, limits: &str, extra: &str| {
            format!(
                "  - {{name: {name}, hosts: [{name}.bench], rootfs: {r}, {h}, limits: {{{limits}, memory: 128Mi, pids: 256}}, {life}{extra}}}\n",
                r = root.display(),
                h = httpd(name)
            )
        };
        let cfg = format!(
            "listen: 127.0.0.1:{listen}\nadmin: 127.0.0.1:{admin}\nstate_dir: {d}/state\n\
cgroup_parent: {cgroup_parent}\ngovernor: {{enabled: {g}}}\napps:\n{a}{b}{c}{e}",
            d = dir.display(),
            g = spec.governor,
            a = app("noisy", &format!("cpu: {}", spec.noisy_cpu), rule),
            b = app("quiet", "cpu: 1.0", ""),
            c = app("lender", "cpu: 0.5, burst_cpu: 2.0", ""),
            e = app("other", "cpu: 1.0", ""),
        );
        let cfg_path = dir.join("hako.yaml");
        write(&cfg_path, &cfg, 0o644)?;
        let mut cmd = Command::new(&spec.hako);
        cmd.args(["--log-format", "json", "serve", "--config"])
            .arg(&cfg_path)
            .env("RUST_LOG", "info");
        let proc = ServeProc::start(
            cmd,
            &dir.join("hako.log"),
            ([127, 0, 0, 1], listen).into(),
            ([127, 0, 0, 1], admin).into(),
            cgroup_parent,
            Duration::from_secs(30),
        )
        .map_err(setup)?;
        Ok(Serve { proc })
    }

    fn log_text(&self) -> String {
        self.proc.log_text()
    }

    fn changes(&self, app: &str, since: f64) -> Vec<Change> {
        changes(&self.log_text())
            .into_iter()
            .filter(|c| c.app == app && c.at >= since)
            .collect()
    }

    /// Boots `app` (one request) and returns its instance's pid.
    fn warm(&self, app: &str) -> Result<u64, ScenarioError> {
        let host = format!("{app}.bench");
        match get(self.proc.listen, &host, "/cgi-bin/burn") {
            Ok((200, _)) => {}
            other => {
                return Err(setup(format!(
                    "GET {host}/cgi-bin/burn: {other:?}\n{}",
                    self.log_text()
                )))
            }
        }
        let (_, body) = get(self.proc.admin, "127.0.0.1", "/v1/instances")
            .map_err(|e| setup(format!("/v1/instances: {e}")))?;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v.as_array()
            .and_then(|a| {
                a.iter()
                    .find(|i| i["app"] == app)
                    .and_then(|i| i["pid"].as_u64())
            })
            .ok_or_else(|| setup(format!("no instance of {app} in /v1/instances: {body}")))
    }

    /// Waits (at most 30 s) until the last change of `app` brought it back to its policy.
    fn wait_relaxed(&self, app: &str) {
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            match self.changes(app, 0.0).last() {
                None => return,
                Some(c) if c.reason.contains("back at the policy") => return,
                Some(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        eprintln!("spike: {app} not back at its policy after 30 s");
    }
}

/// CPU usage (µs) and quota (cores, `None`: unlimited) of `pid`'s CPU cgroup, v1 or v2.
fn cgroup_cpu(pid: u64) -> Option<(u64, Option<f64>)> {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for l in cg.lines() {
        let mut f = l.splitn(3, ':');
        let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
        if ctrl.split(',').any(|c| c == "cpuacct") {
            let dir = format!("/sys/fs/cgroup/{ctrl}{path}");
            let ns: u64 = std::fs::read_to_string(format!("{dir}/cpuacct.usage"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let rd = |f: &str| -> Option<f64> {
                std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{path}/{f}"))
                    .or_else(|_| std::fs::read_to_string(format!("{dir}/{f}")))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            };
            let quota = match (rd("cpu.cfs_quota_us"), rd("cpu.cfs_period_us")) {
                (Some(q), Some(p)) if q > 0.0 && p > 0.0 => Some(q / p),
                _ => None,
            };
            return Some((ns / 1000, quota));
        }
        if ctrl.is_empty() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let dir = format!("/sys/fs/cgroup{path}");
            let stat = std::fs::read_to_string(format!("{dir}/cpu.stat")).ok()?;
            let us = stat
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())?;
            let max = std::fs::read_to_string(format!("{dir}/cpu.max")).ok()?;
            let mut it = max.split_whitespace();
            let quota = match (it.next(), it.next().and_then(|p| p.parse::<f64>().ok())) {
                (Some(q), Some(p)) => q.parse::<f64>().ok().map(|q| q / p),
                _ => None,
            };
            return Some((us, quota));
        }
    }
    None
}

/// p-th percentile (nearest rank) of `v`, in the unit of `v`.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Closed-loop burn load on `app` for `d`.
fn burn_load(url: &str, target: &Target, app: &str, c: usize, d: Duration) -> LoadSpec {
    let mut l = LoadSpec::new(url, target.clone());
    l.request = RequestSpec {
        host: Some(format!("{app}.bench")),
        ..RequestSpec::default()
    };
    l.connections = c;
    l.stop = Stop::Duration(d);
    l.timeout = Duration::from_secs(30);
    l
}

/// Runs the benchmarks and prints every figure as it is measured, then a summary.
pub async fn run_govern(spec: &GovernSpec) -> Result<(), ScenarioError> {
    let dir = tempfile::Builder::new()
        .prefix("hako-bench-govern-")
        .tempdir()
        .map_err(|e| setup(format!("tempdir: {e}")))?;
    let iterations = calibrate(spec.burn_ms)?;
    make_rootfs(&dir.path().join("rootfs"), iterations)?;
    println!(
        "spike (self-configured): governor {}, noisy limits.cpu {}, {} rule; burn CGI {} iterations (~{} ms CPU); load average {}",
        if spec.governor { "on" } else { "off" },
        spec.noisy_cpu,
        if spec.rule { "spike" } else { "no spike" },
        iterations,
        spec.burn_ms,
        loadavg()
    );
    let serve = Serve::start(spec, dir.path())?;
    let url = format!("http://{}/cgi-bin/burn", serve.proc.listen);
    let target = Target::resolve(&url).await?;
    serve.warm("noisy")?;
    serve.warm("quiet")?;

    let mut ratios = Vec::new();
    for run in 1..=spec.runs {
        serve.wait_relaxed("noisy");
        let t_run = wall();
        let r = spike(&SpikeSpec {
            url: url.clone(),
            quiet_host: "quiet.bench".into(),
            quiet_rate: spec.rate,
            noisy_host: "noisy.bench".into(),
            noisy_rate: None,
            noisy_connections: spec.connections,
            phases: spec.phases,
            request: RequestSpec::default(),
            timeout: Duration::from_secs(30),
            scrape: None,
        })
        .await?;
        let burst_at = t_run + spec.phases[0].as_secs_f64();
        let ch = serve.changes("noisy", t_run);
        let first = ch.first().map_or("none".to_string(), |c| {
            format!("{:.0} ms", (c.at - burst_at) * 1e3)
        });
        let min_cpu = ch.iter().map(|c| c.cpu.1).fold(spec.noisy_cpu, f64::min);
        let min_w = ch.iter().map(|c| c.weight.1).min();
        println!(
            "  run {run}: quiet p99 calm {:.2} ms, burst {:.2} ms, after {:.2} ms: burst/calm {:.2}x; noisy {:.1} req/s; quiet {} errors; noisy changes {} (first {first} after the burst's start, lowest quota {min_cpu:.2}, lowest weight {}); load average {}",
            r.quiet_p99_calm_ms,
            r.quiet_p99_burst_ms,
            r.quiet_p99_after_ms,
            r.ratio,
            r.noisy.rps,
            r.quiet.errors,
            ch.len(),
            min_w.map_or("-".into(), |w| w.to_string()),
            loadavg()
        );
        ratios.push(r.ratio);
    }

    let mut detect = Vec::new();
    let mut missed = 0;
    if spec.bursts > 0 && spec.governor {
        for i in 1..=spec.bursts {
            serve.wait_relaxed("noisy");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let t0 = wall();
            run_load_detailed(burn_load(
                &url,
                &target,
                "noisy",
                spec.connections,
                spec.burst_len,
            ))
            .await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            match serve.changes("noisy", t0).first() {
                Some(c) => {
                    let ms = (c.at - t0) * 1e3;
                    println!(
                        "  burst {i}: first write after {ms:.0} ms ({}; {})",
                        c.direction, c.reason
                    );
                    detect.push(ms);
                }
                None => {
                    missed += 1;
                    println!("  burst {i}: no change within {:?}", spec.burst_len);
                }
            }
        }
    }

    let mut reach = Vec::new();
    let mut back = Vec::new();
    if spec.lend_rounds > 0 {
        let pid = serve.warm("lender")?;
        serve.warm("other")?;
        for round in 1..=spec.lend_rounds {
            serve.wait_relaxed("lender");
            serve.wait_relaxed("other");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let total = spec.lend_for + Duration::from_secs(2);
            let t0 = wall();
            let lend = tokio::spawn(run_load_detailed(burn_load(
                &url,
                &target,
                "lender",
                spec.lend_connections,
                total,
            )));
            // Samples of lender's cgroup every 100 ms until other starts.
            let mut samples: Vec<(f64, u64, Option<f64>)> = Vec::new();
            let start = Instant::now();
            while start.elapsed() < spec.lend_for {
                if let Some((us, q)) = cgroup_cpu(pid) {
                    samples.push((wall(), us, q));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let t1 = wall();
            let oth = run_load_detailed(burn_load(
                &url,
                &target,
                "other",
                spec.lend_connections,
                Duration::from_secs(2),
            ))
            .await;
            let _ = lend.await;
            oth?;
            // First 200 ms window at >= 1.6 cores.
            let mut reached = None;
            let mut peak: f64 = 0.0;
            for w in samples.windows(3) {
                let (a, b) = (&w[0], &w[2]);
                let cores = (b.1.saturating_sub(a.1)) as f64 / 1e6 / (b.0 - a.0);
                peak = peak.max(cores);
                if reached.is_none() && cores >= 1.6 {
                    reached = Some((b.0 - t0) * 1e3);
                }
            }
            let max_quota = samples.iter().filter_map(|s| s.2).fold(0.0, f64::max);
            let taken = serve
                .changes("lender", t1)
                .into_iter()
                .find(|c| c.cpu.1 < c.cpu.0);
            let lent_before = serve
                .changes("lender", t0)
                .into_iter()
                .rev()
                .find(|c| c.at < t1)
                .map_or(0.5, |c| c.cpu.1);
            println!(
                "  lend round {round}: >= 1.6 cores {}; peak {peak:.2} cores (200 ms windows), highest quota {max_quota:.2}; quota when other started {lent_before:.2}; taken back {}; load average {}",
                reached.map_or("never".to_string(), |ms| format!("after {ms:.0} ms")),
                taken.as_ref().map_or("never".to_string(), |c| format!(
                    "{:.0} ms after other's start ({:.2} -> {:.2})",
                    (c.at - t1) * 1e3,
                    c.cpu.0,
                    c.cpu.1
                )),
                loadavg()
            );
            if let Some(ms) = reached {
                reach.push(ms);
            }
            if let Some(c) = taken {
                back.push((c.at - t1) * 1e3);
            }
        }
    }

    println!(
        "summary (governor {}):",
        if spec.governor { "on" } else { "off" }
    );
    if !ratios.is_empty() {
        println!(
            "  protection: quiet burst/calm p99 {} over {} runs",
            ratios
                .iter()
                .map(|r| format!("{r:.2}x"))
                .collect::<Vec<_>>()
                .join(", "),
            ratios.len()
        );
    }
    if spec.bursts > 0 && spec.governor {
        println!(
            "  detection: burst start -> first cgroup write p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {} bursts ({missed} without a change)",
            percentile(&detect, 50.0),
            percentile(&detect, 99.0),
            percentile(&detect, 100.0),
            detect.len()
        );
    }
    if spec.lend_rounds > 0 {
        println!(
            "  scale-up: reached 1.6 cores in {}/{} rounds, p50 {:.0} ms, max {:.0} ms; take-back p50 {:.0} ms, max {:.0} ms ({} of {})",
            reach.len(),
            spec.lend_rounds,
            percentile(&reach, 50.0),
            percentile(&reach, 100.0),
            percentile(&back, 50.0),
            percentile(&back, 100.0),
            back.len(),
            spec.lend_rounds
        );
    }
    println!("  load average at the end {}", loadavg());
    drop(serve);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_timestamps() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0.0));
        let t = parse_utc("2024-02-29T12:34:56.250000Z").unwrap();
        assert!((t - 1_709_210_096.25).abs() < 1e-6, "{t}");
        assert_eq!(parse_utc("2024-02-29 12:34:56Z"), None);
    }

    #[test]
    fn change_lines() {
        let log = r#"{"timestamp":"2024-02-29T12:34:56.5Z","level":"INFO","message":"limits changed","app":"noisy","instance":3,"direction":"tighten","cpu_before":2.0,"cpu_after":2.0,"weight_before":100,"weight_after":1,"reason":"host cpu stall"}
{"timestamp":"2024-02-29T12:34:57Z","level":"INFO","message":"instance ready","app":"quiet"}"#;
        let c = changes(log);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].app, "noisy");
        assert_eq!(c[0].weight, (100, 1));
        assert!((c[0].at - 1_709_210_096.5).abs() < 1e-6);
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 10.0);
        assert_eq!(percentile(&v, 99.0), 20.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
