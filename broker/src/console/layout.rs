//! The page frame every console page shares: header, navigation, the CSRF
//! field for forms, and the error pages. maud escapes every interpolated
//! value, so text from a person or an identity provider is always text.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::viewer::Viewer;

/// Where a page sits in the navigation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Nav {
    Services,
    MySessions,
    Passkeys,
    Overview,
    Policies,
    People,
    Machines,
    Groups,
    Connectors,
    Audit,
    None,
}

const PORTAL_LINKS: [(Nav, &str, &str); 3] = [
    (Nav::Services, "/portal", "My services"),
    (Nav::MySessions, "/portal/sessions", "My sessions"),
    (Nav::Passkeys, "/portal/passkeys", "Passkeys"),
];

const ADMIN_LINKS: [(Nav, &str, &str); 7] = [
    (Nav::Overview, "/admin", "Overview"),
    (Nav::Policies, "/admin/policies", "Policies"),
    (Nav::People, "/admin/sessions", "Users & sessions"),
    (Nav::Machines, "/admin/machines", "Machines"),
    (Nav::Groups, "/admin/groups", "Groups"),
    (Nav::Connectors, "/admin/connectors", "Connectors & services"),
    (Nav::Audit, "/admin/audit", "Audit"),
];

/// A whole page for a signed-in person.
pub(crate) fn page(viewer: &Viewer, nav: Nav, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Palisade" }
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/console.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/portal" { "Palisade" }
                    nav aria-label="Main" {
                        ul {
                            @for (id, href, label) in PORTAL_LINKS { (link(nav, id, href, label)) }
                            @if viewer.admin {
                                li.sep aria-hidden="true" { "|" }
                                @for (id, href, label) in ADMIN_LINKS { (link(nav, id, href, label)) }
                            }
                        }
                    }
                    div.me {
                        span #whoami { (viewer.display_name()) }
                        form method="post" action="/portal/logout" {
                            (csrf(viewer))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main #content { h1 { (title) } (body) }
            }
        }
    };
    Html(markup.into_string()).into_response()
}

fn link(current: Nav, id: Nav, href: &str, label: &str) -> Markup {
    html! {
        li { a href=(href) aria-current=[(current == id).then_some("page")] { (label) } }
    }
}

/// The hidden CSRF field every form carries.
pub(crate) fn csrf(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

/// A small form with one button that posts to `action`.
pub(crate) fn button_form(viewer: &Viewer, action: &str, label: &str, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf(viewer))
            button type="submit" class=(class) { (label) }
        }
    }
}

/// A page without navigation (errors, sign-in prompts).
pub(crate) fn bare(status: StatusCode, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Palisade" }
                link rel="stylesheet" href="/console/static/console.css";
            }
            body { main.narrow { h1 { (title) } (body) } }
        }
    };
    (status, Html(markup.into_string())).into_response()
}

/// 401: the same page whatever was missing.
pub(crate) fn unauthorized() -> Response {
    bare(
        StatusCode::UNAUTHORIZED,
        "Sign-in required",
        html! { p { "Sign in to continue." } p { a.button href="/login?return_to=/portal" { "Sign in" } } },
    )
}

/// 403: the same page whatever check failed.
pub(crate) fn forbidden() -> Response {
    bare(
        StatusCode::FORBIDDEN,
        "Not allowed",
        html! { p { "You cannot do this from here." } p { a href="/portal" { "Back to your portal" } } },
    )
}

/// 404.
pub(crate) fn not_found() -> Response {
    bare(StatusCode::NOT_FOUND, "Not found", html! { p { "There is nothing here." } p { a href="/portal" { "Back" } } })
}

/// 500 with an opaque body; the cause goes to the log.
pub(crate) fn internal(cause: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %cause, "console request failed");
    bare(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        html! { p { "The broker could not finish this request and logged the cause. Try again." } },
    )
}

/// A notice box: `kind` is `ok`, `error` or `info`.
pub(crate) fn notice(kind: &str, text: &str) -> Markup {
    html! { div class={ "notice " (kind) } role=(if kind == "error" { "alert" } else { "status" }) { (text) } }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn when(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string().replace('T', " ").replace('Z', " UTC")
}

/// Milliseconds since the epoch, as [`when`].
pub(crate) fn when_ms(ms: i64) -> String {
    when(ms / 1000)
}
