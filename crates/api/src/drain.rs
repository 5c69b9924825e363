//! Reading what is left of a request body after refusing it.
//!
//! When a server answers before reading the whole request body and closes the connection, the
//! kernel resets it, and an HTTP/1 client still sending often loses the answer with it. So a
//! refused request's body is read and discarded, up to a limit, before the answer goes out.
//!
//! Invariants:
//! - At most `DRAIN_LIMIT` bytes and `DRAIN_TIME` are spent on one body; a larger or slower one
//!   gets the answer and a closed connection. Nothing read is kept.
//! - A body a handler dropped before its end comes back through `Leftover` (the body itself
//!   never needs to be cloned or buffered); one read to its end leaves nothing to drain.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;

/// How much of a refused request's body is read (and discarded) so the client sees the answer.
pub(crate) const DRAIN_LIMIT: usize = 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and discards `body`, within the limits.
pub(crate) async fn drain(body: Body) {
    let mut body = body;
    let mut read = 0usize;
    let reading = async {
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |data| data.len());
            if read > DRAIN_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, reading).await;
}

/// Where a request body dropped before its end ends up.
pub(crate) struct Leftover(Arc<Mutex<Option<Body>>>);

impl Leftover {
    /// Replaces `request`'s body with one that, dropped unfinished, hands itself back here.
    pub(crate) fn watch(request: Request) -> (Request, Leftover) {
        let slot = Arc::new(Mutex::new(None));
        if request.body().is_end_stream() {
            // Nothing to drain (most GETs and HEADs): no wrapper.
            return (request, Leftover(slot));
        }
        let request = request.map(|body| {
            Body::new(Returning {
                body: Some(body),
                slot: slot.clone(),
            })
        });
        (request, Leftover(slot))
    }

    /// The unfinished body, if it was dropped before its end.
    pub(crate) fn take(&self) -> Option<Body> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

struct Returning {
    /// `None` once the body ended.
    body: Option<Body>,
    slot: Arc<Mutex<Option<Body>>>,
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.body = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|body| body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |body| body.size_hint())
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let Some(body) = self.body.take() {
            if !body.is_end_stream() {
                if let Ok(mut slot) = self.slot.lock() {
                    *slot = Some(body);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &'static [u8]) -> Request {
        Request::new(Body::from(body))
    }

    #[tokio::test]
    async fn a_body_dropped_unread_comes_back_whole() {
        let (request, leftover) = Leftover::watch(request(b"0123456789"));
        drop(request);
        let body = leftover.take().expect("the body came back");
        let bytes = body.collect().await.expect("readable").to_bytes();
        assert_eq!(&bytes[..], b"0123456789");
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_leaves_nothing() {
        let (request, leftover) = Leftover::watch(request(b"0123456789"));
        let bytes = request
            .into_body()
            .collect()
            .await
            .expect("readable")
            .to_bytes();
        assert_eq!(&bytes[..], b"0123456789");
        assert!(leftover.take().is_none());
    }

    #[tokio::test]
    async fn an_empty_body_leaves_nothing() {
        let (request, leftover) = Leftover::watch(request(b""));
        drop(request);
        assert!(leftover.take().is_none());
    }
}
