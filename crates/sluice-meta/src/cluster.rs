//! Cluster membership and leadership: broker leases, named leases (the
//! controller's), and who leads each partition and group-coordinator shard.
//!
//! Every lease is timed on the database's clock. Every change of leader bumps
//! the leader epoch in the same statement that checks the old one, so two
//! brokers can never both believe a stale assignment was theirs to change.

use anyhow::Result;
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

use crate::{parse_uuid, MetaStore};

/// Number of group-coordinator shards (rows of `group_shards`).
pub const GROUP_SHARDS: i32 = 16;

/// The group-coordinator shard a group belongs to.
pub fn group_shard(group_id: &str) -> i32 {
    (crc32c::crc32c(group_id.as_bytes()) % GROUP_SHARDS as u32) as i32
}

/// What a broker registers about itself.
#[derive(Debug, Clone, Copy)]
pub struct BrokerRegistration<'a> {
    pub node_id: i32,
    pub host: &'a str,
    pub port: i32,
    pub http: &'a str,
    pub listeners: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerRow {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    /// The broker's HTTP address, for `sluice cluster` and the console.
    pub http: String,
    /// Every Kafka listener it advertises, as `PROTOCOL://host:port,...`; empty for one
    /// PLAINTEXT listener at `host:port`.
    pub listeners: String,
    pub started_ms: i64,
    pub lease_expires_ms: i64,
    pub draining: bool,
    /// Whether the lease was still running on the database clock when read.
    pub alive: bool,
}

/// What a leader is held for: a partition, or a shard of the group coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    Partition(Uuid, i32),
    GroupShard(i32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    pub slot: Slot,
    /// -1 when nobody leads.
    pub leader: i32,
    pub epoch: i32,
    /// Where the controller wants the slot moved; -1 for nowhere.
    pub next_leader: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub name: String,
    pub holder: i32,
    pub epoch: i64,
    pub expires_ms: i64,
    pub alive: bool,
}

impl MetaStore {
    /// The database clock, in Unix milliseconds.
    pub async fn db_now_ms(&self) -> Result<i64> {
        let row = sqlx::query(&format!("SELECT {}", self.backend.now_ms_sql()))
            .fetch_one(&self.readers)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Registers (or re-registers) a broker with a fresh lease.
    pub async fn register_broker(&self, b: &BrokerRegistration<'_>, lease_ms: i64) -> Result<()> {
        let now = self.backend.now_ms_sql();
        sqlx::query(&format!(
            "INSERT INTO brokers (node_id, host, port, http, listeners, started_ms, lease_expires_ms, draining)
             VALUES ($1, $2, $3, $4, $5, {now}, {now} + $6, 0)
             ON CONFLICT (node_id) DO UPDATE SET host = excluded.host, port = excluded.port, http = excluded.http,
               listeners = excluded.listeners, started_ms = excluded.started_ms,
               lease_expires_ms = excluded.lease_expires_ms, draining = 0"
        ))
        .bind(b.node_id)
        .bind(b.host)
        .bind(b.port)
        .bind(b.http)
        .bind(b.listeners)
        .bind(lease_ms)
        .execute(&self.writer)
        .await?;
        self.bump_topology().await
    }

    /// Extends a broker's lease; false if the broker is no longer registered.
    pub async fn renew_broker(&self, node_id: i32, lease_ms: i64) -> Result<bool> {
        let now = self.backend.now_ms_sql();
        let n = sqlx::query(&format!(
            "UPDATE brokers SET lease_expires_ms = {now} + $1 WHERE node_id = $2"
        ))
        .bind(lease_ms)
        .bind(node_id)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    pub async fn set_draining(&self, node_id: i32, draining: bool) -> Result<bool> {
        let n = sqlx::query("UPDATE brokers SET draining = $1 WHERE node_id = $2")
            .bind(draining as i32)
            .bind(node_id)
            .execute(&self.writer)
            .await?
            .rows_affected();
        self.bump_topology().await?;
        Ok(n == 1)
    }

    /// Removes a broker that has handed everything over and is leaving.
    pub async fn deregister_broker(&self, node_id: i32) -> Result<()> {
        sqlx::query("DELETE FROM brokers WHERE node_id = $1")
            .bind(node_id)
            .execute(&self.writer)
            .await?;
        self.bump_topology().await
    }

    pub async fn list_brokers(&self) -> Result<Vec<BrokerRow>> {
        let now = self.backend.now_ms_sql();
        let rows = sqlx::query(&format!(
            "SELECT node_id, host, port, http, started_ms, lease_expires_ms, draining,
               CASE WHEN lease_expires_ms > {now} THEN 1 ELSE 0 END, listeners
             FROM brokers ORDER BY node_id"
        ))
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(BrokerRow {
                    node_id: r.try_get(0)?,
                    host: r.try_get(1)?,
                    port: r.try_get(2)?,
                    http: r.try_get(3)?,
                    started_ms: r.try_get(4)?,
                    lease_expires_ms: r.try_get(5)?,
                    draining: r.try_get::<i32, _>(6)? != 0,
                    alive: r.try_get::<i32, _>(7)? != 0,
                    listeners: r.try_get(8)?,
                })
            })
            .collect()
    }

    /// Takes or renews the lease `name` for `holder`: granted if free, expired
    /// or already held by `holder`. Returns the lease epoch when granted; the
    /// epoch rises whenever the lease changes hands or lapses.
    pub async fn acquire_lease(&self, name: &str, holder: i32, lease_ms: i64) -> Result<Option<i64>> {
        let now = self.backend.now_ms_sql();
        let row = sqlx::query(&format!(
            "INSERT INTO leases (name, holder, epoch, expires_ms) VALUES ($1, $2, 1, {now} + $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms,
               epoch = CASE WHEN leases.holder = excluded.holder AND leases.expires_ms > {now}
                            THEN leases.epoch ELSE leases.epoch + 1 END
             WHERE leases.holder = excluded.holder OR leases.expires_ms <= {now}
             RETURNING epoch"
        ))
        .bind(name)
        .bind(holder)
        .bind(lease_ms)
        .fetch_optional(&self.writer)
        .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Gives a lease up early (on shutdown), if `holder` still has it.
    pub async fn release_lease(&self, name: &str, holder: i32) -> Result<()> {
        sqlx::query("UPDATE leases SET expires_ms = 0 WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn get_lease(&self, name: &str) -> Result<Option<LeaseRow>> {
        let now = self.backend.now_ms_sql();
        let row = sqlx::query(&format!(
            "SELECT name, holder, epoch, expires_ms, CASE WHEN expires_ms > {now} THEN 1 ELSE 0 END
             FROM leases WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.readers)
        .await?;
        row.map(|r| {
            Ok(LeaseRow {
                name: r.try_get(0)?,
                holder: r.try_get(1)?,
                epoch: r.try_get(2)?,
                expires_ms: r.try_get(3)?,
                alive: r.try_get::<i32, _>(4)? != 0,
            })
        })
        .transpose()
    }

    /// Changes whenever topics, configs, brokers or leaders change.
    pub async fn topology_version(&self) -> Result<i64> {
        let row = sqlx::query("SELECT version FROM topology WHERE id = 1")
            .fetch_one(&self.readers)
            .await?;
        Ok(row.try_get(0)?)
    }

    pub(crate) async fn bump_topology(&self) -> Result<()> {
        sqlx::query("UPDATE topology SET version = version + 1 WHERE id = 1")
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Who leads every partition and group shard.
    pub async fn list_leadership(&self) -> Result<Vec<Leadership>> {
        let parts = sqlx::query("SELECT topic_id, partition, leader, leader_epoch, next_leader FROM partitions")
            .fetch_all(&self.readers)
            .await?;
        let shards = sqlx::query("SELECT shard, leader, leader_epoch, next_leader FROM group_shards ORDER BY shard")
            .fetch_all(&self.readers)
            .await?;
        let mut out = Vec::with_capacity(parts.len() + shards.len());
        for r in &parts {
            out.push(Leadership {
                slot: Slot::Partition(parse_uuid(r.try_get(0)?)?, r.try_get(1)?),
                leader: r.try_get(2)?,
                epoch: r.try_get(3)?,
                next_leader: r.try_get(4)?,
            });
        }
        for r in &shards {
            out.push(Leadership {
                slot: Slot::GroupShard(r.try_get(0)?),
                leader: r.try_get(1)?,
                epoch: r.try_get(2)?,
                next_leader: r.try_get(3)?,
            });
        }
        Ok(out)
    }

    /// Makes `to` the leader of `slot` with the next epoch, if the slot is
    /// still at `from_epoch`. A partition's new epoch starts at its high
    /// watermark. Returns the new epoch, or None if someone else changed it first.
    pub async fn set_leader(&self, slot: Slot, from_epoch: i32, to: i32) -> Result<Option<i32>> {
        Ok(self.set_leaders(&[(slot, from_epoch, to)]).await?[0])
    }

    /// [`MetaStore::set_leader`] for many slots in one transaction.
    pub async fn set_leaders(&self, moves: &[(Slot, i32, i32)]) -> Result<Vec<Option<i32>>> {
        let mut tx = self.writer.begin().await?;
        let mut out = Vec::with_capacity(moves.len());
        for &(slot, from_epoch, to) in moves {
            let changed = match slot {
                Slot::Partition(topic_id, partition) => {
                    let n = sqlx::query(
                        "UPDATE partitions SET leader = $1, leader_epoch = leader_epoch + 1, next_leader = -1
                         WHERE topic_id = $2 AND partition = $3 AND leader_epoch = $4",
                    )
                    .bind(to)
                    .bind(topic_id.to_string())
                    .bind(partition)
                    .bind(from_epoch)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n == 1 {
                        record_epoch_start(&mut tx, topic_id, partition, from_epoch + 1).await?;
                    }
                    n == 1
                }
                Slot::GroupShard(shard) => {
                    sqlx::query(
                        "UPDATE group_shards SET leader = $1, leader_epoch = leader_epoch + 1, next_leader = -1
                         WHERE shard = $2 AND leader_epoch = $3",
                    )
                    .bind(to)
                    .bind(shard)
                    .bind(from_epoch)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1
                }
            };
            out.push(changed.then_some(from_epoch + 1));
        }
        if out.iter().any(Option::is_some) {
            sqlx::query("UPDATE topology SET version = version + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Asks the leader of `slot` (at `epoch`) to hand it to `to` (-1: cancel).
    pub async fn request_move(&self, slot: Slot, epoch: i32, to: i32) -> Result<bool> {
        let q = match slot {
            Slot::Partition(topic_id, partition) => sqlx::query(
                "UPDATE partitions SET next_leader = $1 WHERE topic_id = $2 AND partition = $3 AND leader_epoch = $4",
            )
            .bind(to)
            .bind(topic_id.to_string())
            .bind(partition)
            .bind(epoch),
            Slot::GroupShard(shard) => {
                sqlx::query("UPDATE group_shards SET next_leader = $1 WHERE shard = $2 AND leader_epoch = $3")
                    .bind(to)
                    .bind(shard)
                    .bind(epoch)
            }
        };
        let n = q.execute(&self.writer).await?.rows_affected();
        if n == 1 {
            self.bump_topology().await?;
        }
        Ok(n == 1)
    }
}

/// Where `epoch` of a partition begins: its high watermark now.
async fn record_epoch_start(tx: &mut Transaction<'_, Any>, topic_id: Uuid, partition: i32, epoch: i32) -> Result<()> {
    sqlx::query(
        "INSERT INTO partition_epochs (topic_id, partition, epoch, start_offset)
         SELECT topic_id, partition, $1, high_watermark FROM partitions WHERE topic_id = $2 AND partition = $3
         ON CONFLICT DO NOTHING",
    )
    .bind(epoch)
    .bind(topic_id.to_string())
    .bind(partition)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::tests::store;
    use crate::{FlushCommit, WatermarkUpdate};

    fn reg(node_id: i32, host: &'static str) -> BrokerRegistration<'static> {
        BrokerRegistration {
            node_id,
            host,
            port: 9092,
            http: "",
            listeners: "",
        }
    }

    #[tokio::test]
    async fn broker_leases_live_and_lapse() {
        let (_d, m) = store().await;
        m.register_broker(&reg(1, "h1"), 60_000).await.unwrap();
        m.register_broker(&reg(2, "h2"), 1).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let brokers = m.list_brokers().await.unwrap();
        assert_eq!(
            brokers.iter().map(|b| (b.node_id, b.alive)).collect::<Vec<_>>(),
            vec![(1, true), (2, false)]
        );
        assert!(m.renew_broker(2, 60_000).await.unwrap());
        assert!(m.list_brokers().await.unwrap()[1].alive);
        assert!(m.set_draining(2, true).await.unwrap());
        assert!(m.list_brokers().await.unwrap()[1].draining);
        m.deregister_broker(2).await.unwrap();
        assert!(!m.renew_broker(2, 60_000).await.unwrap());
        assert_eq!(m.list_brokers().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_lease_has_one_holder_until_it_lapses() {
        let (_d, m) = store().await;
        assert_eq!(m.acquire_lease("controller", 1, 60_000).await.unwrap(), Some(1));
        assert_eq!(m.acquire_lease("controller", 2, 60_000).await.unwrap(), None);
        // Renewal by the holder keeps the epoch.
        assert_eq!(m.acquire_lease("controller", 1, 60_000).await.unwrap(), Some(1));
        m.release_lease("controller", 1).await.unwrap();
        assert_eq!(m.acquire_lease("controller", 2, 1).await.unwrap(), Some(2));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let lease = m.get_lease("controller").await.unwrap().unwrap();
        assert_eq!((lease.holder, lease.alive), (2, false));
        assert_eq!(m.acquire_lease("controller", 3, 60_000).await.unwrap(), Some(3));
    }

    #[tokio::test]
    async fn leadership_changes_are_fenced_on_the_epoch() {
        let (_d, m) = store().await;
        let t = m.create_topic("t", 1, &BTreeMap::new(), &[]).await.unwrap().unwrap();
        let slot = Slot::Partition(t.id, 0);
        let v0 = m.topology_version().await.unwrap();
        assert_eq!(m.set_leader(slot, 0, 1).await.unwrap(), Some(1));
        assert!(m.topology_version().await.unwrap() > v0);
        // A second change from the stale epoch 0 loses.
        assert_eq!(m.set_leader(slot, 0, 2).await.unwrap(), None);
        let commit = |epoch, key: &str| FlushCommit {
            objects: vec![(key.to_string(), 1)],
            batches: vec![],
            watermarks: vec![WatermarkUpdate {
                topic_id: t.id,
                partition: 0,
                high_watermark: 5,
                leader_epoch: epoch,
            }],
            producers: vec![],
            aborted: vec![],
        };
        assert_eq!(m.commit_flush(&commit(1, "a")).await.unwrap(), vec![true]);
        // Broker 2 takes over; broker 1's late commit at epoch 1 is rejected.
        assert!(m.request_move(slot, 1, 2).await.unwrap());
        let l = m.list_leadership().await.unwrap();
        let p = l.iter().find(|l| l.slot == slot).unwrap();
        assert_eq!((p.leader, p.epoch, p.next_leader), (1, 1, 2));
        assert_eq!(m.set_leader(slot, 1, 2).await.unwrap(), Some(2));
        assert_eq!(m.commit_flush(&commit(1, "b")).await.unwrap(), vec![false]);
        assert_eq!(m.epoch_history(t.id, 0).await.unwrap(), vec![(0, 0), (1, 0), (2, 5)]);
        let shards: Vec<_> = m
            .list_leadership()
            .await
            .unwrap()
            .into_iter()
            .filter(|l| matches!(l.slot, Slot::GroupShard(_)))
            .collect();
        assert_eq!(shards.len(), GROUP_SHARDS as usize);
        assert_eq!(m.set_leader(Slot::GroupShard(3), 0, 2).await.unwrap(), Some(1));
    }
}
