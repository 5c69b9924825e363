//! Lingering close: a connection the server is done with is shut for writing, then read and
//! discarded for a bounded time before it is closed.
//!
//! The server answers some requests before reading their bodies (a manifest over the limit, a
//! refused credential, a store outage), and then closes the connection. Closing a socket whose
//! receive buffer still holds bytes makes the kernel send a reset, and a reset can destroy the
//! answer in the client's receive buffer before the client reads it: an HTTP/1.1 client still
//! sending its body sees "connection reset" or "broken pipe" instead of the 413 or 503. So,
//! like Apache's lingering close, the write side is shut first (the client reads the answer,
//! then end of stream) and what the client still sends is discarded until it stops.
//!
//! Invariants:
//! - A lingering connection keeps its place among the admitted connections (`admission`).
//! - A lingering connection costs one small task and a 16 KiB buffer, and ends after
//!   `LINGER_IDLE` without data, `LINGER_TOTAL` in all, at end of stream or on any error.
//! - Nothing read while lingering is interpreted.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::admission::Admitted;

/// How long a lingering connection waits for more of what the client sends.
const LINGER_IDLE: Duration = Duration::from_secs(2);
/// The most time spent discarding one connection's bytes.
const LINGER_TOTAL: Duration = Duration::from_secs(30);

/// A TCP connection that lingers when dropped (see the module documentation), holding its
/// place among the admitted connections until it is closed.
pub struct Lingering {
    stream: Option<TcpStream>,
    admitted: Option<Admitted>,
}

impl Lingering {
    pub fn new(stream: TcpStream, admitted: Admitted) -> Lingering {
        Lingering {
            stream: Some(stream),
            admitted: Some(admitted),
        }
    }

    /// Sends small writes at once (answers are written whole; no Nagle delay).
    pub fn set_nodelay(&self) {
        if let Some(stream) = &self.stream {
            let _ = stream.set_nodelay(true);
        }
    }

    /// Reads the next bytes without consuming them.
    pub async fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream()?.get_mut().peek(buf).await
    }

    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.stream
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        // Outside a runtime (it is shutting down) there is no one left to answer: just close.
        if let (Some(stream), Ok(runtime)) =
            (self.stream.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(linger(stream, self.admitted.take()));
        }
    }
}

async fn linger(mut stream: TcpStream, _admitted: Option<Admitted>) {
    // Shutting down twice is harmless: TLS usually shut it after its close_notify.
    let _ = stream.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER_TOTAL;
    let mut discard = vec![0u8; 16 * 1024];
    loop {
        let wait = (tokio::time::Instant::now() + LINGER_IDLE).min(deadline);
        match tokio::time::timeout_at(wait, stream.read(&mut discard)).await {
            Ok(Ok(read)) if read > 0 => {}
            _ => break,
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_read(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_write(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_write_vectored(cx, bufs),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(|stream| stream.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_flush(cx),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_shutdown(cx),
            Err(err) => Poll::Ready(Err(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// The server reads a little of a large upload, answers and drops the connection. The
    /// client, like Python's `http.client`, sends its whole body before it reads the answer,
    /// and a failed send ends its request: every send must succeed and the answer arrive.
    async fn answer_seen_by_a_client_still_sending() -> io::Result<Vec<u8>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let (stream, peer) = listener.accept().await?;
            let admitted = crate::admission::Admission::new(1, 1)
                .admit(peer.ip(), false)
                .map_err(|refusal| io::Error::other(format!("{refusal:?}")))?;
            let mut stream = Lingering::new(stream, admitted);
            let mut head = [0u8; 1024];
            stream.read_exact(&mut head).await?;
            stream
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\n\r\n")
                .await?;
            drop(stream);
            io::Result::Ok(())
        });
        let mut stream = TcpStream::connect(address).await?;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..256 {
            stream.write_all(&chunk).await?;
        }
        stream.shutdown().await?;
        server.await.map_err(io::Error::other)??;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok(answer)
    }

    #[tokio::test]
    async fn a_client_still_sending_a_refused_body_reads_the_answer() {
        let answer = answer_seen_by_a_client_still_sending()
            .await
            .expect("the body is sent and the answer arrives, without a reset");
        assert_eq!(answer, b"HTTP/1.1 413 Payload Too Large\r\n\r\n");
    }
}
