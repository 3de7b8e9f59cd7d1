//! The metadata store: topics, partitions (high watermarks, log start, leader
//! epochs), the offset index of stored batches, data objects, and idempotent
//! producer state.
//!
//! SQLite is the embedded default. Every statement is plain SQL shared by all
//! backends; the few dialect differences (connection options, upserts) are kept
//! in this file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyPool, Executor, Row, Transaction};
use uuid::Uuid;

mod acls;
mod cluster;
mod txn;
mod users;
pub use acls::AclRow;
pub use cluster::{group_shard, BrokerRegistration, BrokerRow, Leadership, LeaseRow, Slot, GROUP_SHARDS};
pub use txn::{new_txn, TxnRow, TxnState};
pub use users::ScramRow;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRow {
    pub id: Uuid,
    pub name: String,
    pub partitions: i32,
    /// Per-topic overrides only; defaults live with the broker.
    pub configs: BTreeMap<String, String>,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRow {
    pub topic_id: Uuid,
    pub partition: i32,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub leader_epoch: i32,
    /// The broker leading it; -1 when nobody does.
    pub leader: i32,
}

/// One stored record batch: where it lives and which offsets it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRow {
    pub topic_id: Uuid,
    pub partition: i32,
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub object_key: String,
    pub position: i64,
    pub length: i32,
}

/// A batch an idempotent producer wrote, kept to answer retries with the original offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqEntry {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerStateRow {
    pub topic_id: Uuid,
    pub partition: i32,
    pub producer_id: i64,
    pub epoch: i16,
    pub recent: Vec<SeqEntry>,
    /// First offset of the producer's open transaction on the partition; -1: none.
    pub txn_first_offset: i64,
}

/// An aborted transaction's range on one partition, for read_committed readers to filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxnRow {
    pub topic_id: Uuid,
    pub partition: i32,
    pub producer_id: i64,
    pub first_offset: i64,
    /// The offset of the abort marker.
    pub last_offset: i64,
}

/// A partition's new high watermark, fenced on the leader epoch that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkUpdate {
    pub topic_id: Uuid,
    pub partition: i32,
    pub high_watermark: i64,
    pub leader_epoch: i32,
}

/// Everything one group-commit flush records, in one transaction.
#[derive(Debug, Clone, Default)]
pub struct FlushCommit {
    /// The data objects written (key, size); one or more flushes' worth.
    pub objects: Vec<(String, i64)>,
    pub batches: Vec<BatchRow>,
    pub watermarks: Vec<WatermarkUpdate>,
    pub producers: Vec<ProducerStateRow>,
    pub aborted: Vec<AbortedTxnRow>,
}

/// The durable part of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    pub group_id: String,
    pub protocol_type: String,
    pub generation: i32,
    pub empty_since_ms: Option<i64>,
    /// The coordinator's snapshot of the group's members; `None` keeps the stored one.
    pub members: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_ms: i64,
}

/// Which SQL dialect the store speaks. Statements are shared; only what
/// cannot be written portably (connection setup, DDL, the clock) differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The database server's clock in Unix milliseconds, as an SQL expression.
    /// Leases are timed on it so that brokers' clocks never need to agree.
    fn now_ms_sql(self) -> &'static str {
        match self {
            Backend::Sqlite => "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }
}

#[derive(Clone)]
pub struct MetaStore {
    /// Reads.
    readers: AnyPool,
    /// Writes. On SQLite this is one connection, so that writers queue here in
    /// order instead of meeting on SQLite's write lock, whose busy handler sleeps
    /// 1, 2, 5, 10 ms... between tries: with a flush committing every millisecond,
    /// a lease renewal that collided with it held produce acks for 5-20 ms. On
    /// PostgreSQL it is the same pool as `readers`.
    writer: AnyPool,
    backend: Backend,
}

impl MetaStore {
    /// Opens the store at `url` (`sqlite://PATH`, created if missing, or
    /// `postgres://...`) and applies migrations.
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite:") {
            // rwc: create the file if it is missing.
            let sep = if path.contains('?') { '&' } else { '?' };
            (Backend::Sqlite, format!("sqlite:{path}{sep}mode=rwc"))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            (Backend::Postgres, url.to_string())
        } else {
            bail!("unsupported metadata store URL {url:?}: expected sqlite://PATH or postgres://...");
        };
        let connect = |max_connections: u32| {
            AnyPoolOptions::new()
                .max_connections(max_connections)
                // A ping before every use is one more round trip to SQLite's worker thread
                // on each flush commit, and a local file does not drop connections.
                .test_before_acquire(backend == Backend::Postgres)
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        if backend == Backend::Sqlite {
                            // WAL for concurrent readers; FULL so that a commit acknowledged to a
                            // producer survives power loss too. Temporary storage in memory: a
                            // flush commit's statement journal was otherwise a new file in
                            // /var/tmp each time (created, written, unlinked).
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000; \
                                 PRAGMA temp_store = MEMORY",
                            )
                            .await?;
                        } else {
                            // A broker frozen mid-transaction (SIGSTOP, a VM pause) must not hold row
                            // locks that the controller needs to fail its partitions over: the server
                            // ends such a session after 1 s. Transactions here last milliseconds.
                            conn.execute("SET idle_in_transaction_session_timeout = 1000; SET lock_timeout = 10000")
                                .await?;
                        }
                        Ok(())
                    })
                })
                .connect(&url)
        };
        let opening = || format!("opening metadata store {}", redact(&url));
        let (readers, writer) = match backend {
            Backend::Sqlite => {
                let writer = connect(1).await.with_context(opening)?;
                (connect(4).await.with_context(opening)?, writer)
            }
            Backend::Postgres => {
                let pool = connect(8).await.with_context(opening)?;
                (pool.clone(), pool)
            }
        };
        let migrated = match backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&writer).await,
            Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&writer).await,
        };
        migrated.context("migrating metadata store")?;
        Ok(Self {
            readers,
            writer,
            backend,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool for modules that keep their own tables in this store: the
    /// writer, so that their writes queue with the log's (see `writer`).
    pub fn pool(&self) -> &AnyPool {
        &self.writer
    }

    /// The cluster id, created on first use.
    pub async fn cluster_id(&self) -> Result<String> {
        let fresh = Uuid::new_v4().simple().to_string();
        sqlx::query("INSERT INTO cluster (key, value) VALUES ('cluster_id', $1) ON CONFLICT (key) DO NOTHING")
            .bind(&fresh)
            .execute(&self.writer)
            .await?;
        let row = sqlx::query("SELECT value FROM cluster WHERE key = 'cluster_id'")
            .fetch_one(&self.writer)
            .await?;
        Ok(row.get(0))
    }

    // ---- topics ----

    pub async fn list_topics(&self) -> Result<Vec<TopicRow>> {
        let rows = sqlx::query("SELECT topic_id, name, partitions, configs, created_ms FROM topics ORDER BY name")
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(topic_from_row).collect()
    }

    /// Creates a topic with its partitions, partition `i` led by
    /// `leaders[i % len]` (nobody if `leaders` is empty); `None` if the name is taken.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &BTreeMap<String, String>,
        leaders: &[i32],
    ) -> Result<Option<TopicRow>> {
        let topic = TopicRow {
            id: Uuid::new_v4(),
            name: name.to_string(),
            partitions,
            configs: configs.clone(),
            created_ms: now_ms(),
        };
        let mut tx = self.writer.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO topics (topic_id, name, partitions, configs, created_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(topic.id.to_string())
        .bind(name)
        .bind(partitions)
        .bind(serde_json::to_string(configs)?)
        .bind(topic.created_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(None);
        }
        insert_partitions(&mut tx, topic.id, 0, partitions, leaders).await?;
        bump_topology(&mut tx).await?;
        tx.commit().await?;
        Ok(Some(topic))
    }

    /// Deletes a topic and everything indexed under it. Its objects become
    /// garbage once no other partition references them.
    pub async fn delete_topic(&self, topic_id: Uuid) -> Result<bool> {
        let id = topic_id.to_string();
        let mut tx = self.writer.begin().await?;
        let name: Option<String> = sqlx::query("SELECT name FROM topics WHERE topic_id = $1")
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get(0));
        let n = sqlx::query("DELETE FROM topics WHERE topic_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        for table in [
            "partitions",
            "partition_epochs",
            "batches",
            "producer_state",
            "aborted_txns",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE topic_id = $1"))
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(name) = name {
            sqlx::query("DELETE FROM group_offsets WHERE topic = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        bump_topology(&mut tx).await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Grows a topic to `new_count` partitions, the new ones led as in [`MetaStore::create_topic`].
    pub async fn add_partitions(&self, topic_id: Uuid, new_count: i32, leaders: &[i32]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query("SELECT partitions FROM topics WHERE topic_id = $1")
            .bind(topic_id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        let old: i32 = row.get(0);
        if new_count <= old {
            bail!("topic already has {old} partitions");
        }
        sqlx::query("UPDATE topics SET partitions = $1 WHERE topic_id = $2")
            .bind(new_count)
            .bind(topic_id.to_string())
            .execute(&mut *tx)
            .await?;
        insert_partitions(&mut tx, topic_id, old, new_count, leaders).await?;
        bump_topology(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_topic_configs(&self, topic_id: Uuid, configs: &BTreeMap<String, String>) -> Result<()> {
        sqlx::query("UPDATE topics SET configs = $1 WHERE topic_id = $2")
            .bind(serde_json::to_string(configs)?)
            .bind(topic_id.to_string())
            .execute(&self.writer)
            .await?;
        self.bump_topology().await
    }

    // ---- partitions and the offset index ----

    pub async fn list_partitions(&self) -> Result<Vec<PartitionRow>> {
        let rows = sqlx::query(&format!("SELECT {PARTITION_COLUMNS} FROM partitions"))
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(partition_from_row).collect()
    }

    pub async fn list_topic_partitions(&self, topic_id: Uuid) -> Result<Vec<PartitionRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {PARTITION_COLUMNS} FROM partitions WHERE topic_id = $1"
        ))
        .bind(topic_id.to_string())
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(partition_from_row).collect()
    }

    /// One partition as stored now: what a broker taking it over starts from.
    pub async fn get_partition(&self, topic_id: Uuid, partition: i32) -> Result<Option<PartitionRow>> {
        let row = sqlx::query(&format!(
            "SELECT {PARTITION_COLUMNS} FROM partitions WHERE topic_id = $1 AND partition = $2"
        ))
        .bind(topic_id.to_string())
        .bind(partition)
        .fetch_optional(&self.readers)
        .await?;
        row.as_ref().map(partition_from_row).transpose()
    }

    /// Commits one flush: the object, its batches, new high watermarks and
    /// producer state. A watermark update only applies if the partition still
    /// exists under the same leader epoch; the returned flags say which did,
    /// and batches of partitions that did not are left out.
    pub async fn commit_flush(&self, commit: &FlushCommit) -> Result<Vec<bool>> {
        let statements = flush_statements(commit, self.backend)?;
        let advanced: HashSet<(String, i32)> = self
            .write_transaction(statements)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_>>()?;
        Ok(commit
            .watermarks
            .iter()
            .map(|w| advanced.contains(&(w.topic_id.to_string(), w.partition)))
            .collect())
    }

    /// Runs `statements` in one transaction on the writer and returns the rows they
    /// return. On SQLite the whole transaction is a single request to SQLite's thread
    /// (one round trip instead of one per statement, a flush's commit waits for each);
    /// PostgreSQL cannot take several statements with parameters in one request.
    async fn write_transaction(&self, statements: Statements) -> Result<Vec<AnyRow>> {
        if self.backend == Backend::Postgres {
            let mut tx = self.writer.begin().await?;
            let mut rows = Vec::new();
            for (sql, args) in statements.sql.iter().zip(statements.args) {
                rows.extend(bind_all(sqlx::query(sql), args).fetch_all(&mut *tx).await?);
            }
            tx.commit().await?;
            return Ok(rows);
        }
        let sql = format!("BEGIN IMMEDIATE; {}; COMMIT", statements.sql.join("; "));
        let query = bind_all(sqlx::query(&sql), statements.args.into_iter().flatten().collect());
        // Closes the connection unless it is known to be outside a transaction: dropped
        // half-way (the caller gave up) or failed with a rollback that failed too.
        struct CloseUnlessClean(Option<sqlx::pool::PoolConnection<Any>>);
        impl Drop for CloseUnlessClean {
            fn drop(&mut self) {
                if let Some(conn) = &mut self.0 {
                    conn.close_on_drop();
                }
            }
        }
        let mut conn = CloseUnlessClean(Some(self.writer.acquire().await?));
        let c = conn.0.as_mut().expect("held");
        let result = query.fetch_all(&mut **c).await;
        // A statement after BEGIN failed: the transaction is still open on this connection.
        let clean = result.is_ok() || sqlx::query("ROLLBACK").execute(&mut **c).await.is_ok();
        if clean {
            conn.0.take();
        }
        Ok(result?)
    }

    /// Points batches of one partition at a new object (a compacted segment):
    /// `moved` is (base offset, old object key, position in the new object).
    /// All or nothing: false, and no change, if any row no longer sits in its
    /// old object (retention or another compaction got there first).
    pub async fn relocate_batches(
        &self,
        topic_id: Uuid,
        partition: i32,
        object_key: &str,
        object_size: i64,
        moved: &[(i64, String, i64)],
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("INSERT INTO objects (object_key, size, created_ms) VALUES ($1, $2, $3)")
            .bind(object_key)
            .bind(object_size)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        for (base_offset, old_key, position) in moved {
            let n = sqlx::query(
                "UPDATE batches SET object_key = $1, position = $2
                 WHERE topic_id = $3 AND partition = $4 AND base_offset = $5 AND object_key = $6",
            )
            .bind(object_key)
            .bind(position)
            .bind(topic_id.to_string())
            .bind(partition)
            .bind(base_offset)
            .bind(old_key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Replaces a partition's batches, as key compaction rewrites them: deletes the rows
    /// at `old` (base offset, object key) and inserts `new`, whose batches are in
    /// `object_key` (written already, `object_size` bytes; `None` when every batch went).
    /// One transaction, applied only if every old row is still there as read and the
    /// partition is still at `leader_epoch`: false when retention, another compaction or
    /// a new leader changed them meanwhile (the new object is then unreferenced).
    pub async fn replace_batches(
        &self,
        topic_id: Uuid,
        partition: i32,
        leader_epoch: i32,
        old: &[(i64, String)],
        object: Option<(&str, i64)>,
        new: &[BatchRow],
    ) -> Result<bool> {
        let id = topic_id.to_string();
        let mut tx = self.writer.begin().await?;
        let epoch: Option<i32> =
            sqlx::query_scalar("SELECT leader_epoch FROM partitions WHERE topic_id = $1 AND partition = $2")
                .bind(&id)
                .bind(partition)
                .fetch_optional(&mut *tx)
                .await?;
        if epoch != Some(leader_epoch) {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some((key, size)) = object {
            sqlx::query("INSERT INTO objects (object_key, size, created_ms) VALUES ($1, $2, $3)")
                .bind(key)
                .bind(size)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
        }
        for (base_offset, key) in old {
            let n = sqlx::query(
                "DELETE FROM batches WHERE topic_id = $1 AND partition = $2 AND base_offset = $3 AND object_key = $4",
            )
            .bind(&id)
            .bind(partition)
            .bind(base_offset)
            .bind(key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        for b in new {
            sqlx::query(
                "INSERT INTO batches (topic_id, partition, base_offset, last_offset, max_timestamp, object_key, position, length)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&id)
            .bind(partition)
            .bind(b.base_offset)
            .bind(b.last_offset)
            .bind(b.max_timestamp)
            .bind(&b.object_key)
            .bind(b.position)
            .bind(b.length)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Stored bytes of a partition's batches with base offsets in `from..to`.
    pub async fn batch_bytes(&self, topic_id: Uuid, partition: i32, from: i64, to: i64) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(length), 0) FROM batches
             WHERE topic_id = $1 AND partition = $2 AND base_offset >= $3 AND base_offset < $4",
        )
        .bind(topic_id.to_string())
        .bind(partition)
        .bind(from)
        .bind(to)
        .fetch_one(&self.readers)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Up to `limit` batches holding offsets at or after `offset`, in order. The lower
    /// bound on `base_offset` (the batch holding `offset`) lets the primary key seek to
    /// it: `last_offset` alone would scan the partition's rows from its start.
    pub async fn batches_from(&self, topic_id: Uuid, partition: i32, offset: i64, limit: i64) -> Result<Vec<BatchRow>> {
        let rows = sqlx::query(
            "SELECT topic_id, partition, base_offset, last_offset, max_timestamp, object_key, position, length
             FROM batches WHERE topic_id = $1 AND partition = $2 AND last_offset >= $3
               AND base_offset >= COALESCE((SELECT MAX(base_offset) FROM batches
                                            WHERE topic_id = $1 AND partition = $2 AND base_offset <= $3), 0)
             ORDER BY base_offset LIMIT $4",
        )
        .bind(topic_id.to_string())
        .bind(partition)
        .bind(offset)
        .bind(limit)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(batch_from_row).collect()
    }

    /// The first batch holding a record with timestamp >= `ts`.
    pub async fn first_batch_at_or_after_time(
        &self,
        topic_id: Uuid,
        partition: i32,
        ts: i64,
    ) -> Result<Option<BatchRow>> {
        let row = sqlx::query(
            "SELECT topic_id, partition, base_offset, last_offset, max_timestamp, object_key, position, length
             FROM batches WHERE topic_id = $1 AND partition = $2 AND max_timestamp >= $3
             ORDER BY base_offset LIMIT 1",
        )
        .bind(topic_id.to_string())
        .bind(partition)
        .bind(ts)
        .fetch_optional(&self.readers)
        .await?;
        row.as_ref().map(batch_from_row).transpose()
    }

    /// The earliest batch holding the partition's largest timestamp.
    pub async fn max_timestamp_batch(&self, topic_id: Uuid, partition: i32) -> Result<Option<BatchRow>> {
        let row = sqlx::query(
            "SELECT topic_id, partition, base_offset, last_offset, max_timestamp, object_key, position, length
             FROM batches WHERE topic_id = $1 AND partition = $2
             ORDER BY max_timestamp DESC, base_offset ASC LIMIT 1",
        )
        .bind(topic_id.to_string())
        .bind(partition)
        .fetch_optional(&self.readers)
        .await?;
        row.as_ref().map(batch_from_row).transpose()
    }

    /// Total stored bytes per partition of a topic.
    pub async fn partition_sizes(&self, topic_id: Uuid) -> Result<BTreeMap<i32, i64>> {
        let rows = sqlx::query(
            "SELECT partition, COALESCE(SUM(length), 0) FROM batches WHERE topic_id = $1 GROUP BY partition",
        )
        .bind(topic_id.to_string())
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Where size retention moves a partition's log start to: past every batch
    /// followed by at least `limit` bytes of newer batches (as Kafka, the oldest batch
    /// goes only while what remains still meets the limit). None: nothing to drop.
    /// One statement, so the sizes and the batches come from one snapshot.
    pub async fn size_retention_start(&self, topic_id: Uuid, partition: i32, limit: i64) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MAX(last_offset) + 1 FROM (
                 SELECT last_offset, SUM(length) OVER (ORDER BY base_offset DESC
                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS newer
                 FROM batches WHERE topic_id = $1 AND partition = $2) b
             WHERE newer >= $3",
        )
        .bind(topic_id.to_string())
        .bind(partition)
        .bind(limit)
        .fetch_one(&self.readers)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Raises the log start offset (never lowers it) and drops index rows
    /// wholly below it.
    pub async fn advance_log_start(&self, topic_id: Uuid, partition: i32, offset: i64) -> Result<()> {
        let id = topic_id.to_string();
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "UPDATE partitions SET log_start_offset = $1
             WHERE topic_id = $2 AND partition = $3 AND log_start_offset < $4",
        )
        .bind(offset)
        .bind(&id)
        .bind(partition)
        .bind(offset)
        .execute(&mut *tx)
        .await?;
        for table in ["batches", "aborted_txns"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE topic_id = $1 AND partition = $2 AND last_offset < $3"
            ))
            .bind(&id)
            .bind(partition)
            .bind(offset)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Leader epoch history of a partition: (epoch, start offset), ascending.
    pub async fn epoch_history(&self, topic_id: Uuid, partition: i32) -> Result<Vec<(i32, i64)>> {
        let rows = sqlx::query(
            "SELECT epoch, start_offset FROM partition_epochs WHERE topic_id = $1 AND partition = $2 ORDER BY epoch",
        )
        .bind(topic_id.to_string())
        .bind(partition)
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    // ---- objects ----

    /// Objects that no batch references any more, created before `before_ms`.
    pub async fn unreferenced_objects(&self, before_ms: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT object_key FROM objects o WHERE created_ms < $1
             AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.object_key = o.object_key)",
        )
        .bind(before_ms)
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub async fn forget_object(&self, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM objects WHERE object_key = $1")
            .bind(key)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn object_known(&self, key: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM objects WHERE object_key = $1")
            .bind(key)
            .fetch_optional(&self.readers)
            .await?;
        Ok(row.is_some())
    }

    // ---- producers ----

    pub async fn next_producer_id(&self) -> Result<i64> {
        let row = sqlx::query("INSERT INTO producer_ids (created_ms) VALUES ($1) RETURNING id")
            .bind(now_ms())
            .fetch_one(&self.writer)
            .await?;
        Ok(row.get(0))
    }

    pub async fn load_producer_states(&self) -> Result<Vec<ProducerStateRow>> {
        let rows =
            sqlx::query("SELECT topic_id, partition, producer_id, epoch, recent, txn_first_offset FROM producer_state")
                .fetch_all(&self.readers)
                .await?;
        producer_states_from_rows(&rows)
    }

    /// Idempotent-producer state of one partition, for a broker taking it over.
    pub async fn load_partition_producers(&self, topic_id: Uuid, partition: i32) -> Result<Vec<ProducerStateRow>> {
        let rows = sqlx::query(
            "SELECT topic_id, partition, producer_id, epoch, recent, txn_first_offset FROM producer_state
             WHERE topic_id = $1 AND partition = $2",
        )
        .bind(topic_id.to_string())
        .bind(partition)
        .fetch_all(&self.readers)
        .await?;
        producer_states_from_rows(&rows)
    }
}

fn producer_states_from_rows(rows: &[AnyRow]) -> Result<Vec<ProducerStateRow>> {
    rows.iter()
        .map(|r| {
            Ok(ProducerStateRow {
                topic_id: parse_uuid(r.get(0))?,
                partition: r.get(1),
                producer_id: r.get(2),
                epoch: r.get::<i32, _>(3) as i16,
                recent: serde_json::from_str(r.get(4))?,
                txn_first_offset: r.get(5),
            })
        })
        .collect()
}

const PARTITION_COLUMNS: &str = "topic_id, partition, log_start_offset, high_watermark, leader_epoch, leader";

fn partition_from_row(r: &AnyRow) -> Result<PartitionRow> {
    Ok(PartitionRow {
        topic_id: parse_uuid(r.get(0))?,
        partition: r.get(1),
        log_start_offset: r.get(2),
        high_watermark: r.get(3),
        leader_epoch: r.get(4),
        leader: r.get(5),
    })
}

impl MetaStore {
    // ---- consumer groups ----

    /// Records that a group exists (or changed generation), and whether it is empty.
    pub async fn upsert_group(&self, g: &GroupRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO groups (group_id, protocol_type, generation, empty_since_ms, updated_ms, members)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (group_id) DO UPDATE SET protocol_type = excluded.protocol_type,
               generation = excluded.generation, empty_since_ms = excluded.empty_since_ms,
               updated_ms = excluded.updated_ms, members = COALESCE(excluded.members, groups.members)",
        )
        .bind(&g.group_id)
        .bind(&g.protocol_type)
        .bind(g.generation)
        .bind(g.empty_since_ms)
        .bind(now_ms())
        .bind(&g.members)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn list_groups(&self) -> Result<Vec<GroupRow>> {
        let rows = sqlx::query(
            "SELECT group_id, protocol_type, generation, empty_since_ms, members FROM groups
             UNION SELECT DISTINCT group_id, '', 0, 0, NULL FROM group_offsets
             WHERE group_id NOT IN (SELECT group_id FROM groups) ORDER BY group_id",
        )
        .fetch_all(&self.readers)
        .await?;
        Ok(rows
            .iter()
            .map(|r| GroupRow {
                group_id: r.get(0),
                protocol_type: r.get(1),
                generation: r.get(2),
                empty_since_ms: r.get(3),
                members: r.get(4),
            })
            .collect())
    }

    /// Deletes a group and its committed offsets.
    pub async fn delete_group(&self, group_id: &str) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let a = sqlx::query("DELETE FROM groups WHERE group_id = $1")
            .bind(group_id)
            .execute(&mut *tx)
            .await?;
        let b = sqlx::query("DELETE FROM group_offsets WHERE group_id = $1")
            .bind(group_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(a.rows_affected() + b.rows_affected() > 0)
    }

    /// Stores committed offsets, all or none.
    pub async fn commit_offsets(&self, group_id: &str, offsets: &[CommittedOffset]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        for o in offsets {
            sqlx::query(
                "INSERT INTO group_offsets (group_id, topic, partition, committed_offset, leader_epoch, metadata, commit_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (group_id, topic, partition) DO UPDATE SET committed_offset = excluded.committed_offset,
                   leader_epoch = excluded.leader_epoch, metadata = excluded.metadata, commit_ms = excluded.commit_ms",
            )
            .bind(group_id)
            .bind(&o.topic)
            .bind(o.partition)
            .bind(o.offset)
            .bind(o.leader_epoch)
            .bind(&o.metadata)
            .bind(o.commit_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A group's committed offsets, ordered by topic and partition.
    pub async fn fetch_offsets(&self, group_id: &str) -> Result<Vec<CommittedOffset>> {
        let rows = sqlx::query(
            "SELECT topic, partition, committed_offset, leader_epoch, metadata, commit_ms FROM group_offsets
             WHERE group_id = $1 ORDER BY topic, partition",
        )
        .bind(group_id)
        .fetch_all(&self.readers)
        .await?;
        Ok(rows
            .iter()
            .map(|r| CommittedOffset {
                topic: r.get(0),
                partition: r.get(1),
                offset: r.get(2),
                leader_epoch: r.get(3),
                metadata: r.get(4),
                commit_ms: r.get(5),
            })
            .collect())
    }

    pub async fn delete_offsets(&self, group_id: &str, topic: &str, partition: i32) -> Result<()> {
        sqlx::query("DELETE FROM group_offsets WHERE group_id = $1 AND topic = $2 AND partition = $3")
            .bind(group_id)
            .bind(topic)
            .bind(partition)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Drops the offsets of groups empty since before `empty_before_ms`
    /// (offsets.retention.minutes); returns the groups affected.
    pub async fn expire_offsets(&self, empty_before_ms: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT o.group_id FROM group_offsets o LEFT JOIN groups g ON g.group_id = o.group_id
             WHERE (g.group_id IS NULL AND o.commit_ms < $1) OR (g.empty_since_ms IS NOT NULL AND g.empty_since_ms < $2
               AND o.commit_ms < $3)",
        )
        .bind(empty_before_ms)
        .bind(empty_before_ms)
        .bind(empty_before_ms)
        .fetch_all(&self.writer)
        .await?;
        let groups: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        for g in &groups {
            sqlx::query("DELETE FROM group_offsets WHERE group_id = $1 AND commit_ms < $2")
                .bind(g)
                .bind(empty_before_ms)
                .execute(&self.writer)
                .await?;
        }
        Ok(groups)
    }

    // ---- index rebuild ----

    /// Replaces the whole offset index with rows recovered from data objects.
    /// Topics missing from the store are recreated under their recorded id.
    pub async fn replace_index(
        &self,
        topics: &[(Uuid, String, i32)],
        objects: &[(String, i64)],
        batches: &[BatchRow],
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        for table in ["batches", "objects", "producer_state"] {
            sqlx::query(&format!("DELETE FROM {table}")).execute(&mut *tx).await?;
        }
        for (id, name, partitions) in topics {
            let exists = sqlx::query("SELECT partitions FROM topics WHERE topic_id = $1")
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            match exists {
                None => {
                    sqlx::query("INSERT INTO topics (topic_id, name, partitions, configs, created_ms) VALUES ($1, $2, $3, '{}', $4)")
                        .bind(id.to_string())
                        .bind(name)
                        .bind(partitions)
                        .bind(now_ms())
                        .execute(&mut *tx)
                        .await?;
                    insert_partitions(&mut tx, *id, 0, *partitions, &[]).await?;
                }
                Some(row) => {
                    let old: i32 = row.get(0);
                    if *partitions > old {
                        sqlx::query("UPDATE topics SET partitions = $1 WHERE topic_id = $2")
                            .bind(partitions)
                            .bind(id.to_string())
                            .execute(&mut *tx)
                            .await?;
                        insert_partitions(&mut tx, *id, old, *partitions, &[]).await?;
                    }
                }
            }
        }
        for (key, size) in objects {
            sqlx::query("INSERT INTO objects (object_key, size, created_ms) VALUES ($1, $2, $3)")
                .bind(key)
                .bind(size)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
        }
        for b in batches {
            sqlx::query(
                "INSERT INTO batches (topic_id, partition, base_offset, last_offset, max_timestamp, object_key, position, length)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            )
            .bind(b.topic_id.to_string())
            .bind(b.partition)
            .bind(b.base_offset)
            .bind(b.last_offset)
            .bind(b.max_timestamp)
            .bind(&b.object_key)
            .bind(b.position)
            .bind(b.length)
            .execute(&mut *tx)
            .await?;
        }
        // Watermarks and log start follow what the objects hold.
        sqlx::query(
            "UPDATE partitions SET
               high_watermark = COALESCE((SELECT MAX(last_offset) + 1 FROM batches b
                   WHERE b.topic_id = partitions.topic_id AND b.partition = partitions.partition), 0),
               log_start_offset = COALESCE((SELECT MIN(base_offset) FROM batches b
                   WHERE b.topic_id = partitions.topic_id AND b.partition = partitions.partition), 0)",
        )
        .execute(&mut *tx)
        .await?;
        bump_topology(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn bump_topology(tx: &mut Transaction<'_, Any>) -> Result<()> {
    sqlx::query("UPDATE topology SET version = version + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_partitions(
    tx: &mut Transaction<'_, Any>,
    topic_id: Uuid,
    from: i32,
    to: i32,
    leaders: &[i32],
) -> Result<()> {
    for p in from..to {
        let leader = if leaders.is_empty() {
            -1
        } else {
            leaders[p as usize % leaders.len()]
        };
        sqlx::query("INSERT INTO partitions (topic_id, partition, leader) VALUES ($1, $2, $3)")
            .bind(topic_id.to_string())
            .bind(p)
            .bind(leader)
            .execute(&mut **tx)
            .await?;
        sqlx::query("INSERT INTO partition_epochs (topic_id, partition, epoch, start_offset) VALUES ($1, $2, 0, 0)")
            .bind(topic_id.to_string())
            .bind(p)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Rows per multi-row statement: far below SQLite's 32,766 and PostgreSQL's 65,535
/// bound parameters.
const ROWS_PER_STATEMENT: usize = 500;

/// A transaction's statements, each with its arguments in order.
#[derive(Default)]
struct Statements {
    sql: Vec<String>,
    args: Vec<Vec<Arg>>,
}

enum Arg {
    Text(String),
    I32(i32),
    I64(i64),
}

fn bind_all<'q>(mut q: Query<'q, Any, AnyArguments<'q>>, args: Vec<Arg>) -> Query<'q, Any, AnyArguments<'q>> {
    for a in args {
        q = match a {
            Arg::Text(v) => q.bind(v),
            Arg::I32(v) => q.bind(v),
            Arg::I64(v) => q.bind(v),
        };
    }
    q
}

impl Statements {
    /// Adds `sql`, whose `{}` stands for the VALUES rows, once per ROWS_PER_STATEMENT rows.
    fn each_rows(&mut self, backend: Backend, sql: &str, rows: Vec<Vec<Arg>>) {
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<Vec<Arg>> = rows.by_ref().take(ROWS_PER_STATEMENT).collect();
            let mut n = 0;
            let values: Vec<String> = chunk
                .iter()
                .map(|row| {
                    let params: Vec<String> = row
                        .iter()
                        .map(|_| {
                            n += 1;
                            // SQLite gets all statements in one request, and numbers each
                            // statement's `?` after the previous statement's parameters.
                            match backend {
                                Backend::Sqlite => "?".to_string(),
                                Backend::Postgres => format!("${n}"),
                            }
                        })
                        .collect();
                    format!("({})", params.join(", "))
                })
                .collect();
            self.sql.push(sql.replace("{}", &values.join(", ")));
            self.args.push(chunk.into_iter().flatten().collect());
        }
    }
}

/// A flush's commit. Batches and producer state of a partition are written only if its
/// watermark moves (same leader epoch, never backwards: fencing), which the inserts check
/// against the partition as it is before the watermark update, the last statement.
fn flush_statements(commit: &FlushCommit, backend: Backend) -> Result<Statements> {
    let mut st = Statements::default();
    let created_ms = now_ms();
    st.each_rows(
        backend,
        "INSERT INTO objects (object_key, size, created_ms) VALUES {}",
        commit
            .objects
            .iter()
            .map(|(key, size)| vec![Arg::Text(key.clone()), Arg::I64(*size), Arg::I64(created_ms)])
            .collect(),
    );
    let fence: HashMap<(Uuid, i32), (i32, i64)> = commit
        .watermarks
        .iter()
        .map(|w| ((w.topic_id, w.partition), (w.leader_epoch, w.high_watermark)))
        .collect();
    // A row of a partition, followed by the leader epoch and watermark its insert is fenced on.
    let fenced = |topic_id: Uuid, partition: i32, mut row: Vec<Arg>| -> Result<Vec<Arg>> {
        let (epoch, hw) = fence
            .get(&(topic_id, partition))
            .with_context(|| format!("flush commit has rows but no watermark for {topic_id}/{partition}"))?;
        row.extend([Arg::I32(*epoch), Arg::I64(*hw)]);
        Ok(row)
    };
    // The watermark update's condition, so that rows go in exactly where it applies.
    let moves = |t: &str| {
        format!(
            "{t}.topic_id = v.topic_id AND {t}.partition = v.partition
             AND {t}.leader_epoch = v.leader_epoch AND {t}.high_watermark <= v.high_watermark"
        )
    };
    let moving = format!("EXISTS (SELECT 1 FROM partitions p WHERE {})", moves("p"));
    let batches = commit
        .batches
        .iter()
        .map(|b| {
            let row = vec![
                Arg::Text(b.topic_id.to_string()),
                Arg::I32(b.partition),
                Arg::I64(b.base_offset),
                Arg::I64(b.last_offset),
                Arg::I64(b.max_timestamp),
                Arg::Text(b.object_key.clone()),
                Arg::I64(b.position),
                Arg::I32(b.length),
            ];
            fenced(b.topic_id, b.partition, row)
        })
        .collect::<Result<Vec<_>>>()?;
    st.each_rows(
        backend,
        &format!(
            "WITH v (topic_id, partition, base_offset, last_offset, max_timestamp, object_key, position, length,
                     leader_epoch, high_watermark) AS (VALUES {{}})
             INSERT INTO batches (topic_id, partition, base_offset, last_offset, max_timestamp, object_key, position, length)
             SELECT topic_id, partition, base_offset, last_offset, max_timestamp, object_key, position, length
             FROM v WHERE {moving}"
        ),
        batches,
    );
    let producers = commit
        .producers
        .iter()
        .map(|p| {
            let recent = serde_json::to_string(&p.recent)?;
            let row = vec![
                Arg::Text(p.topic_id.to_string()),
                Arg::I32(p.partition),
                Arg::I64(p.producer_id),
                Arg::I32(p.epoch as i32),
                Arg::Text(recent),
                Arg::I64(created_ms),
                Arg::I64(p.txn_first_offset),
            ];
            fenced(p.topic_id, p.partition, row)
        })
        .collect::<Result<Vec<_>>>()?;
    // Each producer at most once per statement, as PostgreSQL requires of ON CONFLICT DO UPDATE.
    st.each_rows(
        backend,
        &format!(
            "WITH v (topic_id, partition, producer_id, epoch, recent, updated_ms, txn_first_offset, leader_epoch,
                     high_watermark) AS (VALUES {{}})
             INSERT INTO producer_state (topic_id, partition, producer_id, epoch, recent, updated_ms, txn_first_offset)
             SELECT topic_id, partition, producer_id, epoch, recent, updated_ms, txn_first_offset FROM v WHERE {moving}
             ON CONFLICT (topic_id, partition, producer_id)
             DO UPDATE SET epoch = excluded.epoch, recent = excluded.recent, updated_ms = excluded.updated_ms,
               txn_first_offset = excluded.txn_first_offset"
        ),
        producers,
    );
    let aborted = commit
        .aborted
        .iter()
        .map(|a| {
            let row = vec![
                Arg::Text(a.topic_id.to_string()),
                Arg::I32(a.partition),
                Arg::I64(a.producer_id),
                Arg::I64(a.first_offset),
                Arg::I64(a.last_offset),
            ];
            fenced(a.topic_id, a.partition, row)
        })
        .collect::<Result<Vec<_>>>()?;
    st.each_rows(
        backend,
        &format!(
            "WITH v (topic_id, partition, producer_id, first_offset, last_offset, leader_epoch, high_watermark)
                 AS (VALUES {{}})
             INSERT INTO aborted_txns (topic_id, partition, producer_id, first_offset, last_offset)
             SELECT topic_id, partition, producer_id, first_offset, last_offset FROM v WHERE {moving}
             ON CONFLICT (topic_id, partition, last_offset) DO NOTHING"
        ),
        aborted,
    );
    st.each_rows(
        backend,
        &format!(
            "WITH v (topic_id, partition, leader_epoch, high_watermark) AS (VALUES {{}})
             UPDATE partitions SET high_watermark = v.high_watermark FROM v WHERE {}
             RETURNING partitions.topic_id, partitions.partition",
            moves("partitions")
        ),
        commit
            .watermarks
            .iter()
            .map(|w| {
                vec![
                    Arg::Text(w.topic_id.to_string()),
                    Arg::I32(w.partition),
                    Arg::I32(w.leader_epoch),
                    Arg::I64(w.high_watermark),
                ]
            })
            .collect(),
    );
    Ok(st)
}

/// A URL with its password hidden, for logs and errors.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

pub(crate) fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).with_context(|| format!("bad uuid {s:?} in metadata store"))
}

fn topic_from_row(r: &AnyRow) -> Result<TopicRow> {
    Ok(TopicRow {
        id: parse_uuid(r.get(0))?,
        name: r.get(1),
        partitions: r.get(2),
        configs: serde_json::from_str(r.get(3))?,
        created_ms: r.get(4),
    })
}

fn batch_from_row(r: &AnyRow) -> Result<BatchRow> {
    Ok(BatchRow {
        topic_id: parse_uuid(r.get(0))?,
        partition: r.get(1),
        base_offset: r.get(2),
        last_offset: r.get(3),
        max_timestamp: r.get(4),
        object_key: r.get(5),
        position: r.get(6),
        length: r.get(7),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh store: SQLite in a temp dir, or a fresh database on the
    /// PostgreSQL server at `SLUICE_TEST_POSTGRES` (e.g. postgres://postgres@127.0.0.1:5432).
    pub(crate) async fn store() -> (tempfile::TempDir, MetaStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = match std::env::var("SLUICE_TEST_POSTGRES") {
            Ok(server) => {
                let admin = MetaStore::open(&format!("{server}/postgres")).await.unwrap();
                let db = format!("t{}", Uuid::new_v4().simple());
                sqlx::query(&format!("CREATE DATABASE {db}"))
                    .execute(admin.pool())
                    .await
                    .unwrap();
                format!("{server}/{db}")
            }
            Err(_) => format!("sqlite://{}/meta.db", dir.path().display()),
        };
        let m = MetaStore::open(&url).await.unwrap();
        (dir, m)
    }

    fn batch(t: Uuid, p: i32, base: i64, last: i64, key: &str) -> BatchRow {
        BatchRow {
            topic_id: t,
            partition: p,
            base_offset: base,
            last_offset: last,
            max_timestamp: 1000 + base,
            object_key: key.into(),
            position: 0,
            length: 100,
        }
    }

    /// Producer 42's state (epoch 3, no batches yet) in partition `p`.
    fn producer(t: Uuid, p: i32) -> ProducerStateRow {
        ProducerStateRow {
            topic_id: t,
            partition: p,
            producer_id: 42,
            epoch: 3,
            recent: vec![],
            txn_first_offset: -1,
        }
    }

    /// A flush of `batches`, all in partition `p` and in object `key`, that moves the
    /// partition's high watermark to `high_watermark` under leader epoch 0.
    fn partition_commit(t: Uuid, p: i32, key: &str, batches: Vec<BatchRow>, high_watermark: i64) -> FlushCommit {
        FlushCommit {
            objects: vec![(key.into(), batches.iter().map(|b| i64::from(b.length)).sum())],
            batches,
            watermarks: vec![WatermarkUpdate {
                topic_id: t,
                partition: p,
                high_watermark,
                leader_epoch: 0,
            }],
            producers: vec![],
            aborted: vec![],
        }
    }

    #[tokio::test]
    async fn batches_from_finds_the_batch_holding_an_offset_wherever_it_falls() {
        let (_d, m) = store().await;
        let t = m.create_topic("b", 1, &BTreeMap::new(), &[]).await.unwrap().unwrap();
        // Batches [10..19], [20..29], a gap (records removed by retention or never there), [40..49].
        let batches = vec![
            batch(t.id, 0, 10, 19, "o"),
            batch(t.id, 0, 20, 29, "o"),
            batch(t.id, 0, 40, 49, "o"),
        ];
        let commit = partition_commit(t.id, 0, "o", batches, 50);
        m.commit_flush(&commit).await.unwrap();
        let bases = |offset: i64, limit: i64| {
            let m = m.clone();
            async move {
                let rows = m.batches_from(t.id, 0, offset, limit).await.unwrap();
                rows.iter().map(|r| r.base_offset).collect::<Vec<_>>()
            }
        };
        assert_eq!(bases(0, 10).await, [10, 20, 40], "before the first batch");
        assert_eq!(bases(10, 10).await, [10, 20, 40], "at a batch's first offset");
        assert_eq!(bases(25, 10).await, [20, 40], "inside a batch");
        assert_eq!(bases(29, 1).await, [20], "at a batch's last offset");
        assert_eq!(bases(33, 10).await, [40], "in a gap");
        assert_eq!(bases(49, 10).await, [40]);
        assert!(bases(50, 10).await.is_empty(), "past the end");
    }

    #[tokio::test]
    async fn topic_lifecycle_and_index() {
        let (_d, m) = store().await;
        let t = m.create_topic("a", 2, &BTreeMap::new(), &[7]).await.unwrap().unwrap();
        assert!(m.create_topic("a", 1, &BTreeMap::new(), &[]).await.unwrap().is_none());
        let commit = FlushCommit {
            objects: vec![("o1".into(), 200)],
            batches: vec![batch(t.id, 0, 0, 9, "o1"), batch(t.id, 1, 0, 4, "o1")],
            watermarks: vec![
                WatermarkUpdate {
                    topic_id: t.id,
                    partition: 0,
                    high_watermark: 10,
                    leader_epoch: 0,
                },
                WatermarkUpdate {
                    topic_id: t.id,
                    partition: 1,
                    high_watermark: 5,
                    leader_epoch: 7,
                },
            ],
            producers: [0, 1].map(|p| producer(t.id, p)).to_vec(),
            aborted: vec![],
        };
        // Partition 1 is fenced by its epoch: its batch must not be indexed.
        assert_eq!(m.commit_flush(&commit).await.unwrap(), vec![true, false]);
        assert_eq!(m.batches_from(t.id, 0, 5, 10).await.unwrap().len(), 1);
        assert!(m.batches_from(t.id, 1, 0, 10).await.unwrap().is_empty());
        let producers = m.load_producer_states().await.unwrap();
        assert_eq!(
            producers.iter().map(|p| p.partition).collect::<Vec<_>>(),
            [0],
            "fenced producer state"
        );
        let parts = m.list_partitions().await.unwrap();
        let p0 = parts.iter().find(|p| p.partition == 0).unwrap();
        assert_eq!((p0.high_watermark, p0.leader), (10, 7));
        assert_eq!(m.get_partition(t.id, 1).await.unwrap().unwrap().high_watermark, 0);

        m.advance_log_start(t.id, 0, 10).await.unwrap();
        assert!(m.batches_from(t.id, 0, 0, 10).await.unwrap().is_empty());
        assert_eq!(
            m.unreferenced_objects(now_ms() + 1).await.unwrap(),
            vec!["o1".to_string()]
        );

        m.add_partitions(t.id, 4, &[]).await.unwrap();
        assert_eq!(m.list_partitions().await.unwrap().len(), 4);
        assert!(m.delete_topic(t.id).await.unwrap());
        assert!(m.list_topics().await.unwrap().is_empty());
        assert!(m.list_partitions().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failed_commit_leaves_nothing_and_the_next_one_lands() {
        let (_d, m) = store().await;
        let t = m.create_topic("a", 1, &BTreeMap::new(), &[1]).await.unwrap().unwrap();
        let first = partition_commit(t.id, 0, "o1", vec![batch(t.id, 0, 0, 4, "o1")], 5);
        assert_eq!(m.commit_flush(&first).await.unwrap(), [true]);
        // The second batch repeats an indexed offset: the whole commit must fail, after
        // its object row was inserted in the same transaction.
        let clash = partition_commit(
            t.id,
            0,
            "o2",
            vec![batch(t.id, 0, 5, 9, "o2"), batch(t.id, 0, 0, 4, "o2")],
            10,
        );
        assert!(m.commit_flush(&clash).await.is_err());
        assert_eq!(m.get_partition(t.id, 0).await.unwrap().unwrap().high_watermark, 5);
        assert_eq!(m.batches_from(t.id, 0, 0, 10).await.unwrap().len(), 1);
        // A row left from the failed transaction would make this insert of o2 fail, or
        // a transaction left open would swallow the writes below.
        let retry = partition_commit(t.id, 0, "o2", vec![batch(t.id, 0, 5, 9, "o2")], 10);
        assert_eq!(m.commit_flush(&retry).await.unwrap(), [true]);
        m.set_topic_configs(t.id, &BTreeMap::from([("retention.ms".to_string(), "5".to_string())]))
            .await
            .unwrap();
        // Reads use other connections, so they see only what was committed.
        assert_eq!(m.get_partition(t.id, 0).await.unwrap().unwrap().high_watermark, 10);
        assert_eq!(m.batches_from(t.id, 0, 0, 10).await.unwrap().len(), 2);
        assert_eq!(m.list_topics().await.unwrap()[0].configs["retention.ms"], "5");
    }

    #[tokio::test]
    async fn a_flush_over_more_partitions_than_one_statement_holds_commits_whole() {
        let (_d, m) = store().await;
        let n = ROWS_PER_STATEMENT as i32 * 2 + 7;
        let t = m
            .create_topic("wide", n, &BTreeMap::new(), &[1])
            .await
            .unwrap()
            .unwrap();
        let commit = FlushCommit {
            objects: vec![("o1".into(), 100 * n as i64)],
            batches: (0..n).map(|p| batch(t.id, p, 0, p as i64, "o1")).collect(),
            watermarks: (0..n)
                .map(|p| WatermarkUpdate {
                    topic_id: t.id,
                    partition: p,
                    high_watermark: p as i64 + 1,
                    leader_epoch: 0,
                })
                .collect(),
            producers: (0..n).map(|p| producer(t.id, p)).collect(),
            aborted: vec![],
        };
        assert_eq!(m.commit_flush(&commit).await.unwrap(), vec![true; n as usize]);
        let parts = m.list_partitions().await.unwrap();
        assert!(parts.iter().all(|p| p.high_watermark == p.partition as i64 + 1));
        assert_eq!(
            m.batches_from(t.id, n - 1, 0, 10).await.unwrap()[0].last_offset,
            n as i64 - 1
        );
        assert_eq!(m.load_producer_states().await.unwrap().len(), n as usize);
        // Committing the same watermarks again is allowed (never backwards); a lower one is not applied.
        let mut again = commit.clone();
        again.objects = vec![("o2".into(), 1)];
        again.batches.clear();
        again.watermarks[5].high_watermark = 1;
        let applied = m.commit_flush(&again).await.unwrap();
        assert_eq!(applied.iter().filter(|a| !**a).count(), 1);
        assert!(!applied[5]);
    }

    /// Every kind of write at once, as a busy broker does: all land, and none waits
    /// forever (on SQLite they share one writer connection; a write that held it
    /// while asking for another would hang here).
    #[tokio::test]
    async fn concurrent_writes_of_every_kind_all_land() {
        let (_d, m) = store().await;
        let t = m
            .create_topic("busy", 4, &BTreeMap::new(), &[0])
            .await
            .unwrap()
            .unwrap();
        const N: i64 = 40;
        let mut tasks = tokio::task::JoinSet::new();
        for p in 0..4 {
            let m = m.clone();
            tasks.spawn(async move {
                for i in 0..N {
                    let key = format!("o-{p}-{i}");
                    let commit = partition_commit(t.id, p, &key, vec![batch(t.id, p, i, i, &key)], i + 1);
                    assert_eq!(m.commit_flush(&commit).await.unwrap(), vec![true]);
                }
            });
        }
        let offsets = m.clone();
        tasks.spawn(async move {
            for i in 0..N {
                let o = CommittedOffset {
                    topic: "busy".into(),
                    partition: 0,
                    offset: i,
                    leader_epoch: 0,
                    metadata: None,
                    commit_ms: now_ms(),
                };
                offsets.commit_offsets("g", &[o]).await.unwrap();
            }
        });
        let leases = m.clone();
        tasks.spawn(async move {
            for _ in 0..N {
                assert!(leases.acquire_lease("busy-lease", 7, 10_000).await.unwrap().is_some());
            }
        });
        let configs = m.clone();
        tasks.spawn(async move {
            for i in 0..N {
                let c = BTreeMap::from([("retention.ms".to_string(), i.to_string())]);
                configs.set_topic_configs(t.id, &c).await.unwrap();
            }
        });
        tokio::time::timeout(std::time::Duration::from_secs(120), async {
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
        })
        .await
        .expect("concurrent writes finished");
        for p in m.list_topic_partitions(t.id).await.unwrap() {
            assert_eq!(p.high_watermark, N, "partition {}", p.partition);
            let rows = m.batches_from(t.id, p.partition, 0, 100).await.unwrap();
            let offsets: Vec<i64> = rows.iter().map(|r| r.base_offset).collect();
            assert_eq!(offsets, (0..N).collect::<Vec<_>>());
        }
        assert_eq!(m.fetch_offsets("g").await.unwrap()[0].offset, N - 1);
        assert_eq!(m.get_lease("busy-lease").await.unwrap().unwrap().holder, 7);
        let topic = m
            .list_topics()
            .await
            .unwrap()
            .into_iter()
            .find(|x| x.id == t.id)
            .unwrap();
        assert_eq!(topic.configs.get("retention.ms").map(String::as_str), Some("39"));
    }

    #[tokio::test]
    async fn size_retention_drops_the_oldest_batches_while_the_newer_ones_still_meet_the_limit() {
        let (_d, m) = store().await;
        let t = m.create_topic("s", 1, &BTreeMap::new(), &[]).await.unwrap().unwrap();
        // Four batches of 10 offsets, oldest first: 100, 50, 100 and 10 bytes.
        let batches: Vec<BatchRow> = [100, 50, 100, 10]
            .iter()
            .enumerate()
            .map(|(i, len)| BatchRow {
                length: *len,
                ..batch(t.id, 0, i as i64 * 10, i as i64 * 10 + 9, "o")
            })
            .collect();
        m.commit_flush(&partition_commit(t.id, 0, "o", batches, 40))
            .await
            .unwrap();
        let start = |limit: i64| {
            let m = m.clone();
            async move { m.size_retention_start(t.id, 0, limit).await.unwrap() }
        };
        // Newer bytes after each batch: 160, 110, 10, none.
        assert_eq!(start(110).await, Some(20));
        assert_eq!(start(111).await, Some(10));
        assert_eq!(start(160).await, Some(10));
        assert_eq!(start(161).await, None);
        assert_eq!(start(0).await, Some(30), "the newest batch always stays");
        assert_eq!(m.size_retention_start(t.id, 1, 0).await.unwrap(), None);
    }

    #[tokio::test]
    async fn group_offsets_round_trip_and_expire() {
        let (_d, m) = store().await;
        let o = |p: i32, off: i64, ms: i64| CommittedOffset {
            topic: "t".into(),
            partition: p,
            offset: off,
            leader_epoch: -1,
            metadata: Some("m".into()),
            commit_ms: ms,
        };
        m.commit_offsets("g", &[o(0, 5, 100), o(1, 7, 100)]).await.unwrap();
        m.commit_offsets("g", &[o(0, 6, 200)]).await.unwrap();
        assert_eq!(m.fetch_offsets("g").await.unwrap(), vec![o(0, 6, 200), o(1, 7, 100)]);
        // The group has members (not empty): nothing expires.
        m.upsert_group(&GroupRow {
            group_id: "g".into(),
            protocol_type: "consumer".into(),
            generation: 1,
            empty_since_ms: None,
            members: None,
        })
        .await
        .unwrap();
        assert!(m.expire_offsets(1000).await.unwrap().is_empty());
        m.upsert_group(&GroupRow {
            group_id: "g".into(),
            protocol_type: "consumer".into(),
            generation: 2,
            empty_since_ms: Some(150),
            members: None,
        })
        .await
        .unwrap();
        assert_eq!(m.expire_offsets(1000).await.unwrap(), vec!["g".to_string()]);
        assert!(m.fetch_offsets("g").await.unwrap().is_empty());
        assert_eq!(m.list_groups().await.unwrap().len(), 1);
        assert!(m.delete_group("g").await.unwrap());
        assert!(m.list_groups().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn producer_ids_are_unique_and_state_round_trips() {
        let (_d, m) = store().await;
        let a = m.next_producer_id().await.unwrap();
        let b = m.next_producer_id().await.unwrap();
        assert_ne!(a, b);
        let t = m.create_topic("p", 1, &BTreeMap::new(), &[]).await.unwrap().unwrap();
        let state = ProducerStateRow {
            topic_id: t.id,
            partition: 0,
            producer_id: a,
            epoch: 3,
            recent: vec![SeqEntry {
                first_seq: 0,
                last_seq: 4,
                base_offset: 0,
                last_offset: 4,
            }],
            txn_first_offset: -1,
        };
        let commit = FlushCommit {
            objects: vec![("o".into(), 1)],
            batches: vec![],
            watermarks: vec![WatermarkUpdate {
                topic_id: t.id,
                partition: 0,
                high_watermark: 5,
                leader_epoch: 0,
            }],
            producers: vec![state.clone()],
            aborted: vec![],
        };
        m.commit_flush(&commit).await.unwrap();
        assert_eq!(m.load_producer_states().await.unwrap(), vec![state]);
        assert!(!m.cluster_id().await.unwrap().is_empty());
        assert_eq!(m.cluster_id().await.unwrap(), m.cluster_id().await.unwrap());
    }
}
