//! Journal mode: published flushes staged for upload, and their upload as one object
//! with one commit.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sluice_meta::AbortedTxnRow;

use super::{commit_for, joined, not_applied, Flusher, NextOffsets, Put};
use crate::commit::{PartKey, ProducerKey};
use crate::journal::Journal;
use crate::object::{self, FooterEntry};
use crate::producer::ProducerEntry;
use crate::METRICS;

/// Upload journaled flushes once this much is staged.
pub(super) const UPLOAD_BYTES: usize = 8 << 20;

/// Wait before retrying a failed upload.
pub(super) const UPLOAD_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// A journaled, published flush waiting for its upload.
pub(super) struct StagedFlush {
    pub(super) seq: u64,
    pub(super) next: NextOffsets,
    pub(super) touched: HashMap<ProducerKey, ProducerEntry>,
    pub(super) aborted: Vec<AbortedTxnRow>,
    pub(super) footer: Vec<FooterEntry>,
    /// The flush's object, where `footer` places its batches.
    pub(super) object: Bytes,
    /// The object's key if it is in the store already (a large flush); else the journal
    /// holds it and the upload writes it.
    pub(super) stored: Option<String>,
}

/// An upload: the partitions whose index rows did not go in (fenced, or deleted).
pub(super) type UploadTask = tokio::task::JoinHandle<anyhow::Result<Vec<PartKey>>>;

/// Journaled flushes not yet in the object store, and the upload in flight.
pub(super) struct Staged {
    pub(super) journal: Arc<std::sync::Mutex<Journal>>,
    pub(super) flushes: VecDeque<StagedFlush>,
    /// Bytes of the staged flushes and of those being uploaded.
    pub(super) bytes: usize,
    /// When the oldest staged flush must be uploaded (or the failed upload retried).
    pub(super) due: tokio::time::Instant,
    /// The flushes being uploaded (in offset order, before `flushes`) and the upload.
    pub(super) uploading: Option<(Vec<StagedFlush>, UploadTask)>,
    /// Resolves when the last journal write started has finished.
    pub(super) last_append: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// Runs a journal operation on a blocking thread (it writes and syncs files).
pub(super) async fn journal_io<T: Send + 'static>(
    journal: Arc<std::sync::Mutex<Journal>>,
    op: impl FnOnce(&mut Journal) -> std::io::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(move || op(&mut journal.lock().unwrap())).await??)
}

/// The result of the upload in flight; never ready when there is none.
pub(super) async fn uploaded(staged: &mut Option<Staged>) -> anyhow::Result<Vec<PartKey>> {
    match staged.as_mut().and_then(|s| s.uploading.as_mut()) {
        Some((_, upload)) => joined(upload).await,
        None => std::future::pending().await,
    }
}

impl Flusher {
    /// Bytes of journaled flushes not yet uploaded (staged or uploading).
    pub(super) fn staged_bytes(&self) -> usize {
        self.staged.as_ref().map_or(0, |s| s.bytes)
    }

    /// Whether journaled flushes waiting for their upload hold as much memory (in the
    /// tail cache, which must not evict them) as they may.
    pub(super) fn staged_full(&self) -> bool {
        self.staged.is_some() && self.staged_bytes() >= (self.inner.opts.tail_cache_bytes / 2).max(UPLOAD_BYTES)
    }

    /// Waits for the upload in flight and applies its result. Returns false if it failed
    /// and `retry` is not set; with `retry`, a failure waits `UPLOAD_RETRY` first.
    pub(super) async fn wait_upload(&mut self, retry: bool) -> bool {
        let Some((_, upload)) = self.staged.as_mut().and_then(|s| s.uploading.as_mut()) else {
            return true;
        };
        let result = joined(upload).await;
        let failed = result.is_err();
        self.uploaded(result);
        if failed && retry {
            tokio::time::sleep(UPLOAD_RETRY).await;
        }
        !failed || retry
    }

    /// Starts uploading every staged flush as one object, unless an upload is running.
    pub(super) fn start_upload(&mut self) {
        let Some(s) = &mut self.staged else { return };
        if s.uploading.is_some() || s.flushes.is_empty() {
            return;
        }
        let flushes: Vec<StagedFlush> = s.flushes.drain(..).collect();
        // The journaled flushes' batches go into one new object; flushes already in the
        // store are only indexed where they are.
        let key = object::flush_key(self.inner.opts.node_id);
        let (parts, entries) = object::assemble(
            flushes
                .iter()
                .filter(|f| f.stored.is_none())
                .flat_map(|f| f.footer.iter().map(move |e| (e, &f.object)))
                .collect(),
        );
        let (mut objects, mut rows) = (Vec::new(), Vec::new());
        for f in &flushes {
            if let Some(stored) = &f.stored {
                objects.push((stored.clone(), f.object.len() as i64));
                rows.extend(f.footer.iter().map(|e| e.index_row(stored)));
            }
        }
        let parts = (!entries.is_empty()).then(|| {
            objects.push((key.clone(), parts.iter().map(|p| p.len() as i64).sum()));
            rows.extend(entries.iter().map(|e| e.index_row(&key)));
            parts
        });
        let (keys, commit) = commit_for(objects, rows, flushes.iter().map(|f| (&f.next, &f.touched, &f.aborted)));
        let last_seq = flushes.last().expect("flushes to upload").seq;
        let (inner, journal) = (self.inner.clone(), s.journal.clone());
        let upload = tokio::spawn(async move {
            let started = Instant::now();
            if let Some(parts) = parts {
                let foreground = inner.foreground.clone();
                inner.store.put_parts_behind(&key, parts, foreground).await?;
            }
            let applied = inner.meta.commit_flush(&commit).await?;
            // The upload is done whatever happens to the journal's old segments: uploading
            // the same flushes again would only fail on their index rows.
            if let Err(e) = journal_io(journal, move |j| j.release(last_seq)).await {
                tracing::warn!(error = %format!("{e:#}"), "releasing uploaded journal segments failed");
            }
            METRICS
                .flush_stage_seconds
                .with_label_values(&["upload"])
                .observe(started.elapsed().as_secs_f64());
            Ok(not_applied(&keys, applied))
        });
        s.uploading = Some((flushes, upload));
    }

    /// Applies an upload's result. Its flushes were acknowledged when journaled, so
    /// a failed upload is retried later; the journal keeps them meanwhile.
    pub(super) fn uploaded(&mut self, result: anyhow::Result<Vec<PartKey>>) {
        let Some(s) = &mut self.staged else { return };
        let Some((flushes, _)) = s.uploading.take() else { return };
        match result {
            Ok(not_applied) => {
                // A topic deleted since its batches were journaled has no rows to take them
                // (its object is left unreferenced, for the collector).
                let (deleted, fenced): (Vec<PartKey>, Vec<PartKey>) =
                    not_applied.into_iter().partition(|k| !self.inner.topic_alive(k.0));
                if !deleted.is_empty() {
                    tracing::debug!(partitions = deleted.len(), "uploaded journaled data of deleted topics");
                }
                if !fenced.is_empty() {
                    // Only another broker can move a leader epoch, and the journal is for a
                    // single node: the store has another leader's data for these partitions.
                    tracing::error!(
                        ?fenced,
                        "journaled data was fenced on upload: another broker leads its partitions"
                    );
                }
                let mut unindexed = self.inner.unindexed.lock().unwrap();
                for key in flushes.iter().filter_map(|f| f.stored.as_ref()) {
                    unindexed.remove(key);
                }
                s.bytes -= flushes.iter().map(|f| f.object.len()).sum::<usize>();
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "upload of journaled flushes failed; retrying");
                for f in flushes.into_iter().rev() {
                    s.flushes.push_front(f);
                }
                s.due = tokio::time::Instant::now() + UPLOAD_RETRY;
            }
        }
    }

    /// Publishes the journaled flushes at the front of the queue, in order, and stages
    /// them for upload. A flush whose write failed fails, and so does every flush after it.
    pub(super) async fn publish_journaled(&mut self) {
        while self.writing.front().is_some_and(|w| w.put.is_done()) {
            let mut w = self.writing.pop_front().expect("front exists");
            w.put.wait().await;
            let seq = match std::mem::replace(&mut w.put, Put::Done(Ok(0))) {
                Put::Done(Err(e)) => return self.fail_from(w, e),
                Put::Done(Ok(seq)) => seq,
                Put::Running(_) => unreachable!("waited for"),
            };
            if !w.key.is_empty() {
                let p = &w.prepared;
                let staged = StagedFlush {
                    seq,
                    next: p.next.clone(),
                    touched: p.touched.clone(),
                    aborted: p.aborted.clone(),
                    footer: p.footer.clone(),
                    object: w.object.clone(),
                    stored: w.stored.then(|| w.key.clone()),
                };
                let s = self.staged.as_mut().expect("journal mode");
                if s.flushes.is_empty() {
                    s.due = tokio::time::Instant::now() + self.inner.opts.upload_interval;
                }
                s.bytes += staged.object.len();
                s.flushes.push_back(staged);
            }
            self.finish(w.prepared, w.object, Ok(Vec::new()));
        }
    }
}
