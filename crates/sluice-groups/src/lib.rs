//! Consumer group coordination, as Kafka's group coordinator does it:
//! the classic JoinGroup/SyncGroup/Heartbeat/LeaveGroup protocol with
//! rebalance and session timeouts, KIP-394 member ids, static membership,
//! and committed offsets kept in the metadata store.
//!
//! Membership lives in memory with the coordinator; the durable part of a
//! group (its generation, and when it became empty) and its offsets live in
//! the metadata store, so another coordinator can take the group over.

mod classic;
pub mod consumer;
mod offsets;
pub mod protocol;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use prometheus::{register_int_counter, IntCounter};
use sluice_meta::MetaStore;

pub use classic::{DescribedGroup, DescribedMember, JoinRequest, JoinResponse, JoinedMember, LeaveMember, SyncRequest};
pub use offsets::{CommitRequest, OffsetEntry};

/// Why a group request failed; the protocol layer maps each to its Kafka code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupError {
    UnknownMemberId,
    IllegalGeneration,
    InconsistentGroupProtocol,
    RebalanceInProgress,
    MemberIdRequired,
    FencedInstanceId,
    InvalidSessionTimeout,
    InvalidGroupId,
    GroupIdNotFound,
    NonEmptyGroup,
    UnknownTopicOrPartition,
    OffsetMetadataTooLarge,
    GroupSubscribedToTopic,
    CoordinatorNotAvailable,
    /// Another broker coordinates this group now.
    NotCoordinator,
    /// KIP-848: an offset commit carried a member epoch other than the member's.
    StaleMemberEpoch,
    Storage,
}

#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// Allowed range of a member's session timeout.
    pub min_session_timeout: Duration,
    pub max_session_timeout: Duration,
    /// Delay before the first rebalance of an empty group, so that members
    /// starting together land in one generation.
    pub initial_rebalance_delay: Duration,
    /// Committed offsets of a group empty for this long are deleted.
    pub offsets_retention: Duration,
    /// Largest commit metadata string accepted.
    pub max_metadata_bytes: usize,
    /// KIP-848 groups: session timeout and heartbeat interval the coordinator sets.
    pub consumer_session_timeout: Duration,
    pub consumer_heartbeat_interval: Duration,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            min_session_timeout: Duration::from_secs(6),
            max_session_timeout: Duration::from_secs(1800),
            initial_rebalance_delay: Duration::from_secs(3),
            offsets_retention: Duration::from_secs(7 * 24 * 3600),
            max_metadata_bytes: 4096,
            consumer_session_timeout: Duration::from_secs(45),
            consumer_heartbeat_interval: Duration::from_secs(5),
        }
    }
}

pub(crate) struct Metrics {
    pub rebalances: IntCounter,
    pub expired_members: IntCounter,
    pub offset_commits: IntCounter,
}

pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    rebalances: register_int_counter!("sluice_group_rebalances_total", "Completed group rebalances").unwrap(),
    expired_members: register_int_counter!(
        "sluice_group_members_expired_total",
        "Members removed by session timeout"
    )
    .unwrap(),
    offset_commits: register_int_counter!("sluice_group_offset_commits_total", "Offset commit requests stored")
        .unwrap(),
});

/// The group coordinator of this broker. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub meta: MetaStore,
    pub opts: GroupOptions,
    pub groups: Mutex<HashMap<String, classic::Group>>,
    pub consumer_groups: Mutex<HashMap<String, consumer::ConsumerGroup>>,
    /// The group shards this broker coordinates; `None`: every group.
    pub shards: Mutex<Option<HashSet<i32>>>,
}

impl Coordinator {
    /// Creates the coordinator and starts its timer task (session and
    /// rebalance timeouts, offset expiry).
    pub fn start(meta: MetaStore, opts: GroupOptions) -> Self {
        LazyLock::force(&METRICS);
        let inner = Arc::new(Inner {
            meta,
            opts,
            groups: Mutex::new(HashMap::new()),
            consumer_groups: Mutex::new(HashMap::new()),
            shards: Mutex::new(None),
        });
        tokio::spawn(classic::tick_loop(inner.clone()));
        tokio::spawn(consumer::tick_loop(inner.clone()));
        tokio::spawn(offsets::expiry_loop(inner.clone()));
        Self { inner }
    }

    pub fn options(&self) -> &GroupOptions {
        &self.inner.opts
    }

    /// Whether this broker coordinates `group_id`.
    pub fn owns(&self, group_id: &str) -> bool {
        self.inner
            .shards
            .lock()
            .unwrap()
            .as_ref()
            .is_none_or(|s| s.contains(&sluice_meta::group_shard(group_id)))
    }

    pub(crate) fn check_owner(&self, group_id: &str) -> Result<(), GroupError> {
        if self.owns(group_id) {
            Ok(())
        } else {
            Err(GroupError::NotCoordinator)
        }
    }

    /// Switches from coordinating every group to coordinating only the
    /// shards handed to it with [`Coordinator::take_shard`].
    pub fn use_shards(&self) {
        let mut shards = self.inner.shards.lock().unwrap();
        if shards.is_none() {
            *shards = Some(HashSet::new());
            self.inner.groups.lock().unwrap().clear();
            self.inner.consumer_groups.lock().unwrap().clear();
        }
    }

    /// Starts coordinating the groups of `shard`, restoring their stored state.
    pub async fn take_shard(&self, shard: i32) -> anyhow::Result<usize> {
        let restored = self.load_where(|g| sluice_meta::group_shard(g) == shard).await?;
        if let Some(s) = self.inner.shards.lock().unwrap().as_mut() {
            s.insert(shard);
        }
        Ok(restored)
    }

    /// Stops coordinating the groups of `shard`; their members find the new
    /// coordinator through FindCoordinator.
    pub fn release_shard(&self, shard: i32) {
        if let Some(s) = self.inner.shards.lock().unwrap().as_mut() {
            s.remove(&shard);
        }
        let theirs = |g: &String| sluice_meta::group_shard(g) == shard;
        self.inner.groups.lock().unwrap().retain(|g, _| !theirs(g));
        self.inner.consumer_groups.lock().unwrap().retain(|g, _| !theirs(g));
    }

    pub fn owned_shards(&self) -> Option<Vec<i32>> {
        let shards = self.inner.shards.lock().unwrap();
        shards.as_ref().map(|s| {
            let mut v: Vec<i32> = s.iter().copied().collect();
            v.sort_unstable();
            v
        })
    }
}
