//! The cluster's MQTT routes: the topic filters each broker has subscribers for, in
//! table `mqtt_routes`. They decide which publishes are forwarded to other brokers
//! (`forward`), and let a command no subscriber matched on any broker be reported once
//! (`message.dropped`), by the gateway leading its partition.
//!
//! Each broker writes only what changed in its filters, in statements of `CHUNK` rows, and
//! moves its version in `mqtt_route_versions` in the same transaction. The others read
//! the versions every second and a broker's filters again only when its version moved,
//! so a broker with a filter per device (tens of thousands) costs one small query a
//! second once its filters are written.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use anyhow::Result;
use sluice_meta::MetaStore;
use sqlx::{AnyPool, Row};

use crate::broker::Broker;
use crate::topic::{FilterTree, SubFilter};

/// Rows per INSERT or DELETE statement.
const CHUNK: usize = 500;

pub struct Routes {
    node_id: i32,
    /// What other live brokers have subscribers for, as last read.
    elsewhere: RwLock<Elsewhere>,
}

#[derive(Default)]
struct Elsewhere {
    plain: FilterTree<()>,
    /// filter → share group → the brokers with members in it.
    shared: FilterTree<BTreeMap<String, BTreeSet<i32>>>,
}

/// Of the brokers with members in share group `group`, the one that delivers the message
/// `key` names: the same on every broker that has the same view of the group.
pub fn share_owner(brokers: &BTreeSet<i32>, group: &str, key: u64) -> Option<i32> {
    // FNV-1a over the group, seeded with the key, so that groups do not move in step.
    let mut h = 0xcbf2_9ce4_8422_2325 ^ key;
    for b in group.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let n = brokers.len() as u64;
    (n > 0).then(|| *brokers.iter().nth((h % n) as usize).expect("in range"))
}

/// What the sync loop remembers between steps.
#[derive(Default)]
struct Synced {
    /// This broker's filters as written, and the subscription generation they are of.
    written: HashSet<String>,
    written_generation: Option<u64>,
    /// Other live brokers' filters, with the version they were read at.
    others: HashMap<i32, (i64, Vec<String>)>,
}

impl Routes {
    /// Clears this broker's rows of an earlier run, then every `every` writes its
    /// subscriptions' filters and reads the other live brokers'.
    pub async fn start(broker: &Arc<Broker>, meta: MetaStore, node_id: i32, every: Duration) -> Result<Arc<Self>> {
        let mut tx = meta.pool().begin().await?;
        sqlx::query("DELETE FROM mqtt_routes WHERE node_id = $1")
            .bind(node_id)
            .execute(&mut *tx)
            .await?;
        bump_version(&mut tx, node_id).await?;
        tx.commit().await?;
        let routes = Arc::new(Self {
            node_id,
            elsewhere: RwLock::new(Elsewhere::default()),
        });
        tokio::spawn(sync(Arc::downgrade(&routes), Arc::downgrade(broker), meta, every));
        Ok(routes)
    }

    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    /// Whether another live broker has a subscription (plain or shared) matching `topic`.
    pub fn elsewhere(&self, topic: &str) -> bool {
        let e = self.elsewhere.read().unwrap();
        e.plain.any_match(topic) || e.shared.any_match(topic)
    }

    /// Whether another live broker has a plain subscription matching `topic`.
    pub fn plain_elsewhere(&self, topic: &str) -> bool {
        self.elsewhere.read().unwrap().plain.any_match(topic)
    }

    /// Other live brokers' share groups matching `topic`: (group, filter, brokers).
    pub fn shares_elsewhere(&self, topic: &str) -> Vec<(String, String, BTreeSet<i32>)> {
        let mut out = Vec::new();
        self.elsewhere
            .read()
            .unwrap()
            .shared
            .for_each_match(topic, |filter, groups| {
                for (group, brokers) in groups {
                    out.push((group.clone(), filter.to_string(), brokers.clone()));
                }
            });
        out
    }

    /// The other live brokers with members in share group `group` of `filter`.
    pub fn share_brokers(&self, group: &str, filter: &str) -> BTreeSet<i32> {
        let e = self.elsewhere.read().unwrap();
        e.shared
            .get(filter)
            .and_then(|g| g.get(group))
            .cloned()
            .unwrap_or_default()
    }

    async fn step(&self, broker: &Broker, meta: &MetaStore, synced: &mut Synced) -> Result<()> {
        let pool = meta.pool();
        if synced.written_generation != Some(broker.filters_generation()) {
            let (generation, now) = broker.filters();
            let added: Vec<&String> = now.difference(&synced.written).collect();
            let removed: Vec<&String> = synced.written.difference(&now).collect();
            if !added.is_empty() || !removed.is_empty() {
                write_changes(pool, self.node_id, &added, &removed).await?;
            }
            synced.written = now;
            synced.written_generation = Some(generation);
        }
        let live: HashSet<i32> = meta
            .list_brokers()
            .await?
            .into_iter()
            .filter(|b| b.alive && b.node_id != self.node_id)
            .map(|b| b.node_id)
            .collect();
        let versions = sqlx::query("SELECT node_id, version FROM mqtt_route_versions WHERE node_id <> $1")
            .bind(self.node_id)
            .fetch_all(pool)
            .await?;
        let mut changed = false;
        let mut current = HashSet::new();
        for r in versions {
            let (node, version): (i32, i64) = (r.try_get("node_id")?, r.try_get("version")?);
            if !live.contains(&node) {
                continue;
            }
            current.insert(node);
            if synced.others.get(&node).is_some_and(|(v, _)| *v == version) {
                continue;
            }
            let filters = sqlx::query("SELECT filter FROM mqtt_routes WHERE node_id = $1")
                .bind(node)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>("filter"))
                .collect::<Result<Vec<_>, _>>()?;
            synced.others.insert(node, (version, filters));
            changed = true;
        }
        // Brokers that died or left take their filters with them.
        let before = synced.others.len();
        synced.others.retain(|node, _| current.contains(node));
        if changed || synced.others.len() != before {
            let mut next = Elsewhere::default();
            for (node, (_, filters)) in &synced.others {
                for raw in filters {
                    match SubFilter::parse(raw) {
                        Some(SubFilter {
                            group: Some(group),
                            filter,
                        }) => {
                            let groups = next.shared.get_or_insert_with(&filter, BTreeMap::new);
                            groups.entry(group).or_default().insert(*node);
                        }
                        _ => {
                            next.plain.get_or_insert_with(raw, || ());
                        }
                    }
                }
            }
            *self.elsewhere.write().unwrap() = next;
        }
        Ok(())
    }
}

/// Writes this broker's added and removed filters and moves its version, in one transaction.
async fn write_changes(pool: &AnyPool, node_id: i32, added: &[&String], removed: &[&String]) -> Result<()> {
    let mut tx = pool.begin().await?;
    for (filters, sql) in [(added, insert_sql as fn(usize) -> String), (removed, delete_sql)] {
        // One statement per chunk, with this broker as $1 and the filters as $2, $3, ...
        for chunk in filters.chunks(CHUNK) {
            let sql = sql(chunk.len());
            let mut q = sqlx::query(&sql).bind(node_id);
            for f in chunk {
                q = q.bind(f.as_str());
            }
            q.execute(&mut *tx).await?;
        }
    }
    bump_version(&mut tx, node_id).await?;
    tx.commit().await?;
    Ok(())
}

/// Inserts `n` filters of the broker `$1`: `$2`, `$3`, ...
fn insert_sql(n: usize) -> String {
    let rows: Vec<String> = (2..n + 2).map(|i| format!("($1, ${i})")).collect();
    format!(
        "INSERT INTO mqtt_routes (node_id, filter) VALUES {} ON CONFLICT DO NOTHING",
        rows.join(", ")
    )
}

/// Deletes `n` filters of the broker `$1`: `$2`, `$3`, ...
fn delete_sql(n: usize) -> String {
    let list: Vec<String> = (2..n + 2).map(|i| format!("${i}")).collect();
    format!(
        "DELETE FROM mqtt_routes WHERE node_id = $1 AND filter IN ({})",
        list.join(", ")
    )
}

async fn bump_version(tx: &mut sqlx::Transaction<'_, sqlx::Any>, node_id: i32) -> Result<()> {
    sqlx::query(
        "INSERT INTO mqtt_route_versions (node_id, version) VALUES ($1, 1)
         ON CONFLICT (node_id) DO UPDATE SET version = mqtt_route_versions.version + 1",
    )
    .bind(node_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn sync(routes: Weak<Routes>, broker: Weak<Broker>, meta: MetaStore, every: Duration) {
    let mut synced = Synced::default();
    loop {
        let (Some(routes), Some(broker)) = (routes.upgrade(), broker.upgrade()) else {
            return;
        };
        if let Err(e) = routes.step(&broker, &meta, &mut synced).await {
            // What failed is tried again next time: `synced` moves only past what committed.
            tracing::warn!(error = %format!("{e:#}"), "syncing MQTT routes failed");
        }
        drop((routes, broker));
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_group_owner_is_one_of_its_brokers_in_turn() {
        let brokers: BTreeSet<i32> = [1, 2, 3].into();
        let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
        for key in 0..300 {
            let owner = share_owner(&brokers, "workers", key).unwrap();
            assert_eq!(
                share_owner(&brokers, "workers", key),
                Some(owner),
                "the same on every broker"
            );
            *counts.entry(owner).or_default() += 1;
        }
        assert_eq!(counts.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert!(counts.values().all(|&c| c >= 60), "{counts:?}");
        assert_eq!(share_owner(&BTreeSet::new(), "workers", 7), None);
    }
}
