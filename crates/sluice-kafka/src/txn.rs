//! Transactions: InitProducerId with a transactional.id, AddPartitionsToTxn,
//! AddOffsetsToTxn, TxnOffsetCommit, EndTxn, WriteTxnMarkers (between brokers), and
//! the KIP-664 admin calls. The state machine is `sluice-txn`'s.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_producers_response::{PartitionResponse, ProducerState, TopicResponse};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState as Described};
use kafka_protocol::messages::list_transactions_response::TransactionState as Listed;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use sluice_auth::acl::CLUSTER_NAME;
use sluice_auth::{Operation, ResourceType};
use sluice_groups::{CommitRequest, OffsetEntry};
use sluice_txn::TxnResult;

use crate::session::Session;
use crate::{errors, Broker};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// PRODUCER_FENCED exists from these versions on; older clients expect INVALID_PRODUCER_EPOCH.
fn fenced_for(version: i16, since: i16, e: ResponseError) -> i16 {
    match e {
        ResponseError::ProducerFenced if version < since => ResponseError::InvalidProducerEpoch.code(),
        e => e.code(),
    }
}

fn code_of(r: TxnResult<()>, version: i16, since: i16) -> i16 {
    r.err().map_or(0, |e| fenced_for(version, since, e))
}

/// InitProducerId: a transactional producer's id and epoch come from the coordinator;
/// an idempotent one gets a fresh id, or its epoch bumped (KIP-360).
pub(crate) async fn init_producer_id(
    broker: &Arc<Broker>,
    session: &Session,
    req: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let resp = InitProducerIdResponse::default();
    let failed = |resp: InitProducerIdResponse, code: i16| {
        resp.with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if let Some(id) = req.transactional_id.as_ref().filter(|id| !id.is_empty()) {
        if !session.allowed_txn(Operation::Write, id) {
            return failed(resp, ResponseError::TransactionalIdAuthorizationFailed.code());
        }
        let result = broker
            .txn
            .init_producer_id(
                id.as_str(),
                req.transaction_timeout_ms,
                req.producer_id.0,
                req.producer_epoch,
            )
            .await;
        return match result {
            Ok((pid, epoch)) => resp.with_producer_id(ProducerId(pid)).with_producer_epoch(epoch),
            Err(e) => failed(resp, fenced_for(version, 4, e)),
        };
    }
    // An idempotent producer needs IDEMPOTENT_WRITE on the cluster, or WRITE on some topic.
    let idempotent = session.sees(Operation::IdempotentWrite, ResourceType::Cluster, CLUSTER_NAME)
        || session.allowed_any(Operation::Write, ResourceType::Topic);
    if !idempotent && !session.allowed_cluster(Operation::IdempotentWrite) {
        return failed(resp, ResponseError::ClusterAuthorizationFailed.code());
    }
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
        return resp
            .with_producer_id(req.producer_id)
            .with_producer_epoch(req.producer_epoch + 1);
    }
    match broker.log.meta().next_producer_id().await {
        Ok(id) => resp.with_producer_id(ProducerId(id)).with_producer_epoch(0),
        Err(e) => {
            tracing::error!(error = %e, "allocating producer id");
            failed(resp, ResponseError::KafkaStorageError.code())
        }
    }
}

/// Partitions named in a request, and which of them do not exist.
fn partitions_of(broker: &Broker, topics: &[AddPartitionsToTxnTopic]) -> (Vec<(String, i32)>, bool) {
    let mut all = Vec::new();
    let mut unknown = false;
    for t in topics {
        let topic = broker.log.topic(t.name.as_str());
        for p in &t.partitions {
            unknown |= topic.as_ref().and_then(|t| t.partition(*p)).is_none();
            all.push((t.name.to_string(), *p));
        }
    }
    (all, unknown)
}

/// Per topic and partition: the error for that partition.
fn topic_results(
    topics: &[AddPartitionsToTxnTopic],
    code_for: impl Fn(&str, i32) -> i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    topics
        .iter()
        .map(|t| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(
                    t.partitions
                        .iter()
                        .map(|p| {
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(*p)
                                .with_partition_error_code(code_for(t.name.as_str(), *p))
                        })
                        .collect(),
                )
        })
        .collect()
}

/// One transaction's partitions joining it (or, with `verify_only`, checked).
/// Kafka's checks for partitions joining a transaction: WRITE on the transactional id,
/// then on every topic; if any fails, nothing is added.
fn refused_partitions(
    session: &Session,
    id: &str,
    topics: &[AddPartitionsToTxnTopic],
) -> Option<Vec<AddPartitionsToTxnTopicResult>> {
    if !session.allowed_txn(Operation::Write, id) {
        return Some(topic_results(topics, |_, _| {
            ResponseError::TransactionalIdAuthorizationFailed.code()
        }));
    }
    let unwritable: Vec<&str> = topics
        .iter()
        .map(|t| t.name.as_str())
        .filter(|t| !session.allowed_topic(Operation::Write, t))
        .collect();
    if unwritable.is_empty() {
        return None;
    }
    // The refused ones say why and the rest were not tried.
    Some(topic_results(topics, |t, _| {
        if unwritable.contains(&t) {
            ResponseError::TopicAuthorizationFailed.code()
        } else {
            ResponseError::OperationNotAttempted.code()
        }
    }))
}

async fn add_one(
    broker: &Broker,
    id: &str,
    producer_id: i64,
    epoch: i16,
    topics: &[AddPartitionsToTxnTopic],
    verify_only: bool,
    version: i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let (wanted, unknown) = partitions_of(broker, topics);
    if unknown {
        // As Kafka: nothing is added, the unknown ones say why and the rest were not tried.
        return topic_results(topics, |t, p| {
            let exists = broker.log.topic(t).and_then(|t| t.partition(p)).is_some();
            if exists {
                ResponseError::OperationNotAttempted.code()
            } else {
                ResponseError::UnknownTopicOrPartition.code()
            }
        });
    }
    if verify_only {
        return match broker.txn.verify_partitions(id, producer_id, epoch, &wanted).await {
            Ok(ok) => {
                let ok: std::collections::HashMap<(String, i32), bool> = wanted.into_iter().zip(ok).collect();
                topic_results(topics, |t, p| {
                    if ok.get(&(t.to_string(), p)).copied().unwrap_or(false) {
                        0
                    } else {
                        ResponseError::InvalidTxnState.code()
                    }
                })
            }
            Err(e) => topic_results(topics, |_, _| fenced_for(version, 2, e)),
        };
    }
    let code = code_of(
        broker.txn.add_partitions(id, producer_id, epoch, &wanted).await,
        version,
        2,
    );
    topic_results(topics, |_, _| code)
}

pub(crate) async fn add_partitions_to_txn(
    broker: &Arc<Broker>,
    session: &Session,
    req: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    if version <= 3 {
        let id = req.v3_and_below_transactional_id.as_str();
        if let Some(refused) = refused_partitions(session, id, &req.v3_and_below_topics) {
            return AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(refused);
        }
        let results = add_one(
            broker,
            req.v3_and_below_transactional_id.as_str(),
            req.v3_and_below_producer_id.0,
            req.v3_and_below_producer_epoch,
            &req.v3_and_below_topics,
            false,
            version,
        )
        .await;
        return AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
    }
    let mut out = Vec::with_capacity(req.transactions.len());
    for t in &req.transactions {
        let results = match refused_partitions(session, &t.transactional_id, &t.topics) {
            Some(refused) => refused,
            None => {
                let (id, pid, epoch) = (t.transactional_id.as_str(), t.producer_id.0, t.producer_epoch);
                add_one(broker, id, pid, epoch, &t.topics, t.verify_only, version).await
            }
        };
        out.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(t.transactional_id.clone())
                .with_topic_results(results),
        );
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(out)
}

pub(crate) async fn add_offsets_to_txn(
    broker: &Arc<Broker>,
    session: &Session,
    req: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    let refused = if !session.allowed_txn(Operation::Write, &req.transactional_id) {
        Some(ResponseError::TransactionalIdAuthorizationFailed)
    } else if !session.allowed_group(Operation::Read, &req.group_id) {
        Some(ResponseError::GroupAuthorizationFailed)
    } else {
        None
    };
    if let Some(e) = refused {
        return AddOffsetsToTxnResponse::default().with_error_code(e.code());
    }
    let result = broker
        .txn
        .add_offsets(
            req.transactional_id.as_str(),
            req.producer_id.0,
            req.producer_epoch,
            req.group_id.as_str(),
        )
        .await;
    AddOffsetsToTxnResponse::default().with_error_code(code_of(result, version, 2))
}

/// TxnOffsetCommit, on the group's coordinator: the producer must be in a transaction
/// that added the group, and (KIP-447) the member and generation must be current.
pub(crate) async fn txn_offset_commit(
    broker: &Arc<Broker>,
    session: &Session,
    req: TxnOffsetCommitRequest,
    version: i16,
) -> TxnOffsetCommitResponse {
    let group = req.group_id.to_string();
    let checked = if !session.allowed_txn(Operation::Write, &req.transactional_id) {
        Err(ResponseError::TransactionalIdAuthorizationFailed)
    } else if !session.allowed_group(Operation::Read, &group) {
        Err(ResponseError::GroupAuthorizationFailed)
    } else if broker.groups.owns(&group) {
        broker
            .txn
            .check_offset_commit(
                req.transactional_id.as_str(),
                req.producer_id.0,
                req.producer_epoch,
                &group,
            )
            .await
    } else {
        Err(ResponseError::NotCoordinator)
    };
    let mut entries = Vec::new();
    // Partitions refused before the coordinator sees them, with the reason.
    let mut refused = Vec::new();
    for t in &req.topics {
        let topic = broker.log.topic(t.name.as_str());
        let readable = checked.is_err() || session.allowed_topic(Operation::Read, &t.name);
        for p in &t.partitions {
            if !readable {
                refused.push((
                    t.name.to_string(),
                    p.partition_index,
                    ResponseError::TopicAuthorizationFailed,
                ));
                continue;
            }
            if topic.as_ref().and_then(|tp| tp.partition(p.partition_index)).is_none() {
                refused.push((
                    t.name.to_string(),
                    p.partition_index,
                    ResponseError::UnknownTopicOrPartition,
                ));
                continue;
            }
            entries.push(OffsetEntry {
                topic: t.name.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
            });
        }
    }
    let outcome: Result<Vec<i16>, i16> = match checked {
        Err(e) => Err(fenced_for(version, 3, e)),
        Ok(()) => {
            let commit = CommitRequest {
                group_id: group.clone(),
                // Before v3 the request carries no member: a commit outside any generation.
                generation: if version >= 3 { req.generation_id } else { -1 },
                member_id: if version >= 3 {
                    req.member_id.to_string()
                } else {
                    String::new()
                },
                instance_id: req.group_instance_id.as_ref().map(|i| i.to_string()),
                offsets: entries,
            };
            match broker.groups.commit_transactional(commit, req.producer_id.0).await {
                Ok(results) => Ok(results
                    .into_iter()
                    .map(|r| r.err().map_or(0, crate::groups::code))
                    .collect()),
                Err(e) => Err(crate::groups::code(e)),
            }
        }
    };
    let mut results = match &outcome {
        Ok(codes) => codes.clone().into_iter(),
        Err(_) => Vec::new().into_iter(),
    };
    let topics = req
        .topics
        .iter()
        .map(|t| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            let reason = refused
                                .iter()
                                .find(|(n, i, _)| n == t.name.as_str() && *i == p.partition_index);
                            let code = if let Some((_, _, e)) = reason {
                                e.code()
                            } else {
                                match &outcome {
                                    Err(code) => *code,
                                    Ok(_) => results.next().unwrap_or(0),
                                }
                            };
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}

pub(crate) async fn end_txn(
    broker: &Arc<Broker>,
    session: &Session,
    req: EndTxnRequest,
    version: i16,
) -> EndTxnResponse {
    if !session.allowed_txn(Operation::Write, &req.transactional_id) {
        return EndTxnResponse::default()
            .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    let result = broker
        .txn
        .end_txn(
            req.transactional_id.as_str(),
            req.producer_id.0,
            req.producer_epoch,
            req.committed,
        )
        .await;
    EndTxnResponse::default()
        .with_error_code(code_of(result, version, 2))
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}

/// WriteTxnMarkers, from a coordinator on another broker: markers into partitions
/// this broker leads.
pub(crate) async fn write_txn_markers(
    broker: &Arc<Broker>,
    session: &Session,
    req: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    // Only brokers write markers: CLUSTER_ACTION on the cluster.
    let allowed = session.allowed_cluster(Operation::ClusterAction);
    let mut markers = Vec::with_capacity(req.markers.len());
    for m in req.markers {
        let mut topics = Vec::with_capacity(m.topics.len());
        for t in m.topics {
            let topic = broker.log.topic(t.name.as_str());
            let mut parts = Vec::with_capacity(t.partition_indexes.len());
            for p in t.partition_indexes {
                let code = match &topic {
                    _ if !allowed => ResponseError::ClusterAuthorizationFailed.code(),
                    None => ResponseError::UnknownTopicOrPartition.code(),
                    Some(topic) => match broker
                        .log
                        .write_marker(
                            topic,
                            p,
                            m.producer_id.0,
                            m.producer_epoch,
                            m.transaction_result,
                            m.coordinator_epoch,
                        )
                        .await
                    {
                        Ok(_) => 0,
                        Err(e) => errors::code(&e),
                    },
                };
                parts.push(
                    WritableTxnMarkerPartitionResult::default()
                        .with_partition_index(p)
                        .with_error_code(code),
                );
            }
            topics.push(
                WritableTxnMarkerTopicResult::default()
                    .with_name(t.name)
                    .with_partitions(parts),
            );
        }
        markers.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(m.producer_id)
                .with_topics(topics),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(markers)
}

/// ListTransactions (KIP-664): the transactional ids this broker coordinates.
pub(crate) async fn list_transactions(
    broker: &Arc<Broker>,
    session: &Session,
    req: ListTransactionsRequest,
) -> ListTransactionsResponse {
    let known = [
        "Empty",
        "Ongoing",
        "PrepareCommit",
        "PrepareAbort",
        "CompleteCommit",
        "CompleteAbort",
    ];
    let unknown: Vec<StrBytes> = req
        .state_filters
        .iter()
        .filter(|f| !known.contains(&f.as_str()))
        .cloned()
        .collect();
    let rows = match broker.txn.list().await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "listing transactions");
            return ListTransactionsResponse::default().with_error_code(ResponseError::CoordinatorNotAvailable.code());
        }
    };
    let now = sluice_meta::now_ms();
    let states = rows
        .into_iter()
        .filter(|r| broker.txn.owns(&r.transactional_id))
        .filter(|r| session.sees(Operation::Describe, ResourceType::TransactionalId, &r.transactional_id))
        .filter(|r| req.state_filters.is_empty() || req.state_filters.iter().any(|f| f.as_str() == r.state.as_str()))
        .filter(|r| req.producer_id_filters.is_empty() || req.producer_id_filters.contains(&ProducerId(r.producer_id)))
        // v1: only transactions running longer than the filter.
        .filter(|r| {
            req.duration_filter < 0
                || r.state == sluice_txn::State::Ongoing && now - r.started_ms >= req.duration_filter
        })
        .map(|r| {
            Listed::default()
                .with_transactional_id(TransactionalId(s(&r.transactional_id)))
                .with_producer_id(ProducerId(r.producer_id))
                .with_transaction_state(s(r.state.as_str()))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(states)
}

pub(crate) async fn describe_transactions(
    broker: &Arc<Broker>,
    session: &Session,
    req: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let mut out = Vec::with_capacity(req.transactional_ids.len());
    for id in req.transactional_ids {
        let base = Described::default().with_transactional_id(id.clone());
        if !session.allowed_txn(Operation::Describe, &id) {
            out.push(base.with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code()));
            continue;
        }
        if !broker.txn.owns(id.as_str()) {
            out.push(base.with_error_code(ResponseError::NotCoordinator.code()));
            continue;
        }
        out.push(match broker.txn.describe(id.as_str()).await {
            Err(_) => base.with_error_code(ResponseError::CoordinatorNotAvailable.code()),
            Ok(None) => base.with_error_code(ResponseError::TransactionalIdNotFound.code()),
            Ok(Some(r)) => {
                let mut topics: Vec<TopicData> = Vec::new();
                for (topic, p) in &r.partitions {
                    match topics.iter_mut().find(|t| t.topic.as_str() == topic) {
                        Some(t) => t.partitions.push(*p),
                        None => topics.push(
                            TopicData::default()
                                .with_topic(TopicName(s(topic)))
                                .with_partitions(vec![*p]),
                        ),
                    }
                }
                base.with_transaction_state(s(r.state.as_str()))
                    .with_transaction_timeout_ms(r.timeout_ms)
                    .with_transaction_start_time_ms(if r.state == sluice_txn::State::Ongoing {
                        r.started_ms
                    } else {
                        -1
                    })
                    .with_producer_id(ProducerId(r.producer_id))
                    .with_producer_epoch(r.producer_epoch)
                    .with_topics(topics)
            }
        });
    }
    DescribeTransactionsResponse::default().with_transaction_states(out)
}

/// DescribeProducers (KIP-664): the producers with state on partitions this broker leads.
pub(crate) async fn describe_producers(
    broker: &Arc<Broker>,
    session: &Session,
    req: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let topic = broker.log.topic(t.name.as_str());
        let readable = session.allowed_topic(Operation::Read, &t.name);
        let mut parts = Vec::with_capacity(t.partition_indexes.len());
        for p in t.partition_indexes {
            let base = PartitionResponse::default().with_partition_index(p);
            if !readable {
                parts.push(base.with_error_code(ResponseError::TopicAuthorizationFailed.code()));
                continue;
            }
            let Some(part) = topic.as_ref().and_then(|t| t.partition(p)) else {
                parts.push(base.with_error_code(ResponseError::UnknownTopicOrPartition.code()));
                continue;
            };
            if !part.is_led() {
                parts.push(base.with_error_code(ResponseError::NotLeaderOrFollower.code()));
                continue;
            }
            let topic_id = topic.as_ref().map(|t| t.id).unwrap_or_default();
            let states = match broker.log.meta().load_partition_producers(topic_id, p).await {
                Ok(s) => s,
                Err(_) => {
                    parts.push(base.with_error_code(ResponseError::KafkaStorageError.code()));
                    continue;
                }
            };
            // Open transactions as the leader sees them now (the store lags a flush behind).
            let open: std::collections::HashMap<i64, i64> = part.open_transactions().into_iter().collect();
            let active = states
                .into_iter()
                .map(|st| {
                    ProducerState::default()
                        .with_producer_id(ProducerId(st.producer_id))
                        .with_producer_epoch(st.epoch as i32)
                        .with_last_sequence(st.recent.last().map_or(-1, |e| e.last_seq))
                        .with_last_timestamp(-1)
                        .with_coordinator_epoch(-1)
                        .with_current_txn_start_offset(open.get(&st.producer_id).copied().unwrap_or(-1))
                })
                .collect();
            parts.push(base.with_active_producers(active));
        }
        topics.push(TopicResponse::default().with_name(t.name).with_partitions(parts));
    }
    DescribeProducersResponse::default().with_topics(topics)
}
