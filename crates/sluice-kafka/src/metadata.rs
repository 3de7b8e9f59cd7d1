//! Metadata (with auto-creation of topics) and DescribeCluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;
use sluice_log::{LogError, Topic};

use crate::{errors, Broker};

/// "Authorized operations not requested" in Metadata and DescribeCluster.
const OPERATIONS_OMITTED: i32 = i32::MIN;

pub(crate) async fn metadata(broker: &Arc<Broker>, req: MetadataRequest, version: i16) -> MetadataResponse {
    let node = BrokerId(broker.config.node_id);
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
            .map(|t| describe_topic(broker, t, version))
            .collect(),
        Some(list) => {
            let auto_create = broker.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
            let mut out = Vec::with_capacity(list.len());
            for t in list {
                out.push(match t.name {
                    Some(name) => lookup_or_create(broker, name, auto_create, version).await,
                    None => match broker.log.topic_by_id(t.topic_id) {
                        Some(topic) => describe_topic(broker, &topic, version),
                        None => MetadataResponseTopic::default()
                            .with_topic_id(t.topic_id)
                            .with_error_code(ResponseError::UnknownTopicId.code()),
                    },
                });
            }
            out
        }
    };
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(node)
            .with_host(errors::str(&broker.config.advertised_host))
            .with_port(broker.config.advertised_port)])
        .with_cluster_id(Some(errors::str(&broker.config.cluster_id)))
        .with_controller_id(node)
        .with_topics(topics)
        .with_cluster_authorized_operations(OPERATIONS_OMITTED)
}

async fn lookup_or_create(broker: &Broker, name: TopicName, auto_create: bool, version: i16) -> MetadataResponseTopic {
    if let Some(topic) = broker.log.topic(name.as_str()) {
        return describe_topic(broker, &topic, version);
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
        Ok(topic) => describe_topic(broker, &topic, version),
        // Someone else created it meanwhile.
        Err(LogError::TopicExists) => match broker.log.topic(name.as_str()) {
            Some(topic) => describe_topic(broker, &topic, version),
            None => missing.with_error_code(ResponseError::LeaderNotAvailable.code()),
        },
        Err(e) => missing.with_error_code(errors::code(&e)),
    }
}

/// Fields a version lacks must keep their defaults, or encoding fails.
fn describe_topic(broker: &Broker, topic: &Topic, version: i16) -> MetadataResponseTopic {
    let node = BrokerId(broker.config.node_id);
    let partitions = (0..topic.partition_count())
        .filter_map(|i| topic.partition(i))
        .map(|p| {
            MetadataResponsePartition::default()
                .with_partition_index(p.index)
                .with_leader_id(node)
                .with_leader_epoch(if version >= 7 { p.offsets().leader_epoch } else { -1 })
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(errors::str(&topic.name))))
        .with_topic_id(if version >= 10 { topic.id } else { uuid::Uuid::nil() })
        .with_partitions(partitions)
        .with_topic_authorized_operations(OPERATIONS_OMITTED)
}

pub(crate) fn describe_cluster(broker: &Arc<Broker>, _req: DescribeClusterRequest) -> DescribeClusterResponse {
    DescribeClusterResponse::default()
        .with_endpoint_type(1)
        .with_cluster_id(errors::str(&broker.config.cluster_id))
        .with_controller_id(BrokerId(broker.config.node_id))
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(BrokerId(broker.config.node_id))
            .with_host(errors::str(&broker.config.advertised_host))
            .with_port(broker.config.advertised_port)])
        .with_cluster_authorized_operations(OPERATIONS_OMITTED)
}
