//! The worker loops: closed loop (send, wait, send) and open loop (send at the intended
//! time), reconnecting as needed and recording every outcome.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::conn::{connect, try_exchange, Conn, Timer};
use super::request::Template;
use super::schedule::{intended_offset, scheduled_in, worker_indices, LoadSpec, Stop};
use crate::h1::Fail;
use crate::report::{ErrorKind, Recorder, SharedTimeline};

pub(super) struct Shared {
    pub(super) t0: Instant,
    pub(super) measure_start: Instant,
    pub(super) timeline: SharedTimeline,
    pub(super) claimed: AtomicU64,
    pub(super) done: AtomicU64,
    pub(super) failed: AtomicU64,
}

/// Records an outcome measured from `from` (start or intended time) to now.
fn record(
    shared: &Shared,
    rec: &mut Recorder,
    res: &Result<u16, ErrorKind>,
    from: Instant,
    measured: bool,
) {
    let now = Instant::now();
    // Progress counters are shared: update them in batches to keep cache lines quiet.
    match res {
        Ok(_) => rec.pending_done += 1,
        Err(_) => rec.pending_failed += 1,
    }
    if rec.pending_done + rec.pending_failed >= 64
        || now.saturating_duration_since(rec.progress_flushed) >= Duration::from_millis(200)
    {
        rec.progress_flushed = now;
        flush_progress(shared, rec);
    }
    if !measured {
        return;
    }
    let at = now.saturating_duration_since(shared.measure_start);
    match res {
        Ok(status) => rec.response(*status, now.saturating_duration_since(from), at),
        Err(kind) => rec.error(*kind, at),
    }
}

pub(super) fn flush_progress(shared: &Shared, rec: &mut Recorder) {
    shared.done.fetch_add(rec.pending_done, Ordering::Relaxed);
    shared
        .failed
        .fetch_add(rec.pending_failed, Ordering::Relaxed);
    rec.pending_done = 0;
    rec.pending_failed = 0;
}

/// Gets a usable connection, opening one if needed.
async fn ensure_conn<'a>(
    slot: &'a mut Option<Conn>,
    spec: &LoadSpec,
    tpl: &Template,
) -> Result<&'a mut Conn, ErrorKind> {
    if slot.as_ref().is_some_and(|c| c.is_closed()) {
        *slot = None;
    }
    if slot.is_none() {
        *slot = Some(connect(spec.target.addr, tpl.http2, spec.timeout).await?);
    }
    Ok(slot.as_mut().expect("just set"))
}

/// Sends on `slot`'s connection, reconnecting (once) if it was found closed before sending.
async fn send_with_reconnect(
    slot: &mut Option<Conn>,
    spec: &LoadSpec,
    tpl: &Template,
    timer: &mut Timer,
) -> Result<u16, ErrorKind> {
    for _ in 0..2 {
        let c = ensure_conn(slot, spec, tpl).await?;
        match try_exchange(c, tpl, spec.timeout, Some(timer)).await {
            Ok(s) => return Ok(s),
            Err(Fail::Kind(k)) => {
                *slot = None;
                return Err(k);
            }
            Err(Fail::Stale) => *slot = None,
        }
    }
    Err(ErrorKind::Io)
}

const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

pub(super) async fn closed_worker(
    spec: &LoadSpec,
    tpl: &Template,
    shared: &Shared,
    rec: &mut Recorder,
    mut conn: Option<Conn>,
) {
    let end = match spec.stop {
        Stop::Duration(d) => Some(shared.measure_start + d),
        Stop::Requests(_) => None,
    };
    let mut timer: Timer = Box::pin(tokio::time::sleep(spec.timeout));
    loop {
        let start = Instant::now();
        let measured = start >= shared.measure_start;
        if let Some(end) = end {
            if start >= end {
                break;
            }
        }
        if measured {
            if let Stop::Requests(n) = spec.stop {
                if shared.claimed.fetch_add(1, Ordering::Relaxed) >= n {
                    break;
                }
            }
        }
        if let Err(kind) = ensure_conn(&mut conn, spec, tpl).await {
            record(shared, rec, &Err(kind), start, measured);
            tokio::time::sleep(CONNECT_BACKOFF).await;
            continue;
        }
        if measured {
            rec.sent += 1;
        }
        let res = send_with_reconnect(&mut conn, spec, tpl, &mut timer).await;
        record(shared, rec, &res, start, measured);
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn open_worker(
    spec: &LoadSpec,
    tpl: &Template,
    shared: &Shared,
    rec: &mut Recorder,
    mut conn: Option<Conn>,
    k: usize,
    workers: usize,
    rate: f64,
    warm_count: u64,
) {
    let limit = match spec.stop {
        Stop::Requests(n) => warm_count + n,
        Stop::Duration(d) => warm_count + scheduled_in(d, rate),
    };
    let deadline = match spec.stop {
        Stop::Duration(d) => Some(shared.measure_start + d),
        Stop::Requests(_) => None,
    };
    let mut timer: Timer = Box::pin(tokio::time::sleep(spec.timeout));
    let mut first = true;
    let mut indices = worker_indices(k, workers, limit);
    while let Some(i) = indices.next() {
        let intended = shared.t0 + intended_offset(i, rate);
        let measured = i >= warm_count;
        let now = Instant::now();
        if let Some(dl) = deadline {
            if now >= dl {
                // Out of time: everything left in our schedule was never sent.
                let left = 1 + indices.count() as u64;
                rec.unsent += left;
                break;
            }
        }
        if now < intended {
            tokio::time::sleep_until(intended).await;
        } else if !first && measured {
            // The previous request on this worker was still running at our intended time.
            rec.late += 1;
        }
        first = false;
        if let Err(kind) = ensure_conn(&mut conn, spec, tpl).await {
            record(shared, rec, &Err(kind), intended, measured);
            continue;
        }
        if measured {
            rec.sent += 1;
        }
        let res = send_with_reconnect(&mut conn, spec, tpl, &mut timer).await;
        record(shared, rec, &res, intended, measured);
    }
}
