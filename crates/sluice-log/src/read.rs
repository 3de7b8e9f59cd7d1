//! The read path: the tail cache for recent batches, the offset index and
//! ranged object reads for older ones, and offset lookups by timestamp.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{stream, StreamExt};
use kafka_protocol::records::RecordBatchDecoder;
use sluice_meta::{BatchRow, MetaStore};
use uuid::Uuid;

use crate::{DataStore, Log, LogError, Offsets, Topic, METRICS};

/// Batches read from a partition, with its offsets at the time of reading.
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    pub log_start: i64,
    pub high_watermark: i64,
    /// Whole record batches, the first one holding the requested offset.
    pub batches: Vec<Bytes>,
}

impl ReadResult {
    pub fn bytes(&self) -> usize {
        self.batches.iter().map(|b| b.len()).sum()
    }
}

/// The first record at or after a timestamp: its offset and timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    pub offset: i64,
    pub timestamp: i64,
}

/// Index rows fetched per round trip to the metadata store: few at first, since one
/// Fetch partition (1 MiB by default) often needs one or two large batches and every
/// row costs a conversion, then more once the batches turn out to be small.
const FIRST_INDEX_PAGE: i64 = 16;
const INDEX_PAGE: i64 = 256;

/// Ranged GETs in flight at once for one read.
const READ_CONCURRENCY: usize = 16;

/// A read from the object store stops fetching further index pages after this
/// long once it has data: a reader catching up through many small objects gets
/// what was read so far promptly, well inside its request timeout, and asks again.
const COLD_READ_BUDGET: Duration = Duration::from_millis(300);

impl Log {
    /// Reads whole batches from `offset` on, up to about `max_bytes` (at least
    /// one batch when any is available).
    pub async fn read(
        &self,
        topic: &Topic,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    ) -> Result<ReadResult, LogError> {
        let part = topic.partition(partition).ok_or(LogError::UnknownTopicOrPartition)?;
        let (offsets, tail_start) = {
            let s = part.state.lock().unwrap();
            if !s.led {
                return Err(LogError::NotLeader);
            }
            let o = Offsets {
                log_start: s.log_start,
                high_watermark: s.high_watermark,
                leader_epoch: s.leader_epoch,
            };
            (o, s.tail.front().map(|b| b.base_offset))
        };
        if offset < offsets.log_start || offset > offsets.high_watermark {
            return Err(LogError::OffsetOutOfRange);
        }
        let mut out = ReadResult {
            log_start: offsets.log_start,
            high_watermark: offsets.high_watermark,
            batches: Vec::new(),
        };
        let mut position = offset;
        let mut budget = max_bytes;

        // Older than the tail: index lookup and ranged reads of objects, maybe read ahead
        // by the previous read of this partition.
        let cold_end = tail_start.unwrap_or(offsets.high_watermark).min(offsets.high_watermark);
        if position < cold_end {
            let key = (topic.id, partition);
            // A read ahead that failed (compaction may have moved the batches) is read again.
            let ahead = match self.inner.read_ahead.take(key, position, max_bytes) {
                Some(task) => task.await.ok().and_then(Result::ok),
                None => None,
            };
            let cold = match ahead {
                Some(cold) => {
                    METRICS.read_ahead_hits.inc();
                    self.inner.read_ahead.hits.fetch_add(1, Ordering::Relaxed);
                    cold
                }
                None => cold_read(&self.inner.meta, &self.inner.store, key, position, cold_end, budget).await?,
            };
            (position, budget) = (cold.position, budget.saturating_sub(cold.bytes));
            out.batches.extend(cold.batches);
            if position < cold_end && position > offset {
                // A reader going through the partition in order asks for this next: read it
                // while this answer is on its way.
                // The task holds the stores, not the log: a log dropped meanwhile still stops.
                let (meta, store) = (self.inner.meta.clone(), self.inner.store.clone());
                let limit = max_bytes.min(READ_AHEAD_MAX_BYTES);
                self.inner.read_ahead.start(key, position, limit, async move {
                    cold_read(&meta, &store, key, position, cold_end, limit).await
                });
            }
        }

        // The tail cache: batches still in memory since their flush. Only where the
        // cold read reached it, or the batches returned would skip offsets.
        if position >= cold_end && position < offsets.high_watermark && (out.batches.is_empty() || budget > 0) {
            let s = part.state.lock().unwrap();
            let start = s.tail.partition_point(|b| b.last_offset < position);
            for b in s.tail.range(start..) {
                if b.base_offset >= offsets.high_watermark || (!out.batches.is_empty() && b.data.len() > budget) {
                    break;
                }
                budget = budget.saturating_sub(b.data.len());
                out.batches.push(b.data.clone());
            }
            METRICS.tail_reads.inc();
        }
        Ok(out)
    }
}

/// Batches read from objects: whole batches from a position on, their bytes, and the
/// position after them.
pub(crate) struct ColdRead {
    batches: Vec<Bytes>,
    bytes: usize,
    position: i64,
}

/// Reads whole batches of a partition from the objects, from `position` up to `end` (where
/// the tail cache starts) and about `budget` bytes: at least one batch, and within
/// `COLD_READ_BUDGET` once it has data.
async fn cold_read(
    meta: &MetaStore,
    store: &DataStore,
    key: (Uuid, i32),
    position: i64,
    end: i64,
    budget: usize,
) -> Result<ColdRead, LogError> {
    let started = Instant::now();
    // The whole read's index rows first, then its GETs: a run of adjacent batches that
    // spans index pages (a segment's) is then one GET, not one per page.
    let rows = index_rows(meta, key, position, end, budget, started).await?;
    let mut out = ColdRead {
        batches: Vec::new(),
        bytes: 0,
        position,
    };
    // Read a few GETs at a time and honour the time budget between chunks: a read of
    // small objects is up to hundreds of GETs, seconds against a busy store, and it holds
    // up every response queued behind its Fetch on the connection.
    for chunk in get_chunks(&rows, READ_CONCURRENCY) {
        if !out.batches.is_empty() && started.elapsed() >= COLD_READ_BUDGET {
            break;
        }
        let batches = match read_rows(store, chunk).await {
            Ok(batches) => batches,
            // Compaction may have moved these batches and collected their object
            // since the index was read: read the index again, once.
            Err(_) => {
                let again = meta
                    .batches_from(key.0, key.1, chunk[0].base_offset, chunk.len() as i64)
                    .await?;
                read_rows(store, &again).await?
            }
        };
        out.bytes += batches.iter().map(|b| b.len()).sum::<usize>();
        out.batches.extend(batches);
        out.position = chunk[chunk.len() - 1].last_offset + 1;
    }
    Ok(out)
}

/// The index rows of a partition's batches from `position` on, before `end`, up to about
/// `budget` bytes: at least one row when any is there, and no more pages once the read's
/// time is up.
pub(crate) async fn index_rows(
    meta: &MetaStore,
    key: (Uuid, i32),
    mut position: i64,
    end: i64,
    mut budget: usize,
    started: Instant,
) -> Result<Vec<BatchRow>, LogError> {
    let mut chosen: Vec<BatchRow> = Vec::new();
    let mut page = FIRST_INDEX_PAGE;
    while position < end && (chosen.is_empty() || (budget > 0 && started.elapsed() < COLD_READ_BUDGET)) {
        let rows = meta.batches_from(key.0, key.1, position, page).await?;
        page = INDEX_PAGE;
        let mut rows = rows.into_iter().take_while(|r| r.base_offset < end).peekable();
        if rows.peek().is_none() {
            break;
        }
        for r in rows {
            if !chosen.is_empty() && r.length as usize > budget {
                budget = 0;
                break;
            }
            budget = budget.saturating_sub(r.length as usize);
            position = r.last_offset + 1;
            chosen.push(r);
            if budget == 0 {
                break;
            }
        }
    }
    Ok(chosen)
}

/// Partitions with a read ahead in flight or done and not yet asked for, at most.
const READ_AHEADS: usize = 64;
/// A read ahead reads at most this much (a Fetch may allow far more per partition).
const READ_AHEAD_MAX_BYTES: usize = 4 << 20;
/// A read ahead nobody asked for within this long is dropped.
const READ_AHEAD_TTL: Duration = Duration::from_secs(10);

type ReadAheadTask = tokio::task::JoinHandle<Result<ColdRead, LogError>>;

/// A read ahead of one partition: where it starts, its byte limit, when it started.
struct ReadAhead {
    from: i64,
    limit: usize,
    started: Instant,
    task: ReadAheadTask,
}

/// Cold reads started ahead of their readers: after a cold read of a partition, the next
/// part is read while the answer travels, so that a reader catching up keeps the disk or
/// the store busy. One per partition, for a reader that asks again at the position where
/// the last read ended.
#[derive(Default)]
pub(crate) struct ReadAheads {
    started: std::sync::Mutex<HashMap<(Uuid, i32), ReadAhead>>,
    /// Reads answered from a read ahead (the metric counts every log's).
    hits: AtomicU64,
}

impl ReadAheads {
    /// The read ahead of `key` from `position`, if one was started for a limit that fits
    /// in `max_bytes`.
    fn take(&self, key: (Uuid, i32), position: i64, max_bytes: usize) -> Option<ReadAheadTask> {
        let mut started = self.started.lock().unwrap();
        match started.get(&key) {
            Some(a) if a.from == position && a.limit <= max_bytes => started.remove(&key).map(|a| a.task),
            _ => None,
        }
    }

    /// Starts `read` as the read ahead of `key` from `position`, unless too many are held.
    fn start(
        &self,
        key: (Uuid, i32),
        position: i64,
        limit: usize,
        read: impl std::future::Future<Output = Result<ColdRead, LogError>> + Send + 'static,
    ) {
        let mut started = self.started.lock().unwrap();
        started.retain(|_, a| {
            let keep = a.started.elapsed() < READ_AHEAD_TTL;
            if !keep {
                a.task.abort();
            }
            keep
        });
        if started.len() >= READ_AHEADS && !started.contains_key(&key) {
            return;
        }
        METRICS.read_aheads.inc();
        let ahead = ReadAhead {
            from: position,
            limit,
            started: Instant::now(),
            task: tokio::spawn(read),
        };
        if let Some(old) = started.insert(key, ahead) {
            old.task.abort();
        }
    }
}

/// Splits index rows into runs of adjacent batches in the same object: one ranged GET each.
fn get_runs(rows: &[BatchRow]) -> Vec<&[BatchRow]> {
    rows.chunk_by(|a, b| b.object_key == a.object_key && b.position == a.position + a.length as i64)
        .collect()
}

/// Splits index rows into consecutive slices of at most `gets` runs each. A run of a
/// segment's adjacent batches stays one GET however many batches it holds.
pub(crate) fn get_chunks(rows: &[BatchRow], gets: usize) -> Vec<&[BatchRow]> {
    let mut chunks = Vec::new();
    let mut rest = rows;
    while !rest.is_empty() {
        let len: usize = get_runs(rest).iter().take(gets).map(|run| run.len()).sum();
        let (chunk, tail) = rest.split_at(len);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// Reads the given index rows, one ranged GET per run of adjacent batches
/// in the same object, up to `READ_CONCURRENCY` GETs at once (objects are
/// small when flushes are frequent, and each GET pays a round trip).
pub(crate) async fn read_rows(store: &DataStore, rows: &[BatchRow]) -> Result<Vec<Bytes>, LogError> {
    let reads: Vec<_> = get_runs(rows)
        .into_iter()
        .map(|run| async move {
            let (key, start) = (&run[0].object_key, run[0].position as u64);
            let end = start + run.iter().map(|r| r.length as u64).sum::<u64>();
            let data = store
                .get_range(key, start, end)
                .await
                .map_err(|e| LogError::Storage(format!("reading {key}: {e:#}")))?;
            METRICS.object_reads.inc();
            let mut from = 0;
            Ok::<_, LogError>(
                run.iter()
                    .map(|r| {
                        from += r.length as usize;
                        data.slice(from - r.length as usize..from)
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let mut out = Vec::with_capacity(rows.len());
    let mut done = stream::iter(reads).buffered(READ_CONCURRENCY);
    while let Some(batches) = done.next().await {
        out.extend(batches?);
    }
    Ok(out)
}

impl Log {
    /// How many reads a read ahead answered.
    pub fn read_ahead_hits(&self) -> u64 {
        self.inner.read_ahead.hits.load(Ordering::Relaxed)
    }

    /// The earliest offset whose record timestamp is >= `timestamp`; None if
    /// no record is that recent.
    pub async fn offset_for_timestamp(
        &self,
        topic: &Topic,
        partition: i32,
        timestamp: i64,
    ) -> Result<Option<TimestampOffset>, LogError> {
        topic.partition(partition).ok_or(LogError::UnknownTopicOrPartition)?;
        self.index_journaled().await;
        let Some(row) = self
            .inner
            .meta
            .first_batch_at_or_after_time(topic.id, partition, timestamp)
            .await?
        else {
            return Ok(None);
        };
        self.find_in_batch(&row, |ts| ts >= timestamp).await
    }

    /// The offset and timestamp of the record with the largest timestamp.
    pub async fn max_timestamp_offset(
        &self,
        topic: &Topic,
        partition: i32,
    ) -> Result<Option<TimestampOffset>, LogError> {
        topic.partition(partition).ok_or(LogError::UnknownTopicOrPartition)?;
        self.index_journaled().await;
        let Some(row) = self.inner.meta.max_timestamp_batch(topic.id, partition).await? else {
            return Ok(None);
        };
        let max = row.max_timestamp;
        self.find_in_batch(&row, |ts| ts == max).await
    }

    /// With a journal, uploads what is journaled so that the index has every batch:
    /// timestamp lookups search the index, and they are rare enough to wait for it.
    async fn index_journaled(&self) {
        if self.inner.opts.journal.is_some() {
            self.barrier().await;
        }
    }

    /// Decodes one batch (decompressing it) to find its first record matching `pred`.
    async fn find_in_batch(
        &self,
        row: &BatchRow,
        pred: impl Fn(i64) -> bool,
    ) -> Result<Option<TimestampOffset>, LogError> {
        let data = read_rows(&self.inner.store, std::slice::from_ref(row)).await?.remove(0);
        let mut buf = data;
        let set = RecordBatchDecoder::decode(&mut buf)
            .map_err(|e| LogError::Storage(format!("decoding stored batch: {e:#}")))?;
        Ok(set.records.iter().find(|r| pred(r.timestamp)).map(|r| TimestampOffset {
            offset: r.offset,
            timestamp: r.timestamp,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of `lengths` laid out back to back in `object` from `position`.
    fn rows(object: &str, mut position: i64, lengths: &[i32]) -> Vec<BatchRow> {
        lengths
            .iter()
            .map(|&length| {
                let row = BatchRow {
                    topic_id: Uuid::nil(),
                    partition: 0,
                    base_offset: position,
                    last_offset: position,
                    max_timestamp: 0,
                    object_key: object.into(),
                    position,
                    length,
                };
                position += length as i64;
                row
            })
            .collect()
    }

    fn chunk_lens(rows: &[BatchRow], gets: usize) -> Vec<usize> {
        get_chunks(rows, gets).iter().map(|c| c.len()).collect()
    }

    #[test]
    fn adjacent_batches_of_a_segment_are_one_get_however_many() {
        let segment = rows("s", 0, &[100; 40]);
        assert_eq!(get_runs(&segment).len(), 1);
        assert_eq!(chunk_lens(&segment, 16), vec![40]);
    }

    #[test]
    fn chunks_hold_at_most_their_count_of_gets() {
        // Forty small objects: a GET each, sixteen at a time.
        let flushes: Vec<BatchRow> = (0..40).flat_map(|i| rows(&format!("f{i}"), 0, &[100])).collect();
        assert_eq!(chunk_lens(&flushes, 16), vec![16, 16, 8]);
        // A gap inside one object, or a change of object, starts a new GET.
        let mut mixed = rows("a", 0, &[10, 10]);
        mixed.extend(rows("a", 50, &[10]));
        mixed.extend(rows("b", 0, &[10, 10, 10]));
        let runs: Vec<usize> = get_runs(&mixed).iter().map(|r| r.len()).collect();
        assert_eq!(runs, vec![2, 1, 3]);
        assert_eq!(chunk_lens(&mixed, 2), vec![3, 3]);
        assert!(get_chunks(&[], 16).is_empty());
    }
}
