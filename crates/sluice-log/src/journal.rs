//! The local journal: on a single node, a flush is acknowledged once it is
//! appended here and fdatasync'd; the flusher uploads journaled flushes to the
//! object store and indexes them later, many at a time (the flusher's staged flushes).
//!
//! Why: creating one object per flush costs a new file, its data sync and a
//! directory sync. On this class of disk that is a p99 of 4-10 ms for the
//! write alone, where appending to a file that is already allocated is 1-2 ms.
//! The journal is a few segment files, each
//! `SEGMENT_BYTES` long; a segment whose records are all uploaded is reused
//! (renamed) for the next one, so writes overwrite allocated blocks and the
//! data sync does not have to commit new extents.
//!
//! A record is `magic:u32 len:u32 seq:u64 crc32c:u32 payload`, where the CRC
//! covers `seq` and the payload. The payload is the flush's data object
//! (batches and footer), so it describes itself, or for a large flush written
//! to the store, a reference to that object (`reference`). Sequence numbers run on
//! across segments; a segment is named by the sequence number of its first
//! record. Reading stops at the first record that is torn, fails its CRC or
//! is out of sequence (a reused segment still holds its old records after the
//! new ones).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, Bytes};
use sluice_meta::{AbortedTxnRow, MetaStore, SeqEntry};
use uuid::Uuid;

use crate::object::{self, FooterEntry};
use crate::producer::{self, ProducerEntry};
use crate::{batch, store, DataStore};

const MAGIC: u32 = 0x534a_5231; // "SJR1"
const HEADER: usize = 20;
/// Segment size. A record larger than this gets a segment of its own, which grows.
pub(crate) const SEGMENT_BYTES: u64 = 32 << 20;
/// Uploaded segments kept for reuse; more are deleted.
const SPARES: usize = 4;

pub(crate) struct Journal {
    dir: PathBuf,
    segment_bytes: u64,
    /// Live segments, oldest first: (first sequence number, path). The last is written
    /// once `file` is open.
    segments: VecDeque<(u64, PathBuf)>,
    /// The segment being written; None before the first record after opening.
    file: Option<File>,
    /// Set by a failed write, after which every append fails until a restart: the failed
    /// record may be whole on disk or not, and a later record could not follow it.
    failed: bool,
    position: u64,
    next_seq: u64,
    spares: Vec<PathBuf>,
}

/// Ends the payload of a record that refers to an object in the store.
const REFERENCE_MAGIC: &[u8; 8] = b"SLUICER2";
/// Ended reference records of earlier builds, which held only the key.
const REFERENCE_MAGIC_V1: &[u8; 8] = b"SLUICER1";

/// The payload of a record for a flush written to the store as `object` under `key`
/// (synced before the record is written): the object's footer and trailer, the length
/// of its batches, then `key len:u16 "SLUICER2"`. A data object ends with another magic
/// (`object::MAGIC`). The footer lets recovery pass over flushes the store has indexed
/// without reading them: compaction may have collected their objects since.
pub(crate) fn reference(key: &str, object: &[u8]) -> Result<Bytes> {
    let footer = object::footer_len(object, object.len())? + object::TRAILER_LEN;
    let data_len = object.len() - footer;
    let mut out = Vec::with_capacity(footer + key.len() + 18);
    out.extend_from_slice(&object[data_len..]);
    out.put_u64(data_len as u64);
    out.extend_from_slice(key.as_bytes());
    out.put_u16(key.len() as u16);
    out.extend_from_slice(REFERENCE_MAGIC);
    Ok(out.into())
}

/// What a reference record names: an object in the store, and its footer entries
/// (None in records of earlier builds).
struct Reference<'a> {
    key: &'a str,
    entries: Option<Vec<FooterEntry>>,
}

/// Reads a reference record; None for a record holding its data.
fn referenced(payload: &[u8]) -> Result<Option<Reference<'_>>> {
    let (rest, v1) = match (
        payload.strip_suffix(REFERENCE_MAGIC),
        payload.strip_suffix(REFERENCE_MAGIC_V1),
    ) {
        (Some(rest), _) => (rest, false),
        (None, Some(rest)) => (rest, true),
        (None, None) => return Ok(None),
    };
    let malformed = || anyhow::anyhow!("malformed reference record");
    let (rest, len) = rest
        .split_at_checked(rest.len().checked_sub(2).ok_or_else(malformed)?)
        .ok_or_else(malformed)?;
    let len = u16::from_be_bytes([len[0], len[1]]) as usize;
    let (rest, key) = rest
        .split_at_checked(rest.len().checked_sub(len).ok_or_else(malformed)?)
        .ok_or_else(malformed)?;
    let key = std::str::from_utf8(key).map_err(|_| malformed())?;
    if v1 {
        return Ok(Some(Reference { key, entries: None }));
    }
    let (tail, mut data_len) = rest
        .split_at_checked(rest.len().checked_sub(8).ok_or_else(malformed)?)
        .ok_or_else(malformed)?;
    let data_len = data_len.get_u64();
    let footer = object::footer_len(tail, tail.len())?;
    let entries = object::decode_footer(&tail[..footer], tail, data_len)?;
    Ok(Some(Reference {
        key,
        entries: Some(entries),
    }))
}

/// A journaled flush read back on opening.
pub(crate) struct Record {
    pub seq: u64,
    pub payload: Bytes,
}

impl Journal {
    /// Opens the journal in `dir`, returning it and every record it holds, in order.
    /// Writing resumes in another segment, after the last record.
    pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<(Journal, Vec<Record>)> {
        std::fs::create_dir_all(dir)?;
        let (mut found, mut spares): (Vec<(u64, PathBuf)>, Vec<PathBuf>) = (Vec::new(), Vec::new());
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let seq = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".jnl"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(seq) = seq {
                found.push((seq, path));
            } else if path.extension().is_some_and(|e| e == "spare") {
                spares.push(path);
            }
        }
        found.sort();
        let mut records = Vec::new();
        let mut segments = VecDeque::new();
        for (first, path) in found {
            let before = records.len();
            read_records(&std::fs::read(&path)?, first, &mut records);
            if records.len() > before {
                segments.push_back((first, path));
            } else {
                // No record of its own (reused, then a crash before its first write).
                std::fs::remove_file(&path)?;
            }
        }
        // Each segment holds a run of consecutive records and they are read in order of
        // their first, so the records are in order. There may be gaps: a released
        // segment whose renaming a crash undid holds only uploaded records.
        let next_seq = records.last().map_or(1, |r| r.seq + 1);
        let journal = Journal {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments,
            file: None,
            failed: false,
            position: 0,
            next_seq,
            spares,
        };
        Ok((journal, records))
    }

    /// Appends one record and syncs it; returns its sequence number.
    pub fn append(&mut self, parts: &[Bytes]) -> io::Result<u64> {
        if self.failed {
            return Err(io::Error::other(
                "an earlier journal write failed; restart the broker to recover",
            ));
        }
        self.failed = true;
        let seq = self.write(parts)?;
        self.failed = false;
        Ok(seq)
    }

    fn write(&mut self, parts: &[Bytes]) -> io::Result<u64> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len32 = u32::try_from(len).map_err(|_| io::Error::other("journal record over 4 GiB"))?;
        if self.file.is_none() || (self.position > 0 && self.position + (HEADER + len) as u64 > self.segment_bytes) {
            self.rotate()?;
        }
        let seq = self.next_seq;
        let mut crc = crc32c::crc32c(&seq.to_be_bytes());
        for p in parts {
            crc = crc32c::crc32c_append(crc, p);
        }
        let mut header = Vec::with_capacity(HEADER);
        header.put_u32(MAGIC);
        header.put_u32(len32);
        header.put_u64(seq);
        header.put_u32(crc);
        let file = self.file.take().expect("a segment is open");
        let mut at = self.position;
        for piece in std::iter::once(&header[..]).chain(parts.iter().map(|p| &p[..])) {
            file.write_all_at(piece, at)?;
            at += piece.len() as u64;
        }
        file.sync_data()?;
        self.file = Some(file);
        self.position = at;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Forgets every record up to `seq` (they are uploaded): segments holding only
    /// such records are kept for reuse or deleted.
    pub fn release(&mut self, seq: u64) -> io::Result<()> {
        while let Some((first, _)) = self.segments.front() {
            let end = self.segments.get(1).map_or(self.next_seq, |s| s.0);
            let written = self.segments.len() == 1 && self.file.is_some();
            if end > seq + 1 || written || end == *first {
                break;
            }
            let (_, path) = self.segments.pop_front().expect("a segment");
            if self.spares.len() < SPARES {
                // Renamed, so that a restart does not read its old records as live ones.
                let spare = self.dir.join(format!("{}.spare", uuid::Uuid::new_v4().simple()));
                std::fs::rename(&path, &spare)?;
                self.spares.push(spare);
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Opens the segment the next record goes to, and keeps a spare for the segment
    /// after it, both written with zeros: done before serving, so that neither the first
    /// appends nor the first change of segment commit new blocks on each sync.
    pub fn prepare(&mut self) -> io::Result<()> {
        while self.spares.len() < 2 {
            let spare = self.dir.join(format!("{}.spare", uuid::Uuid::new_v4().simple()));
            zero_filled(&spare, self.segment_bytes)?;
            self.spares.push(spare);
        }
        if self.file.is_none() {
            self.rotate()?;
        }
        File::open(&self.dir)?.sync_all()
    }

    /// Starts a new segment: an uploaded one renamed (its blocks are allocated, so
    /// records overwrite them), or else a new file. Only a node writing faster than it
    /// uploads runs out of spares, and its large records amortise the new blocks.
    fn rotate(&mut self) -> io::Result<()> {
        let path = segment_path(&self.dir, self.next_seq);
        match self.spares.pop() {
            Some(spare) => std::fs::rename(&spare, &path)?,
            None => OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?
                .set_len(self.segment_bytes)?,
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        File::open(&self.dir)?.sync_all()?;
        if self.segments.back().is_some_and(|s| s.0 == self.next_seq) {
            // The last segment has no record (it was opened for the first one): replace it.
            self.segments.pop_back();
        }
        self.segments.push_back((self.next_seq, path));
        self.file = Some(file);
        self.position = 0;
        Ok(())
    }
}

/// Uploads and indexes the journaled flushes the store does not have: those
/// acknowledged before a crash and not yet uploaded (or, for reference records,
/// written to the store but not yet indexed). Runs before the log loads its
/// partitions. Returns how many records it recovered.
pub(crate) async fn recover(meta: &MetaStore, store: &DataStore, node_id: i32, records: &[Record]) -> Result<usize> {
    let mut offsets: HashMap<(Uuid, i32), (i64, i32)> = meta
        .list_partitions()
        .await?
        .into_iter()
        .map(|p| ((p.topic_id, p.partition), (p.high_watermark, p.leader_epoch)))
        .collect();
    let mut producers: HashMap<(Uuid, i32, i64), ProducerEntry> = meta
        .load_producer_states()
        .await?
        .into_iter()
        .map(|s| {
            (
                (s.topic_id, s.partition, s.producer_id),
                crate::producer::ProducerEntry::from_row(s),
            )
        })
        .collect();
    // The batches to upload, each with the record holding it; flushes already in the
    // store (reference records), with their index rows.
    let mut batches: Vec<(FooterEntry, Bytes)> = Vec::new();
    let (mut stored, mut stored_rows) = (Vec::new(), Vec::new());
    let (mut moved, mut touched) = (Vec::new(), HashSet::new());
    let mut aborted = Vec::new();
    let mut uploaded = 0;
    for r in records {
        let reference = referenced(&r.payload).with_context(|| format!("journal record {}", r.seq))?;
        // A record is recovered whole or not at all; entries of deleted topics are dropped.
        let in_store = |entries: &[FooterEntry]| {
            entries
                .iter()
                .find(|e| offsets.contains_key(&(e.topic_id, e.partition)))
                .is_none_or(|e| e.last_offset < offsets[&(e.topic_id, e.partition)].0)
        };
        let key = reference.as_ref().map(|r| r.key);
        let data = match reference {
            None => r.payload.clone(),
            // Indexed already: the object may since have been compacted and collected.
            Some(Reference {
                entries: Some(entries), ..
            }) if in_store(&entries) => continue,
            Some(Reference { key, entries }) => match store.get(key).await {
                Ok(data) => data,
                // Only an earlier build's record says nothing of its object. Recovery runs
                // before anything could collect an object not yet indexed, so a missing
                // one was indexed, then compacted and collected.
                Err(e) if entries.is_none() && store::not_found(&e) => continue,
                Err(e) => return Err(e.context(format!("reading {key}, which journal record {} refers to", r.seq))),
            },
        };
        let entries = object::verify(&data).with_context(|| format!("journal record {}", r.seq))?;
        if in_store(&entries) {
            continue;
        }
        let live: Vec<&FooterEntry> = entries
            .iter()
            .filter(|e| offsets.contains_key(&(e.topic_id, e.partition)))
            .collect();
        // Records are written in offset order, each only once the one before it is, so
        // the first one the store lacks continues its offsets exactly.
        match follows(&live, &offsets) {
            Ok(()) => {}
            Err((e, next)) => bail!(
                "journal record {} does not follow the store: {}-{} is at offset {}, the record at {}{}",
                r.seq,
                e.topic,
                e.partition,
                next,
                e.base_offset,
                if e.base_offset > next {
                    " (records are missing from the journal: acknowledged data may be lost)"
                } else {
                    ""
                }
            ),
        }
        for e in live {
            let pkey = (e.topic_id, e.partition);
            let (next, _) = offsets.get_mut(&pkey).expect("live");
            *next = e.last_offset + 1;
            moved.push(pkey);
            let start = e.position as usize;
            let b = batch::parse_header(&data[start..start + e.length as usize], 0)?;
            if b.is_control() {
                let prod = (pkey.0, pkey.1, b.producer_id);
                let entry = producers.entry(prod).or_default();
                let ended = producer::record_marker(entry, b.producer_epoch);
                let batch = &data[start..start + e.length as usize];
                if let (Some(false), Some(first)) = (batch::marker_is_commit(batch), ended.first_offset) {
                    aborted.push(AbortedTxnRow {
                        topic_id: pkey.0,
                        partition: pkey.1,
                        producer_id: b.producer_id,
                        first_offset: first,
                        last_offset: e.base_offset,
                    });
                }
                touched.insert(prod);
            } else if b.producer_id >= 0 {
                let prod = (pkey.0, pkey.1, b.producer_id);
                let seq = SeqEntry {
                    first_seq: b.base_sequence,
                    last_seq: b.last_sequence(),
                    base_offset: e.base_offset,
                    last_offset: e.last_offset,
                };
                let entry = producers.entry(prod).or_default();
                producer::record(entry, b.producer_epoch, seq);
                if b.is_transactional() {
                    producer::record_transactional(entry, e.base_offset);
                }
                touched.insert(prod);
            }
            match key {
                Some(key) => stored_rows.push(e.index_row(key)),
                None => batches.push((e.clone(), data.clone())),
            }
        }
        if let Some(key) = key {
            stored.push((key.to_string(), data.len() as i64));
        }
        uploaded += 1;
    }
    if uploaded == 0 {
        return Ok(0);
    }
    let key = crate::object::flush_key(node_id);
    let (parts, footer) = object::assemble(batches.iter().map(|(e, payload)| (e, payload)).collect());
    let size: usize = parts.iter().map(|p| p.len()).sum();
    let mut objects = stored;
    let mut rows = stored_rows;
    if !batches.is_empty() {
        objects.push((key.clone(), size as i64));
        rows.extend(footer.iter().map(|e| e.index_row(&key)));
    }
    moved.sort();
    moved.dedup();
    let commit = crate::commit::flush_commit(
        objects,
        rows,
        moved.iter().map(|k| (*k, offsets[k])),
        touched.iter().map(|k| (*k, &producers[k])),
        aborted,
    );
    if !batches.is_empty() {
        store.put_parts(&key, parts).await?;
    }
    let applied = meta.commit_flush(&commit).await?;
    if applied.iter().any(|ok| !ok) {
        bail!("journaled flushes were fenced on recovery: another broker leads their partitions");
    }
    Ok(uploaded)
}

/// Whether a record's batches continue each partition's offsets in the store exactly;
/// if not, the first batch that does not, and the offset it should have had.
fn follows<'a>(
    entries: &[&'a FooterEntry],
    offsets: &HashMap<(Uuid, i32), (i64, i32)>,
) -> Result<(), (&'a FooterEntry, i64)> {
    let mut next: HashMap<(Uuid, i32), i64> = HashMap::new();
    for e in entries {
        let key = (e.topic_id, e.partition);
        let at = next.entry(key).or_insert(offsets[&key].0);
        if e.base_offset != *at {
            return Err((e, *at));
        }
        *at = e.last_offset + 1;
    }
    Ok(())
}

/// Writes a file of `len` zero bytes and syncs it, so that its blocks are allocated.
fn zero_filled(path: &Path, len: u64) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        io::Write::write_all(&mut file, &zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.jnl"))
}

/// Appends the segment's valid records, which must start at `first`.
fn read_records(data: &[u8], first: u64, out: &mut Vec<Record>) {
    let data = Bytes::copy_from_slice(data);
    let (mut at, mut expected) = (0usize, first);
    while at + HEADER <= data.len() {
        let mut h = &data[at..at + HEADER];
        let (magic, len, seq, crc) = (h.get_u32(), h.get_u32() as usize, h.get_u64(), h.get_u32());
        if magic != MAGIC || seq != expected || at + HEADER + len > data.len() {
            break;
        }
        let payload = data.slice(at + HEADER..at + HEADER + len);
        if crc32c::crc32c_append(crc32c::crc32c(&seq.to_be_bytes()), &payload) != crc {
            break;
        }
        out.push(Record { seq, payload });
        at += HEADER + len;
        expected += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(records: &[Record]) -> Vec<(u64, Vec<u8>)> {
        records.iter().map(|r| (r.seq, r.payload.to_vec())).collect()
    }

    #[test]
    fn a_reference_record_carries_its_objects_footer() {
        let entry = FooterEntry {
            topic_id: Uuid::new_v4(),
            topic: "t".into(),
            partition: 3,
            base_offset: 10,
            last_offset: 12,
            max_timestamp: 7,
            position: 0,
            length: 5,
        };
        let mut object = bytes::BytesMut::from(&b"12345"[..]);
        object::finish(&mut object, std::slice::from_ref(&entry));
        let payload = reference("data/1-0-x.sobj", &object).unwrap();
        assert!(payload.len() < object.len() + 40);
        let r = referenced(&payload).unwrap().unwrap();
        assert_eq!((r.key, r.entries), ("data/1-0-x.sobj", Some(vec![entry])));
        // A data object is not a reference; a damaged reference is an error.
        assert!(referenced(&object).unwrap().is_none());
        let mut damaged = payload.to_vec();
        damaged[3] ^= 1;
        assert!(referenced(&damaged).is_err());
        assert!(referenced(&payload[payload.len() - 12..]).is_err());
    }

    #[test]
    fn records_survive_reopening_across_segments_and_released_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, found) = Journal::open(dir.path(), 100).unwrap();
        assert!(found.is_empty());
        // Three 60-byte records (20-byte headers): one per 100-byte segment.
        for i in 1..=3u8 {
            let seq = j.append(&[Bytes::from(vec![i; 25]), Bytes::from(vec![i; 15])]).unwrap();
            assert_eq!(seq, i as u64);
        }
        assert_eq!(j.segments.len(), 3);
        drop(j);
        let (mut j, found) = Journal::open(dir.path(), 100).unwrap();
        let want: Vec<(u64, Vec<u8>)> = (1..=3u8).map(|i| (i as u64, vec![i; 40])).collect();
        assert_eq!(payloads(&found), want);
        assert_eq!(j.append(&[Bytes::from_static(b"four")]).unwrap(), 4);
        j.release(3).unwrap();
        assert_eq!(j.segments.len(), 1, "segments holding only released records went");
        assert_eq!(j.spares.len(), 3);
        // The next segment reuses a spare, whose old records must not come back.
        j.append(&[Bytes::from(vec![5; 70])]).unwrap();
        j.append(&[Bytes::from(vec![6; 70])]).unwrap();
        drop(j);
        let (_, found) = Journal::open(dir.path(), 100).unwrap();
        let seqs: Vec<u64> = found.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [4, 5, 6]);
        assert_eq!(found[2].payload.to_vec(), vec![6; 70]);
    }

    #[test]
    fn a_stale_segment_does_not_hide_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 100).unwrap();
        for i in 1..=3u8 {
            j.append(&[Bytes::from(vec![i; 40])]).unwrap(); // one record per segment
        }
        let stale = std::fs::read(segment_path(dir.path(), 1)).unwrap();
        j.release(2).unwrap();
        drop(j);
        // A crash undid the renaming of the released segment 1 into a spare.
        std::fs::write(segment_path(dir.path(), 1), stale).unwrap();
        let (mut j, found) = Journal::open(dir.path(), 100).unwrap();
        assert_eq!(found.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(j.append(&[Bytes::from_static(b"4")]).unwrap(), 4);
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_journal_there() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 1 << 20).unwrap();
        for i in 0..3u8 {
            j.append(&[Bytes::from(vec![i; 100])]).unwrap();
        }
        let path = j.segments.back().unwrap().1.clone();
        drop(j);
        // Flip one byte of the third record's payload.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], (2 * (HEADER + 100) + HEADER + 7) as u64)
            .unwrap();
        let (mut j, found) = Journal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(found.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
        // Writing goes on after the last good record, in a new segment.
        assert_eq!(j.append(&[Bytes::from_static(b"x")]).unwrap(), 3);
        drop(j);
        let (_, found) = Journal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(found.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(&found[2].payload[..], b"x");
    }
}
