//! `palisade logout`: end the session on the broker, then forget the
//! certificate here. The local part happens whatever the broker says; the key,
//! the CA and the broker's address stay for the next `palisade login`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use palisade_proto::identity::{PeerRole, SpiffeId};

use crate::store::{self, Profile, StoreError};
use crate::tunnel::{Tunnel, TunnelError};

/// How long `palisade logout` waits for the broker.
pub const LOGOUT_WAIT: Duration = Duration::from_secs(10);

/// What the broker did with the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteLogout {
    /// The broker revoked the session (or had already cut it).
    Revoked,
    /// The broker says there was nothing left to revoke.
    AlreadyEnded,
    /// There was no certificate here: already logged out locally.
    NothingToRevoke,
    /// The broker could not be asked; the session stays valid there until it ends.
    NotRevoked {
        /// Why.
        reason: String,
    },
}

/// The outcome of a logout.
#[derive(Clone, Debug)]
pub struct LoggedOut {
    /// Who logged out.
    pub identity: String,
    /// The session, as stored.
    pub session_id: Option<String>,
    /// What the broker did.
    pub remote: RemoteLogout,
    /// Whether a local certificate was deleted.
    pub deleted_certificate: bool,
}

/// Why nothing was done.
#[derive(Debug, thiserror::Error)]
pub enum LogoutError {
    /// Nothing stored, or the files cannot be read or changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A machine enrollment has no sign-in to end; deleting its certificate would need a new token.
    #[error(
        "{identity} is a machine enrollment, not a person's sign-in; `palisade logout` leaves it alone (ask an admin to revoke it)"
    )]
    NotASignIn {
        /// The machine identity.
        identity: String,
    },
}

/// [`logout_within`] with [`LOGOUT_WAIT`].
///
/// # Errors
/// See [`logout_within`].
pub async fn logout(home: &Path) -> Result<LoggedOut, LogoutError> {
    logout_within(home, LOGOUT_WAIT).await
}

/// Asks the broker (over QUIC, at most `wait`) to revoke this sign-in's
/// session, then deletes `cert.pem` and the session fields of `profile.json`
/// even if the broker could not be reached.
///
/// # Errors
/// Nothing is stored, it is a machine enrollment, or a local file could not be changed.
pub async fn logout_within(home: &Path, wait: Duration) -> Result<LoggedOut, LogoutError> {
    let file = store::read_profile(home)?.ok_or_else(|| StoreError::NotEnrolled { home: home.to_owned() })?;
    if file.identity.parse::<SpiffeId>().is_ok_and(|id| id.role != PeerRole::User) {
        return Err(LogoutError::NotASignIn { identity: file.identity });
    }
    let remote = match Profile::load(home) {
        Ok(profile) => revoke_remotely(profile, wait).await,
        Err(StoreError::LoggedOut { .. }) => RemoteLogout::NothingToRevoke,
        Err(e) => RemoteLogout::NotRevoked { reason: e.to_string() },
    };
    let deleted_certificate = store::forget_session(home)?;
    Ok(LoggedOut {
        identity: file.identity,
        session_id: file.session_id.map(|s| s.to_string()),
        remote,
        deleted_certificate,
    })
}

async fn revoke_remotely(profile: Profile, wait: Duration) -> RemoteLogout {
    if profile.is_expired(SystemTime::now()) {
        return RemoteLogout::NotRevoked {
            reason: "the certificate has expired, so the broker cannot be asked".into(),
        };
    }
    let tunnel = match Tunnel::new(profile) {
        Ok(tunnel) => tunnel,
        Err(e) => return RemoteLogout::NotRevoked { reason: e.to_string() },
    };
    let outcome = match tokio::time::timeout(wait, tunnel.logout()).await {
        Ok(Ok(done)) if done.revoked => RemoteLogout::Revoked,
        Ok(Ok(_)) => RemoteLogout::AlreadyEnded,
        // The broker cut the connection for revocation: the session is over either way.
        Ok(Err(TunnelError::Revoked)) => RemoteLogout::Revoked,
        Ok(Err(e)) => RemoteLogout::NotRevoked { reason: e.to_string() },
        Err(_) => RemoteLogout::NotRevoked {
            reason: format!("the broker did not answer within {}", humantime::format_duration(wait)),
        },
    };
    tunnel.close().await;
    outcome
}
