//! The request body on its way to the app, written as the client's body yields it. Driven
//! together with the reading of the response head, so that an app answering before it read
//! the whole body (an early error, or a full-duplex echo) is heard; if the upload is not over
//! by then, it goes on in a task of its own beside the response (see [`super::send`]).

use std::collections::VecDeque;
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
}

impl Upload {
    pub(crate) fn new(chunked: bool) -> Self {
        Upload {
            chunked,
            pending: VecDeque::new(),
            eof: false,
        }
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
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(UploadError::Write(e))),
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(UploadError::Write(
                            io::ErrorKind::WriteZero.into(),
                        )))
                    }
                    Poll::Ready(Ok(mut written)) => {
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
                Poll::Pending => return Poll::Pending,
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
