//! Step-up: an admin write needs a WebAuthn proof from the last few minutes
//! (`[console] step_up`). This starts the sign-in's own second-factor
//! ceremony for the current session (a pending login with `mfa_session`
//! set, as `palisade login --mfa-only` does); when it succeeds the session's
//! MFA time is refreshed and the browser returns to the page it came from.

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::layout::{self, Nav};
use super::viewer::Viewer;
use crate::Broker;
use crate::db::login_state::{self, PendingLogin};
use crate::login::session::{LOGIN_COOKIE, set_cookie};
use crate::login::{MAX_PENDING, PENDING_TTL_SECS, hash, is_safe_return_to, new_secret, now_unix};

/// Where to go once the proof is fresh.
#[derive(Debug, Deserialize)]
pub(crate) struct Target {
    return_to: Option<String>,
}

fn target(t: Option<String>) -> String {
    t.filter(|r| is_safe_return_to(r) && !r.starts_with("/login")).unwrap_or_else(|| "/admin".to_owned())
}

/// The link a page shows when a write needs a fresh proof first.
pub(crate) fn link(return_to: &str) -> String {
    let query: String =
        url::form_urlencoded::Serializer::new(String::new()).append_pair("return_to", return_to).finish();
    format!("/console/step-up?{query}")
}

/// A banner for admin pages: whether writes will go through right now.
pub(crate) fn banner(viewer: &Viewer, return_to: &str) -> maud::Markup {
    if viewer.fresh() {
        return html! {};
    }
    html! {
        div.notice.info role="status" {
            "Changes need a recent passkey confirmation. "
            a href=(link(return_to)) { "Confirm with your passkey" }
        }
    }
}

pub(crate) async fn page(viewer: Viewer, Query(q): Query<Target>) -> Response {
    let return_to = target(q.return_to);
    let body = html! {
        p { "Admin changes need proof that you are at the keyboard: use your passkey once, "
            "then you can make changes for a few minutes." }
        form method="post" action="/console/step-up" {
            (layout::csrf(&viewer))
            input type="hidden" name="return_to" value=(return_to);
            button.primary type="submit" #step-up { "Confirm with passkey" }
        }
    };
    layout::page(&viewer, Nav::None, "Confirm it is you", body)
}

#[derive(Debug, Deserialize)]
pub(crate) struct StepUpForm {
    return_to: Option<String>,
}

pub(crate) async fn start(State(broker): State<Broker>, viewer: Viewer, Form(f): Form<StepUpForm>) -> Response {
    let cookie = new_secret();
    let now = now_unix();
    let pending = PendingLogin {
        id_hash: hash(&cookie),
        kind: "portal".into(),
        return_to: Some(target(f.return_to)),
        mfa_session: Some(viewer.session.record.id.clone()),
        identity_id: Some(viewer.identity.id.clone()),
        auth_methods: viewer.session.auth_methods.clone(),
        client_addr: viewer.session.client_addr.clone(),
        user_agent: viewer.session.user_agent.clone(),
        created_at: now,
        expires_at: now + PENDING_TTL_SECS,
        ..PendingLogin::default()
    };
    match login_state::insert_pending(broker.db(), &pending, MAX_PENDING).await {
        Ok(true) => {
            let set: HeaderValue = set_cookie(LOGIN_COOKIE, &cookie, PENDING_TTL_SECS);
            ([(header::SET_COOKIE, set)], Redirect::to("/login/mfa")).into_response()
        }
        Ok(false) => layout::bare(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "Busy",
            html! { p { "Too many sign-ins are in progress; try again in a minute." } },
        ),
        Err(e) => layout::internal(&e),
    }
}
