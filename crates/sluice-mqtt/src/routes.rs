//! The cluster's MQTT routes: the topic filters each broker has subscribers for, in
//! table `mqtt_routes`, so that a command no subscriber matched on any broker is
//! reported once (`message.dropped`), by the gateway leading its partition.

use std::collections::HashSet;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use anyhow::Result;
use sluice_meta::MetaStore;
use sqlx::Row;

use crate::broker::Broker;
use crate::topic::FilterTree;

pub struct Routes {
    node_id: i32,
    /// The filters other live brokers have subscribers for, as last read.
    elsewhere: RwLock<FilterTree<()>>,
}

impl Routes {
    /// Clears this broker's rows of an earlier run, then every `every` writes its
    /// subscriptions' filters and reads the other live brokers'.
    pub async fn start(broker: &Arc<Broker>, meta: MetaStore, node_id: i32, every: Duration) -> Result<Arc<Self>> {
        sqlx::query("DELETE FROM mqtt_routes WHERE node_id = $1")
            .bind(node_id)
            .execute(meta.pool())
            .await?;
        let routes = Arc::new(Self {
            node_id,
            elsewhere: RwLock::new(FilterTree::default()),
        });
        tokio::spawn(sync(Arc::downgrade(&routes), Arc::downgrade(broker), meta, every));
        Ok(routes)
    }

    /// Whether another live broker has a subscription matching `topic`.
    pub fn elsewhere(&self, topic: &str) -> bool {
        self.elsewhere.read().unwrap().any_match(topic)
    }

    async fn step(&self, broker: &Broker, meta: &MetaStore, written: &mut HashSet<String>) -> Result<()> {
        let pool = meta.pool();
        let now = broker.filters();
        for f in now.difference(written) {
            sqlx::query("INSERT INTO mqtt_routes (node_id, filter) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(self.node_id)
                .bind(f)
                .execute(pool)
                .await?;
        }
        for f in written.difference(&now) {
            sqlx::query("DELETE FROM mqtt_routes WHERE node_id = $1 AND filter = $2")
                .bind(self.node_id)
                .bind(f)
                .execute(pool)
                .await?;
        }
        *written = now;
        let live: HashSet<i32> = meta
            .list_brokers()
            .await?
            .into_iter()
            .filter(|b| b.alive)
            .map(|b| b.node_id)
            .collect();
        let rows = sqlx::query("SELECT node_id, filter FROM mqtt_routes WHERE node_id <> $1")
            .bind(self.node_id)
            .fetch_all(pool)
            .await?;
        let mut others = FilterTree::default();
        for r in rows {
            if live.contains(&r.try_get::<i32, _>("node_id")?) {
                others.get_or_insert_with(&r.try_get::<String, _>("filter")?, || ());
            }
        }
        *self.elsewhere.write().unwrap() = others;
        Ok(())
    }
}

async fn sync(routes: Weak<Routes>, broker: Weak<Broker>, meta: MetaStore, every: Duration) {
    let mut written = HashSet::new();
    loop {
        let (Some(routes), Some(broker)) = (routes.upgrade(), broker.upgrade()) else {
            return;
        };
        if let Err(e) = routes.step(&broker, &meta, &mut written).await {
            tracing::warn!(error = %format!("{e:#}"), "syncing MQTT routes failed");
        }
        drop((routes, broker));
        tokio::time::sleep(every).await;
    }
}
