//! The client: metadata, admin operations, produce, fetch and consumer groups.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use kafka_protocol::error::{ParseResponseErrorCode, ResponseError};
use kafka_protocol::messages::{
    create_partitions_request::CreatePartitionsTopic,
    create_topics_request::{CreatableTopic, CreatableTopicConfig},
    delete_topics_request::DeleteTopicState,
    describe_configs_request::DescribeConfigsResource,
    fetch_request::{FetchPartition, FetchTopic},
    incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig},
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
    metadata_request::MetadataRequestTopic,
    produce_request::{PartitionProduceData, TopicProduceData},
    BrokerId, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest, FetchRequest,
    IncrementalAlterConfigsRequest, ListOffsetsRequest, MetadataRequest, ProduceRequest, TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use uuid::Uuid;

use crate::conn::Connection;
use crate::error::{check, response_error, KafkaError};
use crate::records::{decode_fetched, encode_batch, AbortedTxn, ConsumedRecord, ProduceRecord};

mod groups;
mod txn;

pub use txn::ProducerIdentity;

pub use groups::{
    decode_consumer_assignment, decode_consumer_subscription, CommittedOffset, GroupDescription, GroupMember,
    ListedGroup, GROUP_NOT_EMPTY,
};

/// `list_offsets` timestamp meaning "the offset the next record will get"
/// (the high watermark, or the last stable offset under read_committed).
pub const LATEST_TIMESTAMP: i64 = -1;
/// `list_offsets` timestamp meaning "the first offset still in the log".
pub const EARLIEST_TIMESTAMP: i64 = -2;

/// Config resource type TOPIC in DescribeConfigs / IncrementalAlterConfigs.
const RESOURCE_TOPIC: i8 = 2;

/// Produce acknowledgement level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// acks=0: do not wait for any answer (the broker sends none).
    None,
    /// acks=1: the leader has appended the batch.
    Leader,
    /// acks=all (-1): the batch is fully committed.
    All,
}

impl Acks {
    /// The wire value.
    pub fn as_i16(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

/// Fetch isolation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationLevel {
    /// See every record up to the high watermark, including open and aborted transactions.
    ReadUncommitted,
    /// See records up to the last stable offset, without aborted transactions.
    ReadCommitted,
}

impl IsolationLevel {
    fn as_i8(self) -> i8 {
        match self {
            IsolationLevel::ReadUncommitted => 0,
            IsolationLevel::ReadCommitted => 1,
        }
    }
}

/// Settings for [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `client.id` sent in every request header.
    pub client_id: String,
    /// Timeout for connecting and for each request (a fetch adds its max wait).
    pub request_timeout: Duration,
    /// Compression for produced batches.
    pub compression: Compression,
    /// Isolation level for fetch and for `LATEST_TIMESTAMP` lookups.
    pub isolation_level: IsolationLevel,
    /// How long produce retries "not leader"/"unknown partition" errors
    /// (which guarantee nothing was written) before failing.
    pub retry_for: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            client_id: "sluice-client".to_string(),
            request_timeout: Duration::from_secs(30),
            compression: Compression::None,
            isolation_level: IsolationLevel::ReadCommitted,
            retry_for: Duration::from_secs(10),
        }
    }
}

/// A broker from Metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// Broker id.
    pub node_id: i32,
    /// Advertised host.
    pub host: String,
    /// Advertised port.
    pub port: i32,
    /// Rack, if configured.
    pub rack: Option<String>,
}

impl BrokerInfo {
    /// `host:port`.
    pub fn addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A partition from Metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition index.
    pub partition: i32,
    /// Leader broker id, -1 if none.
    pub leader: i32,
    /// Leader epoch (-1 if the broker's Metadata version predates it).
    pub leader_epoch: i32,
    /// Replica broker ids.
    pub replicas: Vec<i32>,
    /// In-sync replica broker ids.
    pub isr: Vec<i32>,
    /// Offline replica broker ids.
    pub offline_replicas: Vec<i32>,
    /// Partition-level error code (0 = none).
    pub error_code: i16,
}

/// A topic from Metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Topic id (nil if the broker's Metadata version predates topic ids).
    pub topic_id: Uuid,
    /// Whether this is an internal topic.
    pub is_internal: bool,
    /// Partitions, sorted by index.
    pub partitions: Vec<PartitionInfo>,
    /// Topic-level error code (0 = none; 3 = UNKNOWN_TOPIC_OR_PARTITION).
    pub error_code: i16,
}

impl TopicInfo {
    /// Number of partitions.
    pub fn num_partitions(&self) -> i32 {
        self.partitions.len() as i32
    }
}

/// The answer to a Metadata request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMetadata {
    /// Cluster id, if the broker reports one.
    pub cluster_id: Option<String>,
    /// Controller broker id (-1 if unknown).
    pub controller_id: i32,
    /// Brokers by id.
    pub brokers: BTreeMap<i32, BrokerInfo>,
    /// Topics, in the broker's order.
    pub topics: Vec<TopicInfo>,
}

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

/// One partition's answer to a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedPartition {
    /// Partition index.
    pub partition: i32,
    /// Records at or after the fetch offset (control batches and, under
    /// read_committed, aborted transactions removed).
    pub records: Vec<ConsumedRecord>,
    /// Offset to fetch next.
    pub next_offset: i64,
    /// High watermark.
    pub high_watermark: i64,
    /// Last stable offset (-1 if unknown).
    pub last_stable_offset: i64,
    /// Log start offset (-1 if unknown).
    pub log_start_offset: i64,
}

/// A small async Kafka client. Not shareable between tasks (`&mut self`);
/// open one per task.
pub struct Client {
    bootstrap: Vec<String>,
    config: ClientConfig,
    bootstrap_conn: Option<Connection>,
    conns: HashMap<i32, Connection>,
    brokers: BTreeMap<i32, BrokerInfo>,
    topics: HashMap<String, TopicInfo>,
    /// Coordinator node id by group id.
    coordinators: HashMap<String, i32>,
    /// Transaction coordinator node id by transactional id.
    txn_coordinators: HashMap<String, i32>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("bootstrap", &self.bootstrap)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connect to `bootstrap` (`host:port`, or several separated by commas)
    /// with default settings.
    pub async fn connect(bootstrap: &str) -> Result<Self> {
        Self::connect_with(bootstrap, ClientConfig::default()).await
    }

    /// Connect with explicit settings.
    pub async fn connect_with(bootstrap: &str, config: ClientConfig) -> Result<Self> {
        let addrs: Vec<String> = bootstrap
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if addrs.is_empty() {
            bail!("no bootstrap address given");
        }
        let mut client = Self {
            bootstrap: addrs,
            config,
            bootstrap_conn: None,
            conns: HashMap::new(),
            brokers: BTreeMap::new(),
            topics: HashMap::new(),
            coordinators: HashMap::new(),
            txn_coordinators: HashMap::new(),
        };
        client.bootstrap_conn().await?;
        Ok(client)
    }

    /// The settings in use.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Change the settings (takes effect on the next request).
    pub fn config_mut(&mut self) -> &mut ClientConfig {
        &mut self.config
    }

    /// The connection to the bootstrap broker, reconnecting if needed.
    pub async fn bootstrap_conn(&mut self) -> Result<&mut Connection> {
        if self.bootstrap_conn.as_ref().is_none_or(Connection::is_broken) {
            self.bootstrap_conn = None;
            let mut errors = Vec::new();
            for addr in &self.bootstrap {
                match Connection::connect(addr, &self.config.client_id, self.config.request_timeout).await {
                    Ok(c) => {
                        self.bootstrap_conn = Some(c);
                        break;
                    }
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            if self.bootstrap_conn.is_none() {
                bail!("cannot reach any bootstrap broker: {}", errors.join("; "));
            }
        }
        Ok(self.bootstrap_conn.as_mut().expect("connected above"))
    }

    /// The connection to broker `node_id` (address from Metadata).
    pub async fn broker_conn(&mut self, node_id: i32) -> Result<&mut Connection> {
        if self.conns.get(&node_id).is_none_or(Connection::is_broken) {
            self.conns.remove(&node_id);
            if !self.brokers.contains_key(&node_id) {
                self.metadata(Some(&[])).await?;
            }
            let addr = self
                .brokers
                .get(&node_id)
                .ok_or_else(|| anyhow!("broker {node_id} is not in the cluster metadata"))?
                .addr();
            let conn = Connection::connect(&addr, &self.config.client_id, self.config.request_timeout)
                .await
                .with_context(|| format!("connecting to broker {node_id}"))?;
            self.conns.insert(node_id, conn);
        }
        Ok(self.conns.get_mut(&node_id).expect("connected above"))
    }

    // ---------------------------------------------------------------- metadata

    /// Metadata for `topics` (`None` = all topics; `Some(&[])` = brokers only).
    /// Topic errors (e.g. unknown topic) are reported in `TopicInfo::error_code`.
    pub async fn metadata(&mut self, topics: Option<&[&str]>) -> Result<ClusterMetadata> {
        let conn = self.bootstrap_conn().await?;
        let version = conn.version::<MetadataRequest>()?;
        let mut req = MetadataRequest::default().with_topics(topics.map(|ts| {
            ts.iter()
                .map(|t| MetadataRequestTopic::default().with_name(Some(topic_name(t))))
                .collect()
        }));
        if version >= 4 {
            req.allow_auto_topic_creation = false;
        }
        let resp = conn.request(&req, version).await?;
        check(resp.error_code, None, || "metadata".into())?;
        let brokers: BTreeMap<i32, BrokerInfo> = resp
            .brokers
            .iter()
            .map(|b| {
                (
                    *b.node_id,
                    BrokerInfo {
                        node_id: *b.node_id,
                        host: b.host.to_string(),
                        port: b.port,
                        rack: b.rack.as_ref().map(|r| r.to_string()),
                    },
                )
            })
            .collect();
        let topics: Vec<TopicInfo> = resp
            .topics
            .iter()
            .map(|t| {
                let mut partitions: Vec<PartitionInfo> = t
                    .partitions
                    .iter()
                    .map(|p| PartitionInfo {
                        partition: p.partition_index,
                        leader: *p.leader_id,
                        leader_epoch: p.leader_epoch,
                        replicas: ids(&p.replica_nodes),
                        isr: ids(&p.isr_nodes),
                        offline_replicas: ids(&p.offline_replicas),
                        error_code: p.error_code,
                    })
                    .collect();
                partitions.sort_by_key(|p| p.partition);
                TopicInfo {
                    name: t.name.as_ref().map(|n| n.to_string()).unwrap_or_default(),
                    topic_id: t.topic_id,
                    is_internal: t.is_internal,
                    partitions,
                    error_code: t.error_code,
                }
            })
            .collect();
        self.brokers = brokers.clone();
        for t in &topics {
            if t.error_code == 0 {
                self.topics.insert(t.name.clone(), t.clone());
            } else {
                self.topics.remove(&t.name);
            }
        }
        Ok(ClusterMetadata {
            cluster_id: resp.cluster_id.as_ref().map(|c| c.to_string()),
            controller_id: *resp.controller_id,
            brokers,
            topics,
        })
    }

    /// Fresh metadata for one topic; an error if the broker reports one for it.
    pub async fn topic(&mut self, name: &str) -> Result<TopicInfo> {
        let md = self.metadata(Some(&[name])).await?;
        let t = md
            .topics
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| anyhow!("metadata response does not mention topic {name:?}"))?;
        check(t.error_code, None, || format!("topic {name:?}"))?;
        Ok(t)
    }

    /// Cached metadata for one topic, fetched if not cached yet.
    pub async fn cached_topic(&mut self, name: &str) -> Result<TopicInfo> {
        match self.topics.get(name) {
            Some(t) => Ok(t.clone()),
            None => self.topic(name).await,
        }
    }

    fn forget_topic(&mut self, name: &str) {
        self.topics.remove(name);
    }

    async fn leader_of(&mut self, topic: &str, partition: i32) -> Result<(i32, Uuid)> {
        let t = self.cached_topic(topic).await?;
        let p = t.partitions.iter().find(|p| p.partition == partition).ok_or_else(|| {
            anyhow::Error::from(KafkaError {
                context: format!("topic {topic:?} partition {partition}"),
                error: ResponseError::UnknownTopicOrPartition,
                message: Some(format!("the topic has {} partitions", t.partitions.len())),
            })
        })?;
        if p.leader < 0 {
            return Err(KafkaError {
                context: format!("topic {topic:?} partition {partition}"),
                error: p.error_code.err().unwrap_or(ResponseError::LeaderNotAvailable),
                message: None,
            }
            .into());
        }
        Ok((p.leader, t.topic_id))
    }

    // ------------------------------------------------------------------ admin

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

    // ---------------------------------------------------------------- offsets

    /// The offset for `timestamp` in a partition: [`LATEST_TIMESTAMP`] (-1),
    /// [`EARLIEST_TIMESTAMP`] (-2), or the first offset whose timestamp is at
    /// or after a time in ms (-1 if there is none).
    pub async fn list_offsets(&mut self, topic: &str, partition: i32, timestamp: i64) -> Result<i64> {
        let (leader, _) = self.leader_of(topic, partition).await?;
        let isolation = self.config.isolation_level.as_i8();
        let timeout_ms = self.timeout_ms();
        let conn = self.broker_conn(leader).await?;
        let version = conn.version::<ListOffsetsRequest>()?;
        let mut req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_timestamp(timestamp)])]);
        if version >= 2 {
            req.isolation_level = isolation;
        }
        if version >= 10 {
            req.timeout_ms = timeout_ms;
        }
        let resp = conn.request(&req, version).await;
        let resp = self.note_conn_result(leader, resp)?;
        let p = resp
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| anyhow!("ListOffsets response does not mention partition {partition}"))?;
        let res = check(p.error_code, None, || {
            format!("list offsets of {topic:?} partition {partition}")
        });
        if let Err(e) = &res {
            self.forget_if_stale(topic, e);
        }
        res?;
        Ok(p.offset)
    }

    // ---------------------------------------------------------------- produce

    /// Produce `records` to one partition as one batch. Returns the base
    /// offset the broker assigned (-1 with `Acks::None`).
    pub async fn produce(&mut self, topic: &str, partition: i32, records: &[ProduceRecord], acks: Acks) -> Result<i64> {
        let out = self.produce_partitions(topic, &[(partition, records)], acks).await?;
        Ok(out.first().map_or(-1, |(_, o)| *o))
    }

    /// Produce one batch to each of several partitions of a topic, one request
    /// per leader. Returns `(partition, base offset)` pairs. Errors that
    /// guarantee nothing was written (not leader, leader not available,
    /// unknown partition) are retried with fresh metadata for up to
    /// `ClientConfig::retry_for`.
    pub async fn produce_partitions(
        &mut self,
        topic: &str,
        batches: &[(i32, &[ProduceRecord])],
        acks: Acks,
    ) -> Result<Vec<(i32, i64)>> {
        let compression = self.config.compression;
        let pending: Vec<(i32, Bytes)> = batches
            .iter()
            .filter(|(_, recs)| !recs.is_empty())
            .map(|(p, recs)| Ok((*p, encode_batch(recs, compression)?)))
            .collect::<Result<_>>()?;
        self.produce_encoded(topic, pending, acks, None).await
    }

    /// Produce encoded record batches, one per partition, with the retries of
    /// [`Client::produce_partitions`]; `transactional_id` for a transactional
    /// producer's batches. A retried idempotent batch keeps its sequence, so the
    /// broker writes it once.
    pub async fn produce_encoded(
        &mut self,
        topic: &str,
        mut pending: Vec<(i32, Bytes)>,
        acks: Acks,
        transactional_id: Option<&str>,
    ) -> Result<Vec<(i32, i64)>> {
        let mut done = Vec::with_capacity(pending.len());
        let deadline = tokio::time::Instant::now() + self.config.retry_for;
        let mut backoff = Duration::from_millis(50);
        loop {
            let (ok, retry, fatal) = self.produce_attempt(topic, &pending, acks, transactional_id).await?;
            done.extend(ok);
            if let Some(e) = fatal {
                return Err(e);
            }
            if retry.is_empty() {
                break;
            }
            let last_err = retry.last().map(|(_, e)| format!("{e:#}")).unwrap_or_default();
            if tokio::time::Instant::now() + backoff > deadline {
                bail!("produce to {topic:?} still failing after retries: {last_err}");
            }
            tracing::debug!("produce to {topic:?} retrying {} partitions: {last_err}", retry.len());
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            self.forget_topic(topic);
            let retry_parts: Vec<i32> = retry.iter().map(|(p, _)| *p).collect();
            pending.retain(|(p, _)| retry_parts.contains(p));
        }
        done.sort_by_key(|(p, _)| *p);
        Ok(done)
    }

    /// One round of produce requests. Returns successes, partitions to retry
    /// (with their error), and the first non-retriable error.
    #[allow(clippy::type_complexity)]
    async fn produce_attempt(
        &mut self,
        topic: &str,
        pending: &[(i32, Bytes)],
        acks: Acks,
        transactional_id: Option<&str>,
    ) -> Result<(Vec<(i32, i64)>, Vec<(i32, anyhow::Error)>, Option<anyhow::Error>)> {
        let mut ok = Vec::new();
        let mut retry = Vec::new();
        let mut by_leader: BTreeMap<i32, Vec<(i32, Bytes)>> = BTreeMap::new();
        let mut topic_id = Uuid::nil();
        for (p, data) in pending {
            match self.leader_of(topic, *p).await {
                Ok((leader, id)) => {
                    topic_id = id;
                    by_leader.entry(leader).or_default().push((*p, data.clone()));
                }
                Err(e) if is_safe_to_retry(&e) => retry.push((*p, e)),
                Err(e) => return Ok((ok, retry, Some(e))),
            }
        }
        let timeout_ms = self.timeout_ms();
        let request_timeout = self.config.request_timeout + Duration::from_millis(timeout_ms as u64);
        for (leader, parts) in by_leader {
            let conn = match self.broker_conn(leader).await {
                Ok(c) => c,
                Err(e) => {
                    // Nothing was sent: safe to retry with fresh metadata.
                    for (p, _) in &parts {
                        retry.push((*p, anyhow!("{e:#}")));
                    }
                    continue;
                }
            };
            let cap = if topic_id.is_nil() { 12 } else { i16::MAX };
            let version = conn.version_capped::<ProduceRequest>(cap)?;
            let mut td = TopicProduceData::default().with_partition_data(
                parts
                    .iter()
                    .map(|(p, data)| {
                        PartitionProduceData::default()
                            .with_index(*p)
                            .with_records(Some(data.clone()))
                    })
                    .collect(),
            );
            if version >= 13 {
                td.topic_id = topic_id;
            } else {
                td.name = topic_name(topic);
            }
            let req = ProduceRequest::default()
                .with_transactional_id(transactional_id.map(|t| TransactionalId(sb(t))))
                .with_acks(acks.as_i16())
                .with_timeout_ms(timeout_ms)
                .with_topic_data(vec![td]);
            if acks == Acks::None {
                let sent = conn.send_only(&req, version).await;
                self.note_conn_result(leader, sent)?;
                ok.extend(parts.iter().map(|(p, _)| (*p, -1)));
                continue;
            }
            let resp = conn.request_with_timeout(&req, version, request_timeout).await;
            let resp = self.note_conn_result(leader, resp)?;
            for (p, _) in &parts {
                let r = resp
                    .responses
                    .iter()
                    .flat_map(|t| t.partition_responses.iter())
                    .find(|r| r.index == *p);
                let Some(r) = r else {
                    return Ok((
                        ok,
                        retry,
                        Some(anyhow!("Produce response does not mention partition {p}")),
                    ));
                };
                let mut msg = r.error_message.as_ref().map(|m| m.to_string());
                if let Some(first) = r.record_errors.first() {
                    let detail = first
                        .batch_index_error_message
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_default();
                    msg = Some(format!(
                        "{} (record {}: {detail})",
                        msg.unwrap_or_default(),
                        first.batch_index
                    ));
                }
                match check(r.error_code, msg.as_deref(), || {
                    format!("produce to {topic:?} partition {p}")
                }) {
                    Ok(()) => ok.push((*p, r.base_offset)),
                    Err(e) if is_safe_to_retry(&e) => retry.push((*p, e)),
                    Err(e) => return Ok((ok, retry, Some(e))),
                }
            }
        }
        Ok((ok, retry, None))
    }

    // ------------------------------------------------------------------ fetch

    /// Fetch from one partition starting at `offset`, waiting up to `max_wait`
    /// for data, returning at most about `max_bytes` (at least one batch).
    pub async fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait: Duration,
        max_bytes: i32,
    ) -> Result<FetchedPartition> {
        let mut out = self
            .fetch_many(topic, &[(partition, offset)], max_wait, max_bytes, max_bytes)
            .await?;
        match out.pop() {
            Some((_, r)) => r,
            None => bail!("fetch response does not mention partition {partition}"),
        }
    }

    /// Fetch from several partitions of a topic, one request per leader (sent
    /// in turn). Returns each partition's result; a partition-level error
    /// (e.g. `OFFSET_OUT_OF_RANGE`) is that partition's `Err`.
    pub async fn fetch_many(
        &mut self,
        topic: &str,
        positions: &[(i32, i64)],
        max_wait: Duration,
        max_bytes: i32,
        partition_max_bytes: i32,
    ) -> Result<Vec<(i32, Result<FetchedPartition>)>> {
        let mut out = Vec::with_capacity(positions.len());
        let mut by_leader: BTreeMap<i32, Vec<(i32, i64)>> = BTreeMap::new();
        let mut topic_id = Uuid::nil();
        for &(p, off) in positions {
            match self.leader_of(topic, p).await {
                Ok((leader, id)) => {
                    topic_id = id;
                    by_leader.entry(leader).or_default().push((p, off));
                }
                Err(e) => {
                    self.forget_if_stale(topic, &e);
                    out.push((p, Err(e)));
                }
            }
        }
        let isolation = self.config.isolation_level;
        let timeout = self.config.request_timeout + max_wait;
        for (leader, parts) in by_leader {
            let conn = match self.broker_conn(leader).await {
                Ok(c) => c,
                Err(e) => {
                    self.forget_topic(topic);
                    for (p, _) in &parts {
                        out.push((*p, Err(anyhow!("{e:#}"))));
                    }
                    continue;
                }
            };
            let cap = if topic_id.is_nil() { 12 } else { i16::MAX };
            let version = conn.version_capped::<FetchRequest>(cap)?;
            let mut ft = FetchTopic::default().with_partitions(
                parts
                    .iter()
                    .map(|&(p, off)| {
                        FetchPartition::default()
                            .with_partition(p)
                            .with_fetch_offset(off)
                            .with_partition_max_bytes(partition_max_bytes)
                    })
                    .collect(),
            );
            if version >= 13 {
                ft.topic_id = topic_id;
            } else {
                ft.topic = topic_name(topic);
            }
            let req = FetchRequest::default()
                .with_max_wait_ms(max_wait.as_millis().min(i32::MAX as u128) as i32)
                .with_min_bytes(1)
                .with_max_bytes(max_bytes)
                .with_isolation_level(isolation.as_i8())
                .with_session_id(0)
                .with_session_epoch(-1)
                .with_topics(vec![ft]);
            let resp = conn.request_with_timeout(&req, version, timeout).await;
            let resp = self.note_conn_result(leader, resp)?;
            check(resp.error_code, None, || format!("fetch from {topic:?}"))?;
            for &(p, off) in &parts {
                let Some(pd) = resp
                    .responses
                    .iter()
                    .flat_map(|t| t.partitions.iter())
                    .find(|pd| pd.partition_index == p)
                else {
                    // Not in the answer (a broker may leave out partitions it
                    // has nothing for): no data this time.
                    out.push((
                        p,
                        Ok(FetchedPartition {
                            partition: p,
                            records: Vec::new(),
                            next_offset: off,
                            high_watermark: -1,
                            last_stable_offset: -1,
                            log_start_offset: -1,
                        }),
                    ));
                    continue;
                };
                if let Err(e) = check(pd.error_code, None, || {
                    format!("fetch from {topic:?} partition {p} at offset {off}")
                }) {
                    self.forget_if_stale(topic, &e);
                    out.push((p, Err(e)));
                    continue;
                }
                let aborted: Option<Vec<AbortedTxn>> = match isolation {
                    IsolationLevel::ReadUncommitted => None,
                    IsolationLevel::ReadCommitted => Some(
                        pd.aborted_transactions
                            .iter()
                            .flatten()
                            .map(|a| AbortedTxn {
                                producer_id: *a.producer_id,
                                first_offset: a.first_offset,
                            })
                            .collect(),
                    ),
                };
                let data = pd.records.clone().unwrap_or_default();
                let decoded = decode_fetched(p, data, off, aborted.as_deref())
                    .with_context(|| format!("fetch from {topic:?} partition {p} at offset {off}"));
                out.push((
                    p,
                    decoded.map(|d| FetchedPartition {
                        partition: p,
                        records: d.records,
                        next_offset: d.next_offset,
                        high_watermark: pd.high_watermark,
                        last_stable_offset: pd.last_stable_offset,
                        log_start_offset: pd.log_start_offset,
                    }),
                ));
            }
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- helpers

    fn timeout_ms(&self) -> i32 {
        self.config.request_timeout.as_millis().min(i32::MAX as u128) as i32
    }

    /// After a request on broker `node`'s connection: drop the connection if
    /// it broke, so the next call reconnects.
    fn note_conn_result<T>(&mut self, node: i32, res: Result<T>) -> Result<T> {
        if self.conns.get(&node).is_some_and(Connection::is_broken) {
            self.conns.remove(&node);
        }
        res
    }

    fn forget_if_stale(&mut self, topic: &str, err: &anyhow::Error) {
        if is_safe_to_retry(err) {
            self.forget_topic(topic);
        }
    }
}

/// Errors after which the broker certainly did not write anything and fresh
/// metadata may help.
fn is_safe_to_retry(err: &anyhow::Error) -> bool {
    matches!(
        response_error(err),
        Some(
            ResponseError::NotLeaderOrFollower
                | ResponseError::LeaderNotAvailable
                | ResponseError::UnknownTopicOrPartition
                | ResponseError::UnknownTopicId
                | ResponseError::FencedLeaderEpoch
                | ResponseError::UnknownLeaderEpoch
                | ResponseError::NotEnoughReplicas
        )
    )
}

fn ids(v: &[BrokerId]) -> Vec<i32> {
    v.iter().map(|b| **b).collect()
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn topic_name(s: &str) -> TopicName {
    TopicName(sb(s))
}
