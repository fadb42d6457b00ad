//! Policy files -> one validated Cedar `PolicySet` with our policy ids.
//!
//! Cedar names the policies of each parsed text `policy0`, `policy1`, …, so
//! every policy is re-id'd (its `@id`, else `<file>:<line>`) before the
//! files are merged; the ids Cedar reports in a decision are then ours.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{ParseErrors, Policy, PolicyId, PolicySet, ValidationMode};
use miette::Diagnostic;

use crate::schema::Vocabulary;
use crate::{LoadError, PolicyFile};

/// Where a policy came from, and what it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyInfo {
    /// The policy's id: its `@id("...")` annotation, else `<file>:<line>`.
    pub id: String,
    /// The name of the file that holds it.
    pub file: String,
    /// 1-based line where the policy starts.
    pub line: usize,
    /// 1-based column where the policy starts.
    pub column: usize,
    /// Whether it permits or forbids.
    pub effect: PolicyEffect,
    /// Annotated `@mode("dry_run")`: it never changes a decision; its
    /// matches are reported as "would allow" / "would deny".
    pub dry_run: bool,
}

/// The annotation that marks a policy as audit-only.
pub const MODE_ANNOTATION: &str = "mode";
/// The `@mode` value of an audit-only policy; `"enforce"` is the default.
pub const DRY_RUN_MODE: &str = "dry_run";

/// A policy's effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyEffect {
    /// `permit (...)`.
    Permit,
    /// `forbid (...)`: wins over every permit.
    Forbid,
}

pub(crate) struct Compiled {
    /// Every policy, enforced or not (the explainer traces them all).
    pub(crate) all: PolicySet,
    /// The policies that decide.
    pub(crate) set: PolicySet,
    /// Dry-run permits and forbids, evaluated apart so every match is seen.
    pub(crate) dry_permits: PolicySet,
    pub(crate) dry_forbids: PolicySet,
    pub(crate) policies: Vec<PolicyInfo>,
}

pub(crate) fn compile(files: &[PolicyFile], vocab: &Vocabulary) -> Result<Compiled, LoadError> {
    let mut names = HashSet::new();
    if let Some(file) = files.iter().find(|f| !names.insert(f.name.as_str())) {
        return Err(LoadError::DuplicateFile { name: file.name.clone() });
    }
    let mut compiled = Compiled {
        all: PolicySet::new(),
        set: PolicySet::new(),
        dry_permits: PolicySet::new(),
        dry_forbids: PolicySet::new(),
        policies: Vec::new(),
    };
    let mut owner: HashMap<String, String> = HashMap::new();
    for file in files {
        check_shape(file)?;
        let parsed = parse_file(file)?;
        let mut file_set = PolicySet::new();
        for (policy, info) in &parsed {
            if let Some(first) = owner.insert(info.id.clone(), file.name.clone()) {
                return Err(duplicate(&info.id, first, &file.name));
            }
            let twice = || duplicate(&info.id, file.name.clone(), &file.name);
            file_set.add(policy.clone()).map_err(|_| twice())?;
            compiled.all.add(policy.clone()).map_err(|_| twice())?;
            let target = match (info.dry_run, info.effect) {
                (false, _) => &mut compiled.set,
                (true, PolicyEffect::Permit) => &mut compiled.dry_permits,
                (true, PolicyEffect::Forbid) => &mut compiled.dry_forbids,
            };
            target.add(policy.clone()).map_err(|_| twice())?;
        }
        let infos: Vec<PolicyInfo> = parsed.into_iter().map(|(_, info)| info).collect();
        validate_file(file, &file_set, &infos, vocab)?;
        compiled.policies.extend(infos);
    }
    Ok(compiled)
}

fn duplicate(id: &str, first: String, second: &str) -> LoadError {
    LoadError::DuplicatePolicyId { id: id.to_owned(), files: vec![first, second.to_owned()] }
}

/// How deep brackets and `if`s may nest in a file. Cedar parses and
/// validates recursively; about 200 levels exhaust a 2 MiB Tokio worker
/// stack in a debug build. Real policies stay under ten.
pub const MAX_NESTING: usize = 32;

/// The largest policy file accepted.
pub const MAX_FILE_BYTES: usize = 8 * 1024 * 1024;

/// Refuses a file that is too large or nests too deeply, before Cedar sees
/// it. Nesting counts open brackets plus the `if`s of the current policy,
/// outside string literals and comments.
fn check_shape(file: &PolicyFile) -> Result<(), LoadError> {
    let text = file.text.as_bytes();
    if text.len() > MAX_FILE_BYTES {
        return Err(LoadError::TooLarge { file: file.name.clone(), bytes: text.len(), limit: MAX_FILE_BYTES });
    }
    let (mut brackets, mut ifs, mut at) = (0usize, 0usize, 0usize);
    while let Some(&byte) = text.get(at) {
        match byte {
            b'"' => at = skip_string(text, at + 1),
            b'/' if text.get(at + 1) == Some(&b'/') => {
                at = text[at..].iter().position(|&b| b == b'\n').map_or(text.len(), |end| at + end);
            }
            b'(' | b'[' | b'{' => brackets += 1,
            b')' | b']' | b'}' => brackets = brackets.saturating_sub(1),
            b';' if brackets == 0 => ifs = 0,
            b'i' if is_if_keyword(text, at) => ifs += 1,
            _ => {}
        }
        if brackets + ifs > MAX_NESTING {
            let (line, column) = line_column(&file.text, at);
            return Err(LoadError::TooDeep { file: file.name.clone(), line, column, limit: MAX_NESTING });
        }
        at += 1;
    }
    Ok(())
}

/// The index of the closing quote of a string literal that starts at `at`.
fn skip_string(text: &[u8], mut at: usize) -> usize {
    while let Some(&byte) = text.get(at) {
        match byte {
            b'\\' => at += 2,
            b'"' => return at,
            _ => at += 1,
        }
    }
    text.len()
}

fn is_if_keyword(text: &[u8], at: usize) -> bool {
    let word = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
    text.get(at..at + 2) == Some(b"if") && !word(at.checked_sub(1).and_then(|i| text.get(i))) && !word(text.get(at + 2))
}

/// Parses one file into its policies, re-id'd, in source order.
fn parse_file(file: &PolicyFile) -> Result<Vec<(Policy, PolicyInfo)>, LoadError> {
    let parsed = PolicySet::from_str(&file.text).map_err(|errors| parse_error(file, &errors))?;
    if let Some(template) = parsed.templates().next() {
        let offset = find_text(&file.text, 0, &template.to_cedar()).unwrap_or(0);
        let (line, column) = line_column(&file.text, offset);
        return Err(LoadError::Template { file: file.name.clone(), line, column });
    }

    let mut ordered: Vec<&Policy> = parsed.policies().collect();
    ordered.sort_by_key(|p| generated_index(p.id()));
    let mut cursor = 0;
    let mut out = Vec::with_capacity(ordered.len());
    for policy in ordered {
        // Each policy's text is the exact slice of the file it was parsed
        // from, and the slices come in file order.
        let text = policy.to_cedar().unwrap_or_default();
        let offset = find_text(&file.text, cursor, &text).unwrap_or(cursor);
        cursor = offset + text.len();
        let (line, column) = line_column(&file.text, offset);
        let id = policy_id(file, policy, line)?;
        let dry_run = dry_run(file, policy, line)?;
        let effect = match policy.effect() {
            cedar_policy::Effect::Permit => PolicyEffect::Permit,
            cedar_policy::Effect::Forbid => PolicyEffect::Forbid,
        };
        let renamed = policy.new_id(PolicyId::new(&id));
        let file = file.name.clone();
        out.push((renamed, PolicyInfo { id, file, line, column, effect, dry_run }));
    }
    Ok(out)
}

fn parse_error(file: &PolicyFile, errors: &ParseErrors) -> LoadError {
    let first = errors.iter().next();
    let offset = first.and_then(first_label_offset).unwrap_or(0);
    let (line, column) = line_column(&file.text, offset);
    LoadError::Parse {
        file: file.name.clone(),
        line,
        column,
        message: first.map_or_else(|| errors.to_string(), diagnostic_message),
    }
}

fn policy_id(file: &PolicyFile, policy: &Policy, line: usize) -> Result<String, LoadError> {
    match policy.annotation("id") {
        Some(id) if id.trim().is_empty() => Err(LoadError::EmptyPolicyId { file: file.name.clone(), line }),
        Some(id) => Ok(id.to_owned()),
        None => Ok(format!("{}:{line}", file.name)),
    }
}

/// Whether `@mode(...)` makes the policy audit-only; an unknown mode is
/// refused rather than guessed (a typo must not silently enforce or not).
fn dry_run(file: &PolicyFile, policy: &Policy, line: usize) -> Result<bool, LoadError> {
    match policy.annotation(MODE_ANNOTATION) {
        None | Some("enforce") => Ok(false),
        Some(DRY_RUN_MODE) => Ok(true),
        Some(other) => Err(LoadError::UnknownMode { file: file.name.clone(), line, mode: other.to_owned() }),
    }
}

/// Cedar's generated ids are `policy<N>` in source order.
fn generated_index(id: &PolicyId) -> (usize, String) {
    let id: &str = id.as_ref();
    let index = id.strip_prefix("policy").and_then(|n| n.parse().ok()).unwrap_or(usize::MAX);
    (index, id.to_owned())
}

fn validate_file(
    file: &PolicyFile,
    set: &PolicySet,
    infos: &[PolicyInfo],
    vocab: &Vocabulary,
) -> Result<(), LoadError> {
    let result = vocab.validator.validate(set, ValidationMode::Strict);
    let Some(error) = result.validation_errors().next() else {
        return Ok(());
    };
    let policy_id = error.policy_id().to_string();
    let (line, column) = match first_label_offset(error) {
        Some(offset) => line_column(&file.text, offset),
        None => infos.iter().find(|info| info.id == policy_id).map_or((1, 1), |info| (info.line, info.column)),
    };
    Err(LoadError::Validation { file: file.name.clone(), line, column, policy_id, message: diagnostic_message(error) })
}

fn first_label_offset(diagnostic: &(impl Diagnostic + ?Sized)) -> Option<usize> {
    diagnostic.labels()?.next().map(|label| label.offset())
}

/// Cedar's message plus its help line, if it has one.
fn diagnostic_message(diagnostic: &(impl Diagnostic + ?Sized)) -> String {
    match diagnostic.help() {
        Some(help) => format!("{diagnostic} ({help})"),
        None => diagnostic.to_string(),
    }
}

fn find_text(haystack: &str, from: usize, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.get(from..)?.find(needle).map(|at| from + at)
}

/// 1-based line and column (in characters) of a byte offset into `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.as_bytes().get(..offset).unwrap_or(text.as_bytes());
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |at| at + 1);
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    (line, column)
}
