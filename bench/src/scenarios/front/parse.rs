//! Reading the load generators' output (wrk, h2load) and hako's own log percentiles.
use std::path::Path;

use super::percentile;

/// Parses a wrk duration (`712.00us`, `1.70ms`, `2.00s`) into ms.
pub fn wrk_ms(s: &str) -> Option<f64> {
    let (num, scale) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

/// wrk --latency output: (req/s, p50 ms, p99 ms, requests).
pub fn parse_wrk(text: &str) -> Option<(f64, f64, f64, u64)> {
    let mut rps = None;
    let (mut p50, mut p99, mut n) = (None, None, None);
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            ["Requests/sec:", v] => rps = v.parse().ok(),
            ["50%", v] => p50 = wrk_ms(v),
            ["99%", v] => p99 = wrk_ms(v),
            [count, "requests", "in", ..] => n = count.parse().ok(),
            _ => {}
        }
    }
    Some((rps?, p50?, p99?, n?))
}

/// h2load's summary: (finished seconds, req/s, succeeded requests, protocol/cipher note).
pub fn parse_h2load(text: &str) -> Option<(f64, f64, u64, String)> {
    let mut fin = None;
    let mut ok = None;
    let mut note = Vec::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("finished in ") {
            let mut it = rest.split(", ");
            let secs = wrk_ms(it.next()?)? / 1000.0;
            let rps = it.next()?.trim_end_matches(" req/s").parse::<f64>().ok()?;
            fin = Some((secs, rps));
        } else if let Some(rest) = l.strip_prefix("requests: ") {
            ok = rest
                .split(", ")
                .find_map(|p| p.strip_suffix(" succeeded"))
                .and_then(|v| v.parse::<u64>().ok());
        } else if l.starts_with("TLS Protocol:")
            || l.starts_with("Cipher:")
            || l.starts_with("Application protocol:")
        {
            note.push(l.trim().to_string());
        }
    }
    let (secs, rps) = fin?;
    Some((secs, rps, ok?, note.join(" ")))
}

/// p50 and p99 (ms) of an h2load --log-file (third column: µs until the end of the response).
pub(super) fn log_percentiles(path: &Path) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut v: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect();
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| (percentile(&v, 0.5), percentile(&v, 0.99)))
}
