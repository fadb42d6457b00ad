//! The signed identity assertion the workload receives in
//! `x-palisade-identity`: a JWT (ES256) valid for one minute, naming the
//! caller, their groups and session, the segment, the request id, and the
//! service as audience.
//!
//! The key: each connector process makes a fresh P-256 key pair in memory
//! at first use. The private key is never stored or sent anywhere; the
//! public key goes to the broker over the authenticated control link
//! ([`ConnectorToBroker::AssertionKey`]) and is served in the broker's JWKS
//! (`/.well-known/palisade/jwks.json`). A restart simply registers a new key.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use palisade_proto::control::ConnectorToBroker;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::json;
use tokio::sync::mpsc;

use super::per_link::PerLink;

/// How long an assertion is valid.
const LIFETIME_SECS: u64 = 60;
/// The `iss` of every assertion.
pub(crate) const ISSUER: &str = "palisade-connector";

pub(crate) struct AssertionKey {
    pair: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

/// The key could not be made or used.
#[derive(Debug, thiserror::Error)]
#[error("identity assertion key: {0}")]
pub(crate) struct AssertionError(&'static str);

static KEY: OnceLock<Result<AssertionKey, AssertionError>> = OnceLock::new();

/// This process's key, made on first use.
pub(crate) fn key() -> Result<&'static AssertionKey, &'static AssertionError> {
    KEY.get_or_init(AssertionKey::generate).as_ref()
}

/// A link re-registers the key this often, so the broker keeps serving it (it drops keys unseen for a day).
const REREGISTER_EVERY: Duration = Duration::from_secs(3_600);

/// Sends the public key over `control` unless this link already has it (recently).
/// Frames on one control stream are in order, so the key reaches the broker
/// before the record of any request it signed.
pub(crate) fn register(control: &mpsc::Sender<ConnectorToBroker>, now: Instant) {
    static SENT: PerLink = PerLink::new(REREGISTER_EVERY);
    let key = match key() {
        Ok(key) => key,
        Err(e) => return tracing::error!(error = %e, "no identity assertion key"),
    };
    if SENT.due(control, "assertion-key", now)
        && let Err(e) = control.try_send(key.registration())
    {
        SENT.forget(control, "assertion-key");
        tracing::warn!(error = %e, "could not queue the assertion key for the broker; will retry");
    }
}

/// What the assertion says about one request.
pub(crate) struct Claims<'a> {
    pub(crate) subject: &'a str,
    pub(crate) name: &'a str,
    pub(crate) groups: &'a [String],
    pub(crate) session: Option<&'a str>,
    pub(crate) segment: &'a str,
    pub(crate) service: &'a str,
    pub(crate) request_id: &'a str,
}

impl AssertionKey {
    fn generate() -> Result<Self, AssertionError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| AssertionError("cannot generate a P-256 key"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| AssertionError("cannot load the generated key"))?;
        let digest = palisade_proto::enroll::sha256(&pair.public_key().as_ref()[1..]);
        let kid = B64.encode(&digest[..16]);
        Ok(Self { pair, kid, rng })
    }

    /// The public key as a JWK.
    pub(crate) fn jwk(&self) -> serde_json::Value {
        let point = self.pair.public_key().as_ref();
        let (x, y) = point[1..].split_at(32);
        json!({ "kty": "EC", "crv": "P-256", "x": B64.encode(x), "y": B64.encode(y),
                "kid": self.kid, "alg": "ES256", "use": "sig" })
    }

    /// The frame that registers the public key with the broker.
    pub(crate) fn registration(&self) -> ConnectorToBroker {
        ConnectorToBroker::AssertionKey { jwk: self.jwk() }
    }

    /// A signed JWT for one request.
    pub(crate) fn sign(&self, claims: &Claims<'_>, now: SystemTime) -> Result<String, AssertionError> {
        let iat = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let header = json!({ "alg": "ES256", "typ": "JWT", "kid": self.kid });
        let body = json!({
            "iss": ISSUER,
            "sub": claims.subject,
            "name": claims.name,
            "aud": claims.service,
            "groups": claims.groups,
            "sid": claims.session,
            "segment": claims.segment,
            "jti": claims.request_id,
            "iat": iat,
            "nbf": iat,
            "exp": iat + LIFETIME_SECS,
        });
        let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(body.to_string()));
        let signature = self.pair.sign(&self.rng, input.as_bytes()).map_err(|_| AssertionError("signing failed"))?;
        Ok(format!("{input}.{}", B64.encode(signature.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    #[test]
    fn an_assertion_verifies_with_the_published_jwk_and_not_after_tampering() {
        let key = AssertionKey::generate().expect("key");
        let groups = vec!["ml-team".to_owned()];
        let claims = Claims {
            subject: "spiffe://td/user/u1",
            name: "alice",
            groups: &groups,
            session: Some("s1"),
            segment: "inference",
            service: "llm-prod",
            request_id: "r1",
        };
        let token = key.sign(&claims, SystemTime::now()).expect("signed");
        let jwk = key.jwk();
        let mut point = vec![4u8];
        point.extend(B64.decode(jwk["x"].as_str().expect("x")).expect("b64"));
        point.extend(B64.decode(jwk["y"].as_str().expect("y")).expect("b64"));
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point);
        let (input, signature) = token.rsplit_once('.').expect("three parts");
        let signature = B64.decode(signature).expect("b64");
        public.verify(input.as_bytes(), &signature).expect("the assertion verifies");
        let (header, body) = input.split_once('.').expect("header.body");
        let body: serde_json::Value = serde_json::from_slice(&B64.decode(body).expect("b64")).expect("json");
        assert_eq!(body["sub"], "spiffe://td/user/u1");
        assert_eq!(body["aud"], "llm-prod");
        assert_eq!(body["exp"].as_u64().expect("exp") - body["iat"].as_u64().expect("iat"), LIFETIME_SECS);
        let forged_body = B64.encode(body.to_string().replace("u1", "admin"));
        let forged = format!("{header}.{forged_body}");
        assert!(public.verify(forged.as_bytes(), &signature).is_err(), "a changed claim still verified");
    }

    #[tokio::test]
    async fn the_key_is_sent_once_per_link_and_again_after_an_hour() {
        let (link, mut frames) = mpsc::channel(8);
        let (other, mut other_frames) = mpsc::channel(8);
        let t0 = Instant::now();
        register(&link, t0);
        register(&link, t0 + Duration::from_secs(60));
        register(&other, t0);
        assert!(matches!(frames.try_recv(), Ok(ConnectorToBroker::AssertionKey { .. })));
        assert!(frames.try_recv().is_err(), "sent twice on one link");
        assert!(matches!(other_frames.try_recv(), Ok(ConnectorToBroker::AssertionKey { .. })), "a new link gets it");
        register(&link, t0 + REREGISTER_EVERY);
        assert!(matches!(frames.try_recv(), Ok(ConnectorToBroker::AssertionKey { .. })), "refreshed after an hour");
    }
}
