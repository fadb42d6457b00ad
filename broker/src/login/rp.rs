//! The broker as an OpenID Connect relying party: discovery (the discovered
//! issuer must equal the configured one), the token request
//! (`client_secret_basic` + PKCE verifier), ID token checks and userinfo.
//!
//! `openidconnect` verifies signatures and claims; the HTTP calls are ours so
//! each has a 10 s timeout, a 1 MiB body cap and no redirects. Its defaults
//! are tightened: an algorithm allow-list (RS256, ES256, PS256, EdDSA: never
//! `none`, never HS*), `iat` within 60 s of now (the crate accepts any), `nbf`,
//! and `azp` when there are several audiences. An unknown `kid` triggers one
//! JWKS refetch, at most every [`JWKS_REFETCH_INTERVAL`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClientAuthMethod, CoreGrantType, CoreIdToken, CoreJsonWebKey,
    CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, ClaimsVerificationError, ClientId, ClientSecret, IdTokenVerifier, IssuerUrl, Nonce,
    ProviderMetadata, SignatureVerificationError,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use url::Url;

use super::Failure;
use crate::config::OidcConfig;

/// Timeout of every call to the identity provider.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest body accepted from the identity provider.
pub const MAX_BODY: usize = 1 << 20;
/// Tolerated clock difference for `iat` and `nbf`.
pub const SKEW_SECS: i64 = 60;
/// Oldest `iat` accepted: tokens come straight from the code exchange.
pub const MAX_TOKEN_AGE_SECS: i64 = 600;
/// Minimum time between two JWKS refetches caused by unknown key ids.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
const ALLOWED_ALGS: [CoreJwsSigningAlgorithm; 4] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// Discovery fields `openidconnect` does not model.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ExtraMetadata {
    /// RFC 9207: the provider adds `iss` to authorization responses.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: Option<bool>,
    /// PKCE methods; if listed, `S256` must be among them.
    #[serde(default)]
    pub code_challenge_methods_supported: Option<Vec<String>>,
}

impl AdditionalProviderMetadata for ExtraMetadata {}

/// Provider metadata as discovered.
pub type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// A discovered provider and its current keys.
#[derive(Debug)]
pub struct Provider {
    /// The discovery document.
    pub metadata: Metadata,
    jwks: Mutex<Arc<CoreJsonWebKeySet>>,
    fetched: Instant,
}

/// What the token endpoint returned.
#[derive(Debug)]
pub struct Tokens {
    /// The raw ID token.
    pub id_token: String,
    /// The access token, for userinfo.
    pub access_token: String,
}

/// A verified ID token: its subject and all of its claims.
#[derive(Debug)]
pub struct VerifiedToken {
    /// `sub`.
    pub subject: String,
    /// Every claim of the (verified) payload.
    pub claims: Map<String, Value>,
}

/// The relying party: configuration, HTTP client, discovered provider.
pub struct RelyingParty {
    pub(crate) config: OidcConfig,
    pub(crate) redirect_uri: String,
    http: Option<reqwest::Client>,
    provider: tokio::sync::Mutex<Option<Arc<Provider>>>,
    last_refetch: Mutex<Option<Instant>>,
}

impl RelyingParty {
    /// A relying party whose callback is `<public_url>/login/oidc/callback`.
    #[must_use]
    pub fn new(config: OidcConfig, public_url: &Url) -> Self {
        let redirect_uri = format!("{}/login/oidc/callback", public_url.as_str().trim_end_matches('/'));
        Self {
            config,
            redirect_uri,
            http: http_client(),
            provider: tokio::sync::Mutex::new(None),
            last_refetch: Mutex::new(None),
        }
    }

    /// The discovered provider, discovering it first if needed (and every hour).
    ///
    /// # Errors
    /// The provider is unreachable, answers garbage, or names another issuer.
    pub async fn provider(&self) -> Result<Arc<Provider>, Failure> {
        let mut cached = self.provider.lock().await;
        if let Some(p) = cached.as_ref().filter(|p| p.fetched.elapsed() < DISCOVERY_TTL) {
            return Ok(p.clone());
        }
        let fresh = Arc::new(self.discover().await?);
        *cached = Some(fresh.clone());
        Ok(fresh)
    }

    async fn discover(&self) -> Result<Provider, Failure> {
        let url = format!("{}/.well-known/openid-configuration", self.config.issuer.trim_end_matches('/'));
        let body = self.get_json("discovery", |http| http.get(&url)).await?;
        let metadata: Metadata =
            serde_json::from_slice(&body).map_err(|e| Failure::unavailable("discovery", "malformed", e.to_string()))?;
        if metadata.issuer().as_str() != self.config.issuer {
            return Err(Failure::unavailable(
                "discovery",
                "issuer_mismatch",
                format!("the discovery document names issuer {:?}", metadata.issuer().as_str()),
            ));
        }
        let methods = &metadata.additional_metadata().code_challenge_methods_supported;
        if methods.as_ref().is_some_and(|m| !m.iter().any(|m| m == "S256")) {
            return Err(Failure::unavailable("discovery", "no_pkce_s256", "the provider does not offer PKCE S256"));
        }
        if metadata.token_endpoint().is_none() {
            return Err(Failure::unavailable("discovery", "no_token_endpoint", ""));
        }
        let jwks = self.fetch_jwks(&metadata).await?;
        Ok(Provider { metadata, jwks: Mutex::new(Arc::new(jwks)), fetched: Instant::now() })
    }

    async fn fetch_jwks(&self, metadata: &Metadata) -> Result<CoreJsonWebKeySet, Failure> {
        let body = self.get_json("jwks", |http| http.get(metadata.jwks_uri().url().clone())).await?;
        serde_json::from_slice(&body).map_err(|e| Failure::unavailable("jwks", "malformed", e.to_string()))
    }

    /// The authorization URL: code flow, PKCE S256, `state` and `nonce`.
    #[must_use]
    pub fn authorize_url(&self, provider: &Provider, state: &str, nonce: &str, pkce_challenge: &str) -> Url {
        let mut url = provider.metadata.authorization_endpoint().url().clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", &self.config.scopes.join(" "))
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", pkce_challenge)
            .append_pair("code_challenge_method", "S256");
        url
    }

    /// Redeems the authorization code (`client_secret_basic`, PKCE verifier).
    ///
    /// # Errors
    /// The token endpoint refused, failed, timed out, or answered garbage.
    pub async fn exchange(&self, provider: &Provider, code: &str, verifier: &str) -> Result<Tokens, Failure> {
        let token_url = provider.metadata.token_endpoint().map(|u| u.url().clone());
        let token_url = token_url.ok_or_else(|| Failure::unavailable("token", "no_token_endpoint", ""))?;
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            enc(&self.config.client_id),
            enc(self.config.client_secret.expose())
        ));
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &self.redirect_uri),
            ("code_verifier", verifier),
        ];
        let request =
            |http: &reqwest::Client| http.post(token_url).header("authorization", format!("Basic {basic}")).form(&form);
        let body = self.get_json("token", request).await.map_err(|f| f.status(axum::http::StatusCode::UNAUTHORIZED))?;
        let answer: Map<String, Value> =
            serde_json::from_slice(&body).map_err(|e| Failure::refused("token", "malformed", e.to_string()))?;
        let field = |k: &str| answer.get(k).and_then(Value::as_str).map(str::to_owned);
        if !field("token_type").is_some_and(|t| t.eq_ignore_ascii_case("bearer")) {
            return Err(Failure::refused("token", "token_type", "the token type is not Bearer"));
        }
        let id_token = field("id_token").ok_or_else(|| Failure::refused("id_token", "missing", ""))?;
        let access_token = field("access_token").ok_or_else(|| Failure::refused("token", "no_access_token", ""))?;
        Ok(Tokens { id_token, access_token })
    }

    /// Verifies an ID token: signature (one JWKS refetch on an unknown key), claims, nonce.
    ///
    /// # Errors
    /// Any check failed; the reason code names it.
    pub async fn verify(&self, provider: &Provider, raw: &str, nonce: &str) -> Result<VerifiedToken, Failure> {
        let token: CoreIdToken = raw.parse().map_err(|e: serde_json::Error| parse_failure(&e))?;
        let keys = provider.jwks.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match self.verify_with(&token, nonce, &keys) {
            Err(ClaimsVerificationError::SignatureVerification(SignatureVerificationError::NoMatchingKey))
                if self.may_refetch() =>
            {
                tracing::info!("unknown key id in an ID token; refetching the provider's keys");
                let fresh = Arc::new(self.fetch_jwks(&provider.metadata).await?);
                *provider.jwks.lock().unwrap_or_else(PoisonError::into_inner) = fresh.clone();
                self.verify_with(&token, nonce, &fresh).map_err(|e| claims_failure(&e))?;
            }
            result => result.map_err(|e| claims_failure_of(&e, raw))?,
        }
        let claims = verified_payload(raw)?;
        if !claims.contains_key("aud") {
            return Err(Failure::refused("id_token", "aud_missing", ""));
        }
        check_nbf_azp(&claims, &self.config.client_id)?;
        let subject = claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_owned();
        Ok(VerifiedToken { subject, claims })
    }

    fn verify_with(
        &self,
        token: &CoreIdToken,
        nonce: &str,
        keys: &CoreJsonWebKeySet,
    ) -> Result<(), ClaimsVerificationError> {
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .map_err(|e| ClaimsVerificationError::Other(format!("issuer: {e}")))?;
        let verifier = IdTokenVerifier::new_confidential_client(
            ClientId::new(self.config.client_id.clone()),
            ClientSecret::new(self.config.client_secret.expose().to_owned()),
            issuer,
            keys.clone(),
        )
        .set_allowed_algs(ALLOWED_ALGS)
        .set_issue_time_verifier_fn(|iat| {
            let now = super::now_unix();
            let iat = iat.timestamp();
            if iat > now + SKEW_SECS {
                Err(format!("iat {iat} is in the future (now {now})"))
            } else if iat < now - MAX_TOKEN_AGE_SECS {
                Err(format!("iat {iat} is too old (now {now})"))
            } else {
                Ok(())
            }
        });
        token.claims(&verifier, &Nonce::new(nonce.to_owned())).map(|_| ())
    }

    fn may_refetch(&self) -> bool {
        let mut last = self.last_refetch.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < JWKS_REFETCH_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Fetches userinfo if the provider has the endpoint; its `sub` must equal `subject`.
    ///
    /// # Errors
    /// The call failed, the answer is not JSON, or names another subject.
    pub async fn userinfo(
        &self,
        provider: &Provider,
        access_token: &str,
        subject: &str,
    ) -> Result<Option<Map<String, Value>>, Failure> {
        let Some(endpoint) = provider.metadata.userinfo_endpoint() else { return Ok(None) };
        let request = |http: &reqwest::Client| http.get(endpoint.url().clone()).bearer_auth(access_token);
        let body =
            self.get_json("userinfo", request).await.map_err(|f| f.status(axum::http::StatusCode::UNAUTHORIZED))?;
        let claims: Map<String, Value> = serde_json::from_slice(&body)
            .map_err(|e| Failure::refused("userinfo", "malformed", format!("not a JSON object: {e}")))?;
        match claims.get("sub").and_then(Value::as_str) {
            Some(sub) if sub == subject => Ok(Some(claims)),
            Some(sub) => {
                Err(Failure::refused("userinfo", "sub_mismatch", format!("userinfo sub {sub:?} is not the ID token's")))
            }
            None => Err(Failure::refused("userinfo", "sub_missing", "")),
        }
    }

    async fn get_json(
        &self,
        step: &'static str,
        request: impl FnOnce(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, Failure> {
        let http = self.http.as_ref().ok_or_else(|| Failure::unavailable(step, "http_client", "no HTTP client"))?;
        let mut response = request(http).header("accept", "application/json").send().await.map_err(|e| {
            Failure::unavailable(step, if e.is_timeout() { "timeout" } else { "unreachable" }, e.to_string())
        })?;
        let status = response.status();
        let json = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .and_then(|ct| ct.split(';').next())
            .map(|t| t.trim().to_ascii_lowercase())
            .is_some_and(|t| t == "application/json" || (t.starts_with("application/") && t.ends_with("+json")));
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Failure::unavailable(step, if e.is_timeout() { "timeout" } else { "body" }, e.to_string()))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(Failure::unavailable(step, "body_too_large", format!("more than {MAX_BODY} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let error = serde_json::from_slice::<Map<String, Value>>(&body)
                .ok()
                .and_then(|m| m.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            return Err(Failure::unavailable(step, "http_status", format!("HTTP {status} {error}")));
        }
        if !json {
            return Err(Failure::unavailable(step, "not_json", "the answer is not application/json"));
        }
        Ok(body)
    }
}

fn http_client() -> Option<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    let bundle = std::env::var("SSL_CERT_FILE").unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".into());
    if let Ok(pem) = std::fs::read_to_string(&bundle) {
        for cert in palisade_proto::pem::certs(&pem).unwrap_or_default() {
            let _ = roots.add(cert);
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(palisade_proto::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| tracing::error!(error = %e, "cannot build TLS for the identity provider"))
        .ok()?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(HTTP_TIMEOUT)
        .user_agent("palisade-broker")
        .build()
        .map_err(|e| tracing::error!(error = %e, "cannot build the identity provider's HTTP client"))
        .ok()
}

fn parse_failure(e: &serde_json::Error) -> Failure {
    let text = e.to_string();
    let reason = ["sub", "iat", "aud", "exp", "iss"]
        .into_iter()
        .find(|claim| text.contains(&format!("missing field `{claim}`")))
        .map_or("malformed", |claim| match claim {
            "sub" => "sub_missing",
            "iat" => "iat_missing",
            "aud" => "aud_missing",
            "exp" => "exp_missing",
            _ => "iss_missing",
        });
    Failure::refused("id_token", reason, text)
}

/// [`claims_failure`], naming a missing `aud` as such (the crate reports it as a mismatch).
fn claims_failure_of(e: &ClaimsVerificationError, raw: &str) -> Failure {
    let f = claims_failure(e);
    if f.reason == "aud_mismatch" && verified_payload(raw).is_ok_and(|c| !c.contains_key("aud")) {
        return Failure::refused("id_token", "aud_missing", f.detail);
    }
    f
}

fn claims_failure(e: &ClaimsVerificationError) -> Failure {
    let reason = match e {
        ClaimsVerificationError::InvalidIssuer(_) => "iss_mismatch",
        ClaimsVerificationError::InvalidAudience(_) => "aud_mismatch",
        ClaimsVerificationError::Expired(m) if m.starts_with("iat") => "iat_invalid",
        ClaimsVerificationError::Expired(_) => "expired",
        ClaimsVerificationError::InvalidNonce(_) => "nonce_mismatch",
        ClaimsVerificationError::SignatureVerification(s) => match s {
            SignatureVerificationError::NoMatchingKey => "unknown_kid",
            SignatureVerificationError::AmbiguousKeyId(_) => "ambiguous_kid",
            SignatureVerificationError::DisallowedAlg(_)
            | SignatureVerificationError::UnsupportedAlg(_)
            | SignatureVerificationError::NoSignature => "alg_disallowed",
            _ => "bad_signature",
        },
        _ => "invalid",
    };
    Failure::refused("id_token", reason, e.to_string())
}

/// The payload of a JWT whose signature has been verified.
fn verified_payload(raw: &str) -> Result<Map<String, Value>, Failure> {
    let payload = raw.split('.').nth(1).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| Failure::refused("id_token", "malformed", "unreadable payload"))
}

fn check_nbf_azp(claims: &Map<String, Value>, client_id: &str) -> Result<(), Failure> {
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_i64().ok_or_else(|| Failure::refused("id_token", "nbf_invalid", "nbf is not a number"))?;
        if nbf > super::now_unix() + SKEW_SECS {
            return Err(Failure::refused("id_token", "nbf_future", format!("nbf {nbf}")));
        }
    }
    let several = claims.get("aud").and_then(Value::as_array).is_some_and(|a| a.len() > 1);
    match claims.get("azp").map(|v| v.as_str()) {
        Some(Some(azp)) if azp == client_id => Ok(()),
        Some(_) => Err(Failure::refused("id_token", "azp_mismatch", "azp is not our client id")),
        None if several => Err(Failure::refused("id_token", "azp_missing", "several audiences and no azp")),
        None => Ok(()),
    }
}
