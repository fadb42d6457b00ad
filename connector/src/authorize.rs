//! The connector's own check of every dispatched stream.
//!
//! The broker already decided, but the connector does not take its word:
//! it verifies the caller's certificate against the CA by itself and
//! evaluates its own copy of the policy bundle. A connector without a valid
//! bundle denies everything.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_policies::{
    AccessRequest, Action, Decision, DecisionCache, DenyReason, Engine, Grant, LoadError, PolicyBundle, PolicyFile,
    Principal, PrincipalKind, RequestContext,
};
use palisade_proto::bundle::VerifiedBundle;
use palisade_proto::identity::{PeerRole, VerifiedPeer, VerifyPeerError};
use palisade_proto::wire::Dispatch;
use tokio::sync::watch;

use crate::config::{DEFAULT_BUNDLE_MAX_AGE, ServiceConfig};

mod callers;
pub(crate) use callers::Callers;

/// The policy bundle currently enforced; replaced only by a verified, valid
/// bundle of the same or a newer version. A bundle signed longer than
/// `max_age` ago is no longer enforced: the connector denies everything
/// until a fresh one arrives.
pub(crate) struct PolicyState {
    current: RwLock<Option<Enforced>>,
    max_age: Duration,
    /// Local guardrail files, compiled against each bundle's service catalog.
    local_files: Option<Vec<PolicyFile>>,
    local: RwLock<Option<Arc<Engine>>>,
    revoked: RwLock<Revocations>,
    /// Bumped after every revocation the broker pushes; live tunnels wait on it.
    revocations: watch::Sender<u64>,
    /// Verdicts of the bundle's engine, per (principal, service, context it
    /// reads); emptied whenever the bundle's version or digest changes.
    decisions: DecisionCache,
}

/// How many bundle verdicts the connector keeps.
const DECISION_CACHE_CAPACITY: usize = 10_000;

#[derive(Clone)]
struct Enforced {
    engine: Arc<Engine>,
    signed_at_unix: u64,
}

impl Default for PolicyState {
    fn default() -> Self {
        Self {
            current: RwLock::default(),
            max_age: DEFAULT_BUNDLE_MAX_AGE,
            local_files: None,
            local: RwLock::default(),
            revoked: RwLock::default(),
            revocations: watch::Sender::new(0),
            decisions: DecisionCache::new(DECISION_CACHE_CAPACITY),
        }
    }
}

/// Sessions and identities the broker has revoked. Kept for the life of the
/// process: certificates that name them may still be within their validity.
#[derive(Default, Debug)]
pub(crate) struct Revocations {
    sessions: HashSet<String>,
    identities: HashSet<String>,
}

impl Revocations {
    /// Whether the peer's identity or session is revoked.
    pub(crate) fn covers(&self, peer: &VerifiedPeer) -> bool {
        self.identities.contains(&peer.id().id) || peer.session().is_some_and(|s| self.sessions.contains(s))
    }
}

/// What [`PolicyState::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BundleApplied {
    /// The bundle is now enforced.
    Installed { version: u64, previous: Option<u64> },
    /// The same bundle was already enforced.
    Unchanged { version: u64 },
}

/// A bundle was refused; the previous one (if any) stays in force.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BundleError {
    #[error("policy bundle is malformed: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("policy bundle version {version} does not load: {source}")]
    Invalid { version: u64, source: LoadError },
    #[error("policy bundle version {offered} is older than the enforced version {current}: refusing the rollback")]
    Rollback { offered: u64, current: u64 },
    #[error(
        "policy bundle version {version} differs from the enforced bundle of the same version: keeping the enforced one"
    )]
    Conflict { version: u64 },
    #[error("the local guardrail policies do not load with bundle version {version}: {source}")]
    Local { version: u64, source: LoadError },
    #[error("policy bundle was signed {age_secs}s ago, more than the maximum age of {max_age_secs}s")]
    Expired { age_secs: u64, max_age_secs: u64 },
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl PolicyState {
    /// The cache of the enforced bundle's verdicts.
    pub(crate) fn decisions(&self) -> &DecisionCache {
        &self.decisions
    }

    /// A state that also enforces local guardrail policies (checked against
    /// an empty catalog here; against each bundle's catalog on apply).
    pub(crate) fn with_local(files: Vec<PolicyFile>) -> Result<Self, LoadError> {
        Engine::new(&PolicyBundle { version: 0, files: files.clone(), services: Vec::new() })?;
        Ok(Self { local_files: Some(files), ..Self::default() })
    }

    /// This state, with bundles expiring `max_age` after they were signed.
    pub(crate) fn with_max_age(self, max_age: Duration) -> Self {
        Self { max_age, ..self }
    }

    /// The latest verified engine, fresh or not, or `None` before the first valid bundle.
    fn latest(&self) -> Option<Arc<Engine>> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).as_ref().map(|e| e.engine.clone())
    }

    /// The engine to enforce at `now`: `None` before the first valid bundle
    /// and once the bundle is older than the maximum age.
    pub(crate) fn current(&self, now: SystemTime) -> Option<Arc<Engine>> {
        let slot = self.current.read().unwrap_or_else(PoisonError::into_inner);
        let enforced = slot.as_ref()?;
        (self.age_error(enforced.signed_at_unix, now).is_none()).then(|| enforced.engine.clone())
    }

    fn age_error(&self, signed_at_unix: u64, now: SystemTime) -> Option<BundleError> {
        let age_secs = unix_secs(now).saturating_sub(signed_at_unix);
        let max_age_secs = self.max_age.as_secs();
        (age_secs > max_age_secs).then_some(BundleError::Expired { age_secs, max_age_secs })
    }

    /// Adds revocations pushed by the broker, then wakes every waiting tunnel.
    pub(crate) fn revoke(&self, sessions: Vec<String>, identities: Vec<String>) {
        {
            let mut revoked = self.revoked.write().unwrap_or_else(PoisonError::into_inner);
            revoked.sessions.extend(sessions);
            revoked.identities.extend(identities);
        }
        self.revocations.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Returns once `peer` is revoked (at once if it already is). It
    /// subscribes before it looks, so a revocation that lands in between
    /// still wakes it.
    pub(crate) async fn revoked(&self, peer: &VerifiedPeer) {
        let mut changes = self.revocations.subscribe();
        while !self.is_revoked(peer) {
            if changes.changed().await.is_err() {
                // Cannot happen while `self` holds the sender; if it did, nothing more is known: cut.
                return;
            }
        }
    }

    /// Whether the peer was revoked.
    pub(crate) fn is_revoked(&self, peer: &VerifiedPeer) -> bool {
        self.revoked.read().unwrap_or_else(PoisonError::into_inner).covers(peer)
    }

    /// The local guardrail engine, if guardrails are configured and a bundle arrived.
    pub(crate) fn local(&self) -> Option<Arc<Engine>> {
        self.local.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn compile_local(&self, bundle: &PolicyBundle) -> Result<Option<Engine>, BundleError> {
        let Some(files) = &self.local_files else { return Ok(None) };
        let local = PolicyBundle { version: bundle.version, files: files.clone(), services: bundle.services.clone() };
        Engine::new(&local).map(Some).map_err(|source| BundleError::Local { version: bundle.version, source })
    }

    /// Validates and installs a bundle whose signature was verified. A bundle
    /// already past the maximum age at `now` is refused. CPU-heavy (Cedar
    /// validation): call it off the async workers.
    pub(crate) fn apply(&self, verified: &VerifiedBundle, now: SystemTime) -> Result<BundleApplied, BundleError> {
        let signed_at_unix = verified.signed_at_unix();
        if let Some(expired) = self.age_error(signed_at_unix, now) {
            return Err(expired);
        }
        let bundle: PolicyBundle = serde_json::from_str(verified.bundle_json())?;
        let version = bundle.version;
        if let Some(current) = self.latest() {
            check_succession(&current, &bundle)?;
            if current.version() == version {
                self.refresh(version, signed_at_unix);
                return Ok(BundleApplied::Unchanged { version });
            }
        }
        let engine = Engine::new(&bundle).map_err(|source| BundleError::Invalid { version, source })?;
        let local = self.compile_local(&bundle)?;
        let mut slot = self.current.write().unwrap_or_else(PoisonError::into_inner);
        // Another apply may have won the race while Cedar validated: check again under the lock.
        if let Some(current) = slot.as_ref() {
            check_succession(&current.engine, &bundle)?;
        }
        *self.local.write().unwrap_or_else(PoisonError::into_inner) = local.map(Arc::new);
        let enforced = Enforced { engine: Arc::new(engine), signed_at_unix };
        let previous = slot.replace(enforced).map(|e| e.engine.version());
        Ok(BundleApplied::Installed { version, previous })
    }

    /// The same bundle, signed again later, extends how long it may be enforced.
    fn refresh(&self, version: u64, signed_at_unix: u64) {
        let mut slot = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(enforced) = slot.as_mut().filter(|e| e.engine.version() == version) {
            enforced.signed_at_unix = enforced.signed_at_unix.max(signed_at_unix);
        }
    }
}

fn check_succession(current: &Engine, offered: &PolicyBundle) -> Result<(), BundleError> {
    if offered.version < current.version() {
        return Err(BundleError::Rollback { offered: offered.version, current: current.version() });
    }
    if offered.version == current.version() && offered.digest() != current.digest() {
        return Err(BundleError::Conflict { version: offered.version });
    }
    Ok(())
}

/// A stream the connector itself allowed: who, the engine's grant, and where to dial.
#[derive(Debug)]
pub(crate) struct Authorized<'a> {
    pub(crate) peer: VerifiedPeer,
    pub(crate) grant: Grant,
    pub(crate) upstream: &'a ServiceConfig,
}

/// Why the connector refused a stream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Denied {
    #[error("caller identity rejected: {0}")]
    Identity(#[from] VerifyPeerError),
    #[error("this connector does not serve {0}")]
    NotServed(String),
    #[error("no valid policy bundle younger than the maximum age")]
    NoBundle,
    #[error("{0}")]
    Policy(DenyReason),
    #[error("local guardrail: {0}")]
    Local(DenyReason),
    #[error("the caller's session or identity was revoked")]
    Revoked,
}

impl Denied {
    /// Stable short code for the stream report.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::Identity(_) => "identity_rejected",
            Self::NotServed(_) => "service_not_served",
            Self::NoBundle => "no_policy_bundle",
            Self::Policy(reason) => reason.code(),
            Self::Local(_) => "local_guardrail",
            Self::Revoked => "revoked",
        }
    }

    /// The policies that decided, if any.
    pub(crate) fn policy_ids(&self) -> Vec<String> {
        match self {
            Self::Policy(reason) | Self::Local(reason) => reason.policy_ids().to_vec(),
            Self::Identity(_) | Self::NotServed(_) | Self::NoBundle | Self::Revoked => Vec::new(),
        }
    }
}

/// The engines a stream must pass: the broker's bundle and, if configured,
/// the connector's local guardrails.
#[derive(Clone, Copy, Default)]
pub(crate) struct Engines<'e> {
    pub(crate) bundle: Option<&'e Engine>,
    pub(crate) local: Option<&'e Engine>,
    pub(crate) revoked: Option<&'e PolicyState>,
    /// Where the bundle's verdicts are cached, if anywhere.
    pub(crate) cache: Option<&'e DecisionCache>,
}

/// Verifies the caller, checks the service is ours, and asks the engines.
pub(crate) fn authorize<'a>(
    dispatch: &Dispatch,
    callers: &Callers,
    engines: Engines<'_>,
    services: &'a [ServiceConfig],
    now: SystemTime,
) -> Result<Authorized<'a>, Denied> {
    let peer = callers.verify(&dispatch.caller_chain, now)?;
    if engines.revoked.is_some_and(|state| state.is_revoked(&peer)) {
        return Err(Denied::Revoked);
    }
    let upstream = services
        .iter()
        .find(|s| s.name == dispatch.service)
        .ok_or_else(|| Denied::NotServed(dispatch.service.to_string()))?;
    let engine = engines.bundle.ok_or(Denied::NoBundle)?;
    let principal = principal_of(&peer)?;
    let now_unix_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let context = RequestContext {
        source_ip: source_ip(&dispatch.source_addr),
        now_unix_secs,
        mfa_age_secs: peer.mfa_age_secs(now_unix_secs),
        auth_methods: peer.auth_methods().to_vec(),
        client_version: None,
    };
    let request = AccessRequest {
        principal: &principal,
        action: Action::Connect,
        service: dispatch.service.as_str(),
        context: &context,
    };
    let decision = match engines.cache {
        Some(cache) => cache.verdict(engine, &request).decision,
        None => engine.decide(&request),
    };
    let grant = match decision {
        Decision::Allow(grant) => grant,
        Decision::Deny(reason) => return Err(Denied::Policy(reason)),
    };
    if let Some(Decision::Deny(reason)) = engines.local.map(|local| local.decide(&request)) {
        return Err(Denied::Local(reason));
    }
    Ok(Authorized { peer, grant, upstream })
}

fn principal_of(peer: &VerifiedPeer) -> Result<Principal, Denied> {
    let kind = match peer.role() {
        PeerRole::User => PrincipalKind::User,
        PeerRole::Machine => PrincipalKind::Machine,
        actual @ (PeerRole::Connector | PeerRole::Broker) => {
            return Err(Denied::Identity(VerifyPeerError::WrongRole { expected: "user or machine".into(), actual }));
        }
    };
    Ok(Principal { kind, id: peer.id().id.clone(), name: peer.name().to_owned(), groups: peer.groups().to_vec() })
}

/// The broker sends `ip:port`; a bare IP is accepted too. Anything else is no address.
fn source_ip(addr: &str) -> Option<std::net::IpAddr> {
    addr.parse::<std::net::SocketAddr>().map(|a| a.ip()).or_else(|_| addr.parse()).ok()
}

#[cfg(test)]
mod tests;
