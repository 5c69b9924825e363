//! Request bodies: a refused one is read before the answer goes out (when that is cheap), a
//! stalled one is cut off.
//!
//! When a server answers before reading the whole request body and closes the connection, the
//! kernel resets it, and an HTTP/1 client still sending often loses the answer with it. So a
//! refused request's small body is read and discarded before the answer goes out, keeping the
//! connection usable, and a large one is left to the server's lingering close.
//! And a body that stops arriving would hold its upload (a writer, a staging file, a
//! connection) for as long as the client likes, so one that sends nothing for
//! `limits.body_idle_timeout` (a minute by default: clients stream layers without pauses) fails.
//!
//! Invariants:
//! - At most `DRAIN_LIMIT` bytes and `DRAIN_TIME` are spent on one body; a larger or slower one
//!   gets the answer and a closed connection. Nothing read is kept. A body the client has not
//!   been invited to send (`Expect: 100-continue`) or that declared more than the limit is not
//!   read at all: the answer goes out first (the server's lingering close lets it be read).
//! - A body a handler dropped before its end comes back through `Leftover` (the body itself
//!   never needs to be cloned or buffered); one read to its end leaves nothing to drain.
//! - Only the client's silence counts: the idle clock starts when a read finds nothing to
//!   return, not when the last frame was handed on (a handler that stops reading for a while,
//!   behind a slow disk or object store, is not the client stalling).
//! - The idle limit costs no timer per frame: the one timer is re-armed only when it fires
//!   before the current wait's deadline.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::{Instant, Sleep};

/// How much of a refused request's body is read (and discarded) so the client sees the answer.
pub(crate) const DRAIN_LIMIT: usize = 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads and discards the rest of a refused request's `body`, within the limits, so the
/// connection can carry the next request; but reads nothing that would only invite bytes it
/// could not finish: a client waiting for `100 Continue` (`expects_continue`) is answered
/// without one, so it never sends the body, and a body known to exceed `DRAIN_LIMIT` is answered
/// at once. Over HTTP/1.1 the connection then closes, and the server's lingering close
/// discards what the client still sends while it reads the answer; over HTTP/2 hyper keeps the
/// stream until the answer is sent, then ends it with `NO_ERROR` (RFC 9113 §8.1: stop sending,
/// the answer stands).
pub(crate) async fn drain(body: Body, expects_continue: bool) {
    if body.is_end_stream() || expects_continue || body.size_hint().lower() > DRAIN_LIMIT as u64 {
        return;
    }
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

/// Whether the client waits for `100 Continue` before it sends the body.
pub(crate) fn expects_continue(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::EXPECT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("100-continue"))
}

/// Where a request body dropped before its end ends up.
pub(crate) struct Leftover(Arc<Mutex<Option<Body>>>);

impl Leftover {
    /// Replaces `request`'s body with one that fails after `idle` without a frame and that,
    /// dropped unfinished, hands itself back here.
    pub(crate) fn watch(request: Request, idle: Duration) -> (Request, Leftover) {
        let slot = Arc::new(Mutex::new(None));
        if request.body().is_end_stream() {
            // Nothing to read (most GETs and HEADs): no wrapper.
            return (request, Leftover(slot));
        }
        let request = request.map(|body| {
            Body::new(Watched {
                body: Some(body),
                slot: slot.clone(),
                idle,
                waiting_since: None,
                timer: Box::pin(tokio::time::sleep(idle)),
            })
        });
        (request, Leftover(slot))
    }

    /// The unfinished body, if it was dropped before its end.
    pub(crate) fn take(&self) -> Option<Body> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// A request body that fails once its client has sent nothing for `idle`, and that, dropped
/// before its end, hands the rest back to its `Leftover`.
struct Watched {
    /// `None` once the body ended or timed out (nothing is handed back then).
    body: Option<Body>,
    slot: Arc<Mutex<Option<Body>>>,
    idle: Duration,
    /// Since when a read has found nothing to return; `None` once a frame was handed on.
    waiting_since: Option<Instant>,
    /// Fires at or before `waiting_since + idle`; re-armed only when it fires early.
    timer: Pin<Box<Sleep>>,
}

impl http_body::Body for Watched {
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
        if let Poll::Ready(frame) = Pin::new(body).poll_frame(cx) {
            this.waiting_since = None;
            if frame.is_none() {
                this.body = None;
            }
            return Poll::Ready(frame);
        }
        // Nothing yet: has the client been quiet for `idle`?
        let since = *this.waiting_since.get_or_insert_with(Instant::now);
        while this.timer.as_mut().poll(cx).is_ready() {
            let deadline = since + this.idle;
            if Instant::now() >= deadline {
                this.body = None;
                return Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no data for {} seconds", this.idle.as_secs()),
                )))));
            }
            this.timer.as_mut().reset(deadline);
        }
        Poll::Pending
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

impl Drop for Watched {
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

    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_body_dropped_unread_comes_back_whole() {
        let (request, leftover) = Leftover::watch(request(b"0123456789"), IDLE);
        drop(request);
        let body = leftover.take().expect("the body came back");
        let bytes = body.collect().await.expect("readable").to_bytes();
        assert_eq!(&bytes[..], b"0123456789");
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_leaves_nothing() {
        let (request, leftover) = Leftover::watch(request(b"0123456789"), IDLE);
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
        let (request, leftover) = Leftover::watch(request(b""), IDLE);
        drop(request);
        assert!(leftover.take().is_none());
    }

    /// A body sending each of `frames` after its delay, in virtual time.
    fn paced(frames: Vec<(u64, &'static [u8])>) -> Request {
        let stream = futures_util::StreamExt::then(
            futures_util::stream::iter(frames),
            |(secs, bytes)| async move {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                Ok::<_, std::io::Error>(Bytes::from_static(bytes))
            },
        );
        Request::new(Body::from_stream(stream))
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_sending_fails_after_the_idle_time() {
        let (request, _leftover) =
            Leftover::watch(paced(vec![(0, b"first"), (61, b"late")]), MINUTE);
        let mut body = request.into_body();
        let frame = body.frame().await.expect("a frame").expect("not an error");
        assert_eq!(frame.into_data().expect("data"), "first");
        let failed = body.frame().await.expect("an outcome");
        assert!(failed.is_err(), "the stalled body failed");
        assert!(body.frame().await.is_none(), "and then ends");
    }

    #[tokio::test(start_paused = true)]
    async fn frames_closer_than_the_idle_time_keep_a_body_going_however_long() {
        // Each gap is under a minute, the whole body takes four: the one timer is re-armed.
        let frames = vec![(40, &b"a"[..]), (50, b"b"), (59, b"c"), (45, b"d")];
        let (request, _leftover) = Leftover::watch(paced(frames), MINUTE);
        let bytes = request
            .into_body()
            .collect()
            .await
            .expect("no timeout")
            .to_bytes();
        assert_eq!(&bytes[..], b"abcd");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_pauses_is_not_a_silent_client() {
        // The handler reads a frame, then does not read for two minutes (a slow disk, a slow
        // object store); the next frame comes a moment after it reads again.
        let (request, _leftover) = Leftover::watch(paced(vec![(0, b"a"), (1, b"b")]), MINUTE);
        let mut body = request.into_body();
        body.frame().await.expect("a frame").expect("data");
        tokio::time::advance(2 * MINUTE).await;
        let next = body.frame().await.expect("a frame");
        assert_eq!(next.expect("not timed out").into_data().expect("data"), "b");
    }
}
