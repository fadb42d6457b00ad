//! One request to the workload: headers cleaned, the canonical path set,
//! sent over HTTP/1.1 on a kept-alive connection to the upstream (one pool
//! for the connector, a few idle connections per upstream address).
//!
//! Identity headers a caller sends are removed: only the connector's signed
//! assertion may tell the workload who is calling (case Q-11). Hop-by-hop
//! headers are removed in both directions, as any proxy must.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;

use super::body::BoxError;
use hyper::body::Incoming;
use hyper_util::client::legacy::{self, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The header carrying the connector's signed identity assertion.
pub(crate) const ASSERTION_HEADER: &str = "x-palisade-identity";

/// Headers that claim an identity in common proxy setups; a caller must not set them.
const IDENTITY_HEADERS: [&str; 9] = [
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-remote-user",
    "remote-user",
];

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// The workload could not be asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("{addr} is not a host:port upstream address: {source}")]
    Address { addr: String, source: http::Error },
    #[error("cannot connect to {addr}: {source}")]
    Unreachable { addr: String, source: legacy::Error },
    #[error("the upstream HTTP exchange failed: {0}")]
    Http(legacy::Error),
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Removes every header through which a caller could claim an identity.
pub(crate) fn strip_identity(headers: &mut HeaderMap) {
    let palisade: Vec<HeaderName> =
        headers.keys().filter(|name| name.as_str().starts_with("x-palisade-")).cloned().collect();
    for name in palisade {
        headers.remove(name);
    }
    for name in IDENTITY_HEADERS {
        headers.remove(name);
    }
}

/// Points the request at the canonical path (query kept), with a `Host`.
pub(crate) fn retarget<B>(request: &mut Request<B>, encoded_path: &str, upstream: &str) -> Result<(), http::Error> {
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{encoded_path}?{query}"),
        None => encoded_path.to_owned(),
    };
    let authority = request.uri().authority().map(|a| a.as_str().to_owned());
    *request.uri_mut() = Uri::builder().path_and_query(path_and_query).build()?;
    *request.version_mut() = http::Version::HTTP_11;
    if !request.headers().contains_key(header::HOST) {
        let host = authority.unwrap_or_else(|| upstream.to_owned());
        request.headers_mut().insert(header::HOST, HeaderValue::from_str(&host)?);
    }
    Ok(())
}

/// Idle connections kept per upstream address, and for how long.
const MAX_IDLE_PER_UPSTREAM: usize = 8;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type Pool = legacy::Client<HttpConnector, UnsyncBoxBody<Bytes, BoxError>>;

/// The connector's one pool. The connect timeout is a connector-wide
/// setting, so the first caller's value is the value.
fn pool(connect_timeout: Duration) -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(MAX_IDLE_PER_UPSTREAM)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector)
    })
}

/// Sends one request (origin-form URI) to the workload at `upstream`, on a pooled connection.
pub(crate) async fn send(
    upstream: &str,
    timeout: Duration,
    mut request: Request<UnsyncBoxBody<Bytes, BoxError>>,
) -> Result<Response<Incoming>, ForwardError> {
    let path_and_query = request.uri().path_and_query().map_or("/", http::uri::PathAndQuery::as_str);
    let uri = Uri::builder()
        .scheme("http")
        .authority(upstream)
        .path_and_query(path_and_query)
        .build()
        .map_err(|source| ForwardError::Address { addr: upstream.to_owned(), source })?;
    *request.uri_mut() = uri;
    pool(timeout).request(request).await.map_err(|e| {
        if e.is_connect() {
            ForwardError::Unreachable { addr: upstream.to_owned(), source: e }
        } else {
            ForwardError::Http(e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-palisade-identity", "forged"),
            ("X-Palisade-User", "admin"),
            ("x-forwarded-user", "admin"),
            ("remote-user", "admin"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("upgrade", "websocket"),
            ("authorization", "Bearer sk-upstream-key"),
            ("content-type", "application/json"),
        ] {
            headers.append(HeaderName::from_bytes(name.as_bytes()).expect("name"), HeaderValue::from_static(value));
        }
        strip_identity(&mut headers);
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-type"]);
    }
}
