//! Consumer groups: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, OffsetDelete, ListGroups,
//! DescribeGroups and DeleteGroups, translated to [`sluice_groups::Coordinator`].

use std::collections::BTreeSet;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as FoundCoordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use sluice_auth::{Operation, ResourceType};
use sluice_groups::{CommitRequest, GroupError, LeaveMember, OffsetEntry};

use crate::reply::Reply;
use crate::session::Session;
use crate::{errors, Broker};

pub(crate) fn code(e: GroupError) -> i16 {
    let r = match e {
        GroupError::UnknownMemberId => ResponseError::UnknownMemberId,
        GroupError::IllegalGeneration => ResponseError::IllegalGeneration,
        GroupError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
        GroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        GroupError::MemberIdRequired => ResponseError::MemberIdRequired,
        GroupError::FencedInstanceId => ResponseError::FencedInstanceId,
        GroupError::InvalidSessionTimeout => ResponseError::InvalidSessionTimeout,
        GroupError::InvalidGroupId => ResponseError::InvalidGroupId,
        GroupError::GroupIdNotFound => ResponseError::GroupIdNotFound,
        GroupError::NonEmptyGroup => ResponseError::NonEmptyGroup,
        GroupError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        GroupError::OffsetMetadataTooLarge => ResponseError::OffsetMetadataTooLarge,
        GroupError::GroupSubscribedToTopic => ResponseError::GroupSubscribedToTopic,
        GroupError::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
        GroupError::NotCoordinator => ResponseError::NotCoordinator,
        GroupError::StaleMemberEpoch => ResponseError::StaleMemberEpoch,
        GroupError::Storage => ResponseError::CoordinatorNotAvailable,
    };
    r.code()
}

fn err_code<T>(r: &Result<T, GroupError>) -> i16 {
    r.as_ref().err().map_or(0, |e| code(*e))
}

/// Per topic, each partition's committed offset (if any).
type PartitionOffsets = Vec<(i32, Option<OffsetEntry>)>;
type TopicOffsets = Vec<(TopicName, PartitionOffsets)>;
/// Per topic, each partition with the error that refused it before the coordinator saw it.
type CommitLayout = Vec<(TopicName, Vec<(i32, Option<i16>)>)>;

fn s(v: &str) -> StrBytes {
    errors::str(v)
}

/// Key types: 0 group, 1 transaction. Both are coordinated by the leader of
/// the key's shard.
pub(crate) fn find_coordinator(
    broker: &Arc<Broker>,
    session: &Session,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let lookup = |key: &str| -> Result<(BrokerId, StrBytes, i32), (ResponseError, &'static str)> {
        // Groups (0) and transactional ids (1) share the coordinator shards.
        let unavailable = |m| (ResponseError::CoordinatorNotAvailable, m);
        match req.key_type {
            0 if !session.allowed_group(Operation::Describe, key) => {
                return Err((
                    ResponseError::GroupAuthorizationFailed,
                    "not authorized to describe the group",
                ))
            }
            1 if !session.allowed_txn(Operation::Describe, key) => {
                return Err((
                    ResponseError::TransactionalIdAuthorizationFailed,
                    "not authorized to describe the transactional id",
                ))
            }
            0 | 1 => {}
            _ => return Err(unavailable("only group and transaction coordinators are served")),
        }
        broker
            .cluster
            .group_coordinator(key)
            .ok_or(unavailable("the coordinator is moving; retry"))
            .and_then(|b| {
                let (host, port) = session
                    .listener
                    .endpoint(&b)
                    .ok_or(unavailable("the coordinator has no endpoint on this listener"))?;
                Ok((BrokerId(b.node_id), s(&host), port))
            })
    };
    if version < 4 {
        return match lookup(req.key.as_str()) {
            Ok((node, host, port)) => FindCoordinatorResponse::default()
                .with_node_id(node)
                .with_host(host)
                .with_port(port),
            Err((e, msg)) => FindCoordinatorResponse::default()
                .with_error_code(e.code())
                .with_error_message((version >= 1).then(|| s(msg)))
                .with_node_id(BrokerId(-1)),
        };
    }
    let coordinators = req
        .coordinator_keys
        .iter()
        .map(|key| {
            let c = FoundCoordinator::default().with_key(key.clone());
            match lookup(key.as_str()) {
                Ok((node, host, port)) => c.with_node_id(node).with_host(host).with_port(port),
                Err((e, msg)) => c
                    .with_error_code(e.code())
                    .with_node_id(BrokerId(-1))
                    .with_error_message(Some(s(msg))),
            }
        })
        .collect();
    FindCoordinatorResponse::default().with_coordinators(coordinators)
}

pub(crate) fn join_group(broker: &Arc<Broker>, req: JoinGroupRequest, version: i16, client_id: String) -> Reply {
    let coordinator = broker.groups.clone();
    let join = sluice_groups::JoinRequest {
        group_id: req.group_id.to_string(),
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.map(|i| i.to_string()),
        client_id,
        client_host: String::from("/127.0.0.1"),
        session_timeout_ms: req.session_timeout_ms,
        // v0 has no rebalance timeout: it equals the session timeout.
        rebalance_timeout_ms: if version >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: version >= 4,
    };
    Reply::Later(Box::pin(async move {
        let r = coordinator.join(join).await;
        // Fields a version lacks must keep their defaults, or encoding fails.
        let members = r
            .members
            .into_iter()
            .map(|m| {
                JoinGroupResponseMember::default()
                    .with_member_id(s(&m.member_id))
                    .with_group_instance_id(if version >= 5 {
                        m.instance_id.map(|i| s(&i))
                    } else {
                        None
                    })
                    .with_metadata(m.metadata)
            })
            .collect();
        let protocol_name = r.protocol_name.map(|p| s(&p));
        let resp = JoinGroupResponse::default()
            .with_error_code(r.error.map_or(0, code))
            .with_generation_id(r.generation)
            .with_protocol_type(if version >= 7 {
                r.protocol_type.map(|t| s(&t))
            } else {
                None
            })
            .with_protocol_name(if version >= 7 {
                protocol_name
            } else {
                Some(protocol_name.unwrap_or_default())
            })
            .with_leader(s(&r.leader))
            .with_member_id(s(&r.member_id))
            .with_members(members);
        ResponseKind::JoinGroup(resp)
    }))
}

pub(crate) fn sync_group(broker: &Arc<Broker>, req: SyncGroupRequest, version: i16) -> Reply {
    let coordinator = broker.groups.clone();
    let sync = sluice_groups::SyncRequest {
        group_id: req.group_id.to_string(),
        generation: req.generation_id,
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.map(|i| i.to_string()),
        protocol_type: req.protocol_type.map(|t| t.to_string()),
        protocol_name: req.protocol_name.map(|t| t.to_string()),
        assignments: req
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
    };
    Reply::Later(Box::pin(async move {
        let resp = match coordinator.sync(sync).await {
            Ok((ptype, pname, assignment)) => {
                let r = SyncGroupResponse::default().with_assignment(assignment);
                if version >= 5 {
                    r.with_protocol_type(ptype.map(|t| s(&t)))
                        .with_protocol_name(pname.map(|t| s(&t)))
                } else {
                    r
                }
            }
            Err(e) => SyncGroupResponse::default().with_error_code(code(e)),
        };
        ResponseKind::SyncGroup(resp)
    }))
}

pub(crate) fn heartbeat(broker: &Arc<Broker>, req: HeartbeatRequest) -> HeartbeatResponse {
    let r = broker.groups.heartbeat(
        req.group_id.as_str(),
        req.generation_id,
        req.member_id.as_str(),
        req.group_instance_id.as_ref().map(|i| i.as_str()),
    );
    HeartbeatResponse::default().with_error_code(err_code(&r))
}

pub(crate) async fn leave_group(broker: &Arc<Broker>, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    // v0-2 name one member; v3+ a batch.
    let members: Vec<LeaveMember> = if version < 3 {
        vec![LeaveMember {
            member_id: req.member_id.to_string(),
            instance_id: None,
        }]
    } else {
        req.members
            .iter()
            .map(|m| LeaveMember {
                member_id: m.member_id.to_string(),
                instance_id: m.group_instance_id.as_ref().map(|i| i.to_string()),
            })
            .collect()
    };
    match broker.groups.leave(req.group_id.as_str(), &members).await {
        Err(e) => LeaveGroupResponse::default().with_error_code(code(e)),
        Ok(results) if version < 3 => LeaveGroupResponse::default().with_error_code(err_code(&results[0])),
        Ok(results) => LeaveGroupResponse::default().with_members(
            members
                .iter()
                .zip(results)
                .map(|(m, r)| {
                    MemberResponse::default()
                        .with_member_id(s(&m.member_id))
                        .with_group_instance_id(m.instance_id.as_deref().map(s))
                        .with_error_code(err_code(&r))
                })
                .collect(),
        ),
    }
}

pub(crate) async fn offset_commit(
    broker: &Arc<Broker>,
    session: &Session,
    req: OffsetCommitRequest,
) -> OffsetCommitResponse {
    // Kafka's checks: READ on the group, then READ on each topic.
    let group_denied = !session.allowed_group(Operation::Read, &req.group_id);
    // Partitions that do not exist are refused one by one; the rest go to the coordinator.
    let mut entries = Vec::new();
    let mut layout: CommitLayout = Vec::new();
    for t in &req.topics {
        let topic = broker.log.topic(t.name.as_str());
        let refused = if group_denied {
            Some(ResponseError::GroupAuthorizationFailed.code())
        } else if !session.allowed_topic(Operation::Read, &t.name) {
            Some(ResponseError::TopicAuthorizationFailed.code())
        } else {
            None
        };
        let mut parts = Vec::new();
        for p in &t.partitions {
            let exists = topic.as_ref().is_some_and(|t| t.partition(p.partition_index).is_some());
            if refused.is_some() {
                parts.push((p.partition_index, refused));
            } else if exists {
                entries.push(OffsetEntry {
                    topic: t.name.to_string(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                });
                parts.push((p.partition_index, None));
            } else {
                parts.push((p.partition_index, Some(ResponseError::UnknownTopicOrPartition.code())));
            }
        }
        layout.push((t.name.clone(), parts));
    }
    let commit = CommitRequest {
        group_id: req.group_id.to_string(),
        generation: req.generation_id_or_member_epoch,
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.map(|i| i.to_string()),
        offsets: entries,
    };
    let outcome = if group_denied {
        Ok(Vec::new())
    } else {
        broker.groups.commit(commit).await
    };
    let mut results = match &outcome {
        Ok(r) => r.iter().map(err_code).collect::<Vec<_>>().into_iter(),
        Err(_) => Vec::new().into_iter(),
    };
    let group_error = outcome.err().map(code);
    let topics = layout
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(index, refused)| {
                    let code = refused.or(group_error).unwrap_or_else(|| results.next().unwrap_or(0));
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// One group's committed offsets for the requested partitions (all when `None`).
async fn fetch_group(
    broker: &Broker,
    group: &str,
    wanted: Option<Vec<(TopicName, Vec<i32>)>>,
) -> Result<TopicOffsets, GroupError> {
    let committed = broker.groups.fetch_offsets(group).await?;
    Ok(match wanted {
        Some(list) => list
            .into_iter()
            .map(|(name, parts)| {
                let found = parts
                    .into_iter()
                    .map(|p| {
                        (
                            p,
                            committed
                                .iter()
                                .find(|o| o.topic == name.as_str() && o.partition == p)
                                .cloned(),
                        )
                    })
                    .collect();
                (name, found)
            })
            .collect(),
        None => {
            let mut out: TopicOffsets = Vec::new();
            for o in committed {
                match out.iter_mut().find(|(n, _)| n.as_str() == o.topic) {
                    Some((_, parts)) => parts.push((o.partition, Some(o))),
                    None => out.push((TopicName(s(&o.topic)), vec![(o.partition, Some(o))])),
                }
            }
            out
        }
    })
}

/// With `require_stable`, the partitions of a group that a transaction has sent offsets
/// for and not yet ended.
async fn unstable_offsets(broker: &Broker, group: &str, require_stable: bool) -> BTreeSet<(String, i32)> {
    if !require_stable {
        return BTreeSet::new();
    }
    broker.groups.unstable_offsets(group).await.unwrap_or_default()
}

/// UNSTABLE_OFFSET_COMMIT (retriable) for a partition with offsets in an open transaction.
fn unstable_code(unstable: &BTreeSet<(String, i32)>, topic: &TopicName, partition: i32) -> i16 {
    if unstable.contains(&(topic.to_string(), partition)) {
        ResponseError::UnstableOffsetCommit.code()
    } else {
        0
    }
}

/// A partition's committed offset as OffsetFetch reports it: -1 when none.
fn committed_offset(o: &Option<OffsetEntry>) -> i64 {
    o.as_ref().map_or(-1, |o| o.offset)
}

/// The committed leader epoch; the field exists from v5 on.
fn committed_epoch(o: &Option<OffsetEntry>, version: i16) -> i32 {
    if version >= 5 {
        o.as_ref().map_or(-1, |o| o.leader_epoch)
    } else {
        -1
    }
}

/// Commit metadata; an empty string when none was stored.
fn committed_metadata(o: &Option<OffsetEntry>) -> StrBytes {
    s(o.as_ref().and_then(|o| o.metadata.as_deref()).unwrap_or(""))
}

/// Kafka's OffsetFetch rule for topics the principal may not DESCRIBE: left out of an
/// all-topics answer, TOPIC_AUTHORIZATION_FAILED (and no offset) when named.
fn restrict(session: &Session, topics: TopicOffsets, named: bool) -> Vec<(TopicName, PartitionOffsets, i16)> {
    topics
        .into_iter()
        .filter_map(|(name, parts)| {
            if session.sees(Operation::Describe, ResourceType::Topic, &name) {
                Some((name, parts, 0))
            } else if named {
                session.allowed_topic(Operation::Describe, &name); // audited
                let parts = parts.into_iter().map(|(p, _)| (p, None)).collect();
                Some((name, parts, ResponseError::TopicAuthorizationFailed.code()))
            } else {
                None
            }
        })
        .collect()
}

pub(crate) async fn offset_fetch(
    broker: &Arc<Broker>,
    session: &Session,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let group_denied = |g: &str| !session.allowed_group(Operation::Describe, g);
    let refused = ResponseError::GroupAuthorizationFailed.code();
    if version < 8 {
        let named = req.topics.is_some();
        let wanted = req
            .topics
            .map(|ts| ts.into_iter().map(|t| (t.name, t.partition_indexes)).collect());
        let unstable = unstable_offsets(broker, req.group_id.as_str(), req.require_stable).await;
        if group_denied(&req.group_id) {
            return OffsetFetchResponse::default().with_error_code(refused);
        }
        return match fetch_group(broker, req.group_id.as_str(), wanted).await {
            Err(e) => OffsetFetchResponse::default().with_error_code(code(e)),
            Ok(topics) => OffsetFetchResponse::default().with_topics(
                restrict(session, topics, named)
                    .into_iter()
                    .map(|(name, parts, refused)| {
                        let unstable = &unstable;
                        OffsetFetchResponseTopic::default()
                            .with_name(name.clone())
                            .with_partitions(
                                parts
                                    .into_iter()
                                    .map(|(p, o)| {
                                        OffsetFetchResponsePartition::default()
                                            .with_error_code(refused.max(unstable_code(unstable, &name, p)))
                                            .with_partition_index(p)
                                            .with_committed_offset(committed_offset(&o))
                                            .with_committed_leader_epoch(committed_epoch(&o, version))
                                            .with_metadata(Some(committed_metadata(&o)))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        };
    }
    let mut groups = Vec::with_capacity(req.groups.len());
    for g in req.groups {
        let named = g.topics.is_some();
        let wanted = g
            .topics
            .map(|ts| ts.into_iter().map(|t| (t.name, t.partition_indexes)).collect());
        let base = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
        let unstable = unstable_offsets(broker, g.group_id.as_str(), req.require_stable).await;
        if group_denied(&g.group_id) {
            groups.push(base.with_error_code(refused));
            continue;
        }
        groups.push(match fetch_group(broker, g.group_id.as_str(), wanted).await {
            Err(e) => base.with_error_code(code(e)),
            Ok(topics) => base.with_topics(
                restrict(session, topics, named)
                    .into_iter()
                    .map(|(name, parts, refused)| {
                        let unstable = &unstable;
                        OffsetFetchResponseTopics::default()
                            .with_name(name.clone())
                            .with_partitions(
                                parts
                                    .into_iter()
                                    .map(|(p, o)| {
                                        OffsetFetchResponsePartitions::default()
                                            .with_error_code(refused.max(unstable_code(unstable, &name, p)))
                                            .with_partition_index(p)
                                            .with_committed_offset(committed_offset(&o))
                                            .with_committed_leader_epoch(committed_epoch(&o, version))
                                            .with_metadata(Some(committed_metadata(&o)))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        });
    }
    OffsetFetchResponse::default().with_groups(groups)
}

pub(crate) async fn offset_delete(
    broker: &Arc<Broker>,
    session: &Session,
    req: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    if !session.allowed_group(Operation::Delete, &req.group_id) {
        return OffsetDeleteResponse::default().with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    let readable: Vec<bool> = req
        .topics
        .iter()
        .map(|t| session.allowed_topic(Operation::Read, &t.name))
        .collect();
    let parts: Vec<(String, i32)> = req
        .topics
        .iter()
        .zip(&readable)
        .filter(|(_, ok)| **ok)
        .flat_map(|(t, _)| {
            t.partitions
                .iter()
                .map(move |p| (t.name.to_string(), p.partition_index))
        })
        .collect();
    match broker.groups.delete_offsets(req.group_id.as_str(), &parts).await {
        Err(e) => OffsetDeleteResponse::default().with_error_code(code(e)),
        Ok(results) => {
            let mut results = results.into_iter();
            let topics = req
                .topics
                .into_iter()
                .zip(readable)
                .map(|(t, readable)| {
                    let partitions = t
                        .partitions
                        .iter()
                        .map(|p| {
                            let c = if readable {
                                results.next().map_or(0, |r| err_code(&r))
                            } else {
                                ResponseError::TopicAuthorizationFailed.code()
                            };
                            OffsetDeleteResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(c)
                        })
                        .collect();
                    OffsetDeleteResponseTopic::default()
                        .with_name(t.name)
                        .with_partitions(partitions)
                })
                .collect();
            OffsetDeleteResponse::default().with_topics(topics)
        }
    }
}

pub(crate) async fn list_groups(
    broker: &Arc<Broker>,
    session: &Session,
    req: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let groups = match broker.groups.list().await {
        Ok(g) => g,
        Err(e) => return ListGroupsResponse::default().with_error_code(code(e)),
    };
    // DESCRIBE on the cluster lists every group; otherwise those the principal may DESCRIBE.
    let all = session.sees(
        Operation::Describe,
        ResourceType::Cluster,
        sluice_auth::acl::CLUSTER_NAME,
    );
    let listed = groups
        .into_iter()
        .filter(|(id, _, _)| all || session.sees(Operation::Describe, ResourceType::Group, id))
        .filter(|(_, _, state)| {
            req.states_filter.is_empty() || req.states_filter.iter().any(|f| f.as_str().eq_ignore_ascii_case(state))
        })
        .filter(|_| {
            req.types_filter.is_empty()
                || req
                    .types_filter
                    .iter()
                    .any(|f| f.as_str().eq_ignore_ascii_case("classic"))
        })
        .map(|(id, ptype, state)| {
            let g = ListedGroup::default()
                .with_group_id(GroupId(s(&id)))
                .with_protocol_type(s(&ptype));
            let g = if version >= 4 { g.with_group_state(s(state)) } else { g };
            if version >= 5 {
                g.with_group_type(s("classic"))
            } else {
                g
            }
        })
        .collect();
    ListGroupsResponse::default().with_groups(listed)
}

pub(crate) async fn describe_groups(
    broker: &Arc<Broker>,
    session: &Session,
    req: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let stored = broker.groups.list().await.unwrap_or_default();
    let groups = req
        .groups
        .into_iter()
        .map(|id| {
            let base = DescribedGroup::default().with_group_id(id.clone());
            if !session.allowed_group(Operation::Describe, &id) {
                return base.with_error_code(ResponseError::GroupAuthorizationFailed.code());
            }
            match broker.groups.describe(id.as_str()) {
                Some(g) => base
                    .with_group_state(s(g.state))
                    .with_protocol_type(s(&g.protocol_type))
                    .with_protocol_data(s(&g.protocol))
                    .with_members(
                        g.members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(s(&m.member_id))
                                    .with_group_instance_id(if version >= 4 {
                                        m.instance_id.map(|i| s(&i))
                                    } else {
                                        None
                                    })
                                    .with_client_id(s(&m.client_id))
                                    .with_client_host(s(&m.client_host))
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect(),
                    ),
                // Known only by its offsets: Empty. Unknown entirely: Dead, as Kafka reports it.
                None if stored.iter().any(|(g, _, _)| g == id.as_str()) => base.with_group_state(s("Empty")),
                None => base.with_group_state(s("Dead")),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

pub(crate) async fn delete_groups(
    broker: &Arc<Broker>,
    session: &Session,
    req: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(req.groups_names.len());
    for id in req.groups_names {
        if !session.allowed_group(Operation::Delete, &id) {
            results.push(
                DeletableGroupResult::default()
                    .with_group_id(id)
                    .with_error_code(ResponseError::GroupAuthorizationFailed.code()),
            );
            continue;
        }
        let r = broker.groups.delete(id.as_str()).await;
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(err_code(&r)),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

/// KIP-848: ConsumerGroupHeartbeat, with server-side assignment.
pub(crate) async fn consumer_group_heartbeat(
    broker: &Arc<Broker>,
    session: &Session,
    req: ConsumerGroupHeartbeatRequest,
    version: i16,
    client_id: String,
) -> ConsumerGroupHeartbeatResponse {
    use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
    use sluice_groups::consumer::{HeartbeatError, HeartbeatRequest, TopicInfo};
    let fail = |code: i16, msg: &str| {
        ConsumerGroupHeartbeatResponse::default()
            .with_error_code(code)
            .with_error_message(Some(s(msg)))
    };
    // v1+: the client makes up its member id; v0 lets the coordinator do it.
    if version >= 1 && req.member_id.is_empty() {
        return fail(ResponseError::InvalidRequest.code(), "member id is required from v1 on");
    }
    let names = req.subscribed_topic_names.iter().flatten();
    if let Some(t) = names.clone().find(|t| !session.allowed_topic(Operation::Describe, t)) {
        let msg = format!("not authorized to describe subscribed topic {}", t.as_str());
        return fail(ResponseError::TopicAuthorizationFailed.code(), &msg);
    }
    let topics: TopicInfo = broker
        .log
        .topics()
        .iter()
        .map(|t| (t.name.clone(), (t.id, t.partition_count())))
        .collect();
    let hb = HeartbeatRequest {
        group_id: req.group_id.to_string(),
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        instance_id: req.instance_id.map(|i| i.to_string()),
        rack_id: req.rack_id.map(|r| r.to_string()),
        client_id,
        client_host: String::from("/127.0.0.1"),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        subscribed_topic_names: req
            .subscribed_topic_names
            .map(|n| n.iter().map(|t| t.to_string()).collect()),
        // An empty regex means none (librdkafka sends "" alongside topic names).
        subscribed_topic_regex: req
            .subscribed_topic_regex
            .filter(|r| !r.is_empty())
            .map(|r| r.to_string()),
        server_assignor: req.server_assignor.map(|a| a.to_string()),
        owned: req.topic_partitions.map(|tps| {
            tps.into_iter()
                .map(|tp| (tp.topic_id, tp.partitions.into_iter().collect()))
                .collect()
        }),
    };
    match broker.groups.consumer_heartbeat(hb, &topics).await {
        Ok(r) => ConsumerGroupHeartbeatResponse::default()
            .with_member_id(Some(s(&r.member_id)))
            .with_member_epoch(r.member_epoch)
            .with_heartbeat_interval_ms(r.heartbeat_interval_ms)
            .with_assignment(r.assignment.map(|a| {
                Assignment::default().with_topic_partitions(
                    a.into_iter()
                        .map(|(id, ps)| {
                            TopicPartitions::default()
                                .with_topic_id(id)
                                .with_partitions(ps.into_iter().collect())
                        })
                        .collect(),
                )
            })),
        Err(e) => {
            let (code, msg) = match e {
                HeartbeatError::UnknownMemberId => (ResponseError::UnknownMemberId, "unknown member"),
                HeartbeatError::FencedMemberEpoch => {
                    (ResponseError::FencedMemberEpoch, "member epoch is fenced; rejoin")
                }
                HeartbeatError::UnsupportedAssignor => (
                    ResponseError::UnsupportedAssignor,
                    "supported assignors: uniform, range",
                ),
                HeartbeatError::InvalidRequest(m) => (ResponseError::InvalidRequest, m),
                HeartbeatError::InvalidRegularExpression => {
                    (ResponseError::InvalidRegularExpression, "invalid topic regex")
                }
                HeartbeatError::GroupIdNotFound => {
                    (ResponseError::GroupIdNotFound, "the group uses the classic protocol")
                }
                HeartbeatError::UnreleasedInstanceId => {
                    (ResponseError::UnreleasedInstanceId, "instance id still in use")
                }
                HeartbeatError::NotCoordinator => {
                    (ResponseError::NotCoordinator, "another broker coordinates the group")
                }
            };
            fail(code.code(), msg)
        }
    }
}

pub(crate) fn consumer_group_describe(
    broker: &Arc<Broker>,
    session: &Session,
    req: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    use kafka_protocol::messages::consumer_group_describe_response::{
        Assignment, DescribedGroup as CgDescribed, Member, TopicPartitions,
    };
    let to_assignment = |p: &sluice_groups::consumer::Partitions| {
        Assignment::default().with_topic_partitions(
            p.iter()
                .map(|(id, ps)| {
                    let name = broker.log.topic_by_id(*id).map(|t| t.name.clone()).unwrap_or_default();
                    TopicPartitions::default()
                        .with_topic_id(*id)
                        .with_topic_name(TopicName(s(&name)))
                        .with_partitions(ps.iter().copied().collect())
                })
                .collect(),
        )
    };
    let groups = req
        .group_ids
        .into_iter()
        .map(|id| match broker.groups.describe_consumer_group(id.as_str()) {
            _ if !session.allowed_group(Operation::Describe, &id) => CgDescribed::default()
                .with_group_id(id)
                .with_error_code(ResponseError::GroupAuthorizationFailed.code()),
            None => CgDescribed::default()
                .with_group_id(id)
                .with_error_code(ResponseError::GroupIdNotFound.code())
                .with_error_message(Some(s("no such consumer group"))),
            Some(g) => CgDescribed::default()
                .with_group_id(id)
                .with_group_state(s(g.state))
                .with_group_epoch(g.group_epoch)
                .with_assignment_epoch(g.assignment_epoch)
                .with_assignor_name(s(&g.assignor))
                .with_members(
                    g.members
                        .iter()
                        .map(|m| {
                            Member::default()
                                .with_member_id(s(&m.member_id))
                                .with_instance_id(m.instance_id.as_deref().map(s))
                                .with_rack_id(m.rack_id.as_deref().map(s))
                                .with_member_epoch(m.member_epoch)
                                .with_client_id(s(&m.client_id))
                                .with_client_host(s(&m.client_host))
                                .with_subscribed_topic_names(
                                    m.subscribed_topic_names.iter().map(|t| TopicName(s(t))).collect(),
                                )
                                .with_subscribed_topic_regex(m.subscribed_topic_regex.as_deref().map(s))
                                .with_assignment(to_assignment(&m.assignment))
                                .with_target_assignment(to_assignment(&m.target_assignment))
                        })
                        .collect(),
                ),
        })
        .collect();
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}
