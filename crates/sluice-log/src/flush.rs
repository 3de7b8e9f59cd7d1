//! The flusher: the single writer of every partition on this broker.
//!
//! It gathers appends for `flush_interval` (or until `flush_bytes`), assigns
//! offsets, checks idempotent sequences, writes one data object, commits its
//! index rows, watermarks and producer state in one metadata transaction,
//! and only then updates the in-memory state, the tail cache and the waiting
//! producers. A failed write or commit changes nothing, so offsets are never
//! handed out twice.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use sluice_meta::{BatchRow, FlushCommit, ProducerStateRow, SeqEntry, WatermarkUpdate};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::object::{self, FooterEntry};
use crate::producer::{self, ProducerEntry, SeqCheck};
use crate::{batch, AppendRequest, Appended, Control, FlushMsg, Inner, LogError, Partition, TailBatch, METRICS};

type PartKey = (Uuid, i32);
type ProducerKey = (Uuid, i32, i64);

/// Global FIFO of cached tail batches, to bound the cache across partitions.
struct TailBudget {
    order: VecDeque<(Arc<Partition>, i64, usize)>,
    bytes: usize,
}

pub(crate) async fn run(inner: Arc<Inner>, mut rx: mpsc::Receiver<FlushMsg>, states: Vec<ProducerStateRow>) {
    let mut producers: HashMap<ProducerKey, ProducerEntry> = states
        .into_iter()
        .map(|s| {
            (
                (s.topic_id, s.partition, s.producer_id),
                ProducerEntry {
                    epoch: s.epoch,
                    recent: s.recent.into(),
                },
            )
        })
        .collect();
    let mut tail = TailBudget {
        order: VecDeque::new(),
        bytes: 0,
    };
    let interval = inner.opts.flush_interval;
    while let Some(first) = rx.recv().await {
        let first = match first {
            FlushMsg::Append(r) => r,
            FlushMsg::Control(control) => {
                apply_control(control, &mut producers);
                continue;
            }
        };
        let deadline = tokio::time::Instant::now() + interval;
        let mut pending_bytes = first.data.len();
        let mut group = vec![first];
        // A control message ends the gathering: it applies after this flush.
        let mut after = None;
        while pending_bytes < inner.opts.flush_bytes {
            let next = match rx.try_recv() {
                Ok(r) => r,
                Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(r)) => r,
                    _ => break,
                },
            };
            match next {
                FlushMsg::Append(next) => {
                    pending_bytes += next.data.len();
                    group.push(next);
                }
                FlushMsg::Control(control) => {
                    after = Some(control);
                    break;
                }
            }
        }
        flush(&inner, group, &mut producers, &mut tail).await;
        if let Some(control) = after {
            apply_control(control, &mut producers);
        }
    }
}

fn apply_control(msg: Control, producers: &mut HashMap<ProducerKey, ProducerEntry>) {
    match msg {
        Control::Producers(key, states) => {
            producers.retain(|k, _| (k.0, k.1) != key);
            for s in states {
                producers.insert(
                    (s.topic_id, s.partition, s.producer_id),
                    ProducerEntry {
                        epoch: s.epoch,
                        recent: s.recent.into(),
                    },
                );
            }
        }
        Control::Barrier(done) => {
            let _ = done.send(());
        }
    }
}

/// What happens to one append once the flush commits.
enum Outcome {
    Written { key: PartKey, base_offset: i64 },
    Duplicate { key: PartKey, base_offset: i64 },
    Refused(LogError),
}

async fn flush(
    inner: &Inner,
    group: Vec<AppendRequest>,
    producers: &mut HashMap<ProducerKey, ProducerEntry>,
    tail: &mut TailBudget,
) {
    let started = Instant::now();
    let mut body = BytesMut::with_capacity(group.iter().map(|r| r.data.len()).sum::<usize>() + 4096);
    let mut footer: Vec<FooterEntry> = Vec::new();
    // Per partition touched: its next offset and leader epoch.
    let mut next: HashMap<PartKey, (Arc<Partition>, i64, i32)> = HashMap::new();
    let mut touched_producers: HashMap<ProducerKey, ProducerEntry> = HashMap::new();
    let mut outcomes = Vec::with_capacity(group.len());
    let mut records = 0u64;

    for req in &group {
        if !inner.topic_alive(req.topic.id) {
            outcomes.push(Outcome::Refused(LogError::UnknownTopicOrPartition));
            continue;
        }
        let key = (req.topic.id, req.partition.index);
        if !next.contains_key(&key) && !req.partition.state.lock().unwrap().led {
            outcomes.push(Outcome::Refused(LogError::NotLeader));
            continue;
        }
        let slot = next.entry(key).or_insert_with(|| {
            let s = req.partition.state.lock().unwrap();
            (req.partition.clone(), s.high_watermark, s.leader_epoch)
        });
        let (_, next_offset, epoch) = (slot.0.clone(), &mut slot.1, slot.2);

        // Idempotence: requests with a producer id carry exactly one batch.
        let mut seq = None;
        if let [b] = req.batches.as_slice() {
            if b.producer_id >= 0 {
                let pkey = (key.0, key.1, b.producer_id);
                let current = touched_producers.get(&pkey).or_else(|| producers.get(&pkey));
                match producer::check(current, b.producer_epoch, b.base_sequence, b.last_sequence()) {
                    Err(e) => {
                        outcomes.push(Outcome::Refused(e));
                        continue;
                    }
                    Ok(SeqCheck::Duplicate(d)) => {
                        outcomes.push(Outcome::Duplicate {
                            key,
                            base_offset: d.base_offset,
                        });
                        continue;
                    }
                    Ok(SeqCheck::Append) => seq = Some((pkey, b.producer_epoch, b.base_sequence, b.last_sequence())),
                }
            }
        }

        let first_offset = *next_offset;
        for b in &req.batches {
            let position = body.len();
            body.extend_from_slice(&req.data[b.position..b.position + b.length]);
            batch::patch_header(&mut body[position..], *next_offset, epoch);
            let last = *next_offset + b.last_offset_delta as i64;
            footer.push(FooterEntry {
                topic_id: key.0,
                topic: req.topic.name.clone(),
                partition: key.1,
                base_offset: *next_offset,
                last_offset: last,
                max_timestamp: b.max_timestamp,
                position: position as u64,
                length: b.length as u32,
            });
            records += b.record_count as u64;
            *next_offset = last + 1;
        }
        if let Some((pkey, pepoch, first_seq, last_seq)) = seq {
            let mut entry = touched_producers
                .get(&pkey)
                .or_else(|| producers.get(&pkey))
                .cloned()
                .unwrap_or_default();
            let entry_seq = SeqEntry {
                first_seq,
                last_seq,
                base_offset: first_offset,
                last_offset: *next_offset - 1,
            };
            producer::record(&mut entry, pepoch, entry_seq);
            touched_producers.insert(pkey, entry);
        }
        outcomes.push(Outcome::Written {
            key,
            base_offset: first_offset,
        });
    }

    let data_len = body.len();
    let batch_count = footer.len();
    let result = if footer.is_empty() {
        Ok((Bytes::new(), Vec::new()))
    } else {
        write_and_commit(inner, body, &footer, &next, &touched_producers).await
    };

    let (object, fenced) = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "flush failed; refusing its appends");
            let err = LogError::Storage(format!("{e:#}"));
            for req in group {
                let _ = req.reply.send(Err(err.clone()));
            }
            return;
        }
    };

    // Committed: publish the new state.
    for (key, (part, next_offset, _)) in &next {
        if fenced.contains(key) {
            continue;
        }
        let mut s = part.state.lock().unwrap();
        for e in footer.iter().filter(|e| (e.topic_id, e.partition) == *key) {
            let data = object.slice(e.position as usize..(e.position + e.length as u64) as usize);
            tail.order.push_back((part.clone(), e.base_offset, data.len()));
            tail.bytes += data.len();
            s.tail.push_back(TailBatch {
                base_offset: e.base_offset,
                last_offset: e.last_offset,
                data,
            });
        }
        s.high_watermark = *next_offset;
    }
    for (pkey, entry) in touched_producers {
        if !fenced.contains(&(pkey.0, pkey.1)) {
            producers.insert(pkey, entry);
        }
    }
    evict(tail, inner.opts.tail_cache_bytes);
    inner.committed.send_modify(|n| *n += 1);

    for (req, outcome) in group.into_iter().zip(outcomes) {
        let reply = match outcome {
            Outcome::Refused(e) => Err(e),
            Outcome::Written { key, .. } | Outcome::Duplicate { key, .. } if fenced.contains(&key) => {
                Err(if inner.topic_alive(key.0) {
                    LogError::NotLeader
                } else {
                    LogError::UnknownTopicOrPartition
                })
            }
            Outcome::Written { base_offset, .. } | Outcome::Duplicate { base_offset, .. } => Ok(Appended {
                base_offset,
                log_start_offset: req.partition.offsets().log_start,
            }),
        };
        let _ = req.reply.send(reply);
    }
    if batch_count > 0 {
        METRICS.flushes.inc();
        METRICS.flush_bytes.inc_by(data_len as u64);
        METRICS.batches_appended.inc_by(batch_count as u64);
        METRICS.records_appended.inc_by(records);
        METRICS.flush_seconds.observe(started.elapsed().as_secs_f64());
    }
}

/// Writes the object and commits it. Returns the object's bytes and the
/// partitions whose commit was refused (deleted, or fenced by a newer epoch).
async fn write_and_commit(
    inner: &Inner,
    mut body: BytesMut,
    footer: &[FooterEntry],
    next: &HashMap<PartKey, (Arc<Partition>, i64, i32)>,
    producers: &HashMap<ProducerKey, ProducerEntry>,
) -> anyhow::Result<(Bytes, Vec<PartKey>)> {
    object::finish(&mut body, footer);
    let object = body.freeze();
    let key = format!(
        "data/{:013}-{}-{}.sobj",
        sluice_meta::now_ms(),
        inner.opts.node_id,
        Uuid::new_v4().simple()
    );
    inner.store.put(&key, object.clone()).await?;

    let mut watermarks = Vec::with_capacity(next.len());
    let mut keys = Vec::with_capacity(next.len());
    for (k, (_, next_offset, epoch)) in next {
        keys.push(*k);
        watermarks.push(WatermarkUpdate {
            topic_id: k.0,
            partition: k.1,
            high_watermark: *next_offset,
            leader_epoch: *epoch,
        });
    }
    let commit = FlushCommit {
        object_key: key.clone(),
        object_size: object.len() as i64,
        batches: footer
            .iter()
            .map(|e| BatchRow {
                topic_id: e.topic_id,
                partition: e.partition,
                base_offset: e.base_offset,
                last_offset: e.last_offset,
                max_timestamp: e.max_timestamp,
                object_key: key.clone(),
                position: e.position as i64,
                length: e.length as i32,
            })
            .collect(),
        watermarks,
        producers: producers
            .iter()
            .map(|(k, e)| ProducerStateRow {
                topic_id: k.0,
                partition: k.1,
                producer_id: k.2,
                epoch: e.epoch,
                recent: e.recent.iter().copied().collect(),
            })
            .collect(),
    };
    let applied = inner.meta.commit_flush(&commit).await?;
    let fenced = keys
        .into_iter()
        .zip(applied)
        .filter(|(_, ok)| !ok)
        .map(|(k, _)| k)
        .collect();
    Ok((object, fenced))
}

fn evict(tail: &mut TailBudget, budget: usize) {
    while tail.bytes > budget {
        let Some((part, base, size)) = tail.order.pop_front() else {
            break;
        };
        tail.bytes -= size;
        let mut s = part.state.lock().unwrap();
        if s.tail.front().is_some_and(|b| b.base_offset == base) {
            s.tail.pop_front();
        }
    }
}
