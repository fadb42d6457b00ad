//! Moving bytes between two QUIC streams: the client's and the connector's.
//!
//! Each read takes every chunk the receiving stream has ready (up to a
//! receive batch's worth) and writes them on as one chunk (see
//! `palisade_proto::batch`).
//! Backpressure comes from awaiting each write; half-close is preserved (a
//! finished side finishes the other); a reset or stop on one side is passed
//! to the other with the same code, so a refusal by the connector reaches
//! the client as the connector's reason. A connection that is lost (idle
//! timeout, stateless reset) becomes the code that names whose it was: the
//! connector's is `NoConnector`, not a workload problem.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Buf as _;
use palisade_proto::batch::Batch;
use palisade_proto::reject::RejectCode;
use palisade_telemetry::Counter;
use quinn::{ReadError, RecvStream, SendStream, VarInt, WriteError};
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// What a finished tunnel moved.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpliceStats {
    /// Client → connector bytes.
    pub bytes_up: u64,
    /// Connector → client bytes.
    pub bytes_down: u64,
    /// Wall-clock duration.
    pub duration: Duration,
    /// The reset code that ended the tunnel early, if any.
    pub reset: Option<u64>,
}

/// One direction's result: bytes moved and the code that cut it short.
struct Pipe {
    bytes: u64,
    reset: Option<u64>,
}

/// Splices the two streams until both directions are finished.
///
/// Cancelling `cut` ends both directions at once with the `Revoked` code
/// (continuous enforcement: a policy change that no longer allows the tunnel).
/// `traffic` counts the bytes as they pass, for the console's live view.
pub async fn splice(
    client: (SendStream, RecvStream),
    connector: (SendStream, RecvStream),
    cut: &CancellationToken,
    traffic: &super::live::Traffic,
) -> SpliceStats {
    let started = Instant::now();
    let (client_send, client_recv) = client;
    let (connector_send, connector_recv) = connector;
    let (up_total, down_total) = (metrics::BYTES.get(&["up"]), metrics::BYTES.get(&["down"]));
    let (up, down) = tokio::join!(
        pipe((client_recv, CLIENT_LOST), (connector_send, CONNECTOR_LOST), cut, (&traffic.up, &up_total)),
        pipe((connector_recv, CONNECTOR_LOST), (client_send, CLIENT_LOST), cut, (&traffic.down, &down_total))
    );
    SpliceStats {
        bytes_up: up.bytes,
        bytes_down: down.bytes,
        duration: started.elapsed(),
        reset: up.reset.or(down.reset),
    }
}

/// The code sent on when the client's connection is lost (only the connector reads it).
const CLIENT_LOST: RejectCode = RejectCode::UpstreamUnreachable;
/// The code sent on when the connector's connection is lost: the client is
/// told no connector serves the service, which is what happened.
const CONNECTOR_LOST: RejectCode = RejectCode::NoConnector;

/// `from` and `to` come with the code their connection's loss becomes;
/// `counters`: this tunnel's live count, and the broker's total for the direction.
async fn pipe(
    (mut from, from_lost): (RecvStream, RejectCode),
    (mut to, to_lost): (SendStream, RejectCode),
    cut: &CancellationToken,
    counters: (&AtomicU64, &Counter),
) -> Pipe {
    let mut bytes = 0u64;
    let cancelled = cut.cancelled();
    tokio::pin!(cancelled);
    let mut batch = Batch::new();
    loop {
        let read = tokio::select! {
            biased;
            () = &mut cancelled => {
                let code = VarInt::from_u32(RejectCode::Revoked.as_u32());
                let _ = to.reset(code);
                let _ = from.stop(code);
                return Pipe { bytes, reset: Some(code.into_inner()) };
            }
            read = from.read_chunks(batch.slots()) => read,
        };
        match read {
            Ok(Some(n)) => {
                batch.filled(n);
                let chunk = batch.copy_to_bytes(batch.remaining());
                bytes += chunk.len() as u64;
                counters.0.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                counters.1.add(chunk.len() as u64);
                if let Err(e) = to.write_chunk(chunk).await {
                    let code = write_error_code(&e, to_lost);
                    let _ = from.stop(code);
                    return Pipe { bytes, reset: Some(code.into_inner()) };
                }
            }
            Ok(None) => {
                let _ = to.finish();
                return Pipe { bytes, reset: None };
            }
            Err(e) => {
                let code = read_error_code(&e, from_lost);
                let _ = to.reset(code);
                return Pipe { bytes, reset: Some(code.into_inner()) };
            }
        }
    }
}

fn internal() -> VarInt {
    VarInt::from_u32(RejectCode::Internal.as_u32())
}

fn read_error_code(e: &ReadError, lost: RejectCode) -> VarInt {
    match e {
        ReadError::Reset(code) => *code,
        ReadError::ConnectionLost(_) => VarInt::from_u32(lost.as_u32()),
        _ => internal(),
    }
}

fn write_error_code(e: &WriteError, lost: RejectCode) -> VarInt {
    match e {
        WriteError::Stopped(code) => *code,
        WriteError::ConnectionLost(_) => VarInt::from_u32(lost.as_u32()),
        _ => internal(),
    }
}
