//! Opening the TCP connection to a workload.
//!
//! A connector usually runs beside the workload it serves (the same host, the
//! same pod), where the TCP handshake has completed by the time the
//! non-blocking `connect` call returns. Tokio's `TcpStream::connect` still
//! waits for the runtime's reactor to report the socket writable, one more
//! turn of the runtime on the path of every new tunnel. The dial here issues
//! the non-blocking connect itself and takes the socket at once when the
//! handshake is already done; otherwise it waits for the socket to become
//! writable, as tokio does, and then asks the socket how the handshake ended.

use std::io;
use std::net::SocketAddr;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Connects to `addr` (`host:port`), trying each address it resolves to in
/// turn. The error is that of the last address tried.
pub(super) async fn dial(addr: &str) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        match dial_one(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the address resolved to no address")))
}

async fn dial_one(addr: SocketAddr) -> io::Result<TcpStream> {
    // mio's connect is non-blocking and treats "in progress" as success.
    let stream = TcpStream::from_std(mio::net::TcpStream::connect(addr)?.into())?;
    if established(&stream)? {
        return Ok(stream);
    }
    loop {
        stream.writable().await?;
        // Asked inside `try_io`: a wake-up that came before the handshake
        // finished clears only the readiness it saw, never a newer one.
        let finished = stream.try_io(Interest::WRITABLE, || {
            if established(&stream)? { Ok(()) } else { Err(io::ErrorKind::WouldBlock.into()) }
        });
        match finished {
            Ok(()) => return Ok(stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether the handshake has completed; the error it failed with, if it did.
fn established(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
