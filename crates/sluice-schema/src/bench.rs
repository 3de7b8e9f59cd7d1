//! An offline benchmark of record validation: the Avro decoder alone, and what the produce
//! path does per batch (`Enforcer::check`). `sluice schema bench` runs it.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::formats::{self, SchemaType};

pub struct BenchResult {
    pub records: u64,
    pub record_bytes: usize,
    pub elapsed: Duration,
}

impl BenchResult {
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
}

/// A realistic event schema: strings, numbers, an enum, a map and an array.
pub const BENCH_SCHEMA: &str = r#"{"type":"record","name":"Event","namespace":"bench","fields":[
 {"name":"id","type":"long"},{"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
 {"name":"device","type":"string"},{"name":"kind","type":{"type":"enum","name":"Kind","symbols":["A","B","C"]}},
 {"name":"score","type":"double"},{"name":"ok","type":"boolean"},{"name":"note","type":["null","string"]},
 {"name":"tags","type":{"type":"map","values":"string"}},{"name":"samples","type":{"type":"array","items":"float"}},
 {"name":"payload","type":"bytes"}]}"#;

fn zigzag(buf: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

fn avro_str(buf: &mut Vec<u8>, s: &[u8]) {
    zigzag(buf, s.len() as i64);
    buf.extend_from_slice(s);
}

/// One encoded `BENCH_SCHEMA` record of about `size` bytes.
pub fn bench_record(i: i64, size: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(size + 16);
    zigzag(&mut b, i);
    zigzag(&mut b, 1_700_000_000_000 + i);
    avro_str(&mut b, format!("device-{:06}", i % 100_000).as_bytes());
    zigzag(&mut b, i % 3);
    b.extend_from_slice(&(i as f64 * 0.5).to_le_bytes());
    b.push(1);
    zigzag(&mut b, 1);
    avro_str(&mut b, b"a note about this event");
    zigzag(&mut b, 4);
    for k in ["site", "zone", "rack", "unit"] {
        avro_str(&mut b, k.as_bytes());
        avro_str(&mut b, format!("{k}-{}", i % 17).as_bytes());
    }
    zigzag(&mut b, 0);
    zigzag(&mut b, 64);
    for s in 0..64 {
        b.extend_from_slice(&(s as f32).to_le_bytes());
    }
    zigzag(&mut b, 0);
    let pad = size.saturating_sub(b.len() + 2);
    avro_str(&mut b, &vec![0xab; pad]);
    b
}

/// What the produce path does per batch: decode the v2 batch, check each
/// record's schema id against the subject, decode the payload. Uses a
/// throwaway SQLite metadata store.
pub async fn bench_enforcer(duration: Duration, size: usize) -> Result<BenchResult> {
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    let path = std::env::temp_dir().join(format!("sluice-schema-bench-{}.db", std::process::id()));
    let meta = sluice_meta::MetaStore::open(&format!("sqlite://{}", path.display())).await?;
    let registry = crate::Registry::new(&meta);
    let id = registry
        .register("bench-value", SchemaType::Avro, BENCH_SCHEMA, &[])
        .await?;
    let enforcer = crate::Enforcer::new(registry);
    let policy = crate::Policy {
        key: None,
        value: Some(crate::enforce::Strategy::Topic),
        full: true,
    };
    let per_batch = 100;
    let records: Vec<Record> = (0..per_batch)
        .map(|i| {
            let mut v = vec![0u8];
            v.extend_from_slice(&(id as u32).to_be_bytes());
            v.extend_from_slice(&bench_record(i, size));
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: -1,
                timestamp: 0,
                key: None,
                value: Some(bytes::Bytes::from(v)),
                headers: Default::default(),
            }
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    let opts = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &opts)?;
    let batch = buf.freeze();
    let start = Instant::now();
    let mut n = 0u64;
    let result = async {
        while start.elapsed() < duration {
            enforcer
                .check("bench", &policy, &batch)
                .await
                .map_err(|r| anyhow::anyhow!(r.message))?;
            n += per_batch as u64;
        }
        anyhow::Ok(())
    }
    .await;
    let elapsed = start.elapsed();
    drop(meta);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    result?;
    Ok(BenchResult {
        records: n,
        record_bytes: records[0].value.as_ref().map_or(0, |v| v.len()),
        elapsed,
    })
}

pub fn bench_avro_validation(duration: Duration, size: usize) -> Result<BenchResult> {
    let parsed = formats::parse(SchemaType::Avro, BENCH_SCHEMA, &[]).map_err(anyhow::Error::msg)?;
    let records: Vec<Vec<u8>> = (0..1024).map(|i| bench_record(i, size)).collect();
    let record_bytes = records[0].len();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        for r in &records {
            parsed.validate(r).map_err(anyhow::Error::msg)?;
        }
        n += records.len() as u64;
    }
    Ok(BenchResult {
        records: n,
        record_bytes,
        elapsed: start.elapsed(),
    })
}
