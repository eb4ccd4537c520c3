//! Scenarios that know hako: cold starts, bursts, noisy neighbours, density, launcher.

pub mod front;
pub mod govern;
pub mod launcher;
pub mod util;
pub mod wake;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::engine::{
    connect, exchange, one_shot, run_load_detailed, EngineError, LoadSpec, RequestSpec, Stop,
    Target, Template,
};
use crate::prom::{self, MetricDelta, PromError, Sample};
use crate::report::{micros, new_histogram, record_us, ErrorCounts, ErrorKind, Latency, Report};

/// Errors of the scenarios.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Bad target or request.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Metrics scrape failed.
    #[error(transparent)]
    Prom(#[from] PromError),
    /// Bad arguments.
    #[error("{0}")]
    Args(String),
    /// Reading a file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Host names from `--hosts a,b,c` or `--host-pattern 'app{i}.local' -n N` (i in 0..N).
pub fn expand_hosts(
    hosts: Option<&str>,
    pattern: Option<&str>,
    n: Option<usize>,
) -> Result<Vec<String>, ScenarioError> {
    match (hosts, pattern) {
        (Some(h), None) => {
            let v: Vec<String> = h
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            if v.is_empty() {
                return Err(ScenarioError::Args("--hosts is empty".into()));
            }
            Ok(v)
        }
        (None, Some(p)) => {
            if !p.contains("{i}") {
                return Err(ScenarioError::Args(format!(
                    "--host-pattern {p:?} must contain {{i}}"
                )));
            }
            let n = n.ok_or_else(|| ScenarioError::Args("--host-pattern needs -n N".into()))?;
            Ok((0..n).map(|i| p.replace("{i}", &i.to_string())).collect())
        }
        _ => Err(ScenarioError::Args(
            "give exactly one of --hosts or --host-pattern".into(),
        )),
    }
}

/// Outcome of one request on a fresh connection.
#[derive(Debug, Clone, Serialize)]
pub struct Shot {
    /// Host header used.
    pub host: String,
    /// Milliseconds from connect to the end of the response body.
    pub ms: f64,
    /// Response status, if any.
    pub status: Option<u16>,
    /// Error kind, if failed without a response.
    pub error: Option<String>,
}

/// Distribution of a set of shots.
#[derive(Debug, Clone, Serialize)]
pub struct ShotSummary {
    /// Requests.
    pub requests: usize,
    /// 2xx/3xx responses.
    pub successes: usize,
    /// Errors of all kinds (4xx/5xx included).
    pub errors: u64,
    /// Errors by kind.
    pub errors_by_kind: ErrorCounts,
    /// Responses by status.
    pub status_counts: BTreeMap<String, u64>,
    /// Latency of the responses (ms).
    pub latency_ms: Latency,
}

fn kind_name(k: ErrorKind) -> &'static str {
    match k {
        ErrorKind::Connect => "connect",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Status4xx => "4xx",
        ErrorKind::Status5xx => "5xx",
        ErrorKind::Io => "io",
    }
}

fn shot(host: &str, elapsed: Duration, res: Result<u16, ErrorKind>) -> Shot {
    Shot {
        host: host.to_string(),
        ms: micros(elapsed) as f64 / 1000.0,
        status: res.ok(),
        error: res.err().map(|k| kind_name(k).to_string()),
    }
}

/// Summarizes shots (latency over responses of any status).
pub fn summarize(shots: &[Shot]) -> ShotSummary {
    let mut h = new_histogram();
    let mut e = ErrorCounts::default();
    let mut status = BTreeMap::new();
    let mut ok = 0;
    for s in shots {
        match (s.status, s.error.as_deref()) {
            (Some(code), _) => {
                record_us(&mut h, (s.ms * 1000.0).round().max(1.0) as u64);
                *status.entry(code.to_string()).or_insert(0) += 1;
                match code {
                    400..=499 => e.add(ErrorKind::Status4xx),
                    500..=599 => e.add(ErrorKind::Status5xx),
                    _ => ok += 1,
                }
            }
            (None, Some("connect")) => e.add(ErrorKind::Connect),
            (None, Some("timeout")) => e.add(ErrorKind::Timeout),
            _ => e.add(ErrorKind::Io),
        }
    }
    ShotSummary {
        requests: shots.len(),
        successes: ok,
        errors: e.total(),
        errors_by_kind: e,
        status_counts: status,
        latency_ms: Latency::from_histogram(&h),
    }
}

/// Scrapes `url` if given.
pub async fn maybe_scrape(url: Option<&str>) -> Result<Option<Vec<Sample>>, ScenarioError> {
    match url {
        Some(u) => Ok(Some(prom::scrape(u).await?)),
        None => Ok(None),
    }
}

async fn deltas_after(
    url: Option<&str>,
    before: Option<Vec<Sample>>,
) -> Result<Option<Vec<MetricDelta>>, ScenarioError> {
    match (url, before) {
        (Some(u), Some(b)) => {
            let after = prom::scrape(u).await?;
            Ok(Some(prom::hako_deltas(&b, &after)))
        }
        _ => Ok(None),
    }
}

/// Common inputs of the per-host scenarios.
#[derive(Debug, Clone)]
pub struct HostsSpec {
    /// URL to connect to (hako's proxy).
    pub url: String,
    /// Host headers to send, one request each.
    pub hosts: Vec<String>,
    /// How many requests run at once.
    pub concurrency: usize,
    /// Request shape (host is overridden per request).
    pub request: RequestSpec,
    /// Timeout per request (connect included).
    pub timeout: Duration,
    /// Prometheus endpoint for before/after deltas.
    pub scrape: Option<String>,
}

async fn run_hosts(spec: &HostsSpec) -> Result<(Vec<Shot>, Duration), ScenarioError> {
    let target = Target::resolve(&spec.url).await?;
    let mut tpls = Vec::with_capacity(spec.hosts.len());
    for h in &spec.hosts {
        let r = RequestSpec {
            host: Some(h.clone()),
            ..spec.request.clone()
        };
        tpls.push(Template::new(&target, &r)?);
    }
    let tpls = Arc::new(tpls);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..spec.concurrency.max(1).min(spec.hosts.len().max(1)) {
        let (tpls, next, hosts) = (tpls.clone(), next.clone(), spec.hosts.clone());
        let (addr, timeout) = (target.addr, spec.timeout);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tpls.len() {
                    break;
                }
                let (el, res) = one_shot(addr, &tpls[i], timeout).await;
                out.push((i, shot(&hosts[i], el, res)));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(v) = t.await {
            all.extend(v);
        }
    }
    let elapsed = start.elapsed();
    all.sort_by_key(|(i, _)| *i);
    Ok((all.into_iter().map(|(_, s)| s).collect(), elapsed))
}

/// Report of `cold`.
#[derive(Debug, Clone, Serialize)]
pub struct ColdReport {
    /// Apps hit.
    pub apps: usize,
    /// Cold-start distribution (ms from connect to end of response).
    pub summary: ShotSummary,
    /// Wall time of the scenario (s).
    pub duration_s: f64,
    /// Each app's request.
    pub per_host: Vec<Shot>,
    /// Counter deltas when `--scrape` is given.
    pub scrape: Option<Vec<MetricDelta>>,
}

/// `cold`: each host hit once, each request on a fresh connection.
pub async fn cold(spec: &HostsSpec) -> Result<ColdReport, ScenarioError> {
    let before = maybe_scrape(spec.scrape.as_deref()).await?;
    let (shots, el) = run_hosts(spec).await?;
    let scrape = deltas_after(spec.scrape.as_deref(), before).await?;
    Ok(ColdReport {
        apps: spec.hosts.len(),
        summary: summarize(&shots),
        duration_s: el.as_secs_f64(),
        per_host: shots,
        scrape,
    })
}

/// Report of `density`.
#[derive(Debug, Clone, Serialize)]
pub struct DensityReport {
    /// Instances asked for.
    pub asked: usize,
    /// Requests answered 2xx/3xx.
    pub booted: usize,
    /// Request distribution.
    pub summary: ShotSummary,
    /// Wall time (s).
    pub duration_s: f64,
    /// Achieved boots per second (successes / wall time).
    pub boots_per_s: f64,
    /// `hako_instances` after (sum over labels), when scraping.
    pub live_instances: Option<f64>,
    /// `hako_instances` by label set, when scraping.
    pub instances_by_labels: Option<BTreeMap<String, f64>>,
    /// VmRSS of `--pid` before (KiB).
    pub rss_kib_before: Option<u64>,
    /// VmRSS of `--pid` after (KiB).
    pub rss_kib_after: Option<u64>,
    /// Counter deltas.
    pub scrape: Option<Vec<MetricDelta>>,
}

/// Reads `VmRSS` (KiB) of `pid` from `{proc_root}/{pid}/status`.
pub fn read_rss_kib(proc_root: &Path, pid: u32) -> Result<u64, ScenarioError> {
    let path = proc_root.join(pid.to_string()).join("status");
    let text = std::fs::read_to_string(&path).map_err(|source| ScenarioError::Io {
        path: path.display().to_string(),
        source,
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ScenarioError::Args(format!("no VmRSS line in {}", path.display())))
}

/// `density`: boots idle instances by hitting each host once.
pub async fn density(
    spec: &HostsSpec,
    pid: Option<u32>,
    proc_root: &Path,
) -> Result<DensityReport, ScenarioError> {
    let rss_before = pid.map(|p| read_rss_kib(proc_root, p)).transpose()?;
    let before = maybe_scrape(spec.scrape.as_deref()).await?;
    let (shots, el) = run_hosts(spec).await?;
    let summary = summarize(&shots);
    let (live, by, scrape) = match (spec.scrape.as_deref(), before) {
        (Some(u), Some(b)) => {
            let after = prom::scrape(u).await?;
            let mut by = BTreeMap::new();
            for s in after.iter().filter(|s| s.name == "hako_instances") {
                let l: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                *by.entry(l.join(",")).or_insert(0.0) += s.value;
            }
            (
                Some(prom::sum(&after, "hako_instances")),
                Some(by),
                Some(prom::hako_deltas(&b, &after)),
            )
        }
        _ => (None, None, None),
    };
    let rss_after = pid.map(|p| read_rss_kib(proc_root, p)).transpose()?;
    let secs = el.as_secs_f64();
    Ok(DensityReport {
        asked: spec.hosts.len(),
        booted: summary.successes,
        boots_per_s: if secs > 0.0 {
            summary.successes as f64 / secs
        } else {
            0.0
        },
        summary,
        duration_s: secs,
        live_instances: live,
        instances_by_labels: by,
        rss_kib_before: rss_before,
        rss_kib_after: rss_after,
        scrape,
    })
}

/// Report of `burst`.
#[derive(Debug, Clone, Serialize)]
pub struct BurstReport {
    /// Host hit.
    pub host: String,
    /// Simultaneous requests.
    pub concurrency: usize,
    /// Distribution (ms from the common release instant to the end of each response).
    pub summary: ShotSummary,
    /// Counter deltas (`hako_boots_total` should rise by 1 with single flight).
    pub scrape: Option<Vec<MetricDelta>>,
}

/// `burst`: `concurrency` simultaneous requests to one (cold) app, each on its own connection.
/// Connections are opened first; all requests are released at the same instant.
pub async fn burst(
    url: &str,
    host: &str,
    concurrency: usize,
    request: &RequestSpec,
    timeout: Duration,
    scrape: Option<&str>,
) -> Result<BurstReport, ScenarioError> {
    let target = Target::resolve(url).await?;
    let r = RequestSpec {
        host: Some(host.to_string()),
        ..request.clone()
    };
    let tpl = Arc::new(Template::new(&target, &r)?);
    let before = maybe_scrape(scrape).await?;
    let barrier = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
    let release = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (tpl, barrier, release) = (tpl.clone(), barrier.clone(), release.clone());
        let host = host.to_string();
        let addr: SocketAddr = target.addr;
        tasks.push(tokio::spawn(async move {
            let conn = connect(addr, tpl.is_http2(), timeout).await;
            barrier.wait().await;
            let t0 = *release.get_or_init(Instant::now);
            let res = match conn {
                Ok(mut c) => exchange(&mut c, &tpl, timeout).await,
                Err(k) => Err(k),
            };
            shot(&host, t0.elapsed(), res)
        }));
    }
    barrier.wait().await;
    let _ = release.get_or_init(Instant::now);
    let mut shots = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            shots.push(s);
        }
    }
    let scrape_d = deltas_after(scrape, before).await?;
    Ok(BurstReport {
        host: host.to_string(),
        concurrency,
        summary: summarize(&shots),
        scrape: scrape_d,
    })
}

/// Inputs of `spike`.
#[derive(Debug, Clone)]
pub struct SpikeSpec {
    /// URL to connect to.
    pub url: String,
    /// The measured app.
    pub quiet_host: String,
    /// Open-loop rate on the quiet app.
    pub quiet_rate: f64,
    /// The noisy app.
    pub noisy_host: String,
    /// Noisy load: open loop at this rate, or closed loop when None.
    pub noisy_rate: Option<f64>,
    /// Noisy connections.
    pub noisy_connections: usize,
    /// calm, burst, calm durations.
    pub phases: [Duration; 3],
    /// Request shape.
    pub request: RequestSpec,
    /// Timeout.
    pub timeout: Duration,
    /// Prometheus endpoint.
    pub scrape: Option<String>,
}

/// Report of `spike`.
#[derive(Debug, Clone, Serialize)]
pub struct SpikeReport {
    /// Quiet app p99 (ms) before the burst.
    pub quiet_p99_calm_ms: f64,
    /// Quiet app p99 (ms) during the burst.
    pub quiet_p99_burst_ms: f64,
    /// Quiet app p99 (ms) after the burst.
    pub quiet_p99_after_ms: f64,
    /// burst / calm.
    pub ratio: f64,
    /// Whole quiet run.
    pub quiet: Report,
    /// Noisy run.
    pub noisy: Report,
    /// Counter deltas (e.g. `hako_limit_changes_total`).
    pub scrape: Option<Vec<MetricDelta>>,
}

/// p99 (ms) over the seconds `[from, to)` of a timeline.
pub fn phase_p99(tl: &[crate::report::Second], from: usize, to: usize) -> f64 {
    let mut h = new_histogram();
    for s in tl.iter().take(to).skip(from) {
        let _ = h.add(&s.hist);
    }
    Latency::from_histogram(&h).p99
}

/// `spike`: quiet app measured open loop through calm/burst/calm; noisy load during burst.
pub async fn spike(spec: &SpikeSpec) -> Result<SpikeReport, ScenarioError> {
    let target = Target::resolve(&spec.url).await?;
    let [calm, burst_d, after] = spec.phases;
    let mut quiet = LoadSpec::new(&spec.url, target.clone());
    quiet.request = RequestSpec {
        host: Some(spec.quiet_host.clone()),
        ..spec.request.clone()
    };
    quiet.connections = ((spec.quiet_rate / 100.0).ceil() as usize).clamp(1, 64);
    quiet.rate = Some(spec.quiet_rate);
    quiet.stop = Stop::Duration(calm + burst_d + after);
    quiet.timeout = spec.timeout;
    let mut noisy = LoadSpec::new(&spec.url, target);
    noisy.request = RequestSpec {
        host: Some(spec.noisy_host.clone()),
        ..spec.request.clone()
    };
    noisy.connections = spec.noisy_connections.max(1);
    noisy.rate = spec.noisy_rate;
    noisy.stop = Stop::Duration(burst_d);
    noisy.timeout = spec.timeout;
    let before = maybe_scrape(spec.scrape.as_deref()).await?;
    let q = tokio::spawn(run_load_detailed(quiet));
    tokio::time::sleep(calm).await;
    let n = run_load_detailed(noisy).await?;
    let (qr, qtl) = q
        .await
        .map_err(|e| ScenarioError::Args(format!("quiet load task failed: {e}")))??;
    let scrape = deltas_after(spec.scrape.as_deref(), before).await?;
    let c = calm.as_secs() as usize;
    let b = c + burst_d.as_secs() as usize;
    let p_calm = phase_p99(&qtl, 0, c);
    let p_burst = phase_p99(&qtl, c, b);
    Ok(SpikeReport {
        quiet_p99_calm_ms: p_calm,
        quiet_p99_burst_ms: p_burst,
        quiet_p99_after_ms: phase_p99(&qtl, b, usize::MAX),
        ratio: if p_calm > 0.0 { p_burst / p_calm } else { 0.0 },
        quiet: qr,
        noisy: n.0,
        scrape,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lists() {
        assert_eq!(
            expand_hosts(Some("a.local, b.local"), None, None).unwrap(),
            vec!["a.local", "b.local"]
        );
        assert_eq!(
            expand_hosts(None, Some("app{i}.local"), Some(3)).unwrap(),
            vec!["app0.local", "app1.local", "app2.local"]
        );
        assert!(expand_hosts(None, Some("app.local"), Some(3)).is_err());
        assert!(expand_hosts(None, Some("app{i}"), None).is_err());
        assert!(expand_hosts(Some("a"), Some("b{i}"), Some(1)).is_err());
        assert!(expand_hosts(None, None, None).is_err());
    }

    #[test]
    fn rss_from_fake_proc() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("42")).unwrap();
        std::fs::write(
            d.path().join("42/status"),
            "Name:\thako\nVmPeak:\t  9999 kB\nVmRSS:\t   12345 kB\n",
        )
        .unwrap();
        assert_eq!(read_rss_kib(d.path(), 42).unwrap(), 12345);
        assert!(read_rss_kib(d.path(), 43).is_err());
    }

    #[test]
    fn summary_counts_kinds() {
        let shots = vec![
            shot("a", Duration::from_millis(10), Ok(200)),
            shot("b", Duration::from_millis(20), Ok(503)),
            shot("c", Duration::from_millis(30), Err(ErrorKind::Connect)),
            shot("d", Duration::from_millis(40), Err(ErrorKind::Timeout)),
        ];
        let s = summarize(&shots);
        assert_eq!(s.requests, 4);
        assert_eq!(s.successes, 1);
        assert_eq!(s.errors, 3);
        assert_eq!(s.errors_by_kind.status_5xx, 1);
        assert_eq!(s.errors_by_kind.connect, 1);
        assert_eq!(s.errors_by_kind.timeout, 1);
        assert!((s.latency_ms.max - 20.0).abs() < 0.05);
    }
}
