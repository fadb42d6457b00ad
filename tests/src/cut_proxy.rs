//! A TCP forwarder the test can cut: every connection through it is
//! dropped and new ones are refused until it is restored. Put between a
//! broker and its database, it makes one replica lose the database while
//! the others keep it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// A running forwarder to one target address.
pub struct CutProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    cut: AtomicBool,
    pipes: Mutex<Vec<AbortHandle>>,
}

impl CutProxy {
    /// Listens on 127.0.0.1 and forwards each connection to `target`.
    pub async fn spawn(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn(accept_loop(listener, target, shared.clone()));
        CutProxy { addr, shared, accept }
    }

    /// Where to connect instead of the target.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        for pipe in self.shared.pipes.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            pipe.abort();
        }
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    while let Ok((mut client, _)) = listener.accept().await {
        if shared.cut.load(Ordering::SeqCst) {
            continue; // dropped: the peer sees the connection closed at once
        }
        let pipe = tokio::spawn(async move {
            if let Ok(mut server) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
        let mut pipes = shared.pipes.lock().unwrap_or_else(PoisonError::into_inner);
        pipes.retain(|p| !p.is_finished());
        pipes.push(pipe.abort_handle());
    }
}
