//! Answers the connector gives itself, in the OpenAI error shape so SDKs
//! show them. Bodies name the class of problem, never which check failed.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};

use super::body::BoxError;

pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A JSON error response: `{"error": {"message", "type", "code"}}`.
pub(crate) fn error(status: StatusCode, kind: &str, message: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({ "error": { "message": message, "type": kind, "code": status.as_u16() } });
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn bad_request(message: &str) -> Response<ResponseBody> {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

pub(crate) fn forbidden() -> Response<ResponseBody> {
    error(StatusCode::FORBIDDEN, "permission_error", "this identity may not make this request")
}

pub(crate) fn bad_gateway() -> Response<ResponseBody> {
    error(StatusCode::BAD_GATEWAY, "upstream_error", "the workload did not answer")
}

/// 429 with `Retry-After` in whole seconds (at least 1).
pub(crate) fn too_many(message: &str, retry_after_secs: u64) -> Response<ResponseBody> {
    let mut response = error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
    response
}

pub(crate) fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}
