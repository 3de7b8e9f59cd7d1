//! The consumer group protocol of KIP-848 (`group.protocol=consumer`):
//! members heartbeat their subscriptions, the coordinator computes the
//! target assignment with a server-side assignor (uniform or range), and
//! each member is reconciled towards its target: it first revokes what it
//! must give up, then advances to the new epoch, and is given partitions
//! only once their previous owners have released them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_meta::{now_ms, GroupRow};
use uuid::Uuid;

use crate::{Coordinator, Inner, METRICS};

/// Partitions per topic id.
pub type Partitions = BTreeMap<Uuid, BTreeSet<i32>>;

/// What the coordinator knows of a topic: its id and partition count.
pub type TopicInfo = BTreeMap<String, (Uuid, i32)>;

pub const ASSIGNORS: &[&str] = &["uniform", "range"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatError {
    UnknownMemberId,
    FencedMemberEpoch,
    UnsupportedAssignor,
    InvalidRequest(&'static str),
    InvalidRegularExpression,
    GroupIdNotFound,
    UnreleasedInstanceId,
    NotCoordinator,
}

#[derive(Debug, Clone)]
pub struct HeartbeatRequest {
    pub group_id: String,
    /// Empty on a v0 join: the coordinator then makes one up.
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    /// `None`: unchanged since the last heartbeat.
    pub subscribed_topic_names: Option<Vec<String>>,
    pub subscribed_topic_regex: Option<String>,
    pub server_assignor: Option<String>,
    /// What the member owns now; `None` unless this is a full heartbeat.
    pub owned: Option<Partitions>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatResponse {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// The partitions the member may own now, when they changed.
    pub assignment: Option<Partitions>,
}

#[derive(Debug, Clone)]
pub struct DescribedConsumerMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub member_epoch: i32,
    pub client_id: String,
    pub client_host: String,
    pub subscribed_topic_names: Vec<String>,
    pub subscribed_topic_regex: Option<String>,
    pub assignment: Partitions,
    pub target_assignment: Partitions,
}

#[derive(Debug, Clone)]
pub struct DescribedConsumerGroup {
    pub group_id: String,
    pub state: &'static str,
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: String,
    pub members: Vec<DescribedConsumerMember>,
}

pub(crate) struct Member {
    id: String,
    instance_id: Option<String>,
    rack_id: Option<String>,
    client_id: String,
    client_host: String,
    pub(crate) epoch: i32,
    rebalance_timeout: Duration,
    names: Vec<String>,
    regex: Option<String>,
    assignor: Option<String>,
    /// What the coordinator lets the member own (it may still be revoking some).
    assigned: Partitions,
    /// The last assignment sent, to send it again only when it changes.
    sent: Option<Partitions>,
    last_heartbeat: Instant,
}

#[derive(Default)]
pub(crate) struct ConsumerGroup {
    pub(crate) epoch: i32,
    assignment_epoch: i32,
    pub(crate) members: BTreeMap<String, Member>,
    target: HashMap<String, Partitions>,
    /// The subscribed topics' metadata the current target was computed on.
    topics: TopicInfo,
    assignor: String,
}

impl ConsumerGroup {
    pub(crate) fn state_name(&self) -> &'static str {
        self.state()
    }

    fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.assignment_epoch < self.epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| m.epoch != self.assignment_epoch || Some(&m.assigned) != self.target.get(&m.id))
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    fn subscribed(&self, all: &TopicInfo) -> TopicInfo {
        all.iter()
            .filter(|(name, _)| self.members.values().any(|m| subscribes(m, name)))
            .map(|(n, v)| (n.clone(), *v))
            .collect()
    }

    fn row(&self, id: &str) -> GroupRow {
        GroupRow {
            group_id: id.to_string(),
            protocol_type: "consumer".into(),
            generation: self.epoch,
            empty_since_ms: if self.members.is_empty() { Some(now_ms()) } else { None },
            members: None,
        }
    }

    /// Partitions currently granted to members other than `except`.
    fn owned_by_others(&self, except: &str) -> BTreeSet<(Uuid, i32)> {
        self.members
            .values()
            .filter(|m| m.id != except)
            .flat_map(|m| m.assigned.iter().flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p))))
            .collect()
    }

    fn compute_target(&mut self, all: &TopicInfo) {
        let topics = self.subscribed(all);
        let previous = std::mem::take(&mut self.target);
        self.target = if self.assignor == "range" {
            assign_range(&self.members, &topics)
        } else {
            assign_uniform(&self.members, &topics, &previous)
        };
        self.topics = topics;
        self.assignment_epoch = self.epoch;
    }

    /// Moves a member towards its target (KIP-848's reconciliation).
    fn reconcile(&mut self, member_id: &str, owned: Option<&Partitions>) {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let others = self.owned_by_others(member_id);
        let epoch = self.assignment_epoch;
        let Some(m) = self.members.get_mut(member_id) else {
            return;
        };
        let keep = intersect(&m.assigned, &target);
        if keep != m.assigned {
            // Partitions to give up: until the member reports it no longer owns
            // them, it keeps its epoch and is told to drop them.
            let revoked = difference(&m.assigned, &target);
            let still_owned = owned.is_none_or(|o| {
                revoked
                    .iter()
                    .any(|(t, ps)| o.get(t).is_some_and(|op| !op.is_disjoint(ps)))
            });
            if still_owned {
                return;
            }
            m.assigned = keep;
        }
        m.epoch = epoch;
        // Grant what the target adds, once no one else holds it.
        for (t, ps) in &target {
            for p in ps {
                if !others.contains(&(*t, *p)) {
                    m.assigned.entry(*t).or_default().insert(*p);
                }
            }
        }
    }
}

fn subscribes(m: &Member, topic: &str) -> bool {
    m.names.iter().any(|n| n == topic)
        || m.regex
            .as_ref()
            .is_some_and(|r| regex::Regex::new(r).is_ok_and(|re| re.is_match(topic)))
}

fn intersect(a: &Partitions, b: &Partitions) -> Partitions {
    a.iter()
        .filter_map(|(t, ps)| {
            let common: BTreeSet<i32> = b
                .get(t)
                .map(|bs| ps.intersection(bs).copied().collect())
                .unwrap_or_default();
            (!common.is_empty()).then_some((*t, common))
        })
        .collect()
}

fn difference(a: &Partitions, b: &Partitions) -> Partitions {
    a.iter()
        .filter_map(|(t, ps)| {
            let rest: BTreeSet<i32> = match b.get(t) {
                Some(bs) => ps.difference(bs).copied().collect(),
                None => ps.clone(),
            };
            (!rest.is_empty()).then_some((*t, rest))
        })
        .collect()
}

/// Range: per topic, its subscribers (by member id) get contiguous ranges.
fn assign_range(members: &BTreeMap<String, Member>, topics: &TopicInfo) -> HashMap<String, Partitions> {
    let mut out: HashMap<String, Partitions> = members.keys().map(|k| (k.clone(), Partitions::new())).collect();
    for (name, (id, count)) in topics {
        let subs: Vec<&String> = members
            .values()
            .filter(|m| subscribes(m, name))
            .map(|m| &m.id)
            .collect();
        if subs.is_empty() {
            continue;
        }
        let (per, extra) = (*count as usize / subs.len(), *count as usize % subs.len());
        let mut next = 0i32;
        for (i, s) in subs.iter().enumerate() {
            let n = per + usize::from(i < extra);
            let set: BTreeSet<i32> = (next..next + n as i32).collect();
            next += n as i32;
            if !set.is_empty() {
                out.get_mut(*s).map(|a| a.insert(*id, set));
            }
        }
    }
    out
}

/// Uniform: as even as subscriptions allow, keeping partitions where they were.
fn assign_uniform(
    members: &BTreeMap<String, Member>,
    topics: &TopicInfo,
    previous: &HashMap<String, Partitions>,
) -> HashMap<String, Partitions> {
    let mut out: HashMap<String, Partitions> = members.keys().map(|k| (k.clone(), Partitions::new())).collect();
    let size = |out: &HashMap<String, Partitions>, m: &str| out.get(m).map_or(0, count);
    let all: Vec<(&String, Uuid, i32)> = topics
        .iter()
        .flat_map(|(n, (id, c))| (0..*c).map(move |p| (n, *id, p)))
        .collect();
    let subscribers = members
        .values()
        .filter(|m| topics.keys().any(|t| subscribes(m, t)))
        .count()
        .max(1);
    let quota = all.len().div_ceil(subscribers);
    let mut unassigned = Vec::new();
    // First keep each partition with its previous owner, up to the quota.
    for (name, id, p) in &all {
        let owner = previous
            .iter()
            .find(|(_, a)| a.get(id).is_some_and(|s| s.contains(p)))
            .map(|(m, _)| m.clone());
        match owner.filter(|o| members.get(o).is_some_and(|m| subscribes(m, name)) && size(&out, o) < quota) {
            Some(o) => give(&mut out, &o, *id, *p),
            None => unassigned.push((*name, *id, *p)),
        }
    }
    // Then hand the rest to the least loaded subscriber.
    for (name, id, p) in unassigned {
        let least = members
            .values()
            .filter(|m| subscribes(m, name))
            .min_by_key(|m| (size(&out, &m.id), m.id.clone()));
        if let Some(m) = least {
            give(&mut out, &m.id, id, p);
        }
    }
    // Even out what stickiness left lopsided.
    while let Some((from, to, t, p)) = lopsided_move(members, topics, &out) {
        if let Some(set) = out.get_mut(&from).and_then(|a| a.get_mut(&t)) {
            set.remove(&p);
        }
        if let Some(a) = out.get_mut(&from) {
            a.retain(|_, s| !s.is_empty());
        }
        give(&mut out, &to, t, p);
    }
    out
}

fn give(out: &mut HashMap<String, Partitions>, member: &str, topic: Uuid, partition: i32) {
    if let Some(a) = out.get_mut(member) {
        a.entry(topic).or_default().insert(partition);
    }
}

fn count(p: &Partitions) -> usize {
    p.values().map(|s| s.len()).sum()
}

/// A partition to move from the most to the least loaded member, when they
/// differ by more than one and the latter subscribes to it.
fn lopsided_move(
    members: &BTreeMap<String, Member>,
    topics: &TopicInfo,
    out: &HashMap<String, Partitions>,
) -> Option<(String, String, Uuid, i32)> {
    let max = out.iter().max_by_key(|(m, a)| (count(a), (*m).clone()))?;
    let min = out.iter().min_by_key(|(m, a)| (count(a), (*m).clone()))?;
    if count(max.1) <= count(min.1) + 1 {
        return None;
    }
    let taker = members.get(min.0)?;
    let (t, p) = max
        .1
        .iter()
        .flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))
        .find(|(t, _)| topics.iter().any(|(n, (id, _))| id == t && subscribes(taker, n)))?;
    Some((max.0.clone(), min.0.clone(), t, p))
}

impl Coordinator {
    /// One ConsumerGroupHeartbeat. `topics` is every topic the broker has.
    pub async fn consumer_heartbeat(
        &self,
        req: HeartbeatRequest,
        topics: &TopicInfo,
    ) -> Result<HeartbeatResponse, HeartbeatError> {
        let interval = self.inner.opts.consumer_heartbeat_interval.as_millis() as i32;
        if !self.owns(&req.group_id) {
            return Err(HeartbeatError::NotCoordinator);
        }
        let (resp, row) = {
            if self
                .inner
                .groups
                .lock()
                .unwrap()
                .get(&req.group_id)
                .is_some_and(|g| !g.is_empty())
            {
                return Err(HeartbeatError::GroupIdNotFound);
            }
            let mut groups = self.inner.consumer_groups.lock().unwrap();
            let group = groups.entry(req.group_id.clone()).or_default();
            let before = group.epoch;
            let resp = heartbeat_locked(group, req.clone(), topics, interval)?;
            let row = (group.epoch != before).then(|| group.row(&req.group_id));
            (resp, row)
        };
        if let Some(row) = row {
            if let Err(e) = self.inner.meta.upsert_group(&row).await {
                tracing::warn!(group = %row.group_id, error = %e, "storing group state");
            }
        }
        Ok(resp)
    }

    pub fn describe_consumer_group(&self, group_id: &str) -> Option<DescribedConsumerGroup> {
        let groups = self.inner.consumer_groups.lock().unwrap();
        let g = groups.get(group_id)?;
        Some(DescribedConsumerGroup {
            group_id: group_id.to_string(),
            state: g.state(),
            group_epoch: g.epoch,
            assignment_epoch: g.assignment_epoch,
            assignor: g.assignor.clone(),
            members: g
                .members
                .values()
                .map(|m| DescribedConsumerMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    member_epoch: m.epoch,
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    subscribed_topic_names: m.names.clone(),
                    subscribed_topic_regex: m.regex.clone(),
                    assignment: m.assigned.clone(),
                    target_assignment: g.target.get(&m.id).cloned().unwrap_or_default(),
                })
                .collect(),
        })
    }
}

fn heartbeat_locked(
    group: &mut ConsumerGroup,
    req: HeartbeatRequest,
    all_topics: &TopicInfo,
    interval: i32,
) -> Result<HeartbeatResponse, HeartbeatError> {
    let now = Instant::now();
    if let Some(a) = &req.server_assignor {
        if !ASSIGNORS.contains(&a.as_str()) {
            return Err(HeartbeatError::UnsupportedAssignor);
        }
    }
    if let Some(r) = &req.subscribed_topic_regex {
        if regex::Regex::new(r).is_err() {
            return Err(HeartbeatError::InvalidRegularExpression);
        }
    }
    // Leaving: -1, or -2 for a static member that will come back.
    if req.member_epoch < 0 {
        if group.members.remove(&req.member_id).is_some() {
            group.target.remove(&req.member_id);
            group.epoch += 1;
            group.compute_target(all_topics);
        }
        return Ok(HeartbeatResponse {
            member_id: req.member_id,
            member_epoch: req.member_epoch,
            heartbeat_interval_ms: 0,
            assignment: None,
        });
    }
    let member_id = if req.member_id.is_empty() {
        Uuid::new_v4().to_string()
    } else {
        req.member_id.clone()
    };
    let joining = req.member_epoch == 0;
    if joining {
        if req.subscribed_topic_names.is_none() && req.subscribed_topic_regex.is_none() {
            return Err(HeartbeatError::InvalidRequest(
                "a joining member must send its subscription",
            ));
        }
        if let Some(inst) = &req.instance_id {
            // A static member coming back replaces its previous incarnation.
            let previous = group
                .members
                .values()
                .find(|m| m.instance_id.as_ref() == Some(inst))
                .map(|m| m.id.clone());
            if let Some(prev) = previous.filter(|p| *p != member_id) {
                let old = group.members.remove(&prev);
                if let Some(old) = old {
                    let target = group.target.remove(&prev).unwrap_or_default();
                    group.target.insert(member_id.clone(), target);
                    group.members.insert(
                        member_id.clone(),
                        Member {
                            id: member_id.clone(),
                            epoch: 0,
                            sent: None,
                            last_heartbeat: now,
                            ..old
                        },
                    );
                }
            }
        }
        if !group.members.contains_key(&member_id) {
            group.members.insert(
                member_id.clone(),
                Member {
                    id: member_id.clone(),
                    instance_id: req.instance_id.clone(),
                    rack_id: req.rack_id.clone(),
                    client_id: req.client_id.clone(),
                    client_host: req.client_host.clone(),
                    epoch: 0,
                    rebalance_timeout: Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64),
                    names: vec![],
                    regex: None,
                    assignor: None,
                    assigned: Partitions::new(),
                    sent: None,
                    last_heartbeat: now,
                },
            );
            group.epoch += 1;
        }
    }
    let assignment_epoch = group.assignment_epoch;
    let Some(m) = group.members.get_mut(&member_id) else {
        return Err(HeartbeatError::UnknownMemberId);
    };
    if !joining && req.member_epoch != m.epoch {
        // A full heartbeat from the previous epoch is a retry the member may make.
        let retry = req.owned.as_ref().is_some_and(|o| *o == m.assigned) && req.member_epoch < m.epoch;
        if !retry {
            return Err(HeartbeatError::FencedMemberEpoch);
        }
    }
    m.last_heartbeat = now;
    let mut changed = false;
    if let Some(names) = req.subscribed_topic_names.clone() {
        let mut names = names;
        names.sort();
        if names != m.names {
            m.names = names;
            changed = true;
        }
    }
    if req.subscribed_topic_regex.is_some() && req.subscribed_topic_regex != m.regex {
        m.regex = req.subscribed_topic_regex.clone();
        changed = true;
    }
    if req.server_assignor.is_some() && req.server_assignor != m.assignor {
        m.assignor = req.server_assignor.clone();
        changed = true;
    }
    let _ = assignment_epoch;
    if changed && !joining {
        group.epoch += 1;
    }
    // The group's assignor: the one most members ask for, else uniform.
    group.assignor = group
        .members
        .values()
        .find_map(|m| m.assignor.clone())
        .unwrap_or_else(|| "uniform".into());
    if group.subscribed(all_topics) != group.topics && group.assignment_epoch == group.epoch {
        group.epoch += 1; // partitions were added to, or topics created for, the subscription
    }
    if group.assignment_epoch < group.epoch {
        group.compute_target(all_topics);
        METRICS.rebalances.inc();
    }
    group.reconcile(&member_id, req.owned.as_ref());
    let Some(m) = group.members.get_mut(&member_id) else {
        return Err(HeartbeatError::UnknownMemberId);
    };
    // The member may only keep what the coordinator grants, even before it acks a revocation.
    let allowed = intersect(&m.assigned, group.target.get(&member_id).unwrap_or(&Partitions::new()));
    let owned_differs = req.owned.as_ref().is_some_and(|o| *o != allowed);
    let assignment = if joining || m.sent.as_ref() != Some(&allowed) || owned_differs {
        m.sent = Some(allowed.clone());
        Some(allowed)
    } else {
        None
    };
    Ok(HeartbeatResponse {
        member_id,
        member_epoch: m.epoch,
        heartbeat_interval_ms: interval,
        assignment,
    })
}

/// Expires consumer-protocol members whose session lapsed.
pub(crate) async fn tick_loop(inner: Arc<Inner>) {
    let mut interval = tokio::time::interval(Duration::from_millis(250));
    loop {
        interval.tick().await;
        let session = inner.opts.consumer_session_timeout;
        let mut rows = Vec::new();
        {
            let mut groups = inner.consumer_groups.lock().unwrap();
            let now = Instant::now();
            for (id, g) in groups.iter_mut() {
                let expired: Vec<String> = g
                    .members
                    .values()
                    .filter(|m| now.duration_since(m.last_heartbeat) > session.max(m.rebalance_timeout.min(session)))
                    .map(|m| m.id.clone())
                    .collect();
                if expired.is_empty() {
                    continue;
                }
                for m in &expired {
                    tracing::info!(group = %id, member = %m, "consumer member session expired");
                    METRICS.expired_members.inc();
                    g.members.remove(m);
                    g.target.remove(m);
                }
                g.epoch += 1;
                let topics = g.topics.clone();
                g.compute_target(&topics);
                rows.push(g.row(id));
            }
        }
        for row in rows {
            if let Err(e) = inner.meta.upsert_group(&row).await {
                tracing::warn!(group = %row.group_id, error = %e, "storing group state");
            }
        }
    }
}

#[cfg(test)]
mod tests;
