//! Entry points for the fuzz targets in `tests/src/fuzz.rs`, which cannot
//! reach the crate-private parsers directly. Not an API: nothing here is
//! used by the connector itself, and nothing grants access.

use palisade_policies::BodyFields;

use crate::http::{normalize, openai};

/// The L7 path normalizer: the decoded and the re-encoded canonical path,
/// or the refusal as text.
///
/// # Errors
/// The reason the path is refused.
pub fn normalize_path(raw: &str) -> Result<(String, String), String> {
    normalize::normalize(raw).map(|path| (path.decoded, path.encoded)).map_err(|e| e.to_string())
}

/// The OpenAI request fields the policy sees.
///
/// # Errors
/// Why the body is refused.
pub fn request_fields(body: &[u8]) -> Result<BodyFields, String> {
    openai::request_fields(body).map_err(|e| e.to_string())
}

/// `(prompt, completion)` tokens of a JSON response body's `usage`.
#[must_use]
pub fn usage_of_json(body: &[u8]) -> Option<(u64, u64)> {
    openai::usage_of_json(body).map(|u| (u.prompt_tokens, u.completion_tokens))
}

/// `(prompt, completion)` tokens of the last `usage` in a server-sent-event
/// stream fed in these chunks, and whether it ended with `[DONE]`.
#[must_use]
pub fn sse_usage(chunks: &[&[u8]]) -> (Option<(u64, u64)>, bool) {
    let mut sse = openai::SseUsage::default();
    for chunk in chunks {
        sse.feed(chunk);
    }
    (sse.usage().map(|u| (u.prompt_tokens, u.completion_tokens)), sse.done())
}
