//! Consumer group administration: coordinator lookup, listing, describing
//! and deleting groups, and reading, committing and deleting their offsets,
//! as Kafka's AdminClient and `kafka-consumer-groups` do it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, Bytes};
use kafka_protocol::error::{ParseResponseErrorCode, ResponseError};
use kafka_protocol::messages::{
    consumer_protocol_assignment::ConsumerProtocolAssignment,
    consumer_protocol_subscription::ConsumerProtocolSubscription,
    offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
    offset_delete_request::{OffsetDeleteRequestPartition, OffsetDeleteRequestTopic},
    offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics},
    DeleteGroupsRequest, DescribeGroupsRequest, FindCoordinatorRequest, GroupId, ListGroupsRequest,
    OffsetCommitRequest, OffsetDeleteRequest, OffsetFetchRequest,
};
use kafka_protocol::protocol::{Decodable, Request};
use tokio::time::Instant;

use super::{sb, topic_name, BrokerInfo, Client};
use crate::error::{check, response_error};

/// FindCoordinator key type of a consumer group.
const KEY_TYPE_GROUP: i8 = 0;

/// The message of the error returned when offsets cannot be committed because
/// the group has active members.
pub const GROUP_NOT_EMPTY: &str = "group is not empty; stop its consumers first";

/// A group from ListGroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedGroup {
    /// Group id.
    pub group_id: String,
    /// Protocol type (`consumer` for Kafka consumers; may be empty for a
    /// group known only by its committed offsets).
    pub protocol_type: String,
    /// State (`Stable`, `Empty`, ...), if the broker's ListGroups version
    /// reports it (v4+).
    pub state: Option<String>,
    /// Group type (`classic`, `consumer`), if reported (v5+).
    pub group_type: Option<String>,
}

/// A group from DescribeGroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// Group id.
    pub group_id: String,
    /// State: `Empty`, `PreparingRebalance`, `CompletingRebalance`, `Stable`,
    /// or `Dead` for a group the coordinator does not know.
    pub state: String,
    /// Protocol type (`consumer` for Kafka consumers).
    pub protocol_type: String,
    /// The chosen protocol: for consumers, the partition assignor (`range`, ...).
    pub protocol: String,
    /// Current members.
    pub members: Vec<GroupMember>,
}

impl GroupDescription {
    /// Whether the coordinator knows the group (its state is not `Dead`).
    pub fn exists(&self) -> bool {
        self.state != "Dead"
    }

    /// Whether the group has no active members (`Empty` or `Dead`), so that
    /// its offsets may be reset and the group deleted.
    pub fn is_inactive(&self) -> bool {
        self.members.is_empty() && matches!(self.state.as_str(), "Empty" | "Dead")
    }
}

/// A member of a group, from DescribeGroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Member id assigned by the coordinator.
    pub member_id: String,
    /// `group.instance.id` of a static member.
    pub group_instance_id: Option<String>,
    /// The member's client id.
    pub client_id: String,
    /// The member's host, as the coordinator saw it.
    pub client_host: String,
    /// The member's protocol metadata (for consumers, its subscription).
    pub metadata: Bytes,
    /// The member's assignment, as the group leader sent it.
    pub assignment: Bytes,
    /// Topics the member subscribes to, decoded from `metadata` when the
    /// group uses the consumer protocol; `None` if it could not be decoded.
    pub subscribed_topics: Option<Vec<String>>,
    /// Partitions assigned to the member, decoded from `assignment` when the
    /// group uses the consumer protocol (sorted, one entry per topic); `None`
    /// if it could not be decoded.
    pub assigned_partitions: Option<Vec<(String, Vec<i32>)>>,
}

/// A committed offset, from OffsetFetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The committed offset (the next record the group will read); `None`
    /// if the group has committed nothing for this partition.
    pub offset: Option<i64>,
    /// Leader epoch committed with the offset, if any.
    pub leader_epoch: Option<i32>,
    /// Metadata committed with the offset.
    pub metadata: Option<String>,
}

/// Decode a consumer-protocol member assignment (`ConsumerProtocolAssignment`
/// behind its version prefix) into `(topic, partitions)` pairs, sorted, one per
/// topic. An empty byte string is an empty assignment (a member that has not
/// received one yet).
pub fn decode_consumer_assignment(data: &[u8]) -> Result<Vec<(String, Vec<i32>)>> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let (mut buf, version) = consumer_protocol_version(data)?;
    let a = ConsumerProtocolAssignment::decode(&mut buf, version).context("decoding consumer assignment")?;
    let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for tp in a.assigned_partitions {
        by_topic.entry(tp.topic.to_string()).or_default().extend(tp.partitions);
    }
    Ok(by_topic
        .into_iter()
        .map(|(t, mut ps)| {
            ps.sort_unstable();
            ps.dedup();
            (t, ps)
        })
        .collect())
}

/// Decode a consumer-protocol subscription (`ConsumerProtocolSubscription`
/// behind its version prefix) into the subscribed topics, sorted.
pub fn decode_consumer_subscription(data: &[u8]) -> Result<Vec<String>> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let (mut buf, version) = consumer_protocol_version(data)?;
    let s = ConsumerProtocolSubscription::decode(&mut buf, version).context("decoding consumer subscription")?;
    let mut topics: Vec<String> = s.topics.iter().map(|t| t.to_string()).collect();
    topics.sort();
    topics.dedup();
    Ok(topics)
}

/// Split off the i16 version prefix. Versions above the newest this client
/// knows are read as the newest: later versions only append fields, which is
/// how Kafka's own ConsumerProtocol reads them.
fn consumer_protocol_version(data: &[u8]) -> Result<(Bytes, i16)> {
    if data.len() < 2 {
        bail!("consumer protocol data too short ({} bytes)", data.len());
    }
    let mut buf = Bytes::copy_from_slice(data);
    let version = buf.get_i16();
    if version < 0 {
        bail!("invalid consumer protocol version {version}");
    }
    Ok((buf, version.min(3)))
}

/// Errors after which the group's coordinator should be looked up again.
pub(super) fn is_coordinator_error(code: i16) -> bool {
    matches!(
        code.err(),
        Some(
            ResponseError::NotCoordinator
                | ResponseError::CoordinatorNotAvailable
                | ResponseError::CoordinatorLoadInProgress
        )
    )
}

fn group_id(s: &str) -> GroupId {
    GroupId(sb(s))
}

/// `(topic, [partitions])` pairs from `(topic, partition, x)` triples, topics
/// in first-seen order.
fn by_topic<T: Copy>(items: &[(String, i32, T)]) -> Vec<(String, Vec<(i32, T)>)> {
    let mut out: Vec<(String, Vec<(i32, T)>)> = Vec::new();
    for (t, p, x) in items {
        match out.iter_mut().find(|(n, _)| n == t) {
            Some((_, ps)) => ps.push((*p, *x)),
            None => out.push((t.clone(), vec![(*p, *x)])),
        }
    }
    out
}

/// Retry timing for coordinator lookups.
pub(super) struct Backoff {
    deadline: Instant,
    delay: Duration,
}

impl Backoff {
    pub(super) fn new(retry_for: Duration) -> Self {
        Self {
            deadline: Instant::now() + retry_for,
            delay: Duration::from_millis(50),
        }
    }

    /// Sleep before the next attempt; false once the retry time is used up.
    pub(super) async fn wait(&mut self) -> bool {
        if Instant::now() + self.delay > self.deadline {
            return false;
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(1));
        true
    }
}

impl Client {
    // ------------------------------------------------------------ coordinator

    /// The broker coordinating `group` (FindCoordinator), retried while the
    /// broker answers that no coordinator is available yet.
    pub async fn find_coordinator(&mut self, group: &str) -> Result<BrokerInfo> {
        let b = self.find_coordinator_of(group, KEY_TYPE_GROUP).await?;
        self.coordinators.insert(group.to_string(), b.node_id);
        Ok(b)
    }

    /// The coordinator of `key` (a group, or a transactional id with key type 1),
    /// retrying while none is ready.
    pub(crate) async fn find_coordinator_of(&mut self, key: &str, key_type: i8) -> Result<BrokerInfo> {
        let mut backoff = Backoff::new(self.config.retry_for);
        loop {
            match self.find_coordinator_once(key, key_type).await {
                Ok(b) => {
                    if self
                        .brokers
                        .get(&b.node_id)
                        .is_some_and(|known| known.addr() != b.addr())
                    {
                        self.conns.remove(&b.node_id);
                    }
                    self.brokers.insert(b.node_id, b.clone());
                    return Ok(b);
                }
                Err(e) if response_error(&e).is_some_and(|r| is_coordinator_error(r.code())) => {
                    if !backoff.wait().await {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn find_coordinator_once(&mut self, group: &str, key_type: i8) -> Result<BrokerInfo> {
        let conn = self.bootstrap_conn().await?;
        let version = conn.version::<FindCoordinatorRequest>()?;
        let mut req = FindCoordinatorRequest::default();
        if version >= 4 {
            req.coordinator_keys = vec![sb(group)];
            req.key_type = key_type;
        } else {
            req.key = sb(group);
            if version >= 1 {
                req.key_type = key_type;
            } else if key_type != KEY_TYPE_GROUP {
                bail!("the broker's FindCoordinator v0 knows only groups");
            }
        }
        let resp = conn.request(&req, version).await?;
        let context = || format!("find coordinator of {group:?}");
        let (node_id, host, port) = if version >= 4 {
            let c = resp
                .coordinators
                .iter()
                .find(|c| c.key.as_str() == group)
                .or(resp.coordinators.first())
                .ok_or_else(|| anyhow!("FindCoordinator response names no coordinator"))?;
            check(c.error_code, c.error_message.as_deref(), context)?;
            (*c.node_id, c.host.to_string(), c.port)
        } else {
            check(resp.error_code, resp.error_message.as_deref(), context)?;
            (*resp.node_id, resp.host.to_string(), resp.port)
        };
        Ok(BrokerInfo {
            node_id,
            host,
            port,
            rack: None,
        })
    }

    /// The coordinator's node id, from the cache or a lookup.
    async fn coordinator_node(&mut self, group: &str) -> Result<i32> {
        match self.coordinators.get(group) {
            Some(n) => Ok(*n),
            None => Ok(self.find_coordinator(group).await?.node_id),
        }
    }

    /// Send one request to broker `node` at the highest common version.
    async fn node_request<R: Request>(
        &mut self,
        node: i32,
        build: impl FnOnce(i16) -> R,
    ) -> Result<(R::Response, i16)> {
        let conn = self.broker_conn(node).await?;
        let version = conn.version::<R>()?;
        let req = build(version);
        let resp = conn.request(&req, version).await;
        let resp = self.note_conn_result(node, resp)?;
        Ok((resp, version))
    }

    /// Send a request about one group to its coordinator, looking the
    /// coordinator up again (and retrying) when the connection fails or
    /// `coordinator_error` finds NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE or
    /// COORDINATOR_LOAD_IN_PROGRESS in the answer.
    async fn coordinator_request<R: Request>(
        &mut self,
        group: &str,
        build: impl Fn(i16) -> R,
        coordinator_error: impl Fn(&R::Response) -> i16,
    ) -> Result<(R::Response, i16)> {
        let mut backoff = Backoff::new(self.config.retry_for);
        loop {
            let node = self.coordinator_node(group).await?;
            let err = match self.node_request(node, &build).await {
                Ok((resp, version)) => {
                    let code = coordinator_error(&resp);
                    if !is_coordinator_error(code) {
                        return Ok((resp, version));
                    }
                    check(code, None, || format!("coordinator of group {group:?}")).unwrap_err()
                }
                Err(e) => e,
            };
            self.coordinators.remove(group);
            tracing::debug!("group {group:?}: retrying with a fresh coordinator lookup: {err:#}");
            if !backoff.wait().await {
                return Err(err);
            }
        }
    }

    /// Send a request about several groups, one per coordinator, retrying the
    /// groups whose coordinator moved. `split` turns an answer into
    /// `(group id, error code, error message, item)`; the result maps each
    /// group id to its error code, message and item.
    async fn batched_group_request<R: Request, T>(
        &mut self,
        ids: &[String],
        build: impl Fn(i16, &[String]) -> R,
        split: impl Fn(R::Response, i16) -> Vec<(String, i16, Option<String>, T)>,
    ) -> Result<HashMap<String, (i16, Option<String>, T)>> {
        let mut out = HashMap::new();
        let mut pending: Vec<String> = Vec::new();
        for id in ids {
            if !pending.contains(id) {
                pending.push(id.clone());
            }
        }
        let mut backoff = Backoff::new(self.config.retry_for);
        while !pending.is_empty() {
            let mut by_node: BTreeMap<i32, Vec<String>> = BTreeMap::new();
            for id in &pending {
                let node = self.coordinator_node(id).await?;
                by_node.entry(node).or_default().push(id.clone());
            }
            let mut retry = Vec::new();
            let mut last_err = None;
            for (node, group_ids) in by_node {
                let (resp, version) = match self.node_request(node, |v| build(v, &group_ids)).await {
                    Ok(r) => r,
                    Err(e) => {
                        retry.extend(group_ids);
                        last_err = Some(e);
                        continue;
                    }
                };
                for (id, code, msg, item) in split(resp, version) {
                    if !group_ids.contains(&id) {
                        continue;
                    }
                    if is_coordinator_error(code) {
                        last_err = Some(check(code, msg.as_deref(), || format!("group {id:?}")).unwrap_err());
                        retry.push(id);
                    } else {
                        out.insert(id, (code, msg, item));
                    }
                }
                for id in group_ids {
                    if !out.contains_key(&id) && !retry.contains(&id) {
                        bail!("the coordinator's answer does not mention group {id:?}");
                    }
                }
            }
            for id in &retry {
                self.coordinators.remove(id);
            }
            if !retry.is_empty() && !backoff.wait().await {
                return Err(last_err.unwrap_or_else(|| anyhow!("no coordinator for groups {retry:?}")));
            }
            pending = retry;
        }
        Ok(out)
    }

    // ------------------------------------------------------------------ groups

    /// All groups, from every broker (ListGroups), sorted by id. With
    /// `states` (e.g. `["Stable", "Empty"]`) only groups in one of those
    /// states (compared case-insensitively); the filter is sent to the broker
    /// (ListGroups v4+) and applied here as well.
    pub async fn list_groups(&mut self, states: &[String]) -> Result<Vec<ListedGroup>> {
        let md = self.metadata(Some(&[])).await?;
        let mut nodes: Vec<i32> = md.brokers.keys().copied().collect();
        if nodes.is_empty() {
            bail!("the cluster metadata lists no brokers");
        }
        nodes.sort_unstable();
        let mut groups: BTreeMap<String, ListedGroup> = BTreeMap::new();
        for node in nodes {
            let mut backoff = Backoff::new(self.config.retry_for);
            let (resp, version) = loop {
                let (resp, version) = self
                    .node_request(node, |v| {
                        let mut req = ListGroupsRequest::default();
                        if v >= 4 {
                            req.states_filter = states.iter().map(|s| sb(s)).collect();
                        }
                        req
                    })
                    .await
                    .with_context(|| format!("list groups on broker {node}"))?;
                if resp.error_code == ResponseError::CoordinatorLoadInProgress.code() && backoff.wait().await {
                    continue;
                }
                break (resp, version);
            };
            check(resp.error_code, None, || format!("list groups on broker {node}"))?;
            if version < 4 && !states.is_empty() {
                bail!("broker {node} does not report group states (ListGroups v{version}); cannot filter by state");
            }
            for g in resp.groups {
                let listed = ListedGroup {
                    group_id: g.group_id.to_string(),
                    protocol_type: g.protocol_type.to_string(),
                    state: (version >= 4).then(|| g.group_state.to_string()),
                    group_type: (version >= 5).then(|| g.group_type.to_string()),
                };
                let wanted = states.is_empty()
                    || listed
                        .state
                        .as_deref()
                        .is_some_and(|s| states.iter().any(|f| f.eq_ignore_ascii_case(s)));
                if wanted {
                    groups.insert(listed.group_id.clone(), listed);
                }
            }
        }
        Ok(groups.into_values().collect())
    }

    /// Describe groups (DescribeGroups), in the order asked. A group the
    /// coordinator does not know comes back with state `Dead` and no members.
    /// Members' consumer-protocol subscriptions and assignments are decoded.
    pub async fn describe_groups(&mut self, ids: &[&str]) -> Result<Vec<GroupDescription>> {
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        let answers = self
            .batched_group_request(
                &ids,
                |_, group_ids| {
                    DescribeGroupsRequest::default().with_groups(group_ids.iter().map(|g| group_id(g)).collect())
                },
                |resp, _| {
                    resp.groups
                        .into_iter()
                        .map(|g| {
                            let consumer = g.protocol_type.as_str() == "consumer";
                            let desc = GroupDescription {
                                group_id: g.group_id.to_string(),
                                state: g.group_state.to_string(),
                                protocol_type: g.protocol_type.to_string(),
                                protocol: g.protocol_data.to_string(),
                                members: g
                                    .members
                                    .into_iter()
                                    .map(|m| GroupMember {
                                        member_id: m.member_id.to_string(),
                                        group_instance_id: m.group_instance_id.map(|i| i.to_string()),
                                        client_id: m.client_id.to_string(),
                                        client_host: m.client_host.to_string(),
                                        subscribed_topics: consumer
                                            .then(|| decode_consumer_subscription(&m.member_metadata).ok())
                                            .flatten(),
                                        assigned_partitions: consumer
                                            .then(|| decode_consumer_assignment(&m.member_assignment).ok())
                                            .flatten(),
                                        metadata: m.member_metadata,
                                        assignment: m.member_assignment,
                                    })
                                    .collect(),
                            };
                            (
                                g.group_id.to_string(),
                                g.error_code,
                                g.error_message.map(|m| m.to_string()),
                                desc,
                            )
                        })
                        .collect()
                },
            )
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            let (code, msg, desc) = answers.get(id).ok_or_else(|| anyhow!("no answer for group {id:?}"))?;
            check(*code, msg.as_deref(), || format!("describe group {id:?}"))?;
            out.push(desc.clone());
        }
        Ok(out)
    }

    /// Delete groups with their committed offsets (DeleteGroups). Returns each
    /// group's outcome, in the order asked: NON_EMPTY_GROUP while it has
    /// members, GROUP_ID_NOT_FOUND if it does not exist.
    pub async fn delete_groups(&mut self, ids: &[&str]) -> Result<Vec<(String, Result<()>)>> {
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        let answers = self
            .batched_group_request(
                &ids,
                |_, group_ids| {
                    DeleteGroupsRequest::default().with_groups_names(group_ids.iter().map(|g| group_id(g)).collect())
                },
                |resp, _| {
                    resp.results
                        .into_iter()
                        .map(|r| (r.group_id.to_string(), r.error_code, None, ()))
                        .collect()
                },
            )
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let res = match answers.get(&id) {
                Some((code, msg, ())) => check(*code, msg.as_deref(), || format!("delete group {id:?}")),
                None => Err(anyhow!("no answer for group {id:?}")),
            };
            if res.is_ok() {
                self.coordinators.remove(&id);
            }
            out.push((id, res));
        }
        Ok(out)
    }

    // ----------------------------------------------------------------- offsets

    /// The group's committed offsets (OffsetFetch): of every partition it has
    /// committed for (`None`), or of the partitions given (those without a
    /// commit come back with `offset: None`). Sorted by topic and partition.
    pub async fn offset_fetch(
        &mut self,
        group: &str,
        partitions: Option<&[(String, Vec<i32>)]>,
    ) -> Result<Vec<CommittedOffset>> {
        let (resp, version) = self
            .coordinator_request(
                group,
                |v| {
                    if v >= 8 {
                        OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
                            .with_group_id(group_id(group))
                            .with_topics(partitions.map(|ps| {
                                ps.iter()
                                    .map(|(t, p)| {
                                        OffsetFetchRequestTopics::default()
                                            .with_name(topic_name(t))
                                            .with_partition_indexes(p.clone())
                                    })
                                    .collect()
                            }))])
                    } else {
                        OffsetFetchRequest::default()
                            .with_group_id(group_id(group))
                            .with_topics(partitions.map(|ps| {
                                ps.iter()
                                    .map(|(t, p)| {
                                        OffsetFetchRequestTopic::default()
                                            .with_name(topic_name(t))
                                            .with_partition_indexes(p.clone())
                                    })
                                    .collect()
                            }))
                    }
                },
                |resp| {
                    resp.groups
                        .iter()
                        .map(|g| g.error_code)
                        .chain(std::iter::once(resp.error_code))
                        .find(|c| *c != 0)
                        .unwrap_or(0)
                },
            )
            .await?;
        let context = || format!("fetch committed offsets of group {group:?}");
        // (topic, partition, offset, epoch, metadata, error code)
        let mut rows: Vec<(String, i32, i64, i32, Option<String>, i16)> = Vec::new();
        if version >= 8 {
            let g = resp
                .groups
                .iter()
                .find(|g| g.group_id.as_str() == group)
                .ok_or_else(|| anyhow!("OffsetFetch response does not mention group {group:?}"))?;
            check(g.error_code, None, context)?;
            for t in &g.topics {
                for p in &t.partitions {
                    rows.push((
                        t.name.to_string(),
                        p.partition_index,
                        p.committed_offset,
                        p.committed_leader_epoch,
                        p.metadata.as_ref().map(|m| m.to_string()),
                        p.error_code,
                    ));
                }
            }
        } else {
            check(resp.error_code, None, context)?;
            for t in &resp.topics {
                for p in &t.partitions {
                    rows.push((
                        t.name.to_string(),
                        p.partition_index,
                        p.committed_offset,
                        p.committed_leader_epoch,
                        p.metadata.as_ref().map(|m| m.to_string()),
                        p.error_code,
                    ));
                }
            }
        }
        let mut out = Vec::with_capacity(rows.len());
        for (topic, partition, offset, epoch, metadata, code) in rows {
            check(code, None, || {
                format!("fetch committed offset of group {group:?} for {topic:?} partition {partition}")
            })?;
            out.push(CommittedOffset {
                topic,
                partition,
                offset: (offset >= 0).then_some(offset),
                leader_epoch: (epoch >= 0).then_some(epoch),
                metadata,
            });
        }
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(out)
    }

    /// Commit offsets `(topic, partition, offset)` for `group` as an admin
    /// (OffsetCommit with generation -1 and no member id), as
    /// `kafka-consumer-groups --reset-offsets` does. The coordinator accepts
    /// this only while the group has no members; otherwise it answers
    /// UNKNOWN_MEMBER_ID, returned here as an error saying
    /// [`GROUP_NOT_EMPTY`] (the [`KafkaError`] stays reachable by downcasting).
    pub async fn offset_commit(&mut self, group: &str, offsets: &[(String, i32, i64)]) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let topics = by_topic(offsets);
        let (resp, _) = self
            .coordinator_request(
                group,
                |_| {
                    OffsetCommitRequest::default()
                        .with_group_id(group_id(group))
                        .with_generation_id_or_member_epoch(-1)
                        .with_member_id(sb(""))
                        .with_topics(
                            topics
                                .iter()
                                .map(|(t, ps)| {
                                    OffsetCommitRequestTopic::default()
                                        .with_name(topic_name(t))
                                        .with_partitions(
                                            ps.iter()
                                                .map(|(p, off)| {
                                                    OffsetCommitRequestPartition::default()
                                                        .with_partition_index(*p)
                                                        .with_committed_offset(*off)
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        )
                },
                |resp| {
                    resp.topics
                        .iter()
                        .flat_map(|t| t.partitions.iter())
                        .map(|p| p.error_code)
                        .find(|c| is_coordinator_error(*c))
                        .unwrap_or(0)
                },
            )
            .await?;
        for (t, p, _) in offsets {
            let code = resp
                .topics
                .iter()
                .filter(|rt| rt.name.as_str() == t)
                .flat_map(|rt| rt.partitions.iter())
                .find(|rp| rp.partition_index == *p)
                .map(|rp| rp.error_code)
                .ok_or_else(|| anyhow!("OffsetCommit response does not mention {t:?} partition {p}"))?;
            let res = check(code, None, || {
                format!("commit offset of group {group:?} for {t:?} partition {p}")
            });
            if let Err(e) = res {
                if response_error(&e) == Some(ResponseError::UnknownMemberId) {
                    return Err(e.context(format!("cannot commit offsets of group {group:?}: {GROUP_NOT_EMPTY}")));
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Delete the group's committed offsets of some partitions
    /// (OffsetDelete). Refused with GROUP_SUBSCRIBED_TO_TOPIC for topics the
    /// group's active members subscribe to.
    pub async fn offset_delete(&mut self, group: &str, partitions: &[(String, Vec<i32>)]) -> Result<()> {
        if partitions.is_empty() {
            return Ok(());
        }
        let (resp, _) = self
            .coordinator_request(
                group,
                |_| {
                    OffsetDeleteRequest::default()
                        .with_group_id(group_id(group))
                        .with_topics(
                            partitions
                                .iter()
                                .map(|(t, ps)| {
                                    OffsetDeleteRequestTopic::default()
                                        .with_name(topic_name(t))
                                        .with_partitions(
                                            ps.iter()
                                                .map(|p| {
                                                    OffsetDeleteRequestPartition::default().with_partition_index(*p)
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        )
                },
                |resp| resp.error_code,
            )
            .await?;
        check(resp.error_code, None, || {
            format!("delete committed offsets of group {group:?}")
        })?;
        for t in &resp.topics {
            for p in &t.partitions {
                check(p.error_code, None, || {
                    format!(
                        "delete committed offset of group {group:?} for {:?} partition {}",
                        t.name.as_str(),
                        p.partition_index
                    )
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn encode_assignment(version: i16, a: &ConsumerProtocolAssignment) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i16(version);
        a.encode(&mut b, version.min(3)).unwrap();
        b.to_vec()
    }

    #[test]
    fn decodes_a_hand_written_v0_assignment() {
        // version 0; 2 topics: "b" [2, 0], "a" [1]; user data null.
        let mut b = BytesMut::new();
        b.put_i16(0);
        b.put_i32(2);
        b.put_i16(1);
        b.put_slice(b"b");
        b.put_i32(2);
        b.put_i32(2);
        b.put_i32(0);
        b.put_i16(1);
        b.put_slice(b"a");
        b.put_i32(1);
        b.put_i32(1);
        b.put_i32(-1);
        let got = decode_consumer_assignment(&b).unwrap();
        assert_eq!(got, vec![("a".to_string(), vec![1]), ("b".to_string(), vec![0, 2])]);
    }

    #[test]
    fn decodes_assignments_of_every_version_and_merges_topics() {
        let a = ConsumerProtocolAssignment::default()
            .with_assigned_partitions(vec![
                TopicPartition::default()
                    .with_topic(topic_name("orders"))
                    .with_partitions(vec![3, 1]),
                TopicPartition::default()
                    .with_topic(topic_name("orders"))
                    .with_partitions(vec![0]),
            ])
            .with_user_data(Some(Bytes::from_static(b"sticky")));
        for v in 0..=3 {
            let got = decode_consumer_assignment(&encode_assignment(v, &a)).unwrap();
            assert_eq!(got, vec![("orders".to_string(), vec![0, 1, 3])], "version {v}");
        }
        // A future version is read as the newest known one (fields are appended).
        let mut future = encode_assignment(3, &a);
        future[1] = 7;
        future.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(decode_consumer_assignment(&future).unwrap()[0].1, vec![0, 1, 3]);
    }

    #[test]
    fn empty_and_broken_assignments() {
        assert_eq!(decode_consumer_assignment(&[]).unwrap(), vec![]);
        assert!(decode_consumer_assignment(&[0]).is_err());
        assert!(decode_consumer_assignment(&[0xff, 0xff, 0, 0, 0, 0]).is_err());
        // Claims one topic but ends.
        assert!(decode_consumer_assignment(&[0, 0, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn decodes_subscriptions() {
        let s = ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_static_str("b"), StrBytes::from_static_str("a")]);
        for v in 0..=3 {
            let mut b = BytesMut::new();
            b.put_i16(v);
            s.encode(&mut b, v).unwrap();
            assert_eq!(decode_consumer_subscription(&b).unwrap(), vec!["a", "b"], "version {v}");
        }
    }

    #[test]
    fn groups_offsets_by_topic() {
        let items = vec![
            ("a".to_string(), 0, 5i64),
            ("b".to_string(), 1, 6),
            ("a".to_string(), 2, 7),
        ];
        assert_eq!(
            by_topic(&items),
            vec![("a".to_string(), vec![(0, 5), (2, 7)]), ("b".to_string(), vec![(1, 6)])]
        );
    }

    #[test]
    fn group_state_helpers() {
        let mut d = GroupDescription {
            group_id: "g".into(),
            state: "Dead".into(),
            protocol_type: String::new(),
            protocol: String::new(),
            members: vec![],
        };
        assert!(!d.exists() && d.is_inactive());
        d.state = "Empty".into();
        assert!(d.exists() && d.is_inactive());
        d.state = "Stable".into();
        assert!(!d.is_inactive());
    }
}
