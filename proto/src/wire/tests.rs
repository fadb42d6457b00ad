use super::*;
use crate::id::DecisionId;

fn dispatch() -> StreamHeader {
    StreamHeader::Dispatch(Dispatch {
        decision_id: DecisionId::random(),
        service: "llm-prod".parse().expect("valid name"),
        policy_version: 7,
        caller_chain: vec![vec![1, 2, 3], vec![4; 600]],
        source_addr: "127.0.0.1:5000".into(),
    })
}

#[test]
fn every_header_round_trips() {
    let headers = [
        StreamHeader::Open(OpenStream { service: "llm-prod".parse().expect("valid name") }),
        dispatch(),
        StreamHeader::ConnectorControl,
        StreamHeader::Query(Query::Services),
        StreamHeader::Query(Query::WhoAmI),
    ];
    for header in headers {
        let bytes = header.encode().expect("encodes");
        assert_eq!(StreamHeader::decode_all(&bytes).expect("decodes"), header);
    }
}

#[test]
fn unknown_version_kind_and_magic_are_refused() {
    let mut bytes = StreamHeader::ConnectorControl.encode().expect("encodes");
    bytes[1] = 2;
    assert_eq!(StreamHeader::decode_all(&bytes), Err(WireError::UnsupportedVersion(2)));
    bytes[1] = VERSION;
    bytes[2] = 99;
    assert_eq!(StreamHeader::decode_all(&bytes), Err(WireError::UnknownKind(99)));
    bytes[0] = b'G';
    assert_eq!(StreamHeader::decode_all(&bytes), Err(WireError::BadMagic));
}

#[test]
fn a_huge_claimed_length_is_refused_before_reading() {
    let prefix = [MAGIC, VERSION, StreamKind::Open as u8, 0xff, 0xff];
    assert!(matches!(parse_prefix(&prefix), Err(WireError::TooLong { .. })));
}

#[test]
fn truncated_trailing_and_invalid_names_are_refused() {
    let bytes = dispatch().encode().expect("encodes");
    let (kind, len) = parse_prefix(bytes[..PREFIX_LEN].try_into().expect("prefix")).expect("prefix parses");
    let body = &bytes[PREFIX_LEN..];
    assert_eq!(body.len(), len);
    for cut in [0, 1, 16, 20, body.len() - 1] {
        assert!(StreamHeader::decode(kind, &body[..cut]).is_err(), "truncated at {cut} was accepted");
    }
    let mut trailing = body.to_vec();
    trailing.push(0);
    assert!(StreamHeader::decode(kind, &trailing).is_err());

    let mut open = vec![9u8];
    open.extend_from_slice(b"../../etc");
    assert!(StreamHeader::decode(StreamKind::Open, &open).is_err());
}

#[test]
fn a_dispatch_without_a_caller_chain_is_refused() {
    let StreamHeader::Dispatch(mut d) = dispatch() else { unreachable!() };
    d.caller_chain.clear();
    let bytes = StreamHeader::Dispatch(d).encode().expect("encodes");
    assert!(StreamHeader::decode_all(&bytes).is_err());
}

#[test]
fn control_frames_have_a_size_limit() {
    assert!(frame_len((MAX_CONTROL_FRAME as u32 + 1).to_be_bytes()).is_err());
    assert_eq!(frame_len(10u32.to_be_bytes()), Ok(10));
}
