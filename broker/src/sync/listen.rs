//! PostgreSQL change notifications: one dedicated session per broker
//! `LISTEN`s on [`super::CHANNEL`]; every notification, and every time the
//! session is lost or comes back, wakes the followers
//! ([`super::Freshness::announce`]). Losing notifications is allowed — the
//! followers' periodic resync repairs it — so this loop only has to keep
//! trying.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::state::Broker;

/// The `application_name` of the listening session, followed by the
/// broker's QUIC address, so an operator (or a test) can find it in
/// `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "palisade-broker-listen";

/// Pause before connecting again after the session failed.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// Listens until shutdown. On SQLite there is nothing to listen to (the
/// followers poll), so it only waits.
pub async fn run(broker: Broker, shutdown: CancellationToken) {
    if broker.db().backend() != db::Backend::Postgres {
        return shutdown.cancelled().await;
    }
    let url = broker.config().database_url();
    let name = format!("{APPLICATION_NAME} {}", broker.config().quic_public_addr());
    let mut failing = false;
    while !shutdown.is_cancelled() {
        match connect(&url, &name).await {
            Ok(listener) => {
                if failing {
                    tracing::info!("change notifications from PostgreSQL resumed");
                }
                failing = false;
                // Whatever changed while we were not listening is read now.
                broker.sync().announce();
                if let Err(e) = receive(&broker, listener, &shutdown).await {
                    tracing::warn!(error = %e, "lost the PostgreSQL notification session; changes are picked up by the periodic resync meanwhile");
                    failing = true;
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, database = %db::redacted(&url), "cannot listen for change notifications; changes are picked up by the periodic resync meanwhile");
            }
            Err(_) => {}
        }
        broker.sync().announce();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RECONNECT_AFTER) => {}
        }
    }
}

async fn connect(url: &str, application_name: &str) -> Result<PgListener, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name(application_name);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(super::CHANNEL).await?;
    Ok(listener)
}

/// Wakes the followers on each notification until the session fails.
async fn receive(broker: &Broker, mut listener: PgListener, shutdown: &CancellationToken) -> Result<(), sqlx::Error> {
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            received = listener.try_recv() => received?,
        };
        if received.is_none() {
            // The session dropped and was re-established: notifications
            // sent in between are gone, so read everything now.
            tracing::warn!("the PostgreSQL notification session was re-established; resyncing");
        }
        broker.sync().announce();
    }
}
