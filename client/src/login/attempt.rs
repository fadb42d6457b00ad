//! Everything decided before anything is sent — which broker, how it is
//! trusted, which key, which session `--mfa` refreshes — and, at the end, the
//! checks and the write.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use palisade_proto::enroll::sha256;
use palisade_proto::id::SessionId;
use palisade_proto::identity::{PeerRole, SpiffeId};
use rand::TryRngCore as _;

use super::answer::{self, Refresh, Trust};
use super::https::{BrokerHttps, LoginAnswer};
use super::{CaSource, LoggedIn, LoginError, LoginOptions};
use crate::store::{self, NewEnrollment, ProfileFile, StoreError};

/// The one-time values of a browser sign-in. `state` binds the redirect to
/// this CLI; `verifier` (sent only in the exchange) binds the code to it.
pub(super) struct Pkce {
    pub(super) state: String,
    pub(super) verifier: String,
    challenge: String,
}

impl Pkce {
    pub(super) fn generate() -> Result<Pkce, LoginError> {
        let state = random_token()?;
        let verifier = random_token()?;
        let challenge = URL_SAFE_NO_PAD.encode(sha256(verifier.as_bytes()));
        Ok(Pkce { state, verifier, challenge })
    }
}

fn random_token() -> Result<String, LoginError> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).map_err(|e| LoginError::Random(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Everything decided before anything is sent.
pub(super) struct Attempt {
    home: PathBuf,
    base: reqwest::Url,
    trust: Trust,
    pub(super) https: BrokerHttps,
    key: rcgen::KeyPair,
    pub(super) csr_pem: String,
    refresh: Option<Refresh>,
}

impl Attempt {
    pub(super) fn prepare(opts: &LoginOptions) -> Result<Attempt, LoginError> {
        let stored = store::read_profile(&opts.home)?;
        let base = broker_base(opts.broker.as_deref(), stored.as_ref())?;
        let same_broker = stored.as_ref().is_some_and(|p| is_same_broker(&p.broker_url, &base));
        if let Some(profile) = &stored
            && !opts.force
            && !opts.mfa_only
        {
            check_replaceable(profile, same_broker, &opts.home)?;
        }
        let refresh =
            if opts.mfa_only { Some(current_sign_in(&opts.home, stored.as_ref(), same_broker, &base)?) } else { None };
        let trust = trust_for(opts, same_broker, &base)?;
        let key = local_key(&opts.home, opts.force && !opts.mfa_only)?;
        let csr_pem = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(|e| LoginError::Key(e.to_string()))?;
        let https = BrokerHttps::new(base.clone(), &trust)?;
        Ok(Attempt { home: opts.home.clone(), base, trust, https, key, csr_pem, refresh })
    }

    /// `https://HOST:PORT/login/cli?port=…&state=…&challenge=…[&mfa_only=1&session=…]`.
    pub(super) fn start_url(&self, port: u16, pkce: &Pkce) -> Result<reqwest::Url, LoginError> {
        let mut url = self
            .base
            .join("login/cli")
            .map_err(|e| LoginError::BrokerUrl { url: self.base.to_string(), reason: e.to_string() })?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("port", &port.to_string());
            query.append_pair("state", &pkce.state);
            query.append_pair("challenge", &pkce.challenge);
            if let Some(refresh) = &self.refresh {
                query.append_pair("mfa_only", "1");
                query.append_pair("session", &refresh.session);
            }
        }
        Ok(url)
    }

    /// Checks the answer, then stores it.
    pub(super) fn finish(&self, answer: &LoginAnswer, now: SystemTime) -> Result<LoggedIn, LoginError> {
        let peer = answer::check(answer, &self.trust, &self.key, now)?;
        if let Some(refresh) = &self.refresh {
            answer::check_refresh(&peer, refresh)?;
        }
        let session_id: SessionId =
            answer.session_id.parse().map_err(|e| LoginError::BadAnswer(format!("session id: {e}")))?;
        let quic_addr = crate::enroll::quic_addr(&answer.quic_addr, &self.base)?;
        let broker_url = self.base.as_str().trim_end_matches('/').to_owned();
        let new = NewEnrollment {
            profile: ProfileFile {
                identity: answer.identity.clone(),
                broker_url: broker_url.clone(),
                quic_addr: quic_addr.clone(),
                replicas: crate::enroll::replicas(&answer.replicas, &self.base),
                session_id: Some(session_id),
                session_expires_unix: Some(answer.session_expires_unix),
            },
            key_pem: self.key.serialize_pem(),
            cert_pem: answer.certificate_pem.clone(),
            ca_pem: answer.ca_pem.clone(),
        };
        store::save(&self.home, &new, true)?;
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        Ok(LoggedIn {
            identity: answer.identity.clone(),
            name: peer.name().to_owned(),
            groups: peer.groups().to_vec(),
            session_id,
            session_expires: at(answer.session_expires_unix),
            not_after: peer.not_after(),
            mfa_at: peer.mfa_at().map(at),
            home: self.home.clone(),
            broker_url,
            quic_addr,
        })
    }
}

fn broker_base(given: Option<&str>, stored: Option<&ProfileFile>) -> Result<reqwest::Url, LoginError> {
    let text = given.or(stored.map(|p| p.broker_url.as_str())).ok_or(LoginError::NoBroker)?;
    Ok(crate::enroll::parse_broker_url(text)?)
}

fn is_same_broker(stored: &str, base: &reqwest::Url) -> bool {
    crate::enroll::parse_broker_url(stored).is_ok_and(|url| url == *base)
}

/// A person may sign in again over their own sign-in with the same broker;
/// a machine enrollment or another broker's profile needs `--force`.
fn check_replaceable(profile: &ProfileFile, same_broker: bool, home: &Path) -> Result<(), LoginError> {
    let is_person = profile.identity.parse::<SpiffeId>().is_ok_and(|id| id.role == PeerRole::User);
    if same_broker && is_person {
        return Ok(());
    }
    Err(LoginError::OtherProfile {
        identity: profile.identity.clone(),
        broker: profile.broker_url.clone(),
        home: home.to_owned(),
    })
}

/// The stored `ca.pem` for this broker, else `--ca-file`, else `--ca-pin`.
fn trust_for(opts: &LoginOptions, same_broker: bool, base: &reqwest::Url) -> Result<Trust, LoginError> {
    let stored = if same_broker { store::read_optional(&opts.home, store::CA_FILE)? } else { None };
    if let Some(pem) = stored {
        let path = opts.home.join(store::CA_FILE);
        let cas = palisade_proto::pem::certs(&pem)
            .map_err(|e| StoreError::Corrupt { path: path.clone(), problem: e.to_string() })?;
        if opts.ca.is_some() {
            tracing::warn!(ca = %path.display(), "trusting the CA stored for this broker; --ca-file/--ca-pin is not used");
        }
        return Ok(Trust::Cas(cas));
    }
    match &opts.ca {
        Some(CaSource::File(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| LoginError::CaFile { path: path.clone(), reason: e.to_string() })?;
            let cas = palisade_proto::pem::certs(&text)
                .map_err(|e| LoginError::CaFile { path: path.clone(), reason: e.to_string() })?;
            Ok(Trust::Cas(cas))
        }
        Some(CaSource::Pin(pin)) => Ok(Trust::Pin(*pin)),
        None => Err(LoginError::NoTrust { broker: base.as_str().trim_end_matches('/').to_owned() }),
    }
}

/// The session `--mfa` refreshes, read from the stored certificate.
fn current_sign_in(
    home: &Path,
    stored: Option<&ProfileFile>,
    same_broker: bool,
    base: &reqwest::Url,
) -> Result<Refresh, LoginError> {
    let not_signed_in = |reason: &str| LoginError::NotSignedIn { broker: base.to_string(), reason: reason.to_owned() };
    let profile = stored.filter(|_| same_broker).ok_or_else(|| not_signed_in("there is no sign-in with it here"))?;
    let pem = store::read_optional(home, store::CERT_FILE)?.ok_or_else(|| not_signed_in("you are logged out"))?;
    let corrupt = |problem: String| StoreError::Corrupt { path: home.join(store::CERT_FILE), problem };
    let chain = palisade_proto::pem::certs(&pem).map_err(|e| corrupt(e.to_string()))?;
    let attributes = store::leaf_attributes(&chain[0]).map_err(corrupt)?;
    let session = attributes.session.ok_or_else(|| not_signed_in("the stored certificate names no session"))?;
    Ok(Refresh { identity: profile.identity.clone(), session, mfa_at: attributes.mfa_at })
}

/// The stored key, unless a fresh one is asked for (or there is none).
fn local_key(home: &Path, fresh: bool) -> Result<rcgen::KeyPair, LoginError> {
    if !fresh && let Some(pem) = store::read_optional(home, store::KEY_FILE)? {
        return rcgen::KeyPair::from_pem(&pem).map_err(|e| LoginError::Key(format!("{}: {e}", store::KEY_FILE)));
    }
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| LoginError::Key(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_is_the_hash_of_the_verifier() {
        let pkce = Pkce::generate().expect("random");
        assert_eq!(pkce.state.len(), 43);
        assert_eq!(pkce.verifier.len(), 43);
        assert_ne!(pkce.state, pkce.verifier);
        assert_eq!(pkce.challenge, URL_SAFE_NO_PAD.encode(sha256(pkce.verifier.as_bytes())));
    }
}
