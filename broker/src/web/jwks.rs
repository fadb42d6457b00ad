//! `GET /.well-known/palisade/jwks.json`: the public keys connectors sign
//! identity assertions with, so a workload behind a connector can verify
//! the `x-palisade-identity` header it receives.
//!
//! Where the keys come from: each connector makes a fresh P-256 key pair in
//! memory when it starts (the private key never leaves the process and is
//! never written to disk) and registers the public half over its
//! authenticated control link. The broker stores it in `assertion_keys`, so
//! every replica serves every connector's key; a key not re-registered for
//! a day drops out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::Broker;
use crate::db::Db;

/// Keys not registered again within this time are no longer served.
const KEY_TTL: Duration = Duration::from_secs(24 * 3_600);

pub(crate) fn routes() -> Router<Broker> {
    Router::new().route("/.well-known/palisade/jwks.json", get(jwks))
}

async fn jwks(axum::extract::State(broker): axum::extract::State<Broker>) -> Response {
    match current_keys(broker.db(), SystemTime::now()).await {
        Ok(keys) => {
            let mut response = axum::Json(json!({ "keys": keys })).into_response();
            // Verifiers may cache briefly; a restarted connector's new key shows up within this.
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
            response
        }
        Err(e) => super::internal_error(&e),
    }
}

/// A registered key was not acceptable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("the assertion key is not a public EC P-256 JWK for ES256 with a kid: {0}")]
    Shape(&'static str),
    #[error("storing the assertion key failed: {0}")]
    Db(#[from] sqlx::Error),
}

/// Stores (or refreshes) a connector's public assertion key. Only the public
/// members are kept, whatever else the connector sent.
pub(crate) async fn register(db: &Db, connector_id: &str, jwk: &Value, now: SystemTime) -> Result<(), KeyError> {
    let public = public_jwk(jwk)?;
    let kid = public["kid"].as_str().unwrap_or_default().to_owned();
    let now = unix(now);
    sqlx::query(
        "INSERT INTO assertion_keys (kid, connector_id, jwk, created_at, last_seen_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (kid) DO UPDATE SET last_seen_at = excluded.last_seen_at \
         WHERE assertion_keys.connector_id = excluded.connector_id",
    )
    .bind(&kid)
    .bind(connector_id)
    .bind(public.to_string())
    .bind(now)
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(())
}

fn public_jwk(jwk: &Value) -> Result<Value, KeyError> {
    let text = |name: &'static str| jwk.get(name).and_then(Value::as_str).ok_or(KeyError::Shape(name));
    if text("kty")? != "EC" || text("crv")? != "P-256" {
        return Err(KeyError::Shape("kty/crv"));
    }
    let (x, y, kid) = (text("x")?, text("y")?, text("kid")?);
    let coordinate = |c: &str| c.len() == 43 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !coordinate(x) || !coordinate(y) || kid.is_empty() || kid.len() > 128 {
        return Err(KeyError::Shape("x/y/kid"));
    }
    Ok(json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig" }))
}

async fn current_keys(db: &Db, now: SystemTime) -> Result<Vec<Value>, sqlx::Error> {
    let since = unix(now) - i64::try_from(KEY_TTL.as_secs()).unwrap_or(i64::MAX);
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT jwk FROM assertion_keys WHERE last_seen_at >= $1 ORDER BY created_at, kid")
            .bind(since)
            .fetch_all(db.pool())
            .await?;
    Ok(rows.iter().filter_map(|text| serde_json::from_str(text).ok()).collect())
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_p256_members_are_kept() {
        let coordinate = "A".repeat(43);
        let jwk = json!({ "kty": "EC", "crv": "P-256", "x": coordinate, "y": coordinate, "kid": "k1", "d": "secret" });
        let public = public_jwk(&jwk).expect("valid");
        assert!(public.get("d").is_none(), "a private member was kept");
        assert_eq!(public["alg"], "ES256");
        for bad in [
            json!({ "kty": "RSA", "crv": "P-256", "x": coordinate, "y": coordinate, "kid": "k" }),
            json!({ "kty": "EC", "crv": "P-384", "x": coordinate, "y": coordinate, "kid": "k" }),
            json!({ "kty": "EC", "crv": "P-256", "x": "short", "y": coordinate, "kid": "k" }),
            json!({ "kty": "EC", "crv": "P-256", "x": coordinate, "y": coordinate }),
        ] {
            assert!(public_jwk(&bad).is_err(), "{bad} was accepted");
        }
    }
}
