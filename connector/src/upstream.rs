//! Dialling the workload and splicing bytes between it and the QUIC stream.
//!
//! Up is caller → workload (QUIC recv → TCP write), down is workload →
//! caller (TCP read → QUIC send). Each direction ends on its own, so
//! half-close passes through: a QUIC FIN becomes a TCP `shutdown(Write)`
//! and a TCP EOF becomes a QUIC FIN. An abrupt end on one side is passed on
//! as an abrupt end on the other: a QUIC reset aborts the TCP connection
//! (RST), a TCP error resets the QUIC stream.

use std::io;
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use palisade_policies::Grant;
use palisade_proto::batch::Batch;
use palisade_proto::reject::RejectCode;
use quinn::{ReadError, RecvStream, SendStream, VarInt, WriteError};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

use crate::config::ServiceConfig;

mod dial;

/// Size of each read from the workload. Large reads keep the per-byte cost
/// of the QUIC send path low; the buffer is reused once quinn releases it.
const CHUNK: usize = 64 * 1024;

/// The workload could not be reached.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectUpstreamError {
    #[error("connecting to {addr} timed out after {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("cannot connect to {addr}: {source}")]
    Unreachable { addr: String, source: io::Error },
}

impl ConnectUpstreamError {
    /// The code the caller sees.
    pub(crate) fn reject_code(&self) -> RejectCode {
        match self {
            Self::Timeout { .. } => RejectCode::UpstreamTimeout,
            Self::Unreachable { .. } => RejectCode::UpstreamUnreachable,
        }
    }
}

/// Dials the workload of a service the engine granted.
pub(crate) async fn connect(
    grant: &Grant,
    upstream: &ServiceConfig,
    timeout: Duration,
) -> Result<TcpStream, ConnectUpstreamError> {
    let addr = upstream.upstream.as_str();
    tracing::debug!(service = grant.service(), segment = grant.segment(), addr, "dialling upstream");
    let unreachable = |source| ConnectUpstreamError::Unreachable { addr: addr.to_owned(), source };
    let stream = tokio::time::timeout(timeout, dial::dial(addr))
        .await
        .map_err(|_| ConnectUpstreamError::Timeout { addr: addr.to_owned(), timeout })?
        .map_err(unreachable)?;
    stream.set_nodelay(true).map_err(unreachable)?;
    Ok(stream)
}

/// How a splice ended.
#[derive(Debug)]
pub(crate) enum SpliceEnd {
    /// Both directions finished cleanly.
    Clean,
    /// The caller reset its side; the workload connection was aborted.
    DownstreamReset(VarInt),
    /// The caller stopped reading; the workload connection was aborted.
    DownstreamStopped(VarInt),
    /// The workload connection failed; the QUIC stream was reset.
    Upstream(io::Error),
    /// The QUIC connection went away.
    ConnectionLost(String),
}

impl std::fmt::Display for SpliceEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Clean => f.write_str("both directions finished"),
            Self::DownstreamReset(code) => write!(f, "the caller reset the stream (code {code})"),
            Self::DownstreamStopped(code) => write!(f, "the caller stopped reading (code {code})"),
            Self::Upstream(e) => write!(f, "the workload connection failed: {e}"),
            Self::ConnectionLost(e) => write!(f, "the QUIC connection was lost: {e}"),
        }
    }
}

/// Bytes moved and how it ended.
#[derive(Debug)]
pub(crate) struct SpliceReport {
    pub(crate) bytes_up: u64,
    pub(crate) bytes_down: u64,
    pub(crate) end: SpliceEnd,
}

/// Splices until both directions are done, then tears down whatever is left.
pub(crate) async fn splice(send: &mut SendStream, recv: &mut RecvStream, mut tcp: TcpStream) -> SpliceReport {
    let (mut bytes_up, mut bytes_down) = (0, 0);
    let result = {
        let (mut tcp_read, mut tcp_write) = tcp.split();
        tokio::try_join!(copy_up(recv, &mut tcp_write, &mut bytes_up), copy_down(&mut tcp_read, send, &mut bytes_down),)
    };
    let end = match result {
        Ok(((), ())) => SpliceEnd::Clean,
        Err(end) => {
            abort(send, recv, &tcp, &end);
            end
        }
    };
    SpliceReport { bytes_up, bytes_down, end }
}

fn abort(send: &mut SendStream, recv: &mut RecvStream, tcp: &TcpStream, end: &SpliceEnd) {
    // SO_LINGER 0: the workload sees a RST, not an orderly FIN that could pass for a complete request.
    let _ = tcp.set_zero_linger();
    let code = match end {
        SpliceEnd::DownstreamReset(code) | SpliceEnd::DownstreamStopped(code) => *code,
        SpliceEnd::Upstream(_) => VarInt::from_u32(RejectCode::UpstreamUnreachable.as_u32()),
        SpliceEnd::Clean | SpliceEnd::ConnectionLost(_) => return,
    };
    // Either half may already be closed; that is the state we want anyway.
    let _ = send.reset(code);
    let _ = recv.stop(code);
}

/// Each read takes the chunks a receive batch delivered and writes them in
/// one vectored write.
async fn copy_up(recv: &mut RecvStream, tcp: &mut WriteHalf<'_>, bytes: &mut u64) -> Result<(), SpliceEnd> {
    let mut batch = Batch::new();
    loop {
        match recv.read_chunks(batch.slots()).await {
            Ok(Some(n)) => {
                batch.filled(n);
                let moved = batch.remaining() as u64;
                tcp.write_all_buf(&mut batch).await.map_err(SpliceEnd::Upstream)?;
                *bytes += moved;
            }
            Ok(None) => return tcp.shutdown().await.map_err(SpliceEnd::Upstream),
            Err(ReadError::Reset(code)) => return Err(SpliceEnd::DownstreamReset(code)),
            Err(e) => return Err(SpliceEnd::ConnectionLost(e.to_string())),
        }
    }
}

async fn copy_down(tcp: &mut ReadHalf<'_>, send: &mut SendStream, bytes: &mut u64) -> Result<(), SpliceEnd> {
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        buf.reserve(CHUNK);
        let n = tcp.read_buf(&mut buf).await.map_err(SpliceEnd::Upstream)?;
        if n == 0 {
            return send.finish().map_err(|e| SpliceEnd::ConnectionLost(e.to_string()));
        }
        send.write_chunk(buf.split().freeze()).await.map_err(|e| match e {
            WriteError::Stopped(code) => SpliceEnd::DownstreamStopped(code),
            other => SpliceEnd::ConnectionLost(other.to_string()),
        })?;
        *bytes += n as u64;
    }
}
