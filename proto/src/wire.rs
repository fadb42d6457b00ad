//! The bytes at the start of every tunnel stream, and the control frames.
//!
//! Every bidirectional QUIC stream begins with a header:
//!
//! ```text
//! magic 'P' (0x50) | version (1) | kind (u8) | body length (u16, big endian) | body
//! ```
//!
//! After the header the stream carries the tunnelled bytes untouched. Bodies
//! are a fixed sequence of length-prefixed fields; a reader never allocates
//! more than [`MAX_HEADER_BODY`] bytes whatever a peer claims.
//!
//! Control streams (the connector's link, queries) carry length-prefixed
//! JSON frames after their header: `length (u32, big endian) | JSON`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::id::{DecisionId, ServiceName};

/// First byte of every stream header.
pub const MAGIC: u8 = 0x50;
/// The only header version this build speaks.
pub const VERSION: u8 = 1;
/// Length of the fixed prefix before the body.
pub const PREFIX_LEN: usize = 5;
/// Upper bound on a header body; larger claims are refused before reading.
pub const MAX_HEADER_BODY: usize = 16 * 1024;
/// Upper bound on one control frame.
pub const MAX_CONTROL_FRAME: usize = 16 * 1024 * 1024;

/// ALPN protocol a client (person or machine) uses on the broker's QUIC port.
pub const ALPN_CLIENT: &[u8] = b"palisade-client/1";
/// ALPN protocol a connector uses on the broker's QUIC port.
pub const ALPN_CONNECTOR: &[u8] = b"palisade-connector/1";

/// Every QUIC endpoint asks its peer (QUIC's ACK-frequency extension) to
/// acknowledge after this many unacknowledged ack-eliciting packets plus
/// one, instead of after every second packet; the peer still acknowledges
/// within its `max_ack_delay`, and as soon as packets go missing, so loss
/// is detected as before. A stream of small writes (tokens, SSE events,
/// the frames that open and close a tunnel) then costs about one ACK-only
/// packet, and one wake-up of the sender, per ten packets instead of per
/// two.
pub const ACK_ELICITING_THRESHOLD: u32 = 9;

/// Why a header or frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The first byte was not [`MAGIC`].
    #[error("not a Palisade stream (bad magic byte)")]
    BadMagic,
    /// A header version this build does not speak.
    #[error("unsupported stream header version {0}")]
    UnsupportedVersion(u8),
    /// A header kind this build does not know.
    #[error("unknown stream kind {0}")]
    UnknownKind(u8),
    /// A length beyond the limits.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// What was too long.
        what: &'static str,
        /// The claimed length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body ended early, had trailing bytes or a bad field.
    #[error("malformed stream header: {0}")]
    Malformed(String),
    /// A control frame whose JSON did not match.
    #[error("malformed control frame: {0}")]
    BadFrame(String),
}

/// What a stream is for; the `kind` byte of the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamKind {
    /// Client → broker: open a tunnel to a service.
    Open = 1,
    /// Broker → connector: a tunnel the broker has allowed.
    Dispatch = 2,
    /// Connector → broker: the connector's control stream.
    ConnectorControl = 3,
    /// Client → broker: a one-shot query answered with one JSON frame.
    Query = 4,
}

impl TryFrom<u8> for StreamKind {
    type Error = WireError;
    fn try_from(b: u8) -> Result<Self, WireError> {
        match b {
            1 => Ok(Self::Open),
            2 => Ok(Self::Dispatch),
            3 => Ok(Self::ConnectorControl),
            4 => Ok(Self::Query),
            other => Err(WireError::UnknownKind(other)),
        }
    }
}

/// Parses the fixed prefix and returns the kind and the body length to read next.
///
/// # Errors
/// Bad magic, unknown version or kind, or a body length over [`MAX_HEADER_BODY`].
pub fn parse_prefix(prefix: &[u8; PREFIX_LEN]) -> Result<(StreamKind, usize), WireError> {
    if prefix[0] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if prefix[1] != VERSION {
        return Err(WireError::UnsupportedVersion(prefix[1]));
    }
    let kind = StreamKind::try_from(prefix[2])?;
    let len = usize::from(u16::from_be_bytes([prefix[3], prefix[4]]));
    if len > MAX_HEADER_BODY {
        return Err(WireError::TooLong { what: "stream header", len, max: MAX_HEADER_BODY });
    }
    Ok((kind, len))
}

/// A decoded stream header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamHeader {
    /// Client → broker.
    Open(OpenStream),
    /// Broker → connector.
    Dispatch(Dispatch),
    /// Connector → broker control stream; no body.
    ConnectorControl,
    /// Client → broker query.
    Query(Query),
}

impl StreamHeader {
    /// The header's kind byte.
    #[must_use]
    pub fn kind(&self) -> StreamKind {
        match self {
            Self::Open(_) => StreamKind::Open,
            Self::Dispatch(_) => StreamKind::Dispatch,
            Self::ConnectorControl => StreamKind::ConnectorControl,
            Self::Query(_) => StreamKind::Query,
        }
    }

    /// Encodes prefix and body.
    ///
    /// # Errors
    /// A body over [`MAX_HEADER_BODY`] (e.g. an oversized certificate chain).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut body = Writer::default();
        match self {
            Self::Open(open) => body.str8(open.service.as_str()),
            Self::Dispatch(d) => d.write(&mut body)?,
            Self::ConnectorControl => {}
            Self::Query(q) => body.u8(*q as u8),
        }
        let body = body.0;
        if body.len() > MAX_HEADER_BODY {
            return Err(WireError::TooLong { what: "stream header", len: body.len(), max: MAX_HEADER_BODY });
        }
        let mut out = Vec::with_capacity(PREFIX_LEN + body.len());
        out.extend_from_slice(&[MAGIC, VERSION, self.kind() as u8]);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes a body whose prefix was parsed by [`parse_prefix`].
    ///
    /// # Errors
    /// Truncated or trailing bytes, invalid names, unknown query kinds.
    pub fn decode(kind: StreamKind, body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader(body);
        let header = match kind {
            StreamKind::Open => Self::Open(OpenStream { service: r.service()? }),
            StreamKind::Dispatch => Self::Dispatch(Dispatch::read(&mut r)?),
            StreamKind::ConnectorControl => Self::ConnectorControl,
            StreamKind::Query => Self::Query(Query::try_from(r.u8()?)?),
        };
        r.finish()?;
        Ok(header)
    }

    /// Decodes a whole header (prefix and body) from one buffer.
    ///
    /// # Errors
    /// As [`parse_prefix`] and [`Self::decode`], or a length mismatch.
    pub fn decode_all(bytes: &[u8]) -> Result<Self, WireError> {
        let prefix: &[u8; PREFIX_LEN] = bytes
            .get(..PREFIX_LEN)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| WireError::Malformed("shorter than the prefix".into()))?;
        let (kind, len) = parse_prefix(prefix)?;
        let body = &bytes[PREFIX_LEN..];
        if body.len() != len {
            return Err(WireError::Malformed(format!("body is {} bytes, prefix says {len}", body.len())));
        }
        Self::decode(kind, body)
    }
}

/// Client → broker: "connect me to this service".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenStream {
    /// The service asked for.
    pub service: ServiceName,
}

/// Broker → connector: a stream the broker allowed, with who asks and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatch {
    /// The broker's decision, for correlating audit events.
    pub decision_id: DecisionId,
    /// The service to reach.
    pub service: ServiceName,
    /// Policy version the broker decided with.
    pub policy_version: u64,
    /// The caller's certificate chain (DER, leaf first), verified by the connector on its own.
    pub caller_chain: Vec<Vec<u8>>,
    /// The caller's address as the broker saw it.
    pub source_addr: String,
}

impl Dispatch {
    fn write(&self, w: &mut Writer) -> Result<(), WireError> {
        w.bytes_raw(self.decision_id.as_bytes());
        w.str8(self.service.as_str());
        w.u64(self.policy_version);
        let count = u8::try_from(self.caller_chain.len())
            .map_err(|_| WireError::Malformed("certificate chain too long".into()))?;
        w.u8(count);
        for cert in &self.caller_chain {
            w.bytes16(cert)?;
        }
        w.str8(&self.source_addr);
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let decision_id = DecisionId::from_bytes(r.array16()?);
        let service = r.service()?;
        let policy_version = r.u64()?;
        let count = r.u8()?;
        if count == 0 || count > 4 {
            return Err(WireError::Malformed(format!("caller chain of {count} certificates")));
        }
        let caller_chain = (0..count).map(|_| r.bytes16().map(<[u8]>::to_vec)).collect::<Result<_, _>>()?;
        let source_addr = r.str8()?.to_owned();
        Ok(Self { decision_id, service, policy_version, caller_chain, source_addr })
    }
}

/// Client → broker one-shot queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Query {
    /// Which services may this identity reach? Answered with [`ServiceListing`].
    Services = 1,
    /// Who am I? Answered with [`WhoAmI`].
    WhoAmI = 2,
    /// End my session: the broker revokes the caller's session and answers [`LogoutDone`].
    Logout = 3,
}

impl TryFrom<u8> for Query {
    type Error = WireError;
    fn try_from(b: u8) -> Result<Self, WireError> {
        match b {
            1 => Ok(Self::Services),
            2 => Ok(Self::WhoAmI),
            3 => Ok(Self::Logout),
            other => Err(WireError::Malformed(format!("unknown query {other}"))),
        }
    }
}

/// Answer to [`Query::Services`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceListing {
    /// Every service this identity is allowed to connect to.
    pub services: Vec<ServiceInfo>,
}

/// One entry of a [`ServiceListing`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceInfo {
    /// Service name, as used with `palisade connect`.
    pub name: String,
    /// The segment it belongs to.
    pub segment: String,
    /// `tcp` or `http`.
    pub protocol: String,
    /// Whether a connector serving it is online now.
    pub online: bool,
}

/// Answer to [`Query::WhoAmI`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhoAmI {
    /// The SPIFFE id the broker sees.
    pub identity: String,
    /// Display name.
    pub name: String,
    /// Groups from the certificate.
    pub groups: Vec<String>,
    /// Certificate expiry, seconds since the epoch.
    pub not_after_unix: u64,
    /// The sign-in session the certificate names (people only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// When the second factor was last proved, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfa_at_unix: Option<u64>,
}

/// Answer to [`Query::Logout`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogoutDone {
    /// The session that was revoked, if the certificate named one.
    pub session: Option<String>,
    /// Whether this call revoked it (false: it was already revoked or there was none).
    pub revoked: bool,
}

/// Encodes one control frame: u32 length then JSON.
///
/// # Errors
/// A frame over [`MAX_CONTROL_FRAME`], or a value serde cannot encode.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    let json = serde_json::to_vec(msg).map_err(|e| WireError::BadFrame(e.to_string()))?;
    if json.len() > MAX_CONTROL_FRAME {
        return Err(WireError::TooLong { what: "control frame", len: json.len(), max: MAX_CONTROL_FRAME });
    }
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// Reads a frame length prefix, refusing lengths over [`MAX_CONTROL_FRAME`].
///
/// # Errors
/// [`WireError::TooLong`].
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_CONTROL_FRAME {
        return Err(WireError::TooLong { what: "control frame", len, max: MAX_CONTROL_FRAME });
    }
    Ok(len)
}

/// Decodes a control frame body.
///
/// # Errors
/// [`WireError::BadFrame`] with serde's message (unknown fields are refused).
pub fn decode_frame<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    serde_json::from_slice(body).map_err(|e| WireError::BadFrame(e.to_string()))
}

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes_raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn str8(&mut self, s: &str) {
        // Names are checked to at most 63 bytes; addresses are short. Truncation never happens for
        // valid input, and a reader refuses anything that does not round-trip.
        let len = s.len().min(255);
        self.0.push(len as u8);
        self.0.extend_from_slice(&s.as_bytes()[..len]);
    }
    fn bytes16(&mut self, b: &[u8]) -> Result<(), WireError> {
        let len = u16::try_from(b.len()).map_err(|_| WireError::TooLong {
            what: "field",
            len: b.len(),
            max: usize::from(u16::MAX),
        })?;
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(b);
        Ok(())
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Malformed("truncated".into()));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn array16(&mut self) -> Result<[u8; 16], WireError> {
        let b = self.take(16)?;
        let mut a = [0u8; 16];
        a.copy_from_slice(b);
        Ok(a)
    }
    fn str8(&mut self) -> Result<&'a str, WireError> {
        let len = usize::from(self.u8()?);
        std::str::from_utf8(self.take(len)?).map_err(|_| WireError::Malformed("field is not UTF-8".into()))
    }
    fn service(&mut self) -> Result<ServiceName, WireError> {
        self.str8()?.parse().map_err(|e: crate::id::IdError| WireError::Malformed(e.to_string()))
    }
    fn bytes16(&mut self) -> Result<&'a [u8], WireError> {
        let b = self.take(2)?;
        let len = usize::from(u16::from_be_bytes([b[0], b[1]]));
        self.take(len)
    }
    fn finish(&self) -> Result<(), WireError> {
        if self.0.is_empty() { Ok(()) } else { Err(WireError::Malformed("trailing bytes".into())) }
    }
}

#[cfg(test)]
mod tests;
