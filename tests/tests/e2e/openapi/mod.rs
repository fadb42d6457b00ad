//! The OpenAPI document of the broker (`broker/openapi.yaml`) against the
//! broker itself: it names every route the router registers and no other
//! ([`routes`]); every operation that is not public refuses a caller
//! without a session, and every admin operation refuses a person who is
//! not an admin ([`access`]); schemathesis, as nobody and as that person,
//! finds no 5xx and no answer the document does not describe ([`fuzz`]);
//! and the audit filters take SQL metacharacters as data ([`audit_filters`]);
//! a NUL in any parameter is never a 5xx ([`nul`]).

mod access;
mod audit_filters;
mod fuzz;
mod nul;
mod routes;

use std::path::PathBuf;

use palisade_tests::{Broker, Browser, OidcProvider, Passkey, TestEnv};
use reqwest::Url;
use serde_yaml::Value;

/// The session cookie of the console and the `/api/v1/me` API.
pub(crate) const SESSION_COOKIE: &str = "__Host-palisade-session";
/// The only console admin of the deployment.
pub(crate) const ADMIN: &str = "bob";

/// Who may use an operation (`x-palisade-access`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Public,
    Session,
    Admin,
}

/// What an operation's request body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyKind {
    None,
    Json,
    Form,
}

/// One documented operation.
#[derive(Clone, Debug)]
pub(crate) struct Operation {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) access: Access,
    pub(crate) metrics: bool,
    pub(crate) body: BodyKind,
    /// Names of its query parameters.
    pub(crate) query: Vec<String>,
    /// Names of its form fields (console posts), `csrf` aside.
    pub(crate) form_fields: Vec<String>,
    /// Names of its JSON body's top-level fields.
    pub(crate) json_fields: Vec<String>,
}

impl Operation {
    /// The path with every `{param}` filled in (`{version}` with a number).
    pub(crate) fn concrete_path(&self) -> String {
        self.path.replace("{version}", "1").replace("{id}", "nobody").replace("{token}", "nobody")
    }
}

pub(crate) fn document_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../broker/openapi.yaml")
}

pub(crate) fn document() -> Value {
    let text = std::fs::read_to_string(document_path()).expect("read broker/openapi.yaml");
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("broker/openapi.yaml is not YAML: {e}"))
}

/// Every operation of the document.
pub(crate) fn operations() -> Vec<Operation> {
    let doc = document();
    let paths = doc["paths"].as_mapping().expect("the document has paths");
    let mut ops = Vec::new();
    for (path, item) in paths {
        let path = path.as_str().expect("a path is a string");
        for (method, op) in item.as_mapping().expect("a path item is a mapping") {
            let method = method.as_str().expect("a method is a string");
            if !matches!(method, "get" | "post" | "put" | "patch" | "delete") {
                continue;
            }
            let access = match op["x-palisade-access"].as_str() {
                Some("public") => Access::Public,
                Some("session") => Access::Session,
                Some("admin") => Access::Admin,
                other => panic!("{method} {path}: x-palisade-access is {other:?}, not public, session or admin"),
            };
            let tags = op["tags"].as_sequence().cloned().unwrap_or_default();
            let metrics = tags.iter().any(|t| t.as_str() == Some("metrics"));
            ops.push(Operation {
                method: method.to_uppercase(),
                path: path.to_owned(),
                access,
                metrics,
                body: body_kind(&doc, op),
                query: query_parameters(&doc, op),
                form_fields: fields(&doc, op, "application/x-www-form-urlencoded"),
                json_fields: fields(&doc, op, "application/json"),
            });
        }
    }
    ops
}

fn resolve<'a>(doc: &'a Value, item: &'a Value, kind: &str) -> &'a Value {
    match item["$ref"].as_str() {
        Some(reference) => &doc["components"][kind][reference.rsplit('/').next().expect("a $ref names something")],
        None => item,
    }
}

fn query_parameters(doc: &Value, op: &Value) -> Vec<String> {
    let params = op["parameters"].as_sequence().cloned().unwrap_or_default();
    params
        .iter()
        .map(|p| resolve(doc, p, "parameters"))
        .filter(|p| p["in"].as_str() == Some("query"))
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect()
}

/// The top-level properties of the body of `media_type`, `csrf` aside.
fn fields(doc: &Value, op: &Value, media_type: &str) -> Vec<String> {
    let content = &resolve(doc, &op["requestBody"], "requestBodies")["content"];
    let schema = resolve(doc, &content[media_type]["schema"], "schemas");
    let names = schema["properties"].as_mapping().into_iter().flat_map(|p| p.keys()).filter_map(|k| k.as_str());
    names.filter(|name| *name != "csrf").map(str::to_owned).collect()
}

fn body_kind(doc: &Value, op: &Value) -> BodyKind {
    let content = &resolve(doc, &op["requestBody"], "requestBodies")["content"];
    if !content["application/json"].is_null() {
        BodyKind::Json
    } else if !content["application/x-www-form-urlencoded"].is_null() {
        BodyKind::Form
    } else {
        BodyKind::None
    }
}

/// A broker whose people sign in at the shared provider, with `bob` as its
/// console admin and the metrics listener on.
pub(crate) async fn broker(env: &TestEnv) -> Broker {
    let provider = OidcProvider::shared().await;
    env.broker()
        .oidc(&provider)
        .metrics()
        .extra_config(&format!("[console]\nadmin_users = [\"{ADMIN}@example.com\"]\n"))
        .spawn()
        .await
}

/// Signs `user` in through the browser flow (provider, then a new passkey)
/// and returns their session cookie's value.
pub(crate) async fn session_of(broker: &Broker, user: &str) -> String {
    let browser = Browser::new(&broker.ca_der());
    let mut passkey = Passkey::new();
    let mfa = browser.sign_in(&format!("{}/login", broker.public_url()), user).await;
    let next = browser.second_factor(&mfa, &mut passkey).await;
    assert_eq!(next.path(), "/", "a portal sign-in returns to the home page");
    let origin = Url::parse(&broker.public_url()).expect("the public URL");
    browser.cookie(&origin, SESSION_COOKIE).unwrap_or_else(|| panic!("{user} signed in without a session cookie"))
}

/// An HTTP client that trusts the broker's CA and follows no redirect.
pub(crate) fn http(broker: &Broker) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(broker.ca_der()).expect("the broker's CA is usable");
    let tls = rustls::ClientConfig::builder_with_provider(palisade_proto::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}
