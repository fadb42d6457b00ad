//! The `identities` table: machines, connectors and (later) people.

use std::collections::HashMap;

use palisade_proto::identity::PeerRole;
use sqlx::{Any, AnyConnection};

use super::{Db, OrderBy};

/// One identity as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityRecord {
    /// The identity's id: the last segment of its SPIFFE id.
    pub id: String,
    /// What kind of identity it is.
    pub role: PeerRole,
    /// Display name chosen by an admin.
    pub name: String,
    /// Groups it belongs to.
    pub groups: Vec<String>,
    /// A disabled identity gets no certificate and no tunnel.
    pub disabled: bool,
}

type Row = (String, String, String, String, i64);

fn from_row((id, role, name, groups, disabled): Row) -> Result<IdentityRecord, sqlx::Error> {
    let role = role.parse::<PeerRole>().map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let groups = serde_json::from_str(&groups).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(IdentityRecord { id, role, name, groups, disabled: disabled != 0 })
}

/// The identity with this role and id, if any.
///
/// # Errors
/// A database error, or a row that does not decode.
pub async fn get(db: &Db, role: PeerRole, id: &str) -> Result<Option<IdentityRecord>, sqlx::Error> {
    get_in(&mut *db.pool().acquire().await?, role, id).await
}

/// [`get`] on a given connection or transaction.
///
/// # Errors
/// A database error, or a row that does not decode.
pub async fn get_in(conn: &mut AnyConnection, role: PeerRole, id: &str) -> Result<Option<IdentityRecord>, sqlx::Error> {
    let row = sqlx::query_as::<Any, Row>(
        "SELECT id, role, name, groups, disabled FROM identities WHERE role = $1 AND id = $2",
    )
    .bind(role.as_str())
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.map(from_row).transpose()
}

/// The machine or connector with this name, if any.
///
/// # Errors
/// A database error, or a row that does not decode.
pub async fn find_by_name(db: &Db, role: PeerRole, name: &str) -> Result<Option<IdentityRecord>, sqlx::Error> {
    find_by_name_in(&mut *db.pool().acquire().await?, role, name).await
}

/// [`find_by_name`] on a given connection or transaction.
///
/// # Errors
/// A database error, or a row that does not decode.
pub async fn find_by_name_in(
    conn: &mut AnyConnection,
    role: PeerRole,
    name: &str,
) -> Result<Option<IdentityRecord>, sqlx::Error> {
    let row = sqlx::query_as::<Any, Row>(
        "SELECT id, role, name, groups, disabled FROM identities WHERE role = $1 AND name = $2",
    )
    .bind(role.as_str())
    .bind(name)
    .fetch_optional(conn)
    .await?;
    row.map(from_row).transpose()
}

/// The identity with this id, whatever its role.
///
/// # Errors
/// A database error, or a row that does not decode.
pub async fn get_any(db: &Db, id: &str) -> Result<Option<IdentityRecord>, sqlx::Error> {
    let row = sqlx::query_as::<Any, Row>("SELECT id, role, name, groups, disabled FROM identities WHERE id = $1")
        .bind(id)
        .fetch_optional(db.pool())
        .await?;
    row.map(from_row).transpose()
}

/// Every identity with this role, by name.
///
/// # Errors
/// A database error, or a row that does not decode.
pub async fn list(db: &Db, role: PeerRole) -> Result<Vec<IdentityRecord>, sqlx::Error> {
    let rows = sqlx::query_as::<Any, Row>(
        "SELECT id, role, name, groups, disabled FROM identities WHERE role = $1 ORDER BY name, id",
    )
    .bind(role.as_str())
    .fetch_all(db.pool())
    .await?;
    rows.into_iter().map(from_row).collect()
}

/// How many identities have this role.
///
/// # Errors
/// A database error.
pub async fn count(db: &Db, role: PeerRole) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar::<Any, i64>("SELECT COUNT(*) FROM identities WHERE role = $1")
        .bind(role.as_str())
        .fetch_one(db.pool())
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// One page of the identities of `role` in `order`: at most `limit` after the first `offset`.
///
/// # Errors
/// A database error, or a row that does not decode.
pub async fn list_page(
    db: &Db,
    role: PeerRole,
    order: OrderBy,
    limit: i64,
    offset: i64,
) -> Result<Vec<IdentityRecord>, sqlx::Error> {
    // The order is a constant of the console's code; every value is bound.
    let sql = format!(
        "SELECT id, role, name, groups, disabled FROM identities WHERE role = $1 ORDER BY {}, id LIMIT $2 OFFSET $3",
        order.sql()
    );
    let rows = sqlx::query_as::<Any, Row>(sqlx::AssertSqlSafe(sql))
        .bind(role.as_str())
        .bind(limit)
        .bind(offset)
        .fetch_all(db.pool())
        .await?;
    rows.into_iter().map(from_row).collect()
}

/// The names of the identities `ids` (any role), by id.
///
/// # Errors
/// A database error.
pub async fn names_of(db: &Db, ids: &[String]) -> Result<HashMap<String, String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!("SELECT id, name FROM identities WHERE id IN ({})", marks.join(", "));
    let mut query = sqlx::query_as::<Any, (String, String)>(sqlx::AssertSqlSafe(sql));
    for id in ids {
        query = query.bind(id.as_str());
    }
    Ok(query.fetch_all(db.pool()).await?.into_iter().collect())
}

/// Inserts a new identity inside the caller's transaction.
///
/// # Errors
/// A database error; a name already used by the same role is a unique violation.
pub async fn insert(conn: &mut AnyConnection, record: &IdentityRecord, now_unix: i64) -> Result<(), sqlx::Error> {
    let groups = serde_json::to_string(&record.groups).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO identities (id, role, name, groups, disabled, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&record.id)
    .bind(record.role.as_str())
    .bind(&record.name)
    .bind(groups)
    .bind(i64::from(record.disabled))
    .bind(now_unix)
    .execute(conn)
    .await?;
    Ok(())
}

/// Disables or re-enables an identity. Returns whether it exists.
///
/// # Errors
/// A database error.
pub async fn set_disabled(db: &Db, id: &str, disabled: bool) -> Result<bool, sqlx::Error> {
    set_disabled_in(&mut *db.pool().acquire().await?, id, disabled).await
}

/// [`set_disabled`] on a given connection or transaction.
///
/// # Errors
/// A database error.
pub async fn set_disabled_in(conn: &mut AnyConnection, id: &str, disabled: bool) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE identities SET disabled = $1 WHERE id = $2")
        .bind(i64::from(disabled))
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// How many ids one [`groups_of`] query names.
const GROUPS_CHUNK: usize = 200;

/// The groups of each of these identities that exists, by id.
///
/// # Errors
/// A database error, or a row that does not decode.
pub async fn groups_of(db: &Db, ids: &[String]) -> Result<HashMap<String, Vec<String>>, sqlx::Error> {
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(GROUPS_CHUNK) {
        let marks: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
        let sql = format!("SELECT id, groups FROM identities WHERE id IN ({})", marks.join(", "));
        let mut query = sqlx::query_as::<Any, (String, String)>(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(id);
        }
        for (id, groups) in query.fetch_all(db.pool()).await? {
            let groups = serde_json::from_str(&groups).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            out.insert(id, groups);
        }
    }
    Ok(out)
}

/// Sets an identity's groups inside the caller's transaction. Returns whether it exists.
///
/// # Errors
/// A database error.
pub async fn set_groups_in(conn: &mut AnyConnection, id: &str, groups: &[String]) -> Result<bool, sqlx::Error> {
    let groups = serde_json::to_string(groups).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let done =
        sqlx::query("UPDATE identities SET groups = $1 WHERE id = $2").bind(groups).bind(id).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}
