//! The proxy's worker threads: each runs a single-threaded tokio runtime with its own upstream
//! connection pool. The accept loops hand every admitted client connection to a worker chosen
//! by [`choose`] (the first one with room, so that light load stays on few threads); from then
//! on the connection, its requests, the pooled upstream connections
//! they use and the tasks driving them all stay on that worker's thread, so a proxied request
//! wakes no other thread (the cross-thread wake-ups of a shared multi-thread runtime were
//! most of hako's CPU per request).
//!
//! Connection limits, counters, the shutdown phase, the task tracker, routes and certificates
//! are shared by all workers; only the pools are per worker.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
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

/// A worker busier than this (per mille of the last sample period) takes new connections only
/// when every worker is: below it, connections go to the first worker in order. One thread
/// serving a load it can carry answers faster and spends less CPU per request than two
/// threads each half idle, which sleep and are woken for nearly every request (on a 2-core
/// machine, 16–17.5 µs against 20–21 µs per request, and a shorter tail; docs/benchmarks.md).
const PACK_BELOW_PERMILLE: u32 = 500;

/// How often the workers' busy shares are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// What [`choose`] knows of one worker.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// Its thread is running.
    alive: bool,
    /// Share of the last sample period it spent running tasks, per mille.
    busy: u32,
    /// Client connections it holds.
    open: usize,
}

/// The worker that takes a new connection: the first in order that is under
/// [`PACK_BELOW_PERMILLE`] busy; if none is, the least busy (then the one with the fewest
/// connections). A worker whose thread is gone (only a bug could cause it) is passed over.
fn choose(workers: &[Candidate]) -> Option<usize> {
    let alive = || workers.iter().enumerate().filter(|(_, w)| w.alive);
    alive()
        .find(|(_, w)| w.busy < PACK_BELOW_PERMILLE)
        .or_else(|| alive().min_by_key(|(_, w)| (w.busy, w.open)))
        .map(|(i, _)| i)
}

struct Worker {
    tx: mpsc::UnboundedSender<Handoff>,
    open: Arc<AtomicUsize>,
    /// Busy share of the last sample period, per mille (written by the sampler).
    busy: Arc<AtomicU32>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

/// The running workers of one `serve` call.
pub(crate) struct Workers {
    workers: Vec<Worker>,
    sampler: tokio::task::JoinHandle<()>,
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
        let mut metrics = Vec::with_capacity(shared.len());
        for (index, shared) in shared.into_iter().enumerate() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let busy = Arc::new(AtomicU32::new(0));
            metrics.push((rt.metrics(), Arc::clone(&busy)));
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
                busy,
                stop: Some(stop_tx),
                done: Some(done_rx),
            });
        }
        tracing::debug!(workers = workers.len(), "proxy workers started");
        let sampler = tokio::spawn(sample(metrics));
        Ok(Workers { workers, sampler })
    }

    /// Hands an accepted connection to the worker [`choose`] picks.
    pub(crate) fn dispatch(
        &self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        slot: Slot,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) {
        let candidates: smallvec::SmallVec<[Candidate; 8]> = self
            .workers
            .iter()
            .map(|w| Candidate {
                alive: !w.tx.is_closed(),
                busy: w.busy.load(Ordering::Relaxed),
                open: w.open.load(Ordering::Relaxed),
            })
            .collect();
        let Some(worker) = choose(&candidates).map(|i| &self.workers[i]) else {
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

impl Drop for Workers {
    fn drop(&mut self) {
        // Also on an error path that never called `stop`.
        self.sampler.abort();
    }
}

/// Every [`SAMPLE_EVERY`], each worker's share of the period spent running tasks (tokio's
/// busy duration of its runtime), for [`choose`].
async fn sample(workers: Vec<(tokio::runtime::RuntimeMetrics, Arc<AtomicU32>)>) {
    let busy_total = |m: &tokio::runtime::RuntimeMetrics| m.worker_total_busy_duration(0);
    let mut last: Vec<Duration> = workers.iter().map(|(m, _)| busy_total(m)).collect();
    let mut last_at = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        let wall = now.duration_since(last_at).as_nanos().max(1);
        last_at = now;
        for ((m, busy), before) in workers.iter().zip(last.iter_mut()) {
            let total = busy_total(m);
            let spent = total.saturating_sub(*before).as_nanos();
            *before = total;
            let permille = (spent * 1000 / wall).min(1000) as u32;
            busy.store(permille, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn w(busy: u32, open: usize) -> Candidate {
        Candidate {
            alive: true,
            busy,
            open,
        }
    }

    #[test]
    fn light_load_is_packed_on_the_first_workers() {
        // The first worker takes connections while it has room, however many it holds.
        assert_eq!(choose(&[w(120, 40), w(0, 0)]), Some(0));
        assert_eq!(choose(&[w(0, 0), w(0, 0), w(0, 0)]), Some(0));
        // Once it is busy, the next one with room.
        assert_eq!(choose(&[w(900, 40), w(300, 10), w(0, 0)]), Some(1));
        assert_eq!(choose(&[w(900, 40), w(600, 10), w(0, 0)]), Some(2));
    }

    #[test]
    fn when_every_worker_is_busy_the_least_busy_takes_it() {
        assert_eq!(choose(&[w(950, 40), w(700, 10)]), Some(1));
        assert_eq!(
            choose(&[w(800, 40), w(800, 10)]),
            Some(1),
            "fewer connections"
        );
    }

    #[test]
    fn a_worker_whose_thread_is_gone_is_passed_over() {
        let gone = Candidate {
            alive: false,
            busy: 0,
            open: 0,
        };
        assert_eq!(choose(&[gone, w(900, 5)]), Some(1));
        assert_eq!(choose(&[gone]), None);
    }
}
