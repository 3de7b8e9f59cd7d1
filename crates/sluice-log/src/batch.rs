//! Record batches (format v2) as producers send them: header parsing,
//! validation, and the two header fields the broker rewrites.
//!
//! Layout of the fixed 61-byte header:
//! baseOffset i64 @0, batchLength i32 @8, partitionLeaderEpoch i32 @12,
//! magic i8 @16, crc u32 @17 (CRC-32C of bytes 21..end), attributes i16 @21,
//! lastOffsetDelta i32 @23, baseTimestamp i64 @27, maxTimestamp i64 @35,
//! producerId i64 @43, producerEpoch i16 @51, baseSequence i32 @53,
//! recordCount i32 @57.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions};

use crate::config::TopicConfig;
use crate::LogError;

pub const HEADER_LEN: usize = 61;
/// batchLength counts from the partitionLeaderEpoch field onwards.
const LENGTH_PREFIX: usize = 12;
const CRC_START: usize = 21;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// Byte position of the batch within the buffer it came from.
    pub position: usize,
    pub length: usize,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchInfo {
    pub fn is_transactional(&self) -> bool {
        self.attributes & (1 << 4) != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & (1 << 5) != 0
    }
    /// Sequence number of the batch's last record; sequences wrap at i32::MAX.
    pub fn last_sequence(&self) -> i32 {
        let last = self.base_sequence as i64 + self.last_offset_delta as i64;
        if last > i32::MAX as i64 {
            (last - i32::MAX as i64 - 1) as i32
        } else {
            last as i32
        }
    }
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    (&b[at..at + 2]).get_i16()
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    (&b[at..at + 4]).get_i32()
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    (&b[at..at + 8]).get_i64()
}

/// Parses the header of the batch starting at `pos` without checking its CRC.
pub fn parse_header(buf: &[u8], pos: usize) -> Result<BatchInfo, LogError> {
    let rest = &buf[pos..];
    if rest.len() < HEADER_LEN {
        return Err(LogError::CorruptMessage("truncated record batch header".into()));
    }
    let batch_length = be_i32(rest, 8);
    if batch_length < (HEADER_LEN - LENGTH_PREFIX) as i32 {
        return Err(LogError::CorruptMessage(format!(
            "record batch length {batch_length} too small"
        )));
    }
    let length = LENGTH_PREFIX + batch_length as usize;
    if length > rest.len() {
        return Err(LogError::CorruptMessage(format!(
            "record batch of {length} bytes overruns the {} bytes sent",
            rest.len()
        )));
    }
    let magic = rest[16] as i8;
    if magic != 2 {
        return Err(LogError::CorruptMessage(format!(
            "record batch magic {magic} unsupported (only v2 batches)"
        )));
    }
    Ok(BatchInfo {
        position: pos,
        length,
        attributes: be_i16(rest, 21),
        last_offset_delta: be_i32(rest, 23),
        base_timestamp: be_i64(rest, 27),
        max_timestamp: be_i64(rest, 35),
        producer_id: be_i64(rest, 43),
        producer_epoch: be_i16(rest, 51),
        base_sequence: be_i32(rest, 53),
        record_count: be_i32(rest, 57),
    })
}

/// Validates a producer's records field: one or more whole v2 batches with
/// correct CRCs, consistent record counts and none over `max_batch_bytes`.
pub fn validate_batches(buf: &[u8], max_batch_bytes: usize) -> Result<Vec<BatchInfo>, LogError> {
    if buf.is_empty() {
        return Err(LogError::CorruptMessage("empty records".into()));
    }
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let info = parse_header(buf, pos)?;
        if info.length > max_batch_bytes {
            return Err(LogError::MessageTooLarge(format!(
                "record batch of {} bytes exceeds max.message.bytes {max_batch_bytes}",
                info.length
            )));
        }
        let batch = &buf[pos..pos + info.length];
        let stored = (&batch[17..21]).get_u32();
        let actual = crc32c::crc32c(&batch[CRC_START..]);
        if stored != actual {
            return Err(LogError::CorruptMessage(format!(
                "record batch CRC mismatch (stored {stored:#010x}, computed {actual:#010x})"
            )));
        }
        if info.record_count <= 0 || info.last_offset_delta != info.record_count - 1 {
            return Err(LogError::InvalidRecord(format!(
                "record batch claims {} records but lastOffsetDelta {}",
                info.record_count, info.last_offset_delta
            )));
        }
        if info.is_control() {
            return Err(LogError::InvalidRecord("producers may not send control batches".into()));
        }
        out.push(info);
        pos += info.length;
    }
    Ok(out)
}

/// Refuses batches whose timestamps lie further from `now_ms` than the topic allows
/// (KIP-937's `message.timestamp.before.max.ms` and `...after.max.ms`). A batch's first
/// and largest timestamps are checked; with LogAppendTime the broker's time replaces them.
pub fn check_timestamps(batches: &[BatchInfo], config: &TopicConfig, now_ms: i64) -> Result<(), LogError> {
    if config.log_append_time {
        return Ok(());
    }
    let (before, after) = (config.timestamp_before_max_ms, config.timestamp_after_max_ms);
    for b in batches {
        for ts in [b.base_timestamp, b.max_timestamp] {
            if ts < now_ms.saturating_sub(before) {
                return Err(LogError::InvalidTimestamp(format!(
                    "timestamp {ts} is more than message.timestamp.before.max.ms={before} before the broker's time {now_ms}"
                )));
            }
            if ts > now_ms.saturating_add(after) {
                return Err(LogError::InvalidTimestamp(format!(
                    "timestamp {ts} is more than message.timestamp.after.max.ms={after} after the broker's time {now_ms}"
                )));
            }
        }
    }
    Ok(())
}

/// Stamps a batch with its append time (`message.timestamp.type=LogAppendTime`): sets the
/// timestamp-type attribute and the max timestamp, which consumers then report for every
/// record, and recomputes the CRC, which covers both.
pub fn set_log_append_time(batch: &mut [u8], append_ms: i64) {
    let attributes = be_i16(batch, 21) | TIMESTAMP_TYPE_LOG_APPEND;
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    batch[35..43].copy_from_slice(&append_ms.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// The codec a batch was compressed with (its attribute bits 0-2).
pub fn compression(b: &BatchInfo) -> Option<Compression> {
    Some(match b.attributes & 0x7 {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        _ => return None,
    })
}

/// The batches of `data` re-encoded with `to` (a topic's `compression.type`), or `None`
/// when every batch already uses it. Records keep their offsets deltas, timestamps,
/// keys, values and headers; producer id, epoch, sequences and the transactional bit stay.
pub fn recompress(data: &Bytes, batches: &[BatchInfo], to: Compression) -> Result<Option<Bytes>, LogError> {
    if batches.iter().all(|b| compression(b) == Some(to)) {
        return Ok(None);
    }
    let mut out = BytesMut::with_capacity(data.len());
    for b in batches {
        let raw = data.slice(b.position..b.position + b.length);
        if compression(b) == Some(to) {
            out.extend_from_slice(&raw);
            continue;
        }
        let mut records = decode_records(&raw)?;
        encode_records(&mut out, b, &mut records, to)?;
    }
    Ok(Some(out.freeze()))
}

/// A compacted topic keeps records by key: one without a key is refused, as Kafka does.
pub fn check_keys(data: &Bytes, batches: &[BatchInfo]) -> Result<(), LogError> {
    for b in batches.iter().filter(|b| !b.is_control()) {
        let records = decode_records(&data.slice(b.position..b.position + b.length))?;
        let keyless: Vec<i32> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.key.is_none())
            .map(|(i, _)| i as i32)
            .collect();
        if !keyless.is_empty() {
            return Err(LogError::KeylessRecords(keyless));
        }
    }
    Ok(())
}

/// The records of one batch, decompressed.
pub fn decode_records(batch: &Bytes) -> Result<Vec<Record>, LogError> {
    Ok(RecordBatchDecoder::decode(&mut batch.clone())
        .map_err(|e| LogError::CorruptMessage(format!("decoding a record batch: {e:#}")))?
        .records)
}

/// Encodes records decoded from the batch `b` (all of them, or some: their offsets,
/// timestamps, headers and producer fields are kept) as one batch in `codec`.
pub fn encode_records(
    out: &mut BytesMut,
    b: &BatchInfo,
    records: &mut [Record],
    codec: Compression,
) -> Result<(), LogError> {
    if b.base_sequence < 0 {
        // Without a producer the encoder needs `offset - sequence` constant to make one
        // batch: base sequence -1 (NO_SEQUENCE), as the producer sent it.
        let base = records.first().map_or(0, |r| r.offset);
        for r in records.iter_mut() {
            r.sequence = (r.offset - base) as i32 - 1;
        }
    }
    let options = RecordEncodeOptions {
        version: 2,
        compression: codec,
    };
    RecordBatchEncoder::encode(out, &*records, &options)
        .map_err(|e| LogError::InvalidRecord(format!("encoding a record batch: {e:#}")))
}

/// The attribute bit of LogAppendTime batches.
const TIMESTAMP_TYPE_LOG_APPEND: i16 = 1 << 3;

/// Rewrites baseOffset and partitionLeaderEpoch; both lie outside the CRC.
pub fn patch_header(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// A transaction marker (Kafka's EndTransactionMarker): a control batch of one record
/// whose key is (version 0, type: 0 abort, 1 commit) and whose value is (version 0,
/// coordinator epoch). Offsets are assigned when it is written, like any batch.
pub fn marker_batch(producer_id: i64, producer_epoch: i16, commit: bool, coordinator_epoch: i32) -> bytes::Bytes {
    use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&(commit as i16).to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    let record = Record {
        transactional: true,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id,
        producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: sluice_meta::now_ms(),
        key: Some(key.into()),
        value: Some(value.into()),
        headers: Default::default(),
    };
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        std::slice::from_ref(&record),
        &RecordEncodeOptions {
            version: 2,
            compression: kafka_protocol::records::Compression::None,
        },
    )
    .expect("a one-record control batch encodes");
    buf.freeze()
}

/// Whether a control batch is a commit marker (else an abort); `None` if it is no
/// transaction marker. Control batches are never compressed.
pub fn marker_is_commit(batch: &[u8]) -> Option<bool> {
    let mut rest = batch.get(HEADER_LEN..)?;
    let varint = |b: &mut &[u8]| -> Option<i64> {
        let (mut value, mut shift) = (0u64, 0);
        loop {
            let byte = *b.first()?;
            *b = &b[1..];
            value |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
    };
    varint(&mut rest)?; // record length
    rest = rest.get(1..)?; // attributes
    varint(&mut rest)?; // timestamp delta
    varint(&mut rest)?; // offset delta
    let key_len = varint(&mut rest)?;
    if key_len < 4 {
        return None;
    }
    let key = rest.get(..4)?;
    match i16::from_be_bytes([key[2], key[3]]) {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

/// Checks the CRC of a stored batch (for object verification).
pub fn crc_ok(batch: &[u8]) -> bool {
    batch.len() >= HEADER_LEN && (&batch[17..21]).get_u32() == crc32c::crc32c(&batch[CRC_START..])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    /// Builds a real batch with the protocol crate's encoder.
    pub fn make_batch(n: usize, producer_id: i64, base_sequence: i32, ts: i64, compression: Compression) -> Bytes {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id,
                producer_epoch: if producer_id >= 0 { 0 } else { -1 },
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // The encoder starts a new batch wherever offset - sequence changes.
                sequence: base_sequence + i as i32,
                timestamp: ts + i as i64,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("value-{i}"))),
                headers: [(StrBytes::from_static_str("h"), Some(Bytes::from_static(b"v")))]
                    .into_iter()
                    .collect(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf.freeze()
    }

    #[test]
    fn recompression_keeps_records_and_producer_fields() {
        for (producer_id, base_sequence) in [(-1, -1), (7, 10)] {
            let data = make_batch(5, producer_id, base_sequence, 1_000, Compression::None);
            let before = validate_batches(&data, usize::MAX).unwrap();
            let decode = |d: &Bytes| RecordBatchDecoder::decode(&mut d.clone()).unwrap().records;
            for to in [
                Compression::Gzip,
                Compression::Snappy,
                Compression::Lz4,
                Compression::Zstd,
            ] {
                let out = recompress(&data, &before, to).unwrap().expect("recompressed");
                let after = validate_batches(&out, usize::MAX).unwrap();
                assert_eq!(after.len(), 1, "one batch in, one batch out");
                let (a, b) = (after[0], before[0]);
                assert_eq!(compression(&a), Some(to));
                assert_eq!(
                    (
                        a.record_count,
                        a.producer_id,
                        a.producer_epoch,
                        a.base_sequence,
                        a.max_timestamp
                    ),
                    (
                        b.record_count,
                        b.producer_id,
                        b.producer_epoch,
                        b.base_sequence,
                        b.max_timestamp
                    )
                );
                let (got, want) = (decode(&out), decode(&data));
                let fields = |r: &kafka_protocol::records::Record| {
                    (r.offset, r.timestamp, r.key.clone(), r.value.clone(), r.headers.clone())
                };
                assert_eq!(
                    got.iter().map(fields).collect::<Vec<_>>(),
                    want.iter().map(fields).collect::<Vec<_>>()
                );
                // Back to uncompressed, and nothing to do when the codec already matches.
                let back = recompress(&out, &after, Compression::None).unwrap().unwrap();
                assert_eq!(
                    compression(&validate_batches(&back, usize::MAX).unwrap()[0]),
                    Some(Compression::None)
                );
                assert!(recompress(&out, &after, to).unwrap().is_none());
            }
        }
    }

    #[test]
    fn log_append_time_sets_the_type_and_max_timestamp_and_keeps_the_crc_valid() {
        let data = make_batch(3, -1, -1, 1_000, Compression::None);
        let mut b = data.to_vec();
        set_log_append_time(&mut b, 5_000);
        assert!(crc_ok(&b));
        let info = validate_batches(&b, usize::MAX).unwrap()[0];
        assert_eq!(info.attributes & TIMESTAMP_TYPE_LOG_APPEND, TIMESTAMP_TYPE_LOG_APPEND);
        assert_eq!((info.base_timestamp, info.max_timestamp), (1_000, 5_000));
        // The records decode as LogAppendTime with the batch's max timestamp.
        let decoded = kafka_protocol::records::RecordBatchDecoder::decode(&mut Bytes::from(b)).unwrap();
        assert!(decoded
            .records
            .iter()
            .all(|r| r.timestamp_type == TimestampType::LogAppend));
    }

    #[test]
    fn timestamps_outside_the_topic_bounds_are_refused() {
        let info = |base: i64, max: i64| BatchInfo {
            base_timestamp: base,
            max_timestamp: max,
            ..parse_header(&make_batch(1, -1, -1, 0, Compression::None), 0).unwrap()
        };
        let mut config = crate::config::TopicDefaults::default().resolve(&Default::default());
        let now = 1_000_000;
        // No bounds by default.
        assert!(check_timestamps(&[info(0, i64::MAX)], &config, now).is_ok());
        config.timestamp_before_max_ms = 1_000;
        config.timestamp_after_max_ms = 500;
        assert!(check_timestamps(&[info(now - 1_000, now + 500)], &config, now).is_ok());
        assert!(matches!(
            check_timestamps(&[info(now - 1_001, now)], &config, now),
            Err(LogError::InvalidTimestamp(_))
        ));
        assert!(matches!(
            check_timestamps(&[info(now, now + 501)], &config, now),
            Err(LogError::InvalidTimestamp(_))
        ));
        // The broker's clock replaces the producer's with LogAppendTime.
        config.log_append_time = true;
        assert!(check_timestamps(&[info(0, 0)], &config, now).is_ok());
    }

    #[test]
    fn markers_are_control_batches_that_say_what_they_end() {
        for commit in [false, true] {
            let m = marker_batch(42, 3, commit, 7);
            assert!(crc_ok(&m));
            let info = parse_header(&m, 0).unwrap();
            assert!(info.is_control() && info.is_transactional());
            assert_eq!((info.producer_id, info.producer_epoch, info.record_count), (42, 3, 1));
            assert_eq!(marker_is_commit(&m), Some(commit));
            // A producer may not send one.
            assert!(matches!(validate_batches(&m, 1 << 20), Err(LogError::InvalidRecord(_))));
        }
        assert_eq!(marker_is_commit(&make_batch(1, -1, 0, 0, Compression::None)), None);
    }

    #[test]
    fn parses_encoder_output() {
        let b = make_batch(5, 7, 10, 1000, Compression::None);
        let infos = validate_batches(&b, 1 << 20).unwrap();
        assert_eq!(infos.len(), 1);
        let i = infos[0];
        assert_eq!((i.record_count, i.last_offset_delta), (5, 4));
        assert_eq!((i.producer_id, i.base_sequence, i.last_sequence()), (7, 10, 14));
        assert_eq!((i.base_timestamp, i.max_timestamp), (1000, 1004));
        assert_eq!(i.length, b.len());
    }

    #[test]
    fn rejects_bad_crc_truncation_and_size() {
        let b = make_batch(3, -1, 0, 0, Compression::Gzip);
        let mut bad = BytesMut::from(&b[..]);
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(matches!(
            validate_batches(&bad, 1 << 20),
            Err(LogError::CorruptMessage(_))
        ));
        assert!(matches!(
            validate_batches(&b[..b.len() - 1], 1 << 20),
            Err(LogError::CorruptMessage(_))
        ));
        assert!(matches!(
            validate_batches(&b[..30], 1 << 20),
            Err(LogError::CorruptMessage(_))
        ));
        assert!(matches!(validate_batches(&b, 10), Err(LogError::MessageTooLarge(_))));
    }

    #[test]
    fn patching_keeps_crc_valid() {
        let b = make_batch(2, -1, 0, 0, Compression::Snappy);
        let mut m = BytesMut::from(&b[..]);
        patch_header(&mut m, 12345, 9);
        assert!(crc_ok(&m));
        let info = parse_header(&m, 0).unwrap();
        assert_eq!(info.record_count, 2);
        assert_eq!(be_i64(&m, 0), 12345);
        assert_eq!(be_i32(&m, 12), 9);
    }

    #[test]
    fn sequence_wraps() {
        let b = make_batch(1, 1, 0, 0, Compression::None);
        let mut i = parse_header(&b, 0).unwrap();
        i.base_sequence = i32::MAX;
        i.last_offset_delta = 2;
        assert_eq!(i.last_sequence(), 1);
    }

    proptest::proptest! {
        #[test]
        fn validator_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = validate_batches(&data, 1 << 20);
        }
    }
}
