//! Syslog: RFC 5424 messages over TCP with octet-counting framing (RFC 6587),
//! optionally in TLS (RFC 5425). One event per message; MSGID is the event
//! kind and MSG is the event's JSON line from the export schema, so every
//! field is on one line with invisible characters escaped.
//!
//! TCP syslog has no acknowledgements: a batch counts as delivered once it is
//! written and flushed to the socket.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::SinkError;
use crate::audit::chain::EventRow;
use crate::audit::export::{json_line, rfc3339_ms};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// RFC 5424 facility 13, "log audit".
const FACILITY: u8 = 13;

trait Conn: AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncWrite + Unpin + Send + Sync> Conn for T {}

pub(super) struct Syslog {
    address: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    hostname: String,
    conn: Option<Box<dyn Conn>>,
}

impl Syslog {
    pub(super) fn new(address: String, tls: Option<Arc<rustls::ClientConfig>>) -> anyhow::Result<Self> {
        let tls = match tls {
            Some(config) => {
                let host = address.rsplit_once(':').map_or(address.as_str(), |(h, _)| h);
                let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())?;
                Some((tokio_rustls::TlsConnector::from(config), name))
            }
            None => None,
        };
        Ok(Self { address, tls, hostname: local_hostname(), conn: None })
    }

    pub(super) async fn deliver(&mut self, rows: &[EventRow]) -> Result<(), SinkError> {
        let mut frames = Vec::new();
        for row in rows {
            let message = format_message(row, &self.hostname);
            frames.extend_from_slice(format!("{} {message}", message.len()).as_bytes());
        }
        let result = tokio::time::timeout(WRITE_TIMEOUT, self.write(&frames)).await;
        let result =
            result.unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out")));
        if result.is_err() {
            self.conn = None;
        }
        Ok(result?)
    }

    async fn write(&mut self, frames: &[u8]) -> std::io::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let Some(conn) = self.conn.as_mut() else { return Ok(()) };
        conn.write_all(frames).await?;
        conn.flush().await
    }

    async fn connect(&self) -> std::io::Result<Box<dyn Conn>> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.address))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((connector, name)) => Ok(Box::new(connector.connect(name.clone(), tcp).await?)),
        }
    }
}

/// `<PRI>1 TIMESTAMP HOSTNAME palisade-broker PROCID MSGID - JSON`.
pub(super) fn format_message(row: &EventRow, hostname: &str) -> String {
    let severity = if matches!(row.outcome.as_str(), "failure" | "deny") { 5 } else { 6 };
    let pri = u16::from(FACILITY) * 8 + severity;
    let msgid = header_field(&row.kind, 32);
    format!(
        "<{pri}>1 {} {hostname} palisade-broker {} {msgid} - {}",
        rfc3339_ms(row.ts_ms),
        std::process::id(),
        json_line(row)
    )
}

/// A header field: printable US-ASCII without spaces, at most `max` characters, `-` if empty.
fn header_field(s: &str, max: usize) -> String {
    let field: String = s.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if field.is_empty() { "-".to_owned() } else { field }
}

fn local_hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    header_field(name.trim(), 255)
}
