//! The flusher: the single writer of every partition on this broker.
//!
//! It gathers appends for `flush_interval` (or until `flush_bytes`), assigns
//! offsets, checks idempotent sequences, writes one data object, commits its
//! index rows, watermarks and producer state in one metadata transaction,
//! and only then updates the in-memory state, the tail cache and the waiting
//! producers. A failed write or commit changes nothing, so offsets are never
//! handed out twice.
//!
//! Flushes are pipelined two deep: while flush N's metadata commit runs, the
//! flusher gathers flush N+1 and writes its object, assigning offsets on top
//! of N's. N+1 is committed only after N has, and fails if N failed, so the
//! store sees the same sequence of commits as without the pipeline.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use sluice_meta::{BatchRow, FlushCommit, ProducerStateRow, SeqEntry, WatermarkUpdate};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
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

/// What happens to one append once the flush commits.
enum Outcome {
    Written { key: PartKey, base_offset: i64 },
    Duplicate { key: PartKey, base_offset: i64 },
    Refused(LogError),
}

/// A group of appends with offsets assigned and its object built.
struct Prepared {
    started: Instant,
    group: Vec<AppendRequest>,
    outcomes: Vec<Outcome>,
    /// Per partition touched: the partition, its next offset after this flush, its leader epoch.
    next: HashMap<PartKey, (Arc<Partition>, i64, i32)>,
    /// Producer state after this flush, for the producers it touched.
    touched: HashMap<ProducerKey, ProducerEntry>,
    footer: Vec<FooterEntry>,
    body: BytesMut,
    records: u64,
}

/// A flush whose object is written and whose metadata commit is running.
struct InFlight {
    prepared: Prepared,
    object: Bytes,
    /// The partitions in the order of the commit's watermark updates.
    keys: Vec<PartKey>,
    commit: JoinHandle<anyhow::Result<Vec<bool>>>,
}

/// What woke the flusher.
enum Event {
    Message(Option<FlushMsg>),
    Committed(anyhow::Result<Vec<bool>>),
    Deadline,
}

struct Flusher {
    inner: Arc<Inner>,
    producers: HashMap<ProducerKey, ProducerEntry>,
    tail: TailBudget,
    in_flight: Option<InFlight>,
}

pub(crate) async fn run(inner: Arc<Inner>, mut rx: mpsc::Receiver<FlushMsg>, states: Vec<ProducerStateRow>) {
    let mut f = Flusher {
        inner,
        producers: HashMap::new(),
        tail: TailBudget {
            order: VecDeque::new(),
            bytes: 0,
        },
        in_flight: None,
    };
    f.set_producers(states);
    let interval = f.inner.opts.flush_interval;
    let mut group: Vec<AppendRequest> = Vec::new();
    let mut pending_bytes = 0usize;
    let mut deadline = tokio::time::Instant::now();
    // A message taken from the queue while gathering that must wait for the next turn.
    let mut held: Option<Option<FlushMsg>> = None;
    loop {
        let event = match held.take() {
            Some(m) => Event::Message(m),
            None => tokio::select! {
                m = rx.recv() => Event::Message(m),
                r = committed(&mut f.in_flight) => Event::Committed(r),
                _ = tokio::time::sleep_until(deadline), if !group.is_empty() => Event::Deadline,
            },
        };
        match event {
            Event::Committed(result) => {
                if let Some(done) = f.in_flight.take() {
                    f.publish(done, result);
                }
            }
            Event::Message(Some(FlushMsg::Append(req))) => {
                if group.is_empty() {
                    deadline = tokio::time::Instant::now() + interval;
                }
                pending_bytes += req.data.len();
                group.push(req);
                // With no gathering time, flush now (a timer would round up to the next millisecond).
                if pending_bytes >= f.inner.opts.flush_bytes || interval.is_zero() {
                    held = take_queued(&mut rx, &mut group, &mut pending_bytes, f.inner.opts.flush_bytes);
                    pending_bytes = 0;
                    f.flush(std::mem::take(&mut group)).await;
                }
            }
            Event::Deadline => {
                held = take_queued(&mut rx, &mut group, &mut pending_bytes, f.inner.opts.flush_bytes);
                pending_bytes = 0;
                f.flush(std::mem::take(&mut group)).await;
            }
            // A control message applies once everything queued before it is committed.
            Event::Message(Some(FlushMsg::Control(control))) => {
                pending_bytes = 0;
                f.flush(std::mem::take(&mut group)).await;
                f.drain().await;
                f.apply_control(control);
            }
            Event::Message(None) => {
                f.flush(std::mem::take(&mut group)).await;
                f.drain().await;
                return;
            }
        }
    }
}

/// Adds the appends already queued to a group about to be flushed (up to `limit` bytes):
/// those that arrived while the previous flush was written join this one instead of
/// waiting for a flush of their own. Returns a message that must wait for the next turn.
fn take_queued(
    rx: &mut mpsc::Receiver<FlushMsg>,
    group: &mut Vec<AppendRequest>,
    pending_bytes: &mut usize,
    limit: usize,
) -> Option<Option<FlushMsg>> {
    while *pending_bytes < limit {
        match rx.try_recv() {
            Ok(FlushMsg::Append(req)) => {
                *pending_bytes += req.data.len();
                group.push(req);
            }
            Ok(control) => return Some(Some(control)),
            Err(mpsc::error::TryRecvError::Empty) => return None,
            Err(mpsc::error::TryRecvError::Disconnected) => return Some(None),
        }
    }
    None
}

/// The result of the commit in flight; never ready when there is none.
async fn committed(in_flight: &mut Option<InFlight>) -> anyhow::Result<Vec<bool>> {
    match in_flight {
        Some(f) => joined(&mut f.commit).await,
        None => std::future::pending().await,
    }
}

async fn joined(commit: &mut JoinHandle<anyhow::Result<Vec<bool>>>) -> anyhow::Result<Vec<bool>> {
    commit
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("flush commit task failed: {e}")))
}

impl Flusher {
    fn set_producers(&mut self, states: Vec<ProducerStateRow>) {
        for s in states {
            self.producers.insert(
                (s.topic_id, s.partition, s.producer_id),
                ProducerEntry {
                    epoch: s.epoch,
                    recent: s.recent.into(),
                },
            );
        }
    }

    fn apply_control(&mut self, msg: Control) {
        match msg {
            Control::Producers(key, states) => {
                self.producers.retain(|k, _| (k.0, k.1) != key);
                self.set_producers(states);
            }
            Control::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }

    /// Waits for the commit in flight, if any, and publishes it. False if it failed.
    async fn drain(&mut self) -> bool {
        let Some(mut f) = self.in_flight.take() else {
            return true;
        };
        let result = joined(&mut f.commit).await;
        let ok = result.is_ok();
        self.publish(f, result);
        ok
    }

    /// Assigns offsets to a group, writes its object while the previous flush
    /// commits, then starts its own commit.
    async fn flush(&mut self, group: Vec<AppendRequest>) {
        if group.is_empty() {
            return;
        }
        let mut p = self.prepare(group);
        if p.footer.is_empty() {
            // Nothing to write (all refused or duplicates, which may point into
            // the flush in flight): answer once that is published.
            let result = if self.drain().await {
                Ok(Vec::new())
            } else {
                Err(anyhow::anyhow!("the previous flush failed"))
            };
            self.finish(p, Bytes::new(), result);
            return;
        }
        object::finish(&mut p.body, &p.footer);
        let object = std::mem::take(&mut p.body).freeze();
        let key = format!(
            "data/{:013}-{}-{}.sobj",
            sluice_meta::now_ms(),
            self.inner.opts.node_id,
            Uuid::new_v4().simple()
        );
        let put_started = Instant::now();
        let put = self.inner.store.put(&key, object.clone()).await;
        METRICS
            .flush_stage_seconds
            .with_label_values(&["put"])
            .observe(put_started.elapsed().as_secs_f64());
        // This flush's offsets follow the previous flush's: it commits only after that one did.
        let previous_ok = self.drain().await;
        if let Err(e) = put {
            self.finish(p, object, Err(e));
            return;
        }
        if !previous_ok {
            self.finish(p, object, Err(anyhow::anyhow!("the previous flush failed")));
            return;
        }
        let (keys, commit) = commit_for(&key, object.len(), &p);
        let inner = self.inner.clone();
        let commit = tokio::spawn(async move {
            let started = Instant::now();
            let applied = inner.meta.commit_flush(&commit).await;
            METRICS
                .flush_stage_seconds
                .with_label_values(&["commit"])
                .observe(started.elapsed().as_secs_f64());
            applied
        });
        self.in_flight = Some(InFlight {
            prepared: p,
            object,
            keys,
            commit,
        });
    }

    /// Offsets, sequence checks and the object body for a group, on top of the
    /// state the flush in flight will leave.
    fn prepare(&self, group: Vec<AppendRequest>) -> Prepared {
        let ahead = self.in_flight.as_ref().map(|f| &f.prepared);
        let mut p = Prepared {
            started: Instant::now(),
            outcomes: Vec::with_capacity(group.len()),
            next: HashMap::new(),
            touched: HashMap::new(),
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
                let next = ahead.and_then(|a| a.next.get(&key)).map_or(s.high_watermark, |n| n.1);
                (req.partition.clone(), next, s.leader_epoch)
            });
            let (next_offset, epoch) = (&mut slot.1, slot.2);

            // Idempotence: requests with a producer id carry exactly one batch.
            let mut seq = None;
            if let [b] = req.batches.as_slice() {
                if b.producer_id >= 0 {
                    let pkey = (key.0, key.1, b.producer_id);
                    let current = p
                        .touched
                        .get(&pkey)
                        .or_else(|| ahead.and_then(|a| a.touched.get(&pkey)))
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
                            ))
                        }
                    }
                }
            }

            let first_offset = *next_offset;
            for b in &req.batches {
                let position = p.body.len();
                p.body.extend_from_slice(&req.data[b.position..b.position + b.length]);
                batch::patch_header(&mut p.body[position..], *next_offset, epoch);
                let last = *next_offset + b.last_offset_delta as i64;
                p.footer.push(FooterEntry {
                    topic_id: key.0,
                    topic: req.topic.name.clone(),
                    partition: key.1,
                    base_offset: *next_offset,
                    last_offset: last,
                    max_timestamp: b.max_timestamp,
                    position: position as u64,
                    length: b.length as u32,
                });
                p.records += b.record_count as u64;
                *next_offset = last + 1;
            }
            if let Some((pkey, current, pepoch, first_seq, last_seq)) = seq {
                let mut entry = current.unwrap_or_default();
                let entry_seq = SeqEntry {
                    first_seq,
                    last_seq,
                    base_offset: first_offset,
                    last_offset: *next_offset - 1,
                };
                producer::record(&mut entry, pepoch, entry_seq);
                p.touched.insert(pkey, entry);
            }
            p.outcomes.push(Outcome::Written {
                key,
                base_offset: first_offset,
            });
        }
        p.group = group;
        p
    }

    /// Publishes a finished commit.
    fn publish(&mut self, f: InFlight, result: anyhow::Result<Vec<bool>>) {
        let fenced = result.map(|applied| {
            f.keys
                .iter()
                .zip(applied)
                .filter(|(_, ok)| !ok)
                .map(|(k, _)| *k)
                .collect()
        });
        self.finish(f.prepared, f.object, fenced);
    }

    /// Applies a flush's outcome (the partitions whose commit was fenced, or why
    /// the flush failed): on success the new state, tail batches and producer
    /// state (except for fenced partitions), then the replies.
    fn finish(&mut self, p: Prepared, object: Bytes, outcome: anyhow::Result<Vec<PartKey>>) {
        let fenced = match outcome {
            Ok(fenced) => fenced,
            Err(e) => {
                tracing::error!(error = %e, "flush failed; refusing its appends");
                let err = LogError::Storage(format!("{e:#}"));
                for req in p.group {
                    METRICS.append_seconds.observe(req.queued.elapsed().as_secs_f64());
                    let _ = req.reply.send(Err(err.clone()));
                }
                return;
            }
        };
        let tail = &mut self.tail;
        for (key, (part, next_offset, _)) in &p.next {
            if fenced.contains(key) {
                continue;
            }
            let mut s = part.state.lock().unwrap();
            for e in p.footer.iter().filter(|e| (e.topic_id, e.partition) == *key) {
                let data = object.slice(e.position as usize..(e.position + e.length as u64) as usize);
                tail.order.push_back((part.clone(), e.base_offset, data.len()));
                tail.bytes += data.len();
                s.tail.push_back(TailBatch {
                    base_offset: e.base_offset,
                    last_offset: e.last_offset,
                    data,
                });
            }
            if *next_offset > s.high_watermark {
                s.high_watermark = *next_offset;
            }
        }
        for (pkey, entry) in p.touched {
            if !fenced.contains(&(pkey.0, pkey.1)) {
                self.producers.insert(pkey, entry);
            }
        }
        evict(tail, self.inner.opts.tail_cache_bytes);
        self.inner.committed.send_modify(|n| *n += 1);

        let batch_count = p.footer.len();
        for (req, outcome) in p.group.into_iter().zip(p.outcomes) {
            let reply = match outcome {
                Outcome::Refused(e) => Err(e),
                Outcome::Written { key, .. } | Outcome::Duplicate { key, .. } if fenced.contains(&key) => {
                    Err(if self.inner.topic_alive(key.0) {
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
            METRICS.append_seconds.observe(req.queued.elapsed().as_secs_f64());
            let _ = req.reply.send(reply);
        }
        if batch_count > 0 {
            METRICS.flushes.inc();
            METRICS.flush_bytes.inc_by(object.len() as u64);
            METRICS.batches_appended.inc_by(batch_count as u64);
            METRICS.records_appended.inc_by(p.records);
            METRICS.flush_seconds.observe(p.started.elapsed().as_secs_f64());
        }
    }
}

/// The metadata commit of a written object: the partitions in watermark order, and the commit.
fn commit_for(key: &str, size: usize, p: &Prepared) -> (Vec<PartKey>, FlushCommit) {
    let mut watermarks = Vec::with_capacity(p.next.len());
    let mut keys = Vec::with_capacity(p.next.len());
    for (k, (_, next_offset, epoch)) in &p.next {
        keys.push(*k);
        watermarks.push(WatermarkUpdate {
            topic_id: k.0,
            partition: k.1,
            high_watermark: *next_offset,
            leader_epoch: *epoch,
        });
    }
    let commit = FlushCommit {
        object_key: key.to_string(),
        object_size: size as i64,
        batches: p
            .footer
            .iter()
            .map(|e| BatchRow {
                topic_id: e.topic_id,
                partition: e.partition,
                base_offset: e.base_offset,
                last_offset: e.last_offset,
                max_timestamp: e.max_timestamp,
                object_key: key.to_string(),
                position: e.position as i64,
                length: e.length as i32,
            })
            .collect(),
        watermarks,
        producers: p
            .touched
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
    (keys, commit)
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
