//! What the connector reads from OpenAI-compatible traffic: a few request
//! fields (for policy, limits and audit) and the `usage` object of the
//! response, in a JSON body or in the last events of a server-sent-event
//! stream.

use std::fmt;

use palisade_policies::BodyFields;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

/// The request body is not one JSON object with well-typed fields.
#[derive(Debug, thiserror::Error)]
#[error("the JSON request body is not acceptable: {0}")]
pub(crate) struct FieldsError(String);

const FIELDS: [&str; 11] = [
    "model",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "n",
    "best_of",
    "logprobs",
    "top_logprobs",
    "prompt_logprobs",
    "stream",
    "stream_options",
];

/// Reads the fields of a JSON request body. A field given twice is refused:
/// parsers disagree on which copy wins, and the connector must decide on
/// the one the workload uses. Where a workload may honour one of several
/// fields (`max_tokens` or `max_completion_tokens`, `n` or `best_of`), the
/// largest counts.
pub(crate) fn request_fields(body: &[u8]) -> Result<BodyFields, FieldsError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let seen = de.deserialize_map(FieldVisitor).map_err(|e| FieldsError(e.to_string()))?;
    de.end().map_err(|e| FieldsError(e.to_string()))?;
    let get = |name: &str| seen.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let count = |name: &str| count(name, get(name));
    let largest = |names: &[&str]| -> Result<Option<u64>, FieldsError> {
        names.iter().try_fold(None, |max: Option<u64>, name| Ok(max.max(count(name)?)))
    };
    let model = match get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(model)) => Some(model.clone()),
        Some(_) => return Err(FieldsError("`model` must be a string".into())),
    };
    Ok(BodyFields {
        model,
        max_tokens: largest(&["max_tokens", "max_completion_tokens", "max_output_tokens"])?,
        n: largest(&["n", "best_of"])?,
        logprobs: logprobs(get("logprobs"))? || count("top_logprobs")?.is_some() || count("prompt_logprobs")?.is_some(),
        stream: flag("stream", get("stream"))?,
    })
}

/// A whole number a Cedar `Long` can hold, or absent.
fn count(name: &str, value: Option<&Value>) -> Result<Option<u64>, FieldsError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| i64::try_from(*n).is_ok())
            .map(Some)
            .ok_or_else(|| FieldsError(format!("`{name}` must be a whole number from 0 to {}", i64::MAX))),
    }
}

fn flag(name: &str, value: Option<&Value>) -> Result<bool, FieldsError> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(FieldsError(format!("`{name}` must be a boolean"))),
    }
}

/// `logprobs` is a boolean (chat) or a count (legacy completions, where even
/// 0 returns the sampled token's log probability).
fn logprobs(value: Option<&Value>) -> Result<bool, FieldsError> {
    match value {
        Some(Value::Number(_)) => count("logprobs", value).map(|n| n.is_some()),
        other => flag("logprobs", other).map_err(|_| FieldsError("`logprobs` must be a boolean or a count".into())),
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Vec<(String, Value)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen: Vec<(String, Value)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if FIELDS.contains(&key.as_str()) {
                if seen.iter().any(|(k, _)| *k == key) {
                    return Err(serde::de::Error::custom(format!("`{key}` is given twice")));
                }
                let value = map.next_value::<Value>()?;
                seen.push((key, value));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(seen)
    }
}

/// Token counts from a `usage` object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
}

impl Usage {
    pub(crate) fn total(self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// The `usage` object of a JSON response body, if it has one.
pub(crate) fn usage_of_json(body: &[u8]) -> Option<Usage> {
    let value: Value = serde_json::from_slice(body).ok()?;
    usage_of_value(&value)
}

fn usage_of_value(value: &Value) -> Option<Usage> {
    let usage = value.get("usage")?;
    let field = |name: &str| usage.get(name).and_then(Value::as_u64);
    let prompt = field("prompt_tokens").or_else(|| field("input_tokens"))?;
    let completion = field("completion_tokens").or_else(|| field("output_tokens")).unwrap_or(0);
    Some(Usage { prompt_tokens: prompt, completion_tokens: completion })
}

/// Follows a server-sent-event stream chunk by chunk and keeps the last
/// `usage` seen. Holds at most one incomplete line, bounded in size.
#[derive(Debug, Default)]
pub(crate) struct SseUsage {
    line: Vec<u8>,
    overflow: bool,
    usage: Option<Usage>,
    done: bool,
}

/// The longest SSE line inspected; longer lines (big content deltas) are skipped.
const MAX_SSE_LINE: usize = 256 * 1024;

impl SseUsage {
    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        for piece in chunk.split_inclusive(|&b| b == b'\n') {
            let complete = piece.ends_with(b"\n");
            if !self.overflow {
                if self.line.len() + piece.len() > MAX_SSE_LINE {
                    self.overflow = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(piece);
                }
            }
            if complete {
                if !self.overflow {
                    self.take_line();
                }
                self.line.clear();
                self.overflow = false;
            }
        }
    }

    fn take_line(&mut self) {
        let line = self.line.trim_ascii();
        let Some(data) = line.strip_prefix(b"data:") else { return };
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.done = true;
        }
        if data.first() != Some(&b'{') {
            return;
        }
        if let Some(usage) = serde_json::from_slice::<Value>(data).ok().as_ref().and_then(usage_of_value) {
            self.usage = Some(usage);
        }
    }

    pub(crate) fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether the stream said `data: [DONE]`: no more tokens follow.
    pub(crate) fn done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_request_fields_are_read() {
        let body = br#"{"model":"llama-3.1-8b","messages":[{"role":"user","content":"hi"}],
            "max_completion_tokens":64,"max_tokens":9,"n":2,"logprobs":true,"stream":true}"#;
        let fields = request_fields(body).expect("valid");
        assert_eq!(
            fields,
            BodyFields {
                model: Some("llama-3.1-8b".into()),
                max_tokens: Some(64),
                n: Some(2),
                logprobs: true,
                stream: true
            }
        );
        let legacy = request_fields(br#"{"model":"m","prompt":"x","logprobs":5,"max_tokens":7}"#).expect("valid");
        assert!(legacy.logprobs);
        assert_eq!(legacy.max_tokens, Some(7));
        assert_eq!(request_fields(b"{}").expect("valid"), BodyFields::default());
        let plain = request_fields(br#"{"model":"m","logprobs":false,"stream":false,"n":null}"#).expect("valid");
        assert_eq!(plain, BodyFields { model: Some("m".into()), ..BodyFields::default() });
    }

    #[test]
    fn every_way_to_ask_for_log_probabilities_counts() {
        for body in [
            &br#"{"logprobs":true}"#[..],
            br#"{"logprobs":0}"#,
            br#"{"top_logprobs":0}"#,
            br#"{"logprobs":false,"top_logprobs":3}"#,
            br#"{"prompt_logprobs":1}"#,
        ] {
            assert!(request_fields(body).expect("valid").logprobs, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn the_largest_of_alternative_caps_counts() {
        let body = br#"{"max_completion_tokens":10,"max_tokens":100000,"n":1,"best_of":20}"#;
        let fields = request_fields(body).expect("valid");
        assert_eq!((fields.max_tokens, fields.n), (Some(100_000), Some(20)));
        let responses = request_fields(br#"{"max_output_tokens":5000}"#).expect("valid");
        assert_eq!(responses.max_tokens, Some(5000));
    }

    #[test]
    fn ambiguous_or_mistyped_bodies_are_refused() {
        for body in [
            &br#"{"model":"cheap","model":"expensive"}"#[..],
            br#"{"logprobs":false,"logprobs":true}"#,
            br#"{"model":7}"#,
            br#"{"stream":"yes"}"#,
            br#"{"n":-1}"#,
            br#"{"n":"5"}"#,
            br#"{"max_tokens":1.5}"#,
            br#"{"max_tokens":-1}"#,
            br#"{"max_tokens":1e99}"#,
            br#"{"max_tokens":5.0}"#,
            br#"{"max_tokens":9223372036854775808}"#,
            br#"{"max_tokens":100000000000000000000000}"#,
            br#"{"max_tokens":10,"max_tokens":10}"#,
            br#"{"mod\u0065l":"a","model":"b"}"#,
            br#"{"logprobs":"yes"}"#,
            br#"{"logprobs":-1}"#,
            br#"{"top_logprobs":true}"#,
            br#"{"stream_options":{},"stream_options":{}}"#,
            br#"[1,2]"#,
            br#"{"model":"m"} trailing"#,
            b"not json",
        ] {
            assert!(request_fields(body).is_err(), "{:?} was accepted", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn usage_is_read_from_json() {
        let body = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
        assert_eq!(usage_of_json(body), Some(Usage { prompt_tokens: 12, completion_tokens: 30 }));
        let embeddings = br#"{"data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        assert_eq!(usage_of_json(embeddings), Some(Usage { prompt_tokens: 8, completion_tokens: 0 }));
        assert_eq!(usage_of_json(br#"{"choices":[]}"#), None);
        assert_eq!(usage_of_json(b"{broken"), None);
    }

    #[test]
    fn usage_is_read_from_the_last_sse_chunk_across_split_reads() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}],\"usage\":null}\n\n",
            ": keep-alive\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
            "data: [DONE]\n\n",
        );
        for split in [1, 3, 7, 50, stream.len()] {
            let mut sse = SseUsage::default();
            for chunk in stream.as_bytes().chunks(split) {
                sse.feed(chunk);
            }
            assert_eq!(sse.usage(), Some(Usage { prompt_tokens: 5, completion_tokens: 2 }), "chunks of {split}");
            assert!(sse.done(), "chunks of {split}");
        }
    }

    #[test]
    fn an_sse_stream_without_usage_reports_none() {
        let mut sse = SseUsage::default();
        sse.feed(b"data: {\"choices\":[]}\n\n");
        assert!(!sse.done());
        sse.feed(b"data: [DONE]\n\n");
        assert_eq!(sse.usage(), None);
        let mut huge = SseUsage::default();
        huge.feed(&vec![b'a'; MAX_SSE_LINE + 10]);
        huge.feed(b"\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n");
        assert_eq!(huge.usage(), Some(Usage { prompt_tokens: 1, completion_tokens: 1 }));
    }
}
