//! `sluice bench produce --transactional`: the cost of transactions, measured
//! against idempotent produce in the same run.
//!
//! Two phases of equal length run the same closed loop on `in_flight`
//! producers, each with its own connection: one produce request at a time,
//! a batch for every partition in each. The first phase is idempotent; in
//! the second every producer is transactional and commits every
//! `transaction_ms` (AddPartitionsToTxn at the start of each transaction,
//! EndTxn at its end), as Kafka Streams and Flink's EXACTLY_ONCE sink do.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use serde_json::json;
use sluice_client::records::{encode_stamped_batch, ProducerStamp};
use sluice_client::{Acks, Client, Compression, ProduceRecord, ProducerIdentity};

use crate::report::{Latency, Throughput};

/// Most record bytes per partition per request: below every default
/// max.message.bytes, and big enough that the request, not the record, costs.
const MAX_BATCH_BYTES: usize = 256 << 10;

/// What both phases run.
#[derive(Debug, Clone)]
pub struct TxnBenchSettings {
    pub bootstrap: String,
    pub topic: String,
    pub partitions: i32,
    pub value: Bytes,
    pub acks: Acks,
    pub compression: Compression,
    pub batch_bytes: usize,
    pub producers: usize,
    /// Length of each phase.
    pub duration: Duration,
    /// How long each transaction stays open before its commit.
    pub transaction: Duration,
}

/// One phase's figures.
#[derive(Debug, Clone)]
pub struct PhaseOutcome {
    pub throughput: Throughput,
    /// Per record, request sent to acknowledged.
    pub produce_latency: Latency,
    /// EndTxn(commit) sent to answered (transactional phase only).
    pub commit_latency: Latency,
    pub transactions: u64,
}

impl PhaseOutcome {
    fn empty() -> Self {
        Self {
            throughput: Throughput {
                records: 0,
                bytes: 0,
                elapsed: Duration::ZERO,
            },
            produce_latency: Latency::new(),
            commit_latency: Latency::new(),
            transactions: 0,
        }
    }
}

/// Both phases, idempotent first.
pub async fn run(s: &TxnBenchSettings) -> Result<(PhaseOutcome, PhaseOutcome)> {
    let idempotent = phase(s, None).await.context("idempotent phase")?;
    let run_id = std::process::id();
    let transactional = phase(s, Some(run_id)).await.context("transactional phase")?;
    Ok((idempotent, transactional))
}

/// Settings and figures as report fields.
pub fn extra(idempotent: &PhaseOutcome, transactional: &PhaseOutcome) -> Vec<(String, serde_json::Value)> {
    let idem_rate = idempotent.throughput.records_per_sec();
    let ratio = if idem_rate > 0.0 {
        transactional.throughput.records_per_sec() / idem_rate
    } else {
        0.0
    };
    let mut out = vec![
        ("idempotent_records_per_sec".to_string(), json!(idem_rate.round())),
        (
            "idempotent_mb_per_sec".to_string(),
            json!((idempotent.throughput.mb_per_sec() * 1000.0).round() / 1000.0),
        ),
        (
            "transactional_to_idempotent_ratio".to_string(),
            json!((ratio * 1000.0).round() / 1000.0),
        ),
        ("transactions".to_string(), json!(transactional.transactions)),
    ];
    if let Some(l) = idempotent.produce_latency.summary() {
        out.push(("idempotent_latency_ms".to_string(), l.to_json()));
    }
    if let Some(l) = transactional.commit_latency.summary() {
        out.push(("commit_latency_ms".to_string(), l.to_json()));
    }
    out
}

async fn phase(s: &TxnBenchSettings, transactional_run: Option<u32>) -> Result<PhaseOutcome> {
    let started = Instant::now();
    let until = started + s.duration;
    let mut tasks = Vec::with_capacity(s.producers);
    for i in 0..s.producers {
        let s = s.clone();
        let txid = transactional_run.map(|run| format!("sluice-bench-{run}-{i}"));
        tasks.push(tokio::spawn(async move { producer(&s, txid, until).await }));
    }
    let mut out = PhaseOutcome::empty();
    for t in tasks {
        let p = t.await.context("producer task")??;
        out.throughput.records += p.throughput.records;
        out.throughput.bytes += p.throughput.bytes;
        out.produce_latency.merge(&p.produce_latency);
        out.commit_latency.merge(&p.commit_latency);
        out.transactions += p.transactions;
    }
    out.throughput.elapsed = started.elapsed();
    Ok(out)
}

/// One producer's loop until `until`; a transactional producer ends with a
/// commit, so that everything it counts is committed.
async fn producer(s: &TxnBenchSettings, txid: Option<String>, until: Instant) -> Result<PhaseOutcome> {
    let mut client = crate::consumer::connect(&s.bootstrap).await?;
    let timeout_ms = (s.transaction.as_millis() as i32).saturating_mul(10).max(60_000);
    let id = client.init_producer_id(txid.as_deref(), timeout_ms).await?;
    let per_batch = (s.batch_bytes.min(MAX_BATCH_BYTES) / s.value.len().max(1)).max(1);
    let records: Vec<ProduceRecord> = (0..per_batch)
        .map(|_| ProduceRecord {
            value: Some(s.value.clone()),
            ..ProduceRecord::default()
        })
        .collect();
    let partitions: Vec<i32> = (0..s.partitions).collect();
    let mut sequences = vec![0i32; partitions.len()];
    let mut out = PhaseOutcome::empty();
    let mut txn_started: Option<Instant> = None;
    while Instant::now() < until {
        if let (Some(txid), None) = (&txid, txn_started) {
            client.add_partitions_to_txn(txid, id, &s.topic, &partitions).await?;
            txn_started = Some(Instant::now());
        }
        let batches = partitions
            .iter()
            .map(|&p| {
                let stamp = stamp(id, sequences[p as usize], txid.is_some());
                Ok((p, encode_stamped_batch(&records, s.compression, Some(stamp))?))
            })
            .collect::<Result<Vec<_>>>()?;
        let sent = Instant::now();
        client
            .produce_encoded(&s.topic, batches, s.acks, txid.as_deref())
            .await?;
        let n = (per_batch * partitions.len()) as u64;
        out.produce_latency.record_n(sent.elapsed(), n);
        out.throughput.records += n;
        out.throughput.bytes += n * s.value.len() as u64;
        for seq in &mut sequences {
            *seq = seq.wrapping_add(per_batch as i32);
        }
        if let (Some(txid), Some(t)) = (&txid, txn_started) {
            if t.elapsed() >= s.transaction || Instant::now() >= until {
                commit(&mut client, txid, id, &mut out).await?;
                txn_started = None;
            }
        }
    }
    Ok(out)
}

async fn commit(client: &mut Client, txid: &str, id: ProducerIdentity, out: &mut PhaseOutcome) -> Result<()> {
    let sent = Instant::now();
    client.end_txn(txid, id, true).await?;
    out.commit_latency.record(sent.elapsed());
    out.transactions += 1;
    Ok(())
}

fn stamp(id: ProducerIdentity, base_sequence: i32, transactional: bool) -> ProducerStamp {
    ProducerStamp {
        producer_id: id.producer_id,
        epoch: id.epoch,
        base_sequence,
        transactional,
    }
}
