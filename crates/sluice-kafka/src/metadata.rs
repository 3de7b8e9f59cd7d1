//! Metadata (with auto-creation of topics), DescribeCluster, DescribeTopicPartitions
//! (KIP-966) and ElectLeaders.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_topic_partitions_response::{
    DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;
use sluice_auth::{Operation, ResourceType};
use sluice_cluster::View;
use sluice_log::{LogError, Partition, Topic};
use sluice_meta::Slot;

use crate::session::Session;
use crate::{errors, Broker};

/// "Authorized operations not requested" in Metadata and DescribeCluster.
const OPERATIONS_OMITTED: i32 = i32::MIN;

pub(crate) async fn metadata(
    broker: &Arc<Broker>,
    session: &Session,
    req: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let view = broker.cluster.view();
    let wanted = match req.topics {
        // v0: an empty list means all topics; v1+: null means all.
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    let topics = match wanted {
        // All topics: those the principal may not DESCRIBE are left out.
        None => broker
            .log
            .topics()
            .iter()
            .filter(|t| session.sees(Operation::Describe, ResourceType::Topic, &t.name))
            .map(|t| describe_topic(&view, t, version))
            .collect(),
        Some(list) => {
            let auto_create = broker.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
            let mut out = Vec::with_capacity(list.len());
            for t in list {
                let name = t.name.clone().or_else(|| {
                    broker
                        .log
                        .topic_by_id(t.topic_id)
                        .map(|t| TopicName(errors::str(&t.name)))
                });
                if let Some(name) = name.as_ref().filter(|n| !session.allowed_topic(Operation::Describe, n)) {
                    out.push(
                        MetadataResponseTopic::default()
                            .with_name(t.name.is_some().then(|| name.clone()))
                            .with_topic_id(t.topic_id)
                            .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                            .with_topic_authorized_operations(OPERATIONS_OMITTED),
                    );
                    continue;
                }
                out.push(match t.name {
                    Some(name) => lookup_or_create(broker, session, &view, name, auto_create, version).await,
                    None => match broker.log.topic_by_id(t.topic_id) {
                        Some(topic) => describe_topic(&view, &topic, version),
                        None => MetadataResponseTopic::default()
                            .with_topic_id(t.topic_id)
                            .with_error_code(ResponseError::UnknownTopicId.code()),
                    },
                });
            }
            out
        }
    };
    let brokers = broker
        .cluster
        .live_brokers()
        .into_iter()
        .filter_map(|b| {
            let (host, port) = session.listener.endpoint(&b)?;
            Some(
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(b.node_id))
                    .with_host(errors::str(&host))
                    .with_port(port),
            )
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(errors::str(&broker.config.cluster_id)))
        .with_controller_id(BrokerId(controller_id(broker)))
        .with_topics(topics)
        .with_cluster_authorized_operations(OPERATIONS_OMITTED)
}

async fn lookup_or_create(
    broker: &Broker,
    session: &Session,
    view: &View,
    name: TopicName,
    auto_create: bool,
    version: i16,
) -> MetadataResponseTopic {
    if let Some(topic) = broker.log.topic(name.as_str()) {
        return describe_topic(view, &topic, version);
    }
    // Another broker may have just created it: look in the store before saying no.
    if let Err(e) = broker.log.refresh_topics().await {
        tracing::warn!(error = %format!("{e:#}"), "refreshing topics");
    }
    if let Some(topic) = broker.log.topic(name.as_str()) {
        return describe_topic(view, &topic, version);
    }
    let missing = MetadataResponseTopic::default()
        .with_name(Some(name.clone()))
        .with_topic_authorized_operations(OPERATIONS_OMITTED);
    if !auto_create {
        return missing.with_error_code(ResponseError::UnknownTopicOrPartition.code());
    }
    // Auto-creation needs CREATE on the cluster or on the topic.
    let cluster_create = session.sees(Operation::Create, ResourceType::Cluster, sluice_auth::acl::CLUSTER_NAME);
    if !cluster_create && !session.allowed_topic(Operation::Create, &name) {
        return missing.with_error_code(ResponseError::TopicAuthorizationFailed.code());
    }
    match broker
        .log
        .create_topic(name.as_str(), None, BTreeMap::new(), false)
        .await
    {
        Ok(topic) => describe_topic(view, &topic, version),
        // Someone else created it meanwhile.
        Err(LogError::TopicExists) => match broker.log.topic(name.as_str()) {
            Some(topic) => describe_topic(view, &topic, version),
            None => missing.with_error_code(ResponseError::LeaderNotAvailable.code()),
        },
        Err(e) => missing.with_error_code(errors::code(&e)),
    }
}

/// Fields a version lacks must keep their defaults, or encoding fails.
/// Each partition's live leader as this broker last read it; a partition
/// whose leader is gone answers LEADER_NOT_AVAILABLE until the controller
/// reassigns it, so that clients refresh and retry.
fn describe_topic(view: &View, topic: &Topic, version: i16) -> MetadataResponseTopic {
    let partitions = (0..topic.partition_count())
        .filter_map(|i| topic.partition(i))
        .map(|p| {
            let out = MetadataResponsePartition::default().with_partition_index(p.index);
            match live_leader(view, topic, &p) {
                Some((node, epoch)) => out
                    .with_leader_id(BrokerId(node))
                    .with_leader_epoch(if version >= 7 { epoch } else { -1 })
                    .with_replica_nodes(vec![BrokerId(node)])
                    .with_isr_nodes(vec![BrokerId(node)]),
                // Keep the epoch as Kafka does: librdkafka takes -1 as "no epoch" and
                // then accepts any older (stale) leader from a lagging broker's view.
                None => out
                    .with_error_code(ResponseError::LeaderNotAvailable.code())
                    .with_leader_id(BrokerId(-1))
                    .with_leader_epoch(if version >= 7 { known_epoch(view, topic, &p) } else { -1 }),
            }
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(errors::str(&topic.name))))
        .with_topic_id(if version >= 10 { topic.id } else { uuid::Uuid::nil() })
        .with_partitions(partitions)
        .with_topic_authorized_operations(OPERATIONS_OMITTED)
}

/// A partition's live leader and its epoch as this broker last read them.
fn live_leader(view: &View, topic: &Topic, p: &Partition) -> Option<(i32, i32)> {
    let slot = Slot::Partition(topic.id, p.index);
    // A partition created since the view was read: the log knows its leader.
    view.leader(slot).or_else(|| {
        (!view.leaders.contains_key(&slot) && p.leader() >= 0).then(|| (p.leader(), p.offsets().leader_epoch))
    })
}

/// The leader epoch recorded for a partition without a live leader (-1 if none).
fn known_epoch(view: &View, topic: &Topic, p: &Partition) -> i32 {
    view.leaders
        .get(&Slot::Partition(topic.id, p.index))
        .map_or(-1, |l| l.epoch)
}

/// DescribeTopicPartitions (KIP-966): the named topics (all, if none are named), in name
/// order, partitions from `cursor` on, at most `response_partition_limit` of them; the
/// cursor of the next page when more remain. One replica each: the leader, which is the
/// ISR; no eligible leader replicas beyond it.
pub(crate) fn describe_topic_partitions(
    broker: &Arc<Broker>,
    session: &Session,
    req: DescribeTopicPartitionsRequest,
) -> DescribeTopicPartitionsResponse {
    let view = broker.cluster.view();
    let mut names: Vec<String> = if req.topics.is_empty() {
        let topics = broker.log.topics();
        let visible = topics
            .iter()
            .filter(|t| session.sees(Operation::Describe, ResourceType::Topic, &t.name));
        visible.map(|t| t.name.clone()).collect()
    } else {
        req.topics.iter().map(|t| t.name.to_string()).collect()
    };
    names.sort();
    names.dedup();
    let (from_topic, from_partition) = match &req.cursor {
        Some(c) => (c.topic_name.to_string(), c.partition_index.max(0)),
        None => (String::new(), 0),
    };
    let mut budget = req.response_partition_limit.max(1) as usize;
    let mut topics = Vec::new();
    let mut next_cursor = None;
    for name in names.into_iter().filter(|n| *n >= from_topic) {
        let topic = broker.log.topic(&name);
        let error = if !session.allowed_topic(Operation::Describe, &name) {
            Some(ResponseError::TopicAuthorizationFailed)
        } else {
            topic.is_none().then_some(ResponseError::UnknownTopicOrPartition)
        };
        let (Some(topic), None) = (topic, error) else {
            topics.push(
                DescribeTopicPartitionsResponseTopic::default()
                    .with_name(Some(TopicName(errors::str(&name))))
                    .with_error_code(error.map_or(0, |e| e.code()))
                    .with_topic_authorized_operations(OPERATIONS_OMITTED),
            );
            continue;
        };
        if budget == 0 {
            next_cursor = Some(
                describe_topic_partitions_response::Cursor::default()
                    .with_topic_name(TopicName(errors::str(&name)))
                    .with_partition_index(0),
            );
            break;
        }
        let first = if name == from_topic { from_partition } else { 0 };
        let mut partitions = Vec::new();
        for i in first..topic.partition_count() {
            if budget == 0 {
                next_cursor = Some(
                    describe_topic_partitions_response::Cursor::default()
                        .with_topic_name(TopicName(errors::str(&name)))
                        .with_partition_index(i),
                );
                break;
            }
            let Some(p) = topic.partition(i) else { continue };
            budget -= 1;
            let out = DescribeTopicPartitionsResponsePartition::default()
                .with_partition_index(i)
                .with_eligible_leader_replicas(Some(Vec::new()))
                .with_last_known_elr(Some(Vec::new()));
            partitions.push(match live_leader(&view, &topic, &p) {
                Some((node, epoch)) => out
                    .with_leader_id(BrokerId(node))
                    .with_leader_epoch(epoch)
                    .with_replica_nodes(vec![BrokerId(node)])
                    .with_isr_nodes(vec![BrokerId(node)]),
                None => out
                    .with_error_code(ResponseError::LeaderNotAvailable.code())
                    .with_leader_id(BrokerId(-1))
                    .with_leader_epoch(known_epoch(&view, &topic, &p)),
            });
        }
        topics.push(
            DescribeTopicPartitionsResponseTopic::default()
                .with_name(Some(TopicName(errors::str(&name))))
                .with_topic_id(topic.id)
                .with_is_internal(false)
                .with_partitions(partitions)
                .with_topic_authorized_operations(OPERATIONS_OMITTED),
        );
        if next_cursor.is_some() {
            break;
        }
    }
    DescribeTopicPartitionsResponse::default()
        .with_topics(topics)
        .with_next_cursor(next_cursor)
}

/// ElectLeaders: every partition has one replica, its leader, which is also its
/// preferred one, so there is never an election to run: ELECTION_NOT_NEEDED for a
/// partition with a live leader, ELIGIBLE_LEADERS_NOT_AVAILABLE without one (the
/// controller moves it), UNKNOWN_TOPIC_OR_PARTITION for what does not exist. Without a
/// list, every partition is answered.
pub(crate) fn elect_leaders(broker: &Arc<Broker>, session: &Session, req: ElectLeadersRequest) -> ElectLeadersResponse {
    if !session.allowed_cluster(Operation::Alter) {
        return ElectLeadersResponse::default().with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    let view = broker.cluster.view();
    let wanted: Vec<(String, Vec<i32>)> = match req.topic_partitions {
        Some(list) => list.into_iter().map(|t| (t.topic.to_string(), t.partitions)).collect(),
        None => broker
            .log
            .topics()
            .iter()
            .map(|t| (t.name.clone(), (0..t.partition_count()).collect()))
            .collect(),
    };
    let results = wanted
        .into_iter()
        .map(|(name, partitions)| {
            let topic = broker.log.topic(&name);
            let partition_result = partitions
                .into_iter()
                .map(|i| {
                    let (code, why) = match topic.as_ref().and_then(|t| Some((t, t.partition(i)?))) {
                        None => (ResponseError::UnknownTopicOrPartition, "no such topic or partition"),
                        Some((t, p)) if live_leader(&view, t, &p).is_some() => (
                            ResponseError::ElectionNotNeeded,
                            "the partition's only replica leads it already",
                        ),
                        Some(_) => (
                            ResponseError::EligibleLeadersNotAvailable,
                            "no live leader yet; the controller assigns one",
                        ),
                    };
                    elect_leaders_response::PartitionResult::default()
                        .with_partition_id(i)
                        .with_error_code(code.code())
                        .with_error_message(Some(errors::str(why)))
                })
                .collect();
            elect_leaders_response::ReplicaElectionResult::default()
                .with_topic(TopicName(errors::str(&name)))
                .with_partition_result(partition_result)
        })
        .collect();
    ElectLeadersResponse::default().with_replica_election_results(results)
}

pub(crate) fn describe_cluster(
    broker: &Arc<Broker>,
    session: &Session,
    _req: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let brokers = broker
        .cluster
        .live_brokers()
        .into_iter()
        .filter_map(|b| {
            let (host, port) = session.listener.endpoint(&b)?;
            Some(
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(b.node_id))
                    .with_host(errors::str(&host))
                    .with_port(port),
            )
        })
        .collect();
    DescribeClusterResponse::default()
        .with_endpoint_type(1)
        .with_cluster_id(errors::str(&broker.config.cluster_id))
        .with_controller_id(BrokerId(controller_id(broker)))
        .with_brokers(brokers)
        .with_cluster_authorized_operations(OPERATIONS_OMITTED)
}

/// The controller's id, or -1 while nobody holds the lease.
fn controller_id(broker: &Broker) -> i32 {
    broker.cluster.controller().unwrap_or(-1)
}
