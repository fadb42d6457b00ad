//! The broker's CA key, opened with the broker's own keystore code and the
//! KEK file `init` leaves in the data directory when no KEK was supplied.

use std::path::Path;

use palisade_broker::issuance::ca::{CA_CERT_FILE, CA_KEY_FILE, Ca};
use palisade_broker::issuance::keystore::{self, Kek};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

/// The CA certificate and its private key.
pub(crate) fn load(data_dir: &Path) -> (CertificateDer<'static>, KeyPair) {
    let kek = Kek::from_file(&data_dir.join("kek")).expect("read the KEK init wrote");
    Ca::load(data_dir, &kek).expect("the broker's CA loads with its KEK");
    let sealed = std::fs::read_to_string(data_dir.join(CA_KEY_FILE)).expect("read ca.key.enc");
    let pkcs8 = keystore::open(&kek, &sealed).expect("open ca.key.enc");
    let key = KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(pkcs8), &PKCS_ECDSA_P256_SHA256)
        .expect("the CA key is ECDSA P-256");
    let pem = std::fs::read_to_string(data_dir.join(CA_CERT_FILE)).expect("read ca.pem");
    let cert = palisade_proto::pem::certs(&pem).expect("ca.pem holds a certificate").remove(0);
    (cert, key)
}
