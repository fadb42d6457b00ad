//! CA rotation: a successor CA is prepared, activated, and the old one retired.
//!
//! Each step is a `palisade-broker ca …` command followed by a restart of the
//! brokers, and each can be run again to finish after a crash:
//!
//! 1. [`prepare`] makes a successor beside the active CA (`ca-next.pem`,
//!    `ca-next.key.enc`, sealed with the same KEK). Brokers trust both and
//!    hand out both in every trust bundle (enrollment, sign-in, connector
//!    renewal) while the active CA still issues.
//! 2. [`activate`], once every client and connector has had a certificate
//!    since (the longest certificate lifetime), makes the successor the
//!    issuing CA. The old certificate becomes `ca-previous.pem`, still trusted
//!    so the certificates it issued work until they expire; its key is gone.
//!    The brokers' server certificates are reissued by the new CA at start.
//! 3. [`retire`], once those certificates have expired, stops trusting it.
//!
//! The database records which certificate holds which role
//! ([`crate::db::meta`]), so a broker refuses files that disagree with it and
//! replicas sharing the database agree on the roles.

use std::path::Path;
use std::time::{Duration, SystemTime};

use palisade_proto::id::TrustDomain;
use rustls_pki_types::CertificateDer;
use serde_json::json;
use sqlx::{Any, Transaction};

use super::ca::{CA_CERT_FILE, CA_KEY_FILE, Ca, CaError, read_ca_cert, read_ca_cert_at};
use super::keystore::{self, Kek};
use crate::audit::{Audit, AuditError, AuditEvent, EventKind, Outcome};
use crate::db::{Db, meta};
use crate::init::{InitError, write_new};

/// The prepared successor's certificate.
pub const CA_NEXT_CERT_FILE: &str = "ca-next.pem";
/// The prepared successor's sealed key.
pub const CA_NEXT_KEY_FILE: &str = "ca-next.key.enc";
/// The replaced CA's certificate, trusted until it is retired.
pub const CA_PREVIOUS_CERT_FILE: &str = "ca-previous.pem";

/// A rotation step could not be taken; nothing was changed unless it says so.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The step does not apply now; the message says what to do instead.
    #[error("{0}")]
    Refused(String),
    /// A CA file is unusable.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// A file could not be written.
    #[error(transparent)]
    Files(#[from] InitError),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The audit trail could not be written.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

fn refused(message: impl Into<String>) -> RotationError {
    RotationError::Refused(message.into())
}

/// Hex SHA-256 of a certificate: the fingerprint the database records.
#[must_use]
pub fn fingerprint(der: &[u8]) -> String {
    palisade_proto::enroll::hex(&palisade_proto::enroll::sha256(der))
}

/// Which certificate holds which role, as the database records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roles {
    /// The issuing CA.
    pub active: Option<String>,
    /// A prepared successor.
    pub next: Option<String>,
    /// When it was prepared (unix seconds).
    pub prepared_at: Option<i64>,
    /// The replaced CA, still trusted.
    pub previous: Option<String>,
    /// When the active CA began issuing by a rotation (unix seconds).
    pub activated_at: Option<i64>,
}

/// Reads the roles.
///
/// # Errors
/// A database error.
pub async fn roles(db: &Db) -> Result<Roles, sqlx::Error> {
    let number = |v: Option<String>| v.and_then(|v| v.parse().ok());
    Ok(Roles {
        active: meta::get(db, meta::CA_SHA256).await?,
        next: meta::get(db, meta::CA_NEXT_SHA256).await?,
        prepared_at: number(meta::get(db, meta::CA_PREPARED_AT).await?),
        previous: meta::get(db, meta::CA_PREVIOUS_SHA256).await?,
        activated_at: number(meta::get(db, meta::CA_ACTIVATED_AT).await?),
    })
}

/// The CA certificates a broker trusts besides the active one: the prepared
/// successor and the previous CA, each checked against the database. A file
/// the database does not know is refused; a recorded CA whose file is missing
/// is not trusted (and logged), since trusting less only refuses more.
///
/// # Errors
/// A file that disagrees with the database, or is not a CA of `td`.
pub async fn also_trusted(
    data_dir: &Path,
    db: &Db,
    td: &TrustDomain,
) -> Result<Vec<CertificateDer<'static>>, RotationError> {
    let roles = roles(db).await?;
    let dir = data_dir.display();
    let mut trusted = Vec::new();
    for (file, recorded, fix) in [
        (
            CA_NEXT_CERT_FILE,
            &roles.next,
            format!(
                "run `palisade-broker ca prepare --data-dir {dir}` to finish an interrupted preparation, or `ca cancel` to discard it"
            ),
        ),
        (
            CA_PREVIOUS_CERT_FILE,
            &roles.previous,
            format!("run `palisade-broker ca retire --data-dir {dir}` to finish an interrupted retirement"),
        ),
    ] {
        let path = data_dir.join(file);
        if !path.exists() {
            if let Some(digest) = recorded {
                tracing::warn!(file, sha256 = %digest, "the database records this CA but its file is missing: it is not trusted");
            }
            continue;
        }
        let der = first_certificate(&path)?;
        if recorded.as_deref() != Some(fingerprint(&der).as_str()) {
            return Err(refused(format!("{file} is not the CA the database records in that role: {fix}")));
        }
        let (der, ca_td) = read_ca_cert_at(&path)?;
        if &ca_td != td {
            return Err(refused(format!("{file} is for trust domain {ca_td}, not {td}")));
        }
        trusted.push(der);
    }
    Ok(trusted)
}

/// The first certificate in a PEM file, unparsed: what its fingerprint is taken over.
fn first_certificate(path: &Path) -> Result<CertificateDer<'static>, RotationError> {
    let pem = std::fs::read_to_string(path).map_err(|source| InitError::Io { path: path.to_owned(), source })?;
    let certs = palisade_proto::pem::certs(&pem).map_err(|e| refused(format!("{}: {e}", path.display())))?;
    certs.into_iter().next().ok_or_else(|| refused(format!("{}: no certificate", path.display())))
}

/// What [`prepare`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// The successor's fingerprint.
    pub sha256: String,
    /// Its files existed from an interrupted run and were recorded now.
    pub resumed: bool,
}

/// Makes a successor CA beside the active one, sealed with `kek`.
///
/// # Errors
/// A successor already prepared, a previous CA not yet retired, an active CA
/// that is not the recorded one, or a file, database or audit failure.
pub async fn prepare(data_dir: &Path, db: &Db, kek: &Kek, now: SystemTime) -> Result<Prepared, RotationError> {
    let roles = roles(db).await?;
    let (active, td) = read_ca_cert(data_dir)?;
    check_active_recorded(data_dir, &roles, &active)?;
    if let Some(previous) = &roles.previous {
        return Err(refused(format!(
            "the previous CA (sha256 {previous}) is still trusted: retire it first (`palisade-broker ca retire`), so that no more than two CAs are trusted at once"
        )));
    }
    let (cert_path, key_path) = (data_dir.join(CA_NEXT_CERT_FILE), data_dir.join(CA_NEXT_KEY_FILE));
    if cert_path.exists() {
        let next = Ca::load_files(&cert_path, &key_path, kek)?;
        let sha256 = fingerprint(next.cert_der());
        if roles.next.as_deref() == Some(sha256.as_str()) {
            return Err(refused(format!(
                "a successor CA (sha256 {sha256}) is prepared already: activate it with `palisade-broker ca activate`, or discard it with `ca cancel`"
            )));
        }
        record_prepared(db, &td, &sha256, &fingerprint(&active), now).await?;
        return Ok(Prepared { sha256, resumed: true });
    }
    if let Some(next) = &roles.next {
        return Err(refused(format!(
            "the database records a prepared CA (sha256 {next}) but {} is missing: restore ca-next.pem and ca-next.key.enc from a backup, or discard it with `palisade-broker ca cancel`",
            cert_path.display()
        )));
    }
    let name = format!("Palisade CA {td} {}", humantime::format_rfc3339_seconds(now));
    let (next, pkcs8) = Ca::create_named(&td, &name, now)?;
    write_new(&key_path, keystore::seal(kek, &pkcs8)?.as_bytes(), 0o600)?;
    write_new(&cert_path, next.cert_pem().as_bytes(), 0o644)?;
    let sha256 = fingerprint(next.cert_der());
    record_prepared(db, &td, &sha256, &fingerprint(&active), now).await?;
    Ok(Prepared { sha256, resumed: false })
}

async fn record_prepared(
    db: &Db,
    td: &TrustDomain,
    next: &str,
    active: &str,
    now: SystemTime,
) -> Result<(), RotationError> {
    let mut tx = db.begin_write().await?;
    meta::set_in(&mut tx, meta::CA_NEXT_SHA256, next).await?;
    meta::set_in(&mut tx, meta::CA_PREPARED_AT, &unix(now).to_string()).await?;
    record_step(&mut tx, td, "prepared", next, active, 0).await?;
    tx.commit().await?;
    Ok(())
}

/// What [`activate`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activated {
    /// The new issuing CA.
    pub active: String,
    /// The CA it replaced, now the previous one.
    pub previous: String,
}

/// Makes the prepared successor the issuing CA. Refused until `wait` has
/// passed since it was prepared (every certificate issued since carries it
/// in its bundle), unless `force`.
///
/// # Errors
/// No successor prepared, too early, a successor that does not open with
/// `kek`, or a file, database or audit failure.
pub async fn activate(
    data_dir: &Path,
    db: &Db,
    kek: &Kek,
    now: SystemTime,
    wait: Duration,
    force: bool,
) -> Result<Activated, RotationError> {
    let roles = roles(db).await?;
    let Some(next) = roles.next.clone() else {
        return Err(refused("no successor CA is prepared: run `palisade-broker ca prepare` first"));
    };
    let ready_at = roles.prepared_at.unwrap_or(0).saturating_add(i64::try_from(wait.as_secs()).unwrap_or(i64::MAX));
    if !force && unix(now) < ready_at {
        return Err(refused(format!(
            "the successor CA was prepared less than {} ago (the longest certificate lifetime here): clients and connectors get it in their trust bundle with their next certificate; activate after {}, or pass --force to activate now (a client that has not renewed since must sign in or enroll again)",
            humantime::format_duration(wait),
            humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(ready_at).unwrap_or(0))
            )
        )));
    }
    let (current, td) = read_ca_cert(data_dir)?;
    let previous = if fingerprint(&current) == next {
        // The files were swapped by an interrupted run; the database still names the old CA.
        roles.active.clone().ok_or_else(|| refused("the database records no active CA"))?
    } else {
        check_active_recorded(data_dir, &roles, &current)?;
        swap_files(data_dir, kek, &current, &next)?;
        fingerprint(&current)
    };
    let mut tx = db.begin_write().await?;
    meta::set_in(&mut tx, meta::CA_SHA256, &next).await?;
    meta::set_in(&mut tx, meta::CA_PREVIOUS_SHA256, &previous).await?;
    meta::set_in(&mut tx, meta::CA_ACTIVATED_AT, &unix(now).to_string()).await?;
    meta::delete_in(&mut tx, meta::CA_NEXT_SHA256).await?;
    meta::delete_in(&mut tx, meta::CA_PREPARED_AT).await?;
    record_step(&mut tx, &td, "activated", &next, &next, 0).await?;
    tx.commit().await?;
    Ok(Activated { active: next, previous })
}

/// Keeps the active certificate as `ca-previous.pem`, then moves the
/// successor's key and certificate into place. Each move is atomic and a
/// rerun skips what is done.
fn swap_files(data_dir: &Path, kek: &Kek, current: &CertificateDer<'_>, next: &str) -> Result<(), RotationError> {
    let path = |f: &str| data_dir.join(f);
    let next_cert = path(CA_NEXT_CERT_FILE);
    let next_key = if path(CA_NEXT_KEY_FILE).exists() { path(CA_NEXT_KEY_FILE) } else { path(CA_KEY_FILE) };
    let successor = Ca::load_files(&next_cert, &next_key, kek).map_err(|e| {
        refused(format!("the prepared successor cannot be used ({e}): nothing was changed; `ca cancel` discards it"))
    })?;
    if fingerprint(successor.cert_der()) != next {
        return Err(refused(format!("{} is not the successor the database records", next_cert.display())));
    }
    let previous = path(CA_PREVIOUS_CERT_FILE);
    let current_pem = palisade_proto::pem::encode("CERTIFICATE", current);
    match std::fs::read_to_string(&previous) {
        Ok(pem) if pem == current_pem => {}
        Ok(_) => {
            return Err(refused(format!("{} exists and is not the active CA: move it away first", previous.display())));
        }
        Err(_) => write_new(&previous, current_pem.as_bytes(), 0o644)?,
    }
    rename(&next_key, &path(CA_KEY_FILE))?;
    rename(&next_cert, &path(CA_CERT_FILE))?;
    Ok(())
}

fn rename(from: &Path, to: &Path) -> Result<(), RotationError> {
    if from == to {
        return Ok(());
    }
    std::fs::rename(from, to).map_err(|source| InitError::Io { path: to.to_owned(), source })?;
    sync_dir(to)
}

fn sync_dir(file: &Path) -> Result<(), RotationError> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| InitError::Io { path: dir.to_owned(), source })?;
    Ok(())
}

/// What [`retire`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retired {
    /// The CA no longer trusted.
    pub sha256: String,
    /// Its certificates that were still valid (cut off by `force`).
    pub still_valid: i64,
}

/// Stops trusting the previous CA. Refused while certificates it issued are
/// still valid, unless `force`.
///
/// # Errors
/// No previous CA, certificates still valid, or a file, database or audit failure.
pub async fn retire(data_dir: &Path, db: &Db, now: SystemTime, force: bool) -> Result<Retired, RotationError> {
    let roles = roles(db).await?;
    let Some(previous) = roles.previous.clone() else {
        return Err(refused("no previous CA is trusted: there is nothing to retire"));
    };
    let (still_valid, last) = issued_before(db, roles.activated_at.unwrap_or(0), unix(now)).await?;
    if still_valid > 0 && !force {
        return Err(refused(format!(
            "{still_valid} certificate(s) issued by the previous CA are still valid, the last until {}: retire it after then, or pass --force to cut them off now",
            humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(last).unwrap_or(0))
            )
        )));
    }
    let (active, td) = read_ca_cert(data_dir)?;
    let file = data_dir.join(CA_PREVIOUS_CERT_FILE);
    match std::fs::remove_file(&file) {
        Ok(()) => sync_dir(&file)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(InitError::Io { path: file, source }.into()),
    }
    let mut tx = db.begin_write().await?;
    meta::delete_in(&mut tx, meta::CA_PREVIOUS_SHA256).await?;
    record_step(&mut tx, &td, "retired", &previous, &fingerprint(&active), still_valid).await?;
    tx.commit().await?;
    Ok(Retired { sha256: previous, still_valid })
}

/// Certificates issued before `activated_at` and valid at `now`: how many, and the last expiry.
async fn issued_before(db: &Db, activated_at: i64, now: i64) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as::<_, (i64, i64)>(
        "SELECT COUNT(*), COALESCE(MAX(not_after), 0) FROM certificates WHERE issued_at < $1 AND not_after > $2",
    )
    .bind(activated_at)
    .bind(now)
    .fetch_one(db.pool())
    .await
}

/// Discards a prepared successor that was not activated.
///
/// # Errors
/// Nothing prepared, or a file, database or audit failure.
pub async fn cancel(data_dir: &Path, db: &Db) -> Result<String, RotationError> {
    let roles = roles(db).await?;
    let cert_path = data_dir.join(CA_NEXT_CERT_FILE);
    let on_disk = cert_path.exists().then(|| read_ca_cert_at(&cert_path)).transpose()?;
    let Some(next) = roles.next.clone().or_else(|| on_disk.as_ref().map(|(der, _)| fingerprint(der))) else {
        return Err(refused("no successor CA is prepared: there is nothing to cancel"));
    };
    // The key goes first: a crash in between leaves a certificate nobody can sign with.
    for file in [CA_NEXT_KEY_FILE, CA_NEXT_CERT_FILE] {
        remove_if_present(&data_dir.join(file))?;
    }
    let (active, td) = read_ca_cert(data_dir)?;
    let mut tx = db.begin_write().await?;
    meta::delete_in(&mut tx, meta::CA_NEXT_SHA256).await?;
    meta::delete_in(&mut tx, meta::CA_PREPARED_AT).await?;
    record_step(&mut tx, &td, "cancelled", &next, &fingerprint(&active), 0).await?;
    tx.commit().await?;
    Ok(next)
}

fn remove_if_present(path: &Path) -> Result<(), RotationError> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(InitError::Io { path: path.to_owned(), source }.into()),
    }
}

/// Refuses an active `ca.pem` that is not the CA the database records,
/// naming an interrupted activation when that is what it looks like.
fn check_active_recorded(data_dir: &Path, roles: &Roles, active: &CertificateDer<'_>) -> Result<(), RotationError> {
    let digest = fingerprint(active);
    if roles.active.as_deref() == Some(digest.as_str()) {
        return Ok(());
    }
    if roles.next.as_deref() == Some(digest.as_str()) {
        return Err(refused(format!(
            "a CA activation was interrupted: run `palisade-broker ca activate --data-dir {}` again to finish it",
            data_dir.display()
        )));
    }
    Err(refused(format!("{CA_CERT_FILE} is not the CA this database records as active")))
}

async fn record_step(
    tx: &mut Transaction<'static, Any>,
    td: &TrustDomain,
    step: &str,
    ca: &str,
    active: &str,
    still_valid: i64,
) -> Result<(), AuditError> {
    let event = AuditEvent::new(EventKind::CaRotated, Outcome::Success)
        .actor("cli")
        .subject(format!("spiffe://{td}"))
        .detail(json!({ "step": step, "ca_sha256": ca, "active_sha256": active, "still_valid": still_valid }));
    Audit::record_in(tx, event).await.map(|_| ())
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Checks at start that `ca.pem` is the recorded active CA (see [`prepare`]).
///
/// # Errors
/// As [`RotationError::Refused`], naming an interrupted activation.
pub async fn check_active(data_dir: &Path, db: &Db, active: &CertificateDer<'_>) -> Result<(), RotationError> {
    let roles = roles(db).await?;
    if roles.active.is_none() {
        return Ok(());
    }
    check_active_recorded(data_dir, &roles, active)
}
