//! Hand-built authenticator answers, for what a real authenticator never
//! sends: a registration with `fmt: "none"` (nothing signed) whose
//! authenticator data names any credential id and any COSE key (WA-10,
//! WA-11). The client data stays the genuine one the software authenticator
//! wrote for the ceremony, so only the forged part can be what is refused.
//! [`Forger`] goes further: its own key, registered that way, signs
//! assertions over any RP id and flags (WA-05, WA-06, WA-08), so a refusal
//! can only come from the field under test, never from a bad signature.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};
use url::Url;
use webauthn_rs::prelude::{PublicKeyCredential, RequestChallengeResponse};

/// Just enough CBOR for an attestation object and a COSE key.
pub enum Cbor {
    Int(i64),
    Bytes(Vec<u8>),
    Text(&'static str),
    Map(Vec<(Cbor, Cbor)>),
}

impl Cbor {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Cbor::Int(v) if *v >= 0 => head(out, 0, v.unsigned_abs()),
            Cbor::Int(v) => head(out, 1, (-1 - *v).unsigned_abs()),
            Cbor::Bytes(b) => {
                head(out, 2, b.len() as u64);
                out.extend_from_slice(b);
            }
            Cbor::Text(t) => {
                head(out, 3, t.len() as u64);
                out.extend_from_slice(t.as_bytes());
            }
            Cbor::Map(entries) => {
                head(out, 5, entries.len() as u64);
                for (k, v) in entries {
                    k.write(out);
                    v.write(out);
                }
            }
        }
    }
}

/// A CBOR item head: major type and argument, shortest form.
fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend([m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend((n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend((n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend(n.to_be_bytes());
        }
    }
}

fn cose(entries: Vec<(i64, Cbor)>) -> Cbor {
    Cbor::Map(entries.into_iter().map(|(k, v)| (Cbor::Int(k), v)).collect())
}

/// A genuine P-256 public key as an ES256 COSE key, under COSE algorithm `alg`.
pub fn ec2_key(alg: i64) -> Cbor {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    ec2_point(key.public_key_raw(), alg)
}

/// An uncompressed P-256 point as a COSE key under algorithm `alg`.
fn ec2_point(point: &[u8], alg: i64) -> Cbor {
    assert_eq!(point.len(), 65, "uncompressed P-256 point");
    let (x, y) = (point[1..33].to_vec(), point[33..].to_vec());
    cose(vec![(1, Cbor::Int(2)), (3, Cbor::Int(alg)), (-1, Cbor::Int(1)), (-2, Cbor::Bytes(x)), (-3, Cbor::Bytes(y))])
}

/// An RS256 COSE key whose modulus has `bits` bits (odd, top bit set).
pub fn rsa_key(bits: usize) -> Cbor {
    let mut n = vec![0x5a; bits / 8];
    n[0] = 0xc3;
    *n.last_mut().unwrap() |= 1;
    cose(vec![(1, Cbor::Int(3)), (3, Cbor::Int(-257)), (-1, Cbor::Bytes(n)), (-2, Cbor::Bytes(vec![1, 0, 1]))])
}

/// A genuine Ed25519 public key as a COSE key (EdDSA, which the broker does not ask for).
pub fn ed25519_key() -> Cbor {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let x = key.public_key_raw().to_vec();
    cose(vec![(1, Cbor::Int(1)), (3, Cbor::Int(-8)), (-1, Cbor::Int(6)), (-2, Cbor::Bytes(x))])
}

/// Authenticator data flags (WebAuthn §6.1).
pub const UP: u8 = 0x01;
/// User verified.
pub const UV: u8 = 0x04;
/// Backup eligible.
pub const BE: u8 = 0x08;
/// Backup state (backed up).
pub const BS: u8 = 0x10;
const AT: u8 = 0x40;

/// Authenticator data for `rp_id` with `flags` and attested credential data:
/// an all-zero AAGUID, `cred_id` and `key`.
fn auth_data(rp_id: &str, flags: u8, cred_id: &[u8], key: &Cbor) -> Vec<u8> {
    let mut data = palisade_proto::enroll::sha256(rp_id.as_bytes()).to_vec();
    data.push(flags | AT);
    data.extend([0; 4]);
    data.extend([0; 16]);
    data.extend(u16::try_from(cred_id.len()).unwrap().to_be_bytes());
    data.extend_from_slice(cred_id);
    data.extend(key.encode());
    data
}

/// `{fmt: "none", attStmt: {}, authData}`.
fn attestation_none(auth_data: Vec<u8>) -> Vec<u8> {
    Cbor::Map(vec![
        (Cbor::Text("fmt"), Cbor::Text("none")),
        (Cbor::Text("attStmt"), Cbor::Map(Vec::new())),
        (Cbor::Text("authData"), Cbor::Bytes(auth_data)),
    ])
    .encode()
}

/// `genuine` (a registration response's JSON) with its attestation object
/// replaced by an unsigned one naming `cred_id` and `key` for RP `localhost`.
pub fn registration(genuine: &Value, cred_id: &[u8], key: &Cbor) -> Value {
    registration_with(genuine, cred_id, UP | UV, key)
}

/// As [`registration`], with authenticator data flags `flags`.
fn registration_with(genuine: &Value, cred_id: &[u8], flags: u8, key: &Cbor) -> Value {
    let mut reg = genuine.clone();
    let id = URL_SAFE_NO_PAD.encode(cred_id);
    reg["id"] = Value::String(id.clone());
    reg["rawId"] = Value::String(id);
    let object = attestation_none(auth_data("localhost", flags, cred_id, key));
    reg["response"]["attestationObject"] = Value::String(URL_SAFE_NO_PAD.encode(object));
    reg
}

/// `value` with the base64url bytes at `pointer` replaced by `edit(bytes)`.
pub fn edit_bytes(value: &Value, pointer: &str, edit: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Value {
    let mut value = value.clone();
    let field = value.pointer_mut(pointer).unwrap_or_else(|| panic!("no {pointer} in the body"));
    let bytes = URL_SAFE_NO_PAD.decode(field.as_str().unwrap()).unwrap();
    *field = Value::String(URL_SAFE_NO_PAD.encode(edit(bytes)));
    value
}

/// A fresh random-looking credential id.
pub fn cred_id() -> Vec<u8> {
    uuid::Uuid::new_v4().as_bytes().repeat(2)
}

/// An authenticator whose every byte the test chooses: a P-256 key of its
/// own, registered through an unsigned `fmt: "none"` attestation, that signs
/// assertions over whatever RP id and flags it is told, with a counter that
/// goes up by one per assertion.
pub struct Forger {
    key: EcdsaKeyPair,
    cred_id: Vec<u8>,
    counter: u32,
}

impl Forger {
    pub fn new() -> Forger {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        Forger { key, cred_id: cred_id(), counter: 0 }
    }

    /// `genuine` (a registration answer's JSON, for its client data) turned
    /// into a registration of this key for RP `localhost`, with `flags`.
    pub fn registration(&self, genuine: &Value, flags: u8) -> Value {
        registration_with(genuine, &self.cred_id, flags, &ec2_point(self.key.public_key().as_ref(), -7))
    }

    /// The answer to `rcr` as a browser at `origin` would send it, signed over
    /// authenticator data that names `rp_id` and carries `flags`.
    pub fn assertion(
        &mut self,
        origin: &Url,
        rcr: &RequestChallengeResponse,
        rp_id: &str,
        flags: u8,
    ) -> PublicKeyCredential {
        let challenge = serde_json::to_value(rcr).unwrap()["publicKey"]["challenge"].clone();
        let client_data = json!({
            "type": "webauthn.get",
            "challenge": challenge,
            "origin": origin.origin().ascii_serialization(),
            "crossOrigin": false,
        });
        let client_data = serde_json::to_vec(&client_data).unwrap();
        self.counter += 1;
        let mut auth_data = palisade_proto::enroll::sha256(rp_id.as_bytes()).to_vec();
        auth_data.push(flags);
        auth_data.extend(self.counter.to_be_bytes());
        let mut signed = auth_data.clone();
        signed.extend(palisade_proto::enroll::sha256(&client_data));
        let signature = self.key.sign(&SystemRandom::new(), &signed).unwrap();
        let id = URL_SAFE_NO_PAD.encode(&self.cred_id);
        serde_json::from_value(json!({
            "id": id,
            "rawId": id,
            "type": "public-key",
            "extensions": {},
            "response": {
                "authenticatorData": URL_SAFE_NO_PAD.encode(auth_data),
                "clientDataJSON": URL_SAFE_NO_PAD.encode(client_data),
                "signature": URL_SAFE_NO_PAD.encode(signature.as_ref()),
                "userHandle": null,
            },
        }))
        .unwrap()
    }
}
