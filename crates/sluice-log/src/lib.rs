//! Partition logs on object storage.
//!
//! Producers' batches for every partition go to one flusher task, which
//! assigns offsets, group-commits them into one data object per flush,
//! records the index rows and new high watermarks in one metadata
//! transaction, and only then acknowledges the appends and makes the data
//! visible to readers. Recent batches stay in an in-memory tail cache; older
//! ones are found through the index and read as object ranges.

pub mod batch;
mod cleaner;
mod commit;
mod compaction;
pub mod config;
mod counting;
mod flush;
mod journal;
mod leadership;
pub mod object;
pub mod producer;
mod read;
mod retention;
pub mod store;
mod tiering;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter, Histogram, HistogramVec, IntCounter,
};
use sluice_meta::{MetaStore, PartitionRow, TopicRow};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

pub use cleaner::CleanReport;
pub use compaction::CompactionReport;
pub use config::{TopicConfig, TopicDefaults};
pub use counting::{store_counts, StoreCounts};
pub use read::{ReadResult, TimestampOffset};
pub use retention::{rebuild_index, RebuildReport};
pub use store::DataStore;
pub use tiering::TierReport;

/// Errors the log reports; the protocol layer maps each to its Kafka code.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LogError {
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("topic already exists")]
    TopicExists,
    #[error("{0}")]
    InvalidTopic(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("corrupt message: {0}")]
    CorruptMessage(String),
    #[error("message too large: {0}")]
    MessageTooLarge(String),
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// Records without a key in a compacted topic: their indices in the batch.
    #[error("invalid record: Compacted topic cannot accept message without key (records {0:?} of the batch)")]
    KeylessRecords(Vec<i32>),
    #[error("invalid timestamp: {0}")]
    InvalidTimestamp(String),
    #[error("out of order sequence number: {0}")]
    OutOfOrderSequence(String),
    #[error("invalid producer epoch: {0}")]
    InvalidProducerEpoch(String),
    #[error("offset out of range")]
    OffsetOutOfRange,
    #[error("not the leader of this partition")]
    NotLeader,
    #[error("invalid transaction state: {0}")]
    InvalidTxnState(String),
    #[error("the producer id is not the transactional id's current one")]
    InvalidProducerIdMapping,
    #[error("storage error: {0}")]
    Storage(String),
}

impl From<anyhow::Error> for LogError {
    fn from(e: anyhow::Error) -> Self {
        LogError::Storage(format!("{e:#}"))
    }
}

pub(crate) struct Metrics {
    pub flushes: IntCounter,
    pub flush_bytes: IntCounter,
    pub flush_seconds: Histogram,
    pub append_seconds: Histogram,
    pub flush_stage_seconds: HistogramVec,
    pub batches_appended: IntCounter,
    pub records_appended: IntCounter,
    pub objects_deleted: IntCounter,
    pub tail_reads: IntCounter,
    pub object_reads: IntCounter,
    pub read_aheads: IntCounter,
    pub read_ahead_hits: IntCounter,
    pub compactions: IntCounter,
    pub cleaner_bytes_read: IntCounter,
    pub cleaner_records_removed: IntCounter,
    pub tier_segments: IntCounter,
    pub tier_bytes: IntCounter,
    pub tier_errors: IntCounter,
}

pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    Metrics {
    flushes: register_int_counter!("sluice_log_flushes_total", "Group-commit flushes").unwrap(),
    flush_bytes: register_int_counter!("sluice_log_flush_bytes_total", "Bytes written in data objects").unwrap(),
    flush_seconds: register_histogram!(
        "sluice_log_flush_seconds",
        "Time to write and commit one flush",
        vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0]
    )
    .unwrap(),
    append_seconds: register_histogram!(
        "sluice_log_append_seconds",
        "Time from an append reaching the flusher's queue to its answer (committed or refused)",
        vec![0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0]
    )
    .unwrap(),
    flush_stage_seconds: register_histogram_vec!(
        "sluice_log_flush_stage_seconds",
        "Time of one flush stage: put (object), commit (metadata), journal (append and sync, as the flusher waits for them), journal_sync (the write and sync alone), upload",
        &["stage"],
        vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0]
    )
    .unwrap(),
    batches_appended: register_int_counter!("sluice_log_batches_appended_total", "Record batches committed").unwrap(),
    records_appended: register_int_counter!("sluice_log_records_appended_total", "Records committed").unwrap(),
    objects_deleted: register_int_counter!("sluice_log_objects_deleted_total", "Data objects garbage-collected")
        .unwrap(),
    tail_reads: register_int_counter!(
        "sluice_log_tail_reads_total",
        "Partition reads served from the tail cache"
    )
    .unwrap(),
    object_reads: register_int_counter!("sluice_log_object_reads_total", "Ranged reads from data objects").unwrap(),
    read_aheads: register_int_counter!(
        "sluice_log_read_aheads_total",
        "Cold reads started ahead of a reader going through a partition in order"
    )
    .unwrap(),
    read_ahead_hits: register_int_counter!("sluice_log_read_ahead_hits_total", "Reads answered from a read ahead")
        .unwrap(),
    compactions: register_int_counter!(
        "sluice_log_compactions_total",
        "Segments written by compacting flush objects"
    )
    .unwrap(),
    cleaner_bytes_read: register_int_counter!(
        "sluice_log_cleaner_bytes_read_total",
        "Bytes of batches the log cleaner read (cleanup.policy=compact)"
    )
    .unwrap(),
    cleaner_records_removed: register_int_counter!(
        "sluice_log_cleaner_records_removed_total",
        "Records the log cleaner removed: superseded, keyless, aborted, expired tombstones"
    )
    .unwrap(),
    tier_segments: register_int_counter!(
        "sluice_log_tier_segments_total",
        "Segments moved to the tier store (remote.storage.enable)"
    )
    .unwrap(),
    tier_bytes: register_int_counter!(
        "sluice_log_tier_bytes_total",
        "Bytes of batches moved to the tier store"
    )
    .unwrap(),
    tier_errors: register_int_counter!(
        "sluice_log_tier_errors_total",
        "Tiering passes stopped by an error (the tier store failing): nothing is deleted, the next pass tries again"
    )
    .unwrap(),
}
});

#[derive(Debug, Clone)]
pub struct LogOptions {
    pub node_id: i32,
    /// How long the flusher gathers batches before writing an object.
    pub flush_interval: Duration,
    /// Write sooner once this many bytes are pending.
    pub flush_bytes: usize,
    /// Memory for recently written batches, across all partitions.
    pub tail_cache_bytes: usize,
    pub retention_check_interval: Duration,
    /// Age before an object unknown to the metadata store is deleted.
    pub gc_orphan_grace: Duration,
    /// Flush objects older than this are compacted into per-partition segments.
    pub compaction_min_age: Duration,
    /// Largest segment compaction writes.
    pub segment_bytes: usize,
    /// A partition's batches in one flush object that add up to this much are not
    /// compacted (`compaction.rs`).
    pub compaction_keep_run_bytes: usize,
    /// Memory for the log cleaner's key map (`cleanup.policy=compact`); a partition with
    /// more keys to clean is cleaned in several passes.
    pub compaction_memory: usize,
    /// Tests only: how long the cleaner waits between writing a rewrite and committing it.
    pub cleaner_commit_pause: Duration,
    /// Tests only: how long tiering waits between verifying a tier segment and committing it.
    pub tier_commit_pause: Duration,
    /// A local journal directory (single node only): flushes are acknowledged once
    /// journaled, and uploaded to the object store in groups.
    pub journal: Option<std::path::PathBuf>,
    /// With a journal: the longest a journaled flush waits for its upload.
    pub upload_interval: Duration,
    pub defaults: TopicDefaults,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            node_id: 0,
            flush_interval: Duration::ZERO,
            flush_bytes: 4 << 20,
            tail_cache_bytes: 256 << 20,
            retention_check_interval: Duration::from_secs(30),
            gc_orphan_grace: Duration::from_secs(600),
            compaction_min_age: Duration::from_secs(60),
            segment_bytes: 64 << 20,
            compaction_keep_run_bytes: 512 << 10,
            compaction_memory: 128 << 20,
            cleaner_commit_pause: Duration::ZERO,
            tier_commit_pause: Duration::ZERO,
            journal: None,
            upload_interval: Duration::from_millis(250),
            defaults: TopicDefaults::default(),
        }
    }
}

pub struct Topic {
    pub id: Uuid,
    pub name: String,
    overrides: RwLock<BTreeMap<String, String>>,
    config: RwLock<TopicConfig>,
    partitions: RwLock<Vec<Arc<Partition>>>,
}

impl Topic {
    pub fn config(&self) -> TopicConfig {
        self.config.read().unwrap().clone()
    }
    pub fn overrides(&self) -> BTreeMap<String, String> {
        self.overrides.read().unwrap().clone()
    }
    pub fn partition_count(&self) -> i32 {
        self.partitions.read().unwrap().len() as i32
    }
    pub fn partition(&self, index: i32) -> Option<Arc<Partition>> {
        self.partitions
            .read()
            .unwrap()
            .get(usize::try_from(index).ok()?)
            .cloned()
    }
}

pub(crate) struct TailBatch {
    base_offset: i64,
    last_offset: i64,
    data: Bytes,
}

pub struct Partition {
    pub topic_id: Uuid,
    pub index: i32,
    /// The leader per the latest metadata this broker has read; -1: none.
    leader: AtomicI32,
    state: Mutex<PartitionState>,
    /// Every batch below this offset was in a segment when compaction last looked, so the
    /// next pass starts here instead of walking the compacted history again.
    compacted_to: AtomicI64,
    /// The log cleaner has cleaned the partition up to here (`cleaner.rs`).
    cleaned_to: AtomicI64,
    /// Every batch below this offset was in the tier store when tiering last looked.
    tiered_to: AtomicI64,
    /// The timestamp of the oldest tombstone's batch the cleaner kept (`i64::MAX`: none):
    /// a pass is due once it is `delete.retention.ms` old.
    oldest_tombstone: AtomicI64,
}

pub(crate) struct PartitionState {
    log_start: i64,
    high_watermark: i64,
    leader_epoch: i32,
    /// Whether this broker serves the partition, as leader at `leader_epoch`.
    led: bool,
    tail: VecDeque<TailBatch>,
    /// Open transactions: producer id -> first offset. The lowest bounds the LSO.
    open_txns: HashMap<i64, i64>,
    /// Aborted transactions still in the log, by marker offset.
    aborted: VecDeque<sluice_meta::AbortedTxnRow>,
}

/// A partition's offsets as a reader sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    pub log_start: i64,
    pub high_watermark: i64,
    pub leader_epoch: i32,
}

impl Partition {
    pub fn offsets(&self) -> Offsets {
        let s = self.state.lock().unwrap();
        Offsets {
            log_start: s.log_start,
            high_watermark: s.high_watermark,
            leader_epoch: s.leader_epoch,
        }
    }

    /// The offsets, if this broker leads the partition; reads and writes go to leaders only.
    pub fn led_offsets(&self) -> Result<Offsets, LogError> {
        if !self.is_led() {
            return Err(LogError::NotLeader);
        }
        Ok(self.offsets())
    }

    pub fn is_led(&self) -> bool {
        self.state.lock().unwrap().led
    }

    /// The last stable offset: below it every transaction is decided. The high watermark
    /// unless a transaction is open on the partition.
    pub fn last_stable_offset(&self) -> i64 {
        self.state.lock().unwrap().last_stable()
    }

    /// Open transactions on the partition: (producer id, first offset), oldest first.
    pub fn open_transactions(&self) -> Vec<(i64, i64)> {
        let s = self.state.lock().unwrap();
        let mut open: Vec<(i64, i64)> = s.open_txns.iter().map(|(p, f)| (*p, *f)).collect();
        open.sort_by_key(|(_, first)| *first);
        open
    }

    /// The leader as last read from the metadata store (-1: none).
    pub fn leader(&self) -> i32 {
        self.leader.load(Ordering::Relaxed)
    }
}

impl PartitionState {
    fn last_stable(&self) -> i64 {
        self.open_txns
            .values()
            .copied()
            .min()
            .map_or(self.high_watermark, |first| first.min(self.high_watermark))
    }

    /// Aborted transactions overlapping `from..to`: (producer id, first offset).
    fn aborted_between(&self, from: i64, to: i64) -> Vec<(i64, i64)> {
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted
            .range(start..)
            .filter(|a| a.first_offset < to)
            .map(|a| (a.producer_id, a.first_offset))
            .collect()
    }
}

/// The outcome of an acknowledged append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: i64,
    pub log_start_offset: i64,
    /// The append time stamped on the batch (LogAppendTime topics), else -1.
    pub log_append_time_ms: i64,
}

/// What the flusher is asked to do, in order.
pub(crate) enum FlushMsg {
    Append(AppendRequest),
    Control(Control),
}

pub(crate) enum Control {
    /// Replace the idempotent-producer state of a partition (on taking it over).
    Producers((Uuid, i32), Vec<sluice_meta::ProducerStateRow>),
    /// Answered once everything queued before it is flushed.
    Barrier(oneshot::Sender<()>),
}

pub(crate) struct AppendRequest {
    topic: Arc<Topic>,
    partition: Arc<Partition>,
    data: Bytes,
    batches: Vec<batch::BatchInfo>,
    reply: oneshot::Sender<Result<Appended, LogError>>,
    queued: std::time::Instant,
}

#[derive(Default)]
struct Topics {
    by_name: HashMap<String, Arc<Topic>>,
    by_id: HashMap<Uuid, Arc<Topic>>,
}

pub(crate) struct Inner {
    meta: MetaStore,
    store: DataStore,
    opts: LogOptions,
    topics: RwLock<Topics>,
    appends: mpsc::Sender<FlushMsg>,
    /// Set while this broker's lease is in doubt: it then serves no writes.
    suspended: AtomicBool,
    /// Brokers that new partitions go to, least loaded first.
    placement: RwLock<Vec<i32>>,
    /// Whether this broker runs the store-wide garbage collection.
    gc: AtomicBool,
    /// Bumped after every commit, so that long-polling readers wake.
    committed: watch::Sender<u64>,
    /// Objects of large flushes that the journal refers to and the index does not have
    /// yet: not orphans, whatever their age.
    unindexed: std::sync::Mutex<std::collections::HashSet<String>>,
    /// With a journal, why this broker refuses every write until a restart: a flush failed.
    write_failure: std::sync::Mutex<Option<String>>,
    /// Writes producers wait for, which uploads give way to.
    foreground: Arc<store::Foreground>,
    /// Cold reads started ahead of sequential readers.
    read_ahead: read::ReadAheads,
    /// Serialises topic creation and deletion.
    admin: tokio::sync::Mutex<()>,
}

/// Handle to the partition logs. Cheap to clone.
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

impl Log {
    /// Loads topics, partitions and producer state, and starts the flusher
    /// and the retention and garbage-collection loop.
    pub async fn open(meta: MetaStore, store: DataStore, opts: LogOptions) -> Result<Self> {
        // Flushes acknowledged from the journal but not uploaded before a stop go first.
        let journal = match &opts.journal {
            Some(dir) => {
                let dir = dir.clone();
                let (journal, records) =
                    tokio::task::spawn_blocking(move || journal::Journal::open(&dir, journal::SEGMENT_BYTES)).await??;
                let uploaded = journal::recover(&meta, &store, opts.node_id, &records).await?;
                if uploaded > 0 {
                    tracing::info!(records = uploaded, "uploaded journaled flushes left by the last run");
                }
                let mut journal = journal;
                if let Some(last) = records.last() {
                    journal.release(last.seq)?;
                }
                let journal = tokio::task::spawn_blocking(move || journal.prepare().map(|()| journal)).await??;
                Some(journal)
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel(4096);
        let (committed, _) = watch::channel(0);
        let opts_node = opts.node_id;
        let inner = Arc::new(Inner {
            meta,
            store,
            opts,
            topics: RwLock::new(Topics::default()),
            appends: tx,
            suspended: AtomicBool::new(false),
            placement: RwLock::new(vec![opts_node]),
            gc: AtomicBool::new(true),
            committed,
            unindexed: Default::default(),
            write_failure: Default::default(),
            foreground: Default::default(),
            read_ahead: Default::default(),
            admin: tokio::sync::Mutex::new(()),
        });
        let parts = inner.meta.list_partitions().await?;
        for row in inner.meta.list_topics().await? {
            let topic = inner.topic_from_row(&row, &parts);
            inner.register(topic);
        }
        inner.set_aborted(inner.meta.load_aborted_txns().await?);
        let producers = inner.meta.load_producer_states().await?;
        tokio::spawn(flush::run(inner.clone(), rx, producers, journal));
        tokio::spawn(retention::run(inner.clone()));
        Ok(Self { inner })
    }

    /// Partitions of a topic created without a count (`default.partitions`).
    pub fn default_partitions(&self) -> i32 {
        self.inner.opts.defaults.partitions
    }

    pub fn meta(&self) -> &MetaStore {
        &self.inner.meta
    }

    pub fn store_url(&self) -> &str {
        self.inner.store.url()
    }

    pub fn options(&self) -> &LogOptions {
        &self.inner.opts
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.inner.topics.read().unwrap().by_name.get(name).cloned()
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.inner.topics.read().unwrap().by_id.get(&id).cloned()
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        let mut all: Vec<_> = self.inner.topics.read().unwrap().by_name.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Subscribes to commit notifications (for long-polling fetches).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.committed.subscribe()
    }

    /// Creates a topic; with `validate_only` checks everything but creates nothing.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: Option<i32>,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>, LogError> {
        config::validate_topic_name(name)?;
        self.check_configs(&configs)?;
        let partitions = partitions.unwrap_or(self.inner.opts.defaults.partitions);
        if partitions < 1 {
            return Err(LogError::InvalidPartitions(format!(
                "Number of partitions must be at least 1, got {partitions}"
            )));
        }
        let _guard = self.inner.admin.lock().await;
        if self.topic(name).is_some() {
            return Err(LogError::TopicExists);
        }
        if validate_only {
            let row = TopicRow {
                id: Uuid::nil(),
                name: name.into(),
                partitions,
                configs,
                created_ms: 0,
            };
            return Ok(self.inner.topic_from_row(&row, &[]));
        }
        let leaders = self.inner.placement.read().unwrap().clone();
        let row = self
            .inner
            .meta
            .create_topic(name, partitions, &configs, &leaders)
            .await?
            .ok_or(LogError::TopicExists)?;
        let parts = self.inner.meta.list_topic_partitions(row.id).await?;
        let topic = self.inner.topic_from_row(&row, &parts);
        self.inner.register(topic.clone());
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    pub async fn delete_topic(&self, name: &str) -> Result<Uuid, LogError> {
        let _guard = self.inner.admin.lock().await;
        let topic = self.topic(name).ok_or(LogError::UnknownTopicOrPartition)?;
        self.inner.meta.delete_topic(topic.id).await?;
        let mut topics = self.inner.topics.write().unwrap();
        topics.by_name.remove(name);
        topics.by_id.remove(&topic.id);
        tracing::info!(topic = name, "deleted topic");
        Ok(topic.id)
    }

    pub async fn add_partitions(&self, name: &str, count: i32, validate_only: bool) -> Result<(), LogError> {
        let _guard = self.inner.admin.lock().await;
        let topic = self.topic(name).ok_or(LogError::UnknownTopicOrPartition)?;
        let current = topic.partition_count();
        if count <= current {
            return Err(LogError::InvalidPartitions(format!(
                "Topic currently has {current} partitions, which is higher than or equal to the requested {count}"
            )));
        }
        if validate_only {
            return Ok(());
        }
        let leaders = self.inner.placement.read().unwrap().clone();
        self.inner.meta.add_partitions(topic.id, count, &leaders).await?;
        let rows = self.inner.meta.list_topic_partitions(topic.id).await?;
        let mut parts = topic.partitions.write().unwrap();
        for index in current..count {
            parts.push(self.inner.partition_from_rows(topic.id, index, &rows));
        }
        Ok(())
    }

    /// Checks a topic's overrides, each and together.
    fn check_configs(&self, overrides: &BTreeMap<String, String>) -> Result<(), LogError> {
        config::validate_all(overrides)?;
        let resolved = self.inner.opts.defaults.resolve(overrides);
        config::check_combination(&resolved, self.inner.store.tier_url().is_some())
    }

    /// Replaces a topic's config overrides.
    pub async fn set_topic_configs(
        &self,
        name: &str,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), LogError> {
        let topic = self.topic(name).ok_or(LogError::UnknownTopicOrPartition)?;
        self.check_configs(&overrides)?;
        if validate_only {
            return Ok(());
        }
        self.inner.meta.set_topic_configs(topic.id, &overrides).await?;
        *topic.config.write().unwrap() = self.inner.opts.defaults.resolve(&overrides);
        *topic.overrides.write().unwrap() = overrides;
        Ok(())
    }

    /// Validates `data` and queues it for the next flush; resolves once the
    /// batches are durable, or with the reason they were refused.
    pub async fn append(&self, topic: &Arc<Topic>, partition: i32, data: Bytes) -> Result<Appended, LogError> {
        let rx = self.submit(topic, partition, data).await?;
        rx.await.map_err(|_| LogError::Storage("log is shutting down".into()))?
    }

    /// Like [`Log::append`] but returns as soon as the batches are queued, so
    /// that a connection can keep its requests in order while they commit.
    pub async fn submit(
        &self,
        topic: &Arc<Topic>,
        partition: i32,
        data: Bytes,
    ) -> Result<oneshot::Receiver<Result<Appended, LogError>>, LogError> {
        let part = topic.partition(partition).ok_or(LogError::UnknownTopicOrPartition)?;
        if !part.is_led() || self.inner.suspended.load(Ordering::Relaxed) {
            return Err(LogError::NotLeader);
        }
        let config = topic.config();
        let max = config.max_message_bytes.max(0) as usize;
        let mut data = data;
        let mut batches = batch::validate_batches(&data, max)?;
        if let Some(to) = config.compression {
            if let Some(recompressed) = batch::recompress(&data, &batches, to)? {
                data = recompressed;
                batches = batch::validate_batches(&data, max)?;
            }
        }
        if batches.len() > 1 && batches.iter().any(|b| b.producer_id >= 0) {
            return Err(LogError::InvalidRecord(
                "idempotent producers must send exactly one batch per partition".into(),
            ));
        }
        if batches.iter().any(|b| b.is_transactional() && b.producer_id < 0) {
            return Err(LogError::InvalidRecord(
                "a transactional batch needs a producer id".into(),
            ));
        }
        batch::check_timestamps(&batches, &config, sluice_meta::now_ms())?;
        if config.compact {
            batch::check_keys(&data, &batches)?;
        }
        self.queue(topic, part, data, batches).await
    }

    /// Writes a transaction marker (COMMIT or ABORT control batch) for `producer_id` at
    /// `producer_epoch` into a partition this broker leads; resolves once it is durable.
    pub async fn write_marker(
        &self,
        topic: &Arc<Topic>,
        partition: i32,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
    ) -> Result<Appended, LogError> {
        let part = topic.partition(partition).ok_or(LogError::UnknownTopicOrPartition)?;
        if !part.is_led() || self.inner.suspended.load(Ordering::Relaxed) {
            return Err(LogError::NotLeader);
        }
        let data = batch::marker_batch(producer_id, producer_epoch, commit, coordinator_epoch);
        let info = batch::parse_header(&data, 0)?;
        let rx = self.queue(topic, part, data, vec![info]).await?;
        rx.await.map_err(|_| LogError::Storage("log is shutting down".into()))?
    }

    async fn queue(
        &self,
        topic: &Arc<Topic>,
        part: Arc<Partition>,
        data: Bytes,
        batches: Vec<batch::BatchInfo>,
    ) -> Result<oneshot::Receiver<Result<Appended, LogError>>, LogError> {
        let (reply, rx) = oneshot::channel();
        let req = AppendRequest {
            topic: topic.clone(),
            partition: part,
            data,
            batches,
            reply,
            queued: std::time::Instant::now(),
        };
        // A full queue holds the caller back until the flusher catches up.
        self.inner
            .appends
            .send(FlushMsg::Append(req))
            .await
            .map_err(|_| LogError::Storage("log is shutting down".into()))?;
        Ok(rx)
    }

    /// Why this broker refuses every write until a restart, if it does: with a journal,
    /// after a failed flush (a restart recovers the journal). `/health` reports it.
    pub fn write_failure(&self) -> Option<String> {
        self.inner.write_failure.lock().unwrap().clone()
    }

    /// Raises the log start offset to `offset` (-1: the high watermark).
    /// Returns the new low watermark.
    pub async fn delete_records(&self, topic: &Topic, partition: i32, offset: i64) -> Result<i64, LogError> {
        let part = topic.partition(partition).ok_or(LogError::UnknownTopicOrPartition)?;
        let o = part.led_offsets()?;
        let target = if offset == -1 { o.high_watermark } else { offset };
        if target < 0 || target > o.high_watermark {
            return Err(LogError::OffsetOutOfRange);
        }
        retention::advance_log_start(&self.inner, &part, target).await?;
        Ok(part.offsets().log_start)
    }

    /// Runs one retention and garbage-collection pass now.
    pub async fn enforce_retention(&self) -> Result<()> {
        retention::pass(&self.inner).await
    }

    /// Cleans this broker's partitions of compacted topics now (`cleanup.policy=compact`).
    pub async fn clean(&self) -> Result<CleanReport> {
        cleaner::pass(&self.inner).await
    }

    /// Compacts this broker's partitions' older flush objects into segments now.
    pub async fn compact(&self) -> Result<CompactionReport> {
        compaction::pass(&self.inner).await
    }

    /// Deletes objects that no commit recorded, older than `grace`.
    pub async fn collect_orphans(&self, grace: Duration) -> Result<usize> {
        retention::collect_orphans(&self.inner, grace).await
    }

    /// Moves this broker's partitions' batches past local retention to the tier store now.
    pub async fn tier(&self) -> Result<TierReport> {
        tiering::pass(&self.inner).await
    }

    /// Each partition's bytes in the main store and in the tier store.
    pub async fn partition_sizes(&self, topic: &Topic) -> Result<BTreeMap<i32, sluice_meta::PartitionSize>> {
        self.inner.meta.partition_sizes(topic.id).await
    }

    /// The tier store's URL (`--tier-store`), if there is one.
    pub fn tier_url(&self) -> Option<&str> {
        self.inner.store.tier_url()
    }

    /// A partition's first offset in the main store (KIP-405's local log start): the log
    /// start, or past the batches moved to the tier store; and the last tiered offset.
    pub async fn local_log_start(&self, topic: &Topic, partition: i32) -> Result<(i64, Option<i64>), LogError> {
        let part = topic.partition(partition).ok_or(LogError::UnknownTopicOrPartition)?;
        let tiered = self.inner.meta.tiered_end(topic.id, partition).await?;
        let o = part.offsets();
        Ok((
            tiered.map_or(o.log_start, |t| (t + 1).clamp(o.log_start, o.high_watermark)),
            tiered,
        ))
    }

    /// End offset of `epoch` per the leader epoch history: (epoch, end offset),
    /// or None if the epoch is unknown (newer than the current one).
    pub async fn end_offset_for_epoch(
        &self,
        topic: &Topic,
        partition: i32,
        epoch: i32,
    ) -> Result<Option<(i32, i64)>, LogError> {
        let part = topic.partition(partition).ok_or(LogError::UnknownTopicOrPartition)?;
        let o = part.led_offsets()?;
        if epoch > o.leader_epoch {
            return Ok(None);
        }
        let history = self.inner.meta.epoch_history(topic.id, partition).await?;
        let found = history.iter().rev().find(|(e, _)| *e <= epoch).copied();
        let Some((e, _)) = found else {
            return Ok(None);
        };
        let end = history
            .iter()
            .find(|(next, _)| *next > e)
            .map(|(_, start)| *start)
            .unwrap_or(o.high_watermark);
        Ok(Some((e, end)))
    }
}

impl Partition {
    fn new(topic_id: Uuid, index: i32, row: Option<&PartitionRow>, node_id: i32) -> Self {
        let (log_start, high_watermark, leader_epoch, leader) = row
            .map(|p| (p.log_start_offset, p.high_watermark, p.leader_epoch, p.leader))
            .unwrap_or((0, 0, 0, -1));
        Self {
            topic_id,
            index,
            leader: AtomicI32::new(leader),
            compacted_to: AtomicI64::new(0),
            cleaned_to: AtomicI64::new(0),
            tiered_to: AtomicI64::new(0),
            oldest_tombstone: AtomicI64::new(i64::MAX),
            state: Mutex::new(PartitionState {
                log_start,
                high_watermark,
                leader_epoch,
                led: leader == node_id,
                tail: VecDeque::new(),
                open_txns: HashMap::new(),
                aborted: VecDeque::new(),
            }),
        }
    }
}

/// Index rows looked at per query when background work walks a partition's index.
const SCAN_PAGE: i64 = if cfg!(test) { 4 } else { 1000 };

/// Visits a partition's index rows from `offset` on, a page at a time, until `visit`
/// returns false or the rows run out: retention and compaction look at the head of a
/// log, and a log may hold millions of rows.
async fn scan_rows(
    meta: &MetaStore,
    part: &Partition,
    mut offset: i64,
    mut visit: impl FnMut(sluice_meta::BatchRow) -> bool,
) -> Result<()> {
    loop {
        let rows = meta.batches_from(part.topic_id, part.index, offset, SCAN_PAGE).await?;
        let (full, next) = (rows.len() as i64 == SCAN_PAGE, rows.last().map(|r| r.last_offset + 1));
        for row in rows {
            if !visit(row) {
                return Ok(());
            }
        }
        match next {
            Some(next) if full => offset = next,
            _ => return Ok(()),
        }
    }
}

impl Inner {
    fn partition_from_rows(&self, topic_id: Uuid, index: i32, parts: &[PartitionRow]) -> Arc<Partition> {
        let row = parts.iter().find(|p| p.topic_id == topic_id && p.partition == index);
        Arc::new(Partition::new(topic_id, index, row, self.opts.node_id))
    }

    fn topic_from_row(&self, row: &TopicRow, parts: &[PartitionRow]) -> Arc<Topic> {
        let partitions = (0..row.partitions)
            .map(|i| self.partition_from_rows(row.id, i, parts))
            .collect();
        Arc::new(Topic {
            id: row.id,
            name: row.name.clone(),
            config: RwLock::new(self.opts.defaults.resolve(&row.configs)),
            overrides: RwLock::new(row.configs.clone()),
            partitions: RwLock::new(partitions),
        })
    }

    fn register(&self, topic: Arc<Topic>) {
        let mut t = self.topics.write().unwrap();
        t.by_id.insert(topic.id, topic.clone());
        t.by_name.insert(topic.name.clone(), topic);
    }

    fn partition(&self, topic_id: Uuid, index: i32) -> Option<Arc<Partition>> {
        self.topics.read().unwrap().by_id.get(&topic_id)?.partition(index)
    }

    /// Replaces a partition's aborted transactions with those stored.
    fn set_aborted(&self, rows: Vec<sluice_meta::AbortedTxnRow>) {
        let mut by_part: HashMap<(Uuid, i32), VecDeque<sluice_meta::AbortedTxnRow>> = HashMap::new();
        for r in rows {
            by_part.entry((r.topic_id, r.partition)).or_default().push_back(r);
        }
        for ((topic_id, index), rows) in by_part {
            if let Some(part) = self.partition(topic_id, index) {
                part.state.lock().unwrap().aborted = rows;
            }
        }
    }

    fn topic_alive(&self, id: Uuid) -> bool {
        self.topics.read().unwrap().by_id.contains_key(&id)
    }
}

#[cfg(test)]
mod tests;
