//! A load run's spec (connections, stop condition, rate) and the open-loop schedule: when
//! each request is due and which worker sends it.
use std::time::Duration;

use super::request::{RequestSpec, Target};

/// When the run stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// After this long (measured window, excluding warm-up).
    Duration(Duration),
    /// After this many requests (excluding warm-up).
    Requests(u64),
}

/// A load run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Original URL (for the report).
    pub url: String,
    /// Resolved target.
    pub target: Target,
    /// Request shape.
    pub request: RequestSpec,
    /// Connections.
    pub connections: usize,
    /// HTTP/2 concurrent streams per connection (1 for HTTP/1.1).
    pub streams: usize,
    /// When to stop.
    pub stop: Stop,
    /// Open loop rate per second (None = closed loop).
    pub rate: Option<f64>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Warm-up, excluded from results.
    pub warmup: Duration,
    /// Print a live progress line on stderr (only when stdout is a terminal).
    pub progress: bool,
}

impl LoadSpec {
    /// A closed-loop spec with defaults (GET, 1 connection, 10 s, timeout 10 s).
    pub fn new(url: &str, target: Target) -> Self {
        Self {
            url: url.to_string(),
            target,
            request: RequestSpec::default(),
            connections: 1,
            streams: 1,
            stop: Stop::Duration(Duration::from_secs(10)),
            rate: None,
            timeout: Duration::from_secs(10),
            warmup: Duration::ZERO,
            progress: false,
        }
    }

    pub(super) fn workers(&self) -> usize {
        let streams = if self.request.http2 {
            self.streams.max(1)
        } else {
            1
        };
        self.connections.max(1) * streams
    }
}

/// Open loop schedule: intended offset (from the schedule start) of global request `i`.
pub fn intended_offset(i: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// Open loop schedule: the request indices worker `k` of `workers` owns, below `limit`.
pub fn worker_indices(k: usize, workers: usize, limit: u64) -> impl Iterator<Item = u64> {
    (k as u64..limit).step_by(workers.max(1))
}

/// Number of requests in an open-loop window of `secs` seconds at `rate` (those with an intended
/// time strictly inside the window).
pub fn scheduled_in(window: Duration, rate: f64) -> u64 {
    (window.as_secs_f64() * rate).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_evenly_spaced_and_partitioned() {
        let rate = 2000.0;
        assert_eq!(intended_offset(0, rate), Duration::ZERO);
        assert_eq!(intended_offset(2000, rate), Duration::from_secs(1));
        assert_eq!(intended_offset(1, rate), Duration::from_micros(500));
        // 3 workers own disjoint, complete sets of indices.
        let mut all: Vec<u64> = (0..3).flat_map(|k| worker_indices(k, 3, 10)).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(worker_indices(1, 3, 10).collect::<Vec<_>>(), vec![1, 4, 7]);
        assert_eq!(scheduled_in(Duration::from_secs(2), 2000.0), 4000);
        assert_eq!(scheduled_in(Duration::from_millis(1), 1500.0), 2);
    }
}
