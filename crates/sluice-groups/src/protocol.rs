//! The consumer protocol's embedded payloads (subscription metadata in
//! JoinGroup, assignments in SyncGroup), decoded with the protocol crate.
//! Anything else (Connect, custom protocols) is opaque and yields nothing.

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription};
use kafka_protocol::protocol::Decodable;

/// A payload is a version (i16) then the struct; newer versions decode as
/// the newest we know, as Kafka does.
fn decode<T: Decodable>(payload: &[u8]) -> Option<T> {
    if payload.len() < 2 {
        return None;
    }
    let mut b = Bytes::copy_from_slice(payload);
    let version = b.get_i16().clamp(0, 3);
    T::decode(&mut b, version).ok()
}

/// Topics a consumer subscribes to.
pub fn subscription_topics(metadata: &[u8]) -> Vec<String> {
    decode::<ConsumerProtocolSubscription>(metadata)
        .map(|s| s.topics.iter().map(|t| t.to_string()).collect())
        .unwrap_or_default()
}

/// Partitions assigned to a consumer, per topic.
pub fn assigned_partitions(assignment: &[u8]) -> Vec<(String, Vec<i32>)> {
    decode::<ConsumerProtocolAssignment>(assignment)
        .map(|a| {
            a.assigned_partitions
                .into_iter()
                .map(|tp| (tp.topic.to_string(), tp.partitions))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    #[test]
    fn decodes_what_clients_encode() {
        let sub = ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_static_str("a"), StrBytes::from_static_str("b")]);
        let mut buf = BytesMut::new();
        buf.put_i16(1);
        sub.encode(&mut buf, 1).unwrap();
        assert_eq!(subscription_topics(&buf), vec!["a", "b"]);

        let asg = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![TopicPartition::default()
            .with_topic(TopicName(StrBytes::from_static_str("a")))
            .with_partitions(vec![0, 2])]);
        let mut buf = BytesMut::new();
        buf.put_i16(0);
        asg.encode(&mut buf, 0).unwrap();
        assert_eq!(assigned_partitions(&buf), vec![("a".to_string(), vec![0, 2])]);
        assert!(assigned_partitions(b"\x00").is_empty());
        assert!(subscription_topics(b"\x00\x00\xff\xff\xff").is_empty());
    }
}
