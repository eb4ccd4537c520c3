//! The accept loop of one listener (plain or TLS): connection limits, descriptor exhaustion,
//! transient accept errors.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::net::TcpListener;

use crate::conn::{Limiter, RateLimitedLog, Refusal};
use crate::state::Stats;
use crate::tls::TlsHandle;
use crate::workers::Workers;

/// Accepts on `listener` until the future is dropped (shutdown closes the listener with it).
pub(crate) async fn run(
    listener: TcpListener,
    tls: Option<Arc<TlsHandle>>,
    stats: &Stats,
    workers: &Workers,
    limiter: &Arc<Limiter>,
) {
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, tls = tls.is_some(), "proxy listening");
    // One descriptor kept in reserve: out of descriptors, it is given up to accept the
    // waiting connection and close it at once, instead of leaving clients hanging in the
    // backlog while the accept loop retries.
    let mut spare = open_spare();
    let mut out_of_fds_log =
        RateLimitedLog::new("accept: out of file descriptors; connections closed at accept");
    let mut accept_error_log = RateLimitedLog::new("accept failed");
    let mut refused_log = RateLimitedLog::new("client connection refused at accept");
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                stats.connections.fetch_add(1, Ordering::Relaxed);
                match limiter.admit(peer.ip()) {
                    Ok(slot) => {
                        // The acceptor is taken per connection: a reload's certificates apply
                        // to the next handshake.
                        let acceptor = tls.as_ref().map(|t| t.acceptor());
                        workers.dispatch(stream, peer, slot, acceptor)
                    }
                    Err(why) => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
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
                        // The connection that could not be accepted is still queued: take it
                        // with the freed descriptor and close it.
                        if let Some(Ok((stream, _))) = listener.accept().now_or_never() {
                            stats.refused.fetch_add(1, Ordering::Relaxed);
                            drop(stream);
                        }
                        spare = open_spare();
                    }
                    None => spare = open_spare(),
                }
                if spare.is_none() {
                    // Not even one descriptor came back: wait for connections to close rather
                    // than spin on accept.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(error) => {
                // ECONNABORTED, ENOBUFS and friends: log, back off briefly, go on.
                accept_error_log.hit(&error);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
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
