//! Kafka error codes for log errors.

use kafka_protocol::error::ResponseError;
use kafka_protocol::protocol::StrBytes;
use sluice_log::LogError;

pub(crate) fn code(e: &LogError) -> i16 {
    response_error(e).code()
}

pub(crate) fn response_error(e: &LogError) -> ResponseError {
    match e {
        LogError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        LogError::TopicExists => ResponseError::TopicAlreadyExists,
        LogError::InvalidTopic(_) => ResponseError::InvalidTopicException,
        LogError::InvalidConfig(_) => ResponseError::InvalidConfig,
        LogError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        LogError::CorruptMessage(_) => ResponseError::CorruptMessage,
        LogError::MessageTooLarge(_) => ResponseError::MessageTooLarge,
        LogError::InvalidTimestamp(_) => ResponseError::InvalidTimestamp,
        LogError::InvalidRecord(_) | LogError::KeylessRecords(_) => ResponseError::InvalidRecord,
        LogError::OutOfOrderSequence(_) => ResponseError::OutOfOrderSequenceNumber,
        LogError::InvalidProducerEpoch(_) => ResponseError::InvalidProducerEpoch,
        LogError::OffsetOutOfRange => ResponseError::OffsetOutOfRange,
        LogError::NotLeader => ResponseError::NotLeaderOrFollower,
        LogError::Storage(_) => ResponseError::KafkaStorageError,
        LogError::InvalidTxnState(_) => ResponseError::InvalidTxnState,
        LogError::InvalidProducerIdMapping => ResponseError::InvalidProducerIdMapping,
    }
}

pub(crate) fn message(e: &LogError) -> Option<StrBytes> {
    Some(StrBytes::from_string(e.to_string()))
}

pub(crate) fn str(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// KIP-320: a request naming the leader epoch the client believes current is refused
/// when this broker's epoch differs: FENCED_LEADER_EPOCH if the client's is older
/// (it refreshes metadata), UNKNOWN_LEADER_EPOCH if newer (this broker lags).
/// -1 means the client does not say.
pub(crate) fn leader_epoch_mismatch(requested: i32, current: i32) -> Option<ResponseError> {
    if requested < 0 || requested == current {
        None
    } else if requested > current {
        Some(ResponseError::UnknownLeaderEpoch)
    } else {
        Some(ResponseError::FencedLeaderEpoch)
    }
}
