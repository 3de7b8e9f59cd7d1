//! The classic group protocol state machine (Kafka's GroupCoordinator):
//! Empty -> PreparingRebalance -> CompletingRebalance -> Stable, with
//! JoinGroup responses held until every member has rejoined (or the
//! rebalance timeout passes) and SyncGroup responses held until the leader
//! sends the assignment.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_meta::{now_ms, GroupRow};
use tokio::sync::oneshot;

use crate::{Coordinator, GroupError, Inner, METRICS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// KIP-394 (JoinGroup v4+): a new member must first obtain its id.
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResponse {
    pub error: Option<GroupError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only: every member and its metadata.
    pub members: Vec<JoinedMember>,
}

impl JoinResponse {
    pub fn error(e: GroupError, member_id: &str) -> Self {
        Self {
            error: Some(e),
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: vec![],
        }
    }
}

#[derive(Debug, Clone)]
pub struct SyncRequest {
    pub group_id: String,
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone)]
pub struct LeaveMember {
    pub member_id: String,
    pub instance_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DescribedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone)]
pub struct DescribedGroup {
    pub group_id: String,
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub generation: i32,
    pub members: Vec<DescribedMember>,
}

type SyncReply = Result<(Option<String>, Option<String>, Bytes), GroupError>;

/// What survives a coordinator restart: the last stable generation's members.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Snapshot {
    generation: i32,
    protocol: Option<String>,
    leader: Option<String>,
    members: Vec<MemberSnapshot>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MemberSnapshot {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: u64,
    rebalance_timeout_ms: u64,
    protocols: Vec<(String, Vec<u8>)>,
    assignment: Vec<u8>,
}

pub(crate) struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_heartbeat: Instant,
    awaiting_join: Option<oneshot::Sender<JoinResponse>>,
    awaiting_sync: Option<oneshot::Sender<SyncReply>>,
}

impl Member {
    /// The member's metadata for the group's chosen protocol.
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    }
}

pub(crate) struct Group {
    pub(crate) state: State,
    pub(crate) protocol_type: String,
    protocol: Option<String>,
    pub(crate) generation: i32,
    leader: Option<String>,
    /// In join order, so the first member becomes leader.
    pub(crate) members: BTreeMap<u64, Member>,
    next_seq: u64,
    /// KIP-394 member ids handed out but not yet joined, with their expiry.
    pending: HashMap<String, Instant>,
    /// group.instance.id -> member id.
    statics: HashMap<String, String>,
    rebalance_deadline: Instant,
    join_delay_until: Instant,
}

impl Group {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            state: State::Empty,
            protocol_type: String::new(),
            protocol: None,
            generation: 0,
            leader: None,
            members: BTreeMap::new(),
            next_seq: 0,
            pending: HashMap::new(),
            statics: HashMap::new(),
            rebalance_deadline: now,
            join_delay_until: now,
        }
    }

    fn member_key(&self, id: &str) -> Option<u64> {
        self.members.iter().find(|(_, m)| m.id == id).map(|(k, _)| *k)
    }

    fn member_mut(&mut self, id: &str) -> Option<&mut Member> {
        self.members.values_mut().find(|m| m.id == id)
    }

    pub(crate) fn has_member(&self, id: &str) -> bool {
        self.member_key(id).is_some()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Topics the members' protocol metadata names; used by OffsetDelete.
    pub(crate) fn consumer_protocol_topics(&self) -> Vec<String> {
        let mut topics = Vec::new();
        for m in self.members.values() {
            for (name, meta) in &m.protocols {
                if Some(name) == self.protocol.as_ref() {
                    topics.extend(crate::protocol::subscription_topics(meta));
                }
            }
        }
        topics
    }

    fn add_member(&mut self, m: Member) {
        if let Some(i) = &m.instance_id {
            self.statics.insert(i.clone(), m.id.clone());
        }
        self.next_seq += 1;
        self.members.insert(self.next_seq, m);
    }

    fn remove_member(&mut self, id: &str) -> Option<Member> {
        let key = self.member_key(id)?;
        let mut m = self.members.remove(&key)?;
        if let Some(i) = &m.instance_id {
            if self.statics.get(i) == Some(&m.id) {
                self.statics.remove(i);
            }
        }
        if let Some(tx) = m.awaiting_join.take() {
            let _ = tx.send(JoinResponse::error(GroupError::UnknownMemberId, id));
        }
        if let Some(tx) = m.awaiting_sync.take() {
            let _ = tx.send(Err(GroupError::UnknownMemberId));
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
        Some(m)
    }

    /// Protocols every member supports, chosen by the members' votes.
    fn select_protocol(&self) -> Option<String> {
        let mut candidates: Vec<&String> = self.members.values().next()?.protocols.iter().map(|(n, _)| n).collect();
        candidates.retain(|c| self.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == *c)));
        let mut votes: Vec<(usize, &String)> = candidates.iter().map(|c| (0, *c)).collect();
        for m in self.members.values() {
            if let Some((n, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(&n)) {
                if let Some(v) = votes.iter_mut().find(|(_, c)| *c == n) {
                    v.0 += 1;
                }
            }
        }
        // Most votes; ties go to the earliest candidate.
        votes.iter().rev().max_by_key(|(v, _)| *v).map(|(_, c)| (*c).clone())
    }

    fn supports_protocols(&self, req: &JoinRequest) -> bool {
        if req.protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type != req.protocol_type {
            return false;
        }
        req.protocols
            .iter()
            .any(|(n, _)| self.members.values().all(|m| m.protocols.iter().any(|(mn, _)| mn == n)))
    }

    fn prepare_rebalance(&mut self, opts_delay: Duration) {
        let now = Instant::now();
        if self.state == State::CompletingRebalance {
            for m in self.members.values_mut() {
                if let Some(tx) = m.awaiting_sync.take() {
                    let _ = tx.send(Err(GroupError::RebalanceInProgress));
                }
            }
        }
        if self.state != State::PreparingRebalance {
            let timeout = self
                .members
                .values()
                .map(|m| m.rebalance_timeout)
                .max()
                .unwrap_or(Duration::ZERO);
            self.rebalance_deadline = now + timeout;
            self.join_delay_until = if self.state == State::Empty {
                now + opts_delay.min(timeout)
            } else {
                now
            };
            self.state = State::PreparingRebalance;
        }
    }

    fn current_join_response(&self, member_id: &str) -> JoinResponse {
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.joined_members()
        } else {
            vec![]
        };
        JoinResponse {
            error: None,
            generation: self.generation,
            protocol_type: Some(self.protocol_type.clone()),
            protocol_name: self.protocol.clone(),
            leader,
            member_id: member_id.to_string(),
            members,
        }
    }

    fn joined_members(&self) -> Vec<JoinedMember> {
        let proto = self.protocol.clone().unwrap_or_default();
        self.members
            .values()
            .map(|m| JoinedMember {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                metadata: m.metadata_for(&proto),
            })
            .collect()
    }

    /// Completes the join phase once everyone has rejoined (after the
    /// initial delay) or the rebalance timeout has passed. Returns whether
    /// the group's durable row changed.
    fn try_complete_join(&mut self, now: Instant) -> bool {
        if self.state != State::PreparingRebalance {
            return false;
        }
        self.pending.retain(|_, expiry| *expiry > now);
        let all_joined = self.members.values().all(|m| m.awaiting_join.is_some()) && self.pending.is_empty();
        if !(all_joined && now >= self.join_delay_until) && now < self.rebalance_deadline {
            return false;
        }
        let laggards: Vec<String> = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in laggards {
            tracing::info!(member = %id, "member did not rejoin within the rebalance timeout; removed");
            self.remove_member(&id);
        }
        self.pending.clear();
        self.generation += 1;
        METRICS.rebalances.inc();
        if self.members.is_empty() {
            self.state = State::Empty;
            self.protocol = None;
            self.leader = None;
            return true;
        }
        self.protocol = self.select_protocol();
        let leader_present = self.leader.as_ref().is_some_and(|l| self.has_member(l));
        if !leader_present {
            self.leader = self.members.values().next().map(|m| m.id.clone());
        }
        self.state = State::CompletingRebalance;
        let ids: Vec<String> = self.members.values().map(|m| m.id.clone()).collect();
        for id in ids {
            let resp = self.current_join_response(&id);
            if let Some(m) = self.member_mut(&id) {
                m.last_heartbeat = now;
                if let Some(tx) = m.awaiting_join.take() {
                    let _ = tx.send(resp);
                }
            }
        }
        true
    }

    fn row(&self, id: &str) -> GroupRow {
        // Membership is stored at the points Kafka stores it: stable, or empty.
        let members = match self.state {
            State::Stable | State::Empty => serde_json::to_string(&self.snapshot()).ok(),
            _ => None,
        };
        GroupRow {
            group_id: id.to_string(),
            protocol_type: self.protocol_type.clone(),
            generation: self.generation,
            empty_since_ms: if self.members.is_empty() { Some(now_ms()) } else { None },
            members,
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            members: self
                .members
                .values()
                .map(|m| MemberSnapshot {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout.as_millis() as u64,
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as u64,
                    protocols: m.protocols.iter().map(|(n, b)| (n.clone(), b.to_vec())).collect(),
                    assignment: m.assignment.to_vec(),
                })
                .collect(),
        }
    }

    /// Rebuilds a group from its stored row: stable with its last members
    /// (their session timers restart now), or empty.
    pub(crate) fn restore(row: &GroupRow) -> Self {
        let mut g = Group::new();
        g.protocol_type = row.protocol_type.clone();
        g.generation = row.generation;
        let Some(snap) = row
            .members
            .as_deref()
            .and_then(|j| serde_json::from_str::<Snapshot>(j).ok())
        else {
            return g;
        };
        let now = Instant::now();
        g.generation = snap.generation;
        g.protocol = snap.protocol;
        g.leader = snap.leader;
        for m in snap.members {
            g.add_member(Member {
                id: m.id,
                instance_id: m.instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                session_timeout: Duration::from_millis(m.session_timeout_ms),
                rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms),
                protocols: m.protocols.into_iter().map(|(n, b)| (n, Bytes::from(b))).collect(),
                assignment: Bytes::from(m.assignment),
                last_heartbeat: now,
                awaiting_join: None,
                awaiting_sync: None,
            });
        }
        if !g.members.is_empty() {
            g.state = State::Stable;
        }
        g
    }
}

enum Pending<T> {
    Now(T),
    Wait(oneshot::Receiver<T>),
}

impl Coordinator {
    pub async fn join(&self, req: JoinRequest) -> JoinResponse {
        if req.group_id.is_empty() {
            return JoinResponse::error(GroupError::InvalidGroupId, &req.member_id);
        }
        if let Err(e) = self.check_owner(&req.group_id) {
            return JoinResponse::error(e, &req.member_id);
        }
        let session = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        let o = &self.inner.opts;
        if session < o.min_session_timeout || session > o.max_session_timeout {
            return JoinResponse::error(GroupError::InvalidSessionTimeout, &req.member_id);
        }
        if self
            .inner
            .consumer_groups
            .lock()
            .unwrap()
            .get(&req.group_id)
            .is_some_and(|g| !g.members.is_empty())
        {
            return JoinResponse::error(GroupError::InconsistentGroupProtocol, &req.member_id);
        }
        let (pending, persist) = {
            let mut groups = self.inner.groups.lock().unwrap();
            let group = groups.entry(req.group_id.clone()).or_insert_with(Group::new);
            let p = join_locked(group, &req, o.initial_rebalance_delay);
            let persist = group.try_complete_join(Instant::now());
            (p, persist.then(|| group.row(&req.group_id)))
        };
        self.persist(persist).await;
        match pending {
            Pending::Now(r) => r,
            Pending::Wait(rx) => rx
                .await
                .unwrap_or_else(|_| JoinResponse::error(GroupError::UnknownMemberId, "")),
        }
    }

    pub async fn sync(&self, req: SyncRequest) -> SyncReply {
        self.check_owner(&req.group_id)?;
        let (pending, row) = {
            let mut groups = self.inner.groups.lock().unwrap();
            let group = groups.get_mut(&req.group_id).ok_or(GroupError::UnknownMemberId)?;
            let before = group.state;
            let group_id = req.group_id.clone();
            let p = sync_locked(group, req)?;
            let stable_now = before != State::Stable && group.state == State::Stable;
            (p, stable_now.then(|| group.row(&group_id)))
        };
        self.persist(row).await;
        match pending {
            Pending::Now(r) => r,
            Pending::Wait(rx) => rx.await.unwrap_or(Err(GroupError::RebalanceInProgress)),
        }
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), GroupError> {
        self.check_owner(group_id)?;
        let mut groups = self.inner.groups.lock().unwrap();
        let group = groups.get_mut(group_id).ok_or(GroupError::UnknownMemberId)?;
        check_static(group, member_id, instance_id)?;
        let state = group.state;
        let gen = group.generation;
        let m = group.member_mut(member_id).ok_or(GroupError::UnknownMemberId)?;
        m.last_heartbeat = Instant::now();
        match state {
            State::Empty => Err(GroupError::UnknownMemberId),
            State::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            _ if generation != gen => Err(GroupError::IllegalGeneration),
            _ => Ok(()),
        }
    }

    /// Removes members; a result per member, in order.
    pub async fn leave(
        &self,
        group_id: &str,
        members: &[LeaveMember],
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        self.check_owner(group_id)?;
        let (results, persist) = {
            let mut groups = self.inner.groups.lock().unwrap();
            let group = groups.get_mut(group_id).ok_or(GroupError::UnknownMemberId)?;
            let mut results = Vec::with_capacity(members.len());
            let mut removed = false;
            for lm in members {
                let id = match &lm.instance_id {
                    Some(inst) => match group.statics.get(inst) {
                        Some(id) if lm.member_id.is_empty() || *id == lm.member_id => Some(id.clone()),
                        Some(_) => {
                            results.push(Err(GroupError::FencedInstanceId));
                            continue;
                        }
                        None => None,
                    },
                    None => Some(lm.member_id.clone()),
                };
                match id {
                    Some(id) if group.remove_member(&id).is_some() => {
                        tracing::info!(group = group_id, member = %id, "member left");
                        removed = true;
                        results.push(Ok(()));
                    }
                    Some(id) if group.pending.remove(&id).is_some() => results.push(Ok(())),
                    _ => results.push(Err(GroupError::UnknownMemberId)),
                }
            }
            let mut persist = false;
            if removed {
                match group.state {
                    State::Stable | State::CompletingRebalance => {
                        group.prepare_rebalance(Duration::ZERO);
                        persist = group.try_complete_join(Instant::now());
                    }
                    State::PreparingRebalance => persist = group.try_complete_join(Instant::now()),
                    State::Empty => {}
                }
            }
            (results, persist.then(|| group.row(group_id)))
        };
        self.persist(persist).await;
        Ok(results)
    }

    pub fn describe(&self, group_id: &str) -> Option<DescribedGroup> {
        let groups = self.inner.groups.lock().unwrap();
        let g = groups.get(group_id)?;
        let proto = g.protocol.clone().unwrap_or_default();
        let stable = matches!(g.state, State::Stable);
        Some(DescribedGroup {
            group_id: group_id.to_string(),
            state: g.state.name(),
            protocol_type: g.protocol_type.clone(),
            protocol: proto.clone(),
            generation: g.generation,
            members: g
                .members
                .values()
                .map(|m| DescribedMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata_for(&proto),
                    assignment: if stable { m.assignment.clone() } else { Bytes::new() },
                })
                .collect(),
        })
    }

    /// Every group known in memory or by its stored offsets: (id, protocol type, state).
    pub async fn list(&self) -> Result<Vec<(String, String, &'static str)>, GroupError> {
        let stored = self.inner.meta.list_groups().await.map_err(|_| GroupError::Storage)?;
        let groups = self.inner.groups.lock().unwrap();
        let consumers = self.inner.consumer_groups.lock().unwrap();
        let mut out: Vec<(String, String, &'static str)> = groups
            .iter()
            .filter(|(id, g)| !g.is_empty() || !consumers.contains_key(*id))
            .map(|(id, g)| (id.clone(), g.protocol_type.clone(), g.state.name()))
            .collect();
        for (id, g) in consumers.iter() {
            if !out.iter().any(|(o, _, _)| o == id) {
                out.push((id.clone(), "consumer".into(), g.state_name()));
            }
        }
        for row in stored {
            if !out.iter().any(|(o, _, _)| *o == row.group_id) {
                out.push((row.group_id, row.protocol_type, State::Empty.name()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes a group that has no members, with its offsets.
    pub async fn delete(&self, group_id: &str) -> Result<(), GroupError> {
        {
            let mut groups = self.inner.groups.lock().unwrap();
            if let Some(g) = groups.get(group_id) {
                if !g.is_empty() || g.state != State::Empty {
                    return Err(GroupError::NonEmptyGroup);
                }
                groups.remove(group_id);
            }
            let mut consumers = self.inner.consumer_groups.lock().unwrap();
            if let Some(g) = consumers.get(group_id) {
                if !g.members.is_empty() {
                    return Err(GroupError::NonEmptyGroup);
                }
                consumers.remove(group_id);
            }
        }
        match self.inner.meta.delete_group(group_id).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(GroupError::GroupIdNotFound),
            Err(_) => Err(GroupError::Storage),
        }
    }

    /// Restores the groups stored by a previous coordinator.
    pub async fn load(&self) -> anyhow::Result<usize> {
        self.load_where(|_| true).await
    }

    pub(crate) async fn load_where(&self, wanted: impl Fn(&str) -> bool) -> anyhow::Result<usize> {
        let rows = self.inner.meta.list_groups().await?;
        let mut groups = self.inner.groups.lock().unwrap();
        let mut n = 0;
        // Only classic groups store members; KIP-848 groups rejoin on their own.
        for row in rows.iter().filter(|r| r.members.is_some() && wanted(&r.group_id)) {
            groups.insert(row.group_id.clone(), Group::restore(row));
            n += 1;
        }
        Ok(n)
    }

    async fn persist(&self, row: Option<GroupRow>) {
        if let Some(row) = row {
            if let Err(e) = self.inner.meta.upsert_group(&row).await {
                tracing::warn!(group = %row.group_id, error = %e, "storing group state");
            }
        }
    }
}

pub(crate) fn check_static(group: &Group, member_id: &str, instance_id: Option<&str>) -> Result<(), GroupError> {
    if let Some(inst) = instance_id {
        if let Some(owner) = group.statics.get(inst) {
            if owner != member_id {
                return Err(GroupError::FencedInstanceId);
            }
        }
    }
    Ok(())
}

fn new_member_id(client_id: &str) -> String {
    format!("{client_id}-{}", uuid::Uuid::new_v4())
}

fn join_locked(group: &mut Group, req: &JoinRequest, initial_delay: Duration) -> Pending<JoinResponse> {
    let now = Instant::now();
    if !group.supports_protocols(req) {
        return Pending::Now(JoinResponse::error(
            GroupError::InconsistentGroupProtocol,
            &req.member_id,
        ));
    }
    let make_member = |id: String| Member {
        id,
        instance_id: req.instance_id.clone(),
        client_id: req.client_id.clone(),
        client_host: req.client_host.clone(),
        session_timeout: Duration::from_millis(req.session_timeout_ms as u64),
        rebalance_timeout: Duration::from_millis(req.rebalance_timeout_ms.max(req.session_timeout_ms) as u64),
        protocols: req.protocols.clone(),
        assignment: Bytes::new(),
        last_heartbeat: now,
        awaiting_join: None,
        awaiting_sync: None,
    };
    let member_id = if req.member_id.is_empty() {
        match &req.instance_id {
            Some(inst) => match group.statics.get(inst).cloned() {
                // A static member restarting: it takes over its old identity under a new id.
                Some(old) => {
                    let new_id = new_member_id(&req.client_id);
                    let unchanged = group.member_mut(&old).is_some_and(|m| m.protocols == req.protocols);
                    let Some(m) = group.member_mut(&old) else {
                        return Pending::Now(JoinResponse::error(GroupError::UnknownMemberId, ""));
                    };
                    if let Some(tx) = m.awaiting_join.take() {
                        let _ = tx.send(JoinResponse::error(GroupError::FencedInstanceId, &old));
                    }
                    if let Some(tx) = m.awaiting_sync.take() {
                        let _ = tx.send(Err(GroupError::FencedInstanceId));
                    }
                    m.id = new_id.clone();
                    m.protocols = req.protocols.clone();
                    m.last_heartbeat = now;
                    m.session_timeout = Duration::from_millis(req.session_timeout_ms as u64);
                    group.statics.insert(inst.clone(), new_id.clone());
                    if group.leader.as_deref() == Some(old.as_str()) {
                        group.leader = Some(new_id.clone());
                    }
                    if group.state == State::Stable && unchanged {
                        // No rebalance: the member gets its current assignment through SyncGroup.
                        return Pending::Now(group.current_join_response(&new_id));
                    }
                    new_id
                }
                None => {
                    let id = new_member_id(&req.client_id);
                    group.add_member(make_member(id.clone()));
                    id
                }
            },
            None if req.require_known_member_id => {
                let id = new_member_id(&req.client_id);
                group
                    .pending
                    .insert(id.clone(), now + Duration::from_millis(req.session_timeout_ms as u64));
                return Pending::Now(JoinResponse::error(GroupError::MemberIdRequired, &id));
            }
            None => {
                let id = new_member_id(&req.client_id);
                group.add_member(make_member(id.clone()));
                id
            }
        }
    } else if group.pending.remove(&req.member_id).is_some() {
        group.add_member(make_member(req.member_id.clone()));
        req.member_id.clone()
    } else {
        if let Err(e) = check_static(group, &req.member_id, req.instance_id.as_deref()) {
            return Pending::Now(JoinResponse::error(e, &req.member_id));
        }
        let state = group.state;
        let is_leader = group.leader.as_deref() == Some(req.member_id.as_str());
        let Some(m) = group.member_mut(&req.member_id) else {
            return Pending::Now(JoinResponse::error(GroupError::UnknownMemberId, &req.member_id));
        };
        let unchanged = m.protocols == req.protocols;
        m.protocols = req.protocols.clone();
        m.last_heartbeat = now;
        let steady = matches!(state, State::Stable | State::CompletingRebalance);
        if steady && unchanged && !(state == State::Stable && is_leader) {
            // A follower re-sending JoinGroup: nothing changed, so no rebalance.
            return Pending::Now(group.current_join_response(&req.member_id));
        }
        req.member_id.clone()
    };

    if group.members.len() == 1 && group.state == State::Empty {
        group.protocol_type = req.protocol_type.clone();
    }
    group.prepare_rebalance(initial_delay);
    let (tx, rx) = oneshot::channel();
    if let Some(m) = group.member_mut(&member_id) {
        if let Some(old) = m.awaiting_join.replace(tx) {
            let _ = old.send(JoinResponse::error(GroupError::UnknownMemberId, &member_id));
        }
    }
    Pending::Wait(rx)
}

fn sync_locked(group: &mut Group, req: SyncRequest) -> Result<Pending<SyncReply>, GroupError> {
    check_static(group, &req.member_id, req.instance_id.as_deref())?;
    if !group.has_member(&req.member_id) {
        return Err(GroupError::UnknownMemberId);
    }
    if req.generation != group.generation {
        return Err(GroupError::IllegalGeneration);
    }
    if req.protocol_type.as_ref().is_some_and(|t| *t != group.protocol_type)
        || req
            .protocol_name
            .as_ref()
            .is_some_and(|p| Some(p) != group.protocol.as_ref())
    {
        return Err(GroupError::InconsistentGroupProtocol);
    }
    let reply_of = |g: &Group, a: Bytes| Ok((Some(g.protocol_type.clone()), g.protocol.clone(), a));
    match group.state {
        State::Empty => Err(GroupError::UnknownMemberId),
        State::PreparingRebalance => Err(GroupError::RebalanceInProgress),
        State::Stable => {
            let m = group.member_mut(&req.member_id).ok_or(GroupError::UnknownMemberId)?;
            m.last_heartbeat = Instant::now();
            let a = m.assignment.clone();
            Ok(Pending::Now(reply_of(group, a)))
        }
        State::CompletingRebalance => {
            let (tx, rx) = oneshot::channel();
            let is_leader = group.leader.as_deref() == Some(req.member_id.as_str());
            if let Some(m) = group.member_mut(&req.member_id) {
                m.last_heartbeat = Instant::now();
                m.awaiting_sync = Some(tx);
            }
            if is_leader {
                let assigned: HashMap<String, Bytes> = req.assignments.into_iter().collect();
                let (ptype, proto) = (group.protocol_type.clone(), group.protocol.clone());
                for m in group.members.values_mut() {
                    m.assignment = assigned.get(&m.id).cloned().unwrap_or_default();
                    if let Some(tx) = m.awaiting_sync.take() {
                        let _ = tx.send(Ok((Some(ptype.clone()), proto.clone(), m.assignment.clone())));
                    }
                }
                group.state = State::Stable;
            }
            Ok(Pending::Wait(rx))
        }
    }
}

/// Expires members whose session lapsed and completes rebalances whose
/// deadline passed.
pub(crate) async fn tick_loop(inner: Arc<Inner>) {
    let coordinator = Coordinator { inner: inner.clone() };
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    loop {
        interval.tick().await;
        let mut rows = Vec::new();
        {
            let mut groups = inner.groups.lock().unwrap();
            let now = Instant::now();
            for (id, g) in groups.iter_mut() {
                let expired: Vec<String> = g
                    .members
                    .values()
                    .filter(|m| m.awaiting_join.is_none() && now.duration_since(m.last_heartbeat) > m.session_timeout)
                    .map(|m| m.id.clone())
                    .collect();
                let mut changed = false;
                for mid in &expired {
                    tracing::info!(group = %id, member = %mid, "member session expired");
                    METRICS.expired_members.inc();
                    g.remove_member(mid);
                }
                if !expired.is_empty() {
                    if g.members.is_empty() && g.state != State::PreparingRebalance {
                        g.state = State::Empty;
                        g.generation += 1;
                        g.protocol = None;
                        changed = true;
                    } else {
                        g.prepare_rebalance(Duration::ZERO);
                    }
                }
                changed |= g.try_complete_join(now);
                if changed {
                    rows.push(g.row(id));
                }
            }
        }
        for row in rows {
            coordinator.persist(Some(row)).await;
        }
    }
}

#[cfg(test)]
mod tests;
