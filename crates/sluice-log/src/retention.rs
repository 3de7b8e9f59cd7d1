//! Background upkeep: retention by time and size, deletion of objects no
//! partition needs, collection of objects orphaned by a crash between write
//! and commit, and rebuilding the index from object footers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_meta::{now_ms, BatchRow, MetaStore};
use uuid::Uuid;

use crate::object;
use crate::{DataStore, Inner, Partition, METRICS};

const DATA_PREFIX: &str = "data";

/// Every stored data object: the main store's (`data/`), and the tier store's (`tier/`) if
/// there is one.
async fn list_objects(store: &DataStore) -> Result<Vec<crate::store::ObjectInfo>> {
    let mut listed = store.list(DATA_PREFIX).await?;
    if store.tier_url().is_some() {
        listed.extend(store.list(crate::store::TIER_PREFIX.trim_end_matches('/')).await?);
    }
    Ok(listed)
}

pub(crate) async fn run(inner: Arc<Inner>) {
    let mut since_orphan_sweep = Duration::ZERO;
    loop {
        tokio::time::sleep(inner.opts.retention_check_interval).await;
        if let Err(e) = pass(&inner).await {
            tracing::warn!(error = %format!("{e:#}"), "retention pass failed");
        }
        let started = std::time::Instant::now();
        match crate::cleaner::pass(&inner).await {
            Ok(r) if r.partitions > 0 => tracing::info!(
                partitions = r.partitions,
                bytes_read = r.bytes_read,
                bytes_written = r.bytes_written,
                records_removed = r.records_removed,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "cleaned compacted partitions"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "log cleaning failed"),
        }
        match crate::tiering::pass(&inner).await {
            Ok(r) if r.segments > 0 => tracing::info!(
                segments = r.segments,
                batches = r.batches,
                bytes = r.bytes,
                "moved batches to the tier store"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "tiering paused: the tier store failed"),
        }
        match crate::compaction::pass(&inner).await {
            Ok(r) if r.segments > 0 => {
                tracing::info!(
                    segments = r.segments,
                    batches = r.batches,
                    bytes = r.bytes,
                    "compacted flush objects"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "compaction failed"),
        }
        since_orphan_sweep += inner.opts.retention_check_interval;
        // Listing the store is costly: sweep for orphans at most every grace/4,
        // and only on the one broker that collects garbage.
        let gc = inner.gc.load(std::sync::atomic::Ordering::Relaxed);
        if gc && since_orphan_sweep >= inner.opts.gc_orphan_grace / 4 {
            since_orphan_sweep = Duration::ZERO;
            if let Err(e) = collect_orphans(&inner, inner.opts.gc_orphan_grace).await {
                tracing::warn!(error = %format!("{e:#}"), "orphan collection failed");
            }
        }
    }
}

/// Applies every topic's retention, then deletes unreferenced objects.
pub(crate) async fn pass(inner: &Inner) -> Result<()> {
    let topics: Vec<_> = inner.topics.read().unwrap().by_id.values().cloned().collect();
    let now = now_ms();
    for topic in topics {
        let cfg = topic.config();
        // A compact-only topic keeps its newest records however old (`cleaner.rs`).
        if !cfg.delete || (cfg.retention_ms < 0 && cfg.retention_bytes < 0) {
            continue;
        }
        let parts: Vec<_> = topic.partitions.read().unwrap().clone();
        let cutoff = now.saturating_sub(cfg.retention_ms);
        // Each leader applies retention to its own partitions. Time retention reads the
        // head of the log up to the first batch it keeps; size retention is one query.
        for part in parts.into_iter().filter(|p| p.is_led()) {
            let o = part.offsets();
            let mut start = o.log_start;
            if cfg.retention_ms >= 0 {
                crate::scan_rows(&inner.meta, &part, o.log_start, |b| {
                    let expired = b.max_timestamp < cutoff;
                    if expired {
                        start = start.max(b.last_offset + 1);
                    }
                    expired
                })
                .await?;
            }
            if cfg.retention_bytes >= 0 {
                let by_size = inner
                    .meta
                    .size_retention_start(topic.id, part.index, cfg.retention_bytes)
                    .await?;
                start = start.max(by_size.unwrap_or(start));
            }
            let start = start.min(o.high_watermark);
            if start > o.log_start {
                advance_log_start(inner, &part, start).await?;
                tracing::debug!(topic = %topic.name, partition = part.index, start, "retention advanced log start");
            }
        }
    }
    if inner.gc.load(std::sync::atomic::Ordering::Relaxed) {
        delete_unreferenced(inner).await?;
    }
    Ok(())
}

pub(crate) async fn advance_log_start(inner: &Inner, part: &Partition, offset: i64) -> Result<()> {
    inner.meta.advance_log_start(part.topic_id, part.index, offset).await?;
    let mut s = part.state.lock().unwrap();
    if offset > s.log_start {
        s.log_start = offset;
    }
    while s.tail.front().is_some_and(|b| b.last_offset < offset) {
        s.tail.pop_front();
    }
    while s.aborted.front().is_some_and(|a| a.last_offset < offset) {
        s.aborted.pop_front();
    }
    Ok(())
}

async fn delete_unreferenced(inner: &Inner) -> Result<()> {
    // Objects created up to this millisecond included: a topic deleted right after its last
    // flush leaves nothing behind (the unit tests run within a millisecond, and failed now
    // and then).
    for key in inner.meta.unreferenced_objects(now_ms() + 1).await? {
        // A deletion frees blocks, which the disk may be told to discard: a burst of them
        // holds up the writes producers wait for.
        inner.store.give_way_to(&inner.foreground).await;
        inner.store.delete(&key).await?;
        inner.meta.forget_object(&key).await?;
        METRICS.objects_deleted.inc();
        tracing::debug!(object = %key, "deleted unreferenced object");
    }
    Ok(())
}

/// Deletes data objects older than `grace` that the metadata store never
/// recorded: left behind by a crash between object write and commit.
pub(crate) async fn collect_orphans(inner: &Inner, grace: Duration) -> Result<usize> {
    let cutoff = now_ms() - grace.as_millis() as i64;
    let mut deleted = 0;
    for obj in list_objects(&inner.store).await? {
        let referenced = inner.unindexed.lock().unwrap().contains(&obj.key);
        if obj.last_modified_ms <= cutoff && !referenced && !inner.meta.object_known(&obj.key).await? {
            inner.store.delete(&obj.key).await?;
            METRICS.objects_deleted.inc();
            deleted += 1;
            tracing::info!(object = %obj.key, "deleted orphaned object");
        }
    }
    Ok(deleted)
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    pub objects: usize,
    pub batches: usize,
    pub topics: usize,
    /// Objects whose footer or batches failed verification, left out.
    pub damaged: Vec<String>,
}

/// Rebuilds the offset index, objects table and watermarks from the data
/// objects' footers. Topics missing from the metadata store are recreated
/// under their recorded ids. Producer state is not recoverable from data and
/// is reset.
pub async fn rebuild_index(meta: &MetaStore, store: &DataStore) -> Result<RebuildReport> {
    let mut report = RebuildReport::default();
    let mut topics: BTreeMap<Uuid, (String, i32)> = BTreeMap::new();
    let mut objects = Vec::new();
    let mut rows: Vec<BatchRow> = Vec::new();
    for obj in list_objects(store).await.context("listing data objects")? {
        let data = store
            .get(&obj.key)
            .await
            .with_context(|| format!("reading {}", obj.key))?;
        let entries = match object::verify(&data) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(object = %obj.key, error = %e, "skipping damaged object");
                report.damaged.push(obj.key);
                continue;
            }
        };
        for e in entries {
            let t = topics.entry(e.topic_id).or_insert_with(|| (e.topic.clone(), 0));
            t.1 = t.1.max(e.partition + 1);
            rows.push(e.index_row(&obj.key));
        }
        objects.push((obj.key, data.len() as i64));
    }
    // Keep only topics still known, or recreate those whose rows were lost entirely.
    let known = meta.list_topics().await?;
    let topic_list: Vec<(Uuid, String, i32)> = topics
        .iter()
        .filter(|(id, (name, _))| known.iter().any(|k| k.id == **id) || !known.iter().any(|k| &k.name == name))
        .map(|(id, (name, n))| (*id, name.clone(), *n))
        .collect();
    rows.retain(|r| topic_list.iter().any(|t| t.0 == r.topic_id));
    report.objects = objects.len();
    report.batches = rows.len();
    report.topics = topic_list.len();
    meta.replace_index(&topic_list, &objects, &rows).await?;
    Ok(report)
}
