//! The catalog tables: `segments`, `services`, `service_connectors` and
//! `catalog_version` (migration 0007).

use std::time::SystemTime;

use palisade_policies::ServiceEntry;
use serde_json::json;
use sqlx::{Any, AnyConnection, Transaction};

use super::{CatalogVersion, ConnectorSeen, InventoryError, LabelChange, SegmentRecord, ServiceRecord, check_name};
use crate::audit::{Audit, AuditEvent, EventKind, Outcome};
use crate::config::Config;
use crate::db::{Db, unix_seconds};

type ServiceRow = (String, Option<String>, String, String, String, i64);

/// `SELECT <service columns> FROM services <rest>`, as a literal.
macro_rules! select_services {
    ($rest:literal) => {
        concat!("SELECT name, segment, protocol, labels, origin, updated_at FROM services ", $rest)
    };
}

fn now() -> i64 {
    unix_seconds(SystemTime::now())
}

/// Inserts the `[[services]]` of broker.toml (and their segments) that the
/// catalog does not hold yet. An admin's later changes win: a service that
/// exists is left alone. Returns how many services were added.
///
/// # Errors
/// A database error.
pub async fn seed_from_config(db: &Db, config: &Config) -> Result<usize, InventoryError> {
    let mut tx = db.begin_write().await?;
    let mut added = Vec::new();
    for service in &config.services {
        sqlx::query("INSERT INTO segments (name, description, created_at) VALUES ($1, 'from broker.toml', $2) ON CONFLICT (name) DO NOTHING")
            .bind(&service.segment)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        let labels = serde_json::to_string(&sorted(service.labels.clone())).unwrap_or_else(|_| "[]".into());
        let inserted = sqlx::query(
            "INSERT INTO services (name, segment, protocol, labels, origin, updated_at) VALUES ($1, $2, $3, $4, 'config', $5) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(service.name.as_str())
        .bind(&service.segment)
        .bind(&service.protocol)
        .bind(labels)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() > 0 {
            added.push(service.name.to_string());
        }
    }
    if !added.is_empty() {
        bump(&mut tx, &format!("seeded from broker.toml: {}", added.join(", "))).await?;
    }
    tx.commit().await?;
    Ok(added.len())
}

async fn bump(conn: &mut AnyConnection, change: &str) -> Result<u64, sqlx::Error> {
    sqlx::query("UPDATE catalog_version SET version = version + 1, last_change = $1 WHERE id = 1")
        .bind(change)
        .execute(&mut *conn)
        .await?;
    let version: i64 = sqlx::query_scalar("SELECT version FROM catalog_version WHERE id = 1").fetch_one(conn).await?;
    Ok(u64::try_from(version).unwrap_or(0))
}

/// The catalog's version and last change.
///
/// # Errors
/// A database error.
pub async fn catalog_version(db: &Db) -> Result<CatalogVersion, InventoryError> {
    version_in(&mut *db.pool().acquire().await?).await
}

async fn version_in(conn: &mut AnyConnection) -> Result<CatalogVersion, InventoryError> {
    let (version, last_change): (i64, String) =
        sqlx::query_as("SELECT version, last_change FROM catalog_version WHERE id = 1").fetch_one(conn).await?;
    Ok(CatalogVersion { version: u64::try_from(version).unwrap_or(0), last_change })
}

/// The policy catalog: every service that has a segment, with the catalog
/// version it belongs to (read in one transaction, so they match).
///
/// # Errors
/// A database error or an unreadable row.
pub async fn catalog(db: &Db) -> Result<(CatalogVersion, Vec<ServiceEntry>), InventoryError> {
    let mut tx = db.pool().begin().await?;
    let version = version_in(&mut tx).await?;
    let rows = sqlx::query_as::<Any, ServiceRow>(select_services!("WHERE segment IS NOT NULL ORDER BY name"))
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let entries = rows
        .into_iter()
        .map(|row| {
            let record = decode(row, Vec::new())?;
            Ok(ServiceEntry {
                name: record.name,
                segment: record.segment.unwrap_or_default(),
                protocol: record.protocol,
                labels: record.labels,
            })
        })
        .collect::<Result<Vec<_>, InventoryError>>()?;
    Ok((version, entries))
}

fn decode(row: ServiceRow, connectors: Vec<ConnectorSeen>) -> Result<ServiceRecord, InventoryError> {
    let (name, segment, protocol, labels, origin, updated_at) = row;
    let labels: Vec<String> = serde_json::from_str(&labels)
        .map_err(|e| InventoryError::Corrupt { name: name.clone(), message: e.to_string() })?;
    Ok(ServiceRecord { name, segment, protocol, labels, origin, updated_at, connectors })
}

async fn connectors_of(conn: &mut AnyConnection, service: &str) -> Result<Vec<ConnectorSeen>, sqlx::Error> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT connector_id, connector, last_seen FROM service_connectors WHERE service = $1 ORDER BY last_seen DESC, connector",
    )
    .bind(service)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(id, name, last_seen)| ConnectorSeen { id, name, last_seen }).collect())
}

/// Every known service with its connectors, by name.
///
/// # Errors
/// A database error or an unreadable row.
pub async fn services(db: &Db) -> Result<Vec<ServiceRecord>, InventoryError> {
    let mut conn = db.pool().acquire().await?;
    let rows = sqlx::query_as::<Any, ServiceRow>(select_services!("ORDER BY name")).fetch_all(&mut *conn).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let connectors = connectors_of(&mut conn, &row.0).await?;
        out.push(decode(row, connectors)?);
    }
    Ok(out)
}

/// One service, or `None`.
///
/// # Errors
/// A database error or an unreadable row.
pub async fn get_service(db: &Db, name: &str) -> Result<Option<ServiceRecord>, InventoryError> {
    get_in(&mut *db.pool().acquire().await?, name).await
}

async fn get_in(conn: &mut AnyConnection, name: &str) -> Result<Option<ServiceRecord>, InventoryError> {
    let row = sqlx::query_as::<Any, ServiceRow>(select_services!("WHERE name = $1"))
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => {
            let connectors = connectors_of(conn, name).await?;
            decode(row, connectors).map(Some)
        }
        None => Ok(None),
    }
}

/// Places `service` in `segment` (`None`: takes it out of every segment, so
/// nobody reaches it), optionally setting its protocol. Audited, and the
/// catalog version names the move; a running broker re-decides live streams.
///
/// # Errors
/// An unknown service or segment, a bad protocol, a database or audit error.
pub async fn assign(
    db: &Db,
    service: &str,
    segment: Option<&str>,
    protocol: Option<&str>,
    actor: &str,
) -> Result<ServiceRecord, InventoryError> {
    if let Some(protocol) = protocol.filter(|p| !matches!(*p, "tcp" | "http")) {
        return Err(InventoryError::BadProtocol(protocol.to_owned()));
    }
    let mut tx = db.begin_write().await?;
    let before = get_in(&mut tx, service).await?.ok_or_else(|| InventoryError::UnknownService(service.to_owned()))?;
    if let Some(segment) = segment {
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM segments WHERE name = $1").bind(segment).fetch_optional(&mut *tx).await?;
        if exists.is_none() {
            return Err(InventoryError::UnknownSegment(segment.to_owned()));
        }
    }
    let protocol = protocol.unwrap_or(&before.protocol);
    sqlx::query("UPDATE services SET segment = $1, protocol = $2, updated_at = $3 WHERE name = $4")
        .bind(segment)
        .bind(protocol)
        .bind(now())
        .bind(service)
        .execute(&mut *tx)
        .await?;
    let change = match (before.segment.as_deref(), segment) {
        (Some(old), Some(new)) if old != new => format!("service {service} moved from segment {old} to {new}"),
        (None, Some(new)) => format!("service {service} assigned to segment {new}"),
        (Some(old), None) => format!("service {service} removed from segment {old}"),
        _ => format!("service {service} reassigned (segment unchanged, protocol {protocol})"),
    };
    let detail =
        json!({ "service": service, "segment_before": before.segment, "segment": segment, "protocol": protocol });
    record_change(&mut tx, actor, &format!("service/{service}"), &change, detail).await?;
    let after = get_in(&mut tx, service).await?.ok_or_else(|| InventoryError::UnknownService(service.to_owned()))?;
    tx.commit().await?;
    Ok(after)
}

/// Bumps the catalog version and audits the change, in the caller's transaction.
async fn record_change(
    tx: &mut Transaction<'_, Any>,
    actor: &str,
    subject: &str,
    change: &str,
    mut detail: serde_json::Value,
) -> Result<u64, InventoryError> {
    let version = bump(tx, change).await?;
    if let Some(map) = detail.as_object_mut() {
        map.insert("catalog_version".into(), json!(version));
        map.insert("change".into(), json!(change));
    }
    // A catalog change activates a new policy bundle (same policies, new entities).
    let event =
        AuditEvent::new(EventKind::PolicyActivated, Outcome::Success).actor(actor).subject(subject).detail(detail);
    Audit::record_in(tx, event).await?;
    Ok(version)
}

/// Adds or removes labels on a service. Audited; bumps the catalog version
/// if anything changed.
///
/// # Errors
/// An unknown service, a bad label, a database or audit error.
pub async fn label(
    db: &Db,
    service: &str,
    changes: &[LabelChange<'_>],
    actor: &str,
) -> Result<ServiceRecord, InventoryError> {
    for change in changes {
        let (LabelChange::Add(l) | LabelChange::Remove(l)) = *change;
        check_name("label", l)?;
    }
    let mut tx = db.begin_write().await?;
    let before = get_in(&mut tx, service).await?.ok_or_else(|| InventoryError::UnknownService(service.to_owned()))?;
    let mut labels = before.labels.clone();
    for change in changes {
        match *change {
            LabelChange::Add(l) if !labels.iter().any(|x| x == l) => labels.push(l.to_owned()),
            LabelChange::Remove(l) => labels.retain(|x| x != l),
            LabelChange::Add(_) => {}
        }
    }
    let labels = sorted(labels);
    if labels == before.labels {
        return Ok(before);
    }
    let json_labels = serde_json::to_string(&labels).unwrap_or_else(|_| "[]".into());
    sqlx::query("UPDATE services SET labels = $1, updated_at = $2 WHERE name = $3")
        .bind(json_labels)
        .bind(now())
        .bind(service)
        .execute(&mut *tx)
        .await?;
    let change = format!("service {service} labels [{}] -> [{}]", before.labels.join(", "), labels.join(", "));
    let detail = json!({ "service": service, "labels_before": before.labels, "labels": labels });
    record_change(&mut tx, actor, &format!("service/{service}"), &change, detail).await?;
    let after = get_in(&mut tx, service).await?.ok_or_else(|| InventoryError::UnknownService(service.to_owned()))?;
    tx.commit().await?;
    Ok(after)
}

fn sorted(mut labels: Vec<String>) -> Vec<String> {
    labels.sort();
    labels.dedup();
    labels
}

/// Every segment with its services, by name.
///
/// # Errors
/// A database error.
pub async fn segments(db: &Db) -> Result<Vec<SegmentRecord>, InventoryError> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT name, description, created_at FROM segments ORDER BY name").fetch_all(db.pool()).await?;
    let members: Vec<(String, String)> =
        sqlx::query_as("SELECT segment, name FROM services WHERE segment IS NOT NULL ORDER BY name")
            .fetch_all(db.pool())
            .await?;
    Ok(rows
        .into_iter()
        .map(|(name, description, created_at)| {
            let services = members.iter().filter(|(s, _)| *s == name).map(|(_, n)| n.clone()).collect();
            SegmentRecord { name, description, created_at, services }
        })
        .collect())
}

/// Creates an empty segment. Audited.
///
/// # Errors
/// A bad or taken name, a database or audit error.
pub async fn create_segment(
    db: &Db,
    name: &str,
    description: &str,
    actor: &str,
) -> Result<SegmentRecord, InventoryError> {
    check_name("segment", name)?;
    let mut tx = db.begin_write().await?;
    let created_at = now();
    let inserted = sqlx::query(
        "INSERT INTO segments (name, description, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(description)
    .bind(created_at)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(InventoryError::SegmentExists(name.to_owned()));
    }
    let change = format!("segment {name} created");
    record_change(&mut tx, actor, &format!("segment/{name}"), &change, json!({ "segment": name })).await?;
    tx.commit().await?;
    Ok(SegmentRecord { name: name.to_owned(), description: description.to_owned(), created_at, services: Vec::new() })
}

/// Deletes an empty segment. Audited.
///
/// # Errors
/// An unknown segment, one that still holds services, a database or audit error.
pub async fn delete_segment(db: &Db, name: &str, actor: &str) -> Result<(), InventoryError> {
    let mut tx = db.begin_write().await?;
    let members: Vec<String> = sqlx::query_scalar("SELECT name FROM services WHERE segment = $1 ORDER BY name")
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
    if !members.is_empty() {
        return Err(InventoryError::SegmentInUse { name: name.to_owned(), services: members });
    }
    let deleted = sqlx::query("DELETE FROM segments WHERE name = $1").bind(name).execute(&mut *tx).await?;
    if deleted.rows_affected() == 0 {
        return Err(InventoryError::UnknownSegment(name.to_owned()));
    }
    let change = format!("segment {name} deleted");
    record_change(&mut tx, actor, &format!("segment/{name}"), &change, json!({ "segment": name })).await?;
    tx.commit().await?;
    Ok(())
}

/// Records what a connector's hello advertised: new services are added
/// without a segment (nobody reaches them until an admin assigns one) and
/// the connector is remembered for each. Names that are not valid service
/// names are skipped. Returns the services that were new to the catalog.
///
/// # Errors
/// A database error.
pub async fn record_advertised(
    db: &Db,
    connector_id: &str,
    connector_name: &str,
    advertised: &[String],
) -> Result<Vec<String>, InventoryError> {
    let mut tx = db.begin_write().await?;
    let mut new = Vec::new();
    for service in advertised.iter().filter(|s| check_name("service", s).is_ok()) {
        let inserted = sqlx::query(
            "INSERT INTO services (name, segment, protocol, labels, origin, updated_at) \
             VALUES ($1, NULL, 'tcp', '[]', 'connector', $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(service)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() > 0 {
            new.push(service.clone());
        }
        sqlx::query(
            "INSERT INTO service_connectors (service, connector_id, connector, last_seen) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (service, connector_id) DO UPDATE SET connector = excluded.connector, last_seen = excluded.last_seen",
        )
        .bind(service)
        .bind(connector_id)
        .bind(connector_name)
        .bind(now())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(new)
}
