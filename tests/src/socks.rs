//! A minimal SOCKS5 client (RFC 1928: no authentication, CONNECT by domain name).

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects through the SOCKS5 proxy at `proxy` to `host:port` by name.
///
/// # Errors
/// IO errors, or `ConnectionRefused` carrying the proxy's reply code.
pub async fn socks5_connect(proxy: SocketAddr, host: &str, port: u16) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(proxy).await?;
    stream.write_all(&[0x05, 0x01, 0x00]).await?;
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).await?;
    if choice != [0x05, 0x00] {
        return Err(io::Error::other(format!("proxy chose method {choice:?}, not 'no authentication'")));
    }
    let name_len = u8::try_from(host.len()).map_err(|_| io::Error::other("host name too long"))?;
    let mut request = vec![0x05, 0x01, 0x00, 0x03, name_len];
    request.extend_from_slice(host.as_bytes());
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request).await?;

    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    if head[0] != 0x05 {
        return Err(io::Error::other(format!("not a SOCKS5 reply: {head:?}")));
    }
    let address_len = match head[3] {
        0x01 => 4,
        0x04 => 16,
        0x03 => usize::from(stream.read_u8().await?),
        other => return Err(io::Error::other(format!("unknown address type {other}"))),
    };
    let mut bound = vec![0u8; address_len + 2];
    stream.read_exact(&mut bound).await?;
    if head[1] != 0x00 {
        return Err(io::Error::new(io::ErrorKind::ConnectionRefused, format!("SOCKS5 reply code {}", head[1])));
    }
    Ok(stream)
}
