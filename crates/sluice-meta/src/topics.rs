//! Topics and partitions: names, configs, partition counts, leaders, and the
//! leader-epoch history; every change bumps the topology version brokers poll.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

use crate::{now_ms, parse_uuid, MetaStore};

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

impl MetaStore {
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

fn topic_from_row(r: &AnyRow) -> Result<TopicRow> {
    Ok(TopicRow {
        id: parse_uuid(r.get(0))?,
        name: r.get(1),
        partitions: r.get(2),
        configs: serde_json::from_str(r.get(3))?,
        created_ms: r.get(4),
    })
}

pub(crate) async fn bump_topology(tx: &mut Transaction<'_, Any>) -> Result<()> {
    sqlx::query("UPDATE topology SET version = version + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(crate) async fn insert_partitions(
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
