//! `front`: hako's proxy beside nginx as the front of the same keep-alive backend, side by
//! side in one run.
//!
//! The backend is nginx `return 200` running as a hako app (`rootfs: host`, `network: host`,
//! one process, listening on the `PORT` hako assigns). The fronts: nginx with N workers for
//! each N of `workers` (`proxy_pass` to an `upstream { keepalive 64; }` with
//! `proxy_http_version 1.1` and `Connection ""`), and hako itself. Every front serves plain
//! HTTP and TLS with the same certificate (ECDSA P-256, made with `openssl`) and the same
//! TLS 1.3 suite (the clients offer only `TLS_AES_128_GCM_SHA256`).
//!
//! Per round and front: `wrk` over plain HTTP/1.1, `h2load` over TLS with h2 and with
//! `--h1`, and the rate of new TLS handshakes (`h2load -c N -n N`: one request per new
//! connection). The CPU time of each front's processes (utime + stime from `/proc`) is read
//! around every load and divided by the requests answered. Then the cold path: the first
//! response of a cold busybox app over a new TLS connection and over plain HTTP (curl's
//! `time_total`), alternating, each app booted once.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::launcher::percentile;

mod parse;
mod procs;

use parse::log_percentiles;
pub use parse::{parse_h2load, parse_wrk, wrk_ms};
use procs::*;

/// Errors of the front comparison.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    /// A command could not be started.
    #[error("cannot run {cmd}: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A command failed or printed what was not expected.
    #[error("{cmd}: {reason}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Why (its output).
        reason: String,
    },
    /// A file of the run could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Something the run waits for did not happen.
    #[error("{0}")]
    Setup(String),
}

/// What `front` runs.
#[derive(Debug, Clone)]
pub struct FrontSpec {
    /// The hako binary.
    pub hako: PathBuf,
    /// The nginx binary (fronts and backend).
    pub nginx: PathBuf,
    /// Rounds; every front takes every load once per round, in turn.
    pub rounds: usize,
    /// Seconds of each wrk / h2load run.
    pub seconds: u64,
    /// Connections of wrk and h2load.
    pub connections: usize,
    /// Concurrent streams per h2 connection (h2load -m).
    pub streams: usize,
    /// New connections per handshake measurement (h2load -c N -n N).
    pub handshakes: usize,
    /// Cold starts per protocol.
    pub cold: usize,
    /// nginx worker counts to compare.
    pub workers: Vec<usize>,
    /// Which loads run.
    pub loads: Loads,
}

/// The loads of a round; `--loads` chooses them, every one by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loads {
    /// Plain HTTP/1.1 (wrk).
    pub plain: bool,
    /// TLS h2 and h1 (h2load).
    pub tls: bool,
    /// New TLS connections (h2load -c N -n N).
    pub handshakes: bool,
}

impl Loads {
    /// Every load.
    pub const ALL: Loads = Loads {
        plain: true,
        tls: true,
        handshakes: true,
    };

    /// Parses names such as `plain`, `tls`, `handshakes` (one per item).
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Loads, String> {
        let mut l = Loads {
            plain: false,
            tls: false,
            handshakes: false,
        };
        for n in names {
            match n.trim() {
                "plain" => l.plain = true,
                "tls" => l.tls = true,
                "handshakes" => l.handshakes = true,
                other => {
                    return Err(format!(
                        "unknown load '{other}' (expected plain, tls, handshakes)"
                    ))
                }
            }
        }
        if l == (Loads {
            plain: false,
            tls: false,
            handshakes: false,
        }) {
            return Err("no load chosen".into());
        }
        Ok(l)
    }
}

/// One measurement.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Round (1-based).
    pub round: usize,
    /// `nginx-1w`, `nginx-2w`, `hako`.
    pub front: String,
    /// `http1 (wrk)`, `tls h2`, `tls h1`, `tls handshakes`.
    pub load: &'static str,
    /// Responses (or new connections) per second.
    pub rate: f64,
    /// Median latency, ms (none for handshakes).
    pub p50_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// CPU of the front per request, µs.
    pub cpu_us_per_req: f64,
    /// The negotiated protocol / cipher as the client printed it.
    pub note: String,
}

struct Front {
    name: String,
    pid: u32,
    /// A child of `pid` whose CPU is not the front's (hako's backend app).
    exclude: Option<u32>,
    plain: u16,
    tls: u16,
}

const HOST: &str = "front.test";
/// The one TLS 1.3 suite both clients offer (so every front negotiates it).
const SUITE: &str = "TLS_AES_128_GCM_SHA256";

fn measure(
    front: &Front,
    round: usize,
    spec: &FrontSpec,
    dir: &Path,
    print: &mut dyn FnMut(&str),
) -> Result<Vec<Sample>, FrontError> {
    let tick = ticks_per_second();
    let cpu_per = |t0: u64, t1: u64, n: u64| (t1 - t0) as f64 / tick * 1e6 / n.max(1) as f64;
    let mut out = Vec::new();
    let d = spec.seconds.to_string();
    let c = spec.connections.to_string();

    // Plain HTTP/1.1, wrk.
    if spec.loads.plain {
        let t0 = tree_cpu_ticks(front.pid, front.exclude);
        let text = run_ok(
            Command::new("wrk")
                .args(["-t1", "-c", &c, "-d", &format!("{d}s"), "--latency", "-H"])
                .arg(format!("Host: {HOST}"))
                .arg(format!("http://127.0.0.1:{}/", front.plain)),
        )?;
        let t1 = tree_cpu_ticks(front.pid, front.exclude);
        let (rps, p50, p99, n) = parse_wrk(&text).ok_or_else(|| FrontError::Failed {
            cmd: "wrk".into(),
            reason: text.clone(),
        })?;
        if text.contains("Non-2xx") || text.contains("Socket errors") {
            print(&format!(
                "  wrk reported errors for {}:\n{text}",
                front.name
            ));
        }
        out.push(Sample {
            round,
            front: front.name.clone(),
            load: "http1 (wrk)",
            rate: rps,
            p50_ms: Some(p50),
            p99_ms: Some(p99),
            cpu_us_per_req: cpu_per(t0, t1, n),
            note: String::new(),
        });
    }

    let url = format!("https://127.0.0.1:{}/", front.tls);
    let authority = format!(":authority: {HOST}");
    let tls_loads: &[(&str, bool)] = if spec.loads.tls {
        &[("tls h2", false), ("tls h1", true)]
    } else {
        &[]
    };
    for &(load, h1) in tls_loads {
        let log = dir.join("h2load.log");
        let _ = std::fs::remove_file(&log);
        let mut cmd = Command::new("h2load");
        cmd.args(["-t1", "-c", &c, "-D", &d, "--tls13-ciphers", SUITE, "-H"])
            .arg(&authority)
            .arg(format!("--log-file={}", log.display()));
        if h1 {
            cmd.args(["--h1", "-m1"]);
        } else {
            cmd.args(["-m", &spec.streams.to_string()]);
        }
        cmd.arg(&url);
        let t0 = tree_cpu_ticks(front.pid, front.exclude);
        let text = run_ok(&mut cmd)?;
        let t1 = tree_cpu_ticks(front.pid, front.exclude);
        let (_, rps, ok, note) = parse_h2load(&text).ok_or_else(|| FrontError::Failed {
            cmd: "h2load".into(),
            reason: text.clone(),
        })?;
        let (p50, p99) = log_percentiles(&log).unzip();
        out.push(Sample {
            round,
            front: front.name.clone(),
            load,
            rate: rps,
            p50_ms: p50,
            p99_ms: p99,
            cpu_us_per_req: cpu_per(t0, t1, ok),
            note,
        });
    }

    // New TLS connections, one request each.
    if spec.loads.handshakes {
        let n = spec.handshakes.to_string();
        let t0 = tree_cpu_ticks(front.pid, front.exclude);
        let text = run_ok(
            Command::new("h2load")
                .args(["-t1", "-c", &n, "-n", &n, "--tls13-ciphers", SUITE, "-H"])
                .arg(&authority)
                .arg(&url),
        )?;
        let t1 = tree_cpu_ticks(front.pid, front.exclude);
        let (secs, _, ok, note) = parse_h2load(&text).ok_or_else(|| FrontError::Failed {
            cmd: "h2load".into(),
            reason: text.clone(),
        })?;
        out.push(Sample {
            round,
            front: front.name.clone(),
            load: "tls handshakes",
            rate: ok as f64 / secs.max(1e-9),
            p50_ms: None,
            p99_ms: None,
            cpu_us_per_req: cpu_per(t0, t1, ok),
            note,
        });
    }
    for s in &out {
        print(&sample_line(s));
    }
    Ok(out)
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}

fn sample_line(s: &Sample) -> String {
    format!(
        "round {} {:<9} {:<15} {:>10.0}/s  p50 {:>6} ms  p99 {:>6} ms  cpu {:>6.1} us/req  {}",
        s.round,
        s.front,
        s.load,
        s.rate,
        ms(s.p50_ms),
        ms(s.p99_ms),
        s.cpu_us_per_req,
        s.note
    )
}

/// Cold path: curl's time_total (ms) for `n` apps over TLS and `n` over plain HTTP.
fn cold_path(
    spec: &FrontSpec,
    plain: u16,
    tls: u16,
    dir: &Path,
) -> Result<(Vec<f64>, Vec<f64>), FrontError> {
    let (mut t, mut p) = (Vec::new(), Vec::new());
    for i in 0..spec.cold {
        for over_tls in [true, false] {
            let host = if over_tls {
                format!("t{i}.cold.test")
            } else {
                format!("p{i}.cold.test")
            };
            let port = if over_tls { tls } else { plain };
            let scheme = if over_tls { "https" } else { "http" };
            let text = run_ok(
                Command::new("curl")
                    .args(["-sS", "-o", "/dev/null", "--max-time", "30", "--cacert"])
                    .arg(dir.join("cert.pem"))
                    .arg("--resolve")
                    .arg(format!("{host}:{port}:127.0.0.1"))
                    .args(["-w", "%{http_code} %{time_total}"])
                    .arg(format!("{scheme}://{host}:{port}/")),
            )?;
            let mut f = text.split_whitespace();
            let (code, total) = (f.next(), f.next().and_then(|v| v.parse::<f64>().ok()));
            match (code, total) {
                (Some("200"), Some(s)) => {
                    if over_tls {
                        t.push(s * 1000.0)
                    } else {
                        p.push(s * 1000.0)
                    }
                }
                _ => {
                    return Err(FrontError::Failed {
                        cmd: format!("curl {scheme}://{host}"),
                        reason: text,
                    })
                }
            }
        }
    }
    Ok((t, p))
}

/// Runs the comparison; `print` gets every line as it is measured, then the summary.
pub fn run_front(spec: &FrontSpec, print: &mut dyn FnMut(&str)) -> Result<(), FrontError> {
    let tmp = tempfile::Builder::new()
        .prefix("hako-bench-front-")
        .tempdir()
        .map_err(|e| FrontError::Setup(format!("tempdir: {e}")))?;
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| FrontError::Setup(format!("chmod: {e}")))?;
    run_ok(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=front.test", "-addext"])
            .arg("subjectAltName=DNS:front.test,DNS:*.cold.test")
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem")),
    )?;
    std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o600))
        .map_err(|e| FrontError::Setup(format!("chmod key: {e}")))?;
    busybox_rootfs(&dir.join("rootfs"))?;

    let (plain, tls, admin) = (free_port()?, free_port()?, free_port()?);
    let cgroup_parent = format!("hako-bench-front-{}", std::process::id());
    let mut cfg = format!(
        "listen: 127.0.0.1:{plain}\nadmin: 127.0.0.1:{admin}\nstate_dir: {d}/state\n\
cgroup_parent: {cgroup_parent}\ngovernor: {{enabled: false}}\n\
tls:\n  listen: 127.0.0.1:{tls}\n  certificates:\n    - hosts: ['*']\n      cert: {d}/cert.pem\n      key: {d}/key.pem\n\
apps:\n  - name: be\n    hosts: [{HOST}]\n    rootfs: host\n    network: host\n    command: {cmd}\n    lifetime: {{idle_timeout: 1h}}\n",
        d = dir.display(),
        cmd = serde_json::to_string(&["/bin/sh", "-c", &backend_script(&spec.nginx)])
            .unwrap_or_default(),
    );
    for i in 0..spec.cold {
        for p in ["t", "p"] {
            let _ = writeln!(
                cfg,
                "  - name: {p}{i}\n    hosts: [{p}{i}.cold.test]\n    rootfs: {}/rootfs\n    command: [/bin/httpd, -f, -p, '8080', -h, /www]\n    lifetime: {{idle_timeout: 1h}}",
                dir.display()
            );
        }
    }
    let cfg_path = dir.join("hako.yaml");
    write(&cfg_path, &cfg)?;
    let mut hako = spawn(
        "hako",
        Command::new(&spec.hako)
            .arg("serve")
            .arg("--config")
            .arg(&cfg_path)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("info".into()),
            ),
        &dir.join("hako.log"),
    )?;
    let admin_addr: SocketAddr = ([127, 0, 0, 1], admin).into();
    let plain_addr: SocketAddr = ([127, 0, 0, 1], plain).into();
    let log = || std::fs::read_to_string(dir.join("hako.log")).unwrap_or_default();
    wait_for("hako /healthz", 20, || {
        http_get(admin_addr, "127.0.0.1", "/healthz")
            .ok()
            .filter(|r| r.0 == 200)
    })
    .map_err(|e| FrontError::Setup(format!("{e}\n{}", log())))?;
    let (status, body) = http_get(plain_addr, HOST, "/")
        .map_err(|e| FrontError::Setup(format!("first request to the backend: {e}\n{}", log())))?;
    if status != 200 {
        return Err(FrontError::Setup(format!(
            "the backend answered {status}: {body}\n{}",
            log()
        )));
    }
    let (_, instances) = http_get(admin_addr, "127.0.0.1", "/v1/instances")
        .map_err(|e| FrontError::Setup(format!("/v1/instances: {e}")))?;
    let be_pid = serde_json::from_str::<serde_json::Value>(&instances)
        .ok()
        .and_then(|v| {
            v.as_array()?
                .iter()
                .find(|i| i["app"] == "be")?
                .get("pid")?
                .as_u64()
        })
        .ok_or_else(|| FrontError::Setup(format!("no pid of app be in {instances}")))?;
    let backend = listening_port(be_pid as u32)
        .ok_or_else(|| FrontError::Setup(format!("no listening port of pid {be_pid}")))?;
    print(&format!(
        "front: backend nginx (pid {be_pid}) on 127.0.0.1:{backend}; wrk -t1 -c{c} -d{s}s; h2load -t1 -c{c} -D {s} (h2 -m{m}, --h1 -m1) {SUITE}; handshakes h2load -c{h} -n{h}",
        c = spec.connections,
        s = spec.seconds,
        m = spec.streams,
        h = spec.handshakes
    ));

    let mut fronts = Vec::new();
    let mut nginx_guards = Vec::new();
    for &w in &spec.workers {
        let (p, t) = (free_port()?, free_port()?);
        let conf = dir.join(format!("front-{w}.conf"));
        write(&conf, &front_conf(dir, w, p, t, backend))?;
        let g = spawn(
            "nginx",
            Command::new(&spec.nginx)
                .arg("-e")
                .arg(dir.join(format!("nginx-{w}.err")))
                .arg("-c")
                .arg(&conf),
            &dir.join(format!("nginx-{w}.log")),
        )?;
        let addr: SocketAddr = ([127, 0, 0, 1], p).into();
        wait_for("nginx front", 10, || {
            http_get(addr, HOST, "/").ok().filter(|r| r.0 == 200)
        })?;
        fronts.push(Front {
            name: format!("nginx-{w}w"),
            pid: g.pid(),
            exclude: None,
            plain: p,
            tls: t,
        });
        nginx_guards.push(g);
    }
    fronts.push(Front {
        name: "hako".into(),
        pid: hako.pid(),
        exclude: Some(be_pid as u32),
        plain,
        tls,
    });

    let mut samples = Vec::new();
    for round in 1..=spec.rounds {
        // The order of the fronts alternates between rounds, so that neither always runs
        // first (after a pause) or last.
        let order: Vec<&Front> = if round % 2 == 1 {
            fronts.iter().collect()
        } else {
            fronts.iter().rev().collect()
        };
        for f in order {
            samples.extend(measure(f, round, spec, dir, print)?);
        }
    }
    let (cold_tls, cold_plain) = cold_path(spec, plain, tls, dir)?;
    for mut g in nginx_guards {
        g.stop();
    }
    hako.stop();
    remove_cgroup_parent(&cgroup_parent);
    print(&summary(spec, &samples, cold_tls, cold_plain));
    Ok(())
}

fn remove_cgroup_parent(name: &str) {
    if let Ok(dir) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in dir.flatten() {
            let _ = std::fs::remove_dir(e.path().join(name));
        }
    }
    let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(name));
}

fn summary(spec: &FrontSpec, samples: &[Sample], mut tls: Vec<f64>, mut plain: Vec<f64>) -> String {
    let mut s = String::from("\nsummary (every round, in order; med = median of the rounds):\n");
    let mut fronts: Vec<&str> = Vec::new();
    for x in samples {
        if !fronts.contains(&x.front.as_str()) {
            fronts.push(&x.front);
        }
    }
    for load in ["http1 (wrk)", "tls h2", "tls h1", "tls handshakes"] {
        if !samples.iter().any(|x| x.load == load) {
            continue;
        }
        let _ = writeln!(s, "{load}:");
        for f in &fronts {
            let rows: Vec<&Sample> = samples
                .iter()
                .filter(|x| x.load == load && x.front == *f)
                .collect();
            let join = |g: &dyn Fn(&Sample) -> String| listed(rows.iter().map(|r| g(r)));
            let rates: Vec<f64> = rows.iter().map(|r| r.rate).collect();
            let p99s: Vec<f64> = rows.iter().filter_map(|r| r.p99_ms).collect();
            let _ = writeln!(
                s,
                "  {f:<9} rate/s [{}] med {:.0}  p50 ms [{}]  p99 ms [{}] med {}  cpu us/req [{}]",
                join(&|r| format!("{:.0}", r.rate)),
                median(&rates).unwrap_or(0.0),
                join(&|r| ms(r.p50_ms)),
                join(&|r| ms(r.p99_ms)),
                ms(median(&p99s)),
                join(&|r| format!("{:.1}", r.cpu_us_per_req)),
            );
        }
        // hako against each nginx front, round by round (the two ran one after the other).
        for f in fronts.iter().filter(|f| **f != "hako") {
            let pairs = paired(samples, load, f);
            if pairs.is_empty() {
                continue;
            }
            let ratios: Vec<f64> = pairs.iter().map(|(h, n)| 100.0 * h.rate / n.rate).collect();
            let diffs: Vec<f64> = pairs
                .iter()
                .filter_map(|(h, n)| Some(h.p99_ms? - n.p99_ms?))
                .collect();
            let _ = write!(
                s,
                "  hako/{f:<9} rate % [{}] med {:.0}",
                listed(ratios.iter().map(|r| format!("{r:.0}"))),
                median(&ratios).unwrap_or(0.0),
            );
            if let Some(m) = median(&diffs) {
                let _ = write!(
                    s,
                    "  p99 hako - {f} ms [{}] med {m:+.2}",
                    listed(diffs.iter().map(|d| format!("{d:+.2}"))),
                );
            }
            s.push('\n');
        }
    }
    tls.sort_by(f64::total_cmp);
    plain.sort_by(f64::total_cmp);
    if tls.is_empty() && plain.is_empty() {
        let _ = writeln!(s, "cold path: not measured (--cold 0)");
        return s;
    }
    let _ = writeln!(
        s,
        "cold path, first response of a cold busybox app on a new connection (curl time_total, {} apps each; with fewer than 100 samples p99 is the maximum):\n  tls:   p50 {:.1} ms  p99 {:.1} ms\n  plain: p50 {:.1} ms  p99 {:.1} ms",
        spec.cold,
        percentile(&tls, 0.5),
        percentile(&tls, 0.99),
        percentile(&plain, 0.5),
        percentile(&plain, 0.99),
    );
    s
}

/// The items, comma-separated.
fn listed(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// hako's and `front`'s samples of `load`, paired by round.
fn paired<'a>(samples: &'a [Sample], load: &str, front: &str) -> Vec<(&'a Sample, &'a Sample)> {
    let of = |name: &str, round: usize| {
        samples
            .iter()
            .find(|x| x.load == load && x.front == name && x.round == round)
    };
    samples
        .iter()
        .filter(|x| x.load == load && x.front == "hako")
        .filter_map(|h| Some((h, of(front, h.round)?)))
        .collect()
}

/// The median (the mean of the middle two for an even count); none for no values.
fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(round: usize, front: &str, rate: f64, p99: f64) -> Sample {
        Sample {
            round,
            front: front.into(),
            load: "http1 (wrk)",
            rate,
            p50_ms: Some(0.5),
            p99_ms: Some(p99),
            cpu_us_per_req: 16.0,
            note: String::new(),
        }
    }

    #[test]
    fn summary_pairs_rounds_and_gives_medians() {
        let spec = FrontSpec {
            hako: "hako".into(),
            nginx: "nginx".into(),
            rounds: 3,
            seconds: 1,
            connections: 1,
            streams: 1,
            handshakes: 1,
            cold: 0,
            workers: vec![2],
            loads: Loads::parse(["plain"]).unwrap(),
        };
        // Round 2 ran hako first: pairing goes by round, not by position.
        let samples = vec![
            sample(1, "nginx-2w", 40000.0, 2.0),
            sample(1, "hako", 50000.0, 2.5),
            sample(2, "hako", 44000.0, 1.5),
            sample(2, "nginx-2w", 40000.0, 2.0),
            sample(3, "nginx-2w", 50000.0, 1.0),
            sample(3, "hako", 50000.0, 1.2),
        ];
        let text = summary(&spec, &samples, Vec::new(), Vec::new());
        assert!(
            text.contains("p99 ms [2.50, 1.50, 1.20] med 1.50"),
            "{text}"
        );
        assert!(text.contains("rate % [125, 110, 100] med 110"), "{text}");
        assert!(
            text.contains("p99 hako - nginx-2w ms [+0.50, -0.50, +0.20] med +0.20"),
            "{text}"
        );
        assert!(!text.contains("tls h2"), "{text}");
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn loads_are_parsed() {
        assert_eq!(Loads::parse(["plain", "tls", "handshakes"]), Ok(Loads::ALL));
        let only = Loads::parse(["tls"]).unwrap();
        assert!(only.tls && !only.plain && !only.handshakes);
        assert!(Loads::parse(["quic"]).unwrap_err().contains("quic"));
        assert!(Loads::parse([]).is_err());
    }

    #[test]
    fn wrk_output_is_parsed() {
        let text = "Running 6s test @ http://127.0.0.1:1/\n  1 threads and 32 connections\n  Latency Distribution\n     50%  712.00us\n     75%    1.00ms\n     90%    1.20ms\n     99%    3.61ms\n  280123 requests in 6.00s, 40.00MB read\nRequests/sec:  46687.17\nTransfer/sec:      6.67MB\n";
        let (rps, p50, p99, n) = parse_wrk(text).unwrap();
        assert_eq!(rps, 46687.17);
        assert!((p50 - 0.712).abs() < 1e-9);
        assert!((p99 - 3.61).abs() < 1e-9);
        assert_eq!(n, 280123);
        assert_eq!(wrk_ms("2.00s"), Some(2000.0));
    }

    #[test]
    fn h2load_output_is_parsed() {
        let text = "TLS Protocol: TLSv1.3\nCipher: TLS_AES_128_GCM_SHA256\nServer Temp Key: X25519 253 bits\nApplication protocol: h2\n\nfinished in 6.00s, 51234.50 req/s, 1.60MB/s\nrequests: 307407 total, 307727 started, 307407 done, 307400 succeeded, 7 failed, 7 errored, 0 timeout\n";
        let (secs, rps, ok, note) = parse_h2load(text).unwrap();
        assert_eq!(secs, 6.0);
        let short = text.replace("6.00s", "347.66ms");
        assert!((parse_h2load(&short).unwrap().0 - 0.34766).abs() < 1e-9);
        assert_eq!(rps, 51234.5);
        assert_eq!(ok, 307400);
        assert!(
            note.contains("TLS_AES_128_GCM_SHA256") && note.contains("h2"),
            "{note}"
        );
    }
}
