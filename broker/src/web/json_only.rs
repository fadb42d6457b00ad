//! The JSON API takes JSON only.
//!
//! A cross-site page can post `text/plain`, a form or multipart to any URL
//! without a CORS preflight, with the browser's cookies. Every POST to the
//! JSON API (`/api/…`) and to the WebAuthn ceremony (`/login/webauthn/…`)
//! must therefore say `Content-Type: application/json`, which a cross-site
//! page cannot send without a preflight this broker never answers. Anything
//! else is refused with 415 before any handler runs, whether or not the
//! handler reads its body (UI-02 in SECURITY.md).

use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Path prefixes whose POSTs carry JSON.
const JSON_PREFIXES: [&str; 2] = ["/api/", "/login/webauthn/"];

/// Refuses a POST under [`JSON_PREFIXES`] whose body is not declared JSON.
pub(crate) async fn guard(request: Request, next: Next) -> Response {
    let json_route = JSON_PREFIXES.iter().any(|p| request.uri().path().starts_with(p));
    if request.method() == Method::POST && json_route && !declares_json(&request) {
        let body = json!({ "error": "unsupported_media_type", "message": "send the body as application/json" });
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, axum::Json(body)).into_response();
    }
    next.run(request).await
}

fn declares_json(request: &Request) -> bool {
    let Some(value) = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media_type = value.split(';').next().unwrap_or_default().trim();
    media_type.eq_ignore_ascii_case("application/json")
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    fn post(content_type: Option<&str>) -> Request {
        let mut builder = Request::builder().method(Method::POST).uri("/api/v1/enroll");
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        builder.body(Body::empty()).expect("request")
    }

    #[test]
    fn only_a_json_media_type_counts() {
        assert!(declares_json(&post(Some("application/json"))));
        assert!(declares_json(&post(Some("Application/JSON; charset=utf-8"))));
        for other in [None, Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data")]
        {
            assert!(!declares_json(&post(other)), "{other:?}");
        }
        assert!(!declares_json(&post(Some("application/jsonp"))), "no prefix match");
    }
}
