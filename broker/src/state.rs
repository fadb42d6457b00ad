//! The broker's shared state, handed to every listener and task.

use std::sync::Arc;

use palisade_proto::identity::TrustAnchors;
use palisade_proto::tls::TlsIdentity;

use crate::audit::Audit;
use crate::config::Config;
use crate::db::Db;
use crate::issuance::ca::Ca;
use crate::issuance::rate::IssuanceLimits;
use crate::policy::PolicyStore;
use crate::relay::live::Live;
use crate::relay::registry::Registry;
use crate::sync::Freshness;

/// Everything a request handler or relay task needs. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    db: Db,
    audit: Audit,
    ca: Ca,
    trust: TrustAnchors,
    server_identity: TlsIdentity,
    policy: PolicyStore,
    registry: Registry,
    live: Live,
    sync: Freshness,
    issuance_limits: IssuanceLimits,
}

/// The parts a [`Broker`] is made of; built by [`crate::run`].
pub struct BrokerParts {
    /// Parsed configuration.
    pub config: Config,
    /// Database handle.
    pub db: Db,
    /// Audit trail writer.
    pub audit: Audit,
    /// The issuing CA, key decrypted in memory.
    pub ca: Ca,
    /// Our CA and trust domain.
    pub trust: TrustAnchors,
    /// The broker's own server certificate chain and key.
    pub server_identity: TlsIdentity,
    /// The active policy set.
    pub policy: PolicyStore,
}

impl Broker {
    /// Assembles the shared state.
    #[must_use]
    pub fn new(parts: BrokerParts) -> Self {
        let BrokerParts { config, db, audit, ca, trust, server_identity, policy } = parts;
        let issuance_limits = IssuanceLimits::new(config.certificates.issuances_per_hour);
        let sync = Freshness::new(db.backend(), config.consistency);
        let inner = Inner {
            issuance_limits,
            config,
            db,
            audit,
            ca,
            trust,
            server_identity,
            policy,
            registry: Registry::default(),
            live: Live::default(),
            sync,
        };
        Self { inner: Arc::new(inner) }
    }

    /// How often each identity may be issued a certificate.
    #[must_use]
    pub fn issuance_limits(&self) -> &IssuanceLimits {
        &self.inner.issuance_limits
    }

    /// Parsed configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.inner.config
    }
    /// Database handle.
    #[must_use]
    pub fn db(&self) -> &Db {
        &self.inner.db
    }
    /// The other replicas sharing this database that a client may fail over
    /// to (their QUIC addresses). Empty when they cannot be read: the list
    /// only saves a client a reconnect, it never decides access.
    pub async fn other_replicas(&self) -> Vec<String> {
        let now = crate::db::unix_seconds(std::time::SystemTime::now());
        let own = self.inner.config.quic_public_addr();
        crate::db::replicas::others(&self.inner.db, &own, now).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the broker replicas");
            Vec::new()
        })
    }
    /// Audit trail writer.
    #[must_use]
    pub fn audit(&self) -> &Audit {
        &self.inner.audit
    }
    /// The issuing CA.
    #[must_use]
    pub fn ca(&self) -> &Ca {
        &self.inner.ca
    }
    /// Our CA and trust domain.
    #[must_use]
    pub fn trust(&self) -> &TrustAnchors {
        &self.inner.trust
    }
    /// The trust bundle handed to clients and connectors, PEM: the active CA
    /// first, then a prepared successor or the previous CA during a rotation.
    #[must_use]
    pub fn trust_bundle_pem(&self) -> String {
        self.inner.trust.ca_certs().iter().map(|c| palisade_proto::pem::encode("CERTIFICATE", c)).collect()
    }
    /// The broker's own server certificate chain and key.
    #[must_use]
    pub fn server_identity(&self) -> &TlsIdentity {
        &self.inner.server_identity
    }
    /// The active policy set.
    #[must_use]
    pub fn policy(&self) -> &PolicyStore {
        &self.inner.policy
    }
    /// Which connectors are online and what they serve.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }
    /// Live client connections, for revocation.
    #[must_use]
    pub fn live(&self) -> &Live {
        &self.inner.live
    }

    /// Change notifications and how current this broker's view is.
    #[must_use]
    pub fn sync(&self) -> &Freshness {
        &self.inner.sync
    }
}
