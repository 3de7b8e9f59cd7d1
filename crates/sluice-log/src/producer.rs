//! Idempotent-producer state for one partition and producer id, following
//! Kafka's ProducerStateManager: epoch fencing, in-sequence checks, and the
//! last five batches kept so that a retried batch is answered with its
//! original offset instead of being written twice.

use std::collections::VecDeque;

use sluice_meta::{ProducerStateRow, SeqEntry};

use crate::LogError;

/// Batches remembered per producer and partition (Kafka's max in-flight).
pub const RECENT_BATCHES: usize = 5;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub recent: VecDeque<SeqEntry>,
    /// First offset of the producer's open transaction on this partition.
    pub txn_first_offset: Option<i64>,
}

impl ProducerEntry {
    /// A producer's state as stored.
    pub(crate) fn from_row(s: ProducerStateRow) -> Self {
        ProducerEntry {
            epoch: s.epoch,
            recent: s.recent.into(),
            txn_first_offset: (s.txn_first_offset >= 0).then_some(s.txn_first_offset),
        }
    }
}

/// What a transaction marker (control batch) ended on a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkerOutcome {
    /// The ended transaction's first offset, if it had written here; with an abort,
    /// read_committed readers filter `first..=marker offset` of this producer.
    pub first_offset: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// Write the batch.
    Append,
    /// Already written: answer with this.
    Duplicate(SeqEntry),
}

fn in_sequence(last_seq: i32, next_seq: i32) -> bool {
    next_seq == last_seq.wrapping_add(1) || (last_seq == i32::MAX && next_seq == 0)
}

/// Decides what to do with a batch from producer `epoch` covering
/// sequences `first_seq..=last_seq`, given the producer's current entry.
pub fn check(entry: Option<&ProducerEntry>, epoch: i16, first_seq: i32, last_seq: i32) -> Result<SeqCheck, LogError> {
    let Some(entry) = entry else {
        // No state: this producer has never written to this partition (state is kept
        // from the first write on, and moves with leadership), so it must start at 0.
        // Accepting a later sequence would skip a batch that failed, which the client
        // then counts as written (librdkafka acknowledges it implicitly).
        if first_seq != 0 {
            return Err(LogError::OutOfOrderSequence(format!(
                "no earlier batch from this producer on this partition: expected sequence 0 but got {first_seq}"
            )));
        }
        return Ok(SeqCheck::Append);
    };
    if epoch < entry.epoch {
        return Err(LogError::InvalidProducerEpoch(format!(
            "producer epoch {epoch} is older than the current epoch {}",
            entry.epoch
        )));
    }
    if epoch > entry.epoch {
        if first_seq != 0 {
            return Err(LogError::OutOfOrderSequence(format!(
                "a new producer epoch {epoch} must start at sequence 0, got {first_seq}"
            )));
        }
        return Ok(SeqCheck::Append);
    }
    if let Some(dup) = entry
        .recent
        .iter()
        .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
    {
        return Ok(SeqCheck::Duplicate(*dup));
    }
    match entry.recent.back() {
        Some(last) if !in_sequence(last.last_seq, first_seq) => Err(LogError::OutOfOrderSequence(format!(
            "expected sequence {} but got {first_seq}",
            last.last_seq.wrapping_add(1)
        ))),
        _ => Ok(SeqCheck::Append),
    }
}

/// Checks a transaction marker from the coordinator at `epoch`: a marker of an older
/// epoch than the producer's current one is refused (the coordinator was fenced).
pub fn check_marker(entry: Option<&ProducerEntry>, epoch: i16) -> Result<(), LogError> {
    match entry {
        Some(e) if epoch < e.epoch => Err(LogError::InvalidProducerEpoch(format!(
            "marker epoch {epoch} is older than the producer's epoch {}",
            e.epoch
        ))),
        _ => Ok(()),
    }
}

/// Records a marker: the producer's open transaction on the partition ends. A newer epoch
/// (the coordinator aborting a timed-out or fenced transaction) fences the old one.
pub fn record_marker(entry: &mut ProducerEntry, epoch: i16) -> MarkerOutcome {
    if epoch > entry.epoch {
        entry.epoch = epoch;
        entry.recent.clear();
    }
    MarkerOutcome {
        first_offset: entry.txn_first_offset.take(),
    }
}

/// Records a transactional batch written at `base_offset`: it opens the producer's
/// transaction on the partition unless one is open.
pub fn record_transactional(entry: &mut ProducerEntry, base_offset: i64) {
    entry.txn_first_offset.get_or_insert(base_offset);
}

/// Records an appended batch.
pub fn record(entry: &mut ProducerEntry, epoch: i16, batch: SeqEntry) {
    if epoch != entry.epoch {
        entry.epoch = epoch;
        entry.recent.clear();
    }
    if entry.recent.len() == RECENT_BATCHES {
        entry.recent.pop_front();
    }
    entry.recent.push_back(batch);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(first: i32, last: i32, base: i64) -> SeqEntry {
        SeqEntry {
            first_seq: first,
            last_seq: last,
            base_offset: base,
            last_offset: base + (last - first) as i64,
        }
    }

    #[test]
    fn sequence_rules() {
        assert_eq!(check(None, 0, 0, 3), Ok(SeqCheck::Append));
        // A first batch after a gap (an earlier batch failed) is refused, not a fresh start.
        assert!(matches!(check(None, 0, 42, 43), Err(LogError::OutOfOrderSequence(_))));
        let mut e = ProducerEntry::default();
        record(&mut e, 0, seq(0, 9, 100));
        assert_eq!(check(Some(&e), 0, 10, 19), Ok(SeqCheck::Append));
        assert_eq!(check(Some(&e), 0, 0, 9), Ok(SeqCheck::Duplicate(seq(0, 9, 100))));
        assert!(matches!(
            check(Some(&e), 0, 12, 19),
            Err(LogError::OutOfOrderSequence(_))
        ));
        assert!(matches!(check(Some(&e), 0, 5, 9), Err(LogError::OutOfOrderSequence(_))));
        // A new epoch must restart at 0; an old one is fenced.
        assert!(matches!(
            check(Some(&e), 1, 10, 19),
            Err(LogError::OutOfOrderSequence(_))
        ));
        assert_eq!(check(Some(&e), 1, 0, 3), Ok(SeqCheck::Append));
        record(&mut e, 1, seq(0, 3, 110));
        assert!(matches!(
            check(Some(&e), 0, 10, 19),
            Err(LogError::InvalidProducerEpoch(_))
        ));
        assert_eq!(e.recent.len(), 1);
    }

    #[test]
    fn markers_end_the_open_transaction_and_fence_older_epochs() {
        let mut e = ProducerEntry::default();
        record(&mut e, 2, seq(0, 4, 10));
        record_transactional(&mut e, 10);
        record(&mut e, 2, seq(5, 9, 15));
        record_transactional(&mut e, 15);
        assert_eq!(e.txn_first_offset, Some(10));
        assert!(check_marker(Some(&e), 1).is_err());
        assert!(check_marker(Some(&e), 2).is_ok());
        assert_eq!(record_marker(&mut e, 2).first_offset, Some(10));
        // A second marker for the same transaction ends nothing.
        assert_eq!(record_marker(&mut e, 2).first_offset, None);
        // The coordinator's abort at a bumped epoch fences the producer's old epoch.
        record_transactional(&mut e, 20);
        assert_eq!(record_marker(&mut e, 3).first_offset, Some(20));
        assert!(matches!(
            check(Some(&e), 2, 10, 12),
            Err(LogError::InvalidProducerEpoch(_))
        ));
        assert_eq!(check(Some(&e), 3, 0, 0), Ok(SeqCheck::Append));
    }

    #[test]
    fn keeps_five_batches_and_wraps() {
        let mut e = ProducerEntry::default();
        for i in 0..7 {
            record(&mut e, 0, seq(i * 2, i * 2 + 1, i as i64 * 2));
        }
        assert_eq!(e.recent.len(), RECENT_BATCHES);
        assert_eq!(
            check(Some(&e), 0, 0, 1),
            Err(LogError::OutOfOrderSequence("expected sequence 14 but got 0".into()))
        );
        assert!(matches!(check(Some(&e), 0, 4, 5), Ok(SeqCheck::Duplicate(_))));
        let mut w = ProducerEntry::default();
        record(&mut w, 0, seq(i32::MAX - 1, i32::MAX, 0));
        assert_eq!(check(Some(&w), 0, 0, 5), Ok(SeqCheck::Append));
    }
}
