//! Limits on connections themselves, before and between requests: how many may be open at
//! once, and how long one may stay silent. hyper's header timeout starts only when a request's
//! first byte arrives, and it keeps an idle keep-alive connection for ever, so a client that
//! opened connections and sent nothing would hold them, and the server's file descriptors,
//! for good.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Takes a connection only while fewer than its limit are open, and wraps it in [`Guarded`].
/// With TLS it sits under the TLS acceptor, so a handshake that never comes is silence too.
#[derive(Clone)]
pub(crate) struct GuardedAcceptor {
    slots: Arc<Semaphore>,
    first_byte: Duration,
    idle: Duration,
}

impl GuardedAcceptor {
    /// At most `max_connections` open; a new one must send within `first_byte`, and an open
    /// one is closed after `idle` without a byte either way.
    pub fn new(max_connections: usize, first_byte: Duration, idle: Duration) -> Self {
        GuardedAcceptor {
            slots: Arc::new(Semaphore::new(max_connections)),
            first_byte,
            idle,
        }
    }
}

impl<S> Accept<TcpStream, S> for GuardedAcceptor {
    type Stream = Guarded<TcpStream>;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        std::future::ready(match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Ok((Guarded::new(stream, slot, self.first_byte, self.idle), service)),
            // Closed at once: one that waited would hold a descriptor all the same.
            Err(_) => {
                tracing::debug!("a connection was closed: --max-connections are open");
                Err(io::Error::other("too many connections"))
            }
        })
    }
}

/// A connection that fails its reads and writes once it has been silent too long, and frees
/// its slot when dropped.
pub(crate) struct Guarded<S> {
    inner: S,
    deadline: Pin<Box<Sleep>>,
    idle: Duration,
    _slot: OwnedSemaphorePermit,
}

impl<S> Guarded<S> {
    fn new(inner: S, slot: OwnedSemaphorePermit, first_byte: Duration, idle: Duration) -> Self {
        Guarded {
            inner,
            deadline: Box::pin(tokio::time::sleep(first_byte)),
            idle,
            _slot: slot,
        }
    }

    fn moved(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// What a call that would wait answers: still waiting, or the end of a silent connection.
    fn waiting<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection was silent too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.waiting(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(result) => {
                if result.as_ref().is_ok_and(|n| *n > 0) {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.waiting(cx),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.waiting(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
