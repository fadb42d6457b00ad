//! What the broker ships to connectors: policy text plus the service catalog.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One policy file, by name (e.g. `inference.cedar`) and full text.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// The file's name, without directory; used in error messages and in
    /// generated policy ids (`<name>:<line>`).
    pub name: String,
    /// The Cedar source.
    pub text: String,
}

/// A service in the catalog: the resource a policy decides about.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    /// The service's name, as clients ask for it (`Service::"<name>"`).
    pub name: String,
    /// The segment the service belongs to (`Segment::"<segment>"`).
    pub segment: String,
    /// `"tcp"` or `"http"`.
    pub protocol: String,
    /// Free-form labels policies can test (`resource.labels.contains(..)`).
    #[serde(default)]
    pub labels: Vec<String>,
}

/// A versioned set of policy files and the service catalog they apply to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyBundle {
    /// Monotonic version assigned by the broker.
    pub version: u64,
    /// The policy files.
    pub files: Vec<PolicyFile>,
    /// The service catalog.
    pub services: Vec<ServiceEntry>,
}

/// Domain separation for [`PolicyBundle::digest`]; bump the suffix if the
/// encoding below ever changes.
const DIGEST_DOMAIN: &[u8] = b"palisade-policy-bundle-v1";

impl PolicyBundle {
    /// The lower-case hex SHA-256 of the bundle's content: its files and
    /// services, but not its version, so two versions with the same content
    /// have the same digest.
    ///
    /// The encoding is canonical: files are taken in name order, services
    /// in name order and labels as a sorted set, and every string is
    /// length-prefixed, so no two different contents encode alike.
    #[must_use]
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(DIGEST_DOMAIN);

        let mut files: Vec<&PolicyFile> = self.files.iter().collect();
        files.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.text.cmp(&b.text)));
        put_len(&mut hasher, files.len());
        for file in files {
            put_str(&mut hasher, &file.name);
            put_str(&mut hasher, &file.text);
        }

        let mut services: Vec<&ServiceEntry> = self.services.iter().collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        put_len(&mut hasher, services.len());
        for service in services {
            put_str(&mut hasher, &service.name);
            put_str(&mut hasher, &service.segment);
            put_str(&mut hasher, &service.protocol);
            let mut labels: Vec<&str> = service.labels.iter().map(String::as_str).collect();
            labels.sort_unstable();
            labels.dedup();
            put_len(&mut hasher, labels.len());
            for label in labels {
                put_str(&mut hasher, label);
            }
        }
        hex(&hasher.finalize())
    }
}

fn put_len(hasher: &mut Sha256, len: usize) {
    // usize is at most 64 bits on every supported target.
    hasher.update((len as u64).to_be_bytes());
}

fn put_str(hasher: &mut Sha256, s: &str) {
    put_len(hasher, s.len());
    hasher.update(s.as_bytes());
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}
