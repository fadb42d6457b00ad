//! Enrollment: `GET /api/v1/trust-bundle` and `POST /api/v1/enroll`.

use std::time::SystemTime;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use palisade_proto::enroll::{EnrollRequest, EnrollResponse};

use super::{PeerAddr, api_error, internal_error};
use crate::Broker;
use crate::issuance::enroll::{EnrollError, Enroller};

/// Largest enrollment request body.
pub const MAX_BODY: usize = 64 * 1024;

pub(crate) fn routes() -> Router<Broker> {
    Router::new()
        .route("/api/v1/trust-bundle", get(trust_bundle))
        .route("/api/v1/enroll", post(enroll).layer(DefaultBodyLimit::max(MAX_BODY)))
}

async fn trust_bundle(State(broker): State<Broker>) -> Response {
    ([(header::CONTENT_TYPE, "application/x-pem-file")], broker.trust_bundle_pem()).into_response()
}

async fn enroll(
    State(broker): State<Broker>,
    peer: Option<Extension<PeerAddr>>,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = match rejection.status() {
                s @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => s,
                _ => StatusCode::BAD_REQUEST,
            };
            return api_error(status, "bad_request", rejection.body_text());
        }
    };
    let config = broker.config();
    let enroller = Enroller {
        db: broker.db(),
        audit: broker.audit(),
        ca: broker.ca(),
        machine_ttl: config.certificates.machine_ttl,
        connector_ttl: config.certificates.connector_ttl,
        source: peer.map(|Extension(PeerAddr(addr))| addr),
    };
    match enroller.redeem(&req.token, &req.csr_pem, SystemTime::now()).await {
        Ok(enrolled) => Json(EnrollResponse {
            identity: enrolled.issued.spiffe_id,
            certificate_pem: enrolled.issued.certificate_pem,
            ca_pem: broker.trust_bundle_pem(),
            not_after_unix: enrolled.issued.not_after_unix,
            quic_addr: config.quic_public_addr(),
            replicas: broker.other_replicas().await,
        })
        .into_response(),
        Err(e) => enroll_error(&e),
    }
}

fn enroll_error(e: &EnrollError) -> Response {
    match e {
        EnrollError::MalformedToken => api_error(StatusCode::UNAUTHORIZED, "invalid_token", e.to_string()),
        EnrollError::TokenRefused => api_error(StatusCode::FORBIDDEN, "token_refused", e.to_string()),
        EnrollError::NameTaken { .. } => api_error(StatusCode::CONFLICT, "name_taken", e.to_string()),
        EnrollError::Invalid(_) => api_error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
        EnrollError::Issue(issue) if issue.is_bad_request() => {
            api_error(StatusCode::BAD_REQUEST, issue.code(), issue.to_string())
        }
        EnrollError::Issue(issue) if issue.code() == "ca_unavailable" => {
            tracing::error!(error = %issue, "enrollment: the CA could not issue");
            api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ca_unavailable",
                "the certificate authority is unavailable; try again later",
            )
        }
        EnrollError::Issue(issue) if issue.code() == "identity_disabled" => {
            api_error(StatusCode::FORBIDDEN, "token_refused", EnrollError::TokenRefused.to_string())
        }
        EnrollError::Issue(_) | EnrollError::Db(_) | EnrollError::Audit(_) => internal_error(e),
    }
}
