//! One client connection: the TLS handshake (bounded by the header timeout), then HTTP/1.1 or
//! HTTP/2 served by hyper until the client leaves, a timer fires or shutdown forces it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::conn::{Activity, Slot, Watched};
use crate::state::{wait_phase, Phase, Shared};
use crate::wake::OnWake;
use crate::workers::Load;

pub(crate) type Builder = auto::Builder<TokioExecutor>;

/// Spawns the task of an accepted connection on the current (worker) runtime; `tls` is the
/// acceptor of a TLS listener.
pub(crate) fn spawn(
    shared: &Arc<Shared>,
    builder: &Arc<Builder>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    tls: Option<tokio_rustls::TlsAcceptor>,
    load: Load,
) {
    let shared = Arc::clone(shared);
    let builder = Arc::clone(builder);
    let tracker = shared.tracker.clone();
    tracker.spawn(async move {
        let _slot = slot;
        let _load = load;
        let _ = stream.set_nodelay(true);
        match tls {
            None => serve(&shared, &builder, stream, peer, false).await,
            Some(acceptor) => {
                // A handshake that stalls holds only this task (no worker thread): it is
                // dropped at the header timeout, or when shutdown begins.
                let mut phase = shared.phase.clone();
                let timeout = shared.opts.header_read_timeout;
                let handshake = tokio::time::timeout(timeout, acceptor.accept(stream));
                let stream = tokio::select! {
                    done = handshake => match done {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            shared.stats.tls_failed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, %error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            shared.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    },
                    () = wait_phase(&mut phase, Phase::Draining) => return,
                };
                serve(&shared, &builder, stream, peer, true).await;
            }
        }
    });
}

/// Serves HTTP on an established (plain or TLS) connection.
async fn serve<I>(shared: &Arc<Shared>, builder: &Builder, stream: I, peer: SocketAddr, https: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut drain_rx = shared.phase.clone();
    let mut force_rx = shared.phase.clone();
    let activity = Activity::new(
        shared.opts.header_read_timeout,
        shared.opts.client_idle_timeout,
    );
    let svc_shared = Arc::clone(shared);
    let svc_activity = Arc::clone(&activity);
    let client = crate::forward::Client::new(peer, https);
    let svc = service_fn(move |req| {
        crate::forward::handle(
            Arc::clone(&svc_shared),
            Arc::clone(&client),
            svc_activity.begin(),
            req,
        )
    });
    let io = TokioIo::new(Watched::new(stream, Arc::clone(&activity)));
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let mut draining = false;
    // Created once (re-created in every turn of the loop they would register with the shared
    // phase channel, a lock every connection contends for, several times per request), and
    // polled only when their own waker fired: the task is woken several times per request,
    // by the client and by the upstream.
    let mut drain = OnWake::new(Box::pin(wait_phase(&mut drain_rx, Phase::Draining)));
    let mut force = OnWake::new(Box::pin(wait_phase(&mut force_rx, Phase::Force)));
    let mut timer = OnWake::new(Box::pin(tokio::time::sleep_until(
        activity.next_check(tokio::time::Instant::now()),
    )));
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(error) = res {
                    tracing::debug!(%peer, %error, "client connection ended with error");
                }
                break;
            }
            () = &mut timer => {
                let now = tokio::time::Instant::now();
                match activity.deadline() {
                    Some(at) if at <= now => {
                        shared.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                        let why = if activity.is_between_requests() {
                            "idle timeout"
                        } else {
                            "header read timeout"
                        };
                        tracing::debug!(%peer, why, "client connection closed");
                        break;
                    }
                    _ => timer.get_mut().as_mut().reset(activity.next_check(now)),
                }
            }
            () = &mut drain, if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = &mut force => {
                shared.stats.forced_closes.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "client connection force-closed");
                break;
            }
        }
    }
}
