//! Policy history (who applied what, when, why), the diff between two
//! versions, rollback, and the explanation of one decision.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use palisade_policies::{AccessRequest, Action, RequestContext};
use serde::Deserialize;

use super::policies::activate;
use crate::Broker;
use crate::console::layout::{self, Nav};
use crate::console::stepup;
use crate::console::viewer::Admin;
use crate::policy_store::{self, PolicyStoreError};

pub(crate) async fn page(State(broker): State<Broker>, Admin(viewer): Admin) -> Response {
    let (history, active) =
        match (policy_store::history(broker.db()).await, policy_store::active_version(broker.db()).await) {
            (Ok(h), Ok(a)) => (h, a),
            (Err(e), _) | (_, Err(e)) => return layout::internal(&e),
        };
    let body = html! {
        (stepup::banner(&viewer, "/admin/policies/history"))
        @if history.is_empty() {
            p.empty { "No version has been applied from the console or the CLI yet; the broker decides with its policy directory. "
                a href="/admin/policies" { "Edit and apply a policy" } " to start the history." }
        } @else {
            table #policy-history {
                thead { tr { th { "Version" } th { "When" } th { "Who" } th { "Comment" } th { "Digest" } th {} } }
                tbody {
                    @for v in &history {
                        tr data-version=(v.version) {
                            td { (v.version) @if Some(v.version) == active { " " span.tag { "active" } } }
                            td { (layout::when(v.created_at)) }
                            td { (v.author) }
                            td { (v.comment) }
                            td { code { (v.digest.get(..12).unwrap_or("")) } }
                            td {
                                @if let Some(p) = v.parent { a href={ "/admin/policies/diff?a=" (p) "&b=" (v.version) } { "diff" } " " }
                                @if Some(v.version) != active {
                                    (layout::button_form(&viewer, &format!("/admin/policies/rollback/{}", v.version), "Roll back to this", "danger"))
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout::page(&viewer, Nav::Policies, "Policy history", body)
}

#[derive(Debug, Deserialize)]
pub(crate) struct Pair {
    a: u64,
    b: u64,
}

pub(crate) async fn diff(State(broker): State<Broker>, Admin(viewer): Admin, Query(p): Query<Pair>) -> Response {
    match policy_store::diff(broker.db(), p.a, p.b).await {
        Ok(diffs) => {
            let text = policy_store::render_diff(&diffs, &format!("version {}", p.a), &format!("version {}", p.b));
            let title = format!("Version {} → {}", p.a, p.b);
            layout::page(
                &viewer,
                Nav::Policies,
                &title,
                html! { pre.diff { (text) } a href="/admin/policies/history" { "Back to history" } },
            )
        }
        Err(PolicyStoreError::NotFound(_)) => layout::not_found(),
        Err(e) => layout::internal(&e),
    }
}

pub(crate) async fn rollback(State(broker): State<Broker>, Admin(viewer): Admin, Path(version): Path<u64>) -> Response {
    if !viewer.fresh() {
        return Redirect::to(&stepup::link("/admin/policies/history")).into_response();
    }
    let result = async {
        let parent = policy_store::active_version(broker.db()).await?;
        let services = broker.policy().current().bundle().services.clone();
        let author = viewer.email.clone().unwrap_or_else(|| viewer.identity.name.clone());
        policy_store::rollback(broker.db(), version, parent, &author, &services, None).await
    };
    match result.await {
        Ok(info) => match activate(&broker).await {
            Ok(()) => Redirect::to(&format!("/admin/policies?applied={}", info.version)).into_response(),
            Err(message) => layout::page(&viewer, Nav::Policies, "Rollback", layout::notice("error", &message)),
        },
        Err(PolicyStoreError::NotFound(_)) => layout::not_found(),
        Err(e @ (PolicyStoreError::Db(_) | PolicyStoreError::Audit(_))) => layout::internal(&e),
        Err(e) => layout::page(&viewer, Nav::Policies, "Rollback refused", layout::notice("error", &e.to_string())),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ExplainQuery {
    principal: String,
    service: String,
}

pub(crate) async fn explain(
    State(broker): State<Broker>,
    Admin(viewer): Admin,
    Query(q): Query<ExplainQuery>,
) -> Response {
    let body = match policy_store::find_principal(broker.db(), q.principal.trim()).await {
        Ok((principal, disabled)) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let context = RequestContext {
                mfa_age_secs: Some(0),
                auth_methods: vec!["oidc".into(), "webauthn".into()],
                source_ip: None,
                now_unix_secs: now,
                client_version: None,
            };
            let service = q.service.trim();
            let request = AccessRequest { principal: &principal, action: Action::Connect, service, context: &context };
            let explanation = broker.policy().current().explain(&request);
            html! {
                p { "As if " strong { (principal.name) } " (groups: " (principal.groups.join(", ")) ") had just signed in with a passkey:" }
                @if disabled { (layout::notice("error", "This identity is disabled: it gets no tunnel whatever the policies say.")) }
                pre #explanation { (explanation.to_string()) }
            }
        }
        Err(e) => layout::notice("error", &e.to_string()),
    };
    let body = html! { (body) p { a href="/admin/policies" { "Back to policies" } } };
    layout::page(&viewer, Nav::Policies, "Explain a decision", body)
}
