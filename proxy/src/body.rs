//! The response body the proxy hands to hyper: an error page or a streamed upstream body,
//! carrying the per-request bookkeeping ([`RequestGuard`]) until the body has ended.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::activate::Lease;
use crate::conn::InFlight;
use crate::pool::{Key, Pool};
use crate::state::Shared;
use crate::upstream::{UpstreamBody, UpstreamError};

/// Error type of [`ProxyBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Per-request bookkeeping: releases the lease and calls `Activator::record` exactly once,
/// when the response body ended, failed, or was dropped (client went away).
pub(crate) struct RequestGuard {
    shared: Arc<Shared>,
    pub(crate) app: Option<Arc<str>>,
    /// Status recorded; 499 until a response exists (client gone before it was produced).
    pub(crate) status: u16,
    start: Instant,
    pub(crate) lease: Option<Lease>,
    /// Keeps the client connection out of its idle/header timers until the response ended.
    in_flight: Option<InFlight>,
    done: bool,
}

impl RequestGuard {
    pub(crate) fn new(shared: Arc<Shared>, in_flight: InFlight) -> Self {
        RequestGuard {
            shared,
            app: None,
            status: 499,
            start: Instant::now(),
            lease: None,
            in_flight: Some(in_flight),
            done: false,
        }
    }

    pub(crate) fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        drop(self.lease.take());
        drop(self.in_flight.take());
        let elapsed = self.start.elapsed();
        self.shared
            .activator
            .record(self.app.as_deref(), self.status, elapsed);
        let stats = &self.shared.stats;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        if stats.draining.load(Ordering::Relaxed) {
            stats.completed_during_drain.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(
            app = self.app.as_deref().unwrap_or("-"),
            status = self.status,
            elapsed_us = elapsed.as_micros() as u64,
            "request finished"
        );
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Where the upstream connection a streamed body reads from goes back on a clean end.
pub(crate) struct PooledConn {
    pub(crate) pool: Arc<Pool>,
    pub(crate) key: Key,
}

enum Kind {
    Full(Option<Bytes>),
    Stream(UpstreamBody),
}

/// Response body served to the client.
pub struct ProxyBody {
    kind: Kind,
    conn: Option<PooledConn>,
    guard: Option<RequestGuard>,
}

impl ProxyBody {
    pub(crate) fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        ProxyBody {
            kind: Kind::Full((!data.is_empty()).then_some(data)),
            conn: None,
            guard: None,
        }
    }

    pub(crate) fn empty() -> Self {
        Self::full(Bytes::new())
    }

    pub(crate) fn stream(body: UpstreamBody, conn: PooledConn) -> Self {
        ProxyBody {
            kind: Kind::Stream(body),
            conn: Some(conn),
            guard: None,
        }
    }

    pub(crate) fn with_guard(mut self, guard: RequestGuard) -> Self {
        // An empty body is never polled: it completes when hyper drops it (see `Drop`).
        self.guard = Some(guard);
        self
    }

    fn inner_end(&self) -> bool {
        match &self.kind {
            Kind::Full(d) => d.is_none(),
            Kind::Stream(b) => b.is_end_stream(),
        }
    }

    /// The body ended cleanly: give the connection back, release lease, record.
    fn complete(&mut self) {
        if let (Some(c), Kind::Stream(body)) = (self.conn.take(), &mut self.kind) {
            if let Some(conn) = body.take_reusable() {
                c.pool.checkin(c.key, conn);
            }
        }
        if let Some(mut g) = self.guard.take() {
            g.finish();
        }
    }

    /// The upstream body failed: drop the connection, report, release lease, record.
    fn fail(&mut self, error: &UpstreamError) {
        // A response cut short because the client's request body failed (while it was still
        // being sent to an app that had answered early) is the client's fault.
        let client_failed = matches!(&self.kind, Kind::Stream(b) if b.client_failed());
        let id = self
            .conn
            .take()
            .filter(|_| !client_failed)
            .map(|c| c.key.id);
        if let (Some(id), Some(g)) = (id, self.guard.as_ref()) {
            tracing::warn!(
                app = g.app.as_deref().unwrap_or("-"),
                upstream = id,
                %error,
                "upstream body failed mid-response"
            );
            if let Some(io) = error.connection_failure() {
                g.shared.upstream_failed(id, &io);
            }
        }
        if let Some(mut g) = self.guard.take() {
            g.finish();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Full(d) => Poll::Ready(d.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.fail(&e);
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(BoxError::from))),
            },
        };
        if let Poll::Ready(frame) = &polled {
            if frame.is_none() || this.inner_end() {
                this.complete();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner_end()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(b) => b.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // Ended without error but never polled to the end (empty body, or hyper knew the
        // length): if the inner stream is complete, the exchange finished cleanly.
        if self.inner_end() {
            self.complete();
        }
        // Otherwise the client went away: the connection is dropped (not reusable), and the
        // guard records on drop.
    }
}
