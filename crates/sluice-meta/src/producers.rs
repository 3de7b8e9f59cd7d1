//! Producer ids and idempotent-producer state per partition (recent sequences, open
//! transaction), and the ranges of aborted transactions.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::{now_ms, parse_uuid, MetaStore};

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

impl MetaStore {
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
