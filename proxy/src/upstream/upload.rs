//! The request body on its way to the app, written as the client's body yields it. Driven
//! together with the reading of the response head, so that an app answering before it read
//! the whole body (an early error, or a full-duplex echo) is heard; if the upload is not over
//! by then, it goes on in a task of its own beside the response (see [`super::send`]).

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::Body;
use tokio::io::AsyncWrite;

use super::RequestBody;

/// Why an upload stopped.
pub(crate) enum UploadError<E> {
    /// The client's body failed.
    Client(E),
    /// Writing to the app failed.
    Write(io::Error),
}

/// Upload state: framed bytes waiting to be written, and whether the body has ended.
pub(crate) struct Upload {
    chunked: bool,
    pending: VecDeque<Bytes>,
    eof: bool,
    /// Bytes written to the app so far (framing included): the progress the idle timeout
    /// watches.
    sent: u64,
    /// The last poll stopped because the client's body had nothing more yet (rather than
    /// because the app was not taking bytes).
    waiting_for_client: bool,
}

impl Upload {
    pub(crate) fn new(chunked: bool) -> Self {
        Upload {
            chunked,
            pending: VecDeque::new(),
            eof: false,
            sent: 0,
            waiting_for_client: false,
        }
    }

    /// Bytes written to the app so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    /// Whether the upload is waiting for the client's next bytes (not for the app).
    pub(crate) fn waiting_for_client(&self) -> bool {
        self.waiting_for_client && !self.finished()
    }

    /// Every byte of the body, and its end, was written.
    pub(crate) fn finished(&self) -> bool {
        self.eof && self.pending.is_empty()
    }

    fn push_frame(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        if self.chunked {
            self.pending
                .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
            self.pending.push_back(data);
            self.pending.push_back(Bytes::from_static(b"\r\n"));
        } else {
            self.pending.push_back(data);
        }
    }

    fn push_end(&mut self, trailers: Option<&http::HeaderMap>) {
        self.eof = true;
        if !self.chunked {
            return;
        }
        let Some(trailers) = trailers.filter(|t| !t.is_empty()) else {
            self.pending.push_back(Bytes::from_static(b"0\r\n\r\n"));
            return;
        };
        let mut end = Vec::from(&b"0\r\n"[..]);
        for (name, value) in trailers {
            end.extend_from_slice(name.as_str().as_bytes());
            end.extend_from_slice(b": ");
            end.extend_from_slice(value.as_bytes());
            end.extend_from_slice(b"\r\n");
        }
        end.extend_from_slice(b"\r\n");
        self.pending.push_back(Bytes::from(end));
    }

    /// Moves the upload on as far as it goes without waiting; `Ready(Ok)` once finished.
    pub(crate) fn poll<B, W>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut W,
        body: &mut RequestBody<B>,
    ) -> Poll<Result<(), UploadError<B::Error>>>
    where
        B: Body<Data = Bytes> + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if !self.pending.is_empty() {
                let mut slices = [IoSlice::new(&[]); 4];
                let n = self.pending.len().min(slices.len());
                for (slice, buf) in slices.iter_mut().zip(self.pending.iter()) {
                    *slice = IoSlice::new(buf);
                }
                match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]) {
                    Poll::Pending => {
                        self.waiting_for_client = false;
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(UploadError::Write(e))),
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(UploadError::Write(
                            io::ErrorKind::WriteZero.into(),
                        )))
                    }
                    Poll::Ready(Ok(mut written)) => {
                        self.sent += written as u64;
                        while written > 0 {
                            let Some(front) = self.pending.front_mut() else {
                                break;
                            };
                            let take = written.min(front.len());
                            front.advance(take);
                            written -= take;
                            if front.is_empty() {
                                self.pending.pop_front();
                            }
                        }
                    }
                }
                continue;
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            let Some(inner) = body.inner.as_mut() else {
                self.eof = true;
                continue;
            };
            let frame = match Pin::new(inner).poll_frame(cx) {
                Poll::Pending => {
                    self.waiting_for_client = true;
                    return Poll::Pending;
                }
                Poll::Ready(frame) => frame,
            };
            body.touched = true;
            match frame {
                None => self.push_end(None),
                Some(Err(e)) => return Poll::Ready(Err(UploadError::Client(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.push_frame(data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.push_end(Some(&trailers));
                        }
                    }
                },
            }
        }
    }
}

/// An idle timeout: fires when `progress` has not moved for `every` (it is re-armed, lazily,
/// when it runs out after progress). One timer per exchange, reset only when it runs out.
pub(crate) struct Idle<'a> {
    sleep: Pin<&'a mut tokio::time::Sleep>,
    every: std::time::Duration,
    armed: u64,
}

impl<'a> Idle<'a> {
    /// `sleep` must have been made with `every` just now; `progress` is the count to watch.
    pub(crate) fn new(
        sleep: Pin<&'a mut tokio::time::Sleep>,
        every: std::time::Duration,
        progress: u64,
    ) -> Self {
        Idle {
            sleep,
            every,
            armed: progress,
        }
    }

    /// `Ready` once `every` passed with `progress` unchanged.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, progress: u64) -> Poll<()> {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if progress == self.armed {
                return Poll::Ready(());
            }
            self.armed = progress;
            let next = tokio::time::Instant::now() + self.every;
            self.sleep.as_mut().reset(next);
        }
    }
}
