//! `POST /api/v1/enroll` called directly, to send what the real client never would.

use palisade_proto::enroll::EnrollmentToken;

use crate::wait::DEFAULT_TIMEOUT;

/// The broker's enrollment endpoint, trusted through a token's CA pin.
#[derive(Clone)]
pub struct EnrollApi {
    base: String,
    http: reqwest::Client,
}

/// Status and JSON body of one enrollment attempt.
#[derive(Debug, Clone)]
pub struct EnrollAnswer {
    /// HTTP status.
    pub status: u16,
    /// The JSON body (`Null` if it was not JSON).
    pub body: serde_json::Value,
}

impl EnrollAnswer {
    /// The issued certificate (PEM) of a 200 answer.
    ///
    /// # Panics
    /// If the answer was not a successful enrollment.
    #[must_use]
    pub fn certificate_pem(&self) -> &str {
        assert_eq!(self.status, 200, "expected an issued certificate, got {self:?}");
        self.body["certificate_pem"].as_str().expect("certificate_pem")
    }
}

impl EnrollApi {
    /// A client for `https_url` that trusts the CA pinned in `token`.
    #[must_use]
    pub fn new(https_url: &str, token: &str) -> Self {
        let token: EnrollmentToken = token.parse().expect("a well-formed enrollment token");
        let tls = palisade_proto::tls::pinned_client_config(token.ca_pin()).expect("pinned TLS config");
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(DEFAULT_TIMEOUT)
            .build()
            .expect("build the HTTPS client");
        Self { base: https_url.trim_end_matches('/').to_owned(), http }
    }

    /// `POST /api/v1/enroll` with this token and CSR.
    pub async fn enroll(&self, token: &str, csr_pem: &str) -> EnrollAnswer {
        let body = serde_json::json!({ "token": token, "csr_pem": csr_pem });
        let response = self
            .http
            .post(format!("{}/api/v1/enroll", self.base))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /api/v1/enroll: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        EnrollAnswer { status, body }
    }

    /// `GET /healthz` status.
    pub async fn healthz(&self) -> u16 {
        let response = self.http.get(format!("{}/healthz", self.base)).send().await.expect("GET /healthz");
        response.status().as_u16()
    }
}
