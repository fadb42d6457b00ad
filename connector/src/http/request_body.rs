//! The caller's request body, before anything is decided: JSON bodies and
//! bodies sent to the OpenAI JSON endpoints are read whole (bounded) for the
//! fields policies see; anything else streams to the workload, bounded too.
//!
//! The OpenAI endpoints are read whatever the `Content-Type` says: several
//! model servers parse the body as JSON regardless, so a request labelled
//! `text/plain` must not carry `logprobs` past the policy unseen.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use palisade_policies::BodyFields;

use super::body::BoxError;
use super::openai;
use super::record::{RequestRecord, sha256_hex};
use super::reply::{self, ResponseBody};

/// The largest JSON request body read for its fields; larger ones get 413.
pub(crate) const MAX_JSON_BODY: usize = 8 * 1024 * 1024;
/// The largest request body streamed through unread (uploads); larger ones are cut.
pub(crate) const MAX_STREAMED_BODY: usize = 64 * 1024 * 1024;

/// Paths whose bodies are always read as JSON (the canonical, decoded path).
const JSON_ENDPOINTS: [&str; 4] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"];

/// The body to forward and, if it was read, its fields.
pub(crate) struct RequestBody {
    pub(crate) body: UnsyncBoxBody<Bytes, BoxError>,
    pub(crate) fields: Option<BodyFields>,
}

fn is_json(headers: &http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
        let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        essence == "application/json" || essence.ends_with("+json")
    })
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok())
}

fn too_large(record: &mut RequestRecord, limit: usize) -> Response<ResponseBody> {
    record.reason = "body_too_large".into();
    let message = format!("the request body is larger than {limit} bytes");
    reply::error(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", &message)
}

/// Reads or wraps the body of a request to `path`; the `Err` is the answer to send instead.
pub(crate) async fn prepare<B>(
    headers: &http::HeaderMap,
    path: &str,
    body: B,
    record: &mut RequestRecord,
) -> Result<RequestBody, Response<ResponseBody>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let read = is_json(headers) || JSON_ENDPOINTS.contains(&path);
    let limit = if read { MAX_JSON_BODY } else { MAX_STREAMED_BODY };
    if declared_length(headers).is_some_and(|length| length > limit as u64) {
        return Err(too_large(record, limit));
    }
    if !read {
        // A chunked upload past the limit ends in an error that aborts the upstream request.
        let body = Limited::new(body, MAX_STREAMED_BODY).boxed_unsync();
        return Ok(RequestBody { body, fields: None });
    }
    let bytes = match Limited::new(body, MAX_JSON_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(too_large(record, MAX_JSON_BODY)),
        Err(e) => {
            record.reason = "body_unreadable".into();
            return Err(reply::bad_request(&format!("the request body could not be read: {e}")));
        }
    };
    record.bytes_up = bytes.len() as u64;
    let fields = fields_of(&bytes, record).map_err(|e| reply::bad_request(&e.to_string()))?;
    Ok(RequestBody { body: reply::full(bytes), fields })
}

/// An empty body has no fields; any other must be one well-typed JSON object.
fn fields_of(bytes: &Bytes, record: &mut RequestRecord) -> Result<Option<BodyFields>, openai::FieldsError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let fields = openai::request_fields(bytes).inspect_err(|_| record.reason = "bad_json".into())?;
    record.body_sha256 = Some(sha256_hex(bytes));
    record.fields = fields.clone();
    Ok(Some(fields))
}

#[cfg(test)]
mod tests {
    use http_body_util::{Full, StreamBody};

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), v.parse().expect("value"))).collect()
    }

    async fn forwarded(prepared: RequestBody) -> Vec<u8> {
        prepared.body.collect().await.expect("the body streams").to_bytes().to_vec()
    }

    #[tokio::test]
    async fn openai_endpoints_are_read_whatever_the_content_type() {
        let body = r#"{"model":"m","logprobs":true}"#;
        let mut record = RequestRecord::start("POST", "/v1/completions");
        let plain = headers(&[("content-type", "text/plain")]);
        let prepared = prepare(&plain, "/v1/completions", Full::new(Bytes::from(body)), &mut record).await;
        let prepared = prepared.unwrap_or_else(|r| panic!("refused with {}", r.status()));
        assert!(prepared.fields.as_ref().is_some_and(|f| f.logprobs && f.model.as_deref() == Some("m")));
        assert_eq!(forwarded(prepared).await, body.as_bytes(), "the bytes are forwarded unchanged");
        let refused = prepare(&plain, "/v1/completions", Full::new(Bytes::from("x=1")), &mut record).await;
        assert_eq!(refused.err().map(|r| r.status()), Some(StatusCode::BAD_REQUEST));
        let upload = prepare(&plain, "/v1/files", Full::new(Bytes::from("x=1")), &mut record).await;
        assert!(upload.is_ok_and(|p| p.fields.is_none()), "other paths stream through unread");
    }

    #[tokio::test]
    async fn bodies_are_bounded_declared_or_streamed() {
        let mut record = RequestRecord::start("POST", "/v1/chat/completions");
        let big = (MAX_JSON_BODY + 1).to_string();
        let declared = headers(&[("content-type", "application/json"), ("content-length", &big)]);
        let refused = prepare(&declared, "/v1/chat/completions", Full::new(Bytes::new()), &mut record).await;
        assert_eq!(refused.err().map(|r| r.status()), Some(StatusCode::PAYLOAD_TOO_LARGE));
        let chunk = Bytes::from(vec![b' '; 1024 * 1024]);
        let chunks = || {
            let frames = (0..9).map(|_| Ok::<_, std::io::Error>(http_body::Frame::data(chunk.clone())));
            StreamBody::new(futures::stream::iter(frames.collect::<Vec<_>>()))
        };
        let json = headers(&[("content-type", "application/json")]);
        let refused = prepare(&json, "/v1/chat/completions", chunks(), &mut record).await;
        assert_eq!(refused.err().map(|r| r.status()), Some(StatusCode::PAYLOAD_TOO_LARGE), "chunked, no length");
        let huge = (MAX_STREAMED_BODY + 1).to_string();
        let upload = headers(&[("content-type", "audio/wav"), ("content-length", &huge)]);
        let refused = prepare(&upload, "/v1/audio/transcriptions", Full::new(Bytes::new()), &mut record).await;
        assert_eq!(refused.err().map(|r| r.status()), Some(StatusCode::PAYLOAD_TOO_LARGE));
    }
}
