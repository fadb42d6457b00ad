//! What an admin does to people and sessions from the command line
//! (`palisade-broker user …`, `session …`). Each change, its audit events and
//! its rows in the revocation feed commit in one transaction, so every
//! broker's relay cuts the matching tunnels.

use serde_json::json;

use super::{hash, new_secret, now_unix};
use crate::audit::{Audit, AuditError, AuditEvent, EventKind, Outcome};
use crate::db::login_state::invites;
use crate::db::users::{self, UserRecord};
use crate::db::{Db, credentials, sessions};

/// An admin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// No person matches.
    #[error("no user named {0:?} (give a name, email or id; see `palisade-broker user list`)")]
    UnknownUser(String),
    /// Several people match a name.
    #[error("{0:?} names several users; give the id instead: {1}")]
    Ambiguous(String, String),
    /// No such active session.
    #[error("no active session {0}")]
    UnknownSession(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The audit trail could not be written.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// The one person `who` (id, name or email) names.
///
/// # Errors
/// Nobody or several people match, or the database failed.
pub async fn find_user(db: &Db, who: &str) -> Result<UserRecord, ManageError> {
    let mut found = users::find(db, who).await?;
    match found.len() {
        0 => Err(ManageError::UnknownUser(who.to_owned())),
        1 => Ok(found.remove(0)),
        _ => Err(ManageError::Ambiguous(
            who.to_owned(),
            found.iter().map(|u| u.identity.id.as_str()).collect::<Vec<_>>().join(", "),
        )),
    }
}

async fn revoke_all(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    actor: &str,
    reason: &str,
) -> Result<Vec<String>, ManageError> {
    let revoked = sessions::revoke_all_in(tx, id, actor, reason, now_unix()).await?;
    for session in &revoked {
        let event = AuditEvent::new(EventKind::SessionRevoked, Outcome::Success)
            .actor(actor)
            .subject(session.clone())
            .detail(json!({ "reason": reason, "identity": id }));
        Audit::record_in(tx, event).await?;
    }
    Ok(revoked)
}

/// Revokes one session (and writes the revocation feed).
///
/// # Errors
/// No such active session, or the database failed.
pub async fn revoke_session(db: &Db, id: &str, actor: &str) -> Result<(), ManageError> {
    let mut tx = db.begin_write().await?;
    if !sessions::revoke_in(&mut tx, id, actor, "revoked by an admin", now_unix()).await? {
        return Err(ManageError::UnknownSession(id.to_owned()));
    }
    let event = AuditEvent::new(EventKind::SessionRevoked, Outcome::Success)
        .actor(actor)
        .subject(id)
        .detail(json!({ "reason": "admin" }));
    Audit::record_in(&mut tx, event).await?;
    tx.commit().await?;
    Ok(())
}

/// Revokes every session of a person (after a disable). Returns their ids.
///
/// # Errors
/// The database failed.
pub async fn revoke_sessions_of(
    db: &Db,
    identity_id: &str,
    actor: &str,
    reason: &str,
) -> Result<Vec<String>, ManageError> {
    let mut tx = db.begin_write().await?;
    let revoked = revoke_all(&mut tx, identity_id, actor, reason).await?;
    invites::revoke_for_in(&mut tx, identity_id, now_unix()).await?;
    tx.commit().await?;
    Ok(revoked)
}

/// What a credential reset did.
#[derive(Debug)]
pub struct Reset {
    /// Credentials deleted.
    pub removed: u64,
    /// Sessions revoked.
    pub sessions: Vec<String>,
    /// For a local account: a fresh invite link (its only way back in).
    pub invite_link: Option<String>,
}

/// Deletes every credential of a person and revokes their sessions; a local
/// account gets a new invite. The person registers again at their next sign-in.
///
/// # Errors
/// The database failed.
pub async fn reset_credentials(
    db: &Db,
    user: &UserRecord,
    public_url: &url::Url,
    actor: &str,
) -> Result<Reset, ManageError> {
    let id = &user.identity.id;
    let now = now_unix();
    let mut tx = db.begin_write().await?;
    let removed = credentials::delete_all_in(&mut tx, id).await?;
    let event = AuditEvent::new(EventKind::CredentialRemoved, Outcome::Success)
        .actor(actor)
        .subject(format!("user/{id}"))
        .detail(json!({ "by": "admin", "reset": true, "removed": removed }));
    Audit::record_in(&mut tx, event).await?;
    let sessions = revoke_all(&mut tx, id, actor, "credentials reset").await?;
    let mut invite_link = None;
    if user.issuer == users::LOCAL_ISSUER {
        invites::revoke_for_in(&mut tx, id, now).await?;
        let token = new_secret();
        let expires_at = now + i64::try_from(super::local::INVITE_TTL.as_secs()).unwrap_or(0);
        invites::insert_in(&mut tx, &hash(&token), id, actor, now, expires_at).await?;
        let event = AuditEvent::new(EventKind::UserInvited, Outcome::Success)
            .actor(actor)
            .subject(format!("user/{id}"))
            .detail(json!({ "reason": "credentials reset", "expires_at": expires_at }));
        Audit::record_in(&mut tx, event).await?;
        invite_link = Some(format!("{}/invite/{token}", public_url.as_str().trim_end_matches('/')));
    }
    tx.commit().await?;
    Ok(Reset { removed, sessions, invite_link })
}
