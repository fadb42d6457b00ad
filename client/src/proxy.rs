//! `palisade proxy --socks5 127.0.0.1:PORT`: a SOCKS5 and HTTP CONNECT proxy
//! on one port, where the host name asked for is the service name
//! (`llm-prod` or `llm-prod.palisade`; the port is ignored).
//!
//! The first byte tells the two apart: 0x05 is SOCKS5, anything else is read
//! as an HTTP request. Success is answered as soon as the stream is open (the
//! broker sends no acknowledgement); a refusal then shows up as the connection
//! closing, and its reason is printed on stderr.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use palisade_proto::id::ServiceName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::listen::{accept_loop, report};
use crate::splice::splice_tcp;
use crate::tunnel::{Tunnel, TunnelError};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HTTP_HEAD: usize = 8 * 1024;
const SERVICE_SUFFIX: &str = ".palisade";

const SOCKS_VERSION: u8 = 5;
const SOCKS_NO_AUTH: u8 = 0x00;
const SOCKS_NO_ACCEPTABLE_METHOD: u8 = 0xff;
const SOCKS_CMD_CONNECT: u8 = 0x01;

/// SOCKS5 reply codes (RFC 1928 §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum SocksReply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    NotAllowed = 0x02,
    NetworkUnreachable = 0x03,
    HostUnreachable = 0x04,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

/// Why a proxy request was not carried.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the SOCKS5 client offered no acceptable authentication method (only \"no authentication\" is supported)")]
    NoAcceptableMethod,
    #[error("SOCKS5 command {0:#04x} is not supported (only CONNECT)")]
    CommandNotSupported(u8),
    #[error("SOCKS5 address type {0:#04x} is not supported: ask for a service by name, e.g. llm-prod.palisade")]
    AddressTypeNotSupported(u8),
    #[error("{host:?} is not a service: {reason}")]
    NotAService { host: String, reason: String },
    #[error("HTTP method {0} is not supported: only CONNECT")]
    MethodNotAllowed(String),
    #[error("malformed proxy request: {0}")]
    Malformed(String),
    #[error("the proxy request did not arrive in time")]
    Timeout,
}

/// What the local application asked for.
struct Request {
    flavor: Flavor,
    service: ServiceName,
    /// Bytes the client sent after its HTTP request head, to go to the service first.
    early: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    Socks5,
    Http,
}

/// Serves SOCKS5 and HTTP CONNECT on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, tunnel: Tunnel, shutdown: impl Future<Output = ()>) {
    accept_loop(listener, shutdown, move |tcp, peer| {
        let tunnel = tunnel.clone();
        async move { proxy_one(tcp, peer, tunnel).await }
    })
    .await;
}

async fn proxy_one(mut tcp: TcpStream, peer: SocketAddr, tunnel: Tunnel) {
    let request = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_request(&mut tcp)).await {
        Ok(Ok(request)) => request,
        Ok(Err(error)) => return reject_request(peer, &error),
        Err(_) => return reject_request(peer, &ProxyError::Timeout),
    };
    let service = request.service.as_str().to_owned();
    let (mut send, recv) = match tunnel.open(&request.service).await {
        Ok(streams) => streams,
        Err(error) => {
            let _ = reply_failure(&mut tcp, request.flavor, &error).await;
            return report(peer, &service, &error);
        }
    };
    let mut result = reply_success(&mut tcp, request.flavor).await.map_err(TunnelError::from);
    if result.is_ok() && !request.early.is_empty() {
        result = send.write_all(&request.early).await.map_err(|e| crate::splice::write_error(e, &service));
    }
    let outcome = match result {
        Ok(()) => splice_tcp(tcp, send, recv, &service).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(stats) => tracing::debug!(%peer, service, stats.bytes_up, stats.bytes_down, "proxied connection ended"),
        Err(error) => report(peer, &service, &error),
    }
}

fn reject_request(peer: SocketAddr, error: &ProxyError) {
    match error {
        ProxyError::Io(_) => tracing::debug!(%peer, %error, "proxy client went away"),
        _ => eprintln!("{} {peer}: {error}", humantime::format_rfc3339_seconds(std::time::SystemTime::now())),
    }
}

async fn read_request(tcp: &mut TcpStream) -> Result<Request, ProxyError> {
    let first = tcp.read_u8().await?;
    if first == SOCKS_VERSION {
        let service = socks5_handshake(tcp).await?;
        Ok(Request { flavor: Flavor::Socks5, service, early: Vec::new() })
    } else {
        let (service, early) = http_connect_head(tcp, first).await?;
        Ok(Request { flavor: Flavor::Http, service, early })
    }
}

/// The rest of a SOCKS5 greeting and request, after the version byte.
async fn socks5_handshake(tcp: &mut TcpStream) -> Result<ServiceName, ProxyError> {
    let count = tcp.read_u8().await?;
    let mut methods = vec![0u8; usize::from(count)];
    tcp.read_exact(&mut methods).await?;
    if !methods.contains(&SOCKS_NO_AUTH) {
        tcp.write_all(&[SOCKS_VERSION, SOCKS_NO_ACCEPTABLE_METHOD]).await?;
        return Err(ProxyError::NoAcceptableMethod);
    }
    tcp.write_all(&[SOCKS_VERSION, SOCKS_NO_AUTH]).await?;
    let mut head = [0u8; 4];
    tcp.read_exact(&mut head).await?;
    let [version, command, _reserved, address_type] = head;
    if version != SOCKS_VERSION {
        return Err(ProxyError::Malformed(format!("SOCKS version {version} in the request")));
    }
    let host = match address_type {
        0x03 => {
            let len = tcp.read_u8().await?;
            let mut name = vec![0u8; usize::from(len)];
            tcp.read_exact(&mut name).await?;
            tcp.read_u16().await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        other => {
            // Read the IPv4 / IPv6 address and port first: closing with unread bytes
            // would send a reset that can destroy the reply before the client reads it.
            let skip = match other {
                0x01 => 4 + 2,
                0x04 => 16 + 2,
                _ => 0,
            };
            tcp.read_exact(&mut vec![0u8; skip]).await?;
            socks_reply(tcp, SocksReply::AddressTypeNotSupported).await?;
            return Err(ProxyError::AddressTypeNotSupported(other));
        }
    };
    if command != SOCKS_CMD_CONNECT {
        socks_reply(tcp, SocksReply::CommandNotSupported).await?;
        return Err(ProxyError::CommandNotSupported(command));
    }
    match service_from_host(&host) {
        Ok(service) => Ok(service),
        Err(e) => {
            socks_reply(tcp, SocksReply::HostUnreachable).await?;
            Err(e)
        }
    }
}

async fn socks_reply(tcp: &mut TcpStream, reply: SocksReply) -> std::io::Result<()> {
    // Bound address 0.0.0.0:0: there is no meaningful local address to report.
    tcp.write_all(&[SOCKS_VERSION, reply as u8, 0, 0x01, 0, 0, 0, 0, 0, 0]).await
}

/// Reads an HTTP request head (the first byte already read) and parses `CONNECT host:port`.
async fn http_connect_head(tcp: &mut TcpStream, first: u8) -> Result<(ServiceName, Vec<u8>), ProxyError> {
    let mut buf = vec![first];
    let end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HTTP_HEAD {
            http_reply(tcp, "431 Request Header Fields Too Large", "request head too large").await?;
            return Err(ProxyError::Malformed("HTTP request head over 8 KiB".into()));
        }
        let mut chunk = [0u8; 1024];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(ProxyError::Malformed("connection closed inside the HTTP request head".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let early = buf[end + 4..].to_vec();
    let head = String::from_utf8_lossy(&buf[..end]);
    match parse_connect_line(head.lines().next().unwrap_or_default()) {
        Ok(service) => Ok((service, early)),
        Err(e) => {
            let status = match e {
                ProxyError::MethodNotAllowed(_) => "405 Method Not Allowed",
                _ => "400 Bad Request",
            };
            http_reply(tcp, status, &e.to_string()).await?;
            Err(e)
        }
    }
}

fn parse_connect_line(line: &str) -> Result<ServiceName, ProxyError> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProxyError::Malformed(format!("not an HTTP request line: {line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ProxyError::Malformed(format!("unsupported HTTP version {version:?}")));
    }
    if method != "CONNECT" {
        return Err(ProxyError::MethodNotAllowed(method.to_owned()));
    }
    service_from_host(host_of_authority(target))
}

/// `host:port`, `[v6]:port` or a bare `host` → host.
fn host_of_authority(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// A host name as asked for by an application → the service it names.
fn service_from_host(host: &str) -> Result<ServiceName, ProxyError> {
    let not_a_service = |reason: &str| ProxyError::NotAService { host: host.to_owned(), reason: reason.to_owned() };
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.parse::<IpAddr>().is_ok() {
        return Err(not_a_service("services are reached by name, not by IP address"));
    }
    let name = match name.len().checked_sub(SERVICE_SUFFIX.len()) {
        Some(cut) if name.is_char_boundary(cut) && name[cut..].eq_ignore_ascii_case(SERVICE_SUFFIX) => &name[..cut],
        _ => name,
    };
    name.parse().map_err(|e: palisade_proto::id::IdError| not_a_service(&e.reason))
}

async fn http_reply(tcp: &mut TcpStream, status: &str, message: &str) -> std::io::Result<()> {
    let body = format!("{message}\n");
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(response.as_bytes()).await
}

async fn reply_success(tcp: &mut TcpStream, flavor: Flavor) -> std::io::Result<()> {
    match flavor {
        Flavor::Socks5 => socks_reply(tcp, SocksReply::Succeeded).await,
        Flavor::Http => tcp.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await,
    }
}

async fn reply_failure(tcp: &mut TcpStream, flavor: Flavor, error: &TunnelError) -> std::io::Result<()> {
    match flavor {
        Flavor::Socks5 => {
            let reply = match error {
                TunnelError::Rejected { .. }
                | TunnelError::CertificateExpired
                | TunnelError::IdentityRefused
                | TunnelError::ClockDisagrees
                | TunnelError::Revoked => SocksReply::NotAllowed,
                TunnelError::Unreachable { .. } => SocksReply::NetworkUnreachable,
                _ => SocksReply::GeneralFailure,
            };
            socks_reply(tcp, reply).await
        }
        Flavor::Http => {
            let status = match error {
                TunnelError::Rejected { .. }
                | TunnelError::CertificateExpired
                | TunnelError::IdentityRefused
                | TunnelError::ClockDisagrees
                | TunnelError::Revoked => "403 Forbidden",
                _ => "502 Bad Gateway",
            };
            http_reply(tcp, status, &error.to_string()).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_name_services() {
        let ok = |h: &str| service_from_host(h).map(|s| s.as_str().to_owned()).ok();
        assert_eq!(ok("llm-prod").as_deref(), Some("llm-prod"));
        assert_eq!(ok("llm-prod.palisade").as_deref(), Some("llm-prod"));
        assert_eq!(ok("llm-prod.PALISADE.").as_deref(), Some("llm-prod"));
        assert_eq!(ok("10.0.0.1"), None);
        assert_eq!(ok("::1"), None);
        assert_eq!(ok("bad/name"), None);
        assert_eq!(ok(".palisade"), None);
    }

    #[test]
    fn connect_lines() {
        let svc = |l: &str| parse_connect_line(l).map(|s| s.as_str().to_owned());
        assert_eq!(svc("CONNECT llm:443 HTTP/1.1").expect("ok"), "llm");
        assert_eq!(svc("CONNECT vec-db.palisade:6333 HTTP/1.0").expect("ok"), "vec-db");
        assert_eq!(svc("CONNECT llm HTTP/1.1").expect("ok"), "llm");
        assert!(matches!(parse_connect_line("GET http://llm/ HTTP/1.1"), Err(ProxyError::MethodNotAllowed(_))));
        assert!(matches!(parse_connect_line("CONNECT [::1]:443 HTTP/1.1"), Err(ProxyError::NotAService { .. })));
        assert!(parse_connect_line("CONNECT llm:443").is_err());
    }
}
