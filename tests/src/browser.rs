//! A headless browser for signing in: an HTTP client that keeps cookies per
//! host:port and follows redirects by hand (a test sees every hop), fills in
//! the provider's login form, and runs the broker's WebAuthn ceremonies with
//! a software passkey, as `/login/static/webauthn.js` does in a real browser.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Url;
use rustls_pki_types::CertificateDer;
use serde_json::json;
use webauthn_authenticator_rs::WebauthnAuthenticator as _;
use webauthn_authenticator_rs::prelude::{
    CreationChallengeResponse, PublicKeyCredential, RegisterPublicKeyCredential, RequestChallengeResponse,
};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

use crate::oidc::OidcProvider;

/// How many redirects and form posts a sign-in may take.
const MAX_HOPS: usize = 20;

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Page {
    /// HTTP status.
    pub status: u16,
    /// The URL that answered.
    pub url: Url,
    /// `Location`, resolved against `url`.
    pub location: Option<Url>,
    /// The body as text.
    pub body: String,
}

impl Page {
    fn redirect(&self) -> Option<&Url> {
        self.location.as_ref().filter(|_| (300..400).contains(&self.status))
    }

    /// The `data-mode` of the broker's `/login/mfa` page: `register`,
    /// `authenticate` or `discoverable`.
    ///
    /// # Panics
    /// If this is not that page.
    #[must_use]
    pub fn mfa_mode(&self) -> &str {
        assert_eq!(self.url.path(), "/login/mfa", "not the MFA page ({}): {}", self.status, self.body);
        assert_eq!(self.status, 200, "the MFA page: {}", self.body);
        let start = self.body.find("data-mode=\"").unwrap_or_else(|| panic!("no data-mode: {}", self.body)) + 11;
        let len = self.body[start..].find('"').expect("a closing quote");
        &self.body[start..start + len]
    }
}

/// Cookies per `host:port`, as a browser keeps them (without paths or expiry:
/// tests are short).
type Jar = HashMap<String, BTreeMap<String, String>>;

/// A browser that trusts the broker's CA.
#[derive(Clone)]
pub struct Browser {
    http: reqwest::Client,
    jar: Arc<Mutex<Jar>>,
}

fn host_key(url: &Url) -> String {
    format!("{}:{}", url.host_str().unwrap_or_default(), url.port_or_known_default().unwrap_or(0))
}

impl Browser {
    /// A browser with no cookies that trusts `ca` for HTTPS.
    #[must_use]
    pub fn new(ca: &CertificateDer<'static>) -> Browser {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).expect("the broker's CA is usable");
        let tls = rustls::ClientConfig::builder_with_provider(palisade_proto::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .user_agent("palisade-e2e-browser")
            .build()
            .expect("an HTTP client");
        Browser { http, jar: Arc::default() }
    }

    async fn send(&self, url: &Url, request: reqwest::RequestBuilder) -> Page {
        let cookies = self.jar.lock().unwrap().get(&host_key(url)).cloned().unwrap_or_default();
        let mut request = request;
        if !cookies.is_empty() {
            let header = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
            request = request.header("cookie", header);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = response.status().as_u16();
        self.keep_cookies(url, response.headers());
        let location = response.headers().get("location").map(|l| {
            let l = l.to_str().expect("an ASCII Location");
            url.join(l).unwrap_or_else(|e| panic!("bad Location {l:?} from {url}: {e}"))
        });
        let body = response.text().await.unwrap_or_default();
        Page { status, url: url.clone(), location, body }
    }

    fn keep_cookies(&self, url: &Url, headers: &reqwest::header::HeaderMap) {
        let mut jar = self.jar.lock().unwrap();
        let host = jar.entry(host_key(url)).or_default();
        for value in headers.get_all("set-cookie") {
            let text = value.to_str().expect("an ASCII Set-Cookie");
            let (pair, attrs) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if attrs.to_ascii_lowercase().contains("max-age=0") || value.is_empty() {
                host.remove(name.trim());
            } else {
                host.insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
    }

    /// Sends the cookies `from`'s site set to `to`'s site as well: two broker
    /// replicas on 127.0.0.1 as a browser sees them behind one load-balanced
    /// name.
    pub fn share_cookies(&self, from: &Url, to: &Url) {
        let mut jar = self.jar.lock().unwrap();
        let cookies = jar.get(&host_key(from)).cloned().unwrap_or_default();
        jar.entry(host_key(to)).or_default().extend(cookies);
    }

    /// The value of the cookie `name` that `url`'s site set, if it did.
    #[must_use]
    pub fn cookie(&self, url: &Url, name: &str) -> Option<String> {
        self.jar.lock().unwrap().get(&host_key(url)).and_then(|cookies| cookies.get(name).cloned())
    }

    /// `GET url`, without following a redirect.
    pub async fn get(&self, url: &Url) -> Page {
        self.send(url, self.http.get(url.clone())).await
    }

    /// `POST url` with a JSON body.
    pub async fn post_json(&self, url: &Url, body: &impl serde::Serialize) -> Page {
        self.send(url, self.http.post(url.clone()).json(body)).await
    }

    /// `POST url` with a form.
    pub async fn post_form(&self, url: &Url, form: &[(&str, &str)]) -> Page {
        self.send(url, self.http.post(url.clone()).form(form)).await
    }

    /// Opens `start` and follows redirects, signing in at the provider as
    /// `user` when it shows its login form, until a page that is not a
    /// redirect: the broker's `/login/mfa` when all went well.
    pub async fn sign_in(&self, start: &str, user: &str) -> Page {
        let start = Url::parse(start).unwrap_or_else(|e| panic!("not a URL {start:?}: {e}"));
        let mut page = self.get(&start).await;
        for _ in 0..MAX_HOPS {
            if let Some(next) = page.redirect().cloned() {
                page = self.get(&next).await;
            } else if page.url.path().starts_with("/interaction/") && page.body.contains("<form") {
                let action = Url::parse(&format!("{}/login", page.url.as_str().trim_end_matches('/')))
                    .expect("the form's action");
                let password = OidcProvider::password(user);
                page = self.post_form(&action, &[("username", user), ("password", &password)]).await;
            } else {
                return page;
            }
        }
        panic!("more than {MAX_HOPS} hops signing in from {start}");
    }

    /// Runs the WebAuthn ceremony the MFA page asks for (registering
    /// `passkey` at a first sign-in, authenticating with it later) against the
    /// broker's JSON endpoints, and returns where the broker sends the
    /// browser next: for `palisade login`, its loopback callback.
    pub async fn second_factor(&self, mfa_page: &Page, passkey: &mut Passkey) -> Url {
        let origin = Url::parse(&mfa_page.url.origin().ascii_serialization()).expect("the broker's origin");
        let endpoint = |path: &str| origin.join(path).expect("an endpoint URL");
        let finish = match mfa_page.mfa_mode() {
            "register" => {
                let start = self.post_json(&endpoint("/login/webauthn/register/start"), &json!({})).await;
                assert_eq!(start.status, 200, "register/start: {}", start.body);
                let credential = passkey.register(&origin, parse(&start));
                self.post_json(&endpoint("/login/webauthn/register/finish"), &credential).await
            }
            "authenticate" => {
                let start = self.post_json(&endpoint("/login/webauthn/authenticate/start"), &json!({})).await;
                assert_eq!(start.status, 200, "authenticate/start: {}", start.body);
                let assertion = passkey.assert(&origin, parse(&start));
                self.post_json(&endpoint("/login/webauthn/authenticate/finish"), &assertion).await
            }
            other => panic!("unexpected MFA mode {other:?}"),
        };
        assert_eq!(finish.status, 200, "the second factor was refused: {}", finish.body);
        let answer: serde_json::Value = parse(&finish);
        let redirect = answer["redirect"].as_str().unwrap_or_else(|| panic!("no redirect in {answer}"));
        origin.join(redirect).unwrap_or_else(|e| panic!("bad redirect {redirect:?}: {e}"))
    }
}

fn parse<T: serde::de::DeserializeOwned>(page: &Page) -> T {
    serde_json::from_str(&page.body)
        .unwrap_or_else(|e| panic!("unexpected JSON from {} ({e}): {}", page.url, page.body))
}

/// A software passkey that claims user verification, as a platform
/// authenticator with a fingerprint reader would.
pub struct Passkey(SoftPasskey);

impl Default for Passkey {
    fn default() -> Self {
        Self::new()
    }
}

impl Passkey {
    /// A new authenticator with no credentials.
    #[must_use]
    pub fn new() -> Passkey {
        Passkey(SoftPasskey::new(true))
    }

    fn register(&mut self, origin: &Url, ccr: CreationChallengeResponse) -> RegisterPublicKeyCredential {
        self.0.do_registration(origin.clone(), ccr).unwrap_or_else(|e| panic!("the passkey refused to register: {e:?}"))
    }

    fn assert(&mut self, origin: &Url, rcr: RequestChallengeResponse) -> PublicKeyCredential {
        self.0.do_authentication(origin.clone(), rcr).unwrap_or_else(|e| panic!("the passkey refused to sign: {e:?}"))
    }
}
