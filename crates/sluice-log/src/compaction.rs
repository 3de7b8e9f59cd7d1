//! Compaction of small objects into per-partition segments.
//!
//! A flush writes one object holding every partition's batches of that
//! moment, so reading one partition's history touches every object: one GET
//! per flush. Compaction copies a partition's older batches, byte for byte,
//! into one segment object, then repoints their index rows at it in one
//! transaction that checks the rows were not changed meanwhile. Offsets and
//! bytes do not change; flush objects whose every batch has moved become
//! unreferenced and are garbage-collected. Run by each partition's leader.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Result;
use sluice_meta::{now_ms, BatchRow};
use uuid::Uuid;

use crate::object::{self, FooterEntry};
use crate::{scan_rows, Inner, Partition, Topic, METRICS};

/// Segment objects end in this, so compaction never picks them up again.
pub(crate) const SEGMENT_SUFFIX: &str = ".segment";

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactionReport {
    pub segments: usize,
    pub batches: usize,
    pub bytes: u64,
}

/// When a flush object was written, from its key (`data/<ms>-<node>-<uuid>.sobj`).
fn written_ms(key: &str) -> Option<i64> {
    key.strip_prefix("data/")?.split('-').next()?.parse().ok()
}

pub(crate) async fn pass(inner: &Inner) -> Result<CompactionReport> {
    let topics: Vec<Arc<Topic>> = inner.topics.read().unwrap().by_id.values().cloned().collect();
    let mut report = CompactionReport::default();
    for topic in topics {
        let parts: Vec<_> = topic.partitions.read().unwrap().clone();
        for part in parts.into_iter().filter(|p| p.is_led()) {
            let r = compact_partition(inner, &topic, &part).await?;
            report.segments += r.segments;
            report.batches += r.batches;
            report.bytes += r.bytes;
        }
    }
    Ok(report)
}

/// Chooses a partition's next run to compact from its index rows, offered in offset order.
///
/// A partition's batches in one flush object that add up to `keep` bytes
/// (`compaction_keep_run_bytes`, 512 KiB) stay where they are: a cold read takes them with
/// one GET (one disk read) as it would from a segment, and moving them would write a busy
/// partition's whole history a second time. A busy producer's data comes in such runs (a
/// flush of 1 MiB or more holds about a batch per partition, and an upload keeps each
/// partition's batches together); a trickle's flushes and uploads hold a few KiB per
/// partition, which is what compaction is for.
struct Picker {
    cutoff: i64,
    limit: usize,
    keep: usize,
    /// The rows to move, contiguous in offsets.
    run: Vec<BatchRow>,
    bytes: usize,
    /// Rows of the object being read, not yet placed (kept or moved).
    group: Vec<BatchRow>,
    /// History that needs no look again (segments, kept runs) ends here, if it moved.
    settled_to: Option<i64>,
    /// The run ended at a kept run, which ends here.
    ended_at_kept: Option<i64>,
}

impl Picker {
    fn new(cutoff: i64, limit: usize, keep: usize) -> Self {
        Picker {
            cutoff,
            limit,
            keep,
            run: Vec::new(),
            bytes: 0,
            group: Vec::new(),
            settled_to: None,
            ended_at_kept: None,
        }
    }

    /// Takes the next row; false once the run is complete.
    fn offer(&mut self, r: BatchRow) -> bool {
        if self.group.first().is_some_and(|g| g.object_key != r.object_key) && !self.place_group() {
            return false;
        }
        let segment = r.object_key.ends_with(SEGMENT_SUFFIX);
        if segment && self.run.is_empty() {
            // Compacted history before any run: the next pass need not look at it again.
            self.settled_to = Some(r.last_offset + 1);
            return true;
        }
        // Runs end at a segment or a young flush (written after the cutoff's millisecond:
        // with no minimum age, a flush of the pass's own millisecond is old enough).
        if segment || written_ms(&r.object_key).is_none_or(|t| t > self.cutoff) {
            return false;
        }
        self.group.push(r);
        true
    }

    /// Keeps the object's rows in place if they make a long run, else adds them to the run
    /// (up to the size limit); false once the run is complete.
    fn place_group(&mut self) -> bool {
        let group = std::mem::take(&mut self.group);
        let Some(last) = group.last().map(|r| r.last_offset + 1) else {
            return true;
        };
        if group.iter().map(|r| r.length as usize).sum::<usize>() >= self.keep {
            if self.run.is_empty() {
                self.settled_to = Some(last);
                return true;
            }
            self.ended_at_kept = Some(last);
            return false;
        }
        for r in group {
            if !self.run.is_empty() && self.bytes + r.length as usize > self.limit {
                return false;
            }
            self.bytes += r.length as usize;
            self.run.push(r);
        }
        true
    }

    /// The run to compact once the rows are offered (the last object's rows are placed
    /// now), empty if there is none yet; moves `compacted_to` past what is settled.
    fn finish(mut self, part: &Partition) -> Vec<BatchRow> {
        if self.ended_at_kept.is_none() {
            self.place_group();
        }
        let objects = {
            let mut keys: Vec<&str> = self.run.iter().map(|r| r.object_key.as_str()).collect();
            keys.dedup();
            keys.len()
        };
        // One source object gains nothing unless its other partitions move too; wait for
        // more, unless a kept run follows: then nothing more can join it, and it stays too.
        if objects < 2 {
            self.run.clear();
            self.settled_to = self.ended_at_kept.or(self.settled_to);
        }
        if let Some(to) = self.settled_to {
            part.compacted_to.fetch_max(to, Ordering::Relaxed);
        }
        self.run
    }
}

/// Compacts the oldest run of small batches still in flush objects older than
/// `compaction_min_age`, up to `segment_bytes`.
async fn compact_partition(inner: &Inner, topic: &Topic, part: &Partition) -> Result<CompactionReport> {
    let cutoff = now_ms() - inner.opts.compaction_min_age.as_millis() as i64;
    let start = part.offsets().log_start;
    let from = start.max(part.compacted_to.load(Ordering::Relaxed));
    let mut picker = Picker::new(cutoff, inner.opts.segment_bytes, inner.opts.compaction_keep_run_bytes);
    scan_rows(&inner.meta, part, from, |r| picker.offer(r)).await?;
    let run = picker.finish(part);
    if run.is_empty() {
        return Ok(CompactionReport::default());
    }
    let bytes: usize = run.iter().map(|r| r.length as usize).sum();
    let (parts, footer) = read_segment(inner, topic, part, &run).await?;
    let size: usize = parts.iter().map(|p| p.len()).sum();
    let key = format!(
        "data/{:013}-{}-{}{SEGMENT_SUFFIX}",
        now_ms(),
        inner.opts.node_id,
        Uuid::new_v4().simple()
    );
    // Nobody waits for a segment: it gives way to the writes producers wait for.
    inner
        .store
        .put_parts_behind(&key, parts, inner.foreground.clone())
        .await?;
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
        // Retention or another leader changed these rows; the segment is an orphan now.
        inner.store.delete(&key).await?;
        return Ok(CompactionReport::default());
    }
    METRICS.compactions.inc();
    tracing::debug!(topic = %topic.name, partition = part.index, batches = run.len(), bytes, segment = %key, "compacted");
    Ok(CompactionReport {
        segments: 1,
        batches: run.len(),
        bytes: bytes as u64,
    })
}

/// Reads a partition's batches at `rows` and lays them out as one segment object:
/// its parts, and the footer entries with each batch's new position.
pub(crate) async fn read_segment(
    inner: &Inner,
    topic: &Topic,
    part: &Partition,
    rows: &[BatchRow],
) -> Result<(Vec<bytes::Bytes>, Vec<FooterEntry>)> {
    // Read behind the writes producers wait for (on a local store, one object at a time).
    // The segment is written from the batches as read, not copied into one buffer: a
    // 64 MiB copy would hold up an async worker (of two) for tens of milliseconds.
    let batches = crate::read::read_rows_behind(&inner.store, rows, &inner.foreground).await?;
    let entries: Vec<FooterEntry> = rows
        .iter()
        .map(|row| FooterEntry {
            topic_id: topic.id,
            topic: topic.name.clone(),
            partition: part.index,
            base_offset: row.base_offset,
            last_offset: row.last_offset,
            max_timestamp: row.max_timestamp,
            position: 0,
            length: row.length as u32,
        })
        .collect();
    Ok(object::assemble(entries.iter().zip(&batches).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_object_time_comes_from_the_key() {
        assert_eq!(written_ms("data/0001700000000123-3-abc.sobj"), Some(1_700_000_000_123));
        assert_eq!(written_ms("elsewhere/1-2-3.sobj"), None);
    }
}
