//! Which partitions this broker serves. The cluster layer decides; the log
//! applies it: taking a partition over reloads its offsets and producer state
//! from the metadata store at the new leader epoch, and handing one off first
//! drains the flusher so that nothing queued is lost.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Result;
use tokio::sync::oneshot;
use uuid::Uuid;

use sluice_meta::{PartitionRow, ProducerStateRow};

use crate::{Control, FlushMsg, Log, LogError, Topic};

impl Log {
    /// While set, this broker serves no writes: its lease may have lapsed.
    pub fn set_suspended(&self, suspended: bool) {
        self.inner.suspended.store(suspended, Ordering::Relaxed);
    }

    pub fn is_suspended(&self) -> bool {
        self.inner.suspended.load(Ordering::Relaxed)
    }

    /// Brokers that new partitions are given to, in order of preference.
    pub fn set_placement(&self, brokers: Vec<i32>) {
        if !brokers.is_empty() {
            *self.inner.placement.write().unwrap() = brokers;
        }
    }

    /// Whether this broker deletes unreferenced and orphaned objects.
    pub fn set_gc(&self, on: bool) {
        self.inner.gc.store(on, Ordering::Relaxed);
    }

    /// Resolves once every append queued before the call has been flushed.
    pub async fn barrier(&self) {
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .appends
            .send(FlushMsg::Control(Control::Barrier(tx)))
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Brings topics, configs, partition counts and known leaders up to date
    /// with the metadata store (other brokers may have changed them).
    pub async fn refresh_topics(&self) -> Result<()> {
        let rows = self.inner.meta.list_topics().await?;
        let parts = self.inner.meta.list_partitions().await?;
        let mut by_topic: HashMap<Uuid, Vec<_>> = HashMap::new();
        for p in parts {
            by_topic.entry(p.topic_id).or_default().push(p);
        }
        let live: std::collections::HashSet<Uuid> = rows.iter().map(|r| r.id).collect();
        for row in &rows {
            let parts = by_topic.remove(&row.id).unwrap_or_default();
            match self.topic_by_id(row.id) {
                None => self.inner.register(self.inner.topic_from_row(row, &parts)),
                Some(topic) => {
                    if *topic.overrides.read().unwrap() != row.configs {
                        *topic.config.write().unwrap() = self.inner.opts.defaults.resolve(&row.configs);
                        *topic.overrides.write().unwrap() = row.configs.clone();
                    }
                    let mut list = topic.partitions.write().unwrap();
                    for index in list.len() as i32..row.partitions {
                        list.push(self.inner.partition_from_rows(row.id, index, &parts));
                    }
                    for p in &parts {
                        if let Some(part) = list.get(p.partition as usize) {
                            part.leader.store(p.leader, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        let mut topics = self.inner.topics.write().unwrap();
        let gone: Vec<Arc<Topic>> = topics
            .by_id
            .values()
            .filter(|t| !live.contains(&t.id))
            .cloned()
            .collect();
        for t in gone {
            topics.by_id.remove(&t.id);
            topics.by_name.remove(&t.name);
        }
        Ok(())
    }

    /// Starts serving partitions as their leader at the given epochs, from
    /// the offsets and producer state their previous leaders committed.
    pub async fn take_leadership(&self, wanted: &[(Uuid, i32, i32)]) -> Result<(), LogError> {
        let mut parts = Vec::with_capacity(wanted.len());
        for &(topic_id, partition, epoch) in wanted {
            let Some(part) = self.topic_by_id(topic_id).and_then(|t| t.partition(partition)) else {
                continue;
            };
            let mut s = part.state.lock().unwrap();
            if !(s.led && s.leader_epoch == epoch) {
                s.led = false;
                drop(s);
                parts.push((part, epoch));
            }
        }
        if parts.is_empty() {
            return Ok(());
        }
        // Appends queued under an older leadership drain first.
        self.barrier().await;
        let rows: HashMap<(Uuid, i32), PartitionRow> = if parts.len() == 1 {
            let p = &parts[0].0;
            self.inner
                .meta
                .get_partition(p.topic_id, p.index)
                .await?
                .into_iter()
                .map(|r| ((r.topic_id, r.partition), r))
                .collect()
        } else {
            self.inner
                .meta
                .list_partitions()
                .await?
                .into_iter()
                .map(|r| ((r.topic_id, r.partition), r))
                .collect()
        };
        let mut producers: HashMap<(Uuid, i32), Vec<ProducerStateRow>> = HashMap::new();
        let states = if parts.len() == 1 {
            let p = &parts[0].0;
            self.inner.meta.load_partition_producers(p.topic_id, p.index).await?
        } else {
            self.inner.meta.load_producer_states().await?
        };
        for st in states {
            producers.entry((st.topic_id, st.partition)).or_default().push(st);
        }
        for (part, epoch) in parts {
            let key = (part.topic_id, part.index);
            let Some(row) = rows.get(&key) else { continue };
            let states = producers.remove(&key).unwrap_or_default();
            let aborted = self.inner.meta.load_partition_aborted_txns(key.0, key.1).await?;
            self.inner
                .appends
                .send(FlushMsg::Control(Control::Producers(key, states)))
                .await
                .map_err(|_| LogError::Storage("log is shutting down".into()))?;
            let mut s = part.state.lock().unwrap();
            s.log_start = row.log_start_offset;
            s.high_watermark = row.high_watermark;
            s.leader_epoch = epoch;
            // Another leader may have written since this broker last cached the tail.
            s.tail.clear();
            s.aborted = aborted.into();
            s.led = true;
            part.leader.store(self.inner.opts.node_id, Ordering::Relaxed);
            drop(s);
            tracing::info!(topic_id = %part.topic_id, partition = part.index, epoch, "leading partition");
        }
        Ok(())
    }

    /// Stops serving a partition at once. Appends still queued for it are
    /// refused, or fenced by the metadata store if already being committed.
    pub fn release_leadership(&self, topic_id: Uuid, partition: i32) {
        if let Some(part) = self.topic_by_id(topic_id).and_then(|t| t.partition(partition)) {
            let mut s = part.state.lock().unwrap();
            if s.led {
                s.led = false;
                tracing::info!(%topic_id, partition, "stopped leading partition");
            }
        }
    }

    /// Stops taking appends for a partition and waits until the queued ones
    /// are committed, so that a successor starts from everything acknowledged.
    pub async fn hand_off(&self, topic_id: Uuid, partition: i32) {
        self.release_leadership(topic_id, partition);
        self.barrier().await;
    }

    /// Partitions this broker leads: (topic id, partition, leader epoch).
    pub fn led_partitions(&self) -> Vec<(Uuid, i32, i32)> {
        let mut out = Vec::new();
        for topic in self.topics() {
            for part in topic.partitions.read().unwrap().iter() {
                let s = part.state.lock().unwrap();
                if s.led {
                    out.push((topic.id, part.index, s.leader_epoch));
                }
            }
        }
        out
    }
}
