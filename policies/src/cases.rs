//! Policy test cases: TOML files of requests and the decisions they expect.
//!
//! A case file carries its own service catalog and any number of cases:
//!
//! ```toml
//! [[service]]
//! name = "llm-prod"
//! segment = "inference"
//! protocol = "http"          # or "tcp"
//! labels = []                # optional
//!
//! [[case]]
//! name = "ml agent reaches llm"
//! principal = { kind = "machine", id = "m-1", name = "agent", groups = ["ml-agents"] }
//! service = "llm-prod"
//! expect = "allow"                            # or "deny"
//! expect_reason = "no_policy"                 # optional, deny code (DenyReason::code)
//! expect_policies = ["machines-inference"]    # optional, permitting or forbidding ids
//! expect_dry_run = "would_deny"               # optional: "would_allow", "would_deny" or "none"
//! http = { method = "POST", path = "/v1/chat" }   # optional: the `http` action instead of `connect`
//! # with the fields of a JSON request body (each optional; logprobs and stream default to false):
//! # http = { method = "POST", path = "/v1/chat", body = { model = "m", max_tokens = 64, n = 1, logprobs = true } }
//! [case.context]                              # optional, every key optional
//! mfa_age_secs = 600
//! auth_methods = ["oidc", "webauthn"]
//! source_ip = "10.0.0.7"
//! hour = 9                                    # UTC, default 12
//! day_of_week = 0                             # 0 = Monday, default 2
//! # now_unix_secs = 1700000000                # instead of hour/day_of_week
//! client_version = "0.1.0"
//! ```

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

use crate::source::{list_dir, read_text};
use crate::{
    AccessRequest, Action, BodyFields, Decision, DryRun, Engine, LoadError, PolicyBundle, PolicyFile, Principal,
    PrincipalKind, RequestContext, ServiceEntry,
};

/// A case file could not be run (as opposed to a case that failed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaseError {
    /// The file or directory could not be read.
    #[error(transparent)]
    Read(#[from] LoadError),
    /// The file is not a valid case file.
    #[error("{file}: {message}")]
    Parse {
        /// The case file's name.
        file: String,
        /// What is wrong (the TOML parser's message, with its location).
        message: String,
    },
    /// The file holds no `[[case]]`.
    #[error("{file}: no [[case]] in the file")]
    NoCases {
        /// The case file's name.
        file: String,
    },
    /// The policies, or the file's service catalog, were refused.
    #[error("{file}: {source}")]
    Engine {
        /// The case file's name.
        file: String,
        /// Why the engine could not be built.
        source: LoadError,
    },
    /// A case directory holds no `*.toml` file.
    #[error("no .toml case files in {}", dir.display())]
    NoCaseFiles {
        /// The directory that was read.
        dir: std::path::PathBuf,
    },
}

/// The results of one case file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseReport {
    /// The case file's name.
    pub file: String,
    /// One outcome per case, in file order.
    pub outcomes: Vec<CaseOutcome>,
}

/// The result of one case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseOutcome {
    /// The case's name.
    pub name: String,
    /// Whether the decision was as expected.
    pub passed: bool,
    /// The decision, or for a failure what was expected and what happened.
    pub detail: String,
}

impl CaseReport {
    /// Whether every case passed.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.outcomes.iter().all(|o| o.passed)
    }

    /// The cases that failed.
    pub fn failures(&self) -> impl Iterator<Item = &CaseOutcome> {
        self.outcomes.iter().filter(|o| !o.passed)
    }
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed = self.failures().count();
        let passed = self.outcomes.len() - failed;
        writeln!(f, "{}: {passed} passed, {failed} failed", self.file)?;
        for outcome in &self.outcomes {
            let mark = if outcome.passed { "ok  " } else { "FAIL" };
            writeln!(f, "  {mark} {}: {}", outcome.name, outcome.detail)?;
        }
        Ok(())
    }
}

/// Runs one case file against `engine_files`, using the file's own service
/// catalog.
///
/// # Errors
///
/// [`CaseError`] if the file cannot be read or parsed, holds no case, or
/// the policies or its catalog are refused. Failing cases are not errors:
/// they are in the report.
pub fn run_case_file(engine_files: &[PolicyFile], case_path: &Path) -> Result<CaseReport, CaseError> {
    let text = read_text(case_path)?;
    let name =
        case_path.file_name().map_or_else(|| case_path.display().to_string(), |n| n.to_string_lossy().into_owned());
    run_cases(engine_files, &name, &text)
}

/// Runs every `*.toml` case file in `dir`, in name order.
///
/// # Errors
///
/// [`CaseError::NoCaseFiles`] for a directory without case files, and the
/// errors of [`run_case_file`].
pub fn run_case_dir(engine_files: &[PolicyFile], dir: &Path) -> Result<Vec<CaseReport>, CaseError> {
    let files = list_dir(dir, "toml")?;
    if files.is_empty() {
        return Err(CaseError::NoCaseFiles { dir: dir.to_path_buf() });
    }
    files.iter().map(|(_, path)| run_case_file(engine_files, path)).collect()
}

/// Runs the cases in `text` (a case file's content, named `file` in
/// messages) against `engine_files`.
///
/// # Errors
///
/// As [`run_case_file`], except reading.
pub fn run_cases(engine_files: &[PolicyFile], file: &str, text: &str) -> Result<CaseReport, CaseError> {
    let parsed: CaseFile =
        toml::from_str(text).map_err(|e| CaseError::Parse { file: file.to_owned(), message: e.to_string() })?;
    if parsed.cases.is_empty() {
        return Err(CaseError::NoCases { file: file.to_owned() });
    }
    let bundle = PolicyBundle { version: 0, files: engine_files.to_vec(), services: parsed.services };
    let engine = Engine::new(&bundle).map_err(|source| CaseError::Engine { file: file.to_owned(), source })?;
    let outcomes = parsed.cases.iter().map(|case| run_one(&engine, case)).collect();
    Ok(CaseReport { file: file.to_owned(), outcomes })
}

fn run_one(engine: &Engine, case: &Case) -> CaseOutcome {
    let result = case.context.to_request_context().and_then(|context| {
        let principal = case.principal.to_principal();
        let action = match &case.http {
            Some(call) => Action::Http {
                method: call.method.clone(),
                path: call.path.clone(),
                body: call.body.as_ref().map(CaseBody::to_fields),
            },
            None => Action::Connect,
        };
        let request = AccessRequest { principal: &principal, action, service: &case.service, context: &context };
        let verdict = engine.verdict(&request);
        let detail = check(case, &verdict.decision)?;
        check_dry_run(case, verdict.dry_run.as_ref()).map(|()| detail)
    });
    let (passed, detail) = match result {
        Ok(detail) => (true, detail),
        Err(detail) => (false, detail),
    };
    CaseOutcome { name: case.name.clone(), passed, detail }
}

/// `Ok(description)` if the decision is what the case expects.
fn check(case: &Case, decision: &Decision) -> Result<String, String> {
    let actual = describe(decision);
    let expected_allow = matches!(case.expect, Expect::Allow);
    if expected_allow != decision.is_allow() {
        let expected = if expected_allow { "allow" } else { "deny" };
        return Err(format!("expected {expected}, got {actual}"));
    }
    if let Some(code) = &case.expect_reason
        && decision.code() != code
    {
        return Err(format!("expected reason {code}, got {actual}"));
    }
    if let Some(expected) = &case.expect_policies {
        let mut expected = expected.clone();
        expected.sort();
        let got = match decision {
            Decision::Allow(grant) => grant.policy_ids(),
            Decision::Deny(reason) => reason.policy_ids(),
        };
        if got != expected.as_slice() {
            return Err(format!("expected policies [{}], got {actual}", expected.join(", ")));
        }
    }
    Ok(actual)
}

/// `Ok` if the dry-run policies did what the case expects (or it expects nothing).
fn check_dry_run(case: &Case, dry_run: Option<&DryRun>) -> Result<(), String> {
    let Some(expected) = case.expect_dry_run.as_deref() else {
        return Ok(());
    };
    let actual = dry_run.map_or("none", DryRun::outcome);
    if expected == actual {
        return Ok(());
    }
    let ids = dry_run.map(|d| d.policy_ids().join(", ")).unwrap_or_default();
    Err(format!("expected dry run {expected}, got {actual} [{ids}]"))
}

fn describe(decision: &Decision) -> String {
    match decision {
        Decision::Allow(grant) => format!("allow by {}", grant.policy_ids().join(", ")),
        Decision::Deny(reason) => format!("deny ({}): {reason}", reason.code()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default, rename = "service")]
    services: Vec<ServiceEntry>,
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    principal: CasePrincipal,
    service: String,
    http: Option<HttpCall>,
    expect: Expect,
    expect_reason: Option<String>,
    expect_policies: Option<Vec<String>>,
    #[serde(default, deserialize_with = "dry_run_expectation")]
    expect_dry_run: Option<String>,
    #[serde(default)]
    context: CaseContext,
}

fn dry_run_expectation<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let value = String::deserialize(deserializer)?;
    match value.as_str() {
        "would_allow" | "would_deny" | "none" => Ok(Some(value)),
        _ => Err(serde::de::Error::custom("expect_dry_run must be \"would_allow\", \"would_deny\" or \"none\"")),
    }
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpCall {
    method: String,
    path: String,
    body: Option<CaseBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseBody {
    model: Option<String>,
    max_tokens: Option<u64>,
    n: Option<u64>,
    #[serde(default)]
    logprobs: bool,
    #[serde(default)]
    stream: bool,
}

impl CaseBody {
    fn to_fields(&self) -> BodyFields {
        BodyFields {
            model: self.model.clone(),
            max_tokens: self.max_tokens,
            n: self.n,
            logprobs: self.logprobs,
            stream: self.stream,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasePrincipal {
    kind: CaseKind,
    id: String,
    name: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CaseKind {
    User,
    Machine,
}

impl CasePrincipal {
    fn to_principal(&self) -> Principal {
        Principal {
            kind: match self.kind {
                CaseKind::User => PrincipalKind::User,
                CaseKind::Machine => PrincipalKind::Machine,
            },
            id: self.id.clone(),
            name: self.name.clone().unwrap_or_else(|| self.id.clone()),
            groups: self.groups.clone(),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseContext {
    mfa_age_secs: Option<u64>,
    #[serde(default)]
    auth_methods: Vec<String>,
    source_ip: Option<IpAddr>,
    hour: Option<u64>,
    day_of_week: Option<u64>,
    now_unix_secs: Option<u64>,
    client_version: Option<String>,
}

/// 1970-01-05 00:00 UTC, the first Monday of the epoch.
const FIRST_MONDAY: u64 = 4 * 86_400;

impl CaseContext {
    fn to_request_context(&self) -> Result<RequestContext, String> {
        Ok(RequestContext {
            mfa_age_secs: self.mfa_age_secs,
            auth_methods: self.auth_methods.clone(),
            source_ip: self.source_ip,
            now_unix_secs: self.now()?,
            client_version: self.client_version.clone(),
        })
    }

    fn now(&self) -> Result<u64, String> {
        if let Some(now) = self.now_unix_secs {
            if self.hour.is_some() || self.day_of_week.is_some() {
                return Err("invalid case: give now_unix_secs or hour/day_of_week, not both".into());
            }
            return Ok(now);
        }
        let hour = self.hour.unwrap_or(12);
        let day = self.day_of_week.unwrap_or(2);
        if hour > 23 || day > 6 {
            return Err("invalid case: hour must be 0..=23 and day_of_week 0..=6".into());
        }
        Ok(FIRST_MONDAY + day * 86_400 + hour * 3_600)
    }
}
