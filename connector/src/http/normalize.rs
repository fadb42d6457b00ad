//! The request path the policy sees, and the upstream gets.
//!
//! A path is decided on in its canonical form: percent-decoded, duplicate
//! slashes merged, `.` and `..` segments resolved. The same canonical form
//! (re-encoded) is what the connector forwards, so the workload's router
//! cannot read a different path from the one the policy allowed. Anything
//! whose meaning depends on the reader — an encoded slash or backslash, an
//! encoded dot segment, a backslash, NUL or another control character, `;`
//! path parameters, invalid percent-encoding or UTF-8, `..` above the root,
//! an overlong path — is refused instead of guessed at (case Q-10).

/// The longest raw request path accepted, in bytes.
pub(crate) const MAX_PATH_LEN: usize = 2048;

/// A path that was decoded and resolved without ambiguity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CanonicalPath {
    /// The decoded path the policy sees, e.g. `/v1/chat/completions`.
    pub(crate) decoded: String,
    /// The same path, percent-encoded where needed, for the upstream.
    pub(crate) encoded: String,
}

/// Why a path was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    #[error("the request target must be a path starting with `/`")]
    NotOriginForm,
    #[error("the path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("the path has an invalid percent-encoding")]
    BadEscape,
    #[error("the path encodes a `/` or `\\` (%2F, %5C), which routers read differently")]
    EncodedSeparator,
    #[error("the path has a percent-encoded dot segment")]
    EncodedDotSegment,
    #[error("the path has a backslash, NUL or another control character")]
    ForbiddenCharacter,
    #[error("the path has `;` parameters, which routers read differently")]
    PathParameter,
    #[error("the path is not valid UTF-8 once decoded")]
    NotUtf8,
    #[error("the path climbs above the root with `..`")]
    AboveRoot,
}

/// Canonicalizes the path part of a request target (no query string).
pub(crate) fn normalize(raw: &str) -> Result<CanonicalPath, PathError> {
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    let mut segments: Vec<String> = Vec::new();
    let raw_segments: Vec<&str> = raw[1..].split('/').collect();
    let last = raw_segments.len() - 1;
    let mut trailing_slash = false;
    for (i, raw_segment) in raw_segments.into_iter().enumerate() {
        let segment = decode_segment(raw_segment)?;
        match segment.as_str() {
            // Duplicate slashes merge; a trailing slash is kept as written.
            "" => trailing_slash = i == last && i > 0,
            "." => trailing_slash = i == last,
            ".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
                trailing_slash = i == last;
            }
            _ => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut decoded = format!("/{}", segments.join("/"));
    if trailing_slash && !segments.is_empty() {
        decoded.push('/');
    }
    let encoded = encode(&decoded);
    Ok(CanonicalPath { decoded, encoded })
}

fn decode_segment(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut encoded_dot = false;
    let mut i = 0;
    while i < bytes.len() {
        let byte = match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let value = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(PathError::BadEscape)?;
                i += 3;
                match value {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    b'.' => encoded_dot = true,
                    _ => {}
                }
                value
            }
            b';' => return Err(PathError::PathParameter),
            other => {
                i += 1;
                other
            }
        };
        if byte == b'\\' || byte < 0x20 || byte == 0x7f {
            return Err(PathError::ForbiddenCharacter);
        }
        out.push(byte);
    }
    if encoded_dot && (out == b"." || out == b"..") {
        return Err(PathError::EncodedDotSegment);
    }
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

/// Percent-encodes what may not stand for itself in a path segment.
fn encode(decoded: &str) -> String {
    let mut out = String::with_capacity(decoded.len());
    for &byte in decoded.as_bytes() {
        let plain = byte.is_ascii_alphanumeric() || b"/-._~!$&'()*+,=:@".contains(&byte);
        if plain {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        normalize(raw).unwrap_or_else(|e| panic!("{raw:?} refused: {e}")).decoded
    }

    #[test]
    fn canonical_paths_pass_unchanged() {
        for path in ["/", "/v1/chat/completions", "/v1/models/", "/api/tags", "/v1/models/llama-3.1:8b"] {
            assert_eq!(ok(path), path);
            assert_eq!(normalize(path).expect("canonical").encoded, path);
        }
    }

    #[test]
    fn dot_segments_and_duplicate_slashes_resolve() {
        assert_eq!(ok("/v1/../admin"), "/admin");
        assert_eq!(ok("//admin"), "/admin");
        assert_eq!(ok("/v1//chat///completions"), "/v1/chat/completions");
        assert_eq!(ok("/v1/./chat/./completions"), "/v1/chat/completions");
        assert_eq!(ok("/v1/fine_tuning/../chat/completions"), "/v1/chat/completions");
        assert_eq!(ok("/v1/models/."), "/v1/models/");
        assert_eq!(ok("/v1/x/.."), "/v1/");
    }

    #[test]
    fn percent_decoding_is_applied_once() {
        assert_eq!(ok("/v1/%63hat/completions"), "/v1/chat/completions");
        assert_eq!(ok("/v1/a%20b"), "/v1/a b");
        assert_eq!(normalize("/v1/a%20b").expect("valid").encoded, "/v1/a%20b");
        // A double-encoded dot stays a literal `%2e` name, never a dot segment.
        assert_eq!(ok("/v1/%252e%252e/admin"), "/v1/%2e%2e/admin");
        assert_eq!(normalize("/v1/%252e%252e/admin").expect("valid").encoded, "/v1/%252e%252e/admin");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let cases = [
            ("/v1%2Ffine_tuning/jobs", PathError::EncodedSeparator),
            ("/v1%2ffine_tuning/jobs", PathError::EncodedSeparator),
            ("/v1%5cadmin", PathError::EncodedSeparator),
            ("/v1/%2e%2e/admin", PathError::EncodedDotSegment),
            ("/v1/.%2E/admin", PathError::EncodedDotSegment),
            ("/v1/%2e/admin", PathError::EncodedDotSegment),
            ("/v1\\..\\admin", PathError::ForbiddenCharacter),
            ("/v1/%00/x", PathError::ForbiddenCharacter),
            ("/v1/a%0d%0aHost:x", PathError::ForbiddenCharacter),
            ("/v1/chat/completions;x", PathError::PathParameter),
            ("/v1/fine_tuning;/jobs", PathError::PathParameter),
            ("/v1/%zz", PathError::BadEscape),
            ("/v1/%2", PathError::BadEscape),
            ("/v1/%C0%AE%C0%AE/admin", PathError::NotUtf8),
            ("/v1/%ff", PathError::NotUtf8),
            ("/..", PathError::AboveRoot),
            ("/v1/../../admin", PathError::AboveRoot),
            ("v1/models", PathError::NotOriginForm),
            ("*", PathError::NotOriginForm),
            ("http://evil/v1/models", PathError::NotOriginForm),
        ];
        for (raw, expected) in cases {
            assert_eq!(normalize(raw), Err(expected.clone()), "{raw:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(normalize(&long), Err(PathError::TooLong));
    }

    #[test]
    fn an_encoded_dot_inside_a_name_is_a_name() {
        assert_eq!(ok("/v1/models/llama%2E3"), "/v1/models/llama.3");
    }
}
