//! The versioned policy store: every applied policy set is a row of
//! `policy_versions` (author, time, comment, files, digest, and the version
//! it was applied on top of); `policy_active` names the one in force.
//!
//! [`apply`] is the only way in. It validates the set against the schema
//! and the service catalog, runs the policy test cases if given, and then,
//! in one `BEGIN IMMEDIATE` transaction, checks that the caller's parent
//! version is still the active one, writes the new version, makes it
//! active and audits `policy.activated`. Two admins applying on top of
//! the same version: the write lock serialises them, the second finds a
//! different active version and gets [`PolicyStoreError::Conflict`];
//! nothing is overwritten. A refused set is audited as `policy.rejected`
//! and the active version stays.
//!
//! Store versions count 1, 2, 3 … in apply order. They are not the
//! clock-derived engine versions of [`crate::policy::PolicyStore`].
//!
//! Until the running broker loads [`active`] itself, it reads
//! `config.policy_dir`: the CLI mirrors each applied version there with
//! [`write_policy_dir`] and then asks the broker to reload.

mod diff;
mod principals;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::SystemTime;

use palisade_policies::{CaseError, Engine, LoadError, PolicyBundle, PolicyFile, ServiceEntry, run_case_dir};
use serde_json::json;
use sqlx::{Any, AnyConnection};

pub use diff::{FileChange, FileDiff, diff_files, render_diff};
pub use principals::{PrincipalLookupError, find_principal, known_principals};

use crate::audit::{Audit, AuditError, AuditEvent, EventKind, Outcome};
use crate::config::Config;
use crate::db::{Db, unix_seconds};

/// A policy store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyStoreError {
    /// The set does not parse or validate; names file, line and column.
    #[error("policy set refused: {0}")]
    Invalid(#[source] LoadError),
    /// A file name that is not a plain `<name>.cedar`.
    #[error("policy set refused: file name {0:?} must be a plain `<name>.cedar` name")]
    BadFileName(String),
    /// The set holds no file.
    #[error("policy set refused: it holds no policy file")]
    Empty,
    /// The policy test cases ran and some failed; the report lists them.
    #[error("policy set refused: test cases failed\n{0}")]
    CasesFailed(String),
    /// The policy test cases could not be run.
    #[error("policy set refused: {0}")]
    Cases(#[from] CaseError),
    /// The set was edited on top of a version that is no longer active.
    #[error(
        "conflict: the set was edited on top of version {}, but version {} is active now; \
         compare with `policy diff` and apply again on top of it",
        shown(*expected),
        shown(*active)
    )]
    Conflict {
        /// The parent version the caller named.
        expected: Option<u64>,
        /// The version that is active.
        active: Option<u64>,
    },
    /// No such version.
    #[error("no policy version {0}")]
    NotFound(u64),
    /// A stored row does not decode.
    #[error("policy version {version} is unreadable: {message}")]
    Corrupt {
        /// The version.
        version: u64,
        /// Why.
        message: String,
    },
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The audit trail refused the event; nothing was applied.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

fn shown(version: Option<u64>) -> String {
    version.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

/// A policy set to apply.
#[derive(Clone, Copy, Debug)]
pub struct Proposal<'a> {
    /// The files, by name.
    pub files: &'a [PolicyFile],
    /// The version the set was edited on top of (`None`: no version yet).
    pub parent: Option<u64>,
    /// Who applies it (recorded and audited).
    pub author: &'a str,
    /// Why.
    pub comment: &'a str,
    /// The service catalog to validate against.
    pub services: &'a [ServiceEntry],
    /// Policy test cases (`*.toml`) that must all pass, if any.
    pub cases_dir: Option<&'a Path>,
}

/// One stored version, without its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    /// The store version.
    pub version: u64,
    /// The version that was active when it was applied.
    pub parent: Option<u64>,
    /// Who applied it.
    pub author: String,
    /// Why.
    pub comment: String,
    /// When, unix seconds.
    pub created_at: i64,
    /// Hex SHA-256 of the files ([`PolicyBundle::digest`] with no services).
    pub digest: String,
}

/// One stored version with its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyVersion {
    /// Version, author, time, comment.
    pub info: VersionInfo,
    /// The policy files, in name order.
    pub files: Vec<PolicyFile>,
}

/// The service catalog of a broker configuration, as the engine takes it.
#[must_use]
pub fn catalog(config: &Config) -> Vec<ServiceEntry> {
    config
        .services
        .iter()
        .map(|s| ServiceEntry {
            name: s.name.to_string(),
            segment: s.segment.clone(),
            protocol: s.protocol.clone(),
            labels: s.labels.clone(),
        })
        .collect()
}

/// Checks a set without storing it: file names, schema validation against
/// `services`, and the cases in `cases_dir` if given.
///
/// # Errors
/// [`PolicyStoreError::Invalid`], `BadFileName`, `Empty`, `CasesFailed` or `Cases`.
pub fn validate(
    files: &[PolicyFile],
    services: &[ServiceEntry],
    cases_dir: Option<&Path>,
) -> Result<Engine, PolicyStoreError> {
    if files.is_empty() {
        return Err(PolicyStoreError::Empty);
    }
    if let Some(file) = files.iter().find(|f| !plain_cedar_name(&f.name)) {
        return Err(PolicyStoreError::BadFileName(file.name.clone()));
    }
    let bundle = PolicyBundle { version: 0, files: files.to_vec(), services: services.to_vec() };
    let engine = Engine::new(&bundle).map_err(PolicyStoreError::Invalid)?;
    if let Some(dir) = cases_dir {
        let reports = run_case_dir(files, dir)?;
        if reports.iter().any(|r| !r.passed()) {
            let failed: Vec<String> = reports.iter().filter(|r| !r.passed()).map(ToString::to_string).collect();
            return Err(PolicyStoreError::CasesFailed(failed.concat()));
        }
    }
    Ok(engine)
}

fn plain_cedar_name(name: &str) -> bool {
    name.len() > ".cedar".len()
        && name.ends_with(".cedar")
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
}

/// Validates `proposal` and, if `proposal.parent` is still the active
/// version, stores it as the next version and makes it active.
///
/// # Errors
/// The errors of [`validate`]; [`PolicyStoreError::Conflict`] if another
/// version became active meanwhile; a database or audit failure. In every
/// error case the active version is unchanged; refusals are audited.
pub async fn apply(db: &Db, proposal: &Proposal<'_>) -> Result<VersionInfo, PolicyStoreError> {
    let result = match validate(proposal.files, proposal.services, proposal.cases_dir) {
        Ok(_) => commit(db, proposal).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &result
        && !matches!(e, PolicyStoreError::Db(_) | PolicyStoreError::Audit(_))
        && let Err(audit) = audit_refusal(db, proposal, e).await
    {
        tracing::error!(error = %audit, "could not audit a refused policy set");
    }
    result
}

async fn commit(db: &Db, proposal: &Proposal<'_>) -> Result<VersionInfo, PolicyStoreError> {
    let mut tx = db.begin_write().await?;
    let active = active_version_in(&mut tx).await?;
    if active != proposal.parent {
        return Err(PolicyStoreError::Conflict { expected: proposal.parent, active });
    }
    let next: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM policy_versions").fetch_one(&mut *tx).await?;
    let mut files = proposal.files.to_vec();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let info = VersionInfo {
        version: u64::try_from(next).unwrap_or(0),
        parent: proposal.parent,
        author: proposal.author.to_owned(),
        comment: proposal.comment.to_owned(),
        created_at: unix_seconds(SystemTime::now()),
        digest: PolicyBundle { version: 0, files: files.clone(), services: Vec::new() }.digest(),
    };
    let files_json = serde_json::to_string(&files)
        .map_err(|e| PolicyStoreError::Corrupt { version: info.version, message: e.to_string() })?;
    sqlx::query(
        "INSERT INTO policy_versions (version, parent, author, comment, created_at, files, digest) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(next)
    .bind(proposal.parent.map(to_i64))
    .bind(&info.author)
    .bind(&info.comment)
    .bind(info.created_at)
    .bind(files_json)
    .bind(&info.digest)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO policy_active (id, version) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET version = excluded.version")
        .bind(next)
        .execute(&mut *tx)
        .await?;
    let event = AuditEvent::new(EventKind::PolicyActivated, Outcome::Success).actor(proposal.author).detail(json!({
        "store_version": info.version,
        "parent": proposal.parent,
        "digest": info.digest,
        "comment": info.comment,
        "files": files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
    }));
    Audit::record_in(&mut tx, event).await?;
    tx.commit().await?;
    Ok(info)
}

async fn audit_refusal(db: &Db, proposal: &Proposal<'_>, error: &PolicyStoreError) -> Result<(), AuditError> {
    let mut tx = db.begin_write().await?;
    let event = AuditEvent::new(EventKind::PolicyRejected, Outcome::Failure).actor(proposal.author).detail(json!({
        "parent": proposal.parent,
        "comment": proposal.comment,
        "error": error.to_string(),
    }));
    Audit::record_in(&mut tx, event).await?;
    tx.commit().await?;
    Ok(())
}

/// Applies the files of `version` again, as a new version on top of `parent`.
///
/// # Errors
/// [`PolicyStoreError::NotFound`], and those of [`apply`]: the old set is
/// validated against today's catalog and cases.
pub async fn rollback(
    db: &Db,
    version: u64,
    parent: Option<u64>,
    author: &str,
    services: &[ServiceEntry],
    cases_dir: Option<&Path>,
) -> Result<VersionInfo, PolicyStoreError> {
    let old = get(db, version).await?.ok_or(PolicyStoreError::NotFound(version))?;
    let comment = format!("rollback to version {version}");
    let proposal = Proposal { files: &old.files, parent, author, comment: &comment, services, cases_dir };
    apply(db, &proposal).await
}

/// The active version and its files, or `None` before the first apply.
///
/// # Errors
/// A database error or an unreadable row.
pub async fn active(db: &Db) -> Result<Option<(u64, Vec<PolicyFile>)>, PolicyStoreError> {
    let Some(version) = active_version(db).await? else {
        return Ok(None);
    };
    let stored = get(db, version).await?.ok_or(PolicyStoreError::NotFound(version))?;
    Ok(Some((version, stored.files)))
}

/// The active version number, or `None` before the first apply.
///
/// # Errors
/// A database error.
pub async fn active_version(db: &Db) -> Result<Option<u64>, PolicyStoreError> {
    active_version_in(&mut *db.pool().acquire().await?).await
}

async fn active_version_in(conn: &mut AnyConnection) -> Result<Option<u64>, PolicyStoreError> {
    let version: Option<i64> =
        sqlx::query_scalar("SELECT version FROM policy_active WHERE id = 1").fetch_optional(conn).await?;
    Ok(version.map(|v| u64::try_from(v).unwrap_or(0)))
}

type Row = (i64, Option<i64>, String, String, i64, String, String);

fn decode(row: Row) -> Result<PolicyVersion, PolicyStoreError> {
    let (version, parent, author, comment, created_at, files, digest) = row;
    let version = u64::try_from(version).unwrap_or(0);
    let files: Vec<PolicyFile> =
        serde_json::from_str(&files).map_err(|e| PolicyStoreError::Corrupt { version, message: e.to_string() })?;
    let parent = parent.map(|p| u64::try_from(p).unwrap_or(0));
    Ok(PolicyVersion { info: VersionInfo { version, parent, author, comment, created_at, digest }, files })
}

/// One version with its files.
///
/// # Errors
/// A database error or an unreadable row.
pub async fn get(db: &Db, version: u64) -> Result<Option<PolicyVersion>, PolicyStoreError> {
    let row = sqlx::query_as::<Any, Row>(
        "SELECT version, parent, author, comment, created_at, files, digest FROM policy_versions WHERE version = $1",
    )
    .bind(to_i64(version))
    .fetch_optional(db.pool())
    .await?;
    row.map(decode).transpose()
}

/// Every version, newest first, without files.
///
/// # Errors
/// A database error or an unreadable row.
pub async fn history(db: &Db) -> Result<Vec<VersionInfo>, PolicyStoreError> {
    let rows = sqlx::query_as::<Any, Row>(
        "SELECT version, parent, author, comment, created_at, '[]', digest FROM policy_versions ORDER BY version DESC",
    )
    .fetch_all(db.pool())
    .await?;
    rows.into_iter().map(|row| decode(row).map(|v| v.info)).collect()
}

/// The per-file line diff from version `a` to version `b`.
///
/// # Errors
/// [`PolicyStoreError::NotFound`] for a missing version; a database error.
pub async fn diff(db: &Db, a: u64, b: u64) -> Result<Vec<FileDiff>, PolicyStoreError> {
    let old = get(db, a).await?.ok_or(PolicyStoreError::NotFound(a))?;
    let new = get(db, b).await?.ok_or(PolicyStoreError::NotFound(b))?;
    Ok(diff_files(&old.files, &new.files))
}

fn to_i64(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

/// Makes `dir` hold exactly `files` as its `*.cedar` files, for a broker
/// that reads its policy directory. Each file is written to a hidden
/// temporary name and renamed into place; `*.cedar` files not in the set
/// are removed afterwards. A reload that runs in between sees a mix, which
/// either validates or is refused (the running set stays).
///
/// # Errors
/// An IO error, or a file name that is not a plain `<name>.cedar`.
pub fn write_policy_dir(dir: &Path, files: &[PolicyFile]) -> std::io::Result<()> {
    if let Some(bad) = files.iter().find(|f| !plain_cedar_name(&f.name)) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad file name {:?}", bad.name)));
    }
    std::fs::create_dir_all(dir)?;
    for file in files {
        let temporary = dir.join(format!(".{}.tmp-{}", file.name, std::process::id()));
        std::fs::write(&temporary, &file.text)?;
        std::fs::File::open(&temporary)?.sync_all()?;
        std::fs::rename(&temporary, dir.join(&file.name))?;
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if plain_cedar_name(&name) && !files.iter().any(|f| f.name == name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}
