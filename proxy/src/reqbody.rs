//! The client's request body as sent to the upstream (a leaf module: the pool's sender type
//! names it, the request path builds it).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The client's request body on its way to the upstream; notes when reading it from the
/// client failed (malformed chunked framing, client gone), so that the failed exchange is
/// answered 400 and not blamed on the instance.
pub(crate) struct ClientBody {
    inner: Incoming,
    failed: Arc<AtomicBool>,
}

impl ClientBody {
    pub(crate) fn new(inner: Incoming) -> (Self, Arc<AtomicBool>) {
        let failed = Arc::new(AtomicBool::new(false));
        (
            ClientBody {
                inner,
                failed: Arc::clone(&failed),
            },
            failed,
        )
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            this.failed.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
