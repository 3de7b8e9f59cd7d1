//! Cold tiering (KIP-405's names): a topic with `remote.storage.enable=true` keeps
//! `local.retention.ms` / `local.retention.bytes` of its log in the main store, and its
//! older batches move to the tier store (`--tier-store`).
//!
//! A move is a compaction into another store: a partition's oldest batches past local
//! retention are copied, byte for byte, into one segment under `tier/`, the copy is read
//! back and verified (footer and every batch CRC), and only then are their index rows
//! repointed at it, in one checked transaction. The main store's objects are then
//! unreferenced and collected by the normal GC, after the copy is known good. Offsets,
//! bytes and reads do not change: the index row's key says which store holds a batch.
//! `retention.ms` and `retention.bytes` still bound the whole log, tier included.
//! Run by each partition's leader; a tier store that fails pauses tiering (the
//! `sluice_log_tier_errors_total` metric counts it) and deletes nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use sluice_meta::{now_ms, BatchRow};
use uuid::Uuid;

use crate::compaction::{read_segment, SEGMENT_SUFFIX};
use crate::store::{in_tier, TIER_PREFIX};
use crate::{object, scan_rows, Inner, Partition, Topic, METRICS};

/// What one pass moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TierReport {
    pub segments: usize,
    pub batches: usize,
    pub bytes: u64,
}

pub(crate) async fn pass(inner: &Inner) -> Result<TierReport> {
    let mut report = TierReport::default();
    if inner.store.tier_url().is_none() {
        return Ok(report);
    }
    let topics: Vec<Arc<Topic>> = inner.topics.read().unwrap().by_id.values().cloned().collect();
    for topic in topics.into_iter().filter(|t| t.config().remote_storage) {
        let parts: Vec<_> = topic.partitions.read().unwrap().clone();
        for part in parts.into_iter().filter(|p| p.is_led()) {
            // A partition is moved a segment at a time until nothing more is due.
            loop {
                let moved = tier_partition(inner, &topic, &part).await.inspect_err(|_| {
                    METRICS.tier_errors.inc();
                })?;
                report.segments += moved.segments;
                report.batches += moved.batches;
                report.bytes += moved.bytes;
                if moved.segments == 0 {
                    break;
                }
            }
        }
    }
    Ok(report)
}

/// The oldest batches of a partition that are due for the tier store, contiguous and up
/// to `segment_bytes` (at least one).
async fn due_rows(inner: &Inner, topic: &Topic, part: &Partition) -> Result<Vec<BatchRow>> {
    let cfg = topic.config();
    let time_cutoff = match cfg.local_retention_ms {
        ms if ms >= 0 => now_ms().saturating_sub(ms),
        _ => i64::MIN,
    };
    // Batches before this offset are past local.retention.bytes.
    let size_cutoff = match cfg.local_retention_bytes {
        b if b >= 0 => inner
            .meta
            .size_retention_start(topic.id, part.index, b)
            .await?
            .unwrap_or(i64::MIN),
        _ => i64::MIN,
    };
    if time_cutoff == i64::MIN && size_cutoff == i64::MIN {
        return Ok(Vec::new());
    }
    let from = part.offsets().log_start.max(part.tiered_to.load(Ordering::Relaxed));
    let (mut run, mut bytes) = (Vec::new(), 0usize);
    let limit = inner.opts.segment_bytes;
    scan_rows(&inner.meta, part, from, |r| {
        if in_tier(&r.object_key) {
            if run.is_empty() {
                part.tiered_to.fetch_max(r.last_offset + 1, Ordering::Relaxed);
            }
            return run.is_empty();
        }
        let due = r.max_timestamp < time_cutoff || r.last_offset < size_cutoff;
        if !due || (!run.is_empty() && bytes + r.length as usize > limit) {
            return false;
        }
        bytes += r.length as usize;
        run.push(r);
        true
    })
    .await?;
    Ok(run)
}

/// Moves a partition's oldest due batches into one tier segment.
async fn tier_partition(inner: &Inner, topic: &Topic, part: &Partition) -> Result<TierReport> {
    let run = due_rows(inner, topic, part).await?;
    if run.is_empty() {
        return Ok(TierReport::default());
    }
    let bytes: usize = run.iter().map(|r| r.length as usize).sum();
    let (parts, footer) = read_segment(inner, topic, part, &run).await?;
    let size: usize = parts.iter().map(|p| p.len()).sum();
    let key = format!(
        "{TIER_PREFIX}{}/{}/{:020}-{}{SEGMENT_SUFFIX}",
        topic.id.simple(),
        part.index,
        run[0].base_offset,
        Uuid::new_v4().simple()
    );
    inner
        .store
        .put_parts_behind(&key, parts, inner.foreground.clone())
        .await
        .with_context(|| format!("writing {key} to the tier store"))?;
    if let Err(e) = verify(inner, &key, size, &footer).await {
        let _ = inner.store.delete(&key).await;
        return Err(e);
    }
    if !inner.opts.tier_commit_pause.is_zero() {
        tracing::info!(object = %key, "tiering pausing before its commit");
        tokio::time::sleep(inner.opts.tier_commit_pause).await;
    }
    let moved: Vec<(i64, String, i64)> = run
        .iter()
        .zip(&footer)
        .map(|(r, f)| (r.base_offset, r.object_key.clone(), f.position as i64))
        .collect();
    if !inner
        .meta
        .relocate_batches(topic.id, part.index, &key, size as i64, &moved)
        .await?
    {
        // Retention, compaction or a new leader changed these rows: the copy is not needed.
        inner.store.delete(&key).await?;
        return Ok(TierReport::default());
    }
    part.tiered_to
        .fetch_max(run.last().map_or(0, |r| r.last_offset + 1), Ordering::Relaxed);
    METRICS.tier_segments.inc();
    METRICS.tier_bytes.inc_by(bytes as u64);
    tracing::debug!(topic = %topic.name, partition = part.index, batches = run.len(), bytes, segment = %key, "moved to the tier store");
    Ok(TierReport {
        segments: 1,
        batches: run.len(),
        bytes: bytes as u64,
    })
}

/// Reads a tier segment back and checks it is the one written: its size, its footer and
/// every batch's CRC, and the batches the footer lists.
async fn verify(inner: &Inner, key: &str, size: usize, footer: &[object::FooterEntry]) -> Result<()> {
    let data = inner
        .store
        .get(key)
        .await
        .with_context(|| format!("reading {key} back"))?;
    ensure!(
        data.len() == size,
        "{key} reads back {} bytes, {size} written",
        data.len()
    );
    let entries = object::verify(&data).with_context(|| format!("verifying {key}"))?;
    ensure!(entries == footer, "{key} reads back with other batches");
    Ok(())
}
