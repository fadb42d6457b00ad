//! The model-access audit: one record per request, reported to the broker
//! over the control stream so it lands in the hash-chained audit trail.
//! Bodies are never recorded; a JSON request body leaves only its SHA-256.

use std::time::Instant;

use palisade_policies::BodyFields;
use palisade_proto::control::{ConnectorToBroker, HttpRequestRecord};

use super::Tunnel;
use super::body::BodyEnd;
use super::decide::RequestDenied;
use crate::metrics::{HTTP_REQUESTS, TOKENS};

/// The longest path kept in a record of a refused, non-canonical request.
const MAX_RECORDED_PATH: usize = 256;

#[derive(Debug)]
pub(crate) struct RequestRecord {
    pub(crate) request_id: String,
    started: Instant,
    method: String,
    pub(crate) path: String,
    pub(crate) reason: String,
    pub(crate) decision: &'static str,
    pub(crate) policy_ids: Vec<String>,
    pub(crate) fields: BodyFields,
    pub(crate) status: u16,
    pub(crate) bytes_up: u64,
    pub(crate) body_sha256: Option<String>,
}

impl RequestRecord {
    pub(crate) fn start(method: &str, raw_path: &str) -> Self {
        let path: String = raw_path.chars().take(MAX_RECORDED_PATH).collect();
        Self {
            request_id: uuid::Uuid::new_v4().to_string(),
            started: Instant::now(),
            method: method.to_owned(),
            path,
            reason: String::new(),
            decision: "invalid",
            policy_ids: Vec::new(),
            fields: BodyFields::default(),
            status: 0,
            bytes_up: 0,
            body_sha256: None,
        }
    }

    pub(crate) fn deny(&mut self, denied: &RequestDenied) {
        self.decision = "deny";
        self.reason = denied.code().to_owned();
        self.policy_ids = denied.policy_ids();
    }

    /// The connector answered itself (malformed, denied, limited, upstream down).
    pub(crate) fn finish_refused(mut self, tunnel: &Tunnel, status: http::StatusCode, upstream_tried: Option<Instant>) {
        self.status = status.as_u16();
        if status == http::StatusCode::TOO_MANY_REQUESTS {
            self.decision = "limited";
        } else if upstream_tried.is_some() {
            self.decision = "error";
        }
        self.send(tunnel, BodyEnd::default());
    }

    /// The workload answered and the response body ended.
    pub(crate) fn finish_forwarded(mut self, tunnel: &Tunnel, end: BodyEnd) {
        self.decision = "allow";
        if let Some(cut) = end.cut {
            self.reason = cut.reason().into();
        } else if end.incomplete {
            self.reason = "incomplete".into();
        }
        self.send(tunnel, end);
    }

    fn send(self, tunnel: &Tunnel, end: BodyEnd) {
        let latency_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let record = HttpRequestRecord {
            request_id: self.request_id,
            identity: tunnel.caller.peer.id().uri(),
            session: tunnel.caller.peer.session().map(str::to_owned),
            service: tunnel.service.clone(),
            method: self.method,
            path: self.path,
            decision: self.decision.to_owned(),
            reason: (!self.reason.is_empty()).then_some(self.reason),
            policy_ids: self.policy_ids,
            model: self.fields.model,
            logprobs: self.fields.logprobs,
            stream: self.fields.stream,
            status: self.status,
            prompt_tokens: end.usage.map(|u| u.prompt_tokens),
            completion_tokens: end.usage.map(|u| u.completion_tokens),
            latency_ms,
            bytes_up: self.bytes_up,
            bytes_down: end.bytes,
            body_sha256: self.body_sha256,
            cut: end.cut.is_some(),
        };
        tracing::info!(
            request_id = %record.request_id,
            method = %record.method,
            path = %record.path,
            decision = %record.decision,
            status = record.status,
            latency_ms,
            "http request"
        );
        count(&record);
        let frame = ConnectorToBroker::HttpRequest { decision_id: tunnel.decision_id, record: Box::new(record) };
        // Never wait here: this runs inside a body's poll. A full queue loses a record, loudly.
        if let Err(e) = tunnel.control.try_send(frame) {
            tracing::warn!(error = %e, "control stream busy or closed: http request record lost");
        }
    }
}

/// The request and its tokens in the connector's metrics.
fn count(record: &HttpRequestRecord) {
    let service = record.service.as_str();
    HTTP_REQUESTS.get(&[service, &record.status.to_string(), &record.decision]).inc();
    for (kind, tokens) in [("prompt", record.prompt_tokens), ("completion", record.completion_tokens)] {
        if let Some(tokens) = tokens {
            TOKENS.get(&[service, kind]).add(tokens);
        }
    }
}

/// Lower-case hex SHA-256.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    palisade_proto::enroll::sha256(data).iter().map(|b| format!("{b:02x}")).collect()
}
