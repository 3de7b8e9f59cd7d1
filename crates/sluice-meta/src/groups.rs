//! Consumer groups' durable part: existence, generation, emptiness, and committed offsets.

use anyhow::Result;
use sqlx::Row;

use crate::{now_ms, MetaStore};

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
}
