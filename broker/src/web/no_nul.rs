//! No route takes a NUL character: a request whose path or query string
//! holds one (`%00`) is refused with 400 before any handler runs, and so
//! is a console form whose body holds one ([`form_refusal`], called by the
//! CSRF guard, which reads those bodies anyway).
//!
//! PostgreSQL refuses NUL in text, so an id or a filter with a NUL was a
//! database error there (a 500, or the driver's message on a page) and an
//! unknown value on SQLite. Refusing it at the edge answers alike on both
//! stores and keeps it away from every query (UI-11, UI-14 in SECURITY.md).

use axum::extract::Request;
use axum::http::{StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Refuses a request whose URL holds a NUL; JSON under `/api/`, plain text elsewhere.
pub(crate) async fn guard(request: Request, next: Next) -> Response {
    if !holds_nul(request.uri()) {
        return next.run(request).await;
    }
    const MESSAGE: &str = "the URL holds a NUL character (%00); remove it";
    if request.uri().path().starts_with("/api/") {
        return super::api_error(StatusCode::BAD_REQUEST, "bad_request", MESSAGE);
    }
    (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], MESSAGE).into_response()
}

/// The 400 for a console form body holding a NUL (`%00`, or a raw NUL byte).
pub(crate) fn form_refusal(body: &[u8]) -> Option<Response> {
    let nul = body.contains(&0) || holds_encoded_nul(body);
    let message = "a form field holds a NUL character; remove it";
    nul.then(|| {
        (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message).into_response()
    })
}

fn holds_encoded_nul(bytes: &[u8]) -> bool {
    bytes.windows(3).any(|w| w.eq_ignore_ascii_case(b"%00"))
}

/// `%00` anywhere in the path or query: a literal `%00` in a value would be
/// sent as `%2500`, so this is always an encoded NUL.
fn holds_nul(uri: &Uri) -> bool {
    uri.path_and_query().is_some_and(|pq| holds_encoded_nul(pq.as_str().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::{form_refusal, holds_nul};

    #[test]
    fn only_an_encoded_nul_counts() {
        for nul in ["/admin/users/x%00y", "/admin/audit?person=%00", "/a?b=c%00", "/x?y=%00%00"] {
            assert!(holds_nul(&nul.parse().expect("a URI")), "{nul}");
        }
        for fine in ["/admin/users/x", "/admin/audit?person=%2500", "/a?b=100", "/a%20b?c=%0A", "/"] {
            assert!(!holds_nul(&fine.parse().expect("a URI")), "{fine}");
        }
        assert!(form_refusal(b"csrf=x&name=a%00b").is_some());
        assert!(form_refusal(b"csrf=x&name=a\0b").is_some());
        assert!(form_refusal(b"csrf=x&name=a%2500b&n=100").is_none());
    }
}
