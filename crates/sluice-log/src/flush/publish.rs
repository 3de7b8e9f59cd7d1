//! A flush's outcome applied: partition state, the tail cache, producer state, replies.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::{not_applied, Committing, Flusher, Outcome, Prepared};
use crate::commit::PartKey;
use crate::{Appended, LogError, Partition, TailBatch, METRICS};

/// Global FIFO of cached tail batches, to bound the cache across partitions.
pub(super) struct TailBudget {
    pub(super) order: VecDeque<(Arc<Partition>, i64, usize)>,
    pub(super) bytes: usize,
}

impl Flusher {
    /// Publishes a finished commit. If it failed, so does every flush queued after it.
    pub(super) fn publish(&mut self, c: Committing, result: anyhow::Result<Vec<bool>>) {
        match result {
            Ok(applied) => {
                let fenced = not_applied(&c.keys, applied);
                for (p, object) in c.flushes {
                    self.finish(p, object, Ok(fenced.clone()));
                }
            }
            Err(e) => {
                let error = format!("{e:#}");
                for (p, object) in c.flushes {
                    self.finish(p, object, Err(anyhow::anyhow!("{error}")));
                }
                self.fail_queued();
            }
        }
    }

    /// Applies a flush's outcome (the partitions whose commit was fenced, or why
    /// the flush failed): on success the new state, tail batches and producer
    /// state (except for fenced partitions), then the replies.
    pub(super) fn finish(&mut self, p: Prepared, object: Bytes, outcome: anyhow::Result<Vec<PartKey>>) {
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
            // Under the same lock as the watermark, so that a read_committed reader never
            // sees a transaction's batches before its open transaction bounds the LSO.
            for (pkey, entry) in p.touched.iter().filter(|(k, _)| (k.0, k.1) == *key) {
                match entry.txn_first_offset {
                    Some(first) => s.open_txns.insert(pkey.2, first),
                    None => s.open_txns.remove(&pkey.2),
                };
            }
            s.aborted
                .extend(p.aborted.iter().filter(|a| (a.topic_id, a.partition) == *key).copied());
            if *next_offset > s.high_watermark {
                s.high_watermark = *next_offset;
            }
        }
        for (pkey, entry) in p.touched {
            if !fenced.contains(&(pkey.0, pkey.1)) {
                self.producers.insert(pkey, entry);
            }
        }
        // Journaled batches not yet uploaded are the newest in the cache; reads can find
        // them nowhere else, so the cache keeps at least as many bytes as are staged.
        let keep = self.inner.opts.tail_cache_bytes.max(self.staged_bytes());
        evict(&mut self.tail, keep);
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
                Outcome::Written {
                    base_offset, append_ms, ..
                } => Ok(Appended {
                    base_offset,
                    log_start_offset: req.partition.offsets().log_start,
                    log_append_time_ms: append_ms,
                }),
                Outcome::Duplicate { base_offset, .. } => Ok(Appended {
                    base_offset,
                    log_start_offset: req.partition.offsets().log_start,
                    log_append_time_ms: -1,
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

pub(super) fn evict(tail: &mut TailBudget, budget: usize) {
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
