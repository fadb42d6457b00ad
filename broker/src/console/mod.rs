//! The web console: the employee portal ([`portal`]) and the admin console
//! ([`admin`]), rendered on the server with maud (every value escaped),
//! styled and scripted only by the files in `static/` (no inline script or
//! style, so the Content-Security-Policy needs no `unsafe-inline`).
//!
//! The device-code approval page ([`device`]) is a console page too.
//!
//! Sign-in is the login module's own flow (OIDC, then WebAuthn, then a
//! fresh session id in a `__Host-` cookie). Every state change is a form
//! post that passes [`crate::web::security::csrf_guard`]; admin writes
//! also need a recent WebAuthn proof ([`stepup`]).

pub(crate) mod admin;
pub(crate) mod device;
pub mod layout;
pub(crate) mod paging;
pub(crate) mod portal;
pub(crate) mod sorting;
pub(crate) mod stepup;
pub(crate) mod viewer;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::Broker;

const CSS: &str = include_str!("static/console.css");
const JS: &str = include_str!("static/console.js");

/// Every console route, behind the CSRF guard.
pub(crate) fn routes(broker: &Broker) -> Router<Broker> {
    Router::new()
        .route("/portal", get(portal::services))
        .route("/portal/sessions", get(portal::my_sessions))
        .route("/portal/sessions/{id}/revoke", post(portal::revoke_mine))
        .route("/portal/passkeys", get(portal::passkeys))
        .route("/portal/passkeys/{id}/remove", post(portal::remove_passkey))
        .route("/portal/logout", post(portal::logout))
        .route("/console/step-up", get(stepup::page).post(stepup::start))
        .merge(admin::routes())
        .route("/console/static/console.css", get(css))
        .route("/console/static/console.js", get(js))
        .route("/console", get(|| async { Redirect::to("/portal") }))
        .layer(axum::middleware::from_fn_with_state(broker.clone(), crate::web::security::csrf_guard))
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

async fn js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], JS).into_response()
}
