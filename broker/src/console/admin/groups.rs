//! Groups: every group any person or machine is in (the identities' `groups`
//! column), its members, and the services those members can reach under
//! the active policy set. Groups are not stored on their own: a group
//! exists while someone is in it, so this page edits nothing; membership is
//! changed on the Machines page and on a person's page.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};
use palisade_proto::identity::PeerRole;

use crate::Broker;
use crate::console::layout::{self, Nav};
use crate::console::viewer::Admin;
use crate::db::{identities, users};
use crate::inventory::{self, InventoryRow};

/// One member of a group: where to read about it, what to call it, and how
/// the inventory names it (`user:NAME`, `machine:NAME`).
struct Member {
    href: String,
    label: String,
    principal: String,
}

#[derive(Default)]
struct Group {
    people: Vec<Member>,
    machines: Vec<Member>,
}

impl Group {
    /// Services at least one member can reach.
    fn reach<'a>(&self, inv: &'a [InventoryRow]) -> Vec<&'a str> {
        let members: Vec<&str> = self.people.iter().chain(&self.machines).map(|m| m.principal.as_str()).collect();
        inv.iter()
            .filter(|r| r.reachable_by.iter().any(|p| members.contains(&p.as_str())))
            .map(|r| r.service.name.as_str())
            .collect()
    }
}

async fn collect(broker: &Broker) -> Result<BTreeMap<String, Group>, sqlx::Error> {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for u in users::list(broker.db()).await? {
        let label = u.display_name.clone().or_else(|| u.email.clone()).unwrap_or_else(|| u.identity.name.clone());
        for g in &u.identity.groups {
            groups.entry(g.clone()).or_default().people.push(Member {
                href: format!("/admin/users/{}", u.identity.id),
                label: label.clone(),
                principal: format!("user:{}", u.identity.name),
            });
        }
    }
    for m in identities::list(broker.db(), PeerRole::Machine).await? {
        for g in &m.groups {
            groups.entry(g.clone()).or_default().machines.push(Member {
                href: "/admin/machines".to_owned(),
                label: m.name.clone(),
                principal: format!("machine:{}", m.name),
            });
        }
    }
    Ok(groups)
}

fn members(list: &[Member]) -> Markup {
    html! {
        @if list.is_empty() { span.muted { "none" } }
        @for m in list { a.tag href=(m.href) { (m.label) } " " }
    }
}

pub(crate) async fn page(State(broker): State<Broker>, Admin(viewer): Admin) -> Response {
    let groups = match collect(&broker).await {
        Ok(groups) => groups,
        Err(e) => return layout::internal(&e),
    };
    let engine = broker.policy().current();
    let inv = match inventory::inventory(broker.db(), &engine, None).await {
        Ok(inv) => inv,
        Err(e) => return layout::internal(&e),
    };
    let body = html! {
        p { "Every group a person or a machine is in. People get groups from the identity provider at sign-in "
            "or from an admin; change a machine's groups on " a href="/admin/machines" { "Machines" }
            " and a person's from their page under " a href="/admin/sessions" { "Users & sessions" } "." }
        @if groups.is_empty() {
            p.empty { "Nobody is in a group yet. Add a machine to one on the Machines page, or give people groups at the identity provider." }
        } @else {
            table #groups {
                thead { tr { th { "Group" } th { "People" } th { "Machines" } th { "Members" } th { "Services its members can reach" } } }
                tbody {
                    @for (name, g) in &groups {
                        tr data-group=(name) {
                            td { strong { (name) } }
                            td.people { (members(&g.people)) }
                            td.machines { (members(&g.machines)) }
                            td.num { (g.people.len() + g.machines.len()) }
                            td.reach { @let reach = g.reach(&inv); @if reach.is_empty() { span.muted { "nothing" } } @else { (reach.join(", ")) } }
                        }
                    }
                }
            }
        }
    };
    layout::page(&viewer, Nav::Groups, "Groups", body)
}
