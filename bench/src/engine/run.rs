//! Running a load: checks the spec, starts one worker per connection (or HTTP/2 stream),
//! shows the progress line and builds the report.
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2;
use tokio::time::Instant;

use super::conn::{connect, Conn};
use super::request::Template;
use super::schedule::{intended_offset, scheduled_in, LoadSpec, Stop};
use super::workers::{closed_worker, flush_progress, open_worker, Shared};
use super::EngineError;
use crate::report::{Recorder, Report, ReportMeta, Second};

/// Runs the load and returns the report.
pub async fn run_load(spec: LoadSpec) -> Result<Report, EngineError> {
    Ok(run_load_detailed(spec).await?.0)
}

/// Runs the load and returns the report and the raw per-second data (with full histograms).
pub async fn run_load_detailed(spec: LoadSpec) -> Result<(Report, Vec<Second>), EngineError> {
    if spec.connections == 0 {
        return Err(EngineError::Option {
            what: "connections",
            reason: "must be at least 1".into(),
        });
    }
    if let Some(r) = spec.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err(EngineError::Option {
                what: "rate",
                reason: format!("{r} is not a positive number"),
            });
        }
    }
    let tpl = Arc::new(Template::new(&spec.target, &spec.request)?);
    let workers = spec.workers();
    let t0 = Instant::now();
    // Open loop: the warm-up is a whole number of scheduled requests.
    let (warm_count, measure_start) = match spec.rate {
        Some(rate) => {
            let n = scheduled_in(spec.warmup, rate);
            (n, t0 + intended_offset(n, rate))
        }
        None => (0, t0 + spec.warmup),
    };
    let shared = Arc::new(Shared {
        t0,
        measure_start,
        timeline: Arc::default(),
        claimed: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let progress = if spec.progress && std::io::stdout().is_terminal() {
        Some(tokio::spawn(progress_line(shared.clone())))
    } else {
        None
    };
    let spec = Arc::new(spec);
    let mut tasks = Vec::with_capacity(workers);
    let mut h2_conns: Vec<Option<http2::SendRequest<Full<Bytes>>>> = vec![None; spec.connections];
    for k in 0..workers {
        let (spec, tpl, shared) = (spec.clone(), tpl.clone(), shared.clone());
        // HTTP/2: streams of one connection share it; it is opened lazily by its first worker.
        let conn_idx = k % spec.connections;
        let pre = if tpl.http2 && spec.streams > 1 {
            if h2_conns[conn_idx].is_none() {
                if let Ok(Conn::H2(s)) = connect(spec.target.addr, true, spec.timeout).await {
                    h2_conns[conn_idx] = Some(s);
                }
            }
            h2_conns[conn_idx].clone().map(Conn::H2)
        } else {
            None
        };
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::new(shared.timeline.clone());
            match spec.rate {
                None => closed_worker(&spec, &tpl, &shared, &mut rec, pre).await,
                Some(rate) => {
                    open_worker(
                        &spec, &tpl, &shared, &mut rec, pre, k, workers, rate, warm_count,
                    )
                    .await
                }
            }
            rec.flush();
            flush_progress(&shared, &mut rec);
            (rec, Instant::now())
        }));
    }
    let mut total = Recorder::new(shared.timeline.clone());
    let mut last = measure_start;
    for t in tasks {
        if let Ok((rec, end)) = t.await {
            total.merge(&rec);
            last = last.max(end);
        }
    }
    if let Some(p) = progress {
        p.abort();
        eprint!("\r\x1b[2K");
    }
    let window = match (spec.rate, spec.stop) {
        // Open loop with a duration: the schedule window, plus the drain of the last requests.
        (Some(_), Stop::Duration(d)) => d.max(last.saturating_duration_since(measure_start)),
        _ => last.saturating_duration_since(measure_start),
    };
    let timeline = shared
        .timeline
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let meta = ReportMeta {
        mode: if spec.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .into(),
        url: spec.url.clone(),
        protocol: if tpl.http2 { "h2c" } else { "http/1.1" }.into(),
        connections: spec.connections,
        rate: spec.rate,
    };
    let report = Report::build(meta, &total, &timeline, window);
    Ok((report, timeline))
}

async fn progress_line(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut prev = 0;
    loop {
        tick.tick().await;
        let done = shared.done.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let el = shared.t0.elapsed().as_secs();
        let phase = if Instant::now() < shared.measure_start {
            " (warm-up)"
        } else {
            ""
        };
        eprint!(
            "\r\x1b[2K[{el:>4}s] {done} responses, {} req/s, {failed} errors{phase}",
            done - prev
        );
        prev = done;
    }
}
