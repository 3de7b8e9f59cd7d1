//! The client: metadata, admin operations, produce, fetch and consumer groups.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use kafka_protocol::error::{ParseResponseErrorCode, ResponseError};
use kafka_protocol::messages::{metadata_request::MetadataRequestTopic, BrokerId, MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use uuid::Uuid;

use crate::conn::Connection;
use crate::error::{check, response_error, KafkaError};

mod admin;
mod fetch;
mod groups;
mod produce;
mod txn;

pub use admin::{AlterConfigOp, ConfigEntry, ConfigSource, CreatedTopic};
pub use fetch::FetchedPartition;

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
/// `list_offsets` timestamp meaning "the first offset still in the main store", past what
/// moved to the tier store (KIP-405).
pub const EARLIEST_LOCAL_TIMESTAMP: i64 = -4;

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
