//! In-process workloads behind the connector, counting the connections they accept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A listening workload on 127.0.0.1; stops when dropped.
struct Workload {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Workload {
    async fn spawn<F, Fut>(serve: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind an upstream");
        let addr = listener.local_addr().expect("upstream address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(socket));
            }
        });
        Self { addr, accepted, task }
    }
}

/// Echoes every byte back and half-closes after the peer does.
pub struct EchoUpstream(Workload);

impl EchoUpstream {
    /// Starts listening on a free port.
    pub async fn spawn() -> Self {
        Self(Workload::spawn(echo).await)
    }

    /// Where the connector should dial.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// How many connections it has accepted.
    #[must_use]
    pub fn accepted(&self) -> usize {
        self.0.accepted.load(Ordering::SeqCst)
    }
}

async fn echo(mut socket: TcpStream) {
    let (read, mut write) = socket.split();
    let mut read = BufReader::with_capacity(256 * 1024, read);
    if tokio::io::copy_buf(&mut read, &mut write).await.is_ok() {
        let _ = write.shutdown().await;
    }
}

/// Reads until the peer half-closes, then answers with the SHA-256 of
/// everything it read (32 bytes) and the byte count (u64, big endian), and
/// closes. A reply therefore proves that the client's half-close reached
/// the workload and that the reverse direction still worked afterwards.
pub struct DigestUpstream(Workload);

impl DigestUpstream {
    /// Starts listening on a free port.
    pub async fn spawn() -> Self {
        Self(Workload::spawn(digest).await)
    }

    /// Where the connector should dial.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// How many connections it has accepted.
    #[must_use]
    pub fn accepted(&self) -> usize {
        self.0.accepted.load(Ordering::SeqCst)
    }
}

async fn digest(mut socket: TcpStream) {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut count = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                ctx.update(&buf[..n]);
                count += n as u64;
            }
            Err(_) => return,
        }
    }
    let mut reply = ctx.finish().as_ref().to_vec();
    reply.extend_from_slice(&count.to_be_bytes());
    if socket.write_all(&reply).await.is_ok() {
        let _ = socket.shutdown().await;
    }
}
