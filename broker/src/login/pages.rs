//! Small server-rendered pages and the self-hosted WebAuthn script. Every
//! dynamic value is HTML-escaped; pages carry no inline script or style, so
//! the CSP needs no `unsafe-inline`.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};

use super::{Login, session};
use crate::Broker;

const SCRIPT: &str = include_str!("static/webauthn.js");

/// Escapes text for HTML content and attribute values.
#[must_use]
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A whole page around `body` (already escaped HTML).
pub fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Palisade</title></head><body>{body}</body></html>\n",
        escape(title)
    ))
}

/// The generic sign-in failure page: the same for every reason.
pub fn failure(message: &str) -> Html<String> {
    page(
        "Sign-in failed",
        &format!(
            "<main><h1>Sign-in failed</h1><p>{}</p><p><a href=\"/login\">Start again</a></p></main>",
            escape(message)
        ),
    )
}

/// The second-factor page; the script reads `data-mode`.
pub fn mfa(mode: &str) -> Html<String> {
    page(
        "Security key",
        &format!(
            "<main id=\"mfa\" data-mode=\"{}\"><h1>Confirm it is you</h1>\
             <p id=\"status\">Use your passkey or security key when your browser asks.</p>\
             <button id=\"go\" type=\"button\">Use passkey</button></main>\
             <script src=\"/login/static/webauthn.js\"></script>",
            escape(mode)
        ),
    )
}

pub(crate) async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response()
}

pub(crate) async fn home(
    State(broker): State<Broker>,
    Extension(_login): Extension<Arc<Login>>,
    headers: HeaderMap,
) -> Response {
    match session::current(&broker, &headers).await {
        Ok(Some((details, identity))) => page(
            "Signed in",
            &format!(
                "<main><h1>Signed in</h1><p>{} ({})</p><p>Groups: {}</p><p>Session {} until {}</p>\
                 <p><a href=\"/portal\">Open your portal</a></p></main>",
                escape(&identity.name),
                escape(&identity.id),
                escape(&identity.groups.join(", ")),
                escape(&details.record.id),
                details.record.expires_at
            ),
        )
        .into_response(),
        _ => page("Palisade", "<main><h1>Palisade</h1><p><a href=\"/login\">Sign in</a></p></main>").into_response(),
    }
}
