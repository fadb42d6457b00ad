//! The inventory: every service, its connectors, segment and labels, and
//! who can reach it under the active policy set right now.

use std::time::{SystemTime, UNIX_EPOCH};

use palisade_policies::{AccessRequest, Action, Engine, Principal, PrincipalKind, RequestContext};
use serde::Serialize;

use super::{InventoryError, ServiceRecord, services};
use crate::db::Db;
use crate::policy_store::known_principals;

/// Whether anyone can reach a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    /// It has no segment: not in the policy catalog, nobody reaches it.
    Unassigned,
    /// In the catalog, but the active set allows no known identity.
    Nobody,
    /// At least one known identity may connect.
    Reachable,
}

/// One line of the inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InventoryRow {
    /// The service as the catalog holds it, with its connectors.
    #[serde(flatten)]
    pub service: ServiceRecord,
    /// Whether a connector serving it is connected to this broker (`None`
    /// when asked outside the running broker).
    pub online: Option<bool>,
    /// Whether anyone can reach it.
    pub reachability: Reachability,
    /// The known identities the active set allows, as `machine:NAME` or
    /// `user:NAME`, sorted.
    pub reachable_by: Vec<String>,
}

/// The context a principal has at best right after signing in: a person
/// with a second factor proven this second, a machine with its enrollment.
/// Reachability is "could anyone connect now", so it uses the best case;
/// policies on the source address see none.
fn best_case_context(kind: PrincipalKind, now_unix_secs: u64) -> RequestContext {
    let (mfa_age_secs, auth_methods) = match kind {
        PrincipalKind::User => (Some(0), vec!["oidc".to_owned(), "webauthn".to_owned()]),
        PrincipalKind::Machine => (None, vec!["enrollment_token".to_owned()]),
    };
    RequestContext { mfa_age_secs, auth_methods, source_ip: None, now_unix_secs, client_version: None }
}

fn label(principal: &Principal) -> String {
    match principal.kind {
        PrincipalKind::User => format!("user:{}", principal.name),
        PrincipalKind::Machine => format!("machine:{}", principal.name),
    }
}

/// Every known service, evaluated with `engine` (the active set) over every
/// known, enabled identity. `online` answers whether a connector serving a
/// service is connected (pass `None` outside the running broker).
///
/// # Errors
/// A database error or an unreadable row.
pub async fn inventory(
    db: &Db,
    engine: &Engine,
    online: Option<&(dyn Fn(&str) -> bool + Sync)>,
) -> Result<Vec<InventoryRow>, InventoryError> {
    let principals = known_principals(db).await?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let rows = services(db).await?;
    Ok(rows
        .into_iter()
        .map(|service| {
            let in_catalog = service.segment.is_some() && engine.service(&service.name).is_some();
            let mut reachable_by: Vec<String> = if in_catalog {
                principals
                    .iter()
                    .filter(|p| {
                        let context = best_case_context(p.kind, now);
                        let request = AccessRequest {
                            principal: p,
                            action: Action::Connect,
                            service: &service.name,
                            context: &context,
                        };
                        engine.decide(&request).is_allow()
                    })
                    .map(label)
                    .collect()
            } else {
                Vec::new()
            };
            reachable_by.sort();
            let reachability = match (in_catalog, reachable_by.is_empty()) {
                (false, _) => Reachability::Unassigned,
                (true, true) => Reachability::Nobody,
                (true, false) => Reachability::Reachable,
            };
            let online = online.map(|is_online| is_online(&service.name));
            InventoryRow { service, online, reachability, reachable_by }
        })
        .collect())
}
