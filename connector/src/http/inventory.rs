//! Which models an HTTP service serves: the connector asks the upstream's
//! `GET /v1/models` (OpenAI-compatible servers, vLLM, Ollama's OpenAI API)
//! and reports the ids to the broker, at most hourly per control link and
//! service. An upstream that does not answer is simply not reported.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt as _, Empty, Limited};
use palisade_proto::control::ConnectorToBroker;
use serde_json::Value;
use tokio::sync::mpsc;

use super::forward;
use super::per_link::PerLink;

const REPORT_EVERY: Duration = Duration::from_secs(3_600);
const MAX_BODY: usize = 1024 * 1024;
const MAX_MODELS: usize = 500;

/// Reports the service's models on this link in the background, if due.
pub(crate) fn report(control: &mpsc::Sender<ConnectorToBroker>, service: &str, upstream: &str, timeout: Duration) {
    static SENT: PerLink = PerLink::new(REPORT_EVERY);
    if !SENT.due(control, service, Instant::now()) {
        return;
    }
    let (control, service, upstream) = (control.clone(), service.to_owned(), upstream.to_owned());
    tokio::spawn(async move {
        let models = match tokio::time::timeout(timeout, fetch(&upstream, timeout)).await {
            Ok(Ok(models)) => models,
            Ok(Err(e)) => return tracing::debug!(%service, error = %e, "no model list from the upstream"),
            Err(_) => return tracing::debug!(%service, "the upstream's model list timed out"),
        };
        tracing::info!(%service, count = models.len(), "reporting the upstream's models");
        if control.send(ConnectorToBroker::Models { service: service.clone(), models }).await.is_err() {
            SENT.forget(&control, &service);
        }
    });
}

async fn fetch(upstream: &str, timeout: Duration) -> Result<Vec<String>, String> {
    let request = Request::get("/v1/models")
        .header(header::HOST, upstream)
        .header(header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync())
        .map_err(|e| e.to_string())?;
    let response = forward::send(upstream, timeout, request).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_BODY).collect().await.map_err(|e| e.to_string())?.to_bytes();
    model_ids(&body).ok_or_else(|| "not an OpenAI model list".to_owned())
}

/// The `data[].id` strings of an OpenAI model list.
fn model_ids(body: &[u8]) -> Option<Vec<String>> {
    let list: Value = serde_json::from_slice(body).ok()?;
    let ids = list.get("data")?.as_array()?.iter().filter_map(|m| m.get("id")?.as_str()).map(str::to_owned);
    Some(ids.take(MAX_MODELS).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_read_from_an_openai_list() {
        let body = br#"{"object":"list","data":[{"id":"llama-3.1-8b","object":"model"},{"id":"e5-large"},{"x":1}]}"#;
        assert_eq!(model_ids(body), Some(vec!["llama-3.1-8b".to_owned(), "e5-large".to_owned()]));
        assert_eq!(model_ids(br#"{"models":[]}"#), None);
        assert_eq!(model_ids(b"<html>"), None);
    }
}
