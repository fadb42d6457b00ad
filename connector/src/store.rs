//! The state directory: the connector's key, certificate, CA bundle and
//! enrollment record.
//!
//! ```text
//! <state_dir>/            0700
//!   key.pem               0600  PKCS#8 P-256 private key, made on this machine
//!   cert.pem              0600  the connector's certificate (renewed in place)
//!   ca.pem                0644  the broker's CA bundle: verifies the broker and every caller
//!   identity.json         0644  {identity, broker_url, quic_addr}; written last, marks "enrolled"
//!   policy-bundle.json    0600  the last good signed policy bundle, verified again on load
//! ```
//!
//! Every file is replaced atomically (temp file, fsync, rename, fsync of the
//! directory). A renewal replaces key and certificate together: both are
//! first written as `key.pem.new` and `cert.pem.new`, then renamed key
//! first; [`Store::load`] rolls a half-done swap forward, so a crash never
//! leaves a key beside a certificate for another key.

use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_proto::bundle::SignedBundle;
use palisade_proto::id::TrustDomain;
use palisade_proto::identity::{PeerRole, SpiffeId, TrustAnchors};
use palisade_proto::pem;
use palisade_proto::tls::TlsIdentity;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer as _, X509Certificate};

const KEY: &str = "key.pem";
const CERT: &str = "cert.pem";
const CA: &str = "ca.pem";
const IDENTITY: &str = "identity.json";
const KEY_NEXT: &str = "key.pem.new";
const CERT_NEXT: &str = "cert.pem.new";
const POLICY_BUNDLE: &str = "policy-bundle.json";

/// `identity.json`: what enrollment learnt about this connector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdentityRecord {
    /// The connector's SPIFFE id.
    pub(crate) identity: String,
    /// The broker's HTTPS URL used to enroll.
    pub(crate) broker_url: String,
    /// The broker's QUIC address as the broker reported it.
    pub(crate) quic_addr: String,
}

/// The state directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// No enrollment in this directory.
    #[error("no enrollment in {}: run `palisade-connector enroll --broker URL --token TOKEN` first", dir.display())]
    NotEnrolled {
        /// The state directory.
        dir: PathBuf,
    },
    /// A file is present but unusable.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// A certificate's validity window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Validity {
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

/// The broker backdates `not_before` by this much to absorb clock skew; it
/// is not part of the lifetime the renewal schedule divides.
const BACKDATED: Duration = Duration::from_secs(60);

impl Validity {
    /// True once more than two thirds of the lifetime has passed.
    pub(crate) fn renewal_due(&self, now: SystemTime) -> bool {
        let start = (self.not_before + BACKDATED).min(self.not_after);
        let lifetime = self.not_after.duration_since(start).unwrap_or(Duration::ZERO);
        let elapsed = now.duration_since(start).unwrap_or(Duration::ZERO);
        elapsed.as_secs_f64() * 3.0 > lifetime.as_secs_f64() * 2.0
    }
}

/// What a leaf certificate says about its key and lifetime.
pub(crate) struct LeafInfo {
    /// The raw subject public key (the BIT STRING's content).
    pub(crate) public_key: Vec<u8>,
    pub(crate) validity: Validity,
}

/// Reads the public key and validity of a DER certificate.
pub(crate) fn leaf_info(der: &[u8]) -> Result<LeafInfo, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("unparsable certificate: {e}"))?;
    let time = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    Ok(LeafInfo {
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        validity: Validity {
            not_before: time(cert.validity().not_before.timestamp()),
            not_after: time(cert.validity().not_after.timestamp()),
        },
    })
}

/// Everything loaded from the state directory.
pub(crate) struct StoredIdentity {
    pub(crate) record: IdentityRecord,
    pub(crate) spiffe: SpiffeId,
    pub(crate) tls: TlsIdentity,
    pub(crate) trust: TrustAnchors,
    pub(crate) validity: Validity,
}

/// The state directory.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    dir: PathBuf,
}

impl Store {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The recorded enrollment, if there is one.
    pub(crate) fn enrollment(&self) -> Result<Option<IdentityRecord>, StoreError> {
        let path = self.path(IDENTITY);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt { path, reason: e.to_string() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Writes a fresh enrollment; `identity.json` last.
    pub(crate) fn save_enrollment(
        &self,
        key_pem: &str,
        cert_pem: &str,
        ca_pem: &str,
        record: &IdentityRecord,
    ) -> Result<(), StoreError> {
        self.create_dir()?;
        for stale in [KEY_NEXT, CERT_NEXT] {
            self.remove_if_present(stale)?;
        }
        let json = serde_json::to_vec_pretty(record).map_err(|e| self.corrupt(IDENTITY, e.to_string()))?;
        self.write(KEY, key_pem.as_bytes(), 0o600)?;
        self.write(CERT, cert_pem.as_bytes(), 0o600)?;
        self.write(CA, ca_pem.as_bytes(), 0o644)?;
        self.write(IDENTITY, &json, 0o644)
    }

    /// Replaces key and certificate together, then the CA bundle.
    pub(crate) fn save_renewal(&self, key_pem: &str, cert_pem: &str, ca_pem: &str) -> Result<(), StoreError> {
        self.write(KEY_NEXT, key_pem.as_bytes(), 0o600)?;
        self.write(CERT_NEXT, cert_pem.as_bytes(), 0o600)?;
        self.commit_next()?;
        self.write(CA, ca_pem.as_bytes(), 0o644)
    }

    /// Loads and cross-checks every file. Does not check expiry: the caller decides what an
    /// expired certificate means.
    pub(crate) fn load(&self) -> Result<StoredIdentity, StoreError> {
        self.recover()?;
        let record = self.enrollment()?.ok_or_else(|| StoreError::NotEnrolled { dir: self.dir.clone() })?;
        let spiffe: SpiffeId = record.identity.parse().map_err(|e| self.corrupt(IDENTITY, format!("{e}")))?;
        if spiffe.role != PeerRole::Connector {
            return Err(self.corrupt(IDENTITY, format!("{spiffe} is not a connector identity")));
        }
        let chain = pem::certs(&self.read(CERT)?).map_err(|e| self.corrupt(CERT, e.to_string()))?;
        let key_pem = self.read(KEY)?;
        let key = pem::private_key(&key_pem).map_err(|e| self.corrupt(KEY, e.to_string()))?;
        let ca = pem::certs(&self.read(CA)?).map_err(|e| self.corrupt(CA, e.to_string()))?;
        let trust = TrustAnchors::new(spiffe.trust_domain.clone(), ca).map_err(|e| self.corrupt(CA, e.to_string()))?;
        let leaf = chain.first().ok_or_else(|| self.corrupt(CERT, "no certificate".into()))?;
        let info = leaf_info(leaf).map_err(|reason| self.corrupt(CERT, reason))?;
        let key_pair = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| self.corrupt(KEY, e.to_string()))?;
        if key_pair.public_key_raw() != info.public_key.as_slice() {
            return Err(self.corrupt(CERT, "the certificate is for another key than key.pem".into()));
        }
        Ok(StoredIdentity { record, spiffe, tls: TlsIdentity { chain, key }, trust, validity: info.validity })
    }

    /// The validity of the stored certificate, read without touching
    /// anything else (a renewal by another link may be in progress).
    pub(crate) fn certificate_validity(&self) -> Result<Validity, StoreError> {
        let chain = pem::certs(&self.read(CERT)?).map_err(|e| self.corrupt(CERT, e.to_string()))?;
        let leaf = chain.first().ok_or_else(|| self.corrupt(CERT, "no certificate".into()))?;
        Ok(leaf_info(leaf).map_err(|reason| self.corrupt(CERT, reason))?.validity)
    }

    /// The stored CA bundle as trust anchors of `td`.
    pub(crate) fn trust_anchors(&self, td: &TrustDomain) -> Result<TrustAnchors, StoreError> {
        let ca = pem::certs(&self.read(CA)?).map_err(|e| self.corrupt(CA, e.to_string()))?;
        TrustAnchors::new(td.clone(), ca).map_err(|e| self.corrupt(CA, e.to_string()))
    }

    /// Finishes or discards a renewal interrupted by a crash.
    fn recover(&self) -> Result<(), StoreError> {
        if self.path(CERT_NEXT).exists() {
            tracing::warn!(dir = %self.dir.display(), "finishing a certificate renewal interrupted by a restart");
            self.commit_next()
        } else {
            self.remove_if_present(KEY_NEXT)
        }
    }

    fn commit_next(&self) -> Result<(), StoreError> {
        if self.path(KEY_NEXT).exists() {
            self.rename(KEY_NEXT, KEY)?;
        }
        self.rename(CERT_NEXT, CERT)?;
        self.sync_dir()
    }

    fn create_dir(&self) -> Result<(), StoreError> {
        let io_err = |source| StoreError::Io { path: self.dir.clone(), source };
        if !self.dir.exists() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir).map_err(io_err)?;
            // `mode` is filtered by the umask; the directory holds a private key.
            fs::set_permissions(&self.dir, Permissions::from_mode(0o700)).map_err(io_err)?;
        }
        Ok(())
    }

    /// Saves the last good signed policy bundle, replacing the previous one.
    pub(crate) fn save_bundle(&self, bundle: &SignedBundle) -> Result<(), StoreError> {
        let json = serde_json::to_vec(bundle).map_err(|e| self.corrupt(POLICY_BUNDLE, e.to_string()))?;
        self.write(POLICY_BUNDLE, &json, 0o600)
    }

    /// The saved signed policy bundle, if any. Its signature is not checked here.
    pub(crate) fn load_bundle(&self) -> Result<Option<SignedBundle>, StoreError> {
        let path = self.path(POLICY_BUNDLE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt { path, reason: e.to_string() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    fn read(&self, name: &str) -> Result<String, StoreError> {
        let path = self.path(name);
        fs::read_to_string(&path).map_err(|source| StoreError::Io { path, source })
    }

    fn write(&self, name: &str, data: &[u8], mode: u32) -> Result<(), StoreError> {
        let path = self.path(name);
        write_atomic(&path, data, mode).map_err(|source| StoreError::Io { path, source })
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let from = self.path(from);
        fs::rename(&from, self.path(to)).map_err(|source| StoreError::Io { path: from, source })
    }

    fn remove_if_present(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::Io { path, source: e }),
            _ => Ok(()),
        }
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StoreError::Io { path: self.dir.clone(), source })
    }

    fn corrupt(&self, name: &str, reason: String) -> StoreError {
        StoreError::Corrupt { path: self.path(name), reason }
    }
}

/// Temp file in the same directory, fsync, chmod, rename over, fsync the directory.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    file.write_all(data)?;
    file.set_permissions(Permissions::from_mode(mode))?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) => fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_after_two_thirds_of_the_lifetime_after_the_backdating() {
        let issued = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let v = Validity { not_before: issued - BACKDATED, not_after: issued + Duration::from_secs(300) };
        let start = issued;
        assert!(!v.renewal_due(start));
        assert!(!v.renewal_due(start + Duration::from_secs(199)));
        assert!(v.renewal_due(start + Duration::from_secs(201)));
        assert!(v.renewal_due(start + Duration::from_secs(400)));
        assert!(!v.renewal_due(start - Duration::from_secs(10)));
        // A short certificate is not due the moment it is issued.
        let short = Validity { not_before: issued - BACKDATED, not_after: issued + Duration::from_secs(30) };
        assert!(!short.renewal_due(issued + Duration::from_secs(1)));
        assert!(short.renewal_due(issued + Duration::from_secs(21)));
    }

    #[test]
    fn atomic_writes_set_the_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        write_atomic(&path, b"one", 0o600).expect("write");
        write_atomic(&path, b"two", 0o600).expect("overwrite");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.path().join("key.pem.tmp").exists());
    }

    #[test]
    fn an_interrupted_renewal_is_rolled_forward_or_discarded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path().to_owned());
        fs::write(dir.path().join(KEY), "old key").expect("write");
        fs::write(dir.path().join(CERT), "old cert").expect("write");
        // Crash after key.pem.new was written but before cert.pem.new: discard.
        fs::write(dir.path().join(KEY_NEXT), "new key").expect("write");
        store.recover().expect("recover");
        assert_eq!(fs::read_to_string(dir.path().join(KEY)).expect("read"), "old key");
        assert!(!dir.path().join(KEY_NEXT).exists());
        // Crash between the two renames: roll forward.
        fs::write(dir.path().join(KEY), "new key").expect("write");
        fs::write(dir.path().join(CERT_NEXT), "new cert").expect("write");
        store.recover().expect("recover");
        assert_eq!(fs::read_to_string(dir.path().join(CERT)).expect("read"), "new cert");
        assert!(!dir.path().join(CERT_NEXT).exists());
    }
}
