//! State shared by the accept loop, the connection tasks and every request of one
//! [`serve`](crate::serve) call: options, counters, the shutdown phase and the task tracker.
//! A leaf of the crate's module graph above `pool` and `routes`: the server, the request
//! path and the response body all depend on it, it depends on none of them.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::activate::Activator;
use crate::pool::Pool;
use crate::routes::RoutesHandle;

/// Tunables of [`serve`].
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Time a client has to send a complete request head: from accept until its first
    /// request (HTTP/1 and HTTP/2), and from the first byte of each later HTTP/1 request head.
    /// The connection is closed when it runs out. Default 10 s.
    pub header_read_timeout: Duration,
    /// A client connection with no request in flight (HTTP/2: no open stream) for this long
    /// after its last response ended is closed. Default 60 s.
    pub client_idle_timeout: Duration,
    /// Open connections one client address may hold; further ones are closed at accept.
    /// Default 1024.
    pub max_connections_per_client: usize,
    /// Open client connections in all; further ones are closed at accept. Default unlimited
    /// (`usize::MAX`); `hako serve` sets it below its open-files limit.
    pub max_connections: usize,
    /// Time without progress before the proxy gives up on an exchange with an app: to
    /// connect; to take the next bytes of the request body or, once the body is sent, to send
    /// the response head (504). Each body byte that goes out starts the time again, so an
    /// upload of any length at a steady pace passes. If the wait was for the client's body
    /// (the client stalled its upload) the answer is 408 and the connection is closed; the
    /// rest of a body the app already answered is dropped after this long without progress.
    /// Default 60 s.
    pub upstream_timeout: Duration,
    /// Idle keep-alive connections kept per upstream instance (per worker) for
    /// `idle_conn_timeout`. Up to 16 times as many more, those a higher concurrency just
    /// used, are kept for 2 s, so that a steady concurrency above this reuses its
    /// connections instead of opening one per request. Default 32; 0 disables pooling.
    pub max_idle_per_upstream: usize,
    /// Idle pooled connections older than this are closed. Default 90 s.
    pub idle_conn_timeout: Duration,
    /// HTTP/2: streams one client connection may have open at once. Default 128.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: largest request header list (decoded, RFC 9113 §6.5.2) accepted. Default 64 KiB.
    pub max_header_list_size: u32,
    /// Proxy worker threads, each with its own single-threaded runtime and upstream pool; a
    /// client connection, its requests and the upstream connections they use all run on one
    /// of them. A new connection goes to the first worker that was less than half busy over
    /// the last 100 ms, else to the least busy (see `workers.rs`). Default: the CPUs available to the process
    /// (`std::thread::available_parallelism`). `0` is taken as 1.
    pub workers: usize,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            header_read_timeout: Duration::from_secs(10),
            client_idle_timeout: Duration::from_secs(60),
            max_connections_per_client: 1024,
            max_connections: usize::MAX,
            upstream_timeout: Duration::from_secs(60),
            max_idle_per_upstream: 32,
            idle_conn_timeout: Duration::from_secs(90),
            h2_max_concurrent_streams: 128,
            max_header_list_size: 64 << 10,
            workers: default_workers(),
        }
    }
}

/// The CPUs this process may run on (affinity and cgroup quota included), at least 1.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Running,
    Draining,
    Force,
}

/// Resolves once the phase is at least `at_least` (or `serve` is gone).
pub(crate) async fn wait_phase(rx: &mut watch::Receiver<Phase>, at_least: Phase) {
    let _ = rx.wait_for(|p| *p >= at_least).await.map(|_| ());
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) connections: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) completed_during_drain: AtomicU64,
    pub(crate) forced_closes: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) tls_failed: AtomicU64,
    pub(crate) draining: AtomicBool,
}

/// State of one proxy worker, shared by its connections and requests; everything but `pool`
/// is common to every worker of one [`serve`] call.
pub(crate) struct Shared {
    pub(crate) activator: Arc<dyn Activator>,
    pub(crate) routes: Arc<RoutesHandle>,
    /// This worker's upstream connections (used only on its thread).
    pub(crate) pool: Arc<Pool>,
    /// The pools of every worker, this one's included.
    pub(crate) pools: Arc<[Arc<Pool>]>,
    pub(crate) opts: ProxyOptions,
    pub(crate) stats: Arc<Stats>,
    pub(crate) phase: watch::Receiver<Phase>,
    /// Connection and tunnel tasks; closed when shutdown begins, waited for during the grace.
    pub(crate) tracker: TaskTracker,
    /// Port of the TLS listener, for `redirect_https` (443 when there is none).
    pub(crate) https_port: u16,
}

impl Shared {
    /// The upstream `id` failed (refused, reset, closed early): its pooled connections are
    /// dropped (in every worker) and the supervisor is told.
    pub(crate) fn upstream_failed(&self, id: u64, error: &std::io::Error) {
        self.purge(id);
        self.activator.upstream_failed(id, error);
    }

    /// Drops every pooled connection to `id`, in every worker.
    pub(crate) fn purge(&self, id: u64) {
        for pool in self.pools.iter() {
            pool.purge(id);
        }
    }
}
