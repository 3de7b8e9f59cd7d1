//! Building record batches for Produce and reading them back from Fetch.
//!
//! Both directions go through `kafka_protocol::records`; this module only adds
//! the client-side rules: one batch per produce, and on fetch skipping records
//! before the requested offset, control batches and aborted transactions.

use std::collections::HashSet;

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID,
};

/// A record to produce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProduceRecord {
    /// Record key; `None` is a null key (partitioned round-robin by the CLI).
    pub key: Option<Bytes>,
    /// Record value; `None` is a null value (a tombstone on compacted topics).
    pub value: Option<Bytes>,
    /// Headers in order. The wire format allows repeated keys, but the codec
    /// (`kafka_protocol::records::Record::headers` is a map) keeps one value per key.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Create time in milliseconds since the epoch; `None` means now.
    pub timestamp: Option<i64>,
}

impl ProduceRecord {
    /// A record with this value and no key.
    pub fn new(value: impl Into<Bytes>) -> Self {
        Self {
            value: Some(value.into()),
            ..Self::default()
        }
    }

    /// Set the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Add a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((key.into(), Some(value.into())));
        self
    }

    /// Set the create timestamp (ms since the epoch).
    pub fn with_timestamp(mut self, ts: i64) -> Self {
        self.timestamp = Some(ts);
        self
    }

    /// Approximate encoded size, for batching decisions.
    pub fn approx_size(&self) -> usize {
        let len = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len);
        24 + len(&self.key) + len(&self.value) + self.headers.iter().map(|(k, v)| 4 + k.len() + len(v)).sum::<usize>()
    }
}

/// A record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Partition the record was read from.
    pub partition: i32,
    /// Offset of the record in its partition.
    pub offset: i64,
    /// Timestamp (create or log-append time, see `timestamp_type`).
    pub timestamp: i64,
    /// Whether `timestamp` is the producer's create time or the broker's append time.
    pub timestamp_type: TimestampType,
    /// Record key.
    pub key: Option<Bytes>,
    /// Record value.
    pub value: Option<Bytes>,
    /// Record headers in wire order.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The header of a v2 record batch, before its records.
pub const BATCH_HEADER_BYTES: usize = 61;

/// At least what a record takes in an uncompressed v2 batch, from the lengths of its
/// key and value (`None`: null) and of its headers' keys and values: the lengths are
/// known, the timestamp and offset deltas are counted at their longest (10 and 5 bytes).
pub fn record_size_bound(
    key: Option<usize>,
    value: Option<usize>,
    headers: impl Iterator<Item = (usize, Option<usize>)>,
) -> usize {
    let field = |len: Option<usize>| len.map_or(varint_len(-1), |n| varint_len(n as i64) + n);
    let (mut count, mut header_bytes) = (0, 0);
    for (k, v) in headers {
        count += 1;
        header_bytes += field(Some(k)) + field(v);
    }
    let body = 1 + 10 + 5 + field(key) + field(value) + varint_len(count) + header_bytes;
    varint_len(body as i64) + body
}

/// [`record_size_bound`] of a record.
pub fn produce_record_bound(r: &ProduceRecord) -> usize {
    let len = |b: &Option<Bytes>| b.as_ref().map(Bytes::len);
    let headers = r.headers.iter().map(|(k, v)| (k.len(), len(v)));
    record_size_bound(len(&r.key), len(&r.value), headers)
}

/// Bytes of `n` as a zigzag varint.
fn varint_len(n: i64) -> usize {
    let z = ((n << 1) ^ (n >> 63)) as u64;
    (64 - z.leading_zeros() as usize).div_ceil(7).max(1)
}

/// Cuts `items` (in order) into runs whose uncompressed batch, header included, stays
/// within `limit` (a topic's `max.message.bytes`) by `size`, a bound such as
/// [`produce_record_bound`]; an item too large for any batch gets a run of its own. The
/// rule for every batch the broker builds itself.
pub fn split_within<T>(items: Vec<T>, limit: usize, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = vec![Vec::new()];
    let mut used = BATCH_HEADER_BYTES;
    for item in items {
        let s = size(&item);
        if used + s > limit && !out.last().expect("one run").is_empty() {
            out.push(Vec::new());
            used = BATCH_HEADER_BYTES;
        }
        used += s;
        out.last_mut().expect("one run").push(item);
    }
    out
}

/// The producer fields of an idempotent or transactional batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    pub producer_id: i64,
    pub epoch: i16,
    /// Sequence number of the batch's first record.
    pub base_sequence: i32,
    pub transactional: bool,
}

/// Encode `records` as exactly one record batch (format v2), non-idempotent and
/// non-transactional, with offsets 0..n (the broker assigns the real ones).
pub fn encode_batch(records: &[ProduceRecord], compression: Compression) -> Result<Bytes> {
    encode_stamped_batch(records, compression, None)
}

/// [`encode_batch`], from the producer of `stamp` (idempotent, or transactional).
pub fn encode_stamped_batch(
    records: &[ProduceRecord],
    compression: Compression,
    stamp: Option<ProducerStamp>,
) -> Result<Bytes> {
    if records.is_empty() {
        bail!("cannot encode an empty record batch");
    }
    let now = now_ms();
    let encoded: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut headers = IndexMap::with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers.insert(StrBytes::from_string(k.clone()), v.clone());
            }
            Record {
                transactional: stamp.is_some_and(|s| s.transactional),
                control: false,
                delete_horizon: false,
                partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
                producer_id: stamp.map_or(NO_PRODUCER_ID, |s| s.producer_id),
                producer_epoch: stamp.map_or(NO_PRODUCER_EPOCH, |s| s.epoch),
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // The encoder starts a new batch whenever `offset - sequence`
                // changes; keeping it constant yields one batch. Without a producer
                // the base sequence is -1 (NO_SEQUENCE), as a non-idempotent producer sends.
                sequence: stamp.map_or(-1, |s| s.base_sequence).wrapping_add(i as i32),
                timestamp: r.timestamp.unwrap_or(now),
                key: r.key.clone(),
                value: r.value.clone(),
                headers,
            }
        })
        .collect();
    let mut buf = BytesMut::with_capacity(61 + records.iter().map(ProduceRecord::approx_size).sum::<usize>());
    RecordBatchEncoder::encode(
        &mut buf,
        &encoded,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )?;
    Ok(buf.freeze())
}

/// Size of a v2 record batch header, up to and including the record count.
const BATCH_HEADER_LEN: usize = 61;
/// baseOffset (8) + batchLength (4).
const LOG_OVERHEAD: usize = 12;

/// An aborted transaction listed in a fetch response (read_committed only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    /// Producer that aborted.
    pub producer_id: i64,
    /// First offset of the aborted transaction.
    pub first_offset: i64,
}

/// Records decoded from one partition of a fetch response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodedRecords {
    /// Data records at or after the fetch offset, in offset order.
    pub records: Vec<ConsumedRecord>,
    /// Offset to fetch next: one past the last complete batch seen (including
    /// control and aborted batches), or the fetch offset if none was complete.
    pub next_offset: i64,
}

/// Decode the `records` of one fetched partition.
///
/// * Batches (or records) before `fetch_offset` are skipped: a broker returns
///   whole batches, so the first may start before the requested offset.
/// * A trailing partial batch (cut by `max_bytes`) is ignored.
/// * Control batches (transaction markers) are never returned.
/// * With `aborted = Some(list)` (read_committed), records of aborted
///   transactions are dropped, following the Java consumer's algorithm.
pub fn decode_fetched(
    partition: i32,
    mut data: Bytes,
    fetch_offset: i64,
    aborted: Option<&[AbortedTxn]>,
) -> Result<DecodedRecords> {
    let mut out = DecodedRecords {
        records: Vec::new(),
        next_offset: fetch_offset,
    };
    let read_committed = aborted.is_some();
    let mut aborted: Vec<AbortedTxn> = aborted.map(<[_]>::to_vec).unwrap_or_default();
    aborted.sort_by_key(|a| a.first_offset);
    let mut aborted = aborted.into_iter().peekable();
    let mut aborted_pids: HashSet<i64> = HashSet::new();

    while data.len() >= LOG_OVERHEAD {
        let base_offset = i64::from_be_bytes(data[0..8].try_into().expect("8 bytes"));
        let batch_len = i32::from_be_bytes(data[8..12].try_into().expect("4 bytes"));
        if batch_len < 0 {
            bail!("corrupt record batch at offset {base_offset}: negative length {batch_len}");
        }
        let total = LOG_OVERHEAD + batch_len as usize;
        if data.len() < total {
            break; // partial batch at the end of the response
        }
        if total < BATCH_HEADER_LEN {
            bail!("corrupt record batch at offset {base_offset}: only {total} bytes");
        }
        let mut batch = data.split_to(total);
        let magic = batch[16] as i8;
        if magic != 2 {
            bail!("record batch at offset {base_offset} has message format v{magic}; only v2 is supported");
        }
        let last_offset_delta = i32::from_be_bytes(batch[23..27].try_into().expect("4 bytes"));
        let last_offset = base_offset + i64::from(last_offset_delta);
        if last_offset < out.next_offset {
            continue;
        }
        let info = RecordBatchDecoder::decode_batch_info(&mut batch.clone())?
            .pop()
            .context("record batch header")?;
        let set = RecordBatchDecoder::decode(&mut batch)
            .with_context(|| format!("decoding record batch at offset {base_offset}"))?;

        if read_committed && info.producer_id >= 0 {
            while let Some(a) = aborted.next_if(|a| a.first_offset <= last_offset) {
                aborted_pids.insert(a.producer_id);
            }
            if info.control && set.records.first().is_some_and(is_abort_marker) {
                aborted_pids.remove(&info.producer_id);
            } else if info.transactional && aborted_pids.contains(&info.producer_id) {
                out.next_offset = last_offset + 1;
                continue;
            }
        }
        if !info.control {
            for r in set.records {
                if r.offset < out.next_offset {
                    continue;
                }
                out.records.push(ConsumedRecord {
                    partition,
                    offset: r.offset,
                    timestamp: r.timestamp,
                    timestamp_type: r.timestamp_type,
                    key: r.key,
                    value: r.value,
                    headers: r
                        .headers
                        .into_iter()
                        .map(|(k, v)| (k.as_str().to_string(), v))
                        .collect(),
                });
            }
        }
        out.next_offset = last_offset + 1;
    }
    Ok(out)
}

/// A control record's key is (version: int16, type: int16); type 0 is ABORT.
fn is_abort_marker(r: &Record) -> bool {
    matches!(r.key.as_deref(), Some([_, _, 0, 0, ..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mqtt_like(i: usize, value: usize) -> ProduceRecord {
        ProduceRecord {
            key: Some(Bytes::from(format!("device-{}", i % 7))),
            value: Some(Bytes::from(vec![b'x'; value])),
            headers: vec![
                ("mqtt.topic".into(), Some(Bytes::from(format!("cars/{i}/telemetry")))),
                ("mqtt.qos".into(), Some(Bytes::from_static(b"1"))),
                ("mqtt.retain".into(), None),
            ],
            timestamp: Some(1_700_000_000_000 + i as i64 * 997),
        }
    }

    #[test]
    fn batches_stay_within_the_limit_headers_included() {
        // Small payloads with headers: the case where counting values alone overshoots.
        for (limit, value) in [(1_048_588, 100), (16_384, 100), (4_096, 1_000), (300, 10)] {
            let recs: Vec<ProduceRecord> = (0..20_000).map(|i| mqtt_like(i, value)).collect();
            let runs = split_within(recs.clone(), limit, produce_record_bound);
            assert!(runs.len() > 1, "limit {limit}: one run");
            let mut order = Vec::new();
            for run in &runs {
                let encoded = encode_batch(run, Compression::None).unwrap();
                assert!(
                    encoded.len() <= limit,
                    "limit {limit}: batch of {} bytes",
                    encoded.len()
                );
                order.extend(run.iter().map(|r| r.timestamp));
            }
            // Every record once, in order: each device's records keep their order.
            assert_eq!(order, recs.iter().map(|r| r.timestamp).collect::<Vec<_>>());
            // Cut at the limit, not far below it: one more record would (nearly) pass it.
            let mut more = runs[0].clone();
            more.push(runs[1][0].clone());
            let more = encode_batch(&more, Compression::None).unwrap().len();
            assert!(
                more * 10 > limit * 9,
                "limit {limit}: a batch cut at {more} bytes with the next record"
            );
        }
    }

    #[test]
    fn varint_lengths() {
        for (n, len) in [
            (0, 1),
            (-1, 1),
            (63, 1),
            (64, 2),
            (-65, 2),
            (8191, 2),
            (8192, 3),
            (i64::MAX, 10),
        ] {
            assert_eq!(varint_len(n), len, "{n}");
        }
    }

    #[test]
    fn a_record_larger_than_the_limit_goes_alone() {
        let recs = vec![
            mqtt_like(0, 10),
            mqtt_like(1, 5_000),
            mqtt_like(2, 10),
            mqtt_like(3, 10),
        ];
        let runs = split_within(recs, 1_000, produce_record_bound);
        let sizes: Vec<usize> = runs.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 1, 2]);
        assert_eq!(runs[1][0].value.as_ref().unwrap().len(), 5_000);
    }

    /// Encode with the crate's encoder, then shift the batch to `base` the way a
    /// broker assigns offsets (baseOffset sits outside the CRC).
    fn at_offset(batch: Bytes, base: i64) -> Bytes {
        let mut b = BytesMut::from(&batch[..]);
        b[0..8].copy_from_slice(&base.to_be_bytes());
        b.freeze()
    }

    fn values(d: &DecodedRecords) -> Vec<(i64, String)> {
        d.records
            .iter()
            .map(|r| (r.offset, String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()))
            .collect()
    }

    fn control_batch(pid: i64, abort: bool, base: i64) -> Bytes {
        let rec = Record {
            transactional: true,
            control: true,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: pid,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 0,
            key: Some(Bytes::from_static(if abort { &[0, 0, 0, 0] } else { &[0, 0, 0, 1] })),
            value: Some(Bytes::from_static(&[0, 0, 0, 0, 0, 0])),
            headers: IndexMap::new(),
        };
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            [&rec],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        at_offset(buf.freeze(), base)
    }

    fn txn_batch(pid: i64, vals: &[&str], base: i64) -> Bytes {
        let recs: Vec<Record> = vals
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                transactional: true,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: pid,
                producer_epoch: 0,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32,
                timestamp: 0,
                key: None,
                value: Some(Bytes::from(v.to_string())),
                headers: IndexMap::new(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &recs,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        at_offset(buf.freeze(), base)
    }

    #[test]
    fn one_batch_round_trips_through_the_decoder() {
        let records: Vec<ProduceRecord> = (0..100)
            .map(|i| {
                ProduceRecord::new(format!("value-{i}"))
                    .with_key(format!("key-{i}"))
                    .with_header("h1", format!("x{i}"))
                    .with_header("h2", "y")
                    .with_timestamp(1_700_000_000_000 + i)
            })
            .collect();
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let bytes = encode_batch(&records, compression).unwrap();
            let infos = RecordBatchDecoder::decode_batch_info(&mut bytes.clone()).unwrap();
            assert_eq!(infos.len(), 1, "exactly one batch per produce");
            assert_eq!(infos[0].record_count, 100);
            assert_eq!(infos[0].base_sequence, -1);
            assert_eq!(infos[0].producer_id, -1);
            assert_eq!(infos[0].compression, compression);

            let decoded = decode_fetched(3, bytes, 0, None).unwrap();
            assert_eq!(decoded.next_offset, 100);
            let back: Vec<ProduceRecord> = decoded
                .records
                .iter()
                .map(|r| ProduceRecord {
                    key: r.key.clone(),
                    value: r.value.clone(),
                    headers: r.headers.clone(),
                    timestamp: Some(r.timestamp),
                })
                .collect();
            assert_eq!(back, records);
            assert!(decoded.records.iter().all(|r| r.partition == 3));
            assert_eq!(
                decoded.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
                (0..100).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn null_key_null_value_and_empty_value() {
        let records = vec![
            ProduceRecord::default(),
            ProduceRecord::new(Bytes::new()),
            ProduceRecord {
                headers: vec![("n".into(), None)],
                ..ProduceRecord::new("v")
            },
        ];
        let bytes = encode_batch(&records, Compression::None).unwrap();
        let d = decode_fetched(0, bytes, 0, None).unwrap();
        assert_eq!(d.records[0].key, None);
        assert_eq!(d.records[0].value, None);
        assert_eq!(d.records[1].value.as_deref(), Some(&b""[..]));
        assert_eq!(d.records[2].headers, vec![("n".to_string(), None)]);
    }

    #[test]
    fn skips_records_before_fetch_offset_and_partial_tail() {
        let b1 = at_offset(
            encode_batch(
                &[
                    ProduceRecord::new("a"),
                    ProduceRecord::new("b"),
                    ProduceRecord::new("c"),
                ],
                Compression::None,
            )
            .unwrap(),
            10,
        );
        let b2 = at_offset(
            encode_batch(&[ProduceRecord::new("d"), ProduceRecord::new("e")], Compression::Lz4).unwrap(),
            13,
        );
        let b3 = at_offset(encode_batch(&[ProduceRecord::new("f")], Compression::None).unwrap(), 15);
        let mut all = BytesMut::new();
        all.extend_from_slice(&b1);
        all.extend_from_slice(&b2);
        all.extend_from_slice(&b3[..b3.len() - 5]); // truncated by max_bytes
        let d = decode_fetched(0, all.freeze(), 11, None).unwrap();
        assert_eq!(
            values(&d),
            vec![(11, "b".into()), (12, "c".into()), (13, "d".into()), (14, "e".into())]
        );
        assert_eq!(d.next_offset, 15);

        // A fetch offset past the first batch skips it entirely.
        let mut two = BytesMut::new();
        two.extend_from_slice(&b1);
        two.extend_from_slice(&b2);
        let d = decode_fetched(0, two.freeze(), 14, None).unwrap();
        assert_eq!(values(&d), vec![(14, "e".into())]);
        assert_eq!(d.next_offset, 15);

        // Nothing complete: position unchanged.
        let d = decode_fetched(0, b3.slice(..20), 15, None).unwrap();
        assert!(d.records.is_empty());
        assert_eq!(d.next_offset, 15);
    }

    #[test]
    fn control_batches_are_skipped_and_aborted_txns_dropped() {
        let mut all = BytesMut::new();
        all.extend_from_slice(&txn_batch(7, &["t1", "t2"], 0)); // 0..=1 aborted
        all.extend_from_slice(&txn_batch(8, &["c1"], 2)); // 2 committed
        all.extend_from_slice(&control_batch(7, true, 3)); // abort marker of 7
        all.extend_from_slice(&control_batch(8, false, 4)); // commit marker of 8
        all.extend_from_slice(&at_offset(
            encode_batch(&[ProduceRecord::new("plain")], Compression::None).unwrap(),
            5,
        ));
        all.extend_from_slice(&txn_batch(7, &["t3"], 6)); // a later, committed txn of 7
        let all = all.freeze();

        let committed = decode_fetched(
            0,
            all.clone(),
            0,
            Some(&[AbortedTxn {
                producer_id: 7,
                first_offset: 0,
            }]),
        )
        .unwrap();
        assert_eq!(
            values(&committed),
            vec![(2, "c1".into()), (5, "plain".into()), (6, "t3".into())]
        );
        assert_eq!(committed.next_offset, 7);

        let uncommitted = decode_fetched(0, all, 0, None).unwrap();
        assert_eq!(
            values(&uncommitted),
            vec![
                (0, "t1".into()),
                (1, "t2".into()),
                (2, "c1".into()),
                (5, "plain".into()),
                (6, "t3".into())
            ]
        );
        assert_eq!(uncommitted.next_offset, 7);
    }

    #[test]
    fn rejects_garbage() {
        let mut bad = BytesMut::from(&encode_batch(&[ProduceRecord::new("x")], Compression::None).unwrap()[..]);
        let n = bad.len();
        bad[n - 1] ^= 0xff; // breaks the CRC
        assert!(decode_fetched(0, bad.freeze(), 0, None).is_err());
        assert!(encode_batch(&[], Compression::None).is_err());
    }
}
