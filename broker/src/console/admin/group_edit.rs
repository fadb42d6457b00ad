//! Adding and removing the groups of a machine or a person from the
//! console, through [`crate::admin::groups::change_groups`] (names checked,
//! `identity.updated` audited in the same transaction). Afterwards the
//! followers are woken, so live tunnels a removed group allowed are cut
//! now rather than at the next resync. The forms live here too, so the
//! Machines page and a person's page edit groups the same way.

use maud::{Markup, html};
use palisade_proto::identity::PeerRole;
use serde::Deserialize;

use crate::Broker;
use crate::admin::groups::{self, GroupChange, GroupEdit, GroupsError};
use crate::console::layout;
use crate::console::viewer::Viewer;
use crate::db::identities;

/// One group to add or to remove, as the forms post it.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct GroupForm {
    #[serde(default)]
    add: String,
    #[serde(default)]
    remove: String,
}

impl GroupForm {
    /// The edit the form asks for. A name to add is trimmed (typed by the
    /// admin); a name to remove is taken exactly as posted, since it comes
    /// from the stored name the page rendered, whatever it holds.
    fn edit(&self) -> GroupEdit {
        let add = Some(self.add.trim().to_owned()).filter(|g| !g.is_empty()).into_iter().collect();
        let remove = Some(self.remove.clone()).filter(|g| !g.is_empty()).into_iter().collect();
        GroupEdit { add, remove }
    }
}

/// Applies the form to the `role` identity `id`. `Ok` is the notice to show
/// (a refused edit is a notice too); `Err` is the page to answer with
/// instead (not found, or an opaque 500).
pub(crate) async fn apply(
    broker: &Broker,
    viewer: &Viewer,
    role: PeerRole,
    id: &str,
    form: &GroupForm,
) -> Result<Markup, axum::response::Response> {
    let identity = match identities::get(broker.db(), role, id).await {
        Ok(Some(identity)) => identity,
        Ok(None) => return Err(layout::not_found()),
        Err(e) => return Err(layout::internal(&e)),
    };
    let edit = form.edit();
    let admin_groups = &broker.config().console.admin_groups;
    if identity.id == viewer.identity.id && edit.remove.iter().any(|g| admin_groups.contains(g)) {
        return Ok(layout::notice(
            "error",
            "You cannot take yourself out of an admin group here; nothing was changed.",
        ));
    }
    match groups::change_groups(broker.db(), &identity, &edit, &viewer.actor()).await {
        Ok(change) => {
            if !change.is_unchanged() {
                tracing::info!(identity = %change.identity.id, added = ?change.added, removed = ?change.removed, "groups changed (console)");
                broker.sync().announce();
            }
            Ok(layout::notice("ok", &report(&change)))
        }
        Err(e @ (GroupsError::Db(_) | GroupsError::Audit(_))) => Err(layout::internal(&e)),
        Err(e) => Ok(layout::notice("error", &e.to_string())),
    }
}

/// What changed, in a sentence an admin reads once.
fn report(change: &GroupChange) -> String {
    let name = &change.identity.name;
    let now = if change.identity.groups.is_empty() { "none".to_owned() } else { change.identity.groups.join(", ") };
    if change.is_unchanged() {
        return format!("{name}: nothing to change; groups: {now}.");
    }
    let mut out = format!("{name}: groups now {now}.");
    if !change.removed.is_empty() {
        out.push_str(&format!(
            " Removed {}: live tunnels that needed it close within a second.",
            change.removed.join(", ")
        ));
    }
    if !change.added.is_empty() {
        out.push_str(&format!(" Added {}: counts from its next certificate.", change.added.join(", ")));
    }
    out
}

/// The identity's groups, each with a button that removes it.
pub(crate) fn tags(viewer: &Viewer, action: &str, groups: &[String]) -> Markup {
    html! {
        @if groups.is_empty() { span.muted { "no groups" } }
        @for g in groups {
            form.inline.remove-group method="post" action=(action) data-group=(g) {
                (layout::csrf(viewer))
                input type="hidden" name="remove" value=(g);
                span.tag { (g) " "
                    button.link type="submit" aria-label={ "Remove from " (g) } title={ "Remove from " (g) } { "×" }
                }
            }
            " "
        }
    }
}

/// A one-field form that adds a group; `who` names the identity for screen readers.
pub(crate) fn add_form(viewer: &Viewer, action: &str, who: &str) -> Markup {
    html! {
        form.inline.add-group method="post" action=(action) {
            (layout::csrf(viewer))
            input name="add" required size="12" pattern="[A-Za-z0-9][A-Za-z0-9._-]{0,62}"
                placeholder="group" aria-label={ "Group to add to " (who) };
            " " button type="submit" { "Add" }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_names_at_most_one_group_each_way_and_blank_means_none() {
        let form = GroupForm { add: "  ml-team ".into(), remove: String::new() };
        assert_eq!(form.edit(), GroupEdit { add: vec!["ml-team".into()], remove: Vec::new() });
        assert!(GroupForm::default().edit().check().is_err(), "an empty form asks for nothing");
    }

    #[test]
    fn the_report_says_when_each_change_takes_effect() {
        let identity = crate::db::IdentityRecord {
            id: "m1".into(),
            role: PeerRole::Machine,
            name: "agent-1".into(),
            groups: vec!["eval-bots".into()],
            disabled: false,
        };
        let change = GroupChange {
            identity,
            before: vec!["ml-agents".into()],
            added: vec!["eval-bots".into()],
            removed: vec!["ml-agents".into()],
        };
        let text = report(&change);
        assert!(text.starts_with("agent-1: groups now eval-bots."), "{text}");
        assert!(text.contains("Removed ml-agents: live tunnels"), "{text}");
        assert!(text.contains("Added eval-bots: counts from its next certificate"), "{text}");
    }

    #[test]
    fn markup_in_a_group_name_is_refused_before_anything_is_written() {
        let form = GroupForm { add: "<img src=x onerror=alert(1)>".into(), remove: String::new() };
        assert!(matches!(form.edit().check(), Err(GroupsError::Invalid(_))));
    }

    #[test]
    fn a_stored_name_is_removed_exactly_as_posted() {
        let form = GroupForm { add: String::new(), remove: " <img src=x onerror=alert(1)> ".into() };
        assert_eq!(form.edit().remove, vec![" <img src=x onerror=alert(1)> ".to_owned()]);
        assert!(form.edit().check().is_ok(), "a bad stored name can be removed");
    }
}
