//! Bytes between a local TCP connection and its QUIC stream, both ways.
//!
//! Backpressure comes from awaiting each write; half-close is preserved: TCP
//! EOF finishes the QUIC send side, the QUIC stream finishing shuts down the
//! TCP write side, and the other direction carries on until it ends too.

use bytes::{Buf as _, BytesMut};
use palisade_proto::batch::Batch;
use quinn::VarInt;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

use crate::tunnel::TunnelError;

/// Largest TCP → QUIC chunk read at once.
const CHUNK: usize = 64 * 1024;

/// How many bytes went each way through one spliced connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceStats {
    /// From the local application towards the service.
    pub bytes_up: u64,
    /// From the service back to the local application.
    pub bytes_down: u64,
}

/// Relays `tcp` through a stream opened by [`crate::Tunnel::open`] until both
/// directions have ended.
///
/// On a refusal or any failure the QUIC stream is reset and the TCP
/// connection closed with a RST, so the local application sees the cut.
///
/// # Errors
/// [`TunnelError::Rejected`] when the broker or connector refused the stream,
/// other variants when the connection or a socket failed.
pub async fn splice_tcp(
    mut tcp: TcpStream,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    service: &str,
) -> Result<SpliceStats, TunnelError> {
    let _ = tcp.set_nodelay(true);
    let result = {
        let (tcp_read, tcp_write) = tcp.split();
        tokio::try_join!(copy_up(tcp_read, &mut send, service), copy_down(&mut recv, tcp_write, service))
    };
    match result {
        Ok((bytes_up, bytes_down)) => Ok(SpliceStats { bytes_up, bytes_down }),
        Err(e) => {
            let _ = send.reset(VarInt::from_u32(0));
            let _ = recv.stop(VarInt::from_u32(0));
            let _ = tcp.set_zero_linger();
            Err(e)
        }
    }
}

/// Local application → service.
///
/// The buffer is allocated only once data is readable and handed to quinn
/// without a copy, so an idle tunnel holds no buffer at all (10,000 idle
/// tunnels would otherwise pin 640 MiB of zeroed 64 KiB buffers). The read
/// itself goes through `read_buf`: a short read tells tokio the socket is
/// drained, so the next turn waits for new data instead of asking the kernel
/// once more only to hear "would block" (one system call per request saved).
async fn copy_up(mut tcp: ReadHalf<'_>, send: &mut quinn::SendStream, service: &str) -> Result<u64, TunnelError> {
    let mut total = 0u64;
    loop {
        tcp.readable().await?;
        let mut buf = BytesMut::with_capacity(CHUNK);
        let n = tcp.read_buf(&mut buf).await?;
        if n == 0 {
            let _ = send.finish();
            return Ok(total);
        }
        match send.write_chunk(buf.freeze()).await {
            Ok(()) => total += n as u64,
            // The far side has stopped reading without refusing anything: behave as
            // a TCP peer that shut down its read side, and keep the other direction.
            Err(quinn::WriteError::Stopped(code)) if code.into_inner() == 0 => return Ok(total),
            Err(e) => return Err(write_error(e, service)),
        }
    }
}

/// Service → local application: each read takes the chunks a receive batch
/// delivered and writes them in one vectored write.
async fn copy_down(recv: &mut quinn::RecvStream, mut tcp: WriteHalf<'_>, service: &str) -> Result<u64, TunnelError> {
    let mut total = 0u64;
    let mut batch = Batch::new();
    loop {
        match recv.read_chunks(batch.slots()).await {
            Ok(Some(n)) => {
                batch.filled(n);
                let moved = batch.remaining() as u64;
                tcp.write_all_buf(&mut batch).await?;
                total += moved;
            }
            Ok(None) => {
                tcp.shutdown().await?;
                return Ok(total);
            }
            Err(e) => return Err(read_error(e, service)),
        }
    }
}

pub(crate) fn read_error(e: quinn::ReadError, service: &str) -> TunnelError {
    match e {
        quinn::ReadError::Reset(code) => TunnelError::from_code(code, service),
        quinn::ReadError::ConnectionLost(e) => TunnelError::from_connection(&e, service),
        other => TunnelError::Protocol(other.to_string()),
    }
}

pub(crate) fn write_error(e: quinn::WriteError, service: &str) -> TunnelError {
    match e {
        quinn::WriteError::Stopped(code) => TunnelError::from_code(code, service),
        quinn::WriteError::ConnectionLost(e) => TunnelError::from_connection(&e, service),
        other => TunnelError::Protocol(other.to_string()),
    }
}
