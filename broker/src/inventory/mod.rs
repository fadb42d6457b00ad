//! Services and segments as data: the catalog the policy engine decides
//! over, and the inventory admins read.
//!
//! Services come from three places: `[[services]]` in broker.toml (a seed:
//! inserted at start if missing, never overwriting an admin's change),
//! connectors (each hello names the services it serves; a new one is
//! recorded *without* a segment) and admins (`palisade-broker service
//! assign|label`). Only services with a segment are in the policy catalog:
//! an advertised but unassigned service is unknown to the engine, so nobody
//! reaches it until an admin places it (deny on doubt).
//!
//! Every change bumps `catalog_version` and records what changed, in the
//! same transaction as its audit event; a running broker polls that row and
//! rebuilds its engine ([`crate::policy`]), which re-decides every live
//! stream. The functions here are the API the CLI, the admin socket and the
//! web UI share.

pub mod api;
mod reach;
mod store;
#[cfg(test)]
mod tests;

use serde::Serialize;

pub use reach::{InventoryRow, Reachability, inventory};
pub use store::{
    assign, catalog, catalog_version, create_segment, delete_segment, get_service, label, record_advertised,
    seed_from_config, segments, services,
};

/// An inventory or catalog operation failed.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// No service of that name is known.
    #[error("no service named {0:?}: `palisade-broker service list` shows the known ones")]
    UnknownService(String),
    /// No segment of that name exists.
    #[error("no segment named {0:?}: create it first with `palisade-broker segment create {0}`")]
    UnknownSegment(String),
    /// The segment already exists.
    #[error("segment {0:?} already exists")]
    SegmentExists(String),
    /// The segment still holds services.
    #[error("segment {name:?} still holds {} service(s) ({}): assign them elsewhere first", services.len(), services.join(", "))]
    SegmentInUse {
        /// The segment.
        name: String,
        /// Its services.
        services: Vec<String>,
    },
    /// A name that policies could not refer to safely.
    #[error(
        "{what} name {name:?} is invalid: use letters, digits, '.', '_' and '-' (under 64 bytes), starting with a letter or digit"
    )]
    BadName {
        /// `service`, `segment` or `label`.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// A protocol other than `tcp` or `http`.
    #[error("protocol {0:?} is invalid: use tcp or http")]
    BadProtocol(String),
    /// A stored row does not decode.
    #[error("the catalog row for {name:?} is unreadable: {message}")]
    Corrupt {
        /// The service.
        name: String,
        /// Why.
        message: String,
    },
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The audit trail refused the event; nothing was changed.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

/// One service as the catalog holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceRecord {
    /// The service's name (`Service::"<name>"` in policies).
    pub name: String,
    /// Its segment; `None` until an admin assigns one (then nobody reaches it).
    pub segment: Option<String>,
    /// `tcp` or `http`.
    pub protocol: String,
    /// Labels policies can test (`resource.labels.contains(...)`), sorted.
    pub labels: Vec<String>,
    /// Where it first came from: `config`, `connector` or `admin`.
    pub origin: String,
    /// Last change, unix seconds.
    pub updated_at: i64,
    /// The connectors that advertised it, most recently seen first.
    pub connectors: Vec<ConnectorSeen>,
}

/// A connector that said it serves a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnectorSeen {
    /// The connector's identity id.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// When its last hello named the service, unix seconds.
    pub last_seen: i64,
}

/// One segment and the services in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SegmentRecord {
    /// The segment's name (`Segment::"<name>"` in policies).
    pub name: String,
    /// Free text.
    pub description: String,
    /// When it was created, unix seconds.
    pub created_at: i64,
    /// Its services, by name.
    pub services: Vec<String>,
}

/// The catalog's version and the last change, as a running broker sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CatalogVersion {
    /// Bumped by every change.
    pub version: u64,
    /// What the last change was, e.g. `service echo moved from inference to quarantine`.
    pub last_change: String,
}

/// A label change for [`label`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelChange<'a> {
    /// Add the label (no-op if present).
    Add(&'a str),
    /// Remove the label (no-op if absent).
    Remove(&'a str),
}

/// What a connector's hello advertised, recorded in the catalog
/// ([`record_advertised`]); returns the valid service names, which the
/// registry routes. A database failure is logged, not fatal: routing does
/// not grant access, the policy does.
pub async fn on_hello(db: &crate::db::Db, connector_id: &str, connector: &str, advertised: Vec<String>) -> Vec<String> {
    let valid: Vec<String> = advertised.into_iter().filter(|s| check_name("service", s).is_ok()).collect();
    match record_advertised(db, connector_id, connector, &valid).await {
        Ok(new) if !new.is_empty() => {
            tracing::info!(connector, ?new, "connector advertised new services; they have no segment yet");
        }
        Ok(_) => {}
        Err(e) => tracing::error!(connector, error = %e, "could not record the services a connector advertised"),
    }
    valid
}

/// Names policies refer to: the rules of [`palisade_proto::id::ServiceName`]
/// (no separators, quotes, spaces or control characters; under 64 bytes).
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), InventoryError> {
    match name.parse::<palisade_proto::id::ServiceName>() {
        Ok(_) => Ok(()),
        Err(_) => Err(InventoryError::BadName { what, name: name.to_owned() }),
    }
}
