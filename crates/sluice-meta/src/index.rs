//! The offset index: one row per stored batch (object key, position, length,
//! offsets, max timestamp), the data objects they live in, and the flush commit that
//! records a flush's objects, rows, watermarks and producer state in one transaction.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Context, Result};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::dialect::{Arg, Backend, Statements};
use crate::producers::{AbortedTxnRow, ProducerStateRow};
use crate::topics::{bump_topology, insert_partitions};
use crate::{now_ms, parse_uuid, MetaStore};

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

/// A partition's bytes in each store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionSize {
    pub local: i64,
    pub tier: i64,
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

impl MetaStore {
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
    /// Bytes of each partition's batches, in the main store and in the tier store (the
    /// objects under `tier/`).
    pub async fn partition_sizes(&self, topic_id: Uuid) -> Result<BTreeMap<i32, PartitionSize>> {
        let rows = sqlx::query(
            "SELECT partition,
                 COALESCE(SUM(CASE WHEN object_key LIKE 'tier/%' THEN 0 ELSE length END), 0),
                 COALESCE(SUM(CASE WHEN object_key LIKE 'tier/%' THEN length ELSE 0 END), 0)
             FROM batches WHERE topic_id = $1 GROUP BY partition",
        )
        .bind(topic_id.to_string())
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|r| {
                let size = PartitionSize {
                    local: r.try_get(1)?,
                    tier: r.try_get(2)?,
                };
                Ok((r.try_get(0)?, size))
            })
            .collect()
    }

    /// The last offset of a partition's batches in the tier store, if any are there.
    pub async fn tiered_end(&self, topic_id: Uuid, partition: i32) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MAX(last_offset) FROM batches
             WHERE topic_id = $1 AND partition = $2 AND object_key LIKE 'tier/%'",
        )
        .bind(topic_id.to_string())
        .bind(partition)
        .fetch_one(&self.readers)
        .await?;
        Ok(row.try_get(0)?)
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
