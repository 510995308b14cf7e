//! For tests only: one side of a connection over an in-memory pipe, which can take writes a few bytes at a time
//! or refuse every other write, and counts the writes it took, plain and vectored.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

/// What a [`Wire`] was offered and took.
#[derive(Debug, Default)]
pub(crate) struct WireCounts {
    /// Plain writes taken.
    pub plain: AtomicUsize,
    /// Vectored writes taken.
    pub vectored: AtomicUsize,
    /// Non-empty slices in the vectored writes taken.
    pub slices: AtomicUsize,
}

impl WireCounts {
    pub fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::Relaxed)
    }
}

/// A duplex pipe's end that reports itself as taking vectored writes.
pub(crate) struct Wire {
    inner: DuplexStream,
    /// The most bytes one write takes.
    most: usize,
    /// Whether every other write is refused.
    balky: bool,
    refused: bool,
    counts: Arc<WireCounts>,
}

impl Wire {
    pub fn new(inner: DuplexStream) -> Wire {
        Wire { inner, most: usize::MAX, balky: false, refused: false, counts: Arc::default() }
    }

    /// Each write takes at most `most` bytes.
    pub fn most(mut self, most: usize) -> Wire {
        self.most = most;
        self
    }

    /// The first write, and every other one after it, is refused with `Pending`, the task woken at once (as
    /// tokio's cooperative budget does): a write offered once with a waker that does nothing takes nothing.
    pub fn balky(mut self) -> Wire {
        self.balky = true;
        self
    }

    /// Counts what it takes into `counts`.
    pub fn counted(mut self, counts: &Arc<WireCounts>) -> Wire {
        self.counts = counts.clone();
        self
    }

    fn refuse(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.balky {
            return false;
        }
        self.refused = !self.refused;
        if self.refused {
            cx.waker().wake_by_ref();
        }
        self.refused
    }
}

impl AsyncRead for Wire {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Wire {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.refuse(cx) {
            return Poll::Pending;
        }
        self.counts.plain.fetch_add(1, Ordering::Relaxed);
        let most = buf.len().min(self.most);
        Pin::new(&mut self.inner).poll_write(cx, &buf[..most])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.refuse(cx) {
            return Poll::Pending;
        }
        self.counts.vectored.fetch_add(1, Ordering::Relaxed);
        self.counts.slices.fetch_add(bufs.iter().filter(|b| !b.is_empty()).count(), Ordering::Relaxed);
        if self.most == usize::MAX {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
        let most = first.len().min(self.most);
        Pin::new(&mut self.inner).poll_write(cx, &first[..most])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
