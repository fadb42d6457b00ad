//! Signed checkpoints: the chain head `(seq, hash, ts_ms)` signed with an
//! Ed25519 key that lives in a file beside, not inside, the database.
//!
//! The hash chain alone shows edits, gaps and reordering, but someone who can
//! write the database can cut the tail or rewrite the chain from some row on
//! and recompute every hash after it. A checkpoint pins the head as it was;
//! without the key file it cannot be forged, so `audit verify` catches both.
//!
//! ```text
//! signature = Ed25519(enc("palisade-audit-checkpoint-v1") || u64be(seq) || enc(hash) ||
//!                     i64be(ts_ms) || enc(key_id))          (enc as in [`super::chain`])
//! key_id    = hex(SHA-256(public key))[..32]
//! ```

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use sqlx::{Any, AnyConnection};

use super::AuditError;
use crate::db::Db;

/// The key file's name in the data directory.
pub const KEY_FILE: &str = "audit-signing.key";
/// The only algorithm so far.
pub const ALGORITHM: &str = "ed25519";
const DOMAIN: &str = "palisade-audit-checkpoint-v1";
const ANCHOR_DOMAIN: &str = "palisade-audit-prune-anchor-v1";

/// Records a public key once (the statements every driver runs).
pub(super) const INSERT_KEY: &str = "INSERT INTO audit_signing_keys (key_id, algorithm, public_key, created_ms) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (key_id) DO NOTHING";
/// Stores a checkpoint unless that head already has one.
pub(super) const INSERT_CHECKPOINT: &str = "INSERT INTO audit_checkpoints (seq, hash, ts_ms, signature, key_id) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING";

/// One row of `audit_checkpoints`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The chain head's seq when signed.
    pub seq: i64,
    /// The chain head's hash when signed.
    pub hash: String,
    /// When it was signed, milliseconds since the epoch.
    pub ts_ms: i64,
    /// Hex Ed25519 signature over [`signed_message`].
    pub signature: String,
    /// Which key signed it.
    pub key_id: String,
}

/// A public key recorded in `audit_signing_keys`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningKey {
    /// [`key_id_of`] the public key.
    pub key_id: String,
    /// Hex public key.
    pub public_key: String,
}

/// The signing key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("audit signing key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not hold an Ed25519 PKCS#8 key.
    #[error("audit signing key {0}: not an Ed25519 PKCS#8 key")]
    Invalid(PathBuf),
}

/// The private key that signs checkpoints.
pub struct Signer {
    key: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads the key at `path`, creating it (mode 0600) if the file does not exist.
    ///
    /// # Errors
    /// The file cannot be read or written, or holds something else.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io { path: path.to_owned(), source };
        match Self::load(path) {
            Ok(Some(signer)) => return Ok(signer),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| io(std::io::Error::other("no randomness")))?;
        let created = {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
        };
        match created {
            Ok(mut file) => {
                file.write_all(base64_encode(pkcs8.as_ref()).as_bytes()).map_err(io)?;
                file.sync_all().map_err(io)?;
                Self::from_pkcs8(pkcs8.as_ref(), path)
            }
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path)?.ok_or_else(|| io(e)),
            Err(e) => Err(io(e)),
        }
    }

    /// Loads the key at `path`, if the file exists.
    ///
    /// # Errors
    /// The file cannot be read or holds something else.
    pub fn load(path: &Path) -> Result<Option<Self>, KeyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let der = base64_decode(text.trim()).ok_or_else(|| KeyError::Invalid(path.to_owned()))?;
                Self::from_pkcs8(&der, path).map(Some)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(KeyError::Io { path: path.to_owned(), source }),
        }
    }

    fn from_pkcs8(der: &[u8], path: &Path) -> Result<Self, KeyError> {
        let key = Ed25519KeyPair::from_pkcs8(der).map_err(|_| KeyError::Invalid(path.to_owned()))?;
        let key_id = key_id_of(key.public_key().as_ref());
        Ok(Self { key, key_id })
    }

    /// The key's id.
    #[must_use]
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The raw 32-byte public key.
    #[must_use]
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// Signs a chain head.
    #[must_use]
    pub fn sign(&self, seq: i64, hash: &str, ts_ms: i64) -> Checkpoint {
        self.sign_in(DOMAIN, seq, hash, ts_ms)
    }

    /// Signs a prune anchor: the last deleted event, whose hash the first kept one links to.
    #[must_use]
    pub fn sign_anchor(&self, seq: i64, hash: &str, ts_ms: i64) -> Checkpoint {
        self.sign_in(ANCHOR_DOMAIN, seq, hash, ts_ms)
    }

    fn sign_in(&self, domain: &str, seq: i64, hash: &str, ts_ms: i64) -> Checkpoint {
        let sig = self.key.sign(&message(domain, seq, hash, ts_ms, &self.key_id));
        Checkpoint { seq, hash: hash.to_owned(), ts_ms, signature: hex(sig.as_ref()), key_id: self.key_id.clone() }
    }
}

/// Where the checkpoint key of `db` lives: in the directory of files that
/// belong with it (beside a SQLite file; a broker's data directory).
#[must_use]
pub fn key_path_beside(db: &Db) -> Option<PathBuf> {
    db.files_dir().map(|dir| dir.join(KEY_FILE))
}

/// `hex(SHA-256(public))[..32]`.
#[must_use]
pub fn key_id_of(public: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public);
    hex(&digest.as_ref()[..16])
}

/// The bytes a checkpoint's signature covers.
#[must_use]
pub fn signed_message(seq: i64, hash: &str, ts_ms: i64, key_id: &str) -> Vec<u8> {
    message(DOMAIN, seq, hash, ts_ms, key_id)
}

fn message(domain: &str, seq: i64, hash: &str, ts_ms: i64, key_id: &str) -> Vec<u8> {
    fn put(m: &mut Vec<u8>, s: &str) {
        m.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
        m.extend_from_slice(s.as_bytes());
    }
    let mut m = Vec::with_capacity(128);
    put(&mut m, domain);
    m.extend_from_slice(&u64::try_from(seq).unwrap_or(0).to_be_bytes());
    put(&mut m, hash);
    m.extend_from_slice(&ts_ms.to_be_bytes());
    put(&mut m, key_id);
    m
}

impl Checkpoint {
    /// Whether the signature is valid for `public` (raw 32-byte Ed25519 key).
    #[must_use]
    pub fn signature_valid(&self, public: &[u8]) -> bool {
        self.valid_in(DOMAIN, public)
    }

    /// Whether the signature is valid for `public` as a prune anchor.
    #[must_use]
    pub fn anchor_signature_valid(&self, public: &[u8]) -> bool {
        self.valid_in(ANCHOR_DOMAIN, public)
    }

    fn valid_in(&self, domain: &str, public: &[u8]) -> bool {
        let Some(sig) = unhex(&self.signature) else { return false };
        key_id_of(public) == self.key_id
            && UnparsedPublicKey::new(&ED25519, public)
                .verify(&message(domain, self.seq, &self.hash, self.ts_ms, &self.key_id), &sig)
                .is_ok()
    }
}

/// Records the signer's public key (once).
///
/// # Errors
/// A database error.
pub async fn register_key(db: &Db, signer: &Signer) -> Result<(), AuditError> {
    sqlx::query(INSERT_KEY)
        .bind(signer.key_id())
        .bind(ALGORITHM)
        .bind(hex(signer.public_key()))
        .bind(now_ms(SystemTime::now()))
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Signs and stores `head` unless it is already checkpointed or empty.
pub(super) async fn write(
    conn: &mut AnyConnection,
    signer: &Signer,
    (seq, hash): (i64, &str),
    at: SystemTime,
) -> Result<Option<Checkpoint>, AuditError> {
    if seq == 0 {
        return Ok(None);
    }
    let cp = signer.sign(seq, hash, now_ms(at));
    let inserted = sqlx::query(INSERT_CHECKPOINT)
        .bind(cp.seq)
        .bind(&cp.hash)
        .bind(cp.ts_ms)
        .bind(&cp.signature)
        .bind(&cp.key_id)
        .execute(conn)
        .await?;
    Ok((inserted.rows_affected() == 1).then_some(cp))
}

/// Checkpoints the current head in its own write transaction.
///
/// # Errors
/// A database error.
pub async fn checkpoint_now(db: &Db, signer: &Signer) -> Result<Option<Checkpoint>, AuditError> {
    let mut tx = db.begin_write().await?;
    let head = super::head(&mut tx).await?;
    let cp = write(&mut tx, signer, (head.0, &head.1), SystemTime::now()).await?;
    tx.commit().await?;
    Ok(cp)
}

/// Every checkpoint, oldest first.
///
/// # Errors
/// A database error.
pub async fn all(db: &Db) -> Result<Vec<Checkpoint>, AuditError> {
    signed_rows(db, "SELECT seq, hash, ts_ms, signature, key_id FROM audit_checkpoints ORDER BY seq").await
}

/// Every prune anchor, oldest first.
///
/// # Errors
/// A database error.
pub async fn anchors(db: &Db) -> Result<Vec<Checkpoint>, AuditError> {
    signed_rows(db, "SELECT seq, hash, ts_ms, signature, key_id FROM audit_prune_anchors ORDER BY seq").await
}

async fn signed_rows(db: &Db, sql: &'static str) -> Result<Vec<Checkpoint>, AuditError> {
    let rows = sqlx::query_as::<Any, (i64, String, i64, String, String)>(sql).fetch_all(db.pool()).await?;
    Ok(rows
        .into_iter()
        .map(|(seq, hash, ts_ms, signature, key_id)| Checkpoint { seq, hash, ts_ms, signature, key_id })
        .collect())
}

/// Every recorded public key.
///
/// # Errors
/// A database error.
pub async fn keys(db: &Db) -> Result<Vec<SigningKey>, AuditError> {
    let rows = sqlx::query_as::<Any, (String, String)>(
        "SELECT key_id, public_key FROM audit_signing_keys ORDER BY created_ms, key_id",
    )
    .fetch_all(db.pool())
    .await?;
    Ok(rows.into_iter().map(|(key_id, public_key)| SigningKey { key_id, public_key }).collect())
}

pub(super) fn now_ms(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn hex(bytes: &[u8]) -> String {
    palisade_proto::enroll::hex(bytes)
}

/// Decodes lowercase or uppercase hex.
#[must_use]
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}
