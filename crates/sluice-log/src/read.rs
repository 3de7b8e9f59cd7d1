//! The read path: the tail cache for recent batches, the offset index and
//! ranged object reads for older ones, and offset lookups by timestamp.
//!
//! - Offsets at or above the oldest cached batch come from the tail cache (bounded by
//!   `tail-cache-bytes` across partitions, evicted oldest first).
//! - Older offsets are looked up in the index (`cold_read`): the read's rows first, then one
//!   ranged GET per run of adjacent batches in an object (`get_runs`), however many index
//!   pages the run spans, `READ_CONCURRENCY` GETs in flight. A cold read stops after
//!   `COLD_READ_BUDGET` once it has data, so a reader catching up through many small
//!   objects is answered well inside its request timeout. It never returns tail-cache
//!   batches past a gap it did not read.
//! - After a cold read that leaves more cold data, the next `READ_AHEAD_BYTES` of the
//!   partition are read in a task (`ReadAheads`, bounded across partitions, dropped
//!   unasked): a reader going in order is answered from it, one Fetch's worth at a time.
//!   A read elsewhere drops them; one that fails (compaction moved the batches) is
//!   ignored and the read made afresh.
//! - A reader whose rows were swapped by compaction finds their object gone, re-reads the
//!   index once and gets the new rows; a read inside an offset gap gets the next batch.
//! - Offsets by timestamp use the index's max timestamp per batch, then decode that one
//!   batch to find the record.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{stream, StreamExt};
use kafka_protocol::records::RecordBatchDecoder;
use sluice_meta::{BatchRow, MetaStore};
use uuid::Uuid;

use crate::store::in_tier;
use crate::{DataStore, Log, LogError, Offsets, Topic, METRICS};

/// Batches read from a partition, with its offsets at the time of reading.
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    pub log_start: i64,
    pub high_watermark: i64,
    pub last_stable: i64,
    /// Whole record batches, the first one holding the requested offset.
    pub batches: Vec<Bytes>,
    /// For a read_committed read: aborted transactions overlapping the batches read,
    /// as (producer id, first offset), for the reader to filter.
    pub aborted: Vec<(i64, i64)>,
}

impl ReadResult {
    pub fn bytes(&self) -> usize {
        self.batches.iter().map(|b| b.len()).sum()
    }

    /// Drops the batches past `limit` bytes. With `at_least_one`, the first batch stays
    /// whatever its size (KIP-74: the first partition with data of a fetch may exceed the
    /// limits by one batch, so that a consumer always makes progress).
    pub fn keep_within(&mut self, limit: usize, at_least_one: bool) {
        let keep = fitting(&self.batches, limit, at_least_one);
        self.batches.truncate(keep);
    }
}

/// How many of the first batches fit in `limit` bytes (with `at_least_one`, never none
/// of a non-empty list).
fn fitting(batches: &[Bytes], limit: usize, at_least_one: bool) -> usize {
    let (mut keep, mut bytes) = (0, 0);
    while keep < batches.len() && (bytes + batches[keep].len() <= limit || keep == 0 && at_least_one) {
        bytes += batches[keep].len();
        keep += 1;
    }
    keep
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
        self.read_isolated(topic, partition, offset, max_bytes, false).await
    }

    /// Like [`Log::read`]; with `committed` (isolation level READ_COMMITTED) only up to
    /// the last stable offset, with the aborted transactions among the batches read.
    pub async fn read_isolated(
        &self,
        topic: &Topic,
        partition: i32,
        offset: i64,
        max_bytes: usize,
        committed: bool,
    ) -> Result<ReadResult, LogError> {
        let part = topic.partition(partition).ok_or(LogError::UnknownTopicOrPartition)?;
        let (mut offsets, tail_start, last_stable) = {
            let s = part.state.lock().unwrap();
            if !s.led {
                return Err(LogError::NotLeader);
            }
            let o = Offsets {
                log_start: s.log_start,
                high_watermark: s.high_watermark,
                leader_epoch: s.leader_epoch,
            };
            (o, s.tail.front().map(|b| b.base_offset), s.last_stable())
        };
        if offset < offsets.log_start || offset > offsets.high_watermark {
            return Err(LogError::OffsetOutOfRange);
        }
        let mut out = ReadResult {
            log_start: offsets.log_start,
            high_watermark: offsets.high_watermark,
            last_stable,
            batches: Vec::new(),
            aborted: Vec::new(),
        };
        if committed {
            // Below here the reads stop at the LSO, as they would at the high watermark.
            offsets.high_watermark = last_stable;
            if offset >= last_stable {
                return Ok(out);
            }
        }
        let mut position = offset;
        let mut budget = max_bytes;

        // Older than the tail: index lookup and ranged reads of objects, maybe read ahead
        // by the previous read of this partition.
        let cold_end = tail_start.unwrap_or(offsets.high_watermark).min(offsets.high_watermark);
        if position < cold_end {
            let key = (topic.id, partition);
            // A read ahead that failed (compaction may have moved the batches) or found
            // nothing is read again.
            let ahead = match self.inner.read_ahead.take(key, position) {
                Some(Piece::Ready(cold)) => Some(cold),
                Some(Piece::Reading(task)) => task.await.ok().and_then(Result::ok),
                None => None,
            }
            .filter(|cold| !cold.batches.is_empty());
            let cold = match ahead {
                Some(mut cold) => {
                    METRICS.read_ahead_hits.inc();
                    self.inner.read_ahead.hits.fetch_add(1, Ordering::Relaxed);
                    // A read ahead holds several reads' worth: the rest waits for the next.
                    let rest = cold.split_off(budget);
                    self.inner.read_ahead.put_back(key, cold.position, rest);
                    cold
                }
                None => cold_read(&self.inner.meta, &self.inner.store, key, position, cold_end, budget).await?,
            };
            (position, budget) = (cold.position, budget.saturating_sub(cold.bytes()));
            if cold.batches.is_empty() {
                // The index holds nothing from here to the tail: the log cleaner removed
                // every batch in between (offsets of a compacted topic have gaps).
                position = cold_end;
            }
            out.batches.extend(cold.batches);
            if position < cold_end && position > offset {
                // A reader going through the partition in order asks for this next: read it
                // while this answer is on its way.
                // The task holds the stores, not the log: a log dropped meanwhile still stops.
                let (meta, store) = (self.inner.meta.clone(), self.inner.store.clone());
                self.inner
                    .read_ahead
                    .start(key, position, cold_end, move |from| async move {
                        cold_read(&meta, &store, key, from, cold_end, READ_AHEAD_BYTES).await
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
        if committed && !out.batches.is_empty() {
            out.aborted = part
                .state
                .lock()
                .unwrap()
                .aborted_between(offset, position_after(&out, offset));
        }
        Ok(out)
    }
}

/// The offset after the last batch read (the read started at `offset`).
fn position_after(out: &ReadResult, offset: i64) -> i64 {
    out.batches
        .last()
        .and_then(|b| {
            crate::batch::parse_header(b, 0)
                .ok()
                .map(|h| i64::from_be_bytes(b[0..8].try_into().expect("header")) + h.last_offset_delta as i64 + 1)
        })
        .unwrap_or(offset)
}

/// Batches read from objects: whole batches from a position on, the offset after each,
/// and the position after them.
pub(crate) struct ColdRead {
    batches: Vec<Bytes>,
    ends: Vec<i64>,
    position: i64,
}

impl ColdRead {
    fn bytes(&self) -> usize {
        self.batches.iter().map(|b| b.len()).sum()
    }

    /// Splits off the batches past about `budget` bytes, keeping at least one.
    fn split_off(&mut self, budget: usize) -> ColdRead {
        let keep = fitting(&self.batches, budget, true);
        let rest = ColdRead {
            batches: self.batches.split_off(keep),
            ends: self.ends.split_off(keep),
            position: self.position,
        };
        if let Some(&end) = self.ends.last() {
            self.position = end;
        }
        rest
    }
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
        ends: Vec::new(),
        position,
    };
    // Read a few GETs at a time and honour the time budget between chunks: a read of
    // small objects is up to hundreds of GETs, seconds against a busy store, and it holds
    // up every response queued behind its Fetch on the connection.
    for chunk in get_chunks(&rows, READ_CONCURRENCY) {
        if !out.batches.is_empty() && started.elapsed() >= COLD_READ_BUDGET {
            break;
        }
        let again;
        let (batches, rows) = match read_rows(store, chunk).await {
            Ok(batches) => (batches, chunk),
            // Compaction may have moved these batches and collected their object
            // since the index was read: read the index again, once.
            Err(_) => {
                again = meta
                    .batches_from(key.0, key.1, chunk[0].base_offset, chunk.len() as i64)
                    .await?;
                (read_rows(store, &again).await?, &again[..])
            }
        };
        out.batches.extend(batches);
        out.ends.extend(rows.iter().map(|r| r.last_offset + 1));
        out.position = rows.last().map_or(out.position, |r| r.last_offset + 1);
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

/// A read ahead reads this much. A reader is answered from it a Fetch's worth (1 MiB per
/// partition by default) at a time, so a store that answers each GET slowly, as S3 does,
/// is kept busy with large reads and asked few times.
const READ_AHEAD_BYTES: usize = 4 << 20;
/// Bytes read ahead, held or being read, across all partitions at most.
const READ_AHEAD_TOTAL_BYTES: usize = 64 << 20;
/// A read ahead nobody asked for within this long is dropped.
const READ_AHEAD_TTL: Duration = Duration::from_secs(10);

/// Aborted when dropped: a read ahead that is dropped unread stops reading.
type ReadAheadTask = tokio_util::task::AbortOnDropHandle<Result<ColdRead, LogError>>;

/// A read ahead: being read, or read and not yet all asked for.
enum Piece {
    Reading(ReadAheadTask),
    Ready(ColdRead),
}

/// A piece of a partition read ahead: where it starts, when it was started, and the
/// bytes it holds or may hold.
struct ReadAhead {
    from: i64,
    started: Instant,
    bytes: usize,
    piece: Piece,
}

/// Cold reads started ahead of their readers: after a cold read of a partition, the next
/// part is read while the answer travels, so that a reader catching up keeps the disk or
/// the store busy. Per partition, in offset order: what a read ahead read and no reader
/// has asked for yet, then at most one being read. For a reader that asks again at the
/// position where the last read ended; one that asks elsewhere drops them.
#[derive(Default)]
pub(crate) struct ReadAheads {
    pieces: std::sync::Mutex<HashMap<(Uuid, i32), VecDeque<ReadAhead>>>,
    /// Read aheads started, and reads answered from one (the metrics count every log's).
    started: AtomicU64,
    hits: AtomicU64,
}

impl ReadAheads {
    /// The read ahead of `key` from `position`, if one starts there.
    fn take(&self, key: (Uuid, i32), position: i64) -> Option<Piece> {
        let mut pieces = self.pieces.lock().unwrap();
        let queue = pieces.get_mut(&key)?;
        if queue.front().is_some_and(|a| a.from == position) {
            return queue.pop_front().map(|ahead| ahead.piece);
        }
        pieces.remove(&key);
        None
    }

    /// Puts back, in front, what a read left of a read ahead.
    fn put_back(&self, key: (Uuid, i32), from: i64, rest: ColdRead) {
        if rest.batches.is_empty() {
            return;
        }
        let ahead = ReadAhead {
            from,
            started: Instant::now(),
            bytes: rest.bytes(),
            piece: Piece::Ready(rest),
        };
        self.pieces.lock().unwrap().entry(key).or_default().push_front(ahead);
    }

    /// Starts `read(from)` as the read ahead of `key` after what is read ahead of it already
    /// (from `position` if nothing is), unless one is being read, the cold part ends there,
    /// or too much is held.
    fn start<F>(&self, key: (Uuid, i32), position: i64, end: i64, read: impl FnOnce(i64) -> F)
    where
        F: std::future::Future<Output = Result<ColdRead, LogError>> + Send + 'static,
    {
        let mut pieces = self.pieces.lock().unwrap();
        for queue in pieces.values_mut() {
            queue.retain(|a| a.started.elapsed() < READ_AHEAD_TTL);
        }
        pieces.retain(|_, queue| !queue.is_empty());
        let held: usize = pieces.values().flatten().map(|a| a.bytes).sum();
        let queue = pieces.entry(key).or_default();
        let from = match queue.back() {
            None => position,
            Some(ReadAhead {
                piece: Piece::Ready(cold),
                ..
            }) => cold.position,
            Some(_) => return,
        };
        if from >= end || held + READ_AHEAD_BYTES > READ_AHEAD_TOTAL_BYTES {
            return;
        }
        METRICS.read_aheads.inc();
        self.started.fetch_add(1, Ordering::Relaxed);
        queue.push_back(ReadAhead {
            from,
            started: Instant::now(),
            bytes: READ_AHEAD_BYTES,
            piece: Piece::Reading(ReadAheadTask::new(tokio::spawn(read(from)))),
        });
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
    let mut start = 0;
    get_runs(rows)
        .chunks(gets)
        .map(|runs| {
            let len: usize = runs.iter().map(|run| run.len()).sum();
            start += len;
            &rows[start - len..start]
        })
        .collect()
}

/// `read_rows` for background work (compaction): on a local store one read at a time,
/// each after giving way to the writes producers wait for. A remote store's GETs do not
/// share the disk, and each is slow: they go together.
pub(crate) async fn read_rows_behind(
    store: &DataStore,
    rows: &[BatchRow],
    foreground: &std::sync::Arc<crate::store::Foreground>,
) -> Result<Vec<Bytes>, LogError> {
    if !store.is_local() {
        return read_rows(store, rows).await;
    }
    let mut out = Vec::with_capacity(rows.len());
    for run in get_runs(rows) {
        store.give_way_to(foreground).await;
        out.extend(read_rows(store, run).await?);
    }
    Ok(out)
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
            if data.len() as u64 != end - start {
                return Err(LogError::Storage(format!(
                    "reading {key}: {} bytes at {start}, {} expected",
                    data.len(),
                    end - start
                )));
            }
            let mut from = 0;
            let batches: Vec<Bytes> = run
                .iter()
                .map(|r| {
                    from += r.length as usize;
                    data.slice(from - r.length as usize..from)
                })
                .collect();
            // The tier store is another system, often another operator's: its bytes are
            // checked before a client sees them (a damaged object is an error, never data).
            if in_tier(key) {
                if let Some((r, _)) = run.iter().zip(&batches).find(|(_, b)| !crate::batch::crc_ok(b)) {
                    return Err(LogError::Storage(format!(
                        "tier object {key} is damaged: the batch at offset {} fails its CRC",
                        r.base_offset
                    )));
                }
            }
            Ok::<_, LogError>(batches)
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
    /// Read aheads started, and reads they answered.
    pub fn read_ahead_counts(&self) -> (u64, u64) {
        let r = &self.inner.read_ahead;
        (r.started.load(Ordering::Relaxed), r.hits.load(Ordering::Relaxed))
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

    fn cold(lengths: &[usize], first: i64) -> ColdRead {
        let ends: Vec<i64> = (1..=lengths.len() as i64).map(|i| first + 5 * i).collect();
        ColdRead {
            batches: lengths.iter().map(|&n| Bytes::from(vec![0; n])).collect(),
            position: ends.last().copied().unwrap_or(first),
            ends,
        }
    }

    #[test]
    fn a_read_ahead_is_handed_out_a_budget_at_a_time() {
        let mut read = cold(&[10, 10, 10], 100);
        let rest = read.split_off(25);
        assert_eq!((read.batches.len(), read.bytes(), read.position), (2, 20, 110));
        assert_eq!(
            (rest.batches.len(), rest.bytes(), rest.position, rest.ends),
            (1, 10, 115, vec![115])
        );
        // At least one batch, however small the budget.
        let mut read = cold(&[10, 10], 0);
        let rest = read.split_off(1);
        assert_eq!((read.batches.len(), read.position, rest.batches.len()), (1, 5, 1));
        let mut all = cold(&[10, 10], 0);
        assert!(all.split_off(1 << 20).batches.is_empty());
        assert_eq!(all.position, 10);
    }

    #[test]
    fn a_fetch_keeps_within_its_limit_but_the_first_batch_of_the_first_partition() {
        let result = |lengths: &[usize]| ReadResult {
            log_start: 0,
            high_watermark: 10,
            last_stable: 10,
            batches: lengths.iter().map(|&n| Bytes::from(vec![0; n])).collect(),
            aborted: vec![],
        };
        let lens = |r: &ReadResult| r.batches.iter().map(Bytes::len).collect::<Vec<_>>();
        let mut r = result(&[30, 30, 30]);
        r.keep_within(65, false);
        assert_eq!(lens(&r), vec![30, 30]);
        // Larger than the limit: only the response's first data may exceed it.
        let mut r = result(&[100, 10]);
        r.keep_within(50, true);
        assert_eq!(lens(&r), vec![100]);
        let mut r = result(&[100, 10]);
        r.keep_within(50, false);
        assert!(r.batches.is_empty());
        let mut r = result(&[10]);
        r.keep_within(0, false);
        assert!(r.batches.is_empty());
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
