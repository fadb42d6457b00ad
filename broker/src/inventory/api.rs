//! The inventory's JSON API, served on the admin socket ([`crate::admin`]):
//! the same functions as the CLI, answered as JSON, with the live registry's
//! view of which connectors are online. A change takes effect on this broker
//! before the answer is sent (other replicas follow the database within
//! the resync interval, see [`crate::sync`]).

use serde::Serialize;
use serde_json::{Value, json};

use super::{InventoryError, LabelChange};
use crate::admin::AdminRequest;
use crate::state::Broker;

/// Who the audit trail names for changes made over the admin socket.
pub const ADMIN_SOCKET_ACTOR: &str = "admin-socket";

fn to_json(value: &impl Serialize) -> Result<Value, InventoryError> {
    serde_json::to_value(value).map_err(|e| InventoryError::Corrupt { name: "answer".into(), message: e.to_string() })
}

/// Answers one inventory request. `ping`, `policy_reload` and
/// `identity_groups` are not inventory requests and answer `null`.
///
/// # Errors
/// [`InventoryError`]: unknown service or segment, bad name, database.
pub async fn execute(broker: &Broker, request: AdminRequest) -> Result<Value, InventoryError> {
    let db = broker.db();
    let actor = ADMIN_SOCKET_ACTOR;
    let answer = match request {
        AdminRequest::Inventory => {
            let active = broker.policy().current();
            let registry = broker.registry();
            let online = move |service: &str| registry.is_online(service);
            return to_json(&super::inventory(db, active.engine(), Some(&online)).await?);
        }
        AdminRequest::SegmentList => return to_json(&super::segments(db).await?),
        AdminRequest::SegmentCreate { name, description } => {
            to_json(&super::create_segment(db, &name, &description, actor).await?)?
        }
        AdminRequest::SegmentDelete { name } => {
            super::delete_segment(db, &name, actor).await?;
            json!({ "deleted": name })
        }
        AdminRequest::ServiceAssign { service, segment, protocol } => {
            to_json(&super::assign(db, &service, segment.as_deref(), protocol.as_deref(), actor).await?)?
        }
        AdminRequest::ServiceLabel { service, add, remove } => {
            let changes: Vec<LabelChange<'_>> =
                add.iter().map(|l| LabelChange::Add(l)).chain(remove.iter().map(|l| LabelChange::Remove(l))).collect();
            to_json(&super::label(db, &service, &changes, actor).await?)?
        }
        AdminRequest::Ping | AdminRequest::PolicyReload | AdminRequest::IdentityGroups { .. } => {
            return Ok(Value::Null);
        }
    };
    if let Err(e) = broker.policy().sync().await {
        tracing::error!(error = %e, "the catalog changed but the new set could not be loaded; the running set stays");
    }
    Ok(answer)
}
