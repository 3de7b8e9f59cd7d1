//! Admin calls: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs,
//! IncrementalAlterConfigs and DescribeLogDirs.

use anyhow::{anyhow, Result};
use kafka_protocol::messages::{
    create_partitions_request::CreatePartitionsTopic,
    create_topics_request::{CreatableTopic, CreatableTopicConfig},
    delete_topics_request::DeleteTopicState,
    describe_configs_request::DescribeConfigsResource,
    describe_log_dirs_request::DescribableLogDirTopic,
    incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig},
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest, DescribeLogDirsRequest,
    IncrementalAlterConfigsRequest,
};
use uuid::Uuid;

use super::{sb, topic_name, Client, RESOURCE_TOPIC};
use crate::error::check;

/// Result of creating a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedTopic {
    /// Topic id (nil if the broker's CreateTopics version predates it).
    pub topic_id: Uuid,
    /// Partition count (-1 if the broker's CreateTopics version does not say).
    pub num_partitions: i32,
    /// Replication factor (-1 if not reported).
    pub replication_factor: i16,
}

/// Where a config value comes from (DescribeConfigs `config_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// Unknown source (0).
    Unknown,
    /// Set on this topic (1).
    DynamicTopic,
    /// Dynamic config of this broker (2).
    DynamicBroker,
    /// Dynamic default for all brokers (3).
    DynamicDefaultBroker,
    /// Broker's static config file (4).
    StaticBroker,
    /// Built-in default (5).
    Default,
    /// Dynamic broker logger config (6).
    DynamicBrokerLogger,
    /// Any other code.
    Other(i8),
}

impl ConfigSource {
    fn from_i8(v: i8) -> Self {
        match v {
            0 => Self::Unknown,
            1 => Self::DynamicTopic,
            2 => Self::DynamicBroker,
            3 => Self::DynamicDefaultBroker,
            4 => Self::StaticBroker,
            5 => Self::Default,
            6 => Self::DynamicBrokerLogger,
            o => Self::Other(o),
        }
    }
}

/// A config entry from DescribeConfigs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    /// Config name.
    pub name: String,
    /// Value (`None` for sensitive or unset values).
    pub value: Option<String>,
    /// Where the value comes from.
    pub source: ConfigSource,
    /// Whether the config cannot be changed.
    pub read_only: bool,
    /// Whether the value is hidden.
    pub is_sensitive: bool,
}

impl ConfigEntry {
    /// Whether this value was set on the topic itself (what `kafka-topics
    /// --describe` lists as the topic's configs).
    pub fn is_topic_override(&self) -> bool {
        self.source == ConfigSource::DynamicTopic
    }
}

/// One change for [`Client::incremental_alter_configs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlterConfigOp {
    /// Set `name` to `value`.
    Set(String, String),
    /// Remove the topic's value for `name` (back to the default).
    Delete(String),
}

impl Client {
    /// Create a topic. `None` for partitions / replication factor lets the
    /// broker use its defaults (CreateTopics v4+; otherwise 1).
    pub async fn create_topics(
        &mut self,
        name: &str,
        partitions: Option<i32>,
        replication_factor: Option<i16>,
        configs: &[(String, String)],
    ) -> Result<CreatedTopic> {
        let timeout_ms = self.timeout_ms();
        let conn = self.bootstrap_conn().await?;
        let version = conn.version::<CreateTopicsRequest>()?;
        let default = if version >= 4 { -1 } else { 1 };
        let req = CreateTopicsRequest::default()
            .with_timeout_ms(timeout_ms)
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(name))
                .with_num_partitions(partitions.unwrap_or(default))
                .with_replication_factor(replication_factor.unwrap_or(default as i16))
                .with_configs(
                    configs
                        .iter()
                        .map(|(k, v)| CreatableTopicConfig::default().with_name(sb(k)).with_value(Some(sb(v))))
                        .collect(),
                )]);
        let resp = conn.request(&req, version).await?;
        let r = resp
            .topics
            .iter()
            .find(|t| t.name.as_str() == name)
            .ok_or_else(|| anyhow!("CreateTopics response does not mention {name:?}"))?;
        check(r.error_code, r.error_message.as_deref(), || {
            format!("create topic {name:?}")
        })?;
        self.forget_topic(name);
        Ok(CreatedTopic {
            topic_id: r.topic_id,
            num_partitions: if version >= 5 { r.num_partitions } else { -1 },
            replication_factor: if version >= 5 { r.replication_factor } else { -1 },
        })
    }

    /// Delete a topic.
    pub async fn delete_topics(&mut self, name: &str) -> Result<()> {
        let timeout_ms = self.timeout_ms();
        let conn = self.bootstrap_conn().await?;
        let version = conn.version::<DeleteTopicsRequest>()?;
        let mut req = DeleteTopicsRequest::default().with_timeout_ms(timeout_ms);
        if version >= 6 {
            req.topics = vec![DeleteTopicState::default().with_name(Some(topic_name(name)))];
        } else {
            req.topic_names = vec![topic_name(name)];
        }
        let resp = conn.request(&req, version).await?;
        let r = resp
            .responses
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == name))
            .or(resp.responses.first())
            .ok_or_else(|| anyhow!("DeleteTopics response does not mention {name:?}"))?;
        check(r.error_code, r.error_message.as_deref(), || {
            format!("delete topic {name:?}")
        })?;
        self.forget_topic(name);
        Ok(())
    }

    /// Grow a topic to `total_count` partitions.
    pub async fn create_partitions(&mut self, name: &str, total_count: i32) -> Result<()> {
        let timeout_ms = self.timeout_ms();
        let conn = self.bootstrap_conn().await?;
        let version = conn.version::<CreatePartitionsRequest>()?;
        let req = CreatePartitionsRequest::default()
            .with_timeout_ms(timeout_ms)
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(topic_name(name))
                .with_count(total_count)
                .with_assignments(None)]);
        let resp = conn.request(&req, version).await?;
        let r = resp
            .results
            .iter()
            .find(|t| t.name.as_str() == name)
            .ok_or_else(|| anyhow!("CreatePartitions response does not mention {name:?}"))?;
        check(r.error_code, r.error_message.as_deref(), || {
            format!("set partition count of {name:?} to {total_count}")
        })?;
        self.forget_topic(name);
        Ok(())
    }

    /// All config entries of a topic.
    pub async fn describe_configs(&mut self, topic: &str) -> Result<Vec<ConfigEntry>> {
        let conn = self.bootstrap_conn().await?;
        let version = conn.version::<DescribeConfigsRequest>()?;
        let req = DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(sb(topic))
            .with_configuration_keys(None)]);
        let resp = conn.request(&req, version).await?;
        let r = resp
            .results
            .iter()
            .find(|r| r.resource_name.as_str() == topic)
            .ok_or_else(|| anyhow!("DescribeConfigs response does not mention {topic:?}"))?;
        check(r.error_code, r.error_message.as_deref(), || {
            format!("describe configs of topic {topic:?}")
        })?;
        Ok(r.configs
            .iter()
            .map(|c| ConfigEntry {
                name: c.name.to_string(),
                value: c.value.as_ref().map(|v| v.to_string()),
                source: ConfigSource::from_i8(c.config_source),
                read_only: c.read_only,
                is_sensitive: c.is_sensitive,
            })
            .collect())
    }

    /// A topic's partition sizes in each log dir of the bootstrap broker: (dir, sizes by
    /// partition). A Sluice broker's dirs are its stores: the main one, and the tier store.
    pub async fn describe_log_dirs(
        &mut self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<Vec<(String, Vec<(i32, i64)>)>> {
        let conn = self.bootstrap_conn().await?;
        let version = conn.version::<DescribeLogDirsRequest>()?;
        let req = DescribeLogDirsRequest::default().with_topics(Some(vec![DescribableLogDirTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(partitions.to_vec())]));
        let resp = conn.request(&req, version).await?;
        check(resp.error_code, None, || format!("describe log dirs of {topic:?}"))?;
        resp.results
            .iter()
            .map(|dir| {
                check(dir.error_code, None, || {
                    format!("describe log dir {}", dir.log_dir.as_str())
                })?;
                let sizes = dir
                    .topics
                    .iter()
                    .filter(|t| t.name.as_str() == topic)
                    .flat_map(|t| t.partitions.iter().map(|p| (p.partition_index, p.partition_size)))
                    .collect();
                Ok((dir.log_dir.to_string(), sizes))
            })
            .collect()
    }

    /// Set and delete topic configs (IncrementalAlterConfigs).
    pub async fn incremental_alter_configs(&mut self, topic: &str, ops: &[AlterConfigOp]) -> Result<()> {
        let conn = self.bootstrap_conn().await?;
        let version = conn.version::<IncrementalAlterConfigsRequest>()?;
        let configs = ops
            .iter()
            .map(|op| match op {
                AlterConfigOp::Set(k, v) => AlterableConfig::default()
                    .with_name(sb(k))
                    .with_config_operation(0)
                    .with_value(Some(sb(v))),
                AlterConfigOp::Delete(k) => AlterableConfig::default()
                    .with_name(sb(k))
                    .with_config_operation(1)
                    .with_value(None),
            })
            .collect();
        let req = IncrementalAlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(sb(topic))
            .with_configs(configs)]);
        let resp = conn.request(&req, version).await?;
        let r = resp
            .responses
            .iter()
            .find(|r| r.resource_name.as_str() == topic)
            .or(resp.responses.first())
            .ok_or_else(|| anyhow!("IncrementalAlterConfigs response is empty"))?;
        check(r.error_code, r.error_message.as_deref(), || {
            format!("alter configs of topic {topic:?}")
        })
    }
}
