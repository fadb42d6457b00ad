//! The broker's metrics listener: [`crate::metrics::SERIES`] on `/metrics`,
//! `/healthz`, and `/readyz` ready when the database answers, the CA is
//! loaded and valid, the QUIC endpoint accepts connections, and (in strict
//! consistency mode) the broker is current with the database. Plain HTTP
//! on `[metrics] listen`, apart from the public HTTPS port.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Broker;
use crate::db::meta;
use crate::sync::Admission;

struct BrokerReadiness(Broker);

impl palisade_telemetry::Readiness for BrokerReadiness {
    async fn check(&self) -> Result<(), String> {
        let broker = &self.0;
        if broker.ca().not_after() <= SystemTime::now() {
            return Err("the CA certificate has expired".into());
        }
        if !broker.live().quic_accepting() {
            return Err("the QUIC endpoint is not accepting connections".into());
        }
        if let Admission::Refuse { age } = broker.sync().admission() {
            return Err(format!("stale: the database view was last confirmed {} ms ago", age.as_millis()));
        }
        // A real read of the database, through the same pool every request uses.
        match meta::get(broker.db(), meta::TRUST_DOMAIN).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("the database holds no trust domain".into()),
            Err(e) => {
                tracing::warn!(error = %e, "readiness: the database did not answer");
                Err("the database is unreachable".into())
            }
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`.
///
/// # Errors
/// None after binding; the `Result` is for the task supervisor.
pub async fn serve(broker: Broker, listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    palisade_telemetry::serve(listener, &crate::metrics::SERIES, Arc::new(BrokerReadiness(broker)), shutdown).await
}
