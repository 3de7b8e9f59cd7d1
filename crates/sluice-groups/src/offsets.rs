//! Committed offsets: validation against the group's generation and
//! membership, storage in the metadata store, and expiry
//! (offsets.retention.minutes) for groups that stay empty.

use std::sync::Arc;
use std::time::Duration;

use sluice_meta::{now_ms, CommittedOffset, GroupRow};

use crate::classic::{check_static, Group, State};
use crate::{Coordinator, GroupError, Inner, METRICS};

#[derive(Debug, Clone)]
pub struct CommitRequest {
    pub group_id: String,
    /// -1 with an empty member id: a commit from outside any generation
    /// (consumers using assign()), allowed while the group has no members.
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub offsets: Vec<OffsetEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetEntry {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

impl Coordinator {
    /// Validates and stores a commit; a result per entry, in order. The
    /// caller checks that topics and partitions exist.
    pub async fn commit(&self, req: CommitRequest) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        self.store_commit(req, None).await
    }

    /// TxnOffsetCommit: validated like a commit (KIP-447: member id and generation), stored
    /// as the transaction's offsets, which become the group's when it commits.
    pub async fn commit_transactional(
        &self,
        req: CommitRequest,
        producer_id: i64,
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        self.store_commit(req, Some(producer_id)).await
    }

    async fn store_commit(
        &self,
        req: CommitRequest,
        producer_id: Option<i64>,
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        if req.group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        self.check_owner(&req.group_id)?;
        let new_row = {
            // A member of a KIP-848 group: the commit's generation is its member epoch.
            let consumer_member = {
                let consumers = self.inner.consumer_groups.lock().unwrap();
                match consumers.get(&req.group_id).filter(|g| !g.members.is_empty()) {
                    None => false,
                    Some(cg) => match cg.members.get(&req.member_id) {
                        None => return Err(GroupError::UnknownMemberId),
                        Some(m) if m.epoch != req.generation => return Err(GroupError::StaleMemberEpoch),
                        Some(_) => true,
                    },
                }
            };
            let mut groups = self.inner.groups.lock().unwrap();
            match groups.get_mut(&req.group_id) {
                _ if consumer_member => None,
                Some(g) => {
                    validate_commit(g, &req)?;
                    None
                }
                None if req.generation < 0 && req.member_id.is_empty() => Some(GroupRow {
                    group_id: req.group_id.clone(),
                    protocol_type: String::new(),
                    generation: 0,
                    empty_since_ms: Some(now_ms()),
                    members: None,
                }),
                // The coordinator has no such generation (e.g. it restarted): rejoin.
                None => return Err(GroupError::UnknownMemberId),
            }
        };
        let max = self.inner.opts.max_metadata_bytes;
        let now = now_ms();
        let mut results = Vec::with_capacity(req.offsets.len());
        let mut store = Vec::with_capacity(req.offsets.len());
        for o in &req.offsets {
            if o.metadata.as_ref().is_some_and(|m| m.len() > max) {
                results.push(Err(GroupError::OffsetMetadataTooLarge));
                continue;
            }
            results.push(Ok(()));
            store.push(CommittedOffset {
                topic: o.topic.clone(),
                partition: o.partition,
                offset: o.offset,
                leader_epoch: o.leader_epoch,
                metadata: o.metadata.clone(),
                commit_ms: now,
            });
        }
        if let Some(row) = new_row {
            let known = self.inner.meta.list_groups().await.map_err(|_| GroupError::Storage)?;
            if !known.iter().any(|g| g.group_id == row.group_id) {
                self.inner
                    .meta
                    .upsert_group(&row)
                    .await
                    .map_err(|_| GroupError::Storage)?;
            }
        }
        let stored = match producer_id {
            None => self.inner.meta.commit_offsets(&req.group_id, &store).await,
            Some(pid) => self.inner.meta.put_txn_offsets(&req.group_id, pid, &store).await,
        };
        stored.map_err(|_| GroupError::Storage)?;
        METRICS.offset_commits.inc();
        Ok(results)
    }

    /// A group's committed offsets.
    pub async fn fetch_offsets(&self, group_id: &str) -> Result<Vec<OffsetEntry>, GroupError> {
        let rows = self
            .inner
            .meta
            .fetch_offsets(group_id)
            .await
            .map_err(|_| GroupError::Storage)?;
        Ok(rows
            .into_iter()
            .map(|r| OffsetEntry {
                topic: r.topic,
                partition: r.partition,
                offset: r.offset,
                leader_epoch: r.leader_epoch,
                metadata: r.metadata,
            })
            .collect())
    }

    /// Partitions of a group whose offsets a transaction not yet ended has sent
    /// (OffsetFetch with require_stable answers UNSTABLE_OFFSET_COMMIT for them).
    pub async fn unstable_offsets(
        &self,
        group_id: &str,
    ) -> Result<std::collections::BTreeSet<(String, i32)>, GroupError> {
        self.inner
            .meta
            .pending_txn_offsets(group_id)
            .await
            .map_err(|_| GroupError::Storage)
    }

    /// OffsetDelete: refused for topics the group's members subscribe to.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        parts: &[(String, i32)],
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        let subscribed = {
            let groups = self.inner.groups.lock().unwrap();
            match groups.get(group_id) {
                Some(g) if g.protocol_type != "consumer" && !g.is_empty() => return Err(GroupError::NonEmptyGroup),
                Some(g) => g.consumer_protocol_topics(),
                None => vec![],
            }
        };
        let known = self.inner.meta.list_groups().await.map_err(|_| GroupError::Storage)?;
        if !known.iter().any(|g| g.group_id == group_id) && subscribed.is_empty() {
            return Err(GroupError::GroupIdNotFound);
        }
        let mut results = Vec::with_capacity(parts.len());
        for (topic, partition) in parts {
            if subscribed.contains(topic) {
                results.push(Err(GroupError::GroupSubscribedToTopic));
                continue;
            }
            self.inner
                .meta
                .delete_offsets(group_id, topic, *partition)
                .await
                .map_err(|_| GroupError::Storage)?;
            results.push(Ok(()));
        }
        Ok(results)
    }

    /// Runs one offset-expiry pass now.
    pub async fn expire_offsets(&self) -> anyhow::Result<Vec<String>> {
        expire(&self.inner).await
    }
}

fn validate_commit(g: &Group, req: &CommitRequest) -> Result<(), GroupError> {
    if req.generation < 0 && req.member_id.is_empty() {
        return if g.is_empty() {
            Ok(())
        } else {
            Err(GroupError::UnknownMemberId)
        };
    }
    // As Kafka: member and generation first, then the group's state.
    check_static(g, &req.member_id, req.instance_id.as_deref())?;
    if !g.has_member(&req.member_id) {
        return Err(GroupError::UnknownMemberId);
    }
    if req.generation != g.generation {
        return Err(GroupError::IllegalGeneration);
    }
    if g.state == State::CompletingRebalance {
        return Err(GroupError::RebalanceInProgress);
    }
    Ok(())
}

async fn expire(inner: &Inner) -> anyhow::Result<Vec<String>> {
    let cutoff = now_ms() - inner.opts.offsets_retention.as_millis() as i64;
    let expired = inner.meta.expire_offsets(cutoff).await?;
    for g in &expired {
        tracing::info!(group = %g, "expired committed offsets of a group empty past offsets retention");
    }
    Ok(expired)
}

pub(crate) async fn expiry_loop(inner: Arc<Inner>) {
    let period = (inner.opts.offsets_retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        tokio::time::sleep(period).await;
        if let Err(e) = expire(&inner).await {
            tracing::warn!(error = %format!("{e:#}"), "offset expiry failed");
        }
    }
}
