//! A live tunnel with bytes flowing: one TCP connection through a forward to
//! an echo upstream, writing and reading back chunks until it is cut.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::wait::{DEFAULT_TIMEOUT, wait_for, within};

/// Bytes per round trip.
const CHUNK: usize = 4 * 1024;
/// The pace of round trips: bytes keep flowing without one test's loop
/// starving every other process on a two-core machine.
const PACE: Duration = Duration::from_millis(5);

/// How a flow ended.
#[derive(Clone, Debug)]
pub struct FlowEnd {
    /// When the loop saw the connection end.
    pub at: Instant,
    /// What it saw (`EOF`, a reset…).
    pub how: String,
}

/// A connection that echoes chunks in a loop until the tunnel is cut.
/// Stops when dropped.
pub struct Flow {
    echoed: Arc<AtomicU64>,
    ended: watch::Receiver<Option<FlowEnd>>,
    task: JoinHandle<()>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Flow {
    /// Connects to `forward` (a `palisade connect` port to an echo service)
    /// and waits until bytes have made the round trip.
    pub async fn start(forward: SocketAddr) -> Flow {
        let stream = within("connect to the forward", DEFAULT_TIMEOUT, TcpStream::connect(forward))
            .await
            .unwrap_or_else(|e| panic!("connect to {forward}: {e}"));
        let echoed = Arc::new(AtomicU64::new(0));
        let (tx, ended) = watch::channel(None);
        let task = tokio::spawn(echo_loop(stream, echoed.clone(), tx));
        let flow = Flow { echoed, ended, task };
        let started = &flow;
        wait_for("bytes to flow through the tunnel", DEFAULT_TIMEOUT, || async move {
            assert!(started.end().is_none(), "the flow ended before it started: {:?}", started.end());
            started.echoed() >= (4 * CHUNK) as u64
        })
        .await;
        flow
    }

    /// Bytes that came back so far.
    #[must_use]
    pub fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::SeqCst)
    }

    /// How it ended, if it has.
    #[must_use]
    pub fn end(&self) -> Option<FlowEnd> {
        self.ended.borrow().clone()
    }

    /// Waits until the connection ends (bounded only by the caller).
    pub async fn ended(&self) -> FlowEnd {
        let mut rx = self.ended.clone();
        let end = rx.wait_for(Option::is_some).await.expect("the flow's task reports its end");
        end.clone().expect("waited for Some")
    }
}

async fn echo_loop(mut stream: TcpStream, echoed: Arc<AtomicU64>, ended: watch::Sender<Option<FlowEnd>>) {
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0u8; CHUNK];
    let mut pace = tokio::time::interval(PACE);
    let how = loop {
        pace.tick().await;
        if let Err(e) = stream.write_all(&chunk).await {
            break format!("write: {e}");
        }
        match stream.read_exact(&mut back).await {
            Ok(_) if back == chunk => {
                echoed.fetch_add(CHUNK as u64, Ordering::SeqCst);
            }
            Ok(_) => break "the echo came back changed".to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break "EOF".to_owned(),
            Err(e) => break format!("read: {e}"),
        }
    };
    let _ = ended.send(Some(FlowEnd { at: Instant::now(), how }));
}
