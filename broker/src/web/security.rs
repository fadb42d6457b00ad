//! Browser-facing protections every HTML response and every console state
//! change goes through.
//!
//! [`headers`] adds a strict Content-Security-Policy (scripts, styles and
//! images from this origin only, no inline script or style, no framing),
//! `nosniff`, `X-Frame-Options: DENY`, `no-store`, and `Referrer-Policy:
//! same-origin` (not `no-referrer`: under `no-referrer` a browser sends
//! `Origin: null` on a same-origin form post, and [`csrf_guard`] needs the
//! real origin; cross-site requests still get no referrer).
//!
//! [`csrf_guard`] refuses any non-GET request that does not prove it came
//! from one of our own pages: the `Origin` header must be the broker's
//! public origin, `Sec-Fetch-Site` (when the browser sends it) must be
//! `same-origin`, and the form's `csrf` field must match the token derived
//! from the session cookie (which a cross-site page can neither read nor
//! compute). A refusal is a bare 403 that does not say which check failed.
//! A form that passes but holds a NUL is refused with 400 ([`super::no_nul`]).

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::Broker;
use crate::login::session::{SESSION_COOKIE, cookie};

/// The policy for every page: nothing inline, nothing from elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
     style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Largest form body a console page posts (a policy set being edited).
pub const MAX_FORM_BYTES: usize = 512 * 1024;

const CSRF_DOMAIN: &str = "palisade-console-csrf-v1";

/// Adds the security headers to `response` (keeps ones a handler set).
pub async fn headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let defaults = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in defaults {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    }
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    response
}

/// The CSRF token of the browser holding `session_cookie`: a hash of the
/// cookie value, which is random, HttpOnly and never leaves the browser.
#[must_use]
pub fn csrf_token(session_cookie: &str) -> String {
    let input = format!("{CSRF_DOMAIN}\0{session_cookie}");
    palisade_proto::enroll::hex(&palisade_proto::enroll::sha256(input.as_bytes()))
}

/// The token this request's session cookie calls for, if it has one.
#[must_use]
pub fn expected_csrf(headers: &HeaderMap) -> Option<String> {
    cookie(headers, SESSION_COOKIE).map(|value| csrf_token(&value))
}

/// Whether the request says it comes from a page of `broker`'s own origin.
#[must_use]
pub fn same_origin(broker: &Broker, headers: &HeaderMap) -> bool {
    let ours = broker.config().public_url().origin().ascii_serialization();
    let origin_ok = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).is_some_and(|o| o == ours);
    let site_ok = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()).is_none_or(|site| site == "same-origin");
    origin_ok && site_ok
}

/// Refuses a state change that lacks same-origin headers or the CSRF token.
pub async fn csrf_guard(State(broker): State<Broker>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_FORM_BYTES).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let sent = url::form_urlencoded::parse(&bytes).find(|(k, _)| k == "csrf").map(|(_, v)| v.into_owned());
    let token_ok = match (expected_csrf(&parts.headers), sent) {
        (Some(expected), Some(sent)) => constant_time_eq(expected.as_bytes(), sent.as_bytes()),
        _ => false,
    };
    if !(token_ok && same_origin(&broker, &parts.headers)) {
        tracing::warn!(path = %parts.uri.path(), token_ok, "refused a console request that failed the CSRF checks");
        return crate::console::layout::forbidden();
    }
    if let Some(refusal) = super::no_nul::form_refusal(&bytes) {
        return refusal;
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_token_depends_on_the_cookie_and_compares_exactly() {
        let a = csrf_token("cookie-a");
        assert_eq!(a, csrf_token("cookie-a"));
        assert_ne!(a, csrf_token("cookie-b"));
        assert!(constant_time_eq(a.as_bytes(), a.as_bytes()));
        assert!(!constant_time_eq(a.as_bytes(), &a.as_bytes()[1..]));
        assert!(!constant_time_eq(b"abc", b"abd"));
    }
}
