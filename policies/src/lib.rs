//! Palisade's policy engine: the Cedar schema, policy loading and
//! validation, and the decision the broker and the connector both make
//! before a tunnel opens.
//!
//! The engine is pure: it takes the time as an argument and does no IO,
//! except [`read_policy_dir`] and the case runner, which read files.
//!
//! # Schema
//!
//! The schema ([`SCHEMA_TEXT`], `policies/schema.cedarschema`) has no
//! namespace. Policies name:
//!
//! | entity | attributes | parents |
//! |---|---|---|
//! | `User::"<id>"` | `email?`, `idp?`, `device?` (String) | `Group` |
//! | `Machine::"<id>"` | `name` (String) | `Group` |
//! | `Group::"<name>"` | — | `Group` |
//! | `Service::"<name>"` | `protocol` (`"tcp"`/`"http"`), `labels` (Set of String) | `Segment` |
//! | `Segment::"<name>"` | — | — |
//!
//! and two actions, for principals `User` and `Machine` on a `Service`:
//!
//! - `Action::"connect"`: open a tunnel. Context: `mfa_age_secs?` (Long),
//!   `auth_methods` (Set of String), `source_ip?` (ipaddr), `hour` (Long,
//!   0–23 UTC), `day_of_week` (Long, 0 = Monday … 6 = Sunday),
//!   `client_version?` (String).
//! - `Action::"http"`: one HTTP request; the same context plus `method`
//!   and `path` (String).
//!
//! # Policy ids
//!
//! A policy's id is its `@id("...")` annotation, which must be unique
//! across the bundle, or else `<file name>:<line>`. Decisions report these
//! ids.
//!
//! # Dry-run policies
//!
//! A policy annotated `@mode("dry_run")` is validated like any other but
//! never changes a decision. [`Engine::verdict`] reports the dry-run
//! policies that matched and whether enforcing them would allow or deny
//! ([`DryRun`]); the broker puts that in the decision's audit event. Any
//! `@mode` other than `"enforce"` or `"dry_run"` is refused.
//!
//! # Caching
//!
//! [`DecisionCache`] keeps verdicts per principal, service, action and the
//! context fields the policies read, for one engine (version and digest) at
//! a time.
//!
//! # Deciding
//!
//! ```
//! use palisade_policies::{
//!     AccessRequest, Action, Decision, Engine, PolicyBundle, PolicyFile, Principal,
//!     PrincipalKind, RequestContext, ServiceEntry,
//! };
//!
//! let bundle = PolicyBundle {
//!     version: 7,
//!     files: vec![PolicyFile {
//!         name: "agents.cedar".into(),
//!         text: r#"@id("agents") permit (principal in Group::"ml-agents",
//!                   action == Action::"connect", resource in Segment::"inference");"#.into(),
//!     }],
//!     services: vec![ServiceEntry {
//!         name: "llm-prod".into(),
//!         segment: "inference".into(),
//!         protocol: "http".into(),
//!         labels: vec![],
//!     }],
//! };
//! let engine = Engine::new(&bundle)?;
//! let agent = Principal {
//!     kind: PrincipalKind::Machine,
//!     id: "m-1".into(),
//!     name: "summariser".into(),
//!     groups: vec!["ml-agents".into()],
//! };
//! let context = RequestContext { now_unix_secs: 1_700_000_000, ..RequestContext::default() };
//! let request = AccessRequest { principal: &agent, action: Action::Connect, service: "llm-prod", context: &context };
//! match engine.decide(&request) {
//!     Decision::Allow(grant) => assert_eq!(grant.policy_ids(), ["agents"]),
//!     Decision::Deny(reason) => panic!("{reason}"),
//! }
//! # Ok::<(), palisade_policies::LoadError>(())
//! ```

mod bundle;
mod cache;
mod cases;
mod compare;
mod compile;
mod decision;
mod dry_run;
mod engine;
mod error;
mod explain;
mod request;
mod schema;
mod source;

pub use bundle::{PolicyBundle, PolicyFile, ServiceEntry};
pub use cache::{ContextUse, DecisionCache};
pub use cases::{CaseError, CaseOutcome, CaseReport, run_case_dir, run_case_file, run_cases};
pub use compare::{AccessChange, Comparison, compare};
pub use compile::{DRY_RUN_MODE, MAX_FILE_BYTES, MAX_NESTING, MODE_ANNOTATION, PolicyEffect, PolicyInfo};
pub use decision::{Decision, DenyReason, Grant};
pub use dry_run::{DryRun, Verdict};
pub use engine::Engine;
pub use error::LoadError;
pub use explain::{Explanation, PolicyOutcome, PolicyTrace, ScopePart};
pub use request::{AccessRequest, Action, BodyFields, Principal, PrincipalKind, RequestContext};
pub use schema::{SCHEMA_TEXT, schema};
pub use source::read_policy_dir;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod what_if_tests;
