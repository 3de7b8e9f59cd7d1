//! ListOffsets, OffsetForLeaderEpoch and DeleteRecords.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::*;
use sluice_log::{LogError, Topic};

use sluice_auth::Operation;

use crate::session::Session;
use crate::{errors, Broker};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const EARLIEST_PENDING_UPLOAD: i64 = -5;
/// KIP-1023 (ListOffsets v10): the latest tiered offset.
const LATEST_TIERED: i64 = -6;

pub(crate) async fn list_offsets(
    broker: &Arc<Broker>,
    session: &Session,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let allowed = session.allowed_topic(Operation::Describe, &t.name);
        let topic = broker.log.topic(t.name.as_str());
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let base = ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
            let resp = match &topic {
                _ if !allowed => Err(ResponseError::TopicAuthorizationFailed),
                None => Err(ResponseError::UnknownTopicOrPartition),
                Some(topic) => {
                    let committed = req.isolation_level == 1;
                    lookup(
                        broker,
                        topic,
                        p.partition_index,
                        p.current_leader_epoch,
                        p.timestamp,
                        committed,
                    )
                    .await
                }
            };
            partitions.push(match resp {
                Ok((offset, timestamp, epoch)) => {
                    // leader_epoch exists from v4 on.
                    let epoch = if version >= 4 { epoch } else { -1 };
                    base.with_offset(offset)
                        .with_timestamp(timestamp)
                        .with_leader_epoch(epoch)
                }
                Err(e) => base.with_error_code(e.code()).with_offset(-1).with_timestamp(-1),
            });
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// (offset, timestamp, leader epoch) for one ListOffsets query.
async fn lookup(
    broker: &Broker,
    topic: &Topic,
    partition: i32,
    leader_epoch: i32,
    timestamp: i64,
    committed: bool,
) -> Result<(i64, i64, i32), ResponseError> {
    let part = topic
        .partition(partition)
        .ok_or(ResponseError::UnknownTopicOrPartition)?;
    let o = part.led_offsets().map_err(|e| errors::response_error(&e))?;
    // A stale leader's answer would move the client's position backwards (v4+ carry the epoch).
    if let Some(e) = errors::leader_epoch_mismatch(leader_epoch, o.leader_epoch) {
        return Err(e);
    }
    let found = match timestamp {
        // READ_COMMITTED: the end is the last stable offset.
        LATEST if committed => Some((part.last_stable_offset(), -1)),
        LATEST => Some((o.high_watermark, -1)),
        EARLIEST => Some((o.log_start, -1)),
        // KIP-405/KIP-1023: the first offset still in the main store (the tier store holds
        // a prefix of the log, so it is also the first offset waiting to be tiered), and
        // the last offset in the tier store (-1 when nothing is there).
        EARLIEST_LOCAL | EARLIEST_PENDING_UPLOAD | LATEST_TIERED => {
            let (local_start, tiered) = broker
                .log
                .local_log_start(topic, partition)
                .await
                .map_err(|e| errors::response_error(&e))?;
            Some(match timestamp {
                LATEST_TIERED => (tiered.unwrap_or(-1), -1),
                _ => (local_start, -1),
            })
        }
        MAX_TIMESTAMP => broker
            .log
            .max_timestamp_offset(topic, partition)
            .await
            .map_err(|e| errors::response_error(&e))?
            .map(|t| (t.offset, t.timestamp)),
        ts if ts >= 0 => broker
            .log
            .offset_for_timestamp(topic, partition, ts)
            .await
            .map_err(|e| errors::response_error(&e))?
            .map(|t| (t.offset, t.timestamp)),
        // Not a timestamp and none of the special values.
        _ => return Err(ResponseError::InvalidRequest),
    };
    // Nothing at or after the timestamp: Kafka answers offset -1 and timestamp -1.
    let (offset, ts) = found.unwrap_or((-1, -1));
    Ok((offset, ts, o.leader_epoch))
}

pub(crate) async fn offset_for_leader_epoch(
    broker: &Arc<Broker>,
    session: &Session,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let allowed = session.allowed_topic(Operation::Describe, &t.topic);
        let topic = broker.log.topic(t.topic.as_str());
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let base = EpochEndOffset::default()
                .with_partition(p.partition)
                .with_leader_epoch(-1)
                .with_end_offset(-1);
            if !allowed {
                partitions.push(base.with_error_code(ResponseError::TopicAuthorizationFailed.code()));
                continue;
            }
            let Some(topic) = &topic else {
                partitions.push(base.with_error_code(ResponseError::UnknownTopicOrPartition.code()));
                continue;
            };
            let current = topic.partition(p.partition).map(|x| x.offsets().leader_epoch);
            if let Some(cur) = current {
                if p.current_leader_epoch >= 0 && p.current_leader_epoch != cur {
                    let e = if p.current_leader_epoch > cur {
                        ResponseError::UnknownLeaderEpoch
                    } else {
                        ResponseError::FencedLeaderEpoch
                    };
                    partitions.push(base.with_error_code(e.code()));
                    continue;
                }
            }
            partitions.push(
                match broker
                    .log
                    .end_offset_for_epoch(topic, p.partition, p.leader_epoch)
                    .await
                {
                    Ok(Some((epoch, end))) => base.with_leader_epoch(epoch).with_end_offset(end),
                    Ok(None) => base,
                    Err(e) => base.with_error_code(errors::code(&e)),
                },
            );
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

pub(crate) async fn delete_records(
    broker: &Arc<Broker>,
    session: &Session,
    req: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let allowed = session.allowed_topic(Operation::Delete, &t.name);
        let topic = broker.log.topic(t.name.as_str());
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let base = DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
            if !allowed {
                partitions.push(
                    base.with_error_code(ResponseError::TopicAuthorizationFailed.code())
                        .with_low_watermark(-1),
                );
                continue;
            }
            let result = match &topic {
                None => Err(LogError::UnknownTopicOrPartition),
                Some(topic) => broker.log.delete_records(topic, p.partition_index, p.offset).await,
            };
            partitions.push(match result {
                Ok(low) => base.with_low_watermark(low),
                Err(e) => base.with_error_code(errors::code(&e)).with_low_watermark(-1),
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
