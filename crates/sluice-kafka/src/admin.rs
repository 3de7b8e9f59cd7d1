//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions,
//! DescribeLogDirs and AlterReplicaLogDirs.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_replica_log_dirs_response::{
    AlterReplicaLogDirPartitionResult, AlterReplicaLogDirTopicResult,
};
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use sluice_auth::Operation;
use sluice_log::LogError;

use crate::session::Session;
use crate::{errors, Broker};

/// DescribeConfigs/CreateTopics config sources.
pub(crate) const SOURCE_TOPIC: i8 = 1;
pub(crate) const SOURCE_DEFAULT: i8 = 5;

pub(crate) async fn create_topics(
    broker: &Arc<Broker>,
    session: &Session,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    // CREATE on the cluster covers every topic; otherwise CREATE on each.
    let cluster_create = session.sees(
        Operation::Create,
        sluice_auth::ResourceType::Cluster,
        sluice_auth::acl::CLUSTER_NAME,
    );
    let mut results = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let base = CreatableTopicResult::default().with_name(t.name.clone());
        let duplicate = req.topics.iter().filter(|o| o.name == t.name).count() > 1;
        let outcome = if duplicate {
            Err((
                ResponseError::InvalidRequest.code(),
                format!("Create topics request contains {} twice", t.name.as_str()),
            ))
        } else if !cluster_create && !session.allowed_topic(Operation::Create, &t.name) {
            Err((
                ResponseError::TopicAuthorizationFailed.code(),
                format!("Not authorized to create topic {}", t.name.as_str()),
            ))
        } else {
            create_one(broker, t, req.validate_only, version).await
        };
        results.push(match outcome {
            Ok(r) => r.with_name(t.name.clone()),
            Err((code, msg)) => base
                .with_error_code(code)
                .with_error_message(Some(errors::str(&msg)))
                .with_num_partitions(-1)
                .with_replication_factor(-1)
                .with_topic_config_error_code(if version >= 5 { code } else { 0 }),
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}

async fn create_one(
    broker: &Broker,
    t: &CreatableTopic,
    validate_only: bool,
    version: i16,
) -> Result<CreatableTopicResult, (i16, String)> {
    if t.replication_factor == 0 || t.replication_factor < -1 {
        return Err((
            ResponseError::InvalidReplicationFactor.code(),
            format!(
                "Replication factor must be -1 or at least 1, got {}",
                t.replication_factor
            ),
        ));
    }
    let partitions = match (t.num_partitions, t.assignments.len()) {
        (-1, 0) => None,
        (-1, n) => Some(n as i32),
        (n, 0) => Some(n),
        _ => {
            return Err((
                ResponseError::InvalidRequest.code(),
                "Both numPartitions and replica assignments were set".into(),
            ))
        }
    };
    let configs: BTreeMap<String, String> = t
        .configs
        .iter()
        .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
        .collect();
    let topic = broker
        .log
        .create_topic(t.name.as_str(), partitions, configs, validate_only)
        .await
        .map_err(|e| (errors::code(&e), e.to_string()))?;
    let overrides = topic.overrides();
    let described = broker
        .log
        .options()
        .defaults
        .describe(&overrides)
        .into_iter()
        .map(|c| {
            CreatableTopicConfigs::default()
                .with_name(StrBytes::from_static_str(c.name))
                .with_value(Some(errors::str(&c.value)))
                .with_config_source(if c.is_default { SOURCE_DEFAULT } else { SOURCE_TOPIC })
        })
        .collect();
    // Fields a version lacks must keep their defaults, or encoding fails.
    let mut result = CreatableTopicResult::default();
    if version >= 7 {
        result = result.with_topic_id(topic.id);
    }
    if version >= 5 {
        result = result
            .with_num_partitions(topic.partition_count())
            .with_replication_factor(1)
            .with_configs(Some(described));
    }
    Ok(result)
}

pub(crate) async fn delete_topics(
    broker: &Arc<Broker>,
    session: &Session,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    // v0-5 name topics in topic_names; v6 in topics, by name or id.
    let mut targets: Vec<(Option<TopicName>, uuid::Uuid)> = req
        .topic_names
        .into_iter()
        .map(|n| (Some(n), uuid::Uuid::nil()))
        .collect();
    targets.extend(req.topics.into_iter().map(|t| (t.name, t.topic_id)));
    let mut responses = Vec::with_capacity(targets.len());
    for (name, id) in targets {
        let resolved = match &name {
            Some(n) => Some(n.to_string()),
            None => broker.log.topic_by_id(id).map(|t| t.name.clone()),
        };
        let base = DeletableTopicResult::default()
            .with_name(name.clone())
            .with_topic_id(id);
        if resolved
            .as_ref()
            .is_some_and(|n| !session.allowed_topic(Operation::Delete, n))
        {
            responses.push(base.with_error_code(ResponseError::TopicAuthorizationFailed.code()));
            continue;
        }
        let result = match &resolved {
            Some(n) => broker.log.delete_topic(n).await,
            None => Err(LogError::UnknownTopicOrPartition),
        };
        responses.push(match result {
            Ok(deleted_id) => base
                .with_topic_id(if version >= 6 { deleted_id } else { uuid::Uuid::nil() })
                .with_name(resolved.map(|n| TopicName(errors::str(&n)))),
            Err(e) => {
                let code = if name.is_none() {
                    ResponseError::UnknownTopicId.code()
                } else {
                    errors::code(&e)
                };
                base.with_error_code(code)
                    .with_error_message(if version >= 5 { errors::message(&e) } else { None })
            }
        });
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

pub(crate) async fn create_partitions(
    broker: &Arc<Broker>,
    session: &Session,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let base = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        if !session.allowed_topic(Operation::Alter, &t.name) {
            results.push(base.with_error_code(ResponseError::TopicAuthorizationFailed.code()));
            continue;
        }
        results.push(
            match broker
                .log
                .add_partitions(t.name.as_str(), t.count, req.validate_only)
                .await
            {
                Ok(()) => base,
                Err(e) => base
                    .with_error_code(errors::code(&e))
                    .with_error_message(errors::message(&e)),
            },
        );
    }
    CreatePartitionsResponse::default().with_results(results)
}

pub(crate) async fn describe_log_dirs(
    broker: &Arc<Broker>,
    session: &Session,
    req: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    if !session.allowed_cluster(Operation::Describe) {
        return DescribeLogDirsResponse::default().with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    let wanted: Vec<(String, Option<Vec<i32>>)> = match req.topics {
        None => broker.log.topics().iter().map(|t| (t.name.clone(), None)).collect(),
        Some(list) => list
            .into_iter()
            .map(|t| (t.topic.to_string(), Some(t.partitions)))
            .collect(),
    };
    // The log dirs are the stores: the main one, and the tier store where there is one
    // (Kafka's DescribeLogDirs counts local segments only; the tier store's bytes are
    // reported as a dir of their own rather than not at all).
    let (mut local, mut tier, mut error) = (Vec::new(), Vec::new(), 0i16);
    for (name, parts) in wanted {
        let Some(topic) = broker.log.topic(&name) else { continue };
        let sizes = match broker.log.partition_sizes(&topic).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "describe log dirs");
                error = ResponseError::KafkaStorageError.code();
                continue;
            }
        };
        let indexes: Vec<i32> = parts
            .unwrap_or_else(|| (0..topic.partition_count()).collect())
            .into_iter()
            .filter(|i| *i >= 0 && *i < topic.partition_count())
            .collect();
        let dir_topic = |size: &dyn Fn(i32) -> i64| {
            let partitions = indexes
                .iter()
                .map(|&i| {
                    DescribeLogDirsPartition::default()
                        .with_partition_index(i)
                        .with_partition_size(size(i))
                })
                .collect();
            DescribeLogDirsTopic::default()
                .with_name(TopicName(errors::str(&name)))
                .with_partitions(partitions)
        };
        let of = |i: i32| sizes.get(&i).copied().unwrap_or_default();
        local.push(dir_topic(&|i| of(i).local));
        tier.push(dir_topic(&|i| of(i).tier));
    }
    let dir = |url: &str, topics: Vec<DescribeLogDirsTopic>| {
        DescribeLogDirsResult::default()
            .with_log_dir(errors::str(url))
            .with_error_code(error)
            .with_total_bytes(-1)
            .with_usable_bytes(-1)
            .with_topics(topics)
    };
    let mut results = vec![dir(broker.log.store_url(), local)];
    if let Some(url) = broker.log.tier_url() {
        results.push(dir(url, tier));
    }
    DescribeLogDirsResponse::default().with_results(results)
}

/// AlterReplicaLogDirs: a partition has one replica, in the one log dir DescribeLogDirs
/// reports (the object store). Asking for that dir is answered NONE (it is there already);
/// any other path is LOG_DIR_NOT_FOUND, as Kafka answers for a dir it does not have.
pub(crate) fn alter_replica_log_dirs(
    broker: &Arc<Broker>,
    session: &Session,
    req: AlterReplicaLogDirsRequest,
) -> AlterReplicaLogDirsResponse {
    let allowed = session.allowed_cluster(Operation::Alter);
    let mut results: Vec<AlterReplicaLogDirTopicResult> = Vec::new();
    for dir in req.dirs {
        let here = dir.path.as_str() == broker.log.store_url();
        for t in dir.topics {
            let topic = broker.log.topic(t.name.as_str());
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let code = match &topic {
                        _ if !allowed => ResponseError::ClusterAuthorizationFailed.code(),
                        Some(topic) if p >= 0 && p < topic.partition_count() => {
                            if here {
                                0
                            } else {
                                ResponseError::LogDirNotFound.code()
                            }
                        }
                        _ => ResponseError::UnknownTopicOrPartition.code(),
                    };
                    AlterReplicaLogDirPartitionResult::default()
                        .with_partition_index(p)
                        .with_error_code(code)
                })
                .collect();
            results.push(
                AlterReplicaLogDirTopicResult::default()
                    .with_topic_name(t.name)
                    .with_partitions(partitions),
            );
        }
    }
    AlterReplicaLogDirsResponse::default().with_results(results)
}
