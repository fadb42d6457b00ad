//! The `users` table: where a person comes from. A person is an identity with
//! role `user`, keyed on (issuer, subject): the OIDC issuer and `sub`, or
//! `local` and an account id for invite-only accounts.

use palisade_proto::id::UserId;
use palisade_proto::identity::PeerRole;
use sqlx::{Any, AnyConnection};

use super::{Db, IdentityRecord, OrderBy, identities};

/// The issuer of invite-only (passkey) accounts.
pub const LOCAL_ISSUER: &str = "local";

/// A person as listed by `palisade-broker user list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// The identity (role `user`).
    pub identity: IdentityRecord,
    /// OIDC issuer URL, or `local`.
    pub issuer: String,
    /// OIDC `sub`, or the local account id.
    pub subject: String,
    /// Email, as last seen.
    pub email: Option<String>,
    /// Display name, as last seen.
    pub display_name: Option<String>,
    /// Last sign-in, unix seconds.
    pub last_login: Option<i64>,
}

/// What the identity provider (or an invite) says about a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// OIDC issuer URL, or `local`.
    pub issuer: String,
    /// OIDC `sub`, or the local account id.
    pub subject: String,
    /// The identity name (certificate CN), already checked.
    pub name: String,
    /// Email, if any.
    pub email: Option<String>,
    /// Display name, if any.
    pub display_name: Option<String>,
    /// Groups, already checked.
    pub groups: Vec<String>,
}

/// The result of [`upsert_in`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upserted {
    /// The identity as it is now.
    pub identity: IdentityRecord,
    /// Groups the person had before and has no longer.
    pub lost_groups: Vec<String>,
    /// Whether the user was created now.
    pub created: bool,
}

/// Creates the person or refreshes name, email and groups, keyed on (issuer, subject).
///
/// # Errors
/// A database error.
pub async fn upsert_in(conn: &mut AnyConnection, profile: &Profile, now: i64) -> Result<Upserted, sqlx::Error> {
    let existing: Option<String> =
        sqlx::query_scalar("SELECT identity_id FROM users WHERE issuer = $1 AND subject = $2")
            .bind(&profile.issuer)
            .bind(&profile.subject)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(id) = existing else {
        let identity = create_in(conn, profile, now).await?;
        return Ok(Upserted { identity, lost_groups: Vec::new(), created: true });
    };
    let before = identities::get_in(conn, PeerRole::User, &id).await?.ok_or(sqlx::Error::RowNotFound)?;
    let groups = serde_json::to_string(&profile.groups).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query("UPDATE identities SET name = $1, groups = $2 WHERE id = $3")
        .bind(&profile.name)
        .bind(groups)
        .bind(&id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE users SET email = $1, display_name = $2, last_login = $3 WHERE identity_id = $4")
        .bind(&profile.email)
        .bind(&profile.display_name)
        .bind(now)
        .bind(&id)
        .execute(&mut *conn)
        .await?;
    let lost_groups = before.groups.iter().filter(|g| !profile.groups.contains(g)).cloned().collect();
    let identity = IdentityRecord { name: profile.name.clone(), groups: profile.groups.clone(), ..before };
    Ok(Upserted { identity, lost_groups, created: false })
}

/// Creates a new person (identity and users row).
///
/// # Errors
/// A database error; an (issuer, subject) already present is a unique violation.
pub async fn create_in(conn: &mut AnyConnection, profile: &Profile, now: i64) -> Result<IdentityRecord, sqlx::Error> {
    let identity = IdentityRecord {
        id: UserId::random().to_string(),
        role: PeerRole::User,
        name: profile.name.clone(),
        groups: profile.groups.clone(),
        disabled: false,
    };
    identities::insert(conn, &identity, now).await?;
    sqlx::query(
        "INSERT INTO users (identity_id, issuer, subject, email, display_name, created_at, last_login) \
         VALUES ($1, $2, $3, $4, $5, $6, NULL)",
    )
    .bind(&identity.id)
    .bind(&profile.issuer)
    .bind(&profile.subject)
    .bind(&profile.email)
    .bind(&profile.display_name)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(identity)
}

/// Records a sign-in time.
///
/// # Errors
/// A database error.
pub async fn touch_in(conn: &mut AnyConnection, identity_id: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET last_login = $1 WHERE identity_id = $2")
        .bind(now)
        .bind(identity_id)
        .execute(conn)
        .await?;
    Ok(())
}

type Row = (String, String, String, String, i64, String, String, Option<String>, Option<String>, Option<i64>);

const SELECT: &str = "SELECT i.id, i.role, i.name, i.groups, i.disabled, u.issuer, u.subject, u.email, \
                      u.display_name, u.last_login FROM users u JOIN identities i ON i.id = u.identity_id";

fn from_row(r: Row) -> Result<UserRecord, sqlx::Error> {
    let (id, role, name, groups, disabled, issuer, subject, email, display_name, last_login) = r;
    let role = role.parse::<PeerRole>().map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let groups = serde_json::from_str(&groups).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let identity = IdentityRecord { id, role, name, groups, disabled: disabled != 0 };
    Ok(UserRecord { identity, issuer, subject, email, display_name, last_login })
}

/// Every person, by name.
///
/// # Errors
/// A database error.
pub async fn list(db: &Db) -> Result<Vec<UserRecord>, sqlx::Error> {
    let sql = format!("{SELECT} ORDER BY i.name, i.id");
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(db.pool()).await?;
    rows.into_iter().map(from_row).collect()
}

/// How many people there are.
///
/// # Errors
/// A database error.
pub async fn count(db: &Db) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(db.pool()).await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// One page of every person in `order`: at most `limit` after the first `offset`.
///
/// # Errors
/// A database error.
pub async fn list_page(db: &Db, order: OrderBy, limit: i64, offset: i64) -> Result<Vec<UserRecord>, sqlx::Error> {
    // The order is a constant of the console's code; every value is bound.
    let sql = format!("{SELECT} ORDER BY {}, i.id LIMIT $1 OFFSET $2", order.sql());
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(limit).bind(offset).fetch_all(db.pool()).await?;
    rows.into_iter().map(from_row).collect()
}

/// People whose identity id, name or email is `who`.
///
/// # Errors
/// A database error.
pub async fn find(db: &Db, who: &str) -> Result<Vec<UserRecord>, sqlx::Error> {
    let sql = format!("{SELECT} WHERE i.id = $1 OR i.name = $2 OR u.email = $3 ORDER BY i.id");
    let rows: Vec<Row> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(who).bind(who).bind(who).fetch_all(db.pool()).await?;
    rows.into_iter().map(from_row).collect()
}

/// The person with this identity id.
///
/// # Errors
/// A database error.
pub async fn get_in(conn: &mut AnyConnection, identity_id: &str) -> Result<Option<UserRecord>, sqlx::Error> {
    let sql = format!("{SELECT} WHERE i.id = $1");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(identity_id).fetch_optional(conn).await?;
    row.map(from_row).transpose()
}

/// Whether a person with this issuer and email exists (local invites refuse duplicates).
///
/// # Errors
/// A database error.
pub async fn email_taken_in(conn: &mut AnyConnection, issuer: &str, email: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar::<Any, i64>("SELECT COUNT(*) FROM users WHERE issuer = $1 AND email = $2")
        .bind(issuer)
        .bind(email)
        .fetch_one(conn)
        .await?;
    Ok(n > 0)
}
