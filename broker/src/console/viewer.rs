//! Who is looking at a console page: the session cookie's session and
//! identity, whether they are an admin, their CSRF token, and whether
//! their last WebAuthn proof is fresh enough for an admin write.
//!
//! [`Viewer`] and [`Admin`] are extractors: a handler that takes one cannot
//! run for a request without an active session (or without admin rights).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Method, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::layout;
use crate::Broker;
use crate::config::ConsoleConfig;
use crate::db::identities::IdentityRecord;
use crate::db::sessions::SessionDetails;
use crate::db::users;
use crate::login::{now_unix, session};
use crate::web::security::expected_csrf;

/// The signed-in person behind a console request.
#[derive(Clone, Debug)]
pub(crate) struct Viewer {
    pub(crate) session: SessionDetails,
    pub(crate) identity: IdentityRecord,
    pub(crate) email: Option<String>,
    pub(crate) display: Option<String>,
    pub(crate) admin: bool,
    pub(crate) csrf: String,
    step_up_secs: i64,
}

impl Viewer {
    /// How the person is named in the header.
    pub(crate) fn display_name(&self) -> String {
        self.display.clone().or_else(|| self.email.clone()).unwrap_or_else(|| self.identity.name.clone())
    }

    /// `user/<id>`, as the audit trail names people.
    pub(crate) fn actor(&self) -> String {
        format!("user/{}", self.identity.id)
    }

    /// Whether the session's last WebAuthn proof is recent enough for a write.
    pub(crate) fn fresh(&self) -> bool {
        self.session.record.mfa_at.is_some_and(|at| now_unix() - at <= self.step_up_secs)
    }
}

/// Whether the identity is an admin under `[console]`.
pub(crate) fn is_admin(config: &ConsoleConfig, identity: &IdentityRecord, email: Option<&str>) -> bool {
    identity.groups.iter().any(|g| config.admin_groups.contains(g))
        || config.admin_users.iter().any(|u| *u == identity.name || email.is_some_and(|e| e.eq_ignore_ascii_case(u)))
}

async fn load(broker: &Broker, parts: &Parts) -> Result<Option<Viewer>, Response> {
    let found = session::current(broker, &parts.headers).await.map_err(|f| layout::internal(&f))?;
    let Some((session, identity)) = found else { return Ok(None) };
    let Some(csrf) = expected_csrf(&parts.headers) else { return Ok(None) };
    let mut conn = broker.db().pool().acquire().await.map_err(|e| layout::internal(&e))?;
    let user = users::get_in(&mut conn, &identity.id).await.map_err(|e| layout::internal(&e))?;
    let (email, display) = user.map_or((None, None), |u| (u.email, u.display_name));
    let console = &broker.config().console;
    let admin = is_admin(console, &identity, email.as_deref());
    let step_up_secs = i64::try_from(console.step_up.as_secs()).unwrap_or(0);
    Ok(Some(Viewer { session, identity, email, display, admin, csrf, step_up_secs }))
}

/// Where an anonymous browser goes: sign-in for a page, 401 for anything else.
fn sign_in_first(parts: &Parts) -> Response {
    if parts.method != Method::GET {
        return layout::unauthorized();
    }
    let path = parts.uri.path_and_query().map_or("/portal", |p| p.as_str());
    let target = if crate::login::is_safe_return_to(path) { path } else { "/portal" };
    let query: String = url::form_urlencoded::Serializer::new(String::new()).append_pair("return_to", target).finish();
    let mut response = Redirect::to(&format!("/login?{query}")).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    response
}

impl FromRequestParts<Broker> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, broker: &Broker) -> Result<Self, Response> {
        load(broker, parts).await?.ok_or_else(|| sign_in_first(parts))
    }
}

/// A signed-in admin.
pub(crate) struct Admin(pub(crate) Viewer);

impl FromRequestParts<Broker> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, broker: &Broker) -> Result<Self, Response> {
        let viewer = Viewer::from_request_parts(parts, broker).await?;
        if !viewer.admin {
            tracing::info!(identity = %viewer.identity.id, path = %parts.uri.path(), "non-admin refused a console page");
            return Err(layout::forbidden());
        }
        Ok(Admin(viewer))
    }
}
