//! Frames on the connector's control stream.
//!
//! A connector opens one bidirectional stream with the
//! [`crate::wire::StreamKind::ConnectorControl`] header right after its QUIC
//! handshake, sends [`ConnectorToBroker::Hello`], and keeps the stream for the
//! life of the connection. Frames are length-prefixed JSON
//! ([`crate::wire::encode_frame`]).

use serde::{Deserialize, Serialize};

use crate::bundle::SignedBundle;
use crate::id::DecisionId;
use crate::throttle::Throttle;
use crate::usage::{UsageDelta, UsageElsewhere};

/// Connector → broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ConnectorToBroker {
    /// First frame: what this connector serves.
    Hello {
        /// The connector's software version.
        version: String,
        /// Names of the services it can reach.
        services: Vec<String>,
    },
    /// How a dispatched stream ended, for the audit trail.
    StreamReport {
        /// The broker's decision id from the dispatch header.
        decision_id: DecisionId,
        /// What happened.
        outcome: StreamOutcome,
    },
    /// Asks for a fresh certificate for a new key.
    Renew {
        /// PEM CSR made by the connector.
        csr_pem: String,
    },
    /// One HTTP request on an L7 service, for the model-access audit.
    HttpRequest {
        /// The broker's decision id of the tunnel that carried it.
        decision_id: DecisionId,
        /// What was asked and what happened; never bodies.
        record: Box<HttpRequestRecord>,
    },
    /// The models an HTTP service's upstream lists at `/v1/models`, for the inventory.
    Models {
        /// The service name.
        service: String,
        /// Model ids as the upstream reports them.
        models: Vec<String>,
    },
    /// The public key this connector signs identity assertions with, for the broker's JWKS.
    AssertionKey {
        /// The key as a JWK (`kty` EC, `crv` P-256, `x`, `y`, `kid`, `alg` ES256, `use` sig).
        jwk: serde_json::Value,
    },
    /// Quota usage this connector process counted since its last report
    /// (see [`crate::usage`]); without entries, it names the instance the
    /// link reports for. Checked whole with [`crate::usage::check_report`].
    Usage {
        /// The connector process (one per run), letters, digits and '-'.
        instance: String,
        /// At most [`crate::usage::MAX_ENTRIES`] counts to add.
        entries: Vec<UsageDelta>,
    },
}

/// One HTTP request seen by a connector (model-access audit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRequestRecord {
    /// The connector's id for this request (also in the identity assertion).
    pub request_id: String,
    /// The caller's SPIFFE id.
    pub identity: String,
    /// The caller's session, if any.
    pub session: Option<String>,
    /// The service name.
    pub service: String,
    /// The HTTP method.
    pub method: String,
    /// The canonical path (or the raw path, truncated, when it was refused as non-canonical).
    pub path: String,
    /// `allow`, `deny`, `invalid` (refused as malformed), `limited` (429) or `error` (upstream failed).
    pub decision: String,
    /// Short reason code when not plainly allowed.
    pub reason: Option<String>,
    /// Policies that decided.
    pub policy_ids: Vec<String>,
    /// The `model` field of an OpenAI-compatible request.
    pub model: Option<String>,
    /// Whether the request asked for log-probabilities.
    pub logprobs: bool,
    /// Whether the request asked for a streamed answer.
    pub stream: bool,
    /// The HTTP status returned to the caller.
    pub status: u16,
    /// Prompt tokens from the response's `usage`.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens from the response's `usage`.
    pub completion_tokens: Option<u64>,
    /// Milliseconds from the request to the end of the response.
    pub latency_ms: u64,
    /// Request body bytes (when read).
    pub bytes_up: u64,
    /// Response body bytes.
    pub bytes_down: u64,
    /// SHA-256 (hex) of a JSON request body, for forensics.
    pub body_sha256: Option<String>,
    /// Whether the connector cut the response (revocation).
    pub cut: bool,
}

/// How a dispatched stream ended at the connector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum StreamOutcome {
    /// The connector's own policy check refused the stream.
    Denied {
        /// Stable short reason code.
        reason: String,
        /// Human-readable detail.
        detail: String,
        /// Policy ids that decided, if any.
        policy_ids: Vec<String>,
    },
    /// The upstream could not be dialled.
    UpstreamFailed {
        /// What went wrong.
        detail: String,
    },
    /// The tunnel ran and ended. Connectors no longer send it (the broker
    /// audits the end of every stream it relays); a broker still accepts it
    /// from older ones.
    Completed {
        /// Bytes from the caller to the workload.
        bytes_up: u64,
        /// Bytes from the workload to the caller.
        bytes_down: u64,
        /// How long the stream lasted.
        duration_ms: u64,
    },
}

/// Broker → connector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BrokerToConnector {
    /// Answer to `Hello`: the policy bundle to enforce.
    Welcome {
        /// The connector's identity as the broker sees it.
        connector_id: String,
        /// The policy bundle (`palisade_policies::PolicyBundle` as JSON), signed by the CA.
        policy: SignedBundle,
    },
    /// A new policy bundle replaces the current one.
    PolicyUpdate {
        /// The policy bundle (`palisade_policies::PolicyBundle` as JSON), signed by the CA.
        policy: SignedBundle,
    },
    /// A renewed certificate.
    Renewed {
        /// PEM leaf certificate.
        certificate_pem: String,
        /// PEM CA bundle.
        ca_pem: String,
    },
    /// Renewal failed.
    RenewFailed {
        /// Why.
        message: String,
    },
    /// Sessions and identities revoked since the certificates that name them
    /// were issued: refuse their streams even if a broker forwards them.
    Revoked {
        /// Revoked session ids.
        sessions: Vec<String>,
        /// Revoked (disabled) identity ids.
        identities: Vec<String>,
    },
    /// What the other connector instances counted for services this
    /// connector serves, in windows still running (see [`crate::usage`]).
    UsageElsewhere {
        /// At most [`crate::usage::MAX_ENTRIES`] counts.
        entries: Vec<UsageElsewhere>,
    },
    /// Every throttle now in force on the services this connector serves
    /// (see [`crate::throttle`]); replaces the set sent before. An empty
    /// list clears them all.
    Throttles {
        /// At most [`crate::throttle::MAX_THROTTLES`] throttles.
        throttles: Vec<Throttle>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::decode_frame;

    #[test]
    fn unknown_fields_and_types_are_refused() {
        let ok = br#"{"type":"hello","version":"0.1.0","services":["llm"]}"#;
        assert!(decode_frame::<ConnectorToBroker>(ok).is_ok());
        let extra = br#"{"type":"hello","version":"0.1.0","services":["llm"],"admin":true}"#;
        assert!(decode_frame::<ConnectorToBroker>(extra).is_err());
        let unknown = br#"{"type":"become_admin"}"#;
        assert!(decode_frame::<ConnectorToBroker>(unknown).is_err());
    }

    #[test]
    fn only_the_broker_sends_throttles() {
        let set = br#"{"type":"throttles","throttles":[{"service":"llm","identity":"spiffe://td/machine/m","requests_per_minute":6}]}"#;
        assert!(decode_frame::<BrokerToConnector>(set).is_ok());
        assert!(decode_frame::<ConnectorToBroker>(set).is_err(), "a connector cannot set throttles");
        let clear = br#"{"type":"throttles","throttles":[]}"#;
        assert!(decode_frame::<ConnectorToBroker>(clear).is_err(), "a connector cannot clear throttles");
        let extra =
            br#"{"type":"throttles","throttles":[{"service":"llm","identity":"i","requests_per_minute":6,"until":0}]}"#;
        assert!(decode_frame::<BrokerToConnector>(extra).is_err());
    }
}
