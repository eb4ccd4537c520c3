//! The load engine: one task per connection (or per HTTP/2 stream), closed or open loop.
//!
//! Open loop follows wrk2: request `i` (over all workers) has the intended send time
//! `t0 + i / rate`; worker `k` of `W` sends requests `k, k+W, k+2W, ...`. Latency is measured
//! from the intended send time, so a stalled server shows up in the latencies instead of
//! silently lowering the sending rate (no coordinated omission).
//!
//! By concern: [`request`] (target, request shape, prepared template), [`conn`] (connections
//! and single exchanges), [`schedule`] (the run's spec and the open-loop schedule), [`run`]
//! (starting the workers and building the report), [`workers`] (the closed- and open-loop
//! worker loops and their recording).
mod conn;
mod request;
mod run;
mod schedule;
mod workers;

pub use conn::{connect, exchange, get_body, one_shot, Conn};
pub use request::{parse_header, serialize_h1, RequestSpec, Target, Template};
pub use run::{run_load, run_load_detailed};
pub use schedule::{intended_offset, scheduled_in, worker_indices, LoadSpec, Stop};

/// Errors before any load is generated (bad URL, header, ...).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The URL cannot be used.
    #[error("invalid URL {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why.
        reason: String,
    },
    /// The host name does not resolve.
    #[error("cannot resolve {authority:?}: {source}")]
    Resolve {
        /// host:port.
        authority: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A `-H` header is malformed.
    #[error("invalid header {header:?}: expected 'Name: value'")]
    Header {
        /// The header as given.
        header: String,
    },
    /// A request option is out of range.
    #[error("invalid option {what}: {reason}")]
    Option {
        /// Which option.
        what: &'static str,
        /// Why.
        reason: String,
    },
}
