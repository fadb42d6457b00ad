//! Length-prefixed JSON frames on a QUIC stream.

use palisade_proto::wire::{self, WireError};
use quinn::{RecvStream, SendStream};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A frame could not be moved.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("stream: {0}")]
    Stream(String),
    #[error("the peer closed the stream")]
    Closed,
}

pub(crate) async fn write_frame<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<(), FrameError> {
    let bytes = wire::encode_frame(msg)?;
    send.write_all(&bytes).await.map_err(|e| FrameError::Stream(e.to_string()))
}

pub(crate) async fn read_frame<T: DeserializeOwned>(recv: &mut RecvStream) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Err(FrameError::Closed),
        Err(e) => return Err(FrameError::Stream(e.to_string())),
    }
    let len = wire::frame_len(len)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| FrameError::Stream(e.to_string()))?;
    Ok(wire::decode_frame(&body)?)
}
