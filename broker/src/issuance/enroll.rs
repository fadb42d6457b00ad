//! Enrollment with one-time tokens: an admin creates a token for a machine or
//! connector name; the machine redeems it once, with a CSR, for its identity
//! and first certificate.
//!
//! Redemption is decided by one conditional `UPDATE` (unredeemed and
//! unexpired) inside a `BEGIN IMMEDIATE` transaction that also creates the
//! identity, records the certificate and appends `token.redeemed` and
//! `certificate.issued`: all of it commits or none of it does, and of two
//! racing redemptions exactly one wins. A bad CSR does not consume the token.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use palisade_proto::enroll::EnrollmentToken;
use palisade_proto::id::{ConnectorId, GroupName, IdentityName, MachineId};
use palisade_proto::identity::PeerRole;
use serde_json::json;

use super::ca::Ca;
use super::{IssueError, Issued, LeafProfile, check_key_unused, csr, record_refusal, store_issued};
use crate::audit::{Audit, AuditError, AuditEvent, EventKind, Outcome};
use crate::db::{self, Db, IdentityRecord, identities, tokens};

/// Longest lifetime of an enrollment token.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What an admin asks for.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// `Machine` or `Connector`.
    pub role: PeerRole,
    /// The identity's name.
    pub name: String,
    /// Its groups (machines only).
    pub groups: Vec<String>,
    /// How long the token stays redeemable.
    pub ttl: Duration,
    /// Who asks (`cli`, an admin's id).
    pub created_by: String,
}

/// A successful enrollment.
#[derive(Clone, Debug)]
pub struct Enrolled {
    /// The identity created.
    pub identity: IdentityRecord,
    /// Its first certificate.
    pub issued: Issued,
}

/// Why a token was not created or not redeemed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The request to create a token was invalid.
    #[error("{0}")]
    Invalid(String),
    /// A machine or connector with that name exists, or a pending token promises it.
    #[error("a {role} named {name:?} already exists or has a pending token; choose another name")]
    NameTaken {
        /// The role.
        role: PeerRole,
        /// The name.
        name: String,
    },
    /// The text is not an enrollment token.
    #[error("not a valid enrollment token: copy it again from `palisade-broker token create`")]
    MalformedToken,
    /// The token is unknown, already used, expired, or pinned to another CA.
    #[error("enrollment token already used or expired: ask an admin for a new one")]
    TokenRefused,
    /// The CSR or the CA refused.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The audit trail could not be written.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// The first 12 hex digits of a token's hash: enough to find it, useless to redeem it.
#[must_use]
pub fn hash_prefix(token_hash: &str) -> String {
    token_hash.chars().take(12).collect()
}

/// Creates a one-time token for a new machine or connector and records `token.created`.
///
/// # Errors
/// A bad name, group or TTL, a name already taken, or the database.
pub async fn create_token(
    db: &Db,
    ca_der: &[u8],
    req: &TokenRequest,
    now: SystemTime,
) -> Result<EnrollmentToken, EnrollError> {
    validate(req)?;
    let token = EnrollmentToken::generate(ca_der);
    let now_unix = db::unix_seconds(now);
    let row = tokens::NewToken {
        token_hash: token.secret_hash(),
        role: req.role,
        name: req.name.clone(),
        groups: req.groups.clone(),
        created_by: req.created_by.clone(),
        created_at: now_unix,
        expires_at: now_unix + i64::try_from(req.ttl.as_secs()).unwrap_or(0),
    };
    let mut tx = db.begin_write().await?;
    let taken = identities::find_by_name_in(&mut tx, req.role, &req.name).await?.is_some()
        || tokens::pending_for_name(&mut tx, req.role, &req.name, now_unix).await?;
    if taken {
        return Err(EnrollError::NameTaken { role: req.role, name: req.name.clone() });
    }
    tokens::insert(&mut tx, &row).await?;
    let event = AuditEvent::new(EventKind::TokenCreated, Outcome::Success)
        .actor(req.created_by.clone())
        .subject(format!("{}:{}", req.role, req.name))
        .detail(json!({ "token": hash_prefix(&row.token_hash), "groups": req.groups, "expires_at": row.expires_at }));
    Audit::record_in(&mut tx, event).await?;
    tx.commit().await?;
    Ok(token)
}

fn validate(req: &TokenRequest) -> Result<(), EnrollError> {
    if !matches!(req.role, PeerRole::Machine | PeerRole::Connector) {
        return Err(EnrollError::Invalid("tokens enroll machines and connectors only".into()));
    }
    req.name.parse::<IdentityName>().map_err(|e| EnrollError::Invalid(e.to_string()))?;
    for g in &req.groups {
        g.parse::<GroupName>().map_err(|e| EnrollError::Invalid(e.to_string()))?;
    }
    if req.role == PeerRole::Connector && !req.groups.is_empty() {
        return Err(EnrollError::Invalid("connectors have no groups".into()));
    }
    if req.ttl.is_zero() || req.ttl > MAX_TOKEN_TTL {
        return Err(EnrollError::Invalid("token lifetime must be more than 0 and at most 7 days".into()));
    }
    Ok(())
}

/// Everything redemption needs besides the token and the CSR.
#[derive(Clone, Copy)]
pub struct Enroller<'a> {
    /// The database.
    pub db: &'a Db,
    /// For refusals, which commit on their own.
    pub audit: &'a Audit,
    /// The CA.
    pub ca: &'a Ca,
    /// Certificate lifetime for machines.
    pub machine_ttl: Duration,
    /// Certificate lifetime for connectors.
    pub connector_ttl: Duration,
    /// The enrolling machine's address, for the audit trail.
    pub source: Option<SocketAddr>,
}

impl Enroller<'_> {
    /// Redeems `token` with `csr_pem`: creates the identity and issues its first certificate.
    ///
    /// # Errors
    /// [`EnrollError::MalformedToken`], [`EnrollError::TokenRefused`], a CSR or CA
    /// refusal ([`EnrollError::Issue`]), a name taken meanwhile, or the database.
    pub async fn redeem(&self, token: &str, csr_pem: &str, now: SystemTime) -> Result<Enrolled, EnrollError> {
        let Ok(token) = token.parse::<EnrollmentToken>() else {
            self.refuse_token("-", "malformed").await;
            return Err(EnrollError::MalformedToken);
        };
        let hash = token.secret_hash();
        if token.ca_pin() != palisade_proto::enroll::sha256(self.ca.cert_der()) {
            self.refuse_token(&hash, "pinned to another CA").await;
            return Err(EnrollError::TokenRefused);
        }
        let csr = match csr::check_csr(csr_pem) {
            Ok(csr) => csr,
            Err(e) => {
                record_refusal(self.audit, &format!("token:{}", hash_prefix(&hash)), &e, self.source).await;
                return Err(e.into());
            }
        };
        match self.redeem_checked(&hash, &csr, now).await {
            Err(EnrollError::TokenRefused) => {
                let reason = tokens::why_unusable(self.db, &hash, db::unix_seconds(now)).await.unwrap_or("unknown");
                self.refuse_token(&hash, reason).await;
                Err(EnrollError::TokenRefused)
            }
            Err(e @ EnrollError::NameTaken { .. }) => {
                self.refuse_token(&hash, "name taken").await;
                Err(e)
            }
            Err(EnrollError::Issue(e)) => {
                record_refusal(self.audit, &format!("token:{}", hash_prefix(&hash)), &e, self.source).await;
                Err(EnrollError::Issue(e))
            }
            other => other,
        }
    }

    async fn redeem_checked(
        &self,
        hash: &str,
        csr: &csr::CheckedCsr,
        now: SystemTime,
    ) -> Result<Enrolled, EnrollError> {
        let now_unix = db::unix_seconds(now);
        let mut tx = self.db.begin_write().await?;
        let grant = tokens::redeem(&mut tx, hash, now_unix).await?.ok_or(EnrollError::TokenRefused)?;
        let identity = IdentityRecord {
            id: new_id(grant.role),
            role: grant.role,
            name: grant.name,
            groups: grant.groups,
            disabled: false,
        };
        if let Err(e) = identities::insert(&mut tx, &identity, now_unix).await {
            return Err(if db::is_unique_violation(&e) {
                EnrollError::NameTaken { role: identity.role, name: identity.name }
            } else {
                e.into()
            });
        }
        check_key_unused(&mut tx, csr, &identity.id).await?;
        let ttl = if identity.role == PeerRole::Connector { self.connector_ttl } else { self.machine_ttl };
        let profile = LeafProfile {
            role: identity.role,
            id: identity.id.clone(),
            name: identity.name.clone(),
            groups: identity.groups.clone(),
            ttl,
            session: None,
            mfa_at: None,
            auth_methods: vec!["enrollment_token".into()],
        };
        let issued = self.ca.sign(&profile, csr, now)?;
        tokens::set_identity(&mut tx, hash, &identity.id).await?;
        let event = AuditEvent::new(EventKind::TokenRedeemed, Outcome::Success)
            .actor(issued.spiffe_id.clone())
            .subject(format!("{}:{}", identity.role, identity.name))
            .detail(json!({ "token": hash_prefix(hash), "identity": identity.id, "source": self.source.map(|s| s.to_string()) }));
        Audit::record_in(&mut tx, event).await?;
        store_issued(&mut tx, &issued, csr, &identity.id, now, "enrollment").await?;
        tx.commit().await?;
        Ok(Enrolled { identity, issued })
    }

    async fn refuse_token(&self, hash: &str, reason: &str) {
        let event = AuditEvent::new(EventKind::TokenRefused, Outcome::Failure)
            .subject(format!("token:{}", hash_prefix(hash)))
            .detail(json!({ "reason": reason, "source": self.source.map(|s| s.to_string()) }));
        if let Err(e) = self.audit.record(event).await {
            tracing::error!(error = %e, "could not record token.refused");
        }
    }
}

fn new_id(role: PeerRole) -> String {
    match role {
        PeerRole::Connector => ConnectorId::random().to_string(),
        _ => MachineId::random().to_string(),
    }
}
