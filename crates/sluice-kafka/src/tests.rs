//! Request decoding: real frames decode, anything else fails cleanly.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, MetadataRequest, RequestHeader, RequestKind};
use kafka_protocol::protocol::{Encodable, StrBytes};
use proptest::prelude::*;

use crate::decode_request;

fn frame<T: Encodable>(key: ApiKey, version: i16, body: &T) -> Bytes {
    let mut b = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("t")))
        .encode(&mut b, key.request_header_version(version))
        .unwrap();
    body.encode(&mut b, version).unwrap();
    b.freeze()
}

#[test]
fn decodes_real_requests() {
    let f = frame(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    let (h, body) = decode_request(f).unwrap();
    assert_eq!((h.correlation_id, h.request_api_version), (7, 3));
    assert!(matches!(body, RequestKind::ApiVersions(_)));
    let f = frame(ApiKey::Metadata, 12, &MetadataRequest::default());
    assert!(matches!(decode_request(f).unwrap().1, RequestKind::Metadata(_)));
}

#[test]
fn refuses_unknown_unsupported_and_truncated() {
    let mut b = BytesMut::new();
    b.put_i16(9999);
    b.put_i16(0);
    b.put_i32(1);
    assert!(decode_request(b.freeze())
        .unwrap_err()
        .to_string()
        .contains("unknown API key"));
    // A known API that a broker does not serve to clients.
    let f = frame(
        ApiKey::AlterPartition,
        3,
        &kafka_protocol::messages::AlterPartitionRequest::default(),
    );
    assert!(decode_request(f).is_err());
    // A version past the one advertised (EndTxn v5 is KIP-890 part 2).
    let f = frame(ApiKey::EndTxn, 5, &kafka_protocol::messages::EndTxnRequest::default());
    assert!(decode_request(f).unwrap_err().to_string().contains("not supported"));
    let f = frame(ApiKey::Metadata, 12, &MetadataRequest::default());
    let f = {
        let mut v = f.to_vec();
        v[3] = 99; // version 99
        Bytes::from(v)
    };
    assert!(decode_request(f).unwrap_err().to_string().contains("not supported"));
    let f = frame(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(Some(vec![Default::default()])),
    );
    assert!(decode_request(f.slice(..f.len() - 3)).is_err());
    assert!(decode_request(Bytes::from_static(b"abc")).is_err());
}

proptest! {
    #[test]
    fn arbitrary_frames_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512), key in 0i16..80, version in -1i16..20) {
        let mut b = BytesMut::new();
        b.put_i16(key);
        b.put_i16(version);
        b.put_slice(&data);
        let _ = decode_request(b.freeze());
    }
}
