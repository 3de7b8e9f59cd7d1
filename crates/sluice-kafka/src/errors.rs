//! Kafka error codes for log errors.

use kafka_protocol::error::ResponseError;
use kafka_protocol::protocol::StrBytes;
use sluice_log::LogError;

pub(crate) fn code(e: &LogError) -> i16 {
    let r = match e {
        LogError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        LogError::TopicExists => ResponseError::TopicAlreadyExists,
        LogError::InvalidTopic(_) => ResponseError::InvalidTopicException,
        LogError::InvalidConfig(_) => ResponseError::InvalidConfig,
        LogError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        LogError::CorruptMessage(_) => ResponseError::CorruptMessage,
        LogError::MessageTooLarge(_) => ResponseError::MessageTooLarge,
        LogError::InvalidRecord(_) => ResponseError::InvalidRecord,
        LogError::OutOfOrderSequence(_) => ResponseError::OutOfOrderSequenceNumber,
        LogError::InvalidProducerEpoch(_) => ResponseError::InvalidProducerEpoch,
        LogError::OffsetOutOfRange => ResponseError::OffsetOutOfRange,
        LogError::NotLeader => ResponseError::NotLeaderOrFollower,
        LogError::Storage(_) => ResponseError::KafkaStorageError,
    };
    r.code()
}

pub(crate) fn message(e: &LogError) -> Option<StrBytes> {
    Some(StrBytes::from_string(e.to_string()))
}

pub(crate) fn str(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}
