//! The CA key at rest: AES-256-GCM under a key-encryption key (KEK).
//!
//! `ca.key.enc` is a small text file:
//!
//! ```text
//! palisade-ca-key v1 aes-256-gcm
//! <base64 of: 12-byte random nonce || ciphertext || 16-byte tag>
//! ```
//!
//! The plaintext is the CA's PKCS#8 private key. The associated data names the
//! file's purpose and version, so a blob encrypted under the same KEK for
//! anything else does not open as a CA key.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};

use super::ca::CaError;

const HEADER: &str = "palisade-ca-key v1 aes-256-gcm";
const AAD: &[u8] = b"palisade ca.key.enc v1: CA private key, PKCS#8";

/// Environment variable that may hold the KEK (base64 of 32 bytes).
pub const KEK_ENV: &str = "PALISADE_CA_KEK";

/// The key-encryption key. Its `Debug` output hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Kek([u8; 32]);

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(***)")
    }
}

impl Kek {
    /// A fresh random KEK.
    ///
    /// # Errors
    /// The operating system's random number generator failed.
    pub fn generate() -> Result<Kek, CaError> {
        let mut key = [0u8; 32];
        SystemRandom::new().fill(&mut key).map_err(|_| CaError::Random)?;
        Ok(Kek(key))
    }

    /// Parses base64 (standard alphabet) of exactly 32 bytes; `origin` names where it came from.
    ///
    /// # Errors
    /// Anything else.
    pub fn from_base64(text: &str, origin: &str) -> Result<Kek, CaError> {
        STANDARD.decode(text.trim()).ok().and_then(|v| <[u8; 32]>::try_from(v).ok()).map(Kek).ok_or_else(|| {
            CaError::Kek(format!(
                "{origin} is not base64 of 32 bytes (make one with `head -c 32 /dev/urandom | base64`)"
            ))
        })
    }

    /// Reads a KEK file.
    ///
    /// # Errors
    /// The file cannot be read or does not hold a KEK.
    pub fn from_file(path: &Path) -> Result<Kek, CaError> {
        let text = std::fs::read_to_string(path).map_err(|source| CaError::Io { path: path.to_owned(), source })?;
        Self::from_base64(&text, &path.display().to_string())
    }

    /// The base64 text stored in a KEK file.
    #[must_use]
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    fn aead_key(&self) -> Result<LessSafeKey, CaError> {
        UnboundKey::new(&AES_256_GCM, &self.0).map(LessSafeKey::new).map_err(|_| CaError::Kek("unusable key".into()))
    }
}

/// Where the KEK comes from, in order: the configured file, `PALISADE_CA_KEK`, `<data_dir>/kek`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KekSource {
    /// A file named in the configuration or on the command line.
    File(PathBuf),
    /// The `PALISADE_CA_KEK` environment variable.
    Env,
    /// `<data_dir>/kek`, written by `init` when no other source was given.
    DataDir(PathBuf),
}

impl KekSource {
    /// Picks the source: `kek_file` if given, else the environment if `env_value` is set, else the data directory.
    #[must_use]
    pub fn choose(kek_file: Option<&Path>, env_value: Option<&str>, data_dir: &Path) -> KekSource {
        match (kek_file, env_value) {
            (Some(f), _) => KekSource::File(f.to_owned()),
            (None, Some(_)) => KekSource::Env,
            (None, None) => KekSource::DataDir(data_dir.join("kek")),
        }
    }

    /// Reads the KEK from this source (`env_value` is the value of `PALISADE_CA_KEK`).
    ///
    /// # Errors
    /// The source is missing or does not hold a KEK.
    pub fn read(&self, env_value: Option<&str>) -> Result<Kek, CaError> {
        match self {
            KekSource::File(p) | KekSource::DataDir(p) => Kek::from_file(p),
            KekSource::Env => Kek::from_base64(env_value.unwrap_or_default(), KEK_ENV),
        }
    }
}

/// Encrypts a PKCS#8 key into the `ca.key.enc` format.
///
/// # Errors
/// Randomness or encryption failed.
pub fn seal(kek: &Kek, pkcs8: &[u8]) -> Result<String, CaError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| CaError::Random)?;
    let mut buf = pkcs8.to_vec();
    kek.aead_key()?
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(AAD), &mut buf)
        .map_err(|_| CaError::Kek("encryption failed".into()))?;
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&buf);
    Ok(format!("{HEADER}\n{}\n", STANDARD.encode(blob)))
}

/// Decrypts the `ca.key.enc` format back into PKCS#8.
///
/// # Errors
/// [`CaError::KeyFile`] for an unknown format, [`CaError::Decrypt`] for a wrong KEK or a corrupt file.
pub fn open(kek: &Kek, text: &str) -> Result<Vec<u8>, CaError> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default().trim();
    if header != HEADER {
        let reason =
            if header.starts_with("palisade-ca-key") { "unsupported version" } else { "not a Palisade encrypted key" };
        return Err(CaError::KeyFile(reason.into()));
    }
    let b64: String = lines.flat_map(str::chars).filter(|c| !c.is_ascii_whitespace()).collect();
    let blob = STANDARD.decode(b64).map_err(|_| CaError::Decrypt)?;
    if blob.len() < NONCE_LEN + AES_256_GCM.tag_len() {
        return Err(CaError::Decrypt);
    }
    let (nonce, sealed) = blob.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CaError::Decrypt)?;
    let mut buf = sealed.to_vec();
    let plain = kek.aead_key()?.open_in_place(nonce, Aad::from(AAD), &mut buf).map_err(|_| CaError::Decrypt)?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_round_trips_and_a_wrong_kek_fails() {
        let kek = Kek::generate().expect("kek");
        let sealed = seal(&kek, b"secret key").expect("seal");
        assert!(!sealed.contains("secret"));
        assert_eq!(open(&kek, &sealed).expect("open"), b"secret key");
        let other = Kek::generate().expect("kek");
        assert!(matches!(open(&other, &sealed), Err(CaError::Decrypt)));
        let mut tampered = sealed.clone().into_bytes();
        let i = tampered.len() - 5;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        assert!(matches!(open(&kek, &String::from_utf8(tampered).expect("utf8")), Err(CaError::Decrypt)));
        assert!(matches!(open(&kek, "palisade-ca-key v2 x\nAAAA"), Err(CaError::KeyFile(_))));
    }

    #[test]
    fn kek_text_must_be_32_bytes_and_debug_hides_it() {
        let kek = Kek::generate().expect("kek");
        assert_eq!(Kek::from_base64(&kek.to_base64(), "test").expect("parse"), kek);
        assert!(Kek::from_base64("c2hvcnQ=", "test").is_err());
        assert_eq!(format!("{kek:?}"), "Kek(***)");
    }
}
