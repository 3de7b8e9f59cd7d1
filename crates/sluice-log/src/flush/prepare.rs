//! Offsets, idempotent sequence checks, transaction markers and the object body for a
//! group of appends.

use std::collections::HashMap;
use std::time::Instant;

use bytes::BytesMut;
use sluice_meta::{AbortedTxnRow, SeqEntry};

use super::{Flusher, Outcome, Prepared};
use crate::object::FooterEntry;
use crate::producer::{self, SeqCheck};
use crate::{batch, AppendRequest, LogError};

impl Flusher {
    /// Offsets, sequence checks and the object body for a group, on top of the
    /// state the flush in flight will leave.
    pub(super) fn prepare(&self, group: Vec<AppendRequest>) -> Prepared {
        // The flushes not yet published, newest first: offsets and producer state follow theirs.
        let ahead: Vec<&Prepared> = self
            .writing
            .iter()
            .rev()
            .map(|w| &w.prepared)
            .chain(
                self.committing
                    .iter()
                    .flat_map(|c| c.flushes.iter().rev().map(|(p, _)| p)),
            )
            .collect();
        let mut p = Prepared {
            started: Instant::now(),
            outcomes: Vec::with_capacity(group.len()),
            next: HashMap::new(),
            touched: HashMap::new(),
            aborted: Vec::new(),
            footer: Vec::new(),
            body: BytesMut::with_capacity(group.iter().map(|r| r.data.len()).sum::<usize>() + 4096),
            records: 0,
            group: Vec::new(),
        };
        for req in &group {
            if !self.inner.topic_alive(req.topic.id) {
                p.outcomes.push(Outcome::Refused(LogError::UnknownTopicOrPartition));
                continue;
            }
            let key = (req.topic.id, req.partition.index);
            if !p.next.contains_key(&key) && !req.partition.state.lock().unwrap().led {
                p.outcomes.push(Outcome::Refused(LogError::NotLeader));
                continue;
            }
            let slot = p.next.entry(key).or_insert_with(|| {
                let s = req.partition.state.lock().unwrap();
                let next = ahead
                    .iter()
                    .find_map(|a| a.next.get(&key))
                    .map_or(s.high_watermark, |n| n.1);
                (req.partition.clone(), next, s.leader_epoch)
            });
            let (next_offset, epoch) = (&mut slot.1, slot.2);

            // Idempotence: requests with a producer id carry exactly one batch.
            let mut seq = None;
            // A transaction marker (only the coordinator writes control batches).
            let mut marker = None;
            if let [b] = req.batches.as_slice() {
                if b.is_control() {
                    let pkey = (key.0, key.1, b.producer_id);
                    let current = p
                        .touched
                        .get(&pkey)
                        .or_else(|| ahead.iter().find_map(|a| a.touched.get(&pkey)))
                        .or_else(|| self.producers.get(&pkey));
                    if let Err(e) = producer::check_marker(current, b.producer_epoch) {
                        p.outcomes.push(Outcome::Refused(e));
                        continue;
                    }
                    let commit = batch::marker_is_commit(&req.data[b.position..b.position + b.length]);
                    marker = Some((pkey, current.cloned(), b.producer_epoch, commit == Some(true)));
                } else if b.producer_id >= 0 {
                    let pkey = (key.0, key.1, b.producer_id);
                    let current = p
                        .touched
                        .get(&pkey)
                        .or_else(|| ahead.iter().find_map(|a| a.touched.get(&pkey)))
                        .or_else(|| self.producers.get(&pkey));
                    match producer::check(current, b.producer_epoch, b.base_sequence, b.last_sequence()) {
                        Err(e) => {
                            p.outcomes.push(Outcome::Refused(e));
                            continue;
                        }
                        Ok(SeqCheck::Duplicate(d)) => {
                            p.outcomes.push(Outcome::Duplicate {
                                key,
                                base_offset: d.base_offset,
                            });
                            continue;
                        }
                        Ok(SeqCheck::Append) => {
                            seq = Some((
                                pkey,
                                current.cloned(),
                                b.producer_epoch,
                                b.base_sequence,
                                b.last_sequence(),
                                b.is_transactional(),
                            ))
                        }
                    }
                }
            }

            let first_offset = *next_offset;
            let append_ms = if req.topic.config().log_append_time && marker.is_none() {
                sluice_meta::now_ms()
            } else {
                -1
            };
            for b in &req.batches {
                let position = p.body.len();
                p.body.extend_from_slice(&req.data[b.position..b.position + b.length]);
                batch::patch_header(&mut p.body[position..], *next_offset, epoch);
                let mut max_timestamp = b.max_timestamp;
                if append_ms >= 0 {
                    batch::set_log_append_time(&mut p.body[position..position + b.length], append_ms);
                    max_timestamp = append_ms;
                }
                let last = *next_offset + b.last_offset_delta as i64;
                p.footer.push(FooterEntry {
                    topic_id: key.0,
                    topic: req.topic.name.clone(),
                    partition: key.1,
                    base_offset: *next_offset,
                    last_offset: last,
                    max_timestamp,
                    position: position as u64,
                    length: b.length as u32,
                });
                p.records += b.record_count as u64;
                *next_offset = last + 1;
            }
            if let Some((pkey, current, pepoch, first_seq, last_seq, transactional)) = seq {
                let mut entry = current.unwrap_or_default();
                let entry_seq = SeqEntry {
                    first_seq,
                    last_seq,
                    base_offset: first_offset,
                    last_offset: *next_offset - 1,
                };
                producer::record(&mut entry, pepoch, entry_seq);
                if transactional {
                    producer::record_transactional(&mut entry, first_offset);
                }
                p.touched.insert(pkey, entry);
            }
            if let Some((pkey, current, pepoch, commit)) = marker {
                let mut entry = current.unwrap_or_default();
                let ended = producer::record_marker(&mut entry, pepoch);
                if let (false, Some(first)) = (commit, ended.first_offset) {
                    p.aborted.push(AbortedTxnRow {
                        topic_id: key.0,
                        partition: key.1,
                        producer_id: pkey.2,
                        first_offset: first,
                        last_offset: first_offset,
                    });
                }
                p.touched.insert(pkey, entry);
            }
            p.outcomes.push(Outcome::Written {
                key,
                base_offset: first_offset,
                append_ms,
            });
        }
        p.group = group;
        p
    }
}
