//! hako-bench: an HTTP load generator (closed and open loop, HTTP/1.1 and h2c, HDR histograms,
//! coordinated-omission-corrected latencies) with scenarios that know hako (cold starts, bursts,
//! noisy neighbours, density, launcher comparison) and a Prometheus scrape for deltas.
#![forbid(unsafe_code)]

pub mod cli;
pub mod duration;
pub mod engine;
pub mod h1;
pub mod prom;
pub mod report;
pub mod scenarios;
pub mod svg;
