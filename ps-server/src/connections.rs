//! A cap on open client connections. Each connection may hold up to its
//! HTTP/2 connection window of data the shard has not read yet, so without
//! a cap the memory clients can pin grows with the number of connections.
//! Past the cap a new connection is closed at once: its client sees
//! `UNAVAILABLE` and retries with backoff.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

/// A connection that holds one of the cap's slots until it is dropped.
#[derive(Debug)]
pub struct Counted<IO> {
    io: IO,
    _slot: OwnedSemaphorePermit,
}

/// The connections of `incoming`, at most `max` open at once; the others
/// are closed on arrival and reported to `refused`.
pub fn limit<IO, E>(
    incoming: impl Stream<Item = Result<IO, E>>,
    max: usize,
    refused: impl Fn() + Send + 'static,
) -> impl Stream<Item = Result<Counted<IO>, E>> {
    let slots = Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)));
    incoming.filter_map(move |conn| {
        let admitted = match conn {
            Err(e) => Some(Err(e)),
            Ok(io) => match Arc::clone(&slots).try_acquire_owned() {
                Ok(slot) => Some(Ok(Counted { io, _slot: slot })),
                Err(_) => {
                    refused();
                    tracing::warn!(max, "refused a connection: --max-connections are open");
                    None
                }
            },
        };
        futures::future::ready(admitted)
    })
}

impl<IO: Connected> Connected for Counted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
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
}
