//! Log compaction for `cleanup.policy=compact` topics: keep the newest record of
//! each key, as Kafka's log cleaner does.
//!
//! A pass over a partition its broker leads:
//! 1. Finds the *dirty* part, from where the last pass ended (`cleaned_to`) up to the
//!    first batch that may not be cleaned yet: the last batch of the log (so the log's end
//!    always holds a batch), the first one at or past the last stable offset (an open
//!    transaction), one younger than `min.compaction.lag.ms`, and the part written last
//!    (Kafka's active segment) until it holds `segment.bytes` or is `segment.ms` old.
//!    It goes on only if the dirty bytes are `min.cleanable.dirty.ratio` of the log, the
//!    oldest dirty batch is `max.compaction.lag.ms` old, or a tombstone kept by an earlier
//!    pass has outlived `delete.retention.ms`.
//! 2. Reads the dirty part into a map of key (MD5, as Kafka) to its newest offset, at most
//!    `--compaction-memory` of it: when the map is full, this pass cleans up to there and
//!    the next one goes on (several passes).
//! 3. Rewrites the log from its start to the end of the map, in groups of batches: a
//!    record goes if a newer record has its key, if it has no key, if it belongs to an
//!    aborted transaction, or if it is a tombstone whose batch is `delete.retention.ms`
//!    old. Kept records keep their offsets (offsets get gaps, which readers skip); a batch
//!    that loses records is re-encoded with its codec and producer fields, one that loses
//!    all of them disappears. Transaction markers stay: a read_committed reader needs an
//!    abort marker for every aborted transaction it is told of.
//!    Each group that changed becomes one object, swapped for the old rows in one
//!    metadata transaction that checks the rows and the leader epoch are as read; the old
//!    objects are then unreferenced and collected. A reader holding old rows finds their
//!    object gone, reads the index again and gets the new ones (`read::cold_read`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Result;
use bytes::{Bytes, BytesMut};
use md5::{Digest, Md5};
use sluice_meta::{now_ms, AbortedTxnRow, BatchRow};
use uuid::Uuid;

use crate::batch::{self, BatchInfo};
use crate::config::CompactionConfig;
use crate::object::{self, FooterEntry};
use crate::{Inner, Partition, Topic, METRICS};

/// Memory one entry of the key map is counted for: a 16-byte digest and an 8-byte offset
/// in a hash table, which keeps an eighth of its slots free and grows by doubling.
const ENTRY_BYTES: usize = 64;
/// Memory one dirty index row is counted for while a pass looks at it.
const ROW_BYTES: usize = 160;
/// The batches rewritten together into one object, at most (one batch more if it is
/// larger).
const GROUP_BYTES: usize = 16 << 20;
/// Rows read per index query.
const PAGE: i64 = if cfg!(test) { 3 } else { 1000 };

/// What one pass over the compacted partitions did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanReport {
    /// Partitions cleaned.
    pub partitions: usize,
    /// Bytes of batches read, to build the key map and to rewrite.
    pub bytes_read: u64,
    /// Bytes of batches written.
    pub bytes_written: u64,
    pub records_removed: u64,
    /// Objects written.
    pub objects: usize,
}

impl CleanReport {
    fn add(&mut self, o: CleanReport) {
        self.partitions += o.partitions;
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
        self.records_removed += o.records_removed;
        self.objects += o.objects;
    }
}

pub(crate) async fn pass(inner: &Inner) -> Result<CleanReport> {
    let topics: Vec<Arc<Topic>> = inner.topics.read().unwrap().by_id.values().cloned().collect();
    let mut report = CleanReport::default();
    for topic in topics {
        let cfg = topic.config();
        if !cfg.compact {
            continue;
        }
        let parts: Vec<_> = topic.partitions.read().unwrap().clone();
        for part in parts.into_iter().filter(|p| p.is_led()) {
            report.add(clean_partition(inner, &topic, &part, &cfg.compaction).await?);
        }
    }
    Ok(report)
}

/// The digest a key is known by in the map.
fn digest(key: &[u8]) -> [u8; 16] {
    Md5::digest(key).into()
}

/// Whether a batch belongs to an aborted transaction of its producer.
fn aborted(info: &BatchInfo, base_offset: i64, aborted: &[AbortedTxnRow]) -> bool {
    info.is_transactional()
        && !info.is_control()
        && aborted
            .iter()
            .any(|a| a.producer_id == info.producer_id && a.first_offset <= base_offset && base_offset <= a.last_offset)
}

async fn clean_partition(
    inner: &Inner,
    topic: &Topic,
    part: &Partition,
    cfg: &CompactionConfig,
) -> Result<CleanReport> {
    let now = now_ms();
    let o = part.offsets();
    let lso = part.last_stable_offset();
    let dirty_from = part.cleaned_to.load(Ordering::Relaxed).max(o.log_start);
    let budget = inner.opts.compaction_memory;
    let tombstones_due = part
        .oldest_tombstone
        .load(Ordering::Relaxed)
        .saturating_add(cfg.delete_retention_ms)
        <= now;

    // 1. The dirty rows that may be cleaned now.
    let max_rows = (budget / 4 / ROW_BYTES).max(1);
    let (mut dirty, mut cleanable, mut capped) = (Vec::new(), 0, false);
    let (mut open_bytes, mut open_since) = (0i64, i64::MAX);
    let mut position = dirty_from;
    'scan: loop {
        let rows = inner
            .meta
            .batches_from(part.topic_id, part.index, position, PAGE)
            .await?;
        let full = rows.len() as i64 == PAGE;
        for r in rows {
            if r.last_offset + 1 >= o.high_watermark || r.last_offset >= lso || r.max_timestamp > now - cfg.min_lag_ms {
                break 'scan;
            }
            if dirty.len() >= max_rows {
                capped = true;
                break 'scan;
            }
            // The part written last rolls, as Kafka's active segment, at a size or an age.
            if open_since != i64::MAX
                && (open_bytes + r.length as i64 > cfg.segment_bytes
                    || r.max_timestamp.saturating_sub(open_since) >= cfg.segment_ms)
            {
                (cleanable, open_bytes, open_since) = (dirty.len(), 0, i64::MAX);
            }
            open_since = open_since.min(r.max_timestamp);
            open_bytes += r.length as i64;
            position = r.last_offset + 1;
            dirty.push(r);
        }
        if !full {
            break;
        }
    }
    if capped || now.saturating_sub(open_since) >= cfg.segment_ms.min(cfg.max_lag_ms) {
        cleanable = dirty.len();
    }
    dirty.truncate(cleanable);
    if dirty.is_empty() && !tombstones_due {
        return Ok(CleanReport::default());
    }
    let overdue = dirty
        .first()
        .is_some_and(|r| r.max_timestamp <= now.saturating_sub(cfg.max_lag_ms));
    if !overdue && !tombstones_due {
        let dirty_bytes: i64 = dirty.iter().map(|r| r.length as i64).sum();
        let clean_bytes = inner
            .meta
            .batch_bytes(part.topic_id, part.index, o.log_start, dirty_from)
            .await?;
        if (dirty_bytes as i128) * 1_000_000 < cfg.min_dirty_ratio_ppm as i128 * (dirty_bytes + clean_bytes) as i128 {
            return Ok(CleanReport::default());
        }
    }
    let aborted_txns: Vec<AbortedTxnRow> = part.state.lock().unwrap().aborted.iter().cloned().collect();
    let mut report = CleanReport::default();

    // 2. The newest offset of each key in the dirty part, as far as the map holds.
    let max_entries = (budget / ENTRY_BYTES).max(1);
    let mut map: HashMap<[u8; 16], i64> = HashMap::new();
    let mut map_end = dirty_from;
    'build: for group in groups(&dirty) {
        let batches = crate::read::read_rows_behind(&inner.store, group, &inner.foreground).await?;
        for (row, data) in group.iter().zip(batches) {
            report.bytes_read += data.len() as u64;
            let info = batch::parse_header(&data, 0)?;
            if !info.is_control() && !aborted(&info, row.base_offset, &aborted_txns) {
                if map.len() + info.record_count.max(0) as usize > max_entries {
                    if map.is_empty() {
                        tracing::warn!(topic = %topic.name, partition = part.index, records = info.record_count,
                            "a batch has more keys than --compaction-memory holds; the partition is not cleaned");
                    }
                    break 'build;
                }
                for r in batch::decode_records(&data)? {
                    if let Some(key) = &r.key {
                        map.insert(digest(key), r.offset);
                    }
                }
            }
            map_end = row.last_offset + 1;
        }
    }
    if map_end == dirty_from && !tombstones_due {
        return Ok(report);
    }

    // 3. Rewrite the log up to the end of the map.
    let mut oldest_tombstone = i64::MAX;
    let mut position = o.log_start;
    let mut group: Vec<BatchRow> = Vec::new();
    let mut group_bytes = 0usize;
    loop {
        let rows = inner
            .meta
            .batches_from(part.topic_id, part.index, position, PAGE)
            .await?;
        let full = rows.len() as i64 == PAGE;
        let mut done = !full;
        for r in rows {
            if r.base_offset >= map_end {
                done = true;
                break;
            }
            position = r.last_offset + 1;
            group_bytes += r.length as usize;
            group.push(r);
            if group_bytes >= GROUP_BYTES {
                let rows = std::mem::take(&mut group);
                group_bytes = 0;
                let Some(r) = rewrite_group(
                    inner,
                    topic,
                    part,
                    o.leader_epoch,
                    &rows,
                    &map,
                    &aborted_txns,
                    cfg,
                    now,
                    &mut oldest_tombstone,
                )
                .await?
                else {
                    return Ok(report);
                };
                report.add(r);
            }
        }
        if done {
            break;
        }
    }
    if !group.is_empty() {
        let Some(r) = rewrite_group(
            inner,
            topic,
            part,
            o.leader_epoch,
            &group,
            &map,
            &aborted_txns,
            cfg,
            now,
            &mut oldest_tombstone,
        )
        .await?
        else {
            return Ok(report);
        };
        report.add(r);
    }
    part.cleaned_to.fetch_max(map_end, Ordering::Relaxed);
    part.oldest_tombstone.store(oldest_tombstone, Ordering::Relaxed);
    report.partitions = 1;
    METRICS.cleaner_bytes_read.inc_by(report.bytes_read);
    METRICS.cleaner_records_removed.inc_by(report.records_removed);
    tracing::debug!(topic = %topic.name, partition = part.index, map_end, keys = map.len(), ?report, "cleaned");
    Ok(report)
}

/// Consecutive rows of about `GROUP_BYTES`, read together.
fn groups(rows: &[BatchRow]) -> impl Iterator<Item = &[BatchRow]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (mut n, mut bytes) = (0, 0usize);
        while n < rest.len() && (n == 0 || bytes + rest[n].length as usize <= GROUP_BYTES) {
            bytes += rest[n].length as usize;
            n += 1;
        }
        let (group, tail) = rest.split_at(n);
        rest = tail;
        Some(group)
    })
}

/// What filtering did to one batch.
enum Filtered {
    Unchanged,
    Gone,
    Rewritten(Bytes),
}

/// Filters one batch's records (see the module doc); counts what went, and lowers
/// `oldest_tombstone` to the timestamp of a tombstone's batch that it keeps.
#[allow(clippy::too_many_arguments)]
fn filter_batch(
    data: &Bytes,
    row: &BatchRow,
    map: &HashMap<[u8; 16], i64>,
    aborted_txns: &[AbortedTxnRow],
    cfg: &CompactionConfig,
    now: i64,
    removed: &mut u64,
    oldest_tombstone: &mut i64,
) -> Result<Filtered> {
    let info = batch::parse_header(data, 0)?;
    if info.is_control() {
        return Ok(Filtered::Unchanged);
    }
    if aborted(&info, row.base_offset, aborted_txns) {
        *removed += info.record_count.max(0) as u64;
        return Ok(Filtered::Gone);
    }
    let tombstone_due = row.max_timestamp.saturating_add(cfg.delete_retention_ms);
    let records = batch::decode_records(data)?;
    let total = records.len();
    let mut kept: Vec<_> = records
        .into_iter()
        .filter(|r| {
            let Some(key) = &r.key else { return false };
            if map.get(&digest(key)).is_some_and(|&newest| newest > r.offset) {
                return false;
            }
            if r.value.is_none() {
                if tombstone_due <= now {
                    return false;
                }
                *oldest_tombstone = (*oldest_tombstone).min(row.max_timestamp);
            }
            true
        })
        .collect();
    *removed += (total - kept.len()) as u64;
    if kept.len() == total {
        return Ok(Filtered::Unchanged);
    }
    if kept.is_empty() {
        return Ok(Filtered::Gone);
    }
    let mut out = BytesMut::with_capacity(data.len());
    let codec = batch::compression(&info).unwrap_or(kafka_protocol::records::Compression::None);
    batch::encode_records(&mut out, &info, &mut kept, codec)?;
    Ok(Filtered::Rewritten(out.freeze()))
}

/// Filters a group of rows and, if anything went, swaps them for the kept batches in
/// one new object. `None`: the rows changed meanwhile, and the pass stops here.
#[allow(clippy::too_many_arguments)]
async fn rewrite_group(
    inner: &Inner,
    topic: &Topic,
    part: &Partition,
    leader_epoch: i32,
    rows: &[BatchRow],
    map: &HashMap<[u8; 16], i64>,
    aborted_txns: &[AbortedTxnRow],
    cfg: &CompactionConfig,
    now: i64,
    oldest_tombstone: &mut i64,
) -> Result<Option<CleanReport>> {
    let batches = crate::read::read_rows_behind(&inner.store, rows, &inner.foreground).await?;
    let mut report = CleanReport {
        bytes_read: batches.iter().map(|b| b.len() as u64).sum(),
        ..Default::default()
    };
    let mut kept: Vec<(FooterEntry, Bytes)> = Vec::with_capacity(rows.len());
    let mut changed = false;
    for (row, data) in rows.iter().zip(batches) {
        let data = match filter_batch(
            &data,
            row,
            map,
            aborted_txns,
            cfg,
            now,
            &mut report.records_removed,
            oldest_tombstone,
        )? {
            Filtered::Unchanged => data,
            Filtered::Gone => {
                changed = true;
                continue;
            }
            Filtered::Rewritten(new) => {
                changed = true;
                new
            }
        };
        let info = batch::parse_header(&data, 0)?;
        let base_offset = i64::from_be_bytes(data[0..8].try_into().expect("a batch header"));
        kept.push((
            FooterEntry {
                topic_id: topic.id,
                topic: topic.name.clone(),
                partition: part.index,
                base_offset,
                last_offset: base_offset + info.last_offset_delta as i64,
                max_timestamp: info.max_timestamp,
                position: 0,
                length: data.len() as u32,
            },
            data,
        ));
    }
    if !changed {
        return Ok(Some(report));
    }
    let old: Vec<(i64, String)> = rows.iter().map(|r| (r.base_offset, r.object_key.clone())).collect();
    let key = format!(
        "data/{:013}-{}-{}{}",
        now_ms(),
        inner.opts.node_id,
        Uuid::new_v4().simple(),
        crate::compaction::SEGMENT_SUFFIX
    );
    let (new_rows, object) = if kept.is_empty() {
        (Vec::new(), None)
    } else {
        let (parts, footer) = object::assemble(kept.iter().map(|(e, b)| (e, b)).collect());
        let size: usize = parts.iter().map(|p| p.len()).sum();
        report.bytes_written = footer.iter().map(|e| e.length as u64).sum();
        // Nobody waits for a rewrite: it gives way to the writes producers wait for.
        inner
            .store
            .put_parts_behind(&key, parts, inner.foreground.clone())
            .await?;
        report.objects = 1;
        if !inner.opts.cleaner_commit_pause.is_zero() {
            tracing::info!(object = %key, "log cleaner pausing before its commit");
            tokio::time::sleep(inner.opts.cleaner_commit_pause).await;
        }
        let rows: Vec<BatchRow> = footer.iter().map(|e| e.index_row(&key)).collect();
        (rows, Some((key.as_str(), size as i64)))
    };
    let applied = inner
        .meta
        .replace_batches(part.topic_id, part.index, leader_epoch, &old, object, &new_rows)
        .await?;
    if !applied {
        if object.is_some() {
            inner.store.delete(&key).await?;
        }
        return Ok(None);
    }
    // The tail cache may still hold the batches as they were.
    let end = rows.last().map_or(0, |r| r.last_offset + 1);
    let mut s = part.state.lock().unwrap();
    while s.tail.front().is_some_and(|b| b.base_offset < end) {
        s.tail.pop_front();
    }
    Ok(Some(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(base: i64, length: i32) -> BatchRow {
        BatchRow {
            topic_id: Uuid::nil(),
            partition: 0,
            base_offset: base,
            last_offset: base,
            max_timestamp: 0,
            object_key: "k".into(),
            position: 0,
            length,
        }
    }

    #[test]
    fn groups_split_by_bytes_and_keep_at_least_one_row() {
        let big = GROUP_BYTES as i32;
        let rows = vec![row(0, big + 1), row(1, 10), row(2, big - 10), row(3, 1)];
        let sizes: Vec<usize> = groups(&rows).map(<[BatchRow]>::len).collect();
        assert_eq!(sizes, vec![1, 2, 1]);
        assert_eq!(groups(&[]).count(), 0);
    }

    #[test]
    fn aborted_batches_are_matched_by_producer_and_range() {
        let mut info = batch::parse_header(&batch::marker_batch(7, 0, false, 0), 0).unwrap();
        info.attributes = 1 << 4; // transactional, not control
        info.producer_id = 7;
        let txn = AbortedTxnRow {
            topic_id: Uuid::nil(),
            partition: 0,
            producer_id: 7,
            first_offset: 10,
            last_offset: 20,
        };
        assert!(aborted(&info, 10, std::slice::from_ref(&txn)));
        assert!(!aborted(&info, 21, std::slice::from_ref(&txn)));
        info.producer_id = 8;
        assert!(!aborted(&info, 15, &[txn]));
    }
}
