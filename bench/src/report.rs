//! Recording of outcomes (HDR histogram, error kinds, status codes, per-second timeline) and the
//! final report (text and JSON).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Why a request failed. HTTP statuses >= 400 count as errors too (but their latency is
/// recorded, as wrk does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// TCP connect (or HTTP handshake) failed or timed out.
    Connect,
    /// No complete response within `--timeout`.
    Timeout,
    /// Response with a 4xx status.
    Status4xx,
    /// Response with a 5xx status.
    Status5xx,
    /// Any other I/O or protocol error (reset, EOF mid-response, ...).
    Io,
}

/// Error counts by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    /// Connect failures.
    pub connect: u64,
    /// Timeouts.
    pub timeout: u64,
    /// 4xx responses.
    pub status_4xx: u64,
    /// 5xx responses.
    pub status_5xx: u64,
    /// Other I/O errors.
    pub io: u64,
}

impl ErrorCounts {
    /// Adds one error of `kind`.
    pub fn add(&mut self, kind: ErrorKind) {
        match kind {
            ErrorKind::Connect => self.connect += 1,
            ErrorKind::Timeout => self.timeout += 1,
            ErrorKind::Status4xx => self.status_4xx += 1,
            ErrorKind::Status5xx => self.status_5xx += 1,
            ErrorKind::Io => self.io += 1,
        }
    }

    /// Sum over all kinds.
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.status_4xx + self.status_5xx + self.io
    }

    /// Errors that produced no response (no latency recorded).
    pub fn without_response(&self) -> u64 {
        self.connect + self.timeout + self.io
    }

    fn merge(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.status_4xx += o.status_4xx;
        self.status_5xx += o.status_5xx;
        self.io += o.io;
    }
}

/// A fresh auto-resizing histogram of microseconds with 3 significant figures.
pub fn new_histogram() -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(3).expect("3 significant figures is valid");
    h.auto(true);
    h
}

/// Records `us` into an auto-resizing histogram (clamping only if growing is impossible).
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    if h.record(us).is_err() {
        h.saturating_record(us);
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
    /// Minimum.
    pub min: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Standard deviation.
    pub stdev: f64,
}

impl Latency {
    /// Percentiles of a histogram of microseconds, in milliseconds. All zero if empty.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            min: ms(h.min()),
            mean: h.mean() / 1000.0,
            stdev: h.stdev() / 1000.0,
        }
    }
}

/// Microseconds of a duration, at least 1 (the histogram's lowest value).
pub fn micros(d: Duration) -> u64 {
    (d.as_micros().min(u64::MAX as u128) as u64).max(1)
}

/// One second of the measured window (shared between workers).
#[derive(Debug, Clone)]
pub struct Second {
    /// Responses completed in this second.
    pub responses: u64,
    /// Errors in this second.
    pub errors: u64,
    /// Latencies (µs) of the responses completed in this second.
    pub hist: Histogram<u64>,
}

/// Per-second timeline shared by all workers; each worker flushes into it once per second.
pub type SharedTimeline = Arc<Mutex<Vec<Second>>>;

/// Per-worker recorder: lock-free on the hot path; the per-second bucket is flushed into the
/// shared timeline when the second changes and at the end.
#[derive(Debug)]
pub struct Recorder {
    /// All measured latencies (µs).
    pub hist: Histogram<u64>,
    /// Requests handed to the connection (measured window).
    pub sent: u64,
    /// Responses received (any status).
    pub responses: u64,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// Responses by status code.
    pub status: BTreeMap<u16, u64>,
    /// Open loop: requests that started after their intended time because the connection was
    /// still busy (their latency includes that wait).
    pub late: u64,
    /// Open loop: requests scheduled within the window that were never sent.
    pub unsent: u64,
    /// Progress not yet published to the shared counters.
    pub pending_done: u64,
    /// Progress (errors) not yet published.
    pub pending_failed: u64,
    /// When progress was last published.
    pub progress_flushed: tokio::time::Instant,
    cur_sec: u64,
    cur: Second,
    timeline: SharedTimeline,
}

impl Recorder {
    /// A recorder flushing its per-second data into `timeline`.
    pub fn new(timeline: SharedTimeline) -> Self {
        Self {
            hist: new_histogram(),
            sent: 0,
            responses: 0,
            errors: ErrorCounts::default(),
            status: BTreeMap::new(),
            late: 0,
            unsent: 0,
            pending_done: 0,
            pending_failed: 0,
            progress_flushed: tokio::time::Instant::now(),
            cur_sec: 0,
            cur: Second {
                responses: 0,
                errors: 0,
                hist: new_histogram(),
            },
            timeline,
        }
    }

    fn roll(&mut self, sec: u64) {
        if sec != self.cur_sec {
            self.flush();
            self.cur_sec = sec;
        }
    }

    /// Records a response with `status` and `latency`, completed `at` after the window start.
    pub fn response(&mut self, status: u16, latency: Duration, at: Duration) {
        self.roll(at.as_secs());
        let us = micros(latency);
        record_us(&mut self.hist, us);
        record_us(&mut self.cur.hist, us);
        self.responses += 1;
        self.cur.responses += 1;
        *self.status.entry(status).or_insert(0) += 1;
        let kind = match status {
            400..=499 => Some(ErrorKind::Status4xx),
            500..=599 => Some(ErrorKind::Status5xx),
            _ => None,
        };
        if let Some(k) = kind {
            self.errors.add(k);
            self.cur.errors += 1;
        }
    }

    /// Records a failure without a response.
    pub fn error(&mut self, kind: ErrorKind, at: Duration) {
        self.roll(at.as_secs());
        self.errors.add(kind);
        self.cur.errors += 1;
    }

    /// Moves the current second into the shared timeline.
    pub fn flush(&mut self) {
        if self.cur.responses == 0 && self.cur.errors == 0 {
            return;
        }
        let cur = std::mem::replace(
            &mut self.cur,
            Second {
                responses: 0,
                errors: 0,
                hist: new_histogram(),
            },
        );
        let mut tl = self.timeline.lock().unwrap_or_else(|p| p.into_inner());
        let idx = self.cur_sec as usize;
        while tl.len() <= idx {
            tl.push(Second {
                responses: 0,
                errors: 0,
                hist: new_histogram(),
            });
        }
        let slot = &mut tl[idx];
        slot.responses += cur.responses;
        slot.errors += cur.errors;
        let _ = slot.hist.add(&cur.hist);
    }

    /// Adds another recorder's totals (not its timeline, which is shared).
    pub fn merge(&mut self, o: &Recorder) {
        let _ = self.hist.add(&o.hist);
        self.sent += o.sent;
        self.responses += o.responses;
        self.errors.merge(&o.errors);
        for (k, v) in &o.status {
            *self.status.entry(*k).or_insert(0) += v;
        }
        self.late += o.late;
        self.unsent += o.unsent;
    }
}

/// One second in the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SecondReport {
    /// Second index from the start of the measured window.
    pub second: u64,
    /// Responses completed in that second (= throughput per second).
    pub responses: u64,
    /// Errors in that second.
    pub errors: u64,
    /// p99 latency of that second, ms.
    pub p99_ms: f64,
}

/// The final report of a load run; `--json` prints it as is.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `closed` or `open`.
    pub mode: String,
    /// Target URL.
    pub url: String,
    /// `http/1.1` or `h2c`.
    pub protocol: String,
    /// Connections.
    pub connections: usize,
    /// Asked rate (open loop).
    pub rate: Option<f64>,
    /// Length of the measured window in seconds (excluding warm-up).
    pub duration_s: f64,
    /// Requests that finished (responses + failures without response).
    pub requests: u64,
    /// Requests handed to a connection.
    pub sent: u64,
    /// Responses (any status).
    pub responses: u64,
    /// Errors of all kinds (including 4xx/5xx responses).
    pub errors: u64,
    /// Responses per second over the window.
    pub rps: f64,
    /// Latency percentiles (ms). Open loop: from the intended send time.
    pub latency_ms: Latency,
    /// Errors by kind.
    pub errors_by_kind: ErrorCounts,
    /// Responses by status code.
    pub status_counts: BTreeMap<String, u64>,
    /// Open loop: requests that could not start at their intended time.
    pub late: u64,
    /// Open loop: requests scheduled in the window but never sent.
    pub unsent: u64,
    /// Per-second throughput and p99.
    pub timeline: Vec<SecondReport>,
}

/// Everything needed to build a [`Report`] besides the recorded data.
#[derive(Debug, Clone)]
pub struct ReportMeta {
    /// `closed` or `open`.
    pub mode: String,
    /// Target URL.
    pub url: String,
    /// `http/1.1` or `h2c`.
    pub protocol: String,
    /// Connections.
    pub connections: usize,
    /// Asked rate.
    pub rate: Option<f64>,
}

impl Report {
    /// Builds the report from merged totals, the timeline and the window length.
    pub fn build(meta: ReportMeta, rec: &Recorder, timeline: &[Second], window: Duration) -> Self {
        let secs = window.as_secs_f64();
        Report {
            mode: meta.mode,
            url: meta.url,
            protocol: meta.protocol,
            connections: meta.connections,
            rate: meta.rate,
            duration_s: secs,
            requests: rec.responses + rec.errors.without_response(),
            sent: rec.sent,
            responses: rec.responses,
            errors: rec.errors.total(),
            rps: if secs > 0.0 {
                rec.responses as f64 / secs
            } else {
                0.0
            },
            latency_ms: Latency::from_histogram(&rec.hist),
            errors_by_kind: rec.errors,
            status_counts: rec
                .status
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            late: rec.late,
            unsent: rec.unsent,
            timeline: timeline
                .iter()
                .enumerate()
                .map(|(i, s)| SecondReport {
                    second: i as u64,
                    responses: s.responses,
                    errors: s.errors,
                    p99_ms: Latency::from_histogram(&s.hist).p99,
                })
                .collect(),
        }
    }

    /// The JSON document printed by `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("report serializes")
    }

    /// Human-readable summary.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} loop, {}, {} connections{} against {}",
            self.mode,
            self.protocol,
            self.connections,
            self.rate
                .map(|r| format!(", rate {r}/s"))
                .unwrap_or_default(),
            self.url
        );
        let _ = writeln!(
            s,
            "  {} requests in {:.2}s, {} responses, {} errors",
            self.requests, self.duration_s, self.responses, self.errors
        );
        let _ = writeln!(s, "  throughput: {:.1} req/s", self.rps);
        let l = &self.latency_ms;
        let _ = writeln!(
            s,
            "  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3}, stdev {:.3})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.stdev
        );
        let e = &self.errors_by_kind;
        let _ = writeln!(
            s,
            "  errors: connect {}, timeout {}, 4xx {}, 5xx {}, io {}",
            e.connect, e.timeout, e.status_4xx, e.status_5xx, e.io
        );
        if !self.status_counts.is_empty() {
            let codes: Vec<String> = self
                .status_counts
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(s, "  status: {}", codes.join(", "));
        }
        if self.mode == "open" {
            let _ = writeln!(
                s,
                "  open loop: {} sent, {} late (latency counted from intended send time), {} unsent",
                self.sent, self.late, self.unsent
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_uniform_distribution() {
        let mut h = new_histogram();
        // 1..=10000 µs, i.e. 0.001 .. 10 ms uniformly.
        for us in 1..=10_000u64 {
            h.record(us).unwrap();
        }
        let l = Latency::from_histogram(&h);
        let close = |a: f64, b: f64| (a - b).abs() / b < 0.002;
        assert!(close(l.p50, 5.0), "p50 {}", l.p50);
        assert!(close(l.p90, 9.0), "p90 {}", l.p90);
        assert!(close(l.p99, 9.9), "p99 {}", l.p99);
        assert!(close(l.p999, 9.99), "p999 {}", l.p999);
        assert!(close(l.max, 10.0), "max {}", l.max);
        assert!(close(l.mean, 5.0005), "mean {}", l.mean);
    }

    #[test]
    fn tail_is_visible_with_three_significant_figures() {
        let mut h = new_histogram();
        for _ in 0..990 {
            h.record(1_000).unwrap(); // 1 ms
        }
        for _ in 0..10 {
            h.record(2_000_000).unwrap(); // 2 s stall
        }
        let l = Latency::from_histogram(&h);
        assert!((l.p50 - 1.0).abs() < 0.01);
        assert!((l.p90 - 1.0).abs() < 0.01);
        // 99% of values are 1 ms: p99 is still 1 ms, p99.9 sees the stall.
        assert!((l.p99 - 1.0).abs() < 0.01);
        assert!((l.p999 - 2000.0).abs() / 2000.0 < 0.001, "{}", l.p999);
        assert!((l.max - 2000.0).abs() / 2000.0 < 0.001);
    }

    #[test]
    fn empty_histogram_reports_zeroes() {
        assert_eq!(
            Latency::from_histogram(&new_histogram()),
            Latency::default()
        );
    }

    #[test]
    fn recorder_counts_statuses_errors_and_timeline() {
        let tl: SharedTimeline = Arc::default();
        let mut r = Recorder::new(tl.clone());
        r.response(200, Duration::from_millis(1), Duration::from_millis(100));
        r.response(404, Duration::from_millis(2), Duration::from_millis(200));
        r.response(503, Duration::from_millis(3), Duration::from_millis(1500));
        r.error(ErrorKind::Timeout, Duration::from_millis(2500));
        r.error(ErrorKind::Io, Duration::from_millis(2600));
        r.flush();
        assert_eq!(r.responses, 3);
        assert_eq!(
            r.errors,
            ErrorCounts {
                connect: 0,
                timeout: 1,
                status_4xx: 1,
                status_5xx: 1,
                io: 1
            }
        );
        let tl = tl.lock().unwrap();
        assert_eq!(tl.len(), 3);
        assert_eq!((tl[0].responses, tl[0].errors), (2, 1));
        assert_eq!((tl[1].responses, tl[1].errors), (1, 1));
        assert_eq!((tl[2].responses, tl[2].errors), (0, 2));
    }

    #[test]
    fn json_has_contract_fields() {
        let tl: SharedTimeline = Arc::default();
        let mut r = Recorder::new(tl.clone());
        for i in 1..=100u64 {
            r.response(200, Duration::from_millis(i), Duration::from_millis(10 * i));
        }
        r.error(ErrorKind::Connect, Duration::from_millis(5));
        r.sent = 100;
        r.flush();
        let meta = ReportMeta {
            mode: "closed".into(),
            url: "http://x/".into(),
            protocol: "http/1.1".into(),
            connections: 4,
            rate: None,
        };
        let rep = Report::build(meta, &r, &tl.lock().unwrap(), Duration::from_secs(2));
        let j = rep.to_json();
        assert_eq!(j["requests"], 101);
        assert_eq!(j["errors"], 1);
        assert_eq!(j["rps"], 50.0);
        assert_eq!(j["mode"], "closed");
        assert_eq!(j["duration_s"], 2.0);
        assert_eq!(j["errors_by_kind"]["connect"], 1);
        assert_eq!(j["status_counts"]["200"], 100);
        let p99 = j["latency_ms"]["p99"].as_f64().unwrap();
        assert!((p99 - 99.0).abs() < 0.1, "{p99}");
        for k in ["p50", "p90", "p999", "max"] {
            assert!(j["latency_ms"][k].as_f64().unwrap() > 0.0, "{k}");
        }
        // Responses completed at 10 ms .. 1000 ms: seconds 0 and 1.
        assert_eq!(j["timeline"].as_array().unwrap().len(), 2);
        assert!(rep.to_text().contains("p99 99.0"));
    }
}
