//! Graceful drain: what the relay does between SIGTERM and closing.
//!
//! New connections are refused, every client is told to open its next
//! streams on another replica ([`MOVE_NOTICE`] on a unidirectional stream),
//! and the streams already running, with the connector links they go
//! through, may finish for up to `[relay] drain_timeout`. Whatever is still
//! open then is closed with the "shutting down" code.

use std::time::Duration;

use palisade_proto::reject::MOVE_NOTICE;
use tokio::time::Instant;

use crate::state::Broker;

/// How often the drain looks whether the last stream has ended.
const POLL: Duration = Duration::from_millis(100);
/// How long telling one client to move may take.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(2);

/// Drains the relay on `endpoint`; returns once no stream is left or the
/// drain timeout has passed.
pub(super) async fn run(broker: &Broker, endpoint: &quinn::Endpoint) {
    let limit = broker.config().relay.drain_timeout;
    let clients = broker.live().client_connections();
    tracing::info!(clients = clients.len(), streams = broker.live().streams().len(), ?limit, "draining");
    for conn in clients {
        tokio::spawn(tell_to_move(conn));
    }
    let deadline = Instant::now() + limit;
    loop {
        let left = broker.live().streams().len();
        if left == 0 {
            tracing::info!("drained: no stream left");
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(streams = left, "drain timeout: closing the streams still open");
            return;
        }
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming.refuse(),
                None => return,
            },
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

async fn tell_to_move(conn: quinn::Connection) {
    let told = tokio::time::timeout(NOTICE_TIMEOUT, async {
        let mut notice = conn.open_uni().await.map_err(|e| e.to_string())?;
        notice.write_all(MOVE_NOTICE).await.map_err(|e| e.to_string())?;
        notice.finish().map_err(|e| e.to_string())
    })
    .await;
    let failed = match told {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e,
        Err(_) => "timed out (the client takes no notices)".to_owned(),
    };
    tracing::debug!(remote = %conn.remote_address(), error = %failed, "could not tell a client to move");
}
