//! The proxy's worker threads: each runs a single-threaded tokio runtime with its own upstream
//! connection pool. The accept loops hand every admitted client connection to the least
//! loaded worker; from then on the connection, its requests, the pooled upstream connections
//! they use and the tasks driving them all stay on that worker's thread, so a proxied request
//! wakes no other thread (the cross-thread wake-ups of a shared multi-thread runtime were
//! most of hako's CPU per request).
//!
//! Connection limits, counters, the shutdown phase, the task tracker, routes and certificates
//! are shared by all workers; only the pools are per worker.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::conn::Slot;
use crate::connection::{self, Builder};
use crate::pool::Pool;
use crate::state::Shared;

/// A client connection on its way from an accept loop to a worker.
struct Handoff {
    /// Deregistered from the accept loop's runtime; registered again on the worker's.
    stream: std::net::TcpStream,
    peer: SocketAddr,
    slot: Slot,
    tls: Option<tokio_rustls::TlsAcceptor>,
    load: Load,
}

/// One client connection counted against its worker until dropped.
pub(crate) struct Load(Arc<AtomicUsize>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Worker {
    tx: mpsc::UnboundedSender<Handoff>,
    open: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

/// The running workers of one `serve` call.
pub(crate) struct Workers {
    workers: Vec<Worker>,
}

impl Workers {
    /// Starts one thread per entry of `shared` (the state of each worker, its pool included).
    pub(crate) fn start(
        shared: Vec<Arc<Shared>>,
        builder: &Arc<Builder>,
        reap_every: Duration,
    ) -> std::io::Result<Workers> {
        // Worker threads inherit the caller's span (`hako serve` puts the node name on it).
        let span = tracing::Span::current();
        let mut workers = Vec::with_capacity(shared.len());
        for (index, shared) in shared.into_iter().enumerate() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, rx) = mpsc::unbounded_channel();
            let (stop_tx, stop_rx) = oneshot::channel();
            let (done_tx, done_rx) = oneshot::channel();
            let builder = Arc::clone(builder);
            let span = span.clone();
            std::thread::Builder::new()
                .name(format!("hako-proxy-{index}"))
                .spawn(move || {
                    let _entered = span.entered();
                    rt.block_on(run(shared, builder, rx, stop_rx, reap_every));
                    // Idle upstream connections and the reaper go with the runtime.
                    drop(rt);
                    let _ = done_tx.send(());
                })?;
            workers.push(Worker {
                tx,
                open: Arc::new(AtomicUsize::new(0)),
                stop: Some(stop_tx),
                done: Some(done_rx),
            });
        }
        tracing::debug!(workers = workers.len(), "proxy workers started");
        Ok(Workers { workers })
    }

    /// Hands an accepted connection to the worker with the fewest open connections (a worker
    /// whose thread is gone, which only a bug could cause, is passed over).
    pub(crate) fn dispatch(
        &self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        slot: Slot,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) {
        let Some(worker) = self
            .workers
            .iter()
            .filter(|w| !w.tx.is_closed())
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
        else {
            tracing::error!(%peer, "no proxy worker is running; connection closed");
            return;
        };
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(error) => {
                tracing::debug!(%peer, %error, "cannot hand the connection to a worker");
                return;
            }
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        let load = Load(Arc::clone(&worker.open));
        // Fails only when the worker is gone (shutdown): the connection is dropped.
        let _ = worker.tx.send(Handoff {
            stream,
            peer,
            slot,
            tls,
            load,
        });
    }

    /// Stops every worker (their remaining tasks are dropped) and waits for their threads,
    /// at most `wait` in all.
    pub(crate) async fn stop(mut self, wait: Duration) {
        for w in &mut self.workers {
            if let Some(stop) = w.stop.take() {
                let _ = stop.send(());
            }
        }
        let done = self.workers.iter_mut().filter_map(|w| w.done.take());
        let all = futures_util::future::join_all(done);
        if tokio::time::timeout(wait, all).await.is_err() {
            tracing::warn!("proxy workers still running after shutdown");
        }
    }
}

/// A worker: receives connections until stopped, reaps its pool now and then.
async fn run(
    shared: Arc<Shared>,
    builder: Arc<Builder>,
    mut rx: mpsc::UnboundedReceiver<Handoff>,
    mut stop: oneshot::Receiver<()>,
    reap_every: Duration,
) {
    let reaper = {
        let pool: Arc<Pool> = Arc::clone(&shared.pool);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(reap_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                pool.reap();
            }
        })
    };
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            next = rx.recv(), if open => match next {
                Some(h) => match tokio::net::TcpStream::from_std(h.stream) {
                    Ok(stream) => {
                        connection::spawn(&shared, &builder, stream, h.peer, h.slot, h.tls, h.load)
                    }
                    Err(error) => {
                        tracing::debug!(peer = %h.peer, %error, "cannot register the connection");
                    }
                },
                // Every accept loop is gone: wait for the stop.
                None => open = false,
            },
        }
    }
    reaper.abort();
    shared.pool.purge_all();
}
