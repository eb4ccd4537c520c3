//! Accept loop, per-connection tasks and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::activate::Activator;
use crate::conn::{Activity, Limiter, RateLimitedLog, Refusal, Slot, Watched};
use crate::pool::Pool;
use crate::routes::RoutesHandle;
use crate::state::{wait_phase, Phase, ProxyOptions, Shared, Stats};

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
    /// Connections closed by the header-read or idle timeout.
    pub timed_out: u64,
}

/// Serves until `shutdown` resolves; then stops accepting (the listener is closed at once),
/// lets in-flight requests, connections and upgraded tunnels finish for up to `grace`
/// (HTTP/1 keep-alive connections close after their current response, HTTP/2 ones get a
/// GOAWAY), then force-closes what is left and returns.
pub async fn serve<A: Activator>(
    listener: TcpListener,
    routes: Arc<RoutesHandle>,
    activator: Arc<A>,
    opts: ProxyOptions,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> std::io::Result<ServeReport> {
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let pool = Pool::new(opts.max_idle_per_upstream, opts.idle_conn_timeout);
    let activator: Arc<dyn Activator> = activator;
    let shared = Arc::new(Shared {
        activator,
        routes,
        pool: Arc::clone(&pool),
        opts: opts.clone(),
        stats: Stats::default(),
        phase: phase_rx,
        tracker: TaskTracker::new(),
    });

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
        .timer(TokioTimer::new());
    let builder = Arc::new(builder);

    let reap_every =
        (opts.idle_conn_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
    let reaper = {
        let pool = Arc::clone(&pool);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(reap_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                pool.reap();
            }
        })
    };

    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, "proxy listening");
    let limiter = Limiter::new(opts.max_connections_per_client, opts.max_connections);
    // One descriptor kept in reserve: out of descriptors, it is given up to accept the
    // waiting connection and close it at once, instead of leaving clients hanging in the
    // backlog while the accept loop retries.
    let mut spare = open_spare();
    let mut out_of_fds_log =
        RateLimitedLog::new("accept: out of file descriptors; connections closed at accept");
    let mut accept_error_log = RateLimitedLog::new("accept failed");
    let mut refused_log = RateLimitedLog::new("client connection refused at accept");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
                    match limiter.admit(peer.ip()) {
                        Ok(slot) => spawn_connection(&shared, &builder, stream, peer, slot),
                        Err(why) => {
                            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                            let what = match why {
                                Refusal::PerClient => "max_connections_per_client reached",
                                Refusal::Total => "max_connections reached",
                            };
                            refused_log.hit(&format_args!("{what} (last from {})", peer.ip()));
                            drop(stream);
                        }
                    }
                }
                Err(error) if is_out_of_fds(&error) => {
                    out_of_fds_log.hit(&error);
                    match spare.take() {
                        Some(file) => {
                            drop(file);
                            // The connection that could not be accepted is still queued: take
                            // it with the freed descriptor and close it.
                            if let Some(Ok((stream, _))) = listener.accept().now_or_never() {
                                shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                                drop(stream);
                            }
                            spare = open_spare();
                        }
                        None => spare = open_spare(),
                    }
                    if spare.is_none() {
                        // Not even one descriptor came back: wait for connections to close
                        // rather than spin on accept.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Err(error) => {
                    // ECONNABORTED, ENOBUFS and friends: log, back off briefly, go on.
                    accept_error_log.hit(&error);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
    drop(listener);
    shared.stats.draining.store(true, Ordering::SeqCst);
    let _ = phase_tx.send(Phase::Draining);
    // No new connection task from here on; tunnels of requests still in flight may join.
    shared.tracker.close();
    tracing::info!(grace_ms = grace.as_millis() as u64, "proxy draining");

    if tokio::time::timeout(grace, shared.tracker.wait())
        .await
        .is_err()
    {
        let _ = phase_tx.send(Phase::Force);
        tracing::warn!("grace period over, closing remaining connections");
        // Tasks notice the phase change at their next poll; give them a moment to unwind.
        let _ = tokio::time::timeout(Duration::from_secs(1), shared.tracker.wait()).await;
    }
    reaper.abort();
    pool.purge_all();

    let s = &shared.stats;
    let report = ServeReport {
        connections: s.connections.load(Ordering::Relaxed),
        requests: s.requests.load(Ordering::Relaxed),
        completed_during_drain: s.completed_during_drain.load(Ordering::Relaxed),
        forced_closes: s.forced_closes.load(Ordering::Relaxed),
        refused: s.refused.load(Ordering::Relaxed),
        timed_out: s.timed_out.load(Ordering::Relaxed),
    };
    tracing::info!(?report, "proxy stopped");
    Ok(report)
}

/// `EMFILE` (process) or `ENFILE` (system): out of file descriptors (Linux numbers).
fn is_out_of_fds(error: &std::io::Error) -> bool {
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    matches!(error.raw_os_error(), Some(EMFILE | ENFILE))
}

/// The reserve descriptor (see the accept loop).
fn open_spare() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

fn spawn_connection(
    shared: &Arc<Shared>,
    builder: &Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
) {
    let shared = Arc::clone(shared);
    let builder = Arc::clone(builder);
    let tracker = shared.tracker.clone();
    tracker.spawn(async move {
        let _slot = slot;
        let _ = stream.set_nodelay(true);
        let mut drain_rx = shared.phase.clone();
        let mut force_rx = shared.phase.clone();
        let activity = Activity::new(
            shared.opts.header_read_timeout,
            shared.opts.client_idle_timeout,
        );
        let svc_shared = Arc::clone(&shared);
        let svc_activity = Arc::clone(&activity);
        let svc = service_fn(move |req| {
            crate::forward::handle(Arc::clone(&svc_shared), peer, svc_activity.begin(), req)
        });
        let io = TokioIo::new(Watched::new(stream, Arc::clone(&activity)));
        let conn = builder.serve_connection_with_upgrades(io, svc);
        tokio::pin!(conn);
        let mut draining = false;
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        let mut deadline = activity.deadline();
        if let Some(at) = deadline {
            timer.as_mut().reset(at);
        }
        loop {
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(error) = res {
                        tracing::debug!(%peer, %error, "client connection ended with error");
                    }
                    break;
                }
                () = activity.changed() => {
                    deadline = activity.deadline();
                    if let Some(at) = deadline {
                        timer.as_mut().reset(at);
                    }
                }
                () = timer.as_mut(), if deadline.is_some() => {
                    deadline = activity.deadline();
                    match deadline {
                        Some(at) if at <= tokio::time::Instant::now() => {
                            shared.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                            let why = if activity.is_between_requests() {
                                "idle timeout"
                            } else {
                                "header read timeout"
                            };
                            tracing::debug!(%peer, why, "client connection closed");
                            break;
                        }
                        Some(at) => timer.as_mut().reset(at),
                        None => {}
                    }
                }
                () = wait_phase(&mut drain_rx, Phase::Draining), if !draining => {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                () = wait_phase(&mut force_rx, Phase::Force) => {
                    shared.stats.forced_closes.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "client connection force-closed");
                    break;
                }
            }
        }
    });
}
