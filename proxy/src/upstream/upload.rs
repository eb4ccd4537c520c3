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
    /// When bytes last went to the app: the progress the idle timeout watches.
    last_write: Option<tokio::time::Instant>,
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
            last_write: None,
            waiting_for_client: false,
        }
    }

    /// When bytes last went to the app (none yet: `None`).
    pub(crate) fn last_write(&self) -> Option<tokio::time::Instant> {
        self.last_write
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
                        self.last_write = Some(tokio::time::Instant::now());
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

/// An idle timeout: fires once `every` has passed since the start and since the last
/// progress. The timer is moved only when it runs out (never per byte), to the last
/// progress + `every`.
pub(crate) struct Idle<'a> {
    sleep: Pin<&'a mut tokio::time::Sleep>,
    every: std::time::Duration,
}

impl<'a> Idle<'a> {
    /// `sleep` must have been made with `every` just now.
    pub(crate) fn new(sleep: Pin<&'a mut tokio::time::Sleep>, every: std::time::Duration) -> Self {
        Idle { sleep, every }
    }

    /// `Ready` once `every` passed since `last_progress` (and since the start).
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        last_progress: Option<tokio::time::Instant>,
    ) -> Poll<()> {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match last_progress.map(|t| t + self.every) {
                Some(later) if later > self.sleep.deadline() => self.sleep.as_mut().reset(later),
                _ => return Poll::Ready(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::Idle;

    #[tokio::test(start_paused = true)]
    async fn idle_fires_its_time_after_the_last_progress_not_after_the_start() {
        let every = Duration::from_millis(100);
        let start = Instant::now();
        let sleep = tokio::time::sleep(every);
        tokio::pin!(sleep);
        let mut idle = Idle::new(sleep, every);
        let progress = Some(start + Duration::from_millis(70));
        poll_fn(|cx| idle.poll(cx, progress)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(170));

        // Without progress it fires after `every`.
        let start = Instant::now();
        let sleep = tokio::time::sleep(every);
        tokio::pin!(sleep);
        let mut idle = Idle::new(sleep, every);
        poll_fn(|cx| idle.poll(cx, None)).await;
        assert_eq!(start.elapsed(), every);
    }
}
