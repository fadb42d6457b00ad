//! The admin console: overview, policies, users and sessions (and one
//! person's page), machines, groups, connectors and the service inventory,
//! audit.
//! Every handler takes [`super::viewer::Admin`]; every write also checks
//! the viewer's WebAuthn proof is fresh ([`super::stepup`]).

pub(crate) mod audit;
pub(crate) mod connectors;
pub(crate) mod group_edit;
pub(crate) mod groups;
pub(crate) mod history;
pub(crate) mod machines;
pub(crate) mod overview;
pub(crate) mod people;
pub(crate) mod person;
pub(crate) mod policies;

use axum::Router;
use axum::routing::{get, post};

use crate::Broker;

/// The admin routes: overview, policies, people, machines, groups, connectors, audit.
pub(crate) fn routes() -> Router<Broker> {
    Router::new()
        .route("/admin", get(overview::page))
        .route("/admin/policies", get(policies::page).post(policies::submit))
        .route("/admin/policies/explain", get(history::explain))
        .route("/admin/policies/history", get(history::page))
        .route("/admin/policies/diff", get(history::diff))
        .route("/admin/policies/rollback/{version}", post(history::rollback))
        .route("/admin/sessions", get(people::page))
        .route("/admin/sessions/{id}/revoke", post(people::revoke))
        .route("/admin/users/{id}", get(person::page))
        .route("/admin/users/{id}/groups", post(person::groups))
        .route("/admin/users/{id}/reset", post(person::reset))
        .route("/admin/users/{id}/disable", post(people::disable))
        .route("/admin/tunnels/kill", post(people::kill))
        .route("/admin/machines", get(machines::page))
        .route("/admin/machines/{id}/groups", post(machines::groups))
        .route("/admin/machines/{id}/disable", post(machines::disable))
        .route("/admin/groups", get(groups::page))
        .route("/admin/connectors", get(connectors::page))
        .route("/admin/connectors/token", post(connectors::token))
        .route("/admin/connectors/{id}/disable", post(connectors::disable))
        .route("/admin/inventory/assign", post(connectors::assign))
        .route("/admin/audit", get(audit::page))
        .route("/admin/audit/export", get(audit::export_all))
}
