//! Transactions: the coordinator's state per transactional.id, the offsets sent
//! within a transaction, and the aborted ranges read_committed readers filter.

use std::collections::BTreeSet;

use anyhow::{bail, Result};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::{now_ms, parse_uuid, AbortedTxnRow, CommittedOffset, MetaStore};

/// Kafka's transaction states (TransactionState), as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    pub fn as_str(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "Empty" => TxnState::Empty,
            "Ongoing" => TxnState::Ongoing,
            "PrepareCommit" => TxnState::PrepareCommit,
            "PrepareAbort" => TxnState::PrepareAbort,
            "CompleteCommit" => TxnState::CompleteCommit,
            "CompleteAbort" => TxnState::CompleteAbort,
            other => bail!("unknown transaction state {other:?}"),
        })
    }

    /// Whether markers are being written (the outcome is decided).
    pub fn is_prepared(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// One transactional.id's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRow {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub state: TxnState,
    pub timeout_ms: i32,
    /// When the current transaction began (its first AddPartitions/AddOffsets).
    pub started_ms: i64,
    pub updated_ms: i64,
    pub partitions: BTreeSet<(String, i32)>,
    pub groups: BTreeSet<String>,
    /// Bumped by every write, which applies only at the version read.
    pub version: i64,
}

const TXN_COLUMNS: &str = "transactional_id, producer_id, producer_epoch, state, timeout_ms, started_ms, updated_ms, \
                           partitions, txn_groups, version";

fn txn_from_row(r: &AnyRow) -> Result<TxnRow> {
    let partitions: Vec<(String, i32)> = serde_json::from_str(r.get(7))?;
    let groups: Vec<String> = serde_json::from_str(r.get(8))?;
    Ok(TxnRow {
        transactional_id: r.get(0),
        producer_id: r.get(1),
        producer_epoch: r.get::<i32, _>(2) as i16,
        state: TxnState::parse(r.get(3))?,
        timeout_ms: r.get(4),
        started_ms: r.get(5),
        updated_ms: r.get(6),
        partitions: partitions.into_iter().collect(),
        groups: groups.into_iter().collect(),
        version: r.get(9),
    })
}

fn aborted_from_row(r: &AnyRow) -> Result<AbortedTxnRow> {
    Ok(AbortedTxnRow {
        topic_id: parse_uuid(r.get(0))?,
        partition: r.get(1),
        producer_id: r.get(2),
        first_offset: r.get(3),
        last_offset: r.get(4),
    })
}

impl MetaStore {
    pub async fn get_txn(&self, transactional_id: &str) -> Result<Option<TxnRow>> {
        let row = sqlx::query(&format!(
            "SELECT {TXN_COLUMNS} FROM transactions WHERE transactional_id = $1"
        ))
        .bind(transactional_id)
        .fetch_optional(&self.writer)
        .await?;
        row.as_ref().map(txn_from_row).transpose()
    }

    /// Every transactional.id, ordered by id.
    pub async fn list_txns(&self) -> Result<Vec<TxnRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {TXN_COLUMNS} FROM transactions ORDER BY transactional_id"
        ))
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(txn_from_row).collect()
    }

    /// Transactions with work left for a coordinator: open or being completed.
    pub async fn unfinished_txns(&self) -> Result<Vec<TxnRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {TXN_COLUMNS} FROM transactions WHERE state IN ('Ongoing', 'PrepareCommit', 'PrepareAbort')"
        ))
        .fetch_all(&self.writer)
        .await?;
        rows.iter().map(txn_from_row).collect()
    }

    /// Writes `row` if the stored row is still at `row.version` (or absent, for version 0),
    /// and moves it to the next version. False if another write came first.
    pub async fn put_txn(&self, row: &TxnRow) -> Result<bool> {
        let partitions = serde_json::to_string(&row.partitions.iter().collect::<Vec<_>>())?;
        let groups = serde_json::to_string(&row.groups.iter().collect::<Vec<_>>())?;
        let sql = if row.version == 0 {
            format!(
                "INSERT INTO transactions ({TXN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10 + 1)
                 ON CONFLICT (transactional_id) DO NOTHING"
            )
        } else {
            "UPDATE transactions SET producer_id = $2, producer_epoch = $3, state = $4, timeout_ms = $5,
               started_ms = $6, updated_ms = $7, partitions = $8, txn_groups = $9, version = $10 + 1
             WHERE transactional_id = $1 AND version = $10"
                .to_string()
        };
        let done = sqlx::query(&sql)
            .bind(&row.transactional_id)
            .bind(row.producer_id)
            .bind(row.producer_epoch as i32)
            .bind(row.state.as_str())
            .bind(row.timeout_ms)
            .bind(row.started_ms)
            .bind(row.updated_ms)
            .bind(partitions)
            .bind(groups)
            .bind(row.version)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Forgets transactional ids idle (with no transaction open) since before `before_ms`.
    pub async fn expire_txns(&self, before_ms: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM transactions WHERE state IN ('Empty', 'CompleteCommit', 'CompleteAbort') AND updated_ms < $1",
        )
        .bind(before_ms)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    /// Offsets a transaction sends for a group; visible once it commits.
    pub async fn put_txn_offsets(&self, group_id: &str, producer_id: i64, offsets: &[CommittedOffset]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        for o in offsets {
            sqlx::query(
                "INSERT INTO txn_offsets (group_id, topic, partition, producer_id, committed_offset, leader_epoch,
                   metadata, commit_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (group_id, topic, partition, producer_id) DO UPDATE SET
                   committed_offset = excluded.committed_offset, leader_epoch = excluded.leader_epoch,
                   metadata = excluded.metadata, commit_ms = excluded.commit_ms",
            )
            .bind(group_id)
            .bind(&o.topic)
            .bind(o.partition)
            .bind(producer_id)
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

    /// Ends a transaction's offsets for `groups`: with `commit` they become the groups'
    /// committed offsets, otherwise they are dropped. Idempotent.
    pub async fn finish_txn_offsets(&self, producer_id: i64, groups: &BTreeSet<String>, commit: bool) -> Result<()> {
        if groups.is_empty() {
            // No write transaction: on SQLite it would queue for the write lock.
            return Ok(());
        }
        let mut tx = self.writer.begin().await?;
        for g in groups {
            if commit {
                sqlx::query(
                    "INSERT INTO group_offsets (group_id, topic, partition, committed_offset, leader_epoch, metadata,
                       commit_ms)
                     SELECT group_id, topic, partition, committed_offset, leader_epoch, metadata, commit_ms
                     FROM txn_offsets WHERE group_id = $1 AND producer_id = $2
                     ON CONFLICT (group_id, topic, partition) DO UPDATE SET
                       committed_offset = excluded.committed_offset, leader_epoch = excluded.leader_epoch,
                       metadata = excluded.metadata, commit_ms = excluded.commit_ms",
                )
                .bind(g)
                .bind(producer_id)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("DELETE FROM txn_offsets WHERE group_id = $1 AND producer_id = $2")
                .bind(g)
                .bind(producer_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Partitions of a group with offsets in a transaction not yet ended.
    pub async fn pending_txn_offsets(&self, group_id: &str) -> Result<BTreeSet<(String, i32)>> {
        let rows = sqlx::query("SELECT DISTINCT topic, partition FROM txn_offsets WHERE group_id = $1")
            .bind(group_id)
            .fetch_all(&self.readers)
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn load_aborted_txns(&self) -> Result<Vec<AbortedTxnRow>> {
        let rows = sqlx::query(
            "SELECT topic_id, partition, producer_id, first_offset, last_offset FROM aborted_txns
             ORDER BY topic_id, partition, last_offset",
        )
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(aborted_from_row).collect()
    }

    pub async fn load_partition_aborted_txns(&self, topic_id: Uuid, partition: i32) -> Result<Vec<AbortedTxnRow>> {
        let rows = sqlx::query(
            "SELECT topic_id, partition, producer_id, first_offset, last_offset FROM aborted_txns
             WHERE topic_id = $1 AND partition = $2 ORDER BY last_offset",
        )
        .bind(topic_id.to_string())
        .bind(partition)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(aborted_from_row).collect()
    }
}

/// A fresh row for a transactional.id, at version 0 (not yet stored).
pub fn new_txn(transactional_id: &str, producer_id: i64, timeout_ms: i32) -> TxnRow {
    TxnRow {
        transactional_id: transactional_id.to_string(),
        producer_id,
        producer_epoch: 0,
        state: TxnState::Empty,
        timeout_ms,
        started_ms: -1,
        updated_ms: now_ms(),
        partitions: BTreeSet::new(),
        groups: BTreeSet::new(),
        version: 0,
    }
}
