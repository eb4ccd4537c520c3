//! Defences of the client side: per-address and global connection limits, and the timers that
//! close connections which send nothing useful (header-read and idle timeouts).
//!
//! hyper's own `header_read_timeout` only starts once `auto` has seen the first bytes of a
//! connection, and between keep-alive requests it runs with the same value, so it can neither
//! close a connection that never sends a byte nor keep an idle one longer than a half-sent
//! one. Instead every client connection has an [`Activity`] record: its I/O is wrapped in
//! [`Watched`], which notes the first byte read while no request is in flight, and every
//! request holds an [`InFlight`] token until its response has ended. The connection task
//! closes the connection at [`Activity::deadline`].

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The client address already holds `max_connections_per_client` connections.
    PerClient,
    /// The proxy already holds `max_connections` client connections.
    Total,
}

/// Counts open client connections, per address and in total.
pub(crate) struct Limiter {
    per_client: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
    max_per_client: usize,
    max_total: usize,
}

/// One admitted connection; gives its place back when dropped.
pub(crate) struct Slot {
    limiter: Arc<Limiter>,
    ip: IpAddr,
}

impl Limiter {
    pub(crate) fn new(max_per_client: usize, max_total: usize) -> Arc<Self> {
        Arc::new(Limiter {
            per_client: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
            max_per_client,
            max_total,
        })
    }

    /// Admits one more connection from `ip`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let ip = ip.to_canonical();
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        let mut map = lock(&self.per_client);
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_client {
            if *n == 0 {
                map.remove(&ip);
            }
            drop(map);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PerClient);
        }
        *n += 1;
        Ok(Slot {
            limiter: Arc::clone(self),
            ip,
        })
    }

    /// Open connections from `ip`.
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        lock(&self.per_client).get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = lock(&self.limiter.per_client);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
        drop(map);
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
    }
}

struct State {
    /// Requests (HTTP/2 streams) whose response has not ended.
    in_flight: usize,
    /// When the connection was accepted or its last request ended.
    idle_since: Instant,
    /// First byte read since `idle_since` (a request head has begun).
    first_byte: Option<Instant>,
    /// No request has been received yet.
    fresh: bool,
    /// The client spoke the HTTP/2 preface.
    h2: bool,
}

/// What a client connection is doing, for its timers.
pub(crate) struct Activity {
    state: Mutex<State>,
    /// Set while the next byte read starts a request head (no request in flight).
    armed: AtomicBool,
    header_timeout: Duration,
    idle_timeout: Duration,
}

/// A request in flight on a connection; the connection counts as idle once every token of it
/// is dropped.
pub(crate) struct InFlight(Arc<Activity>);

impl Activity {
    pub(crate) fn new(header_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Activity {
            state: Mutex::new(State {
                in_flight: 0,
                idle_since: Instant::now(),
                first_byte: None,
                fresh: true,
                h2: false,
            }),
            armed: AtomicBool::new(true),
            header_timeout,
            idle_timeout,
        })
    }

    /// A request arrived (its head is complete).
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        let mut s = lock(&self.state);
        s.in_flight += 1;
        s.fresh = false;
        s.first_byte = None;
        self.armed.store(false, Ordering::Release);
        // No wake-up: the deadline only moves away; the timer finds it gone when it fires.
        InFlight(Arc::clone(self))
    }

    fn on_first_bytes(&self, data: &[u8]) {
        let mut s = lock(&self.state);
        if s.fresh && data.starts_with(b"PRI * HTTP/2.0") {
            s.h2 = true;
        }
        if s.in_flight == 0 && s.first_byte.is_none() {
            s.first_byte = Some(Instant::now());
        }
        // No wake-up: the deadline this sets is at least `header_timeout` away, and the
        // connection task looks again within that (see `next_check`).
    }

    /// When the connection is to be closed, as things stand (`None` while a request is in
    /// flight): `header_timeout` after accept until a first request arrives, and after the
    /// first byte of a later HTTP/1 request head; `idle_timeout` after the last response
    /// ended when nothing has been sent since (HTTP/2: when no stream is open).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let s = lock(&self.state);
        if s.in_flight > 0 {
            None
        } else if s.fresh {
            Some(s.idle_since + self.header_timeout)
        } else if let (Some(first), false) = (s.first_byte, s.h2) {
            Some(first + self.header_timeout)
        } else {
            Some(s.idle_since + self.idle_timeout)
        }
    }

    /// Whether the connection is idle between requests (rather than slow to send a head).
    pub(crate) fn is_between_requests(&self) -> bool {
        let s = lock(&self.state);
        !s.fresh && (s.first_byte.is_none() || s.h2)
    }

    /// When the connection task must look at [`Activity::deadline`] again: the deadline if
    /// it is nearer than `min(header_timeout, idle_timeout)` from `now`, else that. Every
    /// deadline a later event sets lies at or after it (a first byte or the end of a
    /// response at `t` sets `t + header_timeout` or `t + idle_timeout`), so the events never
    /// wake the connection task: a keep-alive request costs no wake-up and no timer reset.
    pub(crate) fn next_check(&self, now: Instant) -> Instant {
        let step = now + self.header_timeout.min(self.idle_timeout);
        match self.deadline() {
            Some(d) => d.min(step),
            None => step,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = lock(&self.0.state);
        s.in_flight -= 1;
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
            s.first_byte = None;
            self.0.armed.store(true, Ordering::Release);
        }
    }
}

/// A client stream that reports reads to its [`Activity`].
pub(crate) struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>) -> Self {
        Watched { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let data = &buf.filled()[before..];
            if !data.is_empty()
                && self.activity.armed.load(Ordering::Acquire)
                && self.activity.armed.swap(false, Ordering::AcqRel)
            {
                self.activity.on_first_bytes(data);
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A warning logged at most once per second, with how many times it happened meanwhile.
pub(crate) struct RateLimitedLog {
    what: &'static str,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    pub(crate) fn new(what: &'static str) -> Self {
        RateLimitedLog {
            what,
            last: None,
            suppressed: 0,
        }
    }

    /// Counts one occurrence; logs it (and the count since the last line) if the last line is
    /// at least a second old.
    pub(crate) fn hit(&mut self, detail: &dyn std::fmt::Display) {
        self.suppressed += 1;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        tracing::warn!(count = self.suppressed, detail = %detail, "{}", self.what);
        self.suppressed = 0;
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_per_address_and_total() {
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let l = Limiter::new(2, 3);
        let a1 = l.admit(a).unwrap();
        let _a2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).err(), Some(Refusal::PerClient));
        // The IPv4-mapped form is the same client.
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(l.admit(mapped).err(), Some(Refusal::PerClient));
        let _b1 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).err(), Some(Refusal::Total));
        drop(a1);
        assert_eq!(l.open(a), 1);
        let _b2 = l.admit(b).unwrap();
        assert_eq!(l.open(b), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_connection_state() {
        let header = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        let act = Activity::new(header, idle);
        let t0 = Instant::now();
        assert_eq!(act.deadline(), Some(t0 + header), "fresh: header timeout");
        tokio::time::advance(Duration::from_secs(1)).await;
        act.armed.store(false, Ordering::Release);
        act.on_first_bytes(b"GET / HTTP/1.1\r\n");
        assert_eq!(act.deadline(), Some(t0 + header), "fresh stays from accept");
        let req = act.begin();
        assert_eq!(act.deadline(), None, "in flight");
        tokio::time::advance(Duration::from_secs(100)).await;
        drop(req);
        let t1 = Instant::now();
        assert!(act.armed.load(Ordering::Acquire));
        assert_eq!(act.deadline(), Some(t1 + idle), "idle between requests");
        assert!(act.is_between_requests());
        tokio::time::advance(Duration::from_secs(5)).await;
        act.on_first_bytes(b"G");
        assert_eq!(
            act.deadline(),
            Some(t1 + Duration::from_secs(5) + header),
            "head begun"
        );
        assert!(!act.is_between_requests());
    }

    #[tokio::test(start_paused = true)]
    async fn h2_connections_use_the_idle_timeout_after_the_first_stream() {
        let act = Activity::new(Duration::from_secs(10), Duration::from_secs(60));
        act.on_first_bytes(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        drop(act.begin());
        let t = Instant::now();
        act.on_first_bytes(b"\0\0\0\x06");
        assert_eq!(act.deadline(), Some(t + Duration::from_secs(60)));
    }
}
