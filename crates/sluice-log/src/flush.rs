//! The flusher: the single writer of every partition on this broker.
//!
//! It gathers appends for `flush_interval` (or until `flush_bytes`), assigns
//! offsets, checks idempotent sequences, writes one data object, commits its
//! index rows, watermarks and producer state in one metadata transaction,
//! and only then updates the in-memory state, the tail cache and the waiting
//! producers. A failed write or commit changes nothing, so offsets are never
//! handed out twice.
//!
//! Flushes are pipelined: up to `WRITES_IN_FLIGHT` objects are written at
//! once, each flush assigning offsets on top of the flushes before it, while
//! one metadata commit runs. A commit covers every flush whose object is
//! written, in offset order, so under load commits grow instead of queueing.
//! A flush fails if any flush before it failed, so the store sees the same
//! sequence of commits as without the pipeline.
//!
//! With a journal (a single node), a flush is written to the journal instead,
//! one at a time, and published as soon as it is synced there. Journaled
//! flushes are staged and uploaded as one object with one commit when
//! `UPLOAD_BYTES` are staged or the oldest has waited `upload_interval`.
//! A flush of `DIRECT_BYTES` or more is written to the store instead (writing it
//! twice would halve a busy node's throughput), and the journal records a
//! reference to its object: it is published once that record is synced, and
//! indexed with the next upload, like the flushes journaled around it. Journal
//! records follow offset order: each is written once the one before it is, and
//! not at all if that one failed.
//!
//! Here: the event loop, object writes and commits. `prepare` assigns offsets and
//! checks sequences; `publish` applies an outcome; `upload` stages journaled flushes.

mod prepare;
mod publish;
mod upload;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use sluice_meta::{AbortedTxnRow, BatchRow, FlushCommit, ProducerStateRow};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::commit::{flush_commit, PartKey, ProducerKey};
use crate::journal::{self, Journal};
use crate::object::{self, FooterEntry};
use crate::producer::ProducerEntry;
use crate::{AppendRequest, Control, FlushMsg, Inner, LogError, Partition, METRICS};
use publish::TailBudget;
use upload::{journal_io, uploaded, Staged, UPLOAD_BYTES};

/// What happens to one append once the flush commits.
enum Outcome {
    /// `append_ms`: the time stamped on the batches with LogAppendTime, else -1.
    Written {
        key: PartKey,
        base_offset: i64,
        append_ms: i64,
    },
    Duplicate {
        key: PartKey,
        base_offset: i64,
    },
    Refused(LogError),
}

/// Per partition touched: the partition, its next offset after a flush, its leader epoch.
type NextOffsets = HashMap<PartKey, (Arc<Partition>, i64, i32)>;

/// A group of appends with offsets assigned and its object built.
struct Prepared {
    started: Instant,
    group: Vec<AppendRequest>,
    outcomes: Vec<Outcome>,
    next: NextOffsets,
    /// Producer state after this flush, for the producers it touched.
    touched: HashMap<ProducerKey, ProducerEntry>,
    /// Transactions this flush's abort markers ended.
    aborted: Vec<AbortedTxnRow>,
    footer: Vec<FooterEntry>,
    body: BytesMut,
    records: u64,
}

/// How many flushes may have their objects being written at once. Object writes are
/// independent (one file or PUT each); only commits must follow offset order.
const WRITES_IN_FLIGHT: usize = 4;

/// A flush starts beside a write already running only with this much gathered: under
/// light load, appends that arrive during a write join the next flush instead, so that
/// there are fewer, larger objects (each costs a file and its syncs, or a PUT).
const PARALLEL_WRITE_BYTES: usize = 1 << 20;

/// With a journal, a flush at least this large is written to the store, and the journal
/// records only a reference to its object.
pub(crate) const DIRECT_BYTES: usize = 1 << 20;

/// A flush whose object is being written, or is written and waits for its commit.
struct Writing {
    prepared: Prepared,
    object: Bytes,
    key: String,
    /// Written to the store as `key` (with a journal: the journal holds a reference to it).
    stored: bool,
    put: Put,
}

/// An object write or a journal append (whose result is the record's sequence number).
enum Put {
    Running(JoinHandle<anyhow::Result<u64>>),
    Done(anyhow::Result<u64>),
}

impl Put {
    /// Waits for the write and keeps its result.
    async fn wait(&mut self) {
        if let Put::Running(handle) = self {
            let result = joined(handle).await;
            *self = Put::Done(result);
        }
    }

    fn is_done(&self) -> bool {
        match self {
            Put::Running(handle) => handle.is_finished(),
            Put::Done(_) => true,
        }
    }
}

/// Written flushes whose metadata is being committed, in one transaction.
struct Committing {
    /// Each flush with its object, in offset order.
    flushes: Vec<(Prepared, Bytes)>,
    /// The partitions in the order of the commit's watermark updates.
    keys: Vec<PartKey>,
    commit: CommitTask,
}

/// A metadata commit running in its own task: per watermark, whether it applied (not fenced).
type CommitTask = JoinHandle<anyhow::Result<Vec<bool>>>;

/// What woke the flusher.
enum Event {
    Message(Option<FlushMsg>),
    Committed(anyhow::Result<Vec<bool>>),
    Written,
    Deadline,
    Uploaded(anyhow::Result<Vec<PartKey>>),
    UploadDue,
}

struct Flusher {
    inner: Arc<Inner>,
    producers: HashMap<ProducerKey, ProducerEntry>,
    tail: TailBudget,
    /// Flushes not yet committing, in offset order (at most `WRITES_IN_FLIGHT`).
    writing: VecDeque<Writing>,
    committing: Option<Committing>,
    staged: Option<Staged>,
}

pub(crate) async fn run(
    inner: Arc<Inner>,
    mut rx: mpsc::Receiver<FlushMsg>,
    states: Vec<ProducerStateRow>,
    journal: Option<Journal>,
) {
    let mut f = Flusher {
        inner,
        producers: HashMap::new(),
        tail: TailBudget {
            order: VecDeque::new(),
            bytes: 0,
        },
        writing: VecDeque::new(),
        committing: None,
        staged: journal.map(|j| Staged {
            journal: Arc::new(std::sync::Mutex::new(j)),
            flushes: VecDeque::new(),
            bytes: 0,
            due: tokio::time::Instant::now(),
            uploading: None,
            last_append: None,
        }),
    };
    f.set_producers(states);
    let interval = f.inner.opts.flush_interval;
    let mut group: Vec<AppendRequest> = Vec::new();
    let mut pending_bytes = 0usize;
    let mut deadline = tokio::time::Instant::now();
    // A message taken from the queue while gathering that must wait for the next turn.
    let mut held: Option<Option<FlushMsg>> = None;
    loop {
        // When staged journaled flushes are due for upload, unless one is running.
        let upload_due = f
            .staged
            .as_ref()
            .filter(|s| s.uploading.is_none() && !s.flushes.is_empty())
            .map(|s| s.due);
        let event = match held.take() {
            Some(m) => Event::Message(m),
            None => tokio::select! {
                // While every write slot is busy, or too much waits for its upload, appends
                // wait in the queue and form a larger flush.
                m = rx.recv(), if f.writing.len() < WRITES_IN_FLIGHT && !f.staged_full() => Event::Message(m),
                r = committed(&mut f.committing) => Event::Committed(r),
                () = written(&mut f.writing), if f.writes_running() > 0 => Event::Written,
                _ = tokio::time::sleep_until(deadline), if !group.is_empty() => Event::Deadline,
                r = uploaded(&mut f.staged) => Event::Uploaded(r),
                _ = tokio::time::sleep_until(upload_due.unwrap_or(deadline)), if upload_due.is_some() => Event::UploadDue,
            },
        };
        // Whether to flush the gathered group, with every append already queued, now.
        let mut flush_now = false;
        match event {
            Event::Committed(result) => {
                if let Some(done) = f.committing.take() {
                    f.publish(done, result);
                }
                f.start_commit().await;
            }
            Event::Written => {
                f.start_commit().await;
                flush_now = !group.is_empty() && interval.is_zero() && f.may_write(pending_bytes);
            }
            Event::Message(Some(FlushMsg::Append(req))) => {
                if group.is_empty() {
                    deadline = tokio::time::Instant::now() + interval;
                }
                pending_bytes += req.data.len();
                group.push(req);
                // With no gathering time, flush as soon as a write may start (a timer would
                // round up to the next millisecond).
                flush_now =
                    pending_bytes >= f.inner.opts.flush_bytes || interval.is_zero() && f.may_write(pending_bytes);
            }
            Event::Deadline => flush_now = true,
            Event::Uploaded(result) => f.uploaded(result),
            Event::UploadDue => f.start_upload(),
            // A control message applies once everything queued before it is committed.
            Event::Message(Some(FlushMsg::Control(control))) => {
                pending_bytes = 0;
                f.flush(std::mem::take(&mut group)).await;
                f.drain(true).await;
                f.apply_control(control);
            }
            Event::Message(None) => {
                f.flush(std::mem::take(&mut group)).await;
                f.drain(false).await;
                return;
            }
        }
        if flush_now {
            held = take_queued(&mut rx, &mut group, &mut pending_bytes, f.inner.opts.flush_bytes);
            pending_bytes = 0;
            f.flush(std::mem::take(&mut group)).await;
        }
        // (With an upload running, its flushes count too, but none can start then.)
        if f.staged_bytes() >= UPLOAD_BYTES {
            f.start_upload();
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
async fn committed(committing: &mut Option<Committing>) -> anyhow::Result<Vec<bool>> {
    match committing {
        Some(c) => joined(&mut c.commit).await,
        None => std::future::pending().await,
    }
}

/// Ready once the oldest object still being written is written; never ready when there is none.
async fn written(writing: &mut VecDeque<Writing>) {
    match writing.iter_mut().find(|w| matches!(w.put, Put::Running(_))) {
        Some(w) => w.put.wait().await,
        None => std::future::pending().await,
    }
}

async fn joined<T>(task: &mut JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    task.await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("flush task failed: {e}")))
}

impl Flusher {
    fn set_producers(&mut self, states: Vec<ProducerStateRow>) {
        for s in states {
            if s.txn_first_offset >= 0 {
                if let Some(part) = self.inner.partition(s.topic_id, s.partition) {
                    part.state
                        .lock()
                        .unwrap()
                        .open_txns
                        .insert(s.producer_id, s.txn_first_offset);
                }
            }
            self.producers
                .insert((s.topic_id, s.partition, s.producer_id), ProducerEntry::from_row(s));
        }
    }

    fn apply_control(&mut self, msg: Control) {
        match msg {
            Control::Producers(key, states) => {
                self.producers.retain(|k, _| (k.0, k.1) != key);
                if let Some(part) = self.inner.partition(key.0, key.1) {
                    part.state.lock().unwrap().open_txns.clear();
                }
                self.set_producers(states);
            }
            Control::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }

    fn writes_running(&self) -> usize {
        self.writing.iter().filter(|w| matches!(w.put, Put::Running(_))).count()
    }

    /// Whether a flush of `pending_bytes` may start writing now.
    fn may_write(&self, pending_bytes: usize) -> bool {
        let running = self.writes_running();
        // Journal writes queue behind each other (they go in offset order), so a large
        // flush starting beside a running one saves only the hand-over between them.
        running == 0 || pending_bytes >= PARALLEL_WRITE_BYTES && self.writing.len() < WRITES_IN_FLIGHT
    }

    /// Waits until every flush is committed (or failed) and published, and with a
    /// journal, uploaded. `retry`: keep retrying a failing upload (a barrier must not
    /// return before the store has everything); otherwise give up after one failure
    /// (at shutdown: the journal keeps the data for the next start).
    async fn drain(&mut self, retry: bool) {
        loop {
            if let Some(mut c) = self.committing.take() {
                let result = joined(&mut c.commit).await;
                self.publish(c, result);
            } else if let Some(w) = self.writing.front_mut() {
                w.put.wait().await;
            } else {
                break;
            }
            self.start_commit().await;
        }
        while let Some(s) = &self.staged {
            if s.uploading.is_some() {
                if !self.wait_upload(retry).await {
                    return;
                }
            } else if s.flushes.is_empty() {
                return;
            }
            self.start_upload();
        }
    }

    /// Assigns offsets to a group on top of every flush not yet published, and
    /// starts writing its object.
    async fn flush(&mut self, group: Vec<AppendRequest>) {
        if group.is_empty() {
            return;
        }
        let mut p = self.prepare(group);
        if p.footer.is_empty() {
            // Nothing to write (all refused or duplicates, which may point into a flush
            // not yet committed): it is answered in its turn, after the flushes before it.
            self.writing.push_back(Writing {
                prepared: p,
                object: Bytes::new(),
                key: String::new(),
                stored: false,
                put: Put::Done(Ok(0)),
            });
            self.start_commit().await;
            return;
        }
        let failure = self.inner.write_failure.lock().unwrap().clone();
        if let Some(failure) = failure {
            let error = anyhow::anyhow!("a flush failed ({failure}); restart the broker to recover its journal");
            return self.finish(p, Bytes::new(), Err(error));
        }
        object::finish(&mut p.body, &p.footer);
        let object = std::mem::take(&mut p.body).freeze();
        let key = object::flush_key(self.inner.opts.node_id);
        let (inner, put_key, data) = (self.inner.clone(), key.clone(), object.clone());
        // Journal records follow offset order: each write waits for the one before, and
        // is not made if that one failed (its sender is then dropped unused).
        let journal = self.staged.as_mut().map(|s| {
            let (done, next) = tokio::sync::oneshot::channel::<()>();
            (s.journal.clone(), s.last_append.replace(next), done)
        });
        let stored = journal.is_none() || object.len() >= DIRECT_BYTES;
        if stored && journal.is_some() {
            self.inner.unindexed.lock().unwrap().insert(key.clone());
        }
        let put = tokio::spawn(async move {
            let started = Instant::now();
            if stored {
                let _writing = inner.foreground.start();
                inner.store.put(&put_key, data.clone()).await?;
                let put_time = started.elapsed().as_secs_f64();
                METRICS
                    .flush_stage_seconds
                    .with_label_values(&["put"])
                    .observe(put_time);
            }
            let Some((journal, previous, done)) = journal else {
                return Ok(0);
            };
            if let Some(previous) = previous {
                previous.await.map_err(|_| anyhow::anyhow!("an earlier flush failed"))?;
            }
            let record = if stored {
                journal::reference(&put_key, &data)?
            } else {
                data
            };
            let started = Instant::now();
            let writing = inner.foreground.start();
            let seq = journal_io(journal, move |j| {
                // The disk's part alone: the "journal" stage adds the hand-over to a
                // blocking thread and back, which CPU contention stretches.
                let synced = Instant::now();
                let seq = j.append(&[record]);
                METRICS
                    .flush_stage_seconds
                    .with_label_values(&["journal_sync"])
                    .observe(synced.elapsed().as_secs_f64());
                seq
            })
            .await?;
            drop(writing);
            let _ = done.send(());
            let journal_time = started.elapsed().as_secs_f64();
            METRICS
                .flush_stage_seconds
                .with_label_values(&["journal"])
                .observe(journal_time);
            Ok(seq)
        });
        self.writing.push_back(Writing {
            prepared: p,
            object,
            key,
            stored,
            put: Put::Running(put),
        });
    }

    /// Unless a commit is running, commits every written flush at the front of the
    /// queue in one transaction. A flush whose write failed fails, and so does every
    /// flush after it: their offsets follow its offsets.
    async fn start_commit(&mut self) {
        if self.staged.is_some() {
            return self.publish_journaled().await;
        }
        self.commit_front().await;
    }

    /// Unless a commit is running, commits the written flushes at the front of the queue
    /// that went to the store (not to the journal), in one transaction.
    async fn commit_front(&mut self) {
        if self.committing.is_some() {
            return;
        }
        let mut flushes: Vec<Writing> = Vec::new();
        let mut epochs: HashMap<PartKey, i32> = HashMap::new();
        while let Some(w) = self.writing.front_mut() {
            if !w.put.is_done() {
                break;
            }
            // One watermark per partition in a commit: flushes under another leader epoch wait.
            let same_epochs = w
                .prepared
                .next
                .iter()
                .all(|(k, (_, _, epoch))| epochs.get(k).is_none_or(|e| e == epoch));
            if !same_epochs {
                break;
            }
            w.put.wait().await;
            let mut w = self.writing.pop_front().expect("front exists");
            if let Put::Done(Err(e)) = std::mem::replace(&mut w.put, Put::Done(Ok(0))) {
                self.fail_from(w, e);
                break;
            }
            epochs.extend(w.prepared.next.iter().map(|(k, (_, _, epoch))| (*k, *epoch)));
            flushes.push(w);
        }
        if flushes.is_empty() {
            return;
        }
        if flushes.iter().all(|w| w.key.is_empty()) {
            // Nothing to record: the answers only had to wait for the flushes before them.
            for w in flushes {
                self.finish(w.prepared, w.object, Ok(Vec::new()));
            }
            return;
        }
        // Flushes with nothing written (all refused or duplicates) record nothing.
        let written = || flushes.iter().filter(|w| !w.key.is_empty());
        let (keys, commit) = commit_for(
            written().map(|w| (w.key.clone(), w.object.len() as i64)).collect(),
            written()
                .flat_map(|w| w.prepared.footer.iter().map(|e| e.index_row(&w.key)))
                .collect(),
            written().map(|w| (&w.prepared.next, &w.prepared.touched, &w.prepared.aborted)),
        );
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
        self.committing = Some(Committing {
            flushes: flushes.into_iter().map(|w| (w.prepared, w.object)).collect(),
            keys,
            commit,
        });
    }

    /// Fails a flush and every flush queued after it, which build on its offsets.
    /// With a journal, every later flush fails too, until a restart (`Inner::write_failure`):
    /// failed flushes may be journaled, and records with offsets handed out again after
    /// them would not follow them. Recovery sorts it out on the restart.
    fn fail_from(&mut self, first: Writing, error: anyhow::Error) {
        if self.staged.is_some() {
            *self.inner.write_failure.lock().unwrap() = Some(format!("{error:#}"));
        }
        self.finish(first.prepared, first.object, Err(error));
        self.fail_queued();
    }

    /// Fails every flush not yet committing: an earlier flush failed, and their offsets
    /// follow its offsets. Their objects, if written, become orphans for the collector.
    fn fail_queued(&mut self) {
        for w in std::mem::take(&mut self.writing) {
            self.finish(w.prepared, w.object, Err(anyhow::anyhow!("an earlier flush failed")));
        }
    }
}

/// The metadata commit of written flushes: their objects, their index rows, and each
/// flush's offsets and producers in offset order. Returns the partitions in watermark
/// order, and the commit (each partition's watermark after the last flush).
type FlushParts<'a> = (
    &'a NextOffsets,
    &'a HashMap<ProducerKey, ProducerEntry>,
    &'a Vec<AbortedTxnRow>,
);

fn commit_for<'a>(
    objects: Vec<(String, i64)>,
    batches: Vec<BatchRow>,
    flushes: impl Iterator<Item = FlushParts<'a>>,
) -> (Vec<PartKey>, FlushCommit) {
    let mut watermarks: HashMap<PartKey, (i64, i32)> = HashMap::new();
    let mut producers: HashMap<ProducerKey, &ProducerEntry> = HashMap::new();
    let mut aborted = Vec::new();
    for (next, touched, ended) in flushes {
        aborted.extend(ended.iter().copied());
        watermarks.extend(
            next.iter()
                .map(|(k, (_, next_offset, epoch))| (*k, (*next_offset, *epoch))),
        );
        producers.extend(touched.iter().map(|(k, e)| (*k, e)));
    }
    let watermarks: Vec<(PartKey, (i64, i32))> = watermarks.into_iter().collect();
    let keys = watermarks.iter().map(|(k, _)| *k).collect();
    (keys, flush_commit(objects, batches, watermarks, producers, aborted))
}

/// The partitions of a commit (in its watermark order) whose watermark did not move:
/// fenced by another leader, or the topic deleted meanwhile.
fn not_applied(keys: &[PartKey], applied: Vec<bool>) -> Vec<PartKey> {
    keys.iter()
        .zip(applied)
        .filter(|(_, ok)| !ok)
        .map(|(k, _)| *k)
        .collect()
}
