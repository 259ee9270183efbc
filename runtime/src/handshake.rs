//! A connection that never speaks is closed: one that has not sent its
//! HTTP/2 preface and first frame header within `server.handshake_timeout_ms`
//! (default 5 s) gets its socket closed. Without it, a TCP connection that
//! sends nothing, or half a preface, stays open for good (hyper waits for
//! the preface without a deadline, and HTTP/2 keepalive starts only after
//! it), each holding a socket, a task and buffers.
//!
//! With TLS on the server, the bytes counted are those under TLS, so a
//! ClientHello alone passes this check; what bounds a TLS client is tonic's
//! own TLS handshake timeout, set to the same value. A client that completes
//! TLS and then sends no HTTP/2 preface is not bounded here (hyper waits;
//! keepalive starts after the preface): a known gap, written down in
//! docs/security.md.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The client connection preface (24 bytes) and the header of the SETTINGS
/// frame that must follow it (9 bytes): once this much has arrived, the
/// client has spoken HTTP/2 and hyper's own limits take over.
const HANDSHAKE_BYTES: usize = 24 + 9;

/// An accepted connection that fails its reads once `timeout` has passed
/// without [`HANDSHAKE_BYTES`] from the client; hyper then closes it.
#[derive(Debug)]
pub struct HandshakeDeadline<IO> {
    io: IO,
    /// `None` once the client has sent its handshake.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    received: usize,
}

impl<IO> HandshakeDeadline<IO> {
    pub fn new(io: IO, timeout: Duration) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            received: 0,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for HandshakeDeadline<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some(deadline) = this.deadline.as_mut() else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) => {
                this.received += buf.filled().len() - before;
                if this.received >= HANDSHAKE_BYTES {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent no HTTP/2 handshake within server.handshake_timeout_ms",
                )))
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for HandshakeDeadline<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for HandshakeDeadline<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn pair(
        timeout: Duration,
    ) -> (
        tokio::io::DuplexStream,
        HandshakeDeadline<tokio::io::DuplexStream>,
    ) {
        let (client, server) = tokio::io::duplex(1024);
        (client, HandshakeDeadline::new(server, timeout))
    }

    #[tokio::test(start_paused = true)]
    async fn silence_and_half_a_preface_fail_at_the_deadline() {
        for sent in [&b""[..], &b"PRI * HTTP/2.0\r\n"[..]] {
            let (mut client, mut server) = pair(Duration::from_secs(5)).await;
            client.write_all(sent).await.unwrap();
            let mut buf = vec![0; 64];
            let started = tokio::time::Instant::now();
            let mut got = 0;
            let err = loop {
                match server.read(&mut buf).await {
                    Ok(n) => got += n,
                    Err(e) => break e,
                }
            };
            assert_eq!(got, sent.len());
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert_eq!(started.elapsed(), Duration::from_secs(5));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_spoke_is_not_timed_out_later() {
        let (mut client, mut server) = pair(Duration::from_secs(5)).await;
        let handshake = [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(), &[0; 9]].concat();
        client.write_all(&handshake).await.unwrap();
        let mut buf = vec![0; 64];
        server
            .read_exact(&mut buf[..HANDSHAKE_BYTES])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"more").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 4);
    }
}
