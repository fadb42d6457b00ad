//! The device-code approval page (`/device`): the page a person opens in a
//! signed-in browser to let `palisade login --device` on another machine
//! sign in as them. It is a console page like any other (layout,
//! navigation, CSRF field, the console's security headers); the protocol
//! behind it (codes, binding, polling) is [`crate::login::device`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::layout::{self, Nav};
use super::viewer::Viewer;

/// What the page knows about the code in the address bar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// No code was given: ask for one.
    NoCode,
    /// A sign-in is waiting for this code; `from` is the CLI's address.
    Found { from: Option<String> },
    /// No unexpired, unused code matches.
    Unknown,
}

/// The approval form, with what is known about the waiting sign-in.
pub(crate) fn approve_page(viewer: &Viewer, code: &str, waiting: &Waiting, status: StatusCode) -> Response {
    let intro = match waiting {
        Waiting::NoCode => {
            html! { p { "Enter the code your terminal shows after " code { "palisade login --device" } "." } }
        }
        Waiting::Found { from } => html! {
            (layout::notice("info", &format!(
                "A command-line sign-in from {} is waiting for this code. Approve it only if you started it yourself.",
                from.as_deref().unwrap_or("an unknown address")
            )))
        },
        Waiting::Unknown => layout::notice(
            "error",
            "No sign-in is waiting for this code: it is mistyped, expired or already used. \
             Check the code in your terminal, or run palisade login --device again.",
        ),
    };
    let body = html! {
        section.card #device-approval {
            p { "Signed in as " strong #device-approver { (viewer.display_name()) } "." }
            (intro)
            (form(viewer, code))
            p.muted { "Approving gives that machine a session of its own, as you, ending no later than this one. "
                "You can revoke it under " a href="/portal/sessions" { "My sessions" } "." }
        }
    };
    (status, layout::page(viewer, Nav::None, "Approve a device", body)).into_response()
}

fn form(viewer: &Viewer, code: &str) -> Markup {
    html! {
        form.row #device-form method="post" action="/device/approve" {
            (layout::csrf(viewer))
            label for="user-code" { "Code" }
            input #user-code name="user_code" value=(code) required autocomplete="off" autocapitalize="characters"
                spellcheck="false" size="11" placeholder="WDJB-MJHT";
            button.primary #btn-approve type="submit" { "Approve" }
        }
    }
}

/// After an approval: back to the terminal.
pub(crate) fn approved_page(viewer: &Viewer, code: &str) -> Response {
    let body = html! {
        (layout::notice("ok", &format!("Approved {code}. Go back to your terminal: it finishes signing in within a few seconds.")))
        p { "The new session is listed under " a href="/portal/sessions" { "My sessions" } ", where you can revoke it." }
    };
    layout::page(viewer, Nav::None, "Device approved", body)
}

/// A refused approval: the form again with a message that does not say
/// which check failed beyond what the person can act on.
pub(crate) fn refused_page(viewer: &Viewer, code: &str, status: StatusCode) -> Response {
    if status == StatusCode::TOO_MANY_REQUESTS {
        let body = layout::notice("error", "Too many attempts from this address. Wait a minute and try again.");
        return (status, layout::page(viewer, Nav::None, "Approve a device", body)).into_response();
    }
    if status.is_server_error() {
        let body = layout::notice("error", "The broker could not finish this request and logged the cause. Try again.");
        return (status, layout::page(viewer, Nav::None, "Approve a device", body)).into_response();
    }
    approve_page(viewer, code, &Waiting::Unknown, status)
}
