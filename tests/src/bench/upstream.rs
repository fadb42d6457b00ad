//! The workload behind every setup, run as its own process
//! (`palisade-bench upstream`) so that its CPU time and file descriptors are
//! nobody else's. One TCP port; the first byte a connection sends picks what
//! happens on it:
//!
//! | byte | then                         | the upstream                                      |
//! |------|------------------------------|---------------------------------------------------|
//! | `E`  | anything                     | echoes every byte, half-closes after the peer     |
//! | `U`  | bytes, then half-close       | counts them, answers the count (u64 BE), closes    |
//! | `D`  | length (u64 BE)              | sends that many bytes, closes                      |
//! | `S`  | count, interval µs, size (u32 BE each) | sends `count` SSE events of `size` bytes, one every interval (0: as fast as it can) |
//! | `?`  | —                            | answers how many other connections are open (u64 BE) |
//! | `P`, `G` | the rest of an HTTP/1.1 request | `POST /v1/chat/completions`: a paced token stream; `GET /v1/models`: a model list ([`super::chat`]) |

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Echo.
pub const ECHO: u8 = b'E';
/// Sink: count until EOF.
pub const SINK: u8 = b'U';
/// Source: send N bytes.
pub const SOURCE: u8 = b'D';
/// Server-sent events.
pub const EVENTS: u8 = b'S';
/// How many connections are open.
pub const ACTIVE: u8 = b'?';

const CHUNK: usize = 256 * 1024;
/// The line the process prints once it accepts connections.
pub const READY_PREFIX: &str = "upstream listening on ";

/// Accepts connections forever; prints [`READY_PREFIX`]`ADDR` when bound.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("bind the upstream on {listen}"))?;
    println!("{READY_PREFIX}{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let active = Arc::new(AtomicUsize::new(0));
    let payload: Arc<[u8]> = crate::random_bytes(CHUNK).into();
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors while 10,000 idle connections are open: wait, don't spin.
                eprintln!("upstream: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let guard = Open::new(&active);
        let payload = payload.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(socket, &guard, &payload).await
                && !matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
            {
                eprintln!("upstream: connection failed: {e}");
            }
        });
    }
}

/// Counts a connection as open until dropped.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(active: &Arc<AtomicUsize>) -> Self {
        active.fetch_add(1, Ordering::SeqCst);
        Self(active.clone())
    }
    fn others(&self) -> u64 {
        self.0.load(Ordering::SeqCst).saturating_sub(1) as u64
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(mut socket: TcpStream, open: &Open, payload: &[u8]) -> std::io::Result<()> {
    let mut mode = [0u8; 1];
    if socket.read(&mut mode).await? == 0 {
        return Ok(());
    }
    match mode[0] {
        ECHO => echo(socket).await,
        SINK => {
            let count = sink(&mut socket).await?;
            socket.write_all(&count.to_be_bytes()).await?;
            socket.shutdown().await
        }
        SOURCE => {
            let len = socket.read_u64().await?;
            source(&mut socket, len, payload).await?;
            socket.shutdown().await
        }
        EVENTS => {
            let (count, interval_us, size) =
                (socket.read_u32().await?, socket.read_u32().await?, socket.read_u32().await?);
            let std = socket.into_std()?;
            std.set_nonblocking(false)?;
            // A thread of its own paces the events with the OS timer, not the runtime's 1 ms wheel.
            let interval = Duration::from_micros(u64::from(interval_us));
            tokio::task::spawn_blocking(move || send_events(std, count, interval, size as usize)).await?
        }
        ACTIVE => socket.write_all(&open.others().to_be_bytes()).await,
        b'P' | b'G' => {
            let std = socket.into_std()?;
            std.set_nonblocking(false)?;
            let first = mode[0];
            tokio::task::spawn_blocking(move || super::chat::serve(std, first)).await?
        }
        other => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unknown mode byte {other:#x}"))),
    }
}

async fn echo(mut socket: TcpStream) -> std::io::Result<()> {
    let (mut read, mut write) = socket.split();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read.read(&mut buf).await?;
        if n == 0 {
            return write.shutdown().await;
        }
        write.write_all(&buf[..n]).await?;
    }
}

async fn sink(socket: &mut TcpStream) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut count = 0u64;
    loop {
        match socket.read(&mut buf).await? {
            0 => return Ok(count),
            n => count += n as u64,
        }
    }
}

async fn source(socket: &mut TcpStream, len: u64, payload: &[u8]) -> std::io::Result<()> {
    let mut left = len;
    while left > 0 {
        let n = left.min(payload.len() as u64) as usize;
        socket.write_all(&payload[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

fn send_events(mut socket: std::net::TcpStream, count: u32, interval: Duration, size: usize) -> std::io::Result<()> {
    let start = Instant::now();
    for seq in 0..count {
        let due = start + interval * seq;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        socket.write_all(&event(seq, size))?;
    }
    socket.shutdown(std::net::Shutdown::Write)
}

/// Smallest event [`event`] can make.
pub const MIN_EVENT_SIZE: usize = 40;

/// `data: SEQ UNIX_NANOS xxx…\n\n`, exactly `size` bytes (at least [`MIN_EVENT_SIZE`]).
#[must_use]
pub fn event(seq: u32, size: usize) -> Vec<u8> {
    let sent = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut line = format!("data: {seq:08} {sent:020} ").into_bytes();
    let size = size.max(MIN_EVENT_SIZE);
    line.resize(size - 2, b'x');
    line.extend_from_slice(b"\n\n");
    line
}

/// The sequence number and send time (ns since the epoch) of one event, without its `\n\n`.
#[must_use]
pub fn parse_event(event: &[u8]) -> Option<(u32, u128)> {
    let text = std::str::from_utf8(event).ok()?;
    let mut words = text.strip_prefix("data: ")?.split(' ');
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_their_size_and_parse_back() {
        let e = event(42, 100);
        assert_eq!(e.len(), 100);
        assert!(e.ends_with(b"xx\n\n"));
        let (seq, sent) = parse_event(&e[..e.len() - 2]).expect("parses");
        assert_eq!(seq, 42);
        assert!(sent > 1_600_000_000_000_000_000);
        assert_eq!(event(1, 10).len(), MIN_EVENT_SIZE);
    }
}
