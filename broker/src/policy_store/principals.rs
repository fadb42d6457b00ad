//! The principals the policy engine decides about, from the `identities`
//! and `users` tables: for `policy explain` and `policy compare`.

use palisade_policies::{Principal, PrincipalKind};
use sqlx::Any;

use crate::db::Db;

/// A `--principal` could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum PrincipalLookupError {
    /// Not `machine:NAME` or `user:EMAIL`.
    #[error("principal {0:?}: expected machine:NAME or user:EMAIL")]
    Syntax(String),
    /// No such identity.
    #[error("no {kind} named {name:?}")]
    Unknown {
        /// `machine` or `user`.
        kind: &'static str,
        /// The name or email asked for.
        name: String,
    },
    /// Several people share the email.
    #[error("{0} people have the email {1:?}; disambiguate in the database")]
    Ambiguous(usize, String),
    /// The database failed, or a row does not decode.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

type Row = (String, String, String, String, i64);

fn to_principal((id, role, name, groups, _): Row) -> Result<Principal, sqlx::Error> {
    let kind = if role == "user" { PrincipalKind::User } else { PrincipalKind::Machine };
    let groups = serde_json::from_str(&groups).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(Principal { kind, id, name, groups })
}

/// Resolves `machine:NAME` (an enrolled machine's name) or `user:EMAIL`.
/// Returns the principal and whether the identity is disabled.
///
/// # Errors
/// [`PrincipalLookupError`].
pub async fn find_principal(db: &Db, spec: &str) -> Result<(Principal, bool), PrincipalLookupError> {
    let (kind, name) = spec.split_once(':').ok_or_else(|| PrincipalLookupError::Syntax(spec.to_owned()))?;
    let (kind, sql) = match kind {
        "machine" => {
            ("machine", "SELECT id, role, name, groups, disabled FROM identities WHERE role = 'machine' AND name = $1")
        }
        "user" => (
            "user",
            "SELECT i.id, i.role, i.name, i.groups, i.disabled FROM identities i \
             JOIN users u ON u.identity_id = i.id WHERE i.role = 'user' AND lower(u.email) = lower($1)",
        ),
        _ => return Err(PrincipalLookupError::Syntax(spec.to_owned())),
    };
    let mut rows = sqlx::query_as::<Any, Row>(sql).bind(name).fetch_all(db.pool()).await?;
    match rows.len() {
        0 => Err(PrincipalLookupError::Unknown { kind, name: name.to_owned() }),
        1 => {
            let row = rows.remove(0);
            let disabled = row.4 != 0;
            Ok((to_principal(row)?, disabled))
        }
        n => Err(PrincipalLookupError::Ambiguous(n, name.to_owned())),
    }
}

/// Every machine and person that is not disabled, machines first, by name.
///
/// # Errors
/// A database error, or a row that does not decode.
pub async fn known_principals(db: &Db) -> Result<Vec<Principal>, sqlx::Error> {
    let rows = sqlx::query_as::<Any, Row>(
        "SELECT id, role, name, groups, disabled FROM identities \
         WHERE role IN ('machine', 'user') AND disabled = 0 ORDER BY role, name, id",
    )
    .fetch_all(db.pool())
    .await?;
    rows.into_iter().map(to_principal).collect()
}
