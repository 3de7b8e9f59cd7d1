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

use std::collections::HashMap;
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
        });
        tokio::spawn(classic::tick_loop(inner.clone()));
        tokio::spawn(consumer::tick_loop(inner.clone()));
        tokio::spawn(offsets::expiry_loop(inner.clone()));
        Self { inner }
    }

    pub fn options(&self) -> &GroupOptions {
        &self.inner.opts
    }
}
