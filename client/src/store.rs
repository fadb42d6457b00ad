//! The files under `PALISADE_HOME`: who this client is and how to reach the broker.
//!
//! ```text
//! $PALISADE_HOME/            0700
//!   key.pem                  0600  the private key, made on this machine
//!   cert.pem                 0600  the certificate the broker issued for it
//!   ca.pem                   0644  the broker's CA (trust bundle)
//!   profile.json             0644  {identity, broker_url, quic_addr[, session_id, session_expires_unix]}
//! ```
//!
//! Every file is written atomically (temporary file, fsync, rename), and
//! `profile.json` last: its presence is what "enrolled" means. A person who
//! logged out keeps `key.pem`, `ca.pem` and `profile.json` (without the
//! session fields) so that the next `palisade login` knows the broker and
//! trusts it; only `cert.pem` is gone.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_proto::id::SessionId;
use palisade_proto::identity::{ATTRIBUTES_OID_STR, IdentityAttributes, SpiffeId, TrustAnchors};
use palisade_proto::tls::TlsIdentity;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

/// File names under the home directory.
pub const KEY_FILE: &str = "key.pem";
/// The issued certificate.
pub const CERT_FILE: &str = "cert.pem";
/// The broker's CA bundle.
pub const CA_FILE: &str = "ca.pem";
/// Who this client is and where the broker is.
pub const PROFILE_FILE: &str = "profile.json";

/// The local enrollment could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Nothing is stored yet.
    #[error(
        "not signed in or enrolled (nothing in {}): run `palisade login --broker URL` to sign in, or `palisade enroll --broker URL --token TOKEN` for a machine",
        home.display()
    )]
    NotEnrolled {
        /// The home directory that was looked at.
        home: PathBuf,
    },
    /// The profile is there but its certificate was deleted by `palisade logout`.
    #[error("logged out ({identity} has no certificate in {}): run `palisade login`", home.display())]
    LoggedOut {
        /// The identity that logged out.
        identity: String,
        /// The home directory.
        home: PathBuf,
    },
    /// An enrollment exists and `--force` was not given.
    #[error("already enrolled as {identity} (in {}); pass --force to replace it", home.display())]
    AlreadyEnrolled {
        /// The identity stored now.
        identity: String,
        /// The home directory.
        home: PathBuf,
    },
    /// A stored file is unreadable or does not make sense.
    #[error("{}: {problem}; enroll again with --force", path.display())]
    Corrupt {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// No home directory could be determined.
    #[error("cannot tell where to keep palisade's files: set PALISADE_HOME or pass --home")]
    NoHome,
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// `$PALISADE_HOME`, or the user's config directory + `/palisade`.
///
/// # Errors
/// [`StoreError::NoHome`] when neither the variable nor a config directory is known.
pub fn default_home() -> Result<PathBuf, StoreError> {
    if let Some(home) = std::env::var_os("PALISADE_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    config_dir().map(|d| d.join("palisade")).ok_or(StoreError::NoHome)
}

fn config_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if cfg!(windows) {
        return var("APPDATA");
    }
    if cfg!(target_os = "macos") {
        return var("HOME").map(|h| h.join("Library/Application Support"));
    }
    var("XDG_CONFIG_HOME").filter(|p| p.is_absolute()).or_else(|| var("HOME").map(|h| h.join(".config")))
}

/// The JSON in `profile.json`. Files written before sign-in existed have no
/// session fields; they read as `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileFile {
    /// The SPIFFE id the certificate names.
    pub identity: String,
    /// The broker's HTTPS URL, as given to `palisade enroll` or `palisade login`.
    pub broker_url: String,
    /// The broker's QUIC address, `host:port`.
    pub quic_addr: String,
    /// Other broker replicas (QUIC `host:port` each) to fail over to when the
    /// broker at `quic_addr` does not answer; as the broker listed them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    /// The sign-in session the certificate belongs to (people only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    /// When that session ends, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_expires_unix: Option<u64>,
}

/// Everything written by one enrollment.
#[derive(Clone)]
pub struct NewEnrollment {
    /// What goes into `profile.json`.
    pub profile: ProfileFile,
    /// PEM private key (PKCS#8).
    pub key_pem: String,
    /// PEM certificate chain, leaf first.
    pub cert_pem: String,
    /// PEM CA bundle.
    pub ca_pem: String,
}

/// Writes an enrollment under `home`, refusing to replace one unless `force`.
///
/// # Errors
/// [`StoreError::AlreadyEnrolled`], or an IO error naming the file.
pub fn save(home: &Path, new: &NewEnrollment, force: bool) -> Result<(), StoreError> {
    ensure_not_enrolled(home, force)?;
    create_home(home)?;
    let profile = serde_json::to_vec_pretty(&new.profile)
        .map_err(|e| StoreError::Corrupt { path: home.join(PROFILE_FILE), problem: e.to_string() })?;
    let files: [(&str, &[u8], u32); 4] = [
        (KEY_FILE, new.key_pem.as_bytes(), 0o600),
        (CERT_FILE, new.cert_pem.as_bytes(), 0o600),
        (CA_FILE, new.ca_pem.as_bytes(), 0o644),
        (PROFILE_FILE, &profile, 0o644),
    ];
    // Stage everything first so a failure (disk full) leaves the old enrollment whole.
    let mut staged = Vec::with_capacity(files.len());
    for (name, contents, mode) in files {
        staged.push((write_temp(home, name, contents, mode)?, home.join(name)));
    }
    for (tmp, path) in &staged {
        fs::rename(tmp, path).map_err(io_err(path))?;
    }
    sync_dir(home)
}

/// Fails with [`StoreError::AlreadyEnrolled`] if `home` holds an enrollment and `force` is false.
///
/// # Errors
/// As described.
pub fn ensure_not_enrolled(home: &Path, force: bool) -> Result<(), StoreError> {
    if force {
        return Ok(());
    }
    let profile = home.join(PROFILE_FILE);
    if profile.exists() || home.join(KEY_FILE).exists() {
        let identity = read_profile_file(&profile).map(|p| p.identity).unwrap_or_else(|_| "an unknown identity".into());
        return Err(StoreError::AlreadyEnrolled { identity, home: home.to_owned() });
    }
    Ok(())
}

fn create_home(home: &Path) -> Result<(), StoreError> {
    if home.is_dir() {
        warn_if_shared(home);
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(home).map_err(io_err(home))
}

fn warn_if_shared(home: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = fs::metadata(home)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(home = %home.display(), "the palisade home directory is readable by other users");
        }
    }
    #[cfg(not(unix))]
    let _ = home;
}

fn write_temp(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<PathBuf, StoreError> {
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let result = options.open(&tmp).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()
    });
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::Io { path: tmp, source: e });
    }
    Ok(tmp)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn read_profile_file(path: &Path) -> Result<ProfileFile, StoreError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt { path: path.to_owned(), problem: e.to_string() })
}

/// `profile.json` alone, or `None` when there is none.
///
/// # Errors
/// An unreadable or unparsable file.
pub fn read_profile(home: &Path) -> Result<Option<ProfileFile>, StoreError> {
    let path = home.join(PROFILE_FILE);
    match fs::metadata(&path) {
        Ok(_) => read_profile_file(&path).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io { path, source: e }),
    }
}

/// The text of a file under `home`, or `None` when it does not exist.
///
/// # Errors
/// Any other read error.
pub fn read_optional(home: &Path, name: &str) -> Result<Option<String>, StoreError> {
    let path = home.join(name);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io { path, source: e }),
    }
}

/// Logs out locally: deletes `cert.pem`, then drops the session fields from
/// `profile.json`. The key, the CA and the rest of the profile stay. Returns
/// whether there was a certificate to delete.
///
/// # Errors
/// An IO error naming the file; the certificate is deleted first, so a later
/// failure leaves only stale session fields behind.
pub fn forget_session(home: &Path) -> Result<bool, StoreError> {
    let cert = home.join(CERT_FILE);
    let deleted = match fs::remove_file(&cert) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(StoreError::Io { path: cert, source: e }),
    };
    if let Some(mut profile) = read_profile(home)?
        && (profile.session_id.is_some() || profile.session_expires_unix.is_some())
    {
        profile.session_id = None;
        profile.session_expires_unix = None;
        let json = serde_json::to_vec_pretty(&profile)
            .map_err(|e| StoreError::Corrupt { path: home.join(PROFILE_FILE), problem: e.to_string() })?;
        let tmp = write_temp(home, PROFILE_FILE, &json, 0o644)?;
        let path = home.join(PROFILE_FILE);
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
    }
    sync_dir(home)?;
    Ok(deleted)
}

/// A loaded enrollment: identity, key, certificate and the broker's CA.
#[derive(Clone)]
pub struct Profile {
    home: PathBuf,
    file: ProfileFile,
    id: SpiffeId,
    tls: TlsIdentity,
    trust: TrustAnchors,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("home", &self.home)
            .field("identity", &self.file.identity)
            .field("quic_addr", &self.file.quic_addr)
            .finish_non_exhaustive()
    }
}

impl Profile {
    /// Reads the enrollment stored under `home`.
    ///
    /// # Errors
    /// [`StoreError::NotEnrolled`] when there is none; [`StoreError::Corrupt`]
    /// when a file does not parse or the certificate does not name the identity.
    pub fn load(home: &Path) -> Result<Profile, StoreError> {
        let profile_path = home.join(PROFILE_FILE);
        if !profile_path.exists() {
            return Err(StoreError::NotEnrolled { home: home.to_owned() });
        }
        let file = read_profile_file(&profile_path)?;
        if !home.join(CERT_FILE).exists() {
            return Err(StoreError::LoggedOut { identity: file.identity, home: home.to_owned() });
        }
        let corrupt = |name: &str, problem: String| StoreError::Corrupt { path: home.join(name), problem };
        let id: SpiffeId = file.identity.parse().map_err(|e| corrupt(PROFILE_FILE, format!("identity: {e}")))?;
        let chain = read_pem(home, CERT_FILE, palisade_proto::pem::certs)?;
        let key = read_pem(home, KEY_FILE, palisade_proto::pem::private_key)?;
        let ca = read_pem(home, CA_FILE, palisade_proto::pem::certs)?;
        let trust = TrustAnchors::new(id.trust_domain.clone(), ca).map_err(|e| corrupt(CA_FILE, e.to_string()))?;
        let (not_before, not_after) = leaf_validity(&chain[0]).map_err(|e| corrupt(CERT_FILE, e))?;
        let tls = TlsIdentity { chain, key };
        Ok(Profile { home: home.to_owned(), file, id, tls, trust, not_before, not_after })
    }

    /// The SPIFFE id, e.g. `spiffe://palisade.example.com/machine/…`.
    #[must_use]
    pub fn identity(&self) -> &str {
        &self.file.identity
    }
    /// The parsed SPIFFE id.
    #[must_use]
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.id
    }
    /// The broker's HTTPS URL.
    #[must_use]
    pub fn broker_url(&self) -> &str {
        &self.file.broker_url
    }
    /// The broker's QUIC address, `host:port`.
    #[must_use]
    pub fn quic_addr(&self) -> &str {
        &self.file.quic_addr
    }
    /// Every broker replica to try, the enrolled one first.
    #[must_use]
    pub fn broker_addrs(&self) -> Vec<String> {
        let mut out = vec![self.file.quic_addr.clone()];
        for replica in &self.file.replicas {
            if !out.contains(replica) {
                out.push(replica.clone());
            }
        }
        out
    }
    /// The sign-in session this certificate belongs to, as stored at login.
    #[must_use]
    pub fn session_id(&self) -> Option<&SessionId> {
        self.file.session_id.as_ref()
    }
    /// When the sign-in session ends, as stored at login.
    #[must_use]
    pub fn session_expires(&self) -> Option<SystemTime> {
        self.file.session_expires_unix.map(|s| UNIX_EPOCH + Duration::from_secs(s))
    }
    /// The home directory it was loaded from.
    #[must_use]
    pub fn home(&self) -> &Path {
        &self.home
    }
    /// When the certificate became valid, by the broker's clock when it issued it.
    #[must_use]
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }
    /// When the certificate expires.
    #[must_use]
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
    /// Whether the certificate has expired at `now`.
    #[must_use]
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
    /// The certificate chain and key, for TLS.
    #[must_use]
    pub fn tls_identity(&self) -> &TlsIdentity {
        &self.tls
    }
    /// The broker's CA and our trust domain.
    #[must_use]
    pub fn trust(&self) -> &TrustAnchors {
        &self.trust
    }
}

fn read_pem<T>(
    home: &Path,
    name: &str,
    parse: impl FnOnce(&str) -> Result<T, palisade_proto::pem::PemError>,
) -> Result<T, StoreError> {
    let path = home.join(name);
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    parse(&text).map_err(|e| StoreError::Corrupt { path, problem: e.to_string() })
}

/// The `notAfter` of a DER certificate.
pub(crate) fn leaf_not_after(der: &CertificateDer<'_>) -> Result<SystemTime, String> {
    leaf_validity(der).map(|(_, not_after)| not_after)
}

/// The `notBefore` and `notAfter` of a DER certificate.
fn leaf_validity(der: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), String> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(der).map_err(|e| format!("unparsable certificate: {e}"))?;
    let at =
        |t: x509_parser::time::ASN1Time| UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0));
    Ok((at(cert.validity().not_before), at(cert.validity().not_after)))
}

/// The identity attributes of our own stored certificate, read without
/// validating it (for display, and to learn the session to refresh; the
/// broker and every later check validate for real).
pub(crate) fn leaf_attributes(der: &CertificateDer<'_>) -> Result<IdentityAttributes, String> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(der).map_err(|e| format!("unparsable certificate: {e}"))?;
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == ATTRIBUTES_OID_STR)
        .ok_or("the certificate has no identity attributes")?;
    IdentityAttributes::from_der(ext.value).map_err(|e| e.to_string())
}
