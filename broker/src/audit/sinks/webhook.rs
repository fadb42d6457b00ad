//! The HTTPS webhook: one POST per batch, the body JSON lines in the export
//! schema (`application/x-ndjson`). Any 2xx acknowledges the whole batch.

use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::SinkError;
use crate::audit::chain::EventRow;
use crate::audit::export::json_line;
use crate::config::Secret;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) struct Webhook {
    client: reqwest::Client,
    url: Url,
    bearer_token: Option<Secret>,
}

impl Webhook {
    pub(super) fn new(
        url: Url,
        bearer_token: Option<Secret>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> anyhow::Result<Self> {
        // reqwest is built without a default crypto provider: always hand it a
        // config (with no roots for a local http:// receiver).
        let tls = match tls {
            Some(tls) => (*tls).clone(),
            None => rustls::ClientConfig::builder_with_provider(palisade_proto::tls::crypto_provider())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        };
        let builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .use_preconfigured_tls(tls);
        Ok(Self { client: builder.build()?, url, bearer_token })
    }

    pub(super) async fn deliver(&self, rows: &[EventRow]) -> Result<(), SinkError> {
        let mut body = String::new();
        for row in rows {
            body.push_str(&json_line(row));
            body.push('\n');
        }
        let mut request =
            self.client.post(self.url.clone()).header(reqwest::header::CONTENT_TYPE, "application/x-ndjson").body(body);
        if let Some(token) = &self.bearer_token {
            request = request.bearer_auth(token.expose());
        }
        // reqwest's error Display includes the URL but never headers, so the token stays out of logs.
        let response = request.send().await.map_err(|e| SinkError::Webhook(e.without_url().to_string()))?;
        let status = response.status();
        if status.is_success() { Ok(()) } else { Err(SinkError::Webhook(format!("receiver answered {status}"))) }
    }
}
