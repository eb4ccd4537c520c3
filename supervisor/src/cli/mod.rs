//! Command line of the `hako` binary.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

mod check;
mod image;
mod logs;
mod run;
mod spawnbench;

/// hako: a FastContainer supervisor. Boots a container per app on the first request, holds the
/// request until the app is ready, forwards it, stops the container when it is idle or too old,
/// and tightens the cgroup limits of noisy tenants during load spikes.
#[derive(Debug, Parser)]
#[command(name = "hako", version, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr (also from the environment variable HAKO_LOG_FORMAT; a zygote
    /// that `hako serve` restarts inherits it).
    #[arg(
        long,
        global = true,
        value_enum,
        env = LOG_FORMAT_ENV,
        default_value_t = LogFormat::Human
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy, the supervisor and the admin endpoint.
    ///
    /// Without --config a built-in demo is served: an app answering on http://127.0.0.1:8080/
    /// (a busybox httpd booted on the first request), admin on 127.0.0.1:9090.
    /// SIGTERM/SIGINT: stop accepting, finish in-flight requests, stop every container (a
    /// second signal forces). SIGHUP: reload the configuration file.
    Serve(ServeArgs),
    /// Validate a configuration file; print every error as FILE:LINE:COLUMN: message.
    Check(CheckArgs),
    /// Run one container in the foreground; exit with its status (128+signal if killed).
    Run(run::RunArgs),
    /// List instances from a running hako's admin API.
    Ps(PsArgs),
    /// Ask a running hako to reload its configuration (same as SIGHUP); prints the summary or
    /// the errors. Reloads asked for while one runs share the next one.
    Reload(PsArgs),
    /// Take this node out of a fleet: /healthz answers 503 `draining` (the load balancer
    /// moves the node's apps to other nodes), requests still received are served, instances
    /// stop as they go idle, and `hako serve` exits 0 once nothing is left (or after
    /// drain_timeout). Undone by `hako undrain` until then.
    Drain(AdminArgs),
    /// Cancel a drain before the node exits: /healthz answers 200 again.
    Undrain(AdminArgs),
    /// Print an app's instance output (stdout and stderr, one line each as
    /// `TIME INSTANCE STREAM TEXT`) from a running hako's admin API; -f keeps following.
    Logs(logs::LogsArgs),
    /// Manage the image store: pull, ls, rm, prune.
    Image(image::ImageArgs),
    /// Launcher boot latency benchmark (used by `hako-bench launcher`).
    #[command(hide = true)]
    BenchSpawn(spawnbench::BenchSpawnArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (YAML). Without it, the built-in demo configuration is served.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the built-in demo configuration and exit.
    #[arg(long, conflicts_with = "config")]
    pub print_demo: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Configuration file (YAML) to validate.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Address of the admin endpoint.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
    /// Print the raw JSON of /v1/instances instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Address of the admin endpoint.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
}

/// The environment variable that carries `--log-format`.
pub const LOG_FORMAT_ENV: &str = "HAKO_LOG_FORMAT";

/// The log format a restarted zygote uses: `HAKO_LOG_FORMAT` as its `hako serve` set it.
pub fn inherited_log_format() -> LogFormat {
    std::env::var(LOG_FORMAT_ENV)
        .ok()
        .and_then(|v| <LogFormat as ValueEnum>::from_str(&v, false).ok())
        .unwrap_or(LogFormat::Human)
}

/// Installs the tracing subscriber (stderr; RUST_LOG overrides the default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only for a person at a terminal; never in files or the journal.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Runs the parsed command line and returns the process exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    // Still single-threaded here: the only moment `set_var` is sound. A zygote re-executed by
    // `hako serve` (`hako __zygote`, which parses no options) reads it back.
    if let Some(v) = cli.log_format.to_possible_value() {
        std::env::set_var(LOG_FORMAT_ENV, v.get_name());
    }
    init_logging(cli.log_format);
    match cli.command {
        Command::Check(args) => check::run(&args),
        Command::Run(args) => run::run(args),
        Command::Serve(args) => {
            if args.print_demo {
                print!("{}", crate::serve::DEMO_CONFIG);
                return Ok(ExitCode::SUCCESS);
            }
            let source = match args.config {
                Some(p) => crate::serve::ConfigSource::File(p),
                None => crate::serve::ConfigSource::Demo,
            };
            crate::serve::run(source)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ps(args) => ps(&args),
        Command::Image(args) => image::run(args),
        Command::Logs(args) => logs::run(&args),
        Command::BenchSpawn(args) => spawnbench::run(args),
        Command::Drain(args) => admin_post(args.admin, "/v1/drain"),
        Command::Undrain(args) => admin_post(args.admin, "/v1/undrain"),
        Command::Reload(args) => {
            // The header marks the request as not cross-site (the endpoint refuses it without).
            let (status, body) = admin_request_with(
                args.admin,
                "POST",
                "/v1/reload",
                &format!("{}: 1\r\n", crate::admin::RELOAD_HEADER),
            )?;
            if status == 200 {
                println!("reloaded: {}", body.trim());
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{}", body.trim_end());
                Ok(ExitCode::from(1))
            }
        }
    }
}

/// A state-changing admin request (with the header that marks it as not cross-site); prints
/// the answer, exit 0 on 200.
fn admin_post(admin: SocketAddr, path: &str) -> anyhow::Result<ExitCode> {
    let (status, body) = admin_request_with(
        admin,
        "POST",
        path,
        &format!("{}: 1\r\n", crate::admin::ADMIN_HEADER),
    )?;
    if status == 200 {
        println!("{}", body.trim_end());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{}", body.trim_end());
        Ok(ExitCode::from(1))
    }
}

/// A minimal HTTP/1.0 request to the admin endpoint (no runtime needed for a CLI call).
fn admin_request(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    admin_request_with(addr, method, path, "")
}

/// [`admin_request`] with extra header lines (each ending in `\r\n`).
fn admin_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).with_context(|| {
        format!("cannot reach hako's admin endpoint at {addr} (is `hako serve` running?)")
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}Content-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("read reply from {addr}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("malformed reply from {addr}"))?;
    Ok((status, body.to_string()))
}

fn fmt_bytes(b: Option<u64>) -> String {
    match b {
        None => "-".into(),
        Some(b) if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}Gi", b >> 30),
        Some(b) if b >= 1 << 20 => format!("{}Mi", b >> 20),
        Some(b) if b >= 1 << 10 => format!("{}Ki", b >> 10),
        Some(b) => b.to_string(),
    }
}

fn fmt_age(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        format!("{}m{:02}s", (secs / 60.0) as u64, (secs % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (secs / 3600.0) as u64,
            ((secs % 3600.0) / 60.0) as u64
        )
    }
}

fn ps(args: &PsArgs) -> anyhow::Result<ExitCode> {
    let (status, body) = admin_request(args.admin, "GET", "/v1/instances")?;
    anyhow::ensure!(
        status == 200,
        "admin endpoint answered {status}: {}",
        body.trim()
    );
    if args.json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&body).context("parse /v1/instances")?;
    println!(
        "{:<16} {:<22} {:>8} {:<10} {:>9} {:>9} {:>8} {:>6} {:>8} {:>9} {:>6}",
        "APP", "ID", "PID", "STATE", "AGE", "REQUESTS", "RSS", "CPU", "MEMORY", "MEM.HIGH", "PIDS"
    );
    for r in rows {
        let s = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
        let l = &r["limits"];
        println!(
            "{:<16} {:<22} {:>8} {:<10} {:>9} {:>9} {:>8} {:>6} {:>8} {:>9} {:>6}",
            s("app"),
            s("id"),
            r["pid"]
                .as_i64()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            s("state"),
            fmt_age(r["age_seconds"].as_f64().unwrap_or(0.0)),
            r["requests"].as_u64().unwrap_or(0),
            fmt_bytes(r["memory_bytes"].as_u64()),
            l["cpu"]
                .as_f64()
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "-".into()),
            fmt_bytes(l["memory_max"].as_u64()),
            fmt_bytes(l["memory_high"].as_u64()),
            l["pids"]
                .as_u64()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
        );
    }
    Ok(ExitCode::SUCCESS)
}
