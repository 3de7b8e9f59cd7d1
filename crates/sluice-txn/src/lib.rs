//! The transaction coordinator, as Kafka's TransactionCoordinator.
//!
//! Each transactional.id's state (producer id and epoch, state, partitions, groups,
//! timeout) lives in the metadata store, one row per id, written compare-and-set on its
//! version, so a coordinator that moves (its group shard, as for groups) or restarts
//! picks up exactly where the last one stopped. Ending a transaction first records
//! PrepareCommit or PrepareAbort (the decision), then writes a COMMIT or ABORT marker
//! into each of its partitions through the partition's leader, applies or drops the
//! offsets it sent for groups, and records CompleteCommit or CompleteAbort. A
//! background pass finishes whatever a crash left prepared, and aborts transactions
//! open past their timeout under a bumped epoch, which fences their producer.

mod markers;
pub mod rest;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use prometheus::{
    register_histogram, register_int_counter_vec, register_int_gauge, register_int_gauge_vec, Histogram, IntCounterVec,
    IntGauge, IntGaugeVec,
};
use sluice_cluster::Cluster;
use sluice_log::Log;
use sluice_meta::{new_txn, now_ms, MetaStore, TxnRow, TxnState};

pub use sluice_meta::TxnRow as Transaction;
pub use sluice_meta::TxnState as State;

pub type TxnResult<T> = Result<T, ResponseError>;

#[derive(Debug, Clone)]
pub struct TxnOptions {
    /// The longest `transaction.timeout.ms` a producer may ask for.
    pub max_timeout: Duration,
    /// A transactional.id unused this long is forgotten.
    pub id_expiration: Duration,
    /// How often the coordinator looks for transactions to finish or time out.
    pub check_interval: Duration,
    /// Test hook: the wait between recording an outcome and writing its markers.
    pub pause_before_markers: Duration,
}

impl Default for TxnOptions {
    fn default() -> Self {
        Self {
            max_timeout: Duration::from_secs(15 * 60),
            id_expiration: Duration::from_secs(7 * 24 * 3600),
            check_interval: Duration::from_millis(500),
            pause_before_markers: Duration::ZERO,
        }
    }
}

struct Metrics {
    open: IntGauge,
    ended: IntCounterVec,
    commit_seconds: Histogram,
    lso_lag: IntGaugeVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    open: register_int_gauge!(
        "sluice_txn_open",
        "Transactions open or being completed, of the transactional ids this broker coordinates"
    )
    .unwrap(),
    ended: register_int_counter_vec!(
        "sluice_txn_ended_total",
        "Transactions ended, by outcome (commit, abort, timeout)",
        &["outcome"]
    )
    .unwrap(),
    commit_seconds: register_histogram!(
        "sluice_txn_commit_seconds",
        "EndTxn from request to every marker written",
        vec![0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]
    )
    .unwrap(),
    lso_lag: register_int_gauge_vec!(
        "sluice_partition_lso_lag",
        "High watermark minus last stable offset, for led partitions with an open transaction",
        &["topic", "partition"]
    )
    .unwrap(),
});

/// The transaction coordinator of this broker. Cheap to clone.
#[derive(Clone)]
pub struct TxnCoordinator {
    inner: Arc<Inner>,
}

struct Inner {
    meta: MetaStore,
    log: Log,
    groups: sluice_groups::Coordinator,
    cluster: Cluster,
    opts: TxnOptions,
    /// One lock per transactional.id: its operations run one at a time on this broker.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn storage(e: anyhow::Error) -> ResponseError {
    tracing::warn!(error = %format!("{e:#}"), "transaction state store");
    ResponseError::CoordinatorNotAvailable
}

/// The producer must be the id's current one, at its current epoch.
fn check_producer(row: &TxnRow, producer_id: i64, epoch: i16) -> TxnResult<()> {
    if row.producer_id != producer_id {
        return Err(ResponseError::InvalidProducerIdMapping);
    }
    if epoch != row.producer_epoch {
        return Err(ResponseError::ProducerFenced);
    }
    Ok(())
}

impl TxnCoordinator {
    /// Creates the coordinator and starts its background pass.
    pub fn start(
        meta: MetaStore,
        log: Log,
        groups: sluice_groups::Coordinator,
        cluster: Cluster,
        opts: TxnOptions,
    ) -> Self {
        LazyLock::force(&METRICS);
        let inner = Arc::new(Inner {
            meta,
            log,
            groups,
            cluster,
            opts,
            locks: Mutex::new(HashMap::new()),
        });
        tokio::spawn(background(inner.clone()));
        Self { inner }
    }

    /// Whether this broker coordinates `transactional_id` (the broker of its group shard).
    pub fn owns(&self, transactional_id: &str) -> bool {
        self.inner.groups.owns(transactional_id)
    }

    fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.locks.lock().unwrap();
        if locks.len() > 10_000 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(id.to_string()).or_default().clone()
    }

    fn check_owner(&self, id: &str) -> TxnResult<()> {
        if id.is_empty() {
            return Err(ResponseError::InvalidRequest);
        }
        if self.owns(id) {
            Ok(())
        } else {
            Err(ResponseError::NotCoordinator)
        }
    }

    async fn row(&self, id: &str) -> TxnResult<Option<TxnRow>> {
        self.inner.meta.get_txn(id).await.map_err(storage)
    }

    async fn put(&self, row: &TxnRow) -> TxnResult<TxnRow> {
        let mut next = row.clone();
        next.updated_ms = now_ms();
        if !self.inner.meta.put_txn(&next).await.map_err(storage)? {
            // Another coordinator wrote in between (a shard moving): let the client retry.
            return Err(ResponseError::ConcurrentTransactions);
        }
        next.version += 1;
        Ok(next)
    }

    /// InitProducerId with a transactional.id: a new producer id at epoch 0, or the
    /// existing one at the next epoch, which fences every older instance. An open
    /// transaction is aborted first (KIP-360: a producer passing its current id and
    /// epoch recovers after an abortable error the same way).
    pub async fn init_producer_id(
        &self,
        id: &str,
        timeout_ms: i32,
        producer_id: i64,
        epoch: i16,
    ) -> TxnResult<(i64, i16)> {
        self.check_owner(id)?;
        if timeout_ms <= 0 || timeout_ms as u128 > self.inner.opts.max_timeout.as_millis() {
            return Err(ResponseError::InvalidTransactionTimeout);
        }
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let Some(mut row) = self.row(id).await? else {
            let pid = self.inner.meta.next_producer_id().await.map_err(storage)?;
            let row = new_txn(id, pid, timeout_ms);
            self.put(&row).await?;
            return Ok((pid, 0));
        };
        if producer_id >= 0 {
            if producer_id != row.producer_id {
                return Err(ResponseError::InvalidProducerIdMapping);
            }
            // The current epoch, or the one before it if that bump's answer was lost.
            if epoch != row.producer_epoch && epoch != row.producer_epoch.wrapping_sub(1) {
                return Err(ResponseError::ProducerFenced);
            }
        }
        if row.state.is_prepared() {
            row = self.complete(row).await?;
        }
        if row.state == TxnState::Ongoing {
            row = self.abort_fencing(row).await?;
        }
        if row.producer_epoch >= i16::MAX - 1 {
            row.producer_id = self.inner.meta.next_producer_id().await.map_err(storage)?;
            row.producer_epoch = 0;
        } else {
            row.producer_epoch += 1;
        }
        row.state = TxnState::Empty;
        row.timeout_ms = timeout_ms;
        row.partitions.clear();
        row.groups.clear();
        let row = self.put(&row).await?;
        Ok((row.producer_id, row.producer_epoch))
    }

    /// Aborts an open transaction under the next epoch: markers at that epoch fence the
    /// producer's older one on every partition it wrote.
    async fn abort_fencing(&self, mut row: TxnRow) -> TxnResult<TxnRow> {
        row.producer_epoch = row.producer_epoch.saturating_add(1);
        row.state = TxnState::PrepareAbort;
        let row = self.put(&row).await?;
        self.complete(row).await
    }

    /// The state a transaction must be in for partitions or groups to join it; moves an
    /// Empty or completed one to Ongoing.
    fn begin(row: &mut TxnRow) -> TxnResult<()> {
        match row.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => Err(ResponseError::ConcurrentTransactions),
            TxnState::Ongoing => Ok(()),
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                row.state = TxnState::Ongoing;
                row.started_ms = now_ms();
                row.partitions.clear();
                row.groups.clear();
                Ok(())
            }
        }
    }

    /// AddPartitionsToTxn: the partitions join the producer's transaction.
    pub async fn add_partitions(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> TxnResult<()> {
        self.check_owner(id)?;
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let mut row = self.row(id).await?.ok_or(ResponseError::InvalidProducerIdMapping)?;
        check_producer(&row, producer_id, epoch)?;
        let fresh = row.state != TxnState::Ongoing;
        Self::begin(&mut row)?;
        let before = row.partitions.len();
        row.partitions.extend(partitions.iter().cloned());
        if fresh || row.partitions.len() != before {
            self.put(&row).await?;
        }
        Ok(())
    }

    /// AddPartitionsToTxn v4+ with verify_only: whether each partition is in the
    /// producer's open transaction (KIP-890).
    pub async fn verify_partitions(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> TxnResult<Vec<bool>> {
        self.check_owner(id)?;
        let row = self.row(id).await?.ok_or(ResponseError::InvalidProducerIdMapping)?;
        check_producer(&row, producer_id, epoch)?;
        let open = row.state == TxnState::Ongoing;
        Ok(partitions.iter().map(|p| open && row.partitions.contains(p)).collect())
    }

    /// AddOffsetsToTxn: the group's offsets commit or abort with the transaction.
    pub async fn add_offsets(&self, id: &str, producer_id: i64, epoch: i16, group: &str) -> TxnResult<()> {
        self.check_owner(id)?;
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let mut row = self.row(id).await?.ok_or(ResponseError::InvalidProducerIdMapping)?;
        check_producer(&row, producer_id, epoch)?;
        let fresh = row.state != TxnState::Ongoing;
        Self::begin(&mut row)?;
        if row.groups.insert(group.to_string()) || fresh {
            self.put(&row).await?;
        }
        Ok(())
    }

    /// For TxnOffsetCommit (on the group's coordinator, any broker): the producer is the
    /// id's current one and its open transaction includes the group.
    pub async fn check_offset_commit(&self, id: &str, producer_id: i64, epoch: i16, group: &str) -> TxnResult<()> {
        let row = self.row(id).await?.ok_or(ResponseError::InvalidProducerIdMapping)?;
        check_producer(&row, producer_id, epoch)?;
        if row.state != TxnState::Ongoing || !row.groups.contains(group) {
            return Err(ResponseError::InvalidTxnState);
        }
        Ok(())
    }

    /// For a partition leader: a transactional batch from a producer with no open
    /// transaction on the partition yet must belong to its id's open transaction, which
    /// lists the partition. Otherwise INVALID_TXN_STATE (or a fencing error).
    pub async fn verify_produce(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> TxnResult<()> {
        let row = self.row(id).await?.ok_or(ResponseError::InvalidProducerIdMapping)?;
        if row.producer_id != producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if epoch < row.producer_epoch {
            return Err(ResponseError::InvalidProducerEpoch);
        }
        if row.state != TxnState::Ongoing || !row.partitions.contains(&(topic.to_string(), partition)) {
            return Err(ResponseError::InvalidTxnState);
        }
        Ok(())
    }

    /// EndTxn: commits or aborts the producer's open transaction. Answers once every
    /// marker is written; a retry of an ended transaction's EndTxn gets the same answer.
    pub async fn end_txn(&self, id: &str, producer_id: i64, epoch: i16, commit: bool) -> TxnResult<()> {
        self.check_owner(id)?;
        let started = Instant::now();
        let lock = self.lock(id);
        let Ok(_guard) = lock.try_lock() else {
            return Err(ResponseError::ConcurrentTransactions);
        };
        let mut row = self.row(id).await?.ok_or(ResponseError::InvalidProducerIdMapping)?;
        check_producer(&row, producer_id, epoch)?;
        match (row.state, commit) {
            (TxnState::Ongoing, _) => {
                row.state = if commit {
                    TxnState::PrepareCommit
                } else {
                    TxnState::PrepareAbort
                };
                let row = self.put(&row).await?;
                if !self.inner.opts.pause_before_markers.is_zero() {
                    tokio::time::sleep(self.inner.opts.pause_before_markers).await;
                }
                self.complete(row).await?;
            }
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                self.complete(row).await?;
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => return Ok(()),
            _ => return Err(ResponseError::InvalidTxnState),
        }
        METRICS
            .ended
            .with_label_values(&[if commit { "commit" } else { "abort" }])
            .inc();
        if commit {
            METRICS.commit_seconds.observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Writes a prepared transaction's markers and its groups' offsets, then records it
    /// complete. Every step may run again after a crash: a second marker for a
    /// transaction ends nothing, and the offsets are moved once.
    async fn complete(&self, row: TxnRow) -> TxnResult<TxnRow> {
        let commit = row.state == TxnState::PrepareCommit;
        markers::write_all(&self.inner, &row.partitions, row.producer_id, row.producer_epoch, commit)
            .await
            .map_err(|e| {
                tracing::warn!(transactional_id = %row.transactional_id, error = %e, "writing transaction markers; will retry");
                ResponseError::ConcurrentTransactions
            })?;
        self.inner
            .meta
            .finish_txn_offsets(row.producer_id, &row.groups, commit)
            .await
            .map_err(storage)?;
        let mut done = row;
        done.state = if commit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        done.partitions = BTreeSet::new();
        done.groups = BTreeSet::new();
        self.put(&done).await
    }

    /// Every transactional id known to the store.
    pub async fn list(&self) -> anyhow::Result<Vec<TxnRow>> {
        self.inner.meta.list_txns().await
    }

    pub async fn describe(&self, id: &str) -> anyhow::Result<Option<TxnRow>> {
        self.inner.meta.get_txn(id).await
    }

    /// Ends a hanging transaction on one partition (as kafka-transactions.sh abort): an
    /// ABORT marker for the producer whose open transaction starts at `start_offset`.
    /// Runs on the partition's leader, which knows its open transactions. Returns the
    /// producer id it aborted.
    pub async fn abort_hanging(&self, topic: &str, partition: i32, start_offset: i64) -> Result<i64, AbortError> {
        let t = self
            .inner
            .log
            .topic(topic)
            .ok_or_else(|| AbortError::NotFound(format!("unknown topic {topic}")))?;
        let part = t
            .partition(partition)
            .ok_or_else(|| AbortError::NotFound(format!("unknown partition {topic}-{partition}")))?;
        if !part.is_led() {
            return Err(AbortError::NotLeader {
                partition: format!("{topic}-{partition}"),
                leader: part.leader(),
            });
        }
        let (producer_id, _) = part
            .open_transactions()
            .into_iter()
            .find(|(_, first)| *first == start_offset)
            .ok_or_else(|| {
                AbortError::NotFound(format!(
                    "no open transaction starts at offset {start_offset} of {topic}-{partition}"
                ))
            })?;
        let epoch = self
            .inner
            .meta
            .load_partition_producers(t.id, partition)
            .await
            .map_err(|e| AbortError::Failed(format!("{e:#}")))?
            .into_iter()
            .find(|p| p.producer_id == producer_id)
            .map_or(0, |p| p.epoch);
        let parts: BTreeSet<(String, i32)> = [(topic.to_string(), partition)].into();
        markers::write_all(&self.inner, &parts, producer_id, epoch, false)
            .await
            .map_err(AbortError::Failed)?;
        METRICS.ended.with_label_values(&["abort"]).inc();
        Ok(producer_id)
    }
}

/// Why a hanging transaction could not be aborted.
#[derive(Debug, thiserror::Error)]
pub enum AbortError {
    #[error("{0}")]
    NotFound(String),
    #[error("this broker does not lead {partition}; broker {leader} does")]
    NotLeader { partition: String, leader: i32 },
    #[error("writing the abort marker: {0}")]
    Failed(String),
}

/// Finishes prepared transactions (a crash or a coordinator move left them), aborts those
/// open past their timeout, forgets idle ids, and refreshes the gauges.
async fn background(inner: Arc<Inner>) {
    let coordinator = TxnCoordinator { inner: inner.clone() };
    let mut ticks: u64 = 0;
    loop {
        if let Err(e) = pass(&coordinator).await {
            tracing::warn!(error = %format!("{e:#}"), "transaction coordinator pass");
        }
        if ticks.is_multiple_of(120) {
            let cutoff = now_ms() - inner.opts.id_expiration.as_millis() as i64;
            match inner.meta.expire_txns(cutoff).await {
                Ok(n) if n > 0 => tracing::info!(expired = n, "forgot idle transactional ids"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "expiring transactional ids"),
            }
        }
        ticks += 1;
        lso_gauges(&inner.log);
        tokio::time::sleep(inner.opts.check_interval).await;
    }
}

async fn pass(c: &TxnCoordinator) -> anyhow::Result<()> {
    let mut open = 0;
    for row in c.inner.meta.unfinished_txns().await? {
        if !c.owns(&row.transactional_id) {
            continue;
        }
        open += 1;
        let lock = c.lock(&row.transactional_id);
        // An operation on the id is running: it will finish the transaction itself.
        let Ok(_guard) = lock.try_lock() else { continue };
        let Some(row) = c.inner.meta.get_txn(&row.transactional_id).await? else {
            continue;
        };
        let outcome = match row.state {
            s if s.is_prepared() => c.complete(row).await.map(|_| None),
            TxnState::Ongoing if now_ms() - row.started_ms > row.timeout_ms as i64 => {
                tracing::info!(
                    transactional_id = %row.transactional_id,
                    timeout_ms = row.timeout_ms,
                    "aborting a transaction open past its timeout"
                );
                c.abort_fencing(row).await.map(|_| Some("timeout"))
            }
            _ => Ok(None),
        };
        match outcome {
            Ok(Some(label)) => METRICS.ended.with_label_values(&[label]).inc(),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = ?e, "transaction not finished yet"),
        }
    }
    METRICS.open.set(open);
    Ok(())
}

fn lso_gauges(log: &Log) {
    METRICS.lso_lag.reset();
    for topic in log.topics() {
        for index in 0..topic.partition_count() {
            let Some(part) = topic.partition(index) else { continue };
            if !part.is_led() {
                continue;
            }
            let lag = part.offsets().high_watermark - part.last_stable_offset();
            if lag > 0 {
                METRICS
                    .lso_lag
                    .with_label_values(&[topic.name.as_str(), &index.to_string()])
                    .set(lag);
            }
        }
    }
}
