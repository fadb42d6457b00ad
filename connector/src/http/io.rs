//! The tunnel stream as one duplex byte stream for hyper.
//!
//! Dropping a quinn `SendStream` finishes it gracefully, which a client
//! could mistake for a complete response. When the connector cuts a tunnel
//! (a revocation), the stream is reset instead, so the caller sees an abrupt
//! end.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use palisade_proto::reject::RejectCode;
use quinn::{RecvStream, SendStream, VarInt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Set to have the stream reset, not finished, when the connection ends.
#[derive(Clone, Debug, Default)]
pub(crate) struct CutSwitch(Arc<AtomicBool>);

impl CutSwitch {
    pub(crate) fn cut(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_cut(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Byte counts, readable after hyper has consumed the stream.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) up: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) down: Arc<std::sync::atomic::AtomicU64>,
}

pub(crate) struct QuicIo {
    send: SendStream,
    recv: RecvStream,
    cut: CutSwitch,
    counters: Counters,
}

impl QuicIo {
    pub(crate) fn new(send: SendStream, recv: RecvStream, cut: CutSwitch, counters: Counters) -> Self {
        Self { send, recv, cut, counters }
    }
}

impl Drop for QuicIo {
    fn drop(&mut self) {
        if self.cut.is_cut() {
            let code = VarInt::from_u32(RejectCode::ForbiddenByConnector.as_u32());
            // The peer may have closed either half already; the stream is over either way.
            let _ = self.send.reset(code);
            let _ = self.recv.stop(code);
        }
    }
}

impl AsyncRead for QuicIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = AsyncRead::poll_read(Pin::new(&mut self.recv), cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.counters.up.fetch_add(read, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for QuicIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.counters.down.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}
