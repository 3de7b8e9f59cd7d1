//! Metadata (with auto-creation of topics) and DescribeCluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;
use sluice_cluster::View;
use sluice_log::{LogError, Topic};
use sluice_meta::Slot;

use crate::{errors, Broker};

/// "Authorized operations not requested" in Metadata and DescribeCluster.
const OPERATIONS_OMITTED: i32 = i32::MIN;

pub(crate) async fn metadata(broker: &Arc<Broker>, req: MetadataRequest, version: i16) -> MetadataResponse {
    let view = broker.cluster.view();
    let wanted = match req.topics {
        // v0: an empty list means all topics; v1+: null means all.
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    let topics = match wanted {
        None => broker
            .log
            .topics()
            .iter()
            .map(|t| describe_topic(&view, t, version))
            .collect(),
        Some(list) => {
            let auto_create = broker.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
            let mut out = Vec::with_capacity(list.len());
            for t in list {
                out.push(match t.name {
                    Some(name) => lookup_or_create(broker, &view, name, auto_create, version).await,
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
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.node_id))
                .with_host(errors::str(&b.host))
                .with_port(b.port)
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
            // A partition created since the view was read: the log knows its leader.
            let leader = view.leader(Slot::Partition(topic.id, p.index)).or_else(|| {
                (!view.leaders.contains_key(&Slot::Partition(topic.id, p.index)) && p.leader() >= 0)
                    .then(|| (p.leader(), p.offsets().leader_epoch))
            });
            let out = MetadataResponsePartition::default().with_partition_index(p.index);
            match leader {
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
                    .with_leader_epoch(match view.leaders.get(&Slot::Partition(topic.id, p.index)) {
                        Some(l) if version >= 7 => l.epoch,
                        _ => -1,
                    }),
            }
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(errors::str(&topic.name))))
        .with_topic_id(if version >= 10 { topic.id } else { uuid::Uuid::nil() })
        .with_partitions(partitions)
        .with_topic_authorized_operations(OPERATIONS_OMITTED)
}

pub(crate) fn describe_cluster(broker: &Arc<Broker>, _req: DescribeClusterRequest) -> DescribeClusterResponse {
    let brokers = broker
        .cluster
        .live_brokers()
        .into_iter()
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.node_id))
                .with_host(errors::str(&b.host))
                .with_port(b.port)
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
