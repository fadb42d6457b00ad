//! Local listeners for `palisade connect` and `palisade proxy`: loopback only
//! unless asked, one task per accepted connection, refusals reported on stderr.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::tunnel::TunnelError;

/// A local listener could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The address is not a loopback address and `--allow-remote` was not given.
    #[error(
        "refusing to listen on {addr}: it is not a loopback address, so anyone who can reach this machine could use \
         your identity through it; listen on 127.0.0.1, or pass --allow-remote if sharing is really intended"
    )]
    NotLoopback {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The address is not an address.
    #[error("bad listen address {0:?}: expected 127.0.0.1:PORT")]
    BadAddress(String),
    /// Binding failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

/// Parses `127.0.0.1:PORT`, `[::1]:PORT`, `localhost:PORT` or a bare `PORT` (meaning 127.0.0.1).
///
/// # Errors
/// [`ListenError::BadAddress`].
pub fn parse_listen_addr(text: &str) -> Result<SocketAddr, ListenError> {
    let text = text.trim();
    if let Ok(port) = text.parse::<u16>() {
        return Ok((Ipv4Addr::LOCALHOST, port).into());
    }
    if let Some(port) = text.strip_prefix("localhost:") {
        let port = port.parse::<u16>().map_err(|_| ListenError::BadAddress(text.to_owned()))?;
        return Ok((Ipv4Addr::LOCALHOST, port).into());
    }
    text.parse().map_err(|_| ListenError::BadAddress(text.to_owned()))
}

/// Binds a TCP listener, refusing non-loopback addresses unless `allow_remote`.
///
/// # Errors
/// [`ListenError::NotLoopback`] or [`ListenError::Bind`].
pub async fn bind_local(addr: SocketAddr, allow_remote: bool) -> Result<TcpListener, ListenError> {
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(ListenError::NotLoopback { addr });
    }
    TcpListener::bind(addr).await.map_err(|source| ListenError::Bind { addr, source })
}

/// Accepts connections until `shutdown` resolves, running `handle` for each on
/// its own task. Connections still open at shutdown are cut.
pub(crate) async fn accept_loop<F, Fut>(listener: TcpListener, shutdown: impl Future<Output = ()>, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    tasks.spawn(handle(tcp, peer));
                }
                Err(error) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(%error, "accepting a local connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// One line on stderr for a local connection the tunnel could not carry.
pub(crate) fn report(peer: SocketAddr, service: &str, error: &TunnelError) {
    if error.is_local() {
        tracing::debug!(%peer, service, %error, "local connection ended with an error");
        return;
    }
    let now = humantime::format_rfc3339_seconds(SystemTime::now());
    eprintln!("{now} {peer} -> {service}: {error}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen_addr("8080").expect("port"), "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(parse_listen_addr("localhost:0").expect("port"), "127.0.0.1:0".parse().expect("addr"));
        assert_eq!(parse_listen_addr("[::1]:9").expect("v6"), "[::1]:9".parse().expect("addr"));
        assert!(parse_listen_addr("example.com:80").is_err());
    }
}
