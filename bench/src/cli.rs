//! Command line of `hako-bench` (argument parsing and output; the logic lives in the modules).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};

use crate::duration::parse_duration;
use crate::engine::{parse_header, run_load_detailed, LoadSpec, RequestSpec, Stop, Target};
use crate::prom;
use crate::scenarios::{self, launcher, HostsSpec, SpikeSpec};

/// HTTP load generator with coordinated-omission-free open loop, and hako scenarios.
#[derive(Debug, Parser)]
#[command(name = "hako-bench", version)]
pub struct Cli {
    /// Worker threads of the load generator (default: one per CPU).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Load-test one URL (closed loop, or open loop with --rate).
    Run(RunArgs),
    /// Hit N apps once each, each on a fresh connection: the cold-start distribution.
    Cold(ColdArgs),
    /// C simultaneous requests to one cold app.
    Burst(BurstArgs),
    /// Measure a quiet app while a noisy one is loaded (calm / burst / calm).
    Spike(SpikeArgs),
    /// Boot many idle instances; report boots/s, live instances and hako's RSS.
    Density(DensityArgs),
    /// Compare container start: hako launcher, hako run, crun, runc.
    Launcher(LauncherArgs),
    /// hako's proxy beside nginx as the front of one keep-alive backend: plain HTTP (wrk),
    /// TLS h2 and h1 (h2load), new TLS handshakes, CPU per request, the cold path over TLS.
    Front(FrontArgs),
    /// Hibernation: first response after a wake vs after an idle stop (cold boot), for Flask,
    /// Node and busybox httpd side by side; resident memory warm vs hibernated; density.
    Wake(WakeArgs),
}

fn dur(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Debug, Args, Clone)]
struct ReqArgs {
    /// HTTP method.
    #[arg(short = 'X', long = "method", default_value = "GET")]
    method: String,
    /// Extra header 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Request body.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// Request body from a file.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Use HTTP/2 over cleartext with prior knowledge (h2c).
    #[arg(long)]
    http2: bool,
    /// Per-request timeout (connect included).
    #[arg(long, default_value = "10s", value_parser = dur)]
    timeout: Duration,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

impl ReqArgs {
    fn request(&self, host: Option<String>) -> Result<RequestSpec> {
        let method = http::Method::from_bytes(self.method.as_bytes())
            .with_context(|| format!("invalid method {:?}", self.method))?;
        let headers = self
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<Result<Vec<_>, _>>()?;
        let body = match (&self.body, &self.body_file) {
            (Some(b), _) => Bytes::from(b.clone()),
            (None, Some(f)) => {
                Bytes::from(std::fs::read(f).with_context(|| format!("reading {}", f.display()))?)
            }
            (None, None) => Bytes::new(),
        };
        Ok(RequestSpec {
            method,
            headers,
            body,
            host,
            http2: self.http2,
        })
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Target URL (http://host:port/path).
    url: String,
    /// Connections.
    #[arg(short = 'c', long, default_value_t = 10)]
    connections: usize,
    /// Duration of the measured window (default 10s).
    #[arg(short = 'd', long, value_parser = dur, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Number of requests instead of a duration.
    #[arg(short = 'n', long = "requests")]
    requests: Option<u64>,
    /// Open loop: requests per second (latency from the intended send time).
    #[arg(long)]
    rate: Option<f64>,
    /// HTTP/2 concurrent streams per connection.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Host header (connects to the URL's address).
    #[arg(long)]
    host: Option<String>,
    /// Warm-up before measuring (excluded from results).
    #[arg(long, value_parser = dur, default_value = "0s")]
    warmup: Duration,
    /// Write an SVG chart of per-second throughput and p99.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Prometheus endpoint to diff before/after (e.g. http://127.0.0.1:9090/metrics).
    #[arg(long)]
    scrape: Option<String>,
    #[command(flatten)]
    req: ReqArgs,
}

#[derive(Debug, Args)]
struct ColdArgs {
    /// hako's proxy URL.
    url: String,
    /// Comma-separated host names.
    #[arg(long)]
    hosts: Option<String>,
    /// Host name pattern with {i}, for i in 0..N.
    #[arg(long)]
    host_pattern: Option<String>,
    /// Number of hosts for --host-pattern.
    #[arg(short = 'n')]
    n: Option<usize>,
    /// Requests in flight at once.
    #[arg(short = 'c', long, default_value_t = 1)]
    concurrency: usize,
    /// Prometheus endpoint to diff before/after.
    #[arg(long)]
    scrape: Option<String>,
    #[command(flatten)]
    req: ReqArgs,
}

#[derive(Debug, Args)]
struct BurstArgs {
    /// hako's proxy URL.
    url: String,
    /// Host of the (cold) app.
    #[arg(long)]
    host: String,
    /// Simultaneous requests.
    #[arg(short = 'c', long, default_value_t = 100)]
    concurrency: usize,
    /// Prometheus endpoint to diff before/after (boots delta).
    #[arg(long)]
    scrape: Option<String>,
    #[command(flatten)]
    req: ReqArgs,
}

#[derive(Debug, Args)]
struct SpikeArgs {
    /// hako's proxy URL (not with --hako).
    #[arg(required_unless_present = "hako", conflicts_with = "hako")]
    url: Option<String>,
    /// Measured app.
    #[arg(long, required_unless_present = "hako", conflicts_with = "hako")]
    quiet_host: Option<String>,
    /// Open-loop rate on the quiet app.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Loaded app.
    #[arg(long, required_unless_present = "hako", conflicts_with = "hako")]
    noisy_host: Option<String>,
    /// Noisy open-loop rate (closed loop with -c when absent).
    #[arg(long)]
    noisy_rate: Option<f64>,
    /// Noisy connections (default 32; 12 with --hako).
    #[arg(short = 'c', long)]
    connections: Option<usize>,
    /// Configure and start `hako serve` from this binary (root): busybox apps noisy, quiet,
    /// lender and other; protection runs, detection bursts and scale-up rounds.
    #[arg(long)]
    hako: Option<PathBuf>,
    /// With --hako: `governor.enabled`.
    #[arg(long, value_parser = ["on", "off"], default_value = "on")]
    governor: String,
    /// With --hako: give noisy a `spike` rule (cpu_above 0.8, for 300ms, tighten_cpu 0.2);
    /// by default no app has a rule.
    #[arg(long)]
    rule: bool,
    /// With --hako: noisy's limits.cpu (default: the host's CPU count).
    #[arg(long)]
    noisy_cpu: Option<f64>,
    /// With --hako: protection runs (calm/burst/calm each).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// With --hako: detection bursts (burst start -> first cgroup write); 0 to skip.
    #[arg(long, default_value_t = 20)]
    bursts: usize,
    /// With --hako: length of one detection burst.
    #[arg(long, default_value = "1500ms", value_parser = dur)]
    burst_len: Duration,
    /// With --hako: CPU time each request to the burn CGI uses, in ms (calibrated on the host).
    #[arg(long, default_value_t = 125)]
    burn_ms: u64,
    /// With --hako: scale-up rounds (lender limits.cpu 0.5, burst_cpu 2.0; then other busy);
    /// 0 to skip.
    #[arg(long, default_value_t = 5)]
    lend_rounds: usize,
    /// With --hako: burn connections of lender and of other.
    #[arg(long, default_value_t = 4)]
    lend_connections: usize,
    /// With --hako: how long lender runs alone before other starts.
    #[arg(long, default_value = "3s", value_parser = dur)]
    lend_for: Duration,
    /// calm,burst,calm durations.
    #[arg(long, default_value = "5s,10s,5s")]
    phases: String,
    /// Write an SVG chart of the quiet app.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Prometheus endpoint to diff before/after.
    #[arg(long)]
    scrape: Option<String>,
    #[command(flatten)]
    req: ReqArgs,
}

#[derive(Debug, Args)]
struct DensityArgs {
    /// hako's proxy URL.
    url: String,
    /// Host name pattern with {i}.
    #[arg(long, default_value = "d{i}.local")]
    host_pattern: String,
    /// Instances to boot.
    #[arg(short = 'n')]
    n: usize,
    /// Requests in flight at once.
    #[arg(short = 'c', long, default_value_t = 4)]
    concurrency: usize,
    /// Prometheus endpoint (live instances from hako_instances).
    #[arg(long)]
    scrape: Option<String>,
    /// hako's pid, for VmRSS.
    #[arg(long)]
    pid: Option<u32>,
    #[command(flatten)]
    req: ReqArgs,
}

#[derive(Debug, Args)]
struct LauncherArgs {
    /// Path to the hako binary.
    #[arg(long)]
    hako: PathBuf,
    /// Root filesystem containing /bin/true.
    #[arg(long)]
    rootfs: PathBuf,
    /// Samples per runtime.
    #[arg(short = 'n', default_value_t = 100)]
    n: usize,
    /// Pause between two hako-launcher boots (not part of any sample), the quiet in which
    /// hako's background helpers rebuild warm namespaces and pooled cgroups, as between cold
    /// starts. A second row, hako-launcher-b2b, boots back to back without it.
    #[arg(long, value_name = "MS", default_value_t = 10)]
    pace_ms: u64,
    /// Split the samples into this many rounds, each taking its share of every runtime in
    /// turn, so that a machine drifting during the run skews every row alike.
    #[arg(long, value_name = "R", default_value_t = 5)]
    rounds: usize,
    /// Also time this lower-bound program, run as `FLOOR ROOTFS` (build bench/floor/floor.c:
    /// the same kernel work as one `hako run` in plain C): the row `floor`.
    #[arg(long, value_name = "BIN")]
    floor: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct FrontArgs {
    /// Path to the hako binary (run as `hako serve`; needs root).
    #[arg(long)]
    hako: PathBuf,
    /// Path to nginx (the backend app and the compared fronts).
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// Rounds: every front takes every load once per round, in turn.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Seconds of each wrk and h2load run.
    #[arg(short = 'd', long, default_value_t = 6)]
    seconds: u64,
    /// Connections of wrk and h2load.
    #[arg(short = 'c', long, default_value_t = 32)]
    connections: usize,
    /// Concurrent streams per h2 connection (h2load -m).
    #[arg(short = 'm', long, default_value_t = 10)]
    streams: usize,
    /// New TLS connections (one request each) per handshake measurement.
    #[arg(long, default_value_t = 500)]
    handshakes: usize,
    /// Cold starts over TLS, and as many over plain HTTP.
    #[arg(long, default_value_t = 30)]
    cold: usize,
    /// nginx worker counts to compare, comma-separated.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    workers: Vec<usize>,
    /// Measure hako alone (no nginx front), e.g. to profile it.
    #[arg(long)]
    no_nginx: bool,
    /// Loads of each round, comma-separated: plain (wrk), tls (h2load h2 and h1),
    /// handshakes (new TLS connections). More rounds of fewer loads give steadier medians.
    #[arg(long, default_value = "plain,tls,handshakes", value_delimiter = ',')]
    loads: Vec<String>,
}

fn cmd_front(a: FrontArgs) -> Result<()> {
    if a.rounds == 0 || a.connections == 0 || a.handshakes == 0 {
        bail!("--rounds, -c and --handshakes must be at least 1");
    }
    let spec = scenarios::front::FrontSpec {
        hako: a.hako,
        nginx: a.nginx,
        rounds: a.rounds,
        seconds: a.seconds,
        connections: a.connections,
        streams: a.streams,
        handshakes: a.handshakes,
        cold: a.cold,
        workers: if a.no_nginx { Vec::new() } else { a.workers },
        loads: scenarios::front::Loads::parse(a.loads.iter().map(String::as_str))
            .map_err(|e| anyhow::anyhow!("--loads: {e}"))?,
    };
    let mut res = Ok(());
    scenarios::front::run_front(&spec, &mut |line| {
        if res.is_ok() {
            res = out(&format!("{line}\n"));
        }
    })?;
    res
}

#[derive(Debug, Args)]
struct WakeArgs {
    /// Path to the hako binary (run as `hako serve`; needs root).
    #[arg(long)]
    hako: PathBuf,
    /// Wakes and cold boots per app.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Apps to run side by side, comma-separated: flask (gunicorn), node, busybox (httpd).
    #[arg(long, default_value = "flask,node,busybox", value_delimiter = ',')]
    apps: Vec<String>,
    /// Reclaim method of the served hako (`HAKO_RECLAIM`: cgroup or madvise); default: hako's.
    #[arg(long)]
    reclaim: Option<String>,
    /// Then boot this many Flask apps, let them hibernate, and report host memory per
    /// instance and their wake latency (0: skip).
    #[arg(long, default_value_t = 0)]
    density: usize,
}

fn cmd_wake(a: WakeArgs) -> Result<()> {
    if let Some(m) = &a.reclaim {
        if m != "cgroup" && m != "madvise" {
            bail!("--reclaim takes cgroup or madvise, not {m}");
        }
    }
    let spec = scenarios::wake::WakeSpec {
        hako: a.hako,
        rounds: a.rounds,
        apps: a.apps,
        reclaim: a.reclaim,
        density: a.density,
    };
    let mut res = Ok(());
    scenarios::wake::run_wake(&spec, &mut |line| {
        if res.is_ok() {
            res = out(&format!("{line}\n"));
        }
    })?;
    res
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|_| o.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    out(&format!("{}\n", serde_json::to_string_pretty(v)?))
}

fn write_chart(path: &PathBuf, title: &str, tl: &[crate::report::SecondReport]) -> Result<()> {
    std::fs::write(path, crate::svg::chart(title, tl))
        .with_context(|| format!("writing {}", path.display()))
}

async fn cmd_run(a: RunArgs) -> Result<()> {
    let target = Target::resolve(&a.url).await?;
    let mut spec = LoadSpec::new(&a.url, target);
    spec.request = a.req.request(a.host.clone())?;
    spec.connections = a.connections;
    spec.streams = a.streams;
    spec.stop = match (a.duration, a.requests) {
        (_, Some(n)) => Stop::Requests(n),
        (Some(d), None) => Stop::Duration(d),
        (None, None) => Stop::Duration(Duration::from_secs(10)),
    };
    spec.rate = a.rate;
    spec.timeout = a.req.timeout;
    spec.warmup = a.warmup;
    spec.progress = !a.req.json;
    let before = scenarios::maybe_scrape(a.scrape.as_deref()).await?;
    let (report, _) = run_load_detailed(spec).await?;
    let deltas = match (a.scrape.as_deref(), before) {
        (Some(u), Some(b)) => Some(prom::hako_deltas(&b, &prom::scrape(u).await?)),
        _ => None,
    };
    if let Some(c) = &a.chart {
        write_chart(
            c,
            &format!("{} ({} loop)", a.url, report.mode),
            &report.timeline,
        )?;
    }
    if a.req.json {
        let mut j = report.to_json();
        if let Some(d) = &deltas {
            j["scrape"] = serde_json::to_value(d)?;
        }
        out(&format!("{}\n", serde_json::to_string_pretty(&j)?))?;
    } else {
        out(&report.to_text())?;
        if let Some(d) = &deltas {
            out(&format!("scrape deltas:\n{}", prom::deltas_text(d)))?;
        }
    }
    Ok(())
}

fn hosts_spec(
    url: String,
    hosts: Vec<String>,
    c: usize,
    req: &ReqArgs,
    scrape: Option<String>,
) -> Result<HostsSpec> {
    Ok(HostsSpec {
        url,
        hosts,
        concurrency: c,
        request: req.request(None)?,
        timeout: req.timeout,
        scrape,
    })
}

fn summary_text(s: &scenarios::ShotSummary) -> String {
    let l = &s.latency_ms;
    format!(
        "  {} requests, {} ok, {} errors (connect {}, timeout {}, 4xx {}, 5xx {}, io {})\n  \
         latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  min {:.3}\n",
        s.requests,
        s.successes,
        s.errors,
        s.errors_by_kind.connect,
        s.errors_by_kind.timeout,
        s.errors_by_kind.status_4xx,
        s.errors_by_kind.status_5xx,
        s.errors_by_kind.io,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
        l.min
    )
}

fn scrape_text(d: &Option<Vec<prom::MetricDelta>>) -> String {
    d.as_ref()
        .map(|d| format!("scrape deltas:\n{}", prom::deltas_text(d)))
        .unwrap_or_default()
}

async fn cmd_cold(a: ColdArgs) -> Result<()> {
    let hosts = scenarios::expand_hosts(a.hosts.as_deref(), a.host_pattern.as_deref(), a.n)?;
    let spec = hosts_spec(a.url, hosts, a.concurrency, &a.req, a.scrape)?;
    let r = scenarios::cold(&spec).await?;
    if a.req.json {
        return print_json(&r);
    }
    out(&format!(
        "cold: {} apps in {:.2}s (fresh connection each)\n{}{}",
        r.apps,
        r.duration_s,
        summary_text(&r.summary),
        scrape_text(&r.scrape)
    ))
}

async fn cmd_burst(a: BurstArgs) -> Result<()> {
    let req = a.req.request(None)?;
    let r = scenarios::burst(
        &a.url,
        &a.host,
        a.concurrency,
        &req,
        a.req.timeout,
        a.scrape.as_deref(),
    )
    .await?;
    if a.req.json {
        return print_json(&r);
    }
    out(&format!(
        "burst: {} simultaneous requests to {}\n{}{}",
        r.concurrency,
        r.host,
        summary_text(&r.summary),
        scrape_text(&r.scrape)
    ))
}

/// Parses `calm,burst,calm`.
pub fn parse_phases(s: &str) -> Result<[Duration; 3]> {
    let v: Vec<Duration> = s.split(',').map(parse_duration).collect::<Result<_, _>>()?;
    match v.as_slice() {
        [a, b, c] => Ok([*a, *b, *c]),
        _ => bail!("--phases needs three durations calm,burst,calm, got {s:?}"),
    }
}

async fn cmd_spike(a: SpikeArgs) -> Result<()> {
    if let Some(hako) = a.hako {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let spec = scenarios::govern::GovernSpec {
            hako,
            governor: a.governor == "on",
            rule: a.rule,
            noisy_cpu: a.noisy_cpu.unwrap_or(cpus as f64),
            runs: a.runs,
            phases: parse_phases(&a.phases)?,
            rate: a.rate,
            connections: a.connections.unwrap_or(12).max(1),
            burn_ms: a.burn_ms.max(1),
            bursts: a.bursts,
            burst_len: a.burst_len,
            lend_rounds: a.lend_rounds,
            lend_connections: a.lend_connections.max(1),
            lend_for: a.lend_for,
        };
        return Ok(scenarios::govern::run_govern(&spec).await?);
    }
    let (Some(url), Some(quiet_host), Some(noisy_host)) = (a.url, a.quiet_host, a.noisy_host)
    else {
        bail!("give URL, --quiet-host and --noisy-host, or --hako");
    };
    let spec = SpikeSpec {
        url,
        quiet_host,
        quiet_rate: a.rate,
        noisy_host,
        noisy_rate: a.noisy_rate,
        noisy_connections: a.connections.unwrap_or(32),
        phases: parse_phases(&a.phases)?,
        request: a.req.request(None)?,
        timeout: a.req.timeout,
        scrape: a.scrape,
    };
    let r = scenarios::spike(&spec).await?;
    if let Some(c) = &a.chart {
        write_chart(
            c,
            &format!("quiet {} during spike", spec.quiet_host),
            &r.quiet.timeline,
        )?;
    }
    if a.req.json {
        return print_json(&r);
    }
    out(&format!(
        "spike: quiet {} at {}/s, noisy {} ({})\n  quiet p99 ms: calm {:.3}, burst {:.3}, after {:.3}; burst/calm {:.2}x\n  noisy: {:.1} req/s, {} errors\n  quiet: {} responses, {} errors, {} late\n{}",
        spec.quiet_host,
        spec.quiet_rate,
        spec.noisy_host,
        spec.noisy_rate
            .map(|r| format!("open loop {r}/s"))
            .unwrap_or_else(|| format!("closed loop, {} connections", spec.noisy_connections)),
        r.quiet_p99_calm_ms,
        r.quiet_p99_burst_ms,
        r.quiet_p99_after_ms,
        r.ratio,
        r.noisy.rps,
        r.noisy.errors,
        r.quiet.responses,
        r.quiet.errors,
        r.quiet.late,
        scrape_text(&r.scrape)
    ))
}

async fn cmd_density(a: DensityArgs) -> Result<()> {
    let hosts = scenarios::expand_hosts(None, Some(&a.host_pattern), Some(a.n))?;
    let spec = hosts_spec(a.url, hosts, a.concurrency, &a.req, a.scrape)?;
    let r = scenarios::density(&spec, a.pid, std::path::Path::new("/proc")).await?;
    if a.req.json {
        return print_json(&r);
    }
    let mut s = format!(
        "density: {} of {} instances booted in {:.2}s: {:.1} boots/s\n{}",
        r.booted,
        r.asked,
        r.duration_s,
        r.boots_per_s,
        summary_text(&r.summary)
    );
    if let Some(l) = r.live_instances {
        s.push_str(&format!("  live instances (hako_instances): {l}\n"));
    }
    if let (Some(b), Some(a)) = (r.rss_kib_before, r.rss_kib_after) {
        s.push_str(&format!(
            "  hako VmRSS: {b} KiB -> {a} KiB ({:+} KiB)\n",
            a as i64 - b as i64
        ));
    }
    s.push_str(&scrape_text(&r.scrape));
    out(&s)
}

fn cmd_launcher(a: LauncherArgs) -> Result<()> {
    if a.n == 0 {
        bail!("-n must be at least 1");
    }
    if a.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if let Some(f) = &a.floor {
        if !f.is_file() {
            bail!(
                "--floor {}: no such file (build bench/floor/floor.c first)",
                f.display()
            );
        }
    }
    let spec = launcher::LauncherSpec {
        hako: a.hako,
        rootfs: a.rootfs,
        n: a.n,
        rounds: a.rounds,
        pace_ms: a.pace_ms,
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        floor: a.floor,
    };
    let r = launcher::run(&spec);
    if a.json {
        return print_json(&r);
    }
    out(&launcher::to_text(&r))
}

fn runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = threads {
        b.worker_threads(t.max(1));
    }
    b.enable_all().build()
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Launcher(a) => cmd_launcher(a),
        Cmd::Front(a) => cmd_front(a),
        Cmd::Wake(a) => cmd_wake(a),
        cmd => match runtime(cli.threads) {
            Ok(rt) => rt.block_on(async move {
                match cmd {
                    Cmd::Run(a) => cmd_run(a).await,
                    Cmd::Cold(a) => cmd_cold(a).await,
                    Cmd::Burst(a) => cmd_burst(a).await,
                    Cmd::Spike(a) => cmd_spike(a).await,
                    Cmd::Density(a) => cmd_density(a).await,
                    Cmd::Launcher(_) | Cmd::Front(_) | Cmd::Wake(_) => {
                        unreachable!("handled above")
                    }
                }
            }),
            Err(e) => Err(e.into()),
        },
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if std::io::stderr().is_terminal() {
                eprintln!("\x1b[1merror:\x1b[0m {e:#}");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn phases() {
        let p = parse_phases("1s,500ms,2s").unwrap();
        assert_eq!(p[1], Duration::from_millis(500));
        assert!(parse_phases("1s,2s").is_err());
    }

    #[test]
    fn run_args_parse() {
        let c = Cli::try_parse_from([
            "hako-bench",
            "run",
            "http://127.0.0.1:1/",
            "-c",
            "32",
            "-d",
            "10s",
            "--rate",
            "1000",
            "-H",
            "X-A: b",
            "-H",
            "X-C: d",
            "--host",
            "app.local",
            "--json",
        ])
        .unwrap();
        let Cmd::Run(a) = c.cmd else {
            panic!("not run")
        };
        assert_eq!(a.connections, 32);
        assert_eq!(a.duration, Some(Duration::from_secs(10)));
        assert_eq!(a.rate, Some(1000.0));
        assert_eq!(a.req.headers.len(), 2);
        assert!(a.req.json);
        assert!(
            Cli::try_parse_from(["hako-bench", "run", "http://x/", "-d", "1s", "-n", "5"]).is_err()
        );
    }
}
