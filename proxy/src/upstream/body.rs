//! The response body, read from the app's connection as the client's side polls it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};

use super::head::Framing;
use super::{UpstreamConn, UpstreamError, MAX_HEAD, MAX_HEADERS};

/// Longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 << 10;
/// Bytes asked of the socket per read when much body is still to come.
const BIG_READ: usize = 64 << 10;

enum State {
    /// `Content-Length`: bytes still to come.
    Length(u64),
    /// Chunked: expecting a chunk-size line.
    ChunkSize,
    /// Chunked: bytes of the current chunk still to come.
    ChunkData(u64),
    /// Chunked: the CRLF after a chunk's data.
    ChunkEnd,
    /// Chunked: the trailer section after the last chunk.
    Trailers,
    /// Until the app closes.
    Close,
    /// Ended cleanly.
    Done,
    /// Failed; the connection is gone.
    Failed,
}

/// A response body streamed from an [`UpstreamConn`].
pub(crate) struct UpstreamBody {
    conn: Option<UpstreamConn>,
    state: State,
    keep_alive: bool,
    /// Set when the client's body failed while a task was still sending it (the app had
    /// answered early): a response cut short then is not the app's fault.
    client_failed: Option<Arc<AtomicBool>>,
}

impl UpstreamBody {
    pub(crate) fn new(
        conn: UpstreamConn,
        framing: Framing,
        keep_alive: bool,
        client_failed: Option<Arc<AtomicBool>>,
    ) -> Self {
        let (state, keep_alive) = match framing {
            Framing::Empty | Framing::Switch => (State::Done, keep_alive),
            Framing::Length(n) => (State::Length(n), keep_alive),
            Framing::Chunked => (State::ChunkSize, keep_alive),
            Framing::Close => (State::Close, false),
        };
        UpstreamBody {
            conn: Some(conn),
            state,
            keep_alive,
            client_failed,
        }
    }

    /// The client's request body failed while it was still being sent.
    pub(crate) fn client_failed(&self) -> bool {
        self.client_failed
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Acquire))
    }

    /// The connection, when the body ended cleanly, the response allowed keep-alive and
    /// nothing unasked-for followed it.
    pub(crate) fn take_reusable(&mut self) -> Option<UpstreamConn> {
        if !matches!(self.state, State::Done) || !self.keep_alive {
            return None;
        }
        let mut conn = self.conn.take()?;
        if !conn.buf.is_empty() {
            tracing::debug!(
                extra = conn.buf.len(),
                "bytes after the response: upstream connection not reused"
            );
            return None;
        }
        conn.reused = true;
        Some(conn)
    }

    fn fail(&mut self, error: UpstreamError) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        self.state = State::Failed;
        self.conn = None;
        Poll::Ready(Some(Err(error)))
    }
}

/// Parses a chunk-size line (without its CRLF): hex size, optional whitespace, optional
/// extensions.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()?;
    let rest = line[digits..].trim_ascii_start();
    (rest.is_empty() || rest[0] == b';').then_some(size)
}

fn trailers(block: &[u8]) -> Result<Option<(usize, HeaderMap)>, UpstreamError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(block, &mut slots) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete((len, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| UpstreamError::Framing("invalid trailer name"))?;
                let value = HeaderValue::from_bytes(f.value)
                    .map_err(|_| UpstreamError::Framing("invalid trailer value"))?;
                map.append(name, value);
            }
            Ok(Some((len, map)))
        }
        Err(_) => Err(UpstreamError::Framing("invalid trailer section")),
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // What the buffer needs before the state can advance: `None` = it can advance.
            let need: Option<usize> = match &mut this.state {
                State::Done | State::Failed => return Poll::Ready(None),
                State::Length(rem) | State::ChunkData(rem) => {
                    if conn.buf.is_empty() {
                        Some((*rem).min(BIG_READ as u64) as usize)
                    } else {
                        let n = (*rem).min(conn.buf.len() as u64);
                        let data = conn.buf.split_to(n as usize).freeze();
                        *rem -= n;
                        if *rem == 0 {
                            this.state = match this.state {
                                State::Length(_) => State::Done,
                                _ => State::ChunkEnd,
                            };
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Close => {
                    if conn.buf.is_empty() {
                        Some(BIG_READ)
                    } else {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::ChunkSize => match conn.buf.iter().position(|&b| b == b'\n') {
                    Some(lf) => {
                        if lf == 0 || conn.buf[lf - 1] != b'\r' {
                            return this.fail(UpstreamError::Framing("chunk size line"));
                        }
                        let Some(size) = chunk_size(&conn.buf[..lf - 1]) else {
                            return this.fail(UpstreamError::Framing("invalid chunk size"));
                        };
                        conn.buf.advance(lf + 1);
                        this.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size)
                        };
                        None
                    }
                    None if conn.buf.len() > MAX_CHUNK_LINE => {
                        return this.fail(UpstreamError::Framing("chunk size line too long"));
                    }
                    None => Some(0),
                },
                State::ChunkEnd => {
                    if conn.buf.len() < 2 {
                        Some(0)
                    } else if &conn.buf[..2] == b"\r\n" {
                        conn.buf.advance(2);
                        this.state = State::ChunkSize;
                        None
                    } else {
                        return this.fail(UpstreamError::Framing("no CRLF after chunk data"));
                    }
                }
                State::Trailers => match trailers(&conn.buf) {
                    Err(e) => return this.fail(e),
                    Ok(Some((len, map))) => {
                        conn.buf.advance(len);
                        this.state = State::Done;
                        return Poll::Ready((!map.is_empty()).then(|| Ok(Frame::trailers(map))));
                    }
                    Ok(None) if conn.buf.len() > MAX_HEAD => {
                        return this.fail(UpstreamError::Framing("trailer section too large"));
                    }
                    Ok(None) => Some(0),
                },
            };
            let Some(want) = need else { continue };
            match conn.poll_fill(cx, want) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    if let State::Close = this.state {
                        this.state = State::Done;
                        return Poll::Ready(None);
                    }
                    return this.fail(UpstreamError::Closed {
                        during: "in the middle of the response body",
                    });
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    return this.fail(UpstreamError::Io {
                        during: "reading the response body",
                        source: e,
                    })
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(rem) => SizeHint::with_exact(rem),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
