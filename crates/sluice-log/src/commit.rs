//! What a flush commits to the metadata store, shared by the flusher and the journal's
//! recovery and uploads.

use sluice_meta::{AbortedTxnRow, BatchRow, FlushCommit, ProducerStateRow, WatermarkUpdate};
use uuid::Uuid;

use crate::producer::ProducerEntry;

/// A partition: topic id and index.
pub(crate) type PartKey = (Uuid, i32);
/// A producer on a partition.
pub(crate) type ProducerKey = (Uuid, i32, i64);

/// A metadata commit: objects and their index rows, each partition's new high watermark
/// and leader epoch (in the order given), and the state of each producer touched.
pub(crate) fn flush_commit<'a>(
    objects: Vec<(String, i64)>,
    batches: Vec<BatchRow>,
    watermarks: impl IntoIterator<Item = (PartKey, (i64, i32))>,
    producers: impl IntoIterator<Item = (ProducerKey, &'a ProducerEntry)>,
    aborted: Vec<AbortedTxnRow>,
) -> FlushCommit {
    FlushCommit {
        objects,
        batches,
        watermarks: watermarks
            .into_iter()
            .map(|(k, (high_watermark, leader_epoch))| WatermarkUpdate {
                topic_id: k.0,
                partition: k.1,
                high_watermark,
                leader_epoch,
            })
            .collect(),
        producers: producers
            .into_iter()
            .map(|(k, e)| ProducerStateRow {
                topic_id: k.0,
                partition: k.1,
                producer_id: k.2,
                epoch: e.epoch,
                recent: e.recent.iter().copied().collect(),
                txn_first_offset: e.txn_first_offset.unwrap_or(-1),
            })
            .collect(),
        aborted,
    }
}
