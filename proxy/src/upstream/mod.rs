//! hako's own HTTP/1.1 client to the apps: one keep-alive connection ([`UpstreamConn`]) is a
//! TCP stream and a read buffer, driven inside the request's own future (no connection task,
//! no channels). [`send`] writes the request head in one write and streams the request body;
//! it returns the response head and an [`UpstreamBody`] that reads the response body straight
//! from the socket and hands the connection back for reuse once the body ended cleanly.
//!
//! Framing is strict (RFC 9112 §6.3): a desynchronised connection is never reused. Responses
//! to `HEAD`, `1xx`, `204` and `304` have no body; interim `1xx` responses (but `101`) are
//! skipped; `Transfer-Encoding` must be exactly `chunked` and never comes with
//! `Content-Length`; several `Content-Length` values must agree; otherwise the body runs until
//! the app closes the connection.

mod body;
mod head;
#[cfg(test)]
mod tests;
mod upload;

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Response;
use http_body::Body;
use hyper::body::Incoming;
use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

pub(crate) use body::UpstreamBody;
pub(crate) use head::RequestHead;
use head::{parse_response_head, Framing, HeadStatus, Parsed, RequestFraming};
use upload::{Idle, Upload, UploadError};

use crate::activate::Upstream;
use crate::pool::ConnectError;
use crate::state::{wait_phase, Phase};

/// Largest response head accepted (hyper's default).
pub(crate) const MAX_HEAD: usize = 64 << 10;
/// Most response header fields accepted.
pub(crate) const MAX_HEADERS: usize = 100;
/// Bytes asked of the socket per read at least, when the buffer grows.
const READ_CHUNK: usize = 8 << 10;
/// Below this much room left in the read buffer, it grows.
const MIN_SPARE: usize = 1 << 10;

/// Why an exchange with an app failed (the app's side; a failing client body is
/// [`SendError::Client`]).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The socket failed.
    #[error("{during}: {source}")]
    Io {
        /// What was under way.
        during: &'static str,
        /// The I/O error.
        source: io::Error,
    },
    /// The app closed the connection before the response was complete.
    #[error("connection closed by the app {during}")]
    Closed {
        /// What was under way.
        during: &'static str,
    },
    /// The response head exceeded [`MAX_HEAD`] bytes.
    #[error("response head larger than {limit} bytes")]
    HeadTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The response head is not HTTP/1.x.
    #[error("invalid response head: {0}")]
    Parse(#[from] httparse::Error),
    /// The response head parsed but is unusable (status code, header name or value).
    #[error("invalid response head: {0}")]
    InvalidHead(&'static str),
    /// The response's body framing is invalid or ambiguous.
    #[error("invalid response framing: {0}")]
    Framing(&'static str),
    /// `101 Switching Protocols` to a request that asked for no upgrade.
    #[error("101 Switching Protocols without an upgrade request")]
    UnexpectedSwitch,
}

impl UpstreamError {
    fn io(during: &'static str, source: io::Error) -> Self {
        UpstreamError::Io { during, source }
    }

    /// The connection-level failure behind this error (refused, reset, closed early), if any:
    /// what tells the supervisor its instance may have crashed.
    pub(crate) fn connection_failure(&self) -> Option<io::Error> {
        match self {
            UpstreamError::Io { source, .. } => {
                Some(io::Error::new(source.kind(), self.to_string()))
            }
            UpstreamError::Closed { .. } => Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                self.to_string(),
            )),
            _ => None,
        }
    }
}

/// Why [`send`] gave no response (`E`: the request body's error).
#[derive(Debug)]
pub(crate) enum SendError<E = hyper::Error> {
    /// The reused connection was found closed before any byte of the request reached the app
    /// (the request body was not touched either): the request may go out on another one.
    Stale,
    /// Reading the client's request body failed.
    Client(E),
    /// The exchange with the app failed.
    Upstream(UpstreamError),
    /// Nothing moved for the idle timeout: no byte of the request went out and no response
    /// head came.
    TimedOut(Stall),
}

/// Who held an exchange up when its idle timeout ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stall {
    /// The client's body had no next bytes (a client stalling its upload).
    Client,
    /// The app was not taking the request (head or body).
    AppReading,
    /// The request was sent; the app did not send its response head.
    AppAnswering,
}

impl Stall {
    /// What the app was not doing, for the error text (`AppReading`, `AppAnswering`).
    pub(crate) fn app_was_not(self) -> &'static str {
        match self {
            Stall::AppReading => "reading the request",
            Stall::Client | Stall::AppAnswering => "sending response headers",
        }
    }
}

/// What an exchange needs from the proxy besides the connection and the request.
pub(crate) struct Ctx<'a> {
    /// Where the rest of an answered upload runs: the proxy's shutdown tracker.
    pub(crate) tasks: &'a TaskTracker,
    /// The idle timeout (`ProxyOptions::upstream_timeout`).
    pub(crate) idle: Duration,
    /// The proxy's shutdown phase: the rest of an answered upload stops at `Phase::Force`.
    pub(crate) phase: &'a watch::Receiver<Phase>,
}

/// What one wait of [`send`] ended with.
enum Step<E> {
    /// Bytes of the response (0: the app closed), or a read error.
    Read(io::Result<usize>),
    /// The client's body failed.
    Client(E),
    /// The idle timeout ran out.
    TimedOut,
}

/// The socket of an [`UpstreamConn`]: whole, or only its read half while a task finishes
/// sending a request body the app answered early (never reused then).
enum Stream {
    Whole(TcpStream),
    Read(OwnedReadHalf),
}

/// One keep-alive HTTP/1.1 connection to an app.
pub(crate) struct UpstreamConn {
    io: Stream,
    buf: BytesMut,
    /// A previous exchange completed on it: a close found at the next request is a stale
    /// keep-alive connection, not a failure of the app.
    reused: bool,
}

impl UpstreamConn {
    /// Opens a fresh connection to `upstream`.
    pub(crate) async fn connect(upstream: &dyn Upstream) -> Result<Self, ConnectError> {
        let id = upstream.id();
        let io = upstream
            .connect()
            .await
            .map_err(|source| ConnectError::Io { id, source })?;
        let _ = io.set_nodelay(true);
        tracing::debug!(upstream = id, "opened upstream connection");
        Ok(Self::new(io))
    }

    pub(crate) fn new(io: TcpStream) -> Self {
        UpstreamConn {
            io: Stream::Whole(io),
            buf: BytesMut::new(),
            reused: false,
        }
    }

    /// Whether an idle connection can take a request: the app has neither closed it nor sent
    /// anything since its last response. No system call unless the socket became readable.
    pub(crate) fn is_idle_usable(&mut self) -> bool {
        let Stream::Whole(io) = &self.io else {
            return false;
        };
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 8];
                matches!(io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more of the response into the buffer; `Ok(0)` at end of stream. The buffer's
    /// allocation is shared with the heads and bodies already handed out: it grows (a new
    /// allocation) only when little room is left, so small responses share one.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let spare = self.buf.capacity() - self.buf.len();
        if spare < MIN_SPARE || (want > READ_CHUNK && spare < READ_CHUNK) {
            self.buf.reserve(want.max(READ_CHUNK));
        }
        match &mut self.io {
            Stream::Whole(io) => tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut self.buf),
            Stream::Read(io) => tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut self.buf),
        }
    }

    /// Writes every byte of `bufs`; returns how many went out before an error.
    async fn write_all_vectored(
        &mut self,
        bufs: &mut [IoSlice<'_>],
    ) -> Result<(), (usize, io::Error)> {
        let Stream::Whole(io) = &mut self.io else {
            return Err((0, io::ErrorKind::NotConnected.into()));
        };
        let mut bufs = bufs;
        let mut written = 0;
        while !bufs.is_empty() {
            let io = &mut *io;
            match poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, bufs)).await {
                Ok(0) => return Err((written, io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    written += n;
                    IoSlice::advance_slices(&mut bufs, n);
                }
                Err(e) => return Err((written, e)),
            }
        }
        Ok(())
    }

    /// The stream and the bytes read past the response head (a protocol switch); `None`
    /// when the write half is gone (never for a switch: see [`send`]).
    pub(crate) fn into_parts(self) -> Option<(TcpStream, Bytes)> {
        match self.io {
            Stream::Whole(io) => Some((io, self.buf.freeze())),
            Stream::Read(_) => None,
        }
    }
}

/// What [`send`] got back.
pub(crate) enum Exchange {
    /// A response; its body streams from the connection.
    Response(Response<UpstreamBody>),
    /// `101 Switching Protocols`: the head, and the connection for the tunnel.
    Switched(Response<()>, UpstreamConn),
}

/// The request body as [`send`] streams it: whether any of it was read yet decides if a
/// failed attempt may be retried on another connection.
pub(crate) struct RequestBody<B = Incoming> {
    /// `None` once handed to the task finishing an upload.
    inner: Option<B>,
    touched: bool,
}

impl<B: Body<Data = Bytes> + Unpin> RequestBody<B> {
    pub(crate) fn new(inner: B) -> Self {
        RequestBody {
            inner: Some(inner),
            touched: false,
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    pub(crate) fn exact_len(&self) -> Option<u64> {
        self.inner.as_ref().and_then(|b| b.size_hint().exact())
    }
}

/// Sends `head` and `body` on `conn` and reads the response head. The body is written while
/// the response is awaited: an answer that comes first is returned at once, and the rest of
/// the body follows in a task of its own on `ctx.tasks` (the connection is not reused then).
///
/// `ctx.idle` bounds the time without progress, not the whole exchange: every write of the body
/// to the app gives the app (or the client) `idle` again, so a long upload at any steady pace
/// passes, and the response head must come within `idle` of the body's last write.
pub(crate) async fn send<B>(
    mut conn: UpstreamConn,
    head: &RequestHead,
    body: &mut RequestBody<B>,
    ctx: &Ctx<'_>,
) -> Result<Exchange, SendError<B::Error>>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Display + Send,
{
    let reused = conn.reused;
    let retryable = |body: &RequestBody<B>| reused && !body.touched;
    let idle = ctx.idle;
    let sleep = tokio::time::sleep(idle);
    tokio::pin!(sleep);
    // The head goes out under the same timer: an app that reads nothing can stall a head
    // larger than the sockets' buffers. The write is polled first, so the timer is not even
    // registered when the head goes out at once (the usual case).
    let mut slices = [IoSlice::new(head.bytes())];
    let wrote = tokio::select! {
        biased;
        r = conn.write_all_vectored(&mut slices) => r,
        () = &mut sleep => return Err(SendError::TimedOut(Stall::AppReading)),
    };
    if let Err((written, e)) = wrote {
        if written == 0 && retryable(body) {
            tracing::debug!(error = %e, "stale upstream connection (write)");
            return Err(SendError::Stale);
        }
        return Err(SendError::Upstream(UpstreamError::io(
            "writing the request",
            e,
        )));
    }
    let mut upload = match head.framing() {
        RequestFraming::None => None,
        framing => Some(Upload::new(framing == RequestFraming::Chunked)),
    };
    let mut write_error: Option<io::Error> = None;
    let mut got_any = !conn.buf.is_empty();
    let mut timer = Idle::new(sleep, idle);
    loop {
        if !conn.buf.is_empty() {
            match parse_response_head(&mut conn.buf, head) {
                Ok(HeadStatus::Done(parsed)) => {
                    let clean = write_error.is_none();
                    return match upload.filter(|u| !u.finished() && clean) {
                        None => Ok(finish(conn, parsed, clean, None)),
                        Some(rest) => continue_upload(conn, parsed, rest, body, ctx),
                    };
                }
                // An interim response was consumed: look for the next head.
                Ok(HeadStatus::Interim) => continue,
                Ok(HeadStatus::Partial) => {}
                Err(e) => return Err(SendError::Upstream(e)),
            }
            if conn.buf.len() >= MAX_HEAD {
                return Err(SendError::Upstream(UpstreamError::HeadTooLarge {
                    limit: MAX_HEAD,
                }));
            }
        }
        let read = poll_fn(|cx| {
            let writing = write_error.is_none();
            if let (Some(up), true, Stream::Whole(io)) = (upload.as_mut(), writing, &mut conn.io) {
                if !up.finished() {
                    match up.poll(cx, io, body) {
                        Poll::Ready(Err(UploadError::Client(e))) => {
                            return Poll::Ready(Step::Client(e))
                        }
                        // The app may have answered early (e.g. 413) and closed: read on.
                        Poll::Ready(Err(UploadError::Write(e))) => write_error = Some(e),
                        Poll::Ready(Ok(())) | Poll::Pending => {}
                    }
                }
            }
            if let Poll::Ready(r) = conn.poll_fill(cx, READ_CHUNK) {
                return Poll::Ready(Step::Read(r));
            }
            let progress = upload.as_ref().and_then(Upload::last_write);
            timer.poll(cx, progress).map(|()| Step::TimedOut)
        })
        .await;
        let read = match read {
            Step::Read(r) => r,
            Step::Client(e) => return Err(SendError::Client(e)),
            Step::TimedOut => {
                let stall = match upload.as_ref() {
                    Some(up) if write_error.is_none() && up.waiting_for_client() => Stall::Client,
                    Some(up) if write_error.is_none() && !up.finished() => Stall::AppReading,
                    _ => Stall::AppAnswering,
                };
                return Err(SendError::TimedOut(stall));
            }
        };
        match read {
            Ok(0) => {
                if let Some(e) = write_error {
                    return Err(SendError::Upstream(UpstreamError::io(
                        "writing the request body",
                        e,
                    )));
                }
                let err = UpstreamError::Closed {
                    during: "before the response head",
                };
                if !got_any && retryable(body) {
                    tracing::debug!(error = %err, "stale upstream connection (read)");
                    return Err(SendError::Stale);
                }
                return Err(SendError::Upstream(err));
            }
            Ok(_) => got_any = true,
            Err(e) => {
                if !got_any && retryable(body) && e.kind() == io::ErrorKind::ConnectionReset {
                    tracing::debug!(error = %e, "stale upstream connection (read)");
                    return Err(SendError::Stale);
                }
                return Err(SendError::Upstream(UpstreamError::io(
                    "reading the response head",
                    e,
                )));
            }
        }
    }
}

/// The app answered before the request body was all sent: a task sends the rest on the write
/// half while the response streams from the read half. The task is on `ctx.tasks` (the
/// proxy's shutdown tracker), so a graceful shutdown waits for the upload too, until its
/// grace runs out (`Phase::Force`); it is dropped after `ctx.idle` without progress.
fn continue_upload<B>(
    conn: UpstreamConn,
    parsed: Parsed,
    mut upload: Upload,
    body: &mut RequestBody<B>,
    ctx: &Ctx<'_>,
) -> Result<Exchange, SendError<B::Error>>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Display + Send,
{
    if parsed.framing == Framing::Switch {
        return Err(SendError::Upstream(UpstreamError::Framing(
            "101 Switching Protocols before the request body was sent",
        )));
    }
    let UpstreamConn { io, buf, reused } = conn;
    let Stream::Whole(io) = io else {
        return Err(SendError::Upstream(UpstreamError::Framing(
            "request already sent",
        )));
    };
    let (read, mut write) = io.into_split();
    let mut rest = RequestBody {
        inner: body.inner.take(),
        touched: true,
    };
    let client_failed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&client_failed);
    let idle = ctx.idle;
    let mut phase = ctx.phase.clone();
    ctx.tasks.spawn(async move {
        // The same idle rule as before the answer: an upload that stops moving is dropped.
        let sleep = tokio::time::sleep(idle);
        tokio::pin!(sleep);
        let mut timer = Idle::new(sleep, idle);
        let moving = poll_fn(|cx| match upload.poll(cx, &mut write, &mut rest) {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            Poll::Pending => timer.poll(cx, upload.last_write()).map(|()| None),
        });
        let done = tokio::select! {
            done = moving => done,
            () = wait_phase(&mut phase, Phase::Force) => {
                tracing::debug!("shutdown grace over; the rest of an answered upload dropped");
                return;
            }
        };
        let Some(done) = done else {
            if upload.waiting_for_client() {
                // The client stalled: if the app now gives up on its body, that is not the
                // app's failure.
                flag.store(true, Ordering::Release);
            }
            tracing::debug!(
                idle_ms = idle.as_millis() as u64,
                "the rest of an answered upload made no progress; dropped"
            );
            return;
        };
        match done {
            Ok(()) => {}
            Err(UploadError::Client(error)) => {
                flag.store(true, Ordering::Release);
                tracing::debug!(%error, "client body failed after the app answered");
            }
            Err(UploadError::Write(error)) => {
                tracing::debug!(%error, "app stopped reading the request body it answered");
            }
        }
    });
    let conn = UpstreamConn {
        io: Stream::Read(read),
        buf,
        reused,
    };
    Ok(finish(conn, parsed, false, Some(client_failed)))
}

fn finish(
    conn: UpstreamConn,
    parsed: Parsed,
    reusable: bool,
    client_failed: Option<Arc<AtomicBool>>,
) -> Exchange {
    let Parsed {
        response,
        framing,
        keep_alive,
    } = parsed;
    match framing {
        Framing::Switch => Exchange::Switched(response, conn),
        framing => {
            let body = UpstreamBody::new(conn, framing, keep_alive && reusable, client_failed);
            Exchange::Response(response.map(|()| body))
        }
    }
}
