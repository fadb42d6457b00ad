//! Policies: edit one Cedar file of the active set, then validate it (errors
//! shown at their line), diff it against the active set, run the policy
//! tests, preview who gains or loses what, or apply it with a comment.
//! Applying stores a new version (refused if another admin applied first)
//! and makes the running broker decide with it at once, which re-decides
//! every live tunnel (other replicas follow the store within a moment).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Form;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use palisade_policies::{Action, PolicyFile, RequestContext, compare, run_case_dir};
use serde::Deserialize;

use crate::Broker;
use crate::console::layout::{self, Nav};
use crate::console::stepup;
use crate::console::viewer::{Admin, Viewer};
use crate::policy_store::{self, PolicyStoreError, Proposal};

/// `GET /admin/policies` query.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Select {
    file: Option<String>,
    applied: Option<u64>,
}

/// The editor form.
#[derive(Debug, Deserialize)]
pub(crate) struct Edit {
    file: String,
    text: String,
    #[serde(default)]
    parent: String,
    #[serde(default)]
    comment: String,
    action: String,
}

/// The set the broker decides with now, and the store version it came from.
async fn active_set(broker: &Broker) -> Result<(Option<u64>, Vec<PolicyFile>), PolicyStoreError> {
    let version = policy_store::active_version(broker.db()).await?;
    Ok((version, broker.policy().current().bundle().files.clone()))
}

pub(crate) async fn page(State(broker): State<Broker>, Admin(viewer): Admin, Query(q): Query<Select>) -> Response {
    let (parent, files) = match active_set(&broker).await {
        Ok(found) => found,
        Err(e) => return layout::internal(&e),
    };
    let file = q.file.filter(|f| files.iter().any(|x| x.name == *f)).or_else(|| files.first().map(|f| f.name.clone()));
    let file = file.unwrap_or_else(|| "main.cedar".to_owned());
    let text = files.iter().find(|f| f.name == file).map(|f| f.text.clone()).unwrap_or_default();
    let edit = Edit {
        file,
        text,
        parent: parent.map(|p| p.to_string()).unwrap_or_default(),
        comment: String::new(),
        action: String::new(),
    };
    let result = q.applied.map(|v| layout::notice("ok", &format!("Version {v} is active.")));
    render(&viewer, &files, &edit, result.unwrap_or_default(), None)
}

fn render(viewer: &Viewer, files: &[PolicyFile], edit: &Edit, result: Markup, error_line: Option<usize>) -> Response {
    let body = html! {
        (stepup::banner(viewer, "/admin/policies"))
        nav.tabs aria-label="Policy files" {
            @for f in files {
                a href={ "/admin/policies?file=" (f.name) } aria-current=[(f.name == edit.file).then_some("page")] { (f.name) }
            }
            a href="/admin/policies/history" { "History" }
        }
        div #policy-result { (result) }
        @if let Some(line) = error_line { (listing(&edit.text, line)) }
        form.editor method="post" action="/admin/policies" {
            (layout::csrf(viewer))
            input type="hidden" name="parent" value=(edit.parent);
            label for="policy-file" { "File" }
            input #policy-file name="file" value=(edit.file) pattern="[A-Za-z0-9_.-]+\\.cedar" required;
            label for="policy-text" { "Cedar policies" }
            textarea #policy-text name="text" rows="22" spellcheck="false" { (edit.text) }
            label for="policy-comment" { "Comment (why this change)" }
            input #policy-comment name="comment" value=(edit.comment) placeholder="e.g. ticket SEC-123: remove contractor access";
            div.actions {
                button name="action" value="validate" #btn-validate { "Validate" }
                button name="action" value="diff" #btn-diff { "Diff against active" }
                button name="action" value="test" #btn-test { "Run tests" }
                button name="action" value="preview" #btn-preview { "Who gains or loses" }
                button.primary name="action" value="apply" #btn-apply { "Apply" }
            }
        }
        (explain_form())
    };
    layout::page(viewer, Nav::Policies, "Policies", body)
}

fn explain_form() -> Markup {
    html! {
        section.card {
            h2 { "Explain a decision" }
            form.row method="get" action="/admin/policies/explain" {
                label for="explain-principal" { "Who" }
                input #explain-principal name="principal" placeholder="user:alice@example.com or machine:ci-runner" required;
                label for="explain-service" { "Service" }
                input #explain-service name="service" required;
                button type="submit" { "Explain" }
            }
        }
    }
}

/// The edited text with line numbers, the failing line marked.
fn listing(text: &str, error_line: usize) -> Markup {
    html! {
        ol.code #policy-listing {
            @for (i, line) in text.lines().enumerate() {
                @if i + 1 == error_line {
                    li.error-line #error-line data-line=(i + 1) { code { (line) } }
                } @else {
                    li data-line=(i + 1) { code { (line) } }
                }
            }
        }
    }
}

/// `file:line:` at the start of a validation message, if it names `file`.
pub(crate) fn error_line(message: &str, file: &str) -> Option<usize> {
    let rest = message.strip_prefix("policy set refused: ").unwrap_or(message);
    let rest = rest.strip_prefix(file)?.strip_prefix(':')?;
    rest.split(':').next()?.trim().parse().ok()
}

fn proposed(files: &[PolicyFile], edit: &Edit) -> Vec<PolicyFile> {
    let mut out: Vec<PolicyFile> = files.iter().filter(|f| f.name != edit.file).cloned().collect();
    out.push(PolicyFile { name: edit.file.clone(), text: edit.text.replace("\r\n", "\n") });
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub(crate) async fn submit(State(broker): State<Broker>, Admin(viewer): Admin, Form(mut edit): Form<Edit>) -> Response {
    edit.text = edit.text.replace("\r\n", "\n");
    let (_, active) = match active_set(&broker).await {
        Ok(found) => found,
        Err(e) => return layout::internal(&e),
    };
    let files = proposed(&active, &edit);
    let services = broker.policy().current().bundle().services.clone();
    if edit.action == "apply" {
        return apply(&broker, &viewer, &active, &files, &edit).await;
    }
    let validated = policy_store::validate(&files, &services, None);
    let (result, line) = match (&validated, edit.action.as_str()) {
        (Err(e), _) => refused(e, &edit.file),
        (Ok(_), "diff") => (diff(&active, &files), None),
        (Ok(_), "test") => (tests(&broker, &files), None),
        (Ok(after), "preview") => (preview(&broker, after).await, None),
        (Ok(_), _) => (layout::notice("ok", "The policy set is valid."), None),
    };
    render(&viewer, &active, &edit, result, line)
}

fn refused(e: &PolicyStoreError, file: &str) -> (Markup, Option<usize>) {
    let message = e.to_string();
    let line = error_line(&message, file);
    let text = match line {
        Some(line) => format!("Line {line}: {message}"),
        None => message,
    };
    (layout::notice("error", &text), line)
}

fn diff(active: &[PolicyFile], files: &[PolicyFile]) -> Markup {
    let diffs = policy_store::diff_files(active, files);
    let text = policy_store::render_diff(&diffs, "active", "edited");
    html! {
        @if text.trim().is_empty() { (layout::notice("info", "No change against the active set.")) }
        @else { pre.diff #policy-diff { (text) } }
    }
}

fn tests(broker: &Broker, files: &[PolicyFile]) -> Markup {
    let dir = broker.config().policy_dir.join("cases");
    if !dir.is_dir() {
        return layout::notice("info", &format!("No policy tests: put *.toml cases in {}.", dir.display()));
    }
    match run_case_dir(files, &dir) {
        Ok(reports) => {
            let passed = reports.iter().all(palisade_policies::CaseReport::passed);
            let summary = if passed { "All policy tests pass." } else { "Some policy tests fail." };
            let text: String = reports.iter().map(ToString::to_string).collect();
            html! { (layout::notice(if passed { "ok" } else { "error" }, summary)) pre #policy-tests { (text) } }
        }
        Err(e) => layout::notice("error", &e.to_string()),
    }
}

async fn preview(broker: &Broker, after: &palisade_policies::Engine) -> Markup {
    let principals = match policy_store::known_principals(broker.db()).await {
        Ok(p) => p,
        Err(e) => return layout::notice("error", &format!("could not list identities: {e}")),
    };
    let before = broker.policy().current();
    let names: Vec<String> = before.bundle().services.iter().map(|s| s.name.clone()).collect();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let context = RequestContext {
        mfa_age_secs: Some(0),
        auth_methods: vec!["oidc".into(), "webauthn".into()],
        source_ip: None,
        now_unix_secs: now,
        client_version: None,
    };
    let result = compare(&before, after, &principals, &names, &Action::Connect, &context);
    html! {
        p { "Decided " (result.pairs) " identity × service pairs, as if each had just signed in with a passkey." }
        @if result.is_unchanged() { (layout::notice("info", "Nobody gains or loses access.")) }
        table #policy-preview {
            thead { tr { th { "Change" } th { "Who" } th { "Service" } } }
            tbody {
                @for c in &result.gained { tr { td.ok { "gains" } td { (c.principal.name) } td { (c.service) } } }
                @for c in &result.lost { tr { td.bad { "loses" } td { (c.principal.name) } td { (c.service) } } }
            }
        }
    }
}

async fn apply(broker: &Broker, viewer: &Viewer, active: &[PolicyFile], files: &[PolicyFile], edit: &Edit) -> Response {
    if !viewer.fresh() {
        let note = html! { div.notice.error role="alert" { "Confirm with your passkey before applying. "
        a href=(stepup::link("/admin/policies")) { "Confirm now" } } };
        return render(viewer, active, edit, note, None);
    }
    if edit.comment.trim().is_empty() {
        return render(viewer, active, edit, layout::notice("error", "Say why in the comment before applying."), None);
    }
    let parent = edit.parent.parse::<u64>().ok();
    let services = broker.policy().current().bundle().services.clone();
    let author = viewer.email.clone().unwrap_or_else(|| viewer.identity.name.clone());
    let dir = broker.config().policy_dir.join("cases");
    let cases = dir.is_dir().then_some(dir.as_path());
    let proposal = Proposal {
        files,
        parent,
        author: &author,
        comment: edit.comment.trim(),
        services: &services,
        cases_dir: cases,
    };
    match policy_store::apply(broker.db(), &proposal).await {
        Ok(info) => match activate(broker).await {
            Ok(()) => Redirect::to(&format!("/admin/policies?applied={}", info.version)).into_response(),
            Err(message) => render(viewer, active, edit, layout::notice("error", &message), None),
        },
        Err(e @ (PolicyStoreError::Db(_) | PolicyStoreError::Audit(_))) => layout::internal(&e),
        Err(e) => {
            let (markup, line) = refused(&e, &edit.file);
            render(viewer, active, edit, markup, line)
        }
    }
}

/// Makes the running broker decide with the store's active version now
/// (its follower would within a moment; this makes the page's answer true).
pub(crate) async fn activate(broker: &Broker) -> Result<(), String> {
    broker
        .policy()
        .sync()
        .await
        .map(|_| ())
        .map_err(|e| format!("the version is stored but the broker could not load it yet: {e}"))
}

#[cfg(test)]
mod tests {
    use super::error_line;

    #[test]
    fn error_line_reads_the_file_and_line_prefix() {
        assert_eq!(error_line("policy set refused: a.cedar:7:3: syntax error: x", "a.cedar"), Some(7));
        assert_eq!(error_line("a.cedar:12: @id must not be empty", "a.cedar"), Some(12));
        assert_eq!(error_line("policy set refused: b.cedar:7:3: syntax error", "a.cedar"), None);
        assert_eq!(error_line("policy set refused: it holds no policy file", "a.cedar"), None);
    }
}
