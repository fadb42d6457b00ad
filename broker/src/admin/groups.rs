//! Changing the groups of a person or a machine: `palisade-broker user
//! groups`, `machine groups` and the admin socket's `identity_groups`.
//!
//! The change and its `identity.updated` event commit together. Every
//! broker replica reads the new groups within its resync bound and cuts
//! the live tunnels they no longer allow ([`crate::relay`]); a group taken
//! away stops counting at once, a group given counts from the identity's
//! next certificate (the certificate carries the groups the connector
//! checks).

use palisade_proto::id::GroupName;
use palisade_proto::identity::PeerRole;
use serde_json::json;

use crate::audit::{Audit, AuditError, AuditEvent, EventKind, Outcome};
use crate::db::{Db, IdentityRecord, identities};
use crate::login::manage::{self, ManageError};

/// Groups to add and to remove, as an admin asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupEdit {
    /// Groups to add.
    pub add: Vec<String>,
    /// Groups to remove.
    pub remove: Vec<String>,
}

/// Who an admin names: a person (name, email or id) or a machine (name or id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    /// A person.
    User(String),
    /// A machine.
    Machine(String),
}

/// What a group change did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupChange {
    /// The identity, with its groups as they are now.
    pub identity: IdentityRecord,
    /// Its groups before.
    pub before: Vec<String>,
    /// Groups it gained.
    pub added: Vec<String>,
    /// Groups it lost.
    pub removed: Vec<String>,
}

impl GroupChange {
    /// Whether the groups are as they were (nothing written, nothing audited).
    #[must_use]
    pub fn is_unchanged(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// A group change was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum GroupsError {
    /// The request itself is wrong (bad group name, nothing to do, …).
    #[error("{0}")]
    Invalid(String),
    /// No machine has this name or id.
    #[error("no machine named {0:?} (give its name or id)")]
    UnknownMachine(String),
    /// The person was not found, or several match.
    #[error(transparent)]
    User(#[from] ManageError),
    /// A group to remove is not one the identity has.
    #[error("{role} {name} is not in group {group:?} (its groups: {groups}); nothing was changed")]
    NotMember {
        /// The identity's role.
        role: PeerRole,
        /// The identity's name.
        name: String,
        /// The group asked for.
        group: String,
        /// The groups it has.
        groups: String,
    },
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The audit trail could not be written.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl GroupEdit {
    /// Checks the names to add (the certificate's rules for groups) and that
    /// the edit asks for something and does not contradict itself.
    ///
    /// A name to remove is not held to those rules: a stored name that fails
    /// them (written by an older version or straight into the database)
    /// must still be removable. [`change_groups`] removes only a name the
    /// identity holds, exactly as stored.
    ///
    /// # Errors
    /// [`GroupsError::Invalid`] naming the problem.
    pub fn check(&self) -> Result<(), GroupsError> {
        if self.add.is_empty() && self.remove.is_empty() {
            return Err(GroupsError::Invalid("nothing to change: name a group to add or to remove".into()));
        }
        for g in &self.add {
            g.parse::<GroupName>().map_err(|e| GroupsError::Invalid(format!("{g:?}: {e}; nothing was changed")))?;
        }
        if self.remove.iter().any(String::is_empty) {
            return Err(GroupsError::Invalid("a group to remove must not be empty; nothing was changed".into()));
        }
        if let Some(g) = self.add.iter().find(|g| self.remove.contains(g)) {
            return Err(GroupsError::Invalid(format!("group {g:?} is both added and removed: name it once")));
        }
        Ok(())
    }

    /// The groups after this edit: `before` without the removed ones, then
    /// the added ones it lacked. `Err` names a removed group it lacks.
    fn apply(&self, before: &[String]) -> Result<Vec<String>, String> {
        if let Some(missing) = self.remove.iter().find(|g| !before.contains(g)) {
            return Err(missing.clone());
        }
        let mut after: Vec<String> = before.iter().filter(|g| !self.remove.contains(g)).cloned().collect();
        for g in &self.add {
            if !after.contains(g) {
                after.push(g.clone());
            }
        }
        Ok(after)
    }
}

/// The identity `who` names.
///
/// # Errors
/// Nobody or several people match, no such machine, or the database failed.
pub async fn resolve(db: &Db, who: &Who) -> Result<IdentityRecord, GroupsError> {
    match who {
        Who::User(who) => Ok(manage::find_user(db, who).await?.identity),
        Who::Machine(who) => match identities::find_by_name(db, PeerRole::Machine, who).await? {
            Some(found) => Ok(found),
            None => identities::get(db, PeerRole::Machine, who)
                .await?
                .ok_or_else(|| GroupsError::UnknownMachine(who.clone())),
        },
    }
}

/// Applies `edit` to the groups of `identity` and records `identity.updated`
/// (actor, groups before and after), in one transaction. An edit that
/// changes nothing writes nothing.
///
/// # Errors
/// [`GroupsError`]; nothing is changed then.
pub async fn change_groups(
    db: &Db,
    identity: &IdentityRecord,
    edit: &GroupEdit,
    actor: &str,
) -> Result<GroupChange, GroupsError> {
    edit.check()?;
    if identity.role == PeerRole::Connector {
        return Err(GroupsError::Invalid("connectors have no groups".into()));
    }
    let mut tx = db.begin_write().await?;
    let current = identities::get_in(&mut tx, identity.role, &identity.id)
        .await?
        .ok_or_else(|| GroupsError::Invalid(format!("{} {} no longer exists", identity.role, identity.name)))?;
    let after = edit.apply(&current.groups).map_err(|group| GroupsError::NotMember {
        role: current.role,
        name: current.name.clone(),
        group,
        groups: if current.groups.is_empty() { "none".into() } else { current.groups.join(", ") },
    })?;
    let change = GroupChange {
        added: after.iter().filter(|g| !current.groups.contains(g)).cloned().collect(),
        removed: current.groups.iter().filter(|g| !after.contains(g)).cloned().collect(),
        before: current.groups.clone(),
        identity: IdentityRecord { groups: after, ..current },
    };
    if change.is_unchanged() {
        return Ok(change);
    }
    identities::set_groups_in(&mut tx, &change.identity.id, &change.identity.groups).await?;
    let event = AuditEvent::new(EventKind::IdentityUpdated, Outcome::Success)
        .actor(actor)
        .subject(format!("{}/{}", change.identity.role, change.identity.id))
        .detail(json!({
            "name": change.identity.name, "groups_before": change.before, "groups_after": change.identity.groups,
            "added": change.added, "removed": change.removed,
        }));
    Audit::record_in(&mut tx, event).await?;
    tx.commit().await?;
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(add: &[&str], remove: &[&str]) -> GroupEdit {
        GroupEdit {
            add: add.iter().map(|g| (*g).to_owned()).collect(),
            remove: remove.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    fn v(groups: &[&str]) -> Vec<String> {
        groups.iter().map(|g| (*g).to_owned()).collect()
    }

    #[test]
    fn an_edit_removes_then_adds_keeping_the_order() {
        assert_eq!(edit(&["admins"], &["ml"]).apply(&v(&["ml", "ops"])), Ok(v(&["ops", "admins"])));
        assert_eq!(edit(&["ops"], &[]).apply(&v(&["ops"])), Ok(v(&["ops"])), "adding a held group changes nothing");
    }

    #[test]
    fn removing_a_group_not_held_is_refused() {
        assert_eq!(edit(&[], &["ml-agent"]).apply(&v(&["ml-agents"])), Err("ml-agent".to_owned()));
    }

    #[test]
    fn bad_edits_are_refused_with_the_reason() {
        let message = |e: GroupEdit| e.check().map_err(|e| e.to_string()).expect_err("refused");
        assert!(message(edit(&[], &[])).contains("nothing to change"));
        assert!(message(edit(&[""], &[])).contains("must not be empty"));
        assert!(message(edit(&["ops,admins"], &[])).contains("group name"));
        assert!(message(edit(&["ml"], &["ml"])).contains("both added and removed"));
        assert!(edit(&["ml-team.eu"], &["ops"]).check().is_ok());
        assert!(message(edit(&[], &[""])).contains("must not be empty"));
    }

    #[test]
    fn a_stored_name_that_fails_the_rules_can_be_removed_but_not_added() {
        let bad = "<img src=x onerror=alert(1)>";
        assert!(edit(&[], &[bad]).check().is_ok(), "removing a bad stored name is allowed");
        assert_eq!(edit(&[], &[bad]).apply(&v(&["ops", bad])), Ok(v(&["ops"])));
        assert!(matches!(edit(&[bad], &[]).check(), Err(GroupsError::Invalid(_))), "adding one is refused");
        assert!(matches!(edit(&[bad], &[bad]).check(), Err(GroupsError::Invalid(_))));
    }

    #[tokio::test]
    async fn a_bad_name_written_straight_into_the_database_is_removed_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&crate::db::sqlite_url(&dir.path().join("palisade.db"))).await.unwrap();
        let bad = "<img src=x onerror=alert(1)>";
        sqlx::query(
            "INSERT INTO identities (id, role, name, groups, disabled, created_at) VALUES ('m1', 'machine', 'agent-1', $1, 0, 0)",
        )
        .bind(serde_json::json!(["ops", bad]).to_string())
        .execute(db.pool())
        .await
        .unwrap();
        let identity = identities::get(&db, PeerRole::Machine, "m1").await.unwrap().unwrap();

        let refused = change_groups(&db, &identity, &edit(&[bad], &[]), "user/admin").await;
        assert!(matches!(refused, Err(GroupsError::Invalid(_))), "adding a bad name is still refused");
        let change = change_groups(&db, &identity, &edit(&[], &[bad]), "user/admin").await.unwrap();
        assert_eq!(change.removed, v(&[bad]));
        let stored = identities::get(&db, PeerRole::Machine, "m1").await.unwrap().unwrap();
        assert_eq!(stored.groups, v(&["ops"]), "the bad name is gone, the good one kept");
        let details: Vec<String> =
            sqlx::query_scalar("SELECT detail FROM audit_events WHERE kind = 'identity.updated'")
                .fetch_all(db.pool())
                .await
                .unwrap();
        assert_eq!(details.len(), 1, "one change, one event: {details:?}");
        assert!(details[0].contains("onerror"), "the removed name is in the event: {}", details[0]);
    }
}
