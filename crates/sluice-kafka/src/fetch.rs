//! Fetch: reads from each requested partition, long-polling until
//! `min_bytes` are available or `max_wait_ms` passes. Fetch sessions
//! (KIP-227) are declined with session id 0, so clients send full requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::FetchTopic;
use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::*;
use sluice_auth::Operation;
use sluice_log::{LogError, Topic};

use crate::reply::Reply;
use crate::session::Session;
use crate::{errors, Broker};

/// Longest a fetch may wait, whatever the client asks for.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Partitions of one fetch read at the same time.
const PARTITIONS_READ_AT_ONCE: usize = 8;

/// Once a fetch has data, it starts no further reads after this long: the rest
/// of its partitions answer with their offsets and no records (the client asks
/// again at once). Responses on a connection leave in request order, so a slow
/// Fetch delays the ListOffsets, OffsetForLeaderEpoch and Metadata answers
/// queued behind it, and those answers are stale when they arrive.
const READ_BUDGET: Duration = Duration::from_millis(500);

pub(crate) fn handle(broker: &Arc<Broker>, session: &Session, mut req: FetchRequest, version: i16) -> Reply {
    let denied = take_unreadable(broker, session, &mut req, version);
    if !denied.is_empty() {
        req.max_wait_ms = 0; // an error ends a long poll
    }
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let mut resp = fetch(&broker, &req, version).await;
        resp.responses.extend(denied);
        ResponseKind::Fetch(resp)
    }))
}

/// Takes the topics the principal may not READ out of the request, and answers them with
/// TOPIC_AUTHORIZATION_FAILED.
fn take_unreadable(
    broker: &Broker,
    session: &Session,
    req: &mut FetchRequest,
    version: i16,
) -> Vec<FetchableTopicResponse> {
    let (readable, unreadable): (Vec<_>, Vec<_>) = std::mem::take(&mut req.topics).into_iter().partition(|ft| {
        match find_topic(broker, ft, version).0 {
            Some(t) => session.allowed_topic(Operation::Read, &t.name),
            None => true, // unknown: answered as such
        }
    });
    req.topics = readable;
    unreadable
        .into_iter()
        .map(|ft| {
            let partitions = ft.partitions.iter().map(|fp| {
                PartitionData::default()
                    .with_partition_index(fp.partition)
                    .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                    .with_high_watermark(-1)
                    .with_last_stable_offset(-1)
                    .with_log_start_offset(-1)
                    .with_preferred_read_replica(BrokerId(-1))
                    .with_records(Some(Bytes::new()))
            });
            FetchableTopicResponse::default()
                .with_topic(ft.topic)
                .with_topic_id(ft.topic_id)
                .with_partitions(partitions.collect())
        })
        .collect()
}

async fn fetch(broker: &Broker, req: &FetchRequest, version: i16) -> FetchResponse {
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let mut commits = broker.log.subscribe();
    loop {
        commits.borrow_and_update();
        let (resp, bytes, errored) = read_all(broker, req, version, tokio::time::Instant::now() + READ_BUDGET).await;
        if bytes >= req.min_bytes.max(0) as usize || errored || tokio::time::Instant::now() >= deadline {
            return resp;
        }
        if tokio::time::timeout_at(deadline, commits.changed()).await.is_err() {
            // Waited the full time; answer with whatever there is now.
            return read_all(broker, req, version, tokio::time::Instant::now() + READ_BUDGET)
                .await
                .0;
        }
    }
}

/// One pass over the requested partitions: the response, its record bytes,
/// and whether any partition had an error (which ends a long poll).
async fn read_all(
    broker: &Broker,
    req: &FetchRequest,
    version: i16,
    read_deadline: tokio::time::Instant,
) -> (FetchResponse, usize, bool) {
    let mut remaining = if req.max_bytes > 0 {
        req.max_bytes as usize
    } else {
        usize::MAX
    };
    let mut total = 0usize;
    let mut errored = false;
    let mut prefetched = read_concurrently(broker, req, version, remaining).await;
    let mut topics = Vec::with_capacity(req.topics.len());
    for (ti, ft) in req.topics.iter().enumerate() {
        let (topic, missing) = find_topic(broker, ft, version);
        let mut partitions = Vec::with_capacity(ft.partitions.len());
        for (pi, fp) in ft.partitions.iter().enumerate() {
            let base = PartitionData::default()
                .with_partition_index(fp.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_preferred_read_replica(BrokerId(-1))
                .with_records(Some(Bytes::new()));
            let Some(topic) = &topic else {
                errored = true;
                partitions.push(base.with_error_code(missing));
                continue;
            };
            let Some(part) = topic.partition(fp.partition) else {
                errored = true;
                partitions.push(base.with_error_code(ResponseError::UnknownTopicOrPartition.code()));
                continue;
            };
            let offsets = part.offsets();
            if let Some(e) = errors::leader_epoch_mismatch(fp.current_leader_epoch, offsets.leader_epoch) {
                errored = true;
                partitions.push(base.with_error_code(e.code()));
                continue;
            }
            // KIP-74: the first partition with data may exceed the limits by one batch.
            let limit = (fp.partition_max_bytes.max(0) as usize).min(remaining);
            let want_data = (limit > 0 && tokio::time::Instant::now() < read_deadline) || total == 0;
            let result = if let Some(read) = prefetched.remove(&(ti, pi)) {
                read
            } else if want_data {
                broker
                    .log
                    .read_isolated(topic, fp.partition, fp.fetch_offset, limit, committed(req))
                    .await
            } else {
                Ok(sluice_log::ReadResult {
                    log_start: offsets.log_start,
                    high_watermark: offsets.high_watermark,
                    last_stable: part.last_stable_offset(),
                    batches: vec![],
                    aborted: vec![],
                })
            };
            match result {
                Ok(mut r) => {
                    r.keep_within(limit, total == 0);
                    let n = r.bytes();
                    total += n;
                    remaining = remaining.saturating_sub(n);
                    // read_committed readers filter aborted records themselves, from this list.
                    let aborted = committed(req).then(|| {
                        r.aborted
                            .iter()
                            .map(|(pid, first)| {
                                AbortedTransaction::default()
                                    .with_producer_id(ProducerId(*pid))
                                    .with_first_offset(*first)
                            })
                            .collect()
                    });
                    partitions.push(
                        base.with_high_watermark(r.high_watermark)
                            .with_last_stable_offset(if version >= 4 { r.last_stable } else { -1 })
                            .with_log_start_offset(if version >= 5 { r.log_start } else { -1 })
                            .with_aborted_transactions(aborted)
                            .with_records(Some(concat(r.batches, n))),
                    );
                }
                Err(e) => {
                    errored = true;
                    if !matches!(e, LogError::OffsetOutOfRange) {
                        tracing::warn!(topic = %topic.name, partition = fp.partition, error = %e, "fetch failed");
                    }
                    partitions.push(
                        base.with_error_code(errors::code(&e))
                            .with_high_watermark(offsets.high_watermark)
                            .with_last_stable_offset(part.last_stable_offset())
                            .with_log_start_offset(if version >= 5 { offsets.log_start } else { -1 }),
                    );
                }
            }
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(ft.topic.clone())
                .with_topic_id(ft.topic_id)
                .with_partitions(partitions),
        );
    }
    (
        FetchResponse::default().with_session_id(0).with_responses(topics),
        total,
        errored,
    )
}

/// Isolation level READ_COMMITTED: data up to the last stable offset only.
fn committed(req: &FetchRequest) -> bool {
    req.isolation_level == 1
}

/// The topic a fetch names (by id from v13 on), and the error code if it is unknown.
fn find_topic(broker: &Broker, ft: &FetchTopic, version: i16) -> (Option<Arc<Topic>>, i16) {
    if version >= 13 {
        (
            broker.log.topic_by_id(ft.topic_id),
            ResponseError::UnknownTopicId.code(),
        )
    } else {
        (
            broker.log.topic(ft.topic.as_str()),
            ResponseError::UnknownTopicOrPartition.code(),
        )
    }
}

/// Reads all requested partitions at once when their limits cannot interact (the sum
/// of the partition limits fits in the response's, the usual case), so that a fetch
/// waits for its slowest read rather than for the sum of them. Otherwise nothing:
/// `read_all` then reads one partition after another within the response's limit.
async fn read_concurrently(
    broker: &Broker,
    req: &FetchRequest,
    version: i16,
    limit: usize,
) -> HashMap<(usize, usize), Result<sluice_log::ReadResult, LogError>> {
    let wanted = || req.topics.iter().flat_map(|t| &t.partitions);
    let sum: usize = wanted().map(|p| p.partition_max_bytes.max(0) as usize).sum();
    if sum > limit || wanted().nth(1).is_none() {
        return HashMap::new();
    }
    let mut reads = Vec::new();
    for (ti, ft) in req.topics.iter().enumerate() {
        let Some(topic) = find_topic(broker, ft, version).0 else {
            continue;
        };
        for (pi, fp) in ft.partitions.iter().enumerate() {
            let topic = topic.clone();
            reads.push(async move {
                let limit = fp.partition_max_bytes.max(0) as usize;
                (
                    (ti, pi),
                    broker
                        .log
                        .read_isolated(&topic, fp.partition, fp.fetch_offset, limit, committed(req))
                        .await,
                )
            });
        }
    }
    futures::stream::iter(reads)
        .buffer_unordered(PARTITIONS_READ_AT_ONCE)
        .collect()
        .await
}

fn concat(batches: Vec<Bytes>, len: usize) -> Bytes {
    match batches.len() {
        0 => Bytes::new(),
        1 => batches.into_iter().next().unwrap_or_default(),
        _ => {
            let mut out = BytesMut::with_capacity(len);
            for b in batches {
                out.extend_from_slice(&b);
            }
            out.freeze()
        }
    }
}
