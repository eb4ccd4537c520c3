//! Accept loop, per-connection tasks and graceful shutdown.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::activate::Activator;
use crate::conn::Limiter;
use crate::pool::Pool;
use crate::routes::RoutesHandle;
use crate::state::{Phase, ProxyOptions, Shared, Stats};
use crate::tls::TlsHandle;
use crate::workers::Workers;

/// HTTP/2 streams a client may open and reset before the server accepted them.
const H2_MAX_PENDING_RESETS: usize = 20;
/// HTTP/2 streams the server may reset because of client errors on one connection.
const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// What happened during [`serve`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeReport {
    /// Client connections accepted.
    pub connections: u64,
    /// Requests finished (every status, error pages included).
    pub requests: u64,
    /// Requests that finished after shutdown began.
    pub completed_during_drain: u64,
    /// Connections and tunnels still open when `grace` ran out, closed by force.
    pub forced_closes: u64,
    /// Connections closed at accept: over `max_connections_per_client` or `max_connections`,
    /// or accepted from the spare descriptor while the process was out of descriptors.
    pub refused: u64,
    /// Connections closed by the header-read or idle timeout (TLS handshakes included).
    pub timed_out: u64,
    /// TLS handshakes that failed (no certificate for the name, protocol version, garbage).
    pub tls_failed: u64,
}

/// Where the proxy accepts clients.
#[derive(Debug, Default)]
pub struct Listeners {
    /// Plain HTTP (HTTP/1.1 and h2c).
    pub plain: Option<TcpListener>,
    /// TLS (ALPN `h2` and `http/1.1`) with its certificates.
    pub tls: Option<(TcpListener, Arc<TlsHandle>)>,
}

/// [`serve_listeners`] with one plain listener.
pub async fn serve<A: Activator>(
    listener: TcpListener,
    routes: Arc<RoutesHandle>,
    activator: Arc<A>,
    opts: ProxyOptions,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> std::io::Result<ServeReport> {
    let listeners = Listeners {
        plain: Some(listener),
        tls: None,
    };
    serve_listeners(listeners, routes, activator, opts, shutdown, grace).await
}

/// Serves until `shutdown` resolves; then stops accepting (the listeners are closed at once),
/// lets in-flight requests, connections and upgraded tunnels finish for up to `grace`
/// (HTTP/1 keep-alive connections close after their current response, HTTP/2 ones get a
/// GOAWAY), then force-closes what is left and returns.
pub async fn serve_listeners<A: Activator>(
    listeners: Listeners,
    routes: Arc<RoutesHandle>,
    activator: Arc<A>,
    opts: ProxyOptions,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> std::io::Result<ServeReport> {
    let https_port = match &listeners.tls {
        Some((l, _)) => l.local_addr()?.port(),
        None => 443,
    };
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let activator: Arc<dyn Activator> = activator;
    let stats = Arc::new(Stats::default());
    let tracker = TaskTracker::new();
    let worker_count = opts.workers.max(1);
    let pools: Arc<[Arc<Pool>]> = (0..worker_count)
        .map(|_| Pool::new(opts.max_idle_per_upstream, opts.idle_conn_timeout))
        .collect();
    let shared: Vec<Arc<Shared>> = pools
        .iter()
        .map(|pool| {
            Arc::new(Shared {
                activator: Arc::clone(&activator),
                routes: Arc::clone(&routes),
                pool: Arc::clone(pool),
                pools: Arc::clone(&pools),
                opts: opts.clone(),
                stats: Arc::clone(&stats),
                phase: phase_rx.clone(),
                tracker: tracker.clone(),
                https_port,
            })
        })
        .collect();

    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's header_read_timeout is off: it starts only after `auto` saw the first bytes and
    // would also cut idle keep-alive connections at the header timeout; `conn::Activity`
    // times both.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(opts.h2_max_concurrent_streams)
        .max_header_list_size(opts.max_header_list_size)
        // Rapid reset (CVE-2023-44487) and streams the client makes the server reset: a
        // connection over either budget gets a GOAWAY.
        .max_pending_accept_reset_streams(Some(H2_MAX_PENDING_RESETS))
        .max_local_error_reset_streams(Some(H2_MAX_LOCAL_ERROR_RESETS));
    let builder = Arc::new(builder);

    // Often enough that connections pooled over the cap (kept `SURPLUS_IDLE`) go soon after
    // the concurrency that needed them.
    let reap_every =
        (opts.idle_conn_timeout / 2).clamp(Duration::from_millis(100), crate::pool::SURPLUS_IDLE);
    let workers = Workers::start(shared, &builder, reap_every)?;

    let limiter = Limiter::new(opts.max_connections_per_client, opts.max_connections);
    let plain = async {
        match listeners.plain {
            Some(l) => crate::accept::run(l, None, &stats, &workers, &limiter).await,
            None => std::future::pending().await,
        }
    };
    let tls = async {
        match listeners.tls {
            Some((l, handle)) => {
                crate::accept::run(l, Some(handle), &stats, &workers, &limiter).await
            }
            None => std::future::pending().await,
        }
    };
    // The accept loops never end by themselves; shutdown drops them, closing the listeners.
    tokio::select! {
        biased;
        () = shutdown => {}
        _ = futures_util::future::join(plain, tls) => {}
    }
    stats.draining.store(true, Ordering::SeqCst);
    let _ = phase_tx.send(Phase::Draining);
    // No new connection task from here on; tunnels of requests still in flight may join.
    tracker.close();
    tracing::info!(grace_ms = grace.as_millis() as u64, "proxy draining");

    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        let _ = phase_tx.send(Phase::Force);
        tracing::warn!("grace period over, closing remaining connections");
        // Tasks notice the phase change at their next poll; give them a moment to unwind.
        let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
    }
    // Idle upstream connections close with their workers.
    workers.stop(Duration::from_secs(5)).await;

    let s = &stats;
    let report = ServeReport {
        connections: s.connections.load(Ordering::Relaxed),
        requests: s.requests.load(Ordering::Relaxed),
        completed_during_drain: s.completed_during_drain.load(Ordering::Relaxed),
        forced_closes: s.forced_closes.load(Ordering::Relaxed),
        refused: s.refused.load(Ordering::Relaxed),
        timed_out: s.timed_out.load(Ordering::Relaxed),
        tls_failed: s.tls_failed.load(Ordering::Relaxed),
    };
    tracing::info!(?report, "proxy stopped");
    Ok(report)
}
