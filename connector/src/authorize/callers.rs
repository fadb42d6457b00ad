//! Who is calling: the caller's certificate chain, verified against the CA
//! by the connector itself, with a cache per broker connection.
//!
//! A hot client opens many streams with the same certificate; verifying
//! its signature each time was a tenth of the connector's work per stream.
//! A cached verification is reused only for the same chain bytes, the same
//! trust anchors (the cache lives and dies with the connection whose
//! anchors it was built with) and a time between the moment it was
//! verified and the certificate's end. Revocation is not cached: it is
//! checked on every stream, after this. New anchors (a renewal brought a
//! bundle changed by a CA rotation) empty the cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use palisade_proto::enroll::sha256;
use palisade_proto::identity::{PeerRole, TrustAnchors, VerifiedPeer, VerifyPeerError, verify_peer};
use rustls_pki_types::CertificateDer;

/// Verifications kept per connection; a full cache starts over.
const CAPACITY: usize = 4096;

/// The roles that may open tunnels.
const CALLER_ROLES: [PeerRole; 2] = [PeerRole::User, PeerRole::Machine];

/// The trust anchors of one broker connection and what they verified.
pub(crate) struct Callers {
    trust: RwLock<Arc<TrustAnchors>>,
    verified: Mutex<HashMap<[u8; 32], Verified>>,
}

struct Verified {
    peer: VerifiedPeer,
    at: SystemTime,
}

impl Callers {
    pub(crate) fn new(trust: TrustAnchors) -> Self {
        Self { trust: RwLock::new(Arc::new(trust)), verified: Mutex::default() }
    }

    /// The anchors callers are verified against now.
    pub(crate) fn trust(&self) -> Arc<TrustAnchors> {
        self.trust.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Verifies callers against `trust` from now on; what the old anchors
    /// verified is forgotten.
    pub(crate) fn set_trust(&self, trust: TrustAnchors) {
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        *self.trust.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(trust);
        verified.clear();
    }

    /// Verifies `chain` (leaf first) as a person or machine at `now`, or
    /// reuses an earlier verification of the same chain that still holds.
    pub(crate) fn verify(&self, chain: &[Vec<u8>], now: SystemTime) -> Result<VerifiedPeer, VerifyPeerError> {
        let key = chain_key(chain);
        if let Some(hit) = self.verified.lock().unwrap_or_else(PoisonError::into_inner).get(&key)
            && hit.at <= now
            && now < hit.peer.not_after()
        {
            return Ok(hit.peer.clone());
        }
        let ders: Vec<CertificateDer<'_>> = chain.iter().map(|c| CertificateDer::from(c.as_slice())).collect();
        let trust = self.trust();
        let peer = verify_peer(&ders, &trust, now, &CALLER_ROLES)?;
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&trust, &self.trust.read().unwrap_or_else(PoisonError::into_inner)) {
            // The anchors changed while this was verified: do not cache it.
            return Ok(peer);
        }
        if verified.len() >= CAPACITY {
            verified.clear();
        }
        verified.insert(key, Verified { peer: peer.clone(), at: now });
        Ok(peer)
    }
}

/// SHA-256 over each certificate's length and bytes: two chains share a
/// key only if they are the same certificates in the same order.
fn chain_key(chain: &[Vec<u8>]) -> [u8; 32] {
    let mut framed = Vec::with_capacity(chain.iter().map(|c| c.len() + 8).sum());
    for cert in chain {
        framed.extend_from_slice(&(cert.len() as u64).to_be_bytes());
        framed.extend_from_slice(cert);
    }
    sha256(&framed)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing::TestCa;

    const AGENT: &str = "5c1d3e2a-9f7b-4c61-8e0a-0d4b7a6f2c10";

    fn chain(ca: &TestCa, not_after: SystemTime) -> Vec<Vec<u8>> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let not_before = SystemTime::now() - Duration::from_secs(3_600);
        vec![ca.issue_for(key, PeerRole::Machine, AGENT, "agent", &["ml"], not_before, not_after).der.to_vec()]
    }

    #[test]
    fn a_verified_chain_is_reused_only_while_it_holds() {
        let ca = TestCa::new();
        let callers = Callers::new(ca.trust());
        let now = SystemTime::now();
        let ends = now + Duration::from_secs(600);
        let agent = chain(&ca, ends);
        let first = callers.verify(&agent, now).expect("valid");
        let again = callers.verify(&agent, now + Duration::from_secs(1)).expect("cached");
        assert_eq!(again.id(), first.id());
        // Past its end the cached verification is not used: it is verified
        // again, and refused.
        let late = callers.verify(&agent, ends + Duration::from_secs(1)).expect_err("expired");
        assert!(matches!(late, VerifyPeerError::Expired), "{late:?}");
        // A clock set back before the cached verification verifies again too.
        assert!(callers.verify(&agent, now - Duration::from_secs(7_200)).is_err(), "not valid yet");
    }

    #[test]
    fn another_chain_or_another_ca_is_never_served_from_the_cache() {
        let (ours, theirs) = (TestCa::new(), TestCa::new());
        let callers = Callers::new(ours.trust());
        let now = SystemTime::now();
        callers.verify(&chain(&ours, now + Duration::from_secs(600)), now).expect("ours");
        // Same identity and name, issued by a CA we do not trust.
        let forged = chain(&theirs, now + Duration::from_secs(600));
        assert!(callers.verify(&forged, now).is_err(), "a chain from another CA is refused");
        assert!(callers.verify(&forged, now).is_err(), "and not cached as valid");
        assert!(callers.verify(&[], now).is_err(), "an empty chain is refused");
    }

    #[test]
    fn new_anchors_drop_what_the_old_ones_verified() {
        let (old, new) = (TestCa::new(), TestCa::new());
        let callers = Callers::new(old.trust());
        let now = SystemTime::now();
        let from_old = chain(&old, now + Duration::from_secs(600));
        let from_new = chain(&new, now + Duration::from_secs(600));
        callers.verify(&from_old, now).expect("trusted");
        assert!(callers.verify(&from_new, now).is_err(), "not trusted yet");
        // A rotation's bundle with both CAs: both verify.
        let both = TrustAnchors::new(old.trust().trust_domain().clone(), vec![old.der(), new.der()]).expect("bundle");
        callers.set_trust(both);
        callers.verify(&from_new, now).expect("the successor is trusted");
        callers.verify(&from_old, now).expect("the old CA too, until retired");
        // The old CA retired: its chain, verified and cached before, is refused.
        callers.set_trust(new.trust());
        assert!(callers.verify(&from_old, now).is_err(), "a retired CA's certificate is refused");
        callers.verify(&from_new, now).expect("the new CA's");
    }
}
