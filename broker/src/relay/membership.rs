//! Which groups a decision may use: the certificate's, corrected by the
//! database's current view of the identity.
//!
//! A certificate carries the groups its identity had when it was issued,
//! and the connector decides with those. An admin's (or the IdP's) change
//! must not wait for the next certificate when it takes access away, and
//! must not give access the certificate never carried. So the relay
//! decides twice when the two disagree and allows only if both allow:
//! once with the groups in both (a group the database removed no longer
//! permits anything), once with the groups in either (a group the
//! database added can already forbid). When they agree — nearly always —
//! one decision is enough.

use std::collections::BTreeSet;

/// The groups of one identity as certificate and database see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Membership {
    /// In both the certificate and the database: what may permit.
    pub(crate) within: Vec<String>,
    /// In either: what may forbid.
    pub(crate) across: Vec<String>,
}

impl Membership {
    /// Combines the certificate's groups with the database's; `None` (the
    /// database's view is unknown) keeps no group from permitting.
    pub(crate) fn of(cert: &[String], db: Option<&[String]>) -> Self {
        // The common case, both lists the same: no sets to build.
        if db == Some(cert) {
            return Self { within: cert.to_vec(), across: cert.to_vec() };
        }
        let cert: BTreeSet<&String> = cert.iter().collect();
        let db: BTreeSet<&String> = db.unwrap_or_default().iter().collect();
        Self {
            within: cert.intersection(&db).map(|g| (*g).clone()).collect(),
            across: cert.union(&db).map(|g| (*g).clone()).collect(),
        }
    }

    /// Whether certificate and database agree, so one decision suffices.
    pub(crate) fn settled(&self) -> bool {
        self.within == self.across
    }
}

/// What changed between two views of an identity's groups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GroupDiff {
    /// Groups in `after` and not in `before`.
    pub(crate) added: Vec<String>,
    /// Groups in `before` and not in `after`.
    pub(crate) removed: Vec<String>,
}

impl GroupDiff {
    /// The difference from `before` to `after`, each list sorted.
    pub(crate) fn between(before: &[String], after: &[String]) -> Self {
        let before: BTreeSet<&String> = before.iter().collect();
        let after: BTreeSet<&String> = after.iter().collect();
        Self {
            added: after.difference(&before).map(|g| (*g).clone()).collect(),
            removed: before.difference(&after).map(|g| (*g).clone()).collect(),
        }
    }

    /// `removed from ml; added to ops`, for logs and audit events.
    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.removed.is_empty() {
            parts.push(format!("removed from {}", self.removed.join(", ")));
        }
        if !self.added.is_empty() {
            parts.push(format!("added to {}", self.added.join(", ")));
        }
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(groups: &[&str]) -> Vec<String> {
        groups.iter().map(|g| (*g).to_owned()).collect()
    }

    #[test]
    fn a_group_the_database_removed_no_longer_permits() {
        let m = Membership::of(&v(&["ml", "ops"]), Some(&v(&["ops"])));
        assert_eq!(m.within, v(&["ops"]));
        assert_eq!(m.across, v(&["ml", "ops"]));
        assert!(!m.settled());
    }

    #[test]
    fn a_group_the_database_added_cannot_permit_before_the_next_certificate() {
        let m = Membership::of(&v(&["ml"]), Some(&v(&["ml", "admins"])));
        assert_eq!(m.within, v(&["ml"]), "the certificate bounds what permits");
        assert_eq!(m.across, v(&["admins", "ml"]), "but an added group can already forbid");
    }

    #[test]
    fn an_unknown_database_view_keeps_every_group_from_permitting() {
        let m = Membership::of(&v(&["ml"]), None);
        assert!(m.within.is_empty());
        assert_eq!(m.across, v(&["ml"]));
    }

    #[test]
    fn agreement_is_settled_whatever_the_order() {
        let m = Membership::of(&v(&["b", "a"]), Some(&v(&["a", "b"])));
        assert!(m.settled());
        assert_eq!(m.within, v(&["a", "b"]));
        let same = Membership::of(&v(&["ml", "ops"]), Some(&v(&["ml", "ops"])));
        assert!(same.settled());
        assert_eq!((same.within, same.across), (v(&["ml", "ops"]), v(&["ml", "ops"])));
    }

    #[test]
    fn a_diff_names_what_was_added_and_removed() {
        let diff = GroupDiff::between(&v(&["ml", "ops"]), &v(&["ops", "admins"]));
        assert_eq!(diff.removed, v(&["ml"]));
        assert_eq!(diff.added, v(&["admins"]));
        assert_eq!(diff.describe(), "removed from ml; added to admins");
        assert_eq!(GroupDiff::between(&v(&["a"]), &v(&["a"])), GroupDiff::default());
    }
}
