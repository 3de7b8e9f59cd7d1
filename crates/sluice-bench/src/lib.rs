//! `sluice bench`: a load generator for any Kafka-compatible broker, in the
//! spirit of kafka-producer-perf-test and the OpenMessaging Benchmark.
//!
//! * `produce`: concurrent produce requests (one batch per partition per
//!   request, several requests in flight); records/s, MB/s, and per-record
//!   latency percentiles from enqueue to acknowledgement.
//! * `consume`: fetch throughput.
//! * `e2e`: produce timestamped records and consume them concurrently;
//!   end-to-end latency percentiles.
//! * `mqtt`: many MQTT clients publishing at QoS 1 to any MQTT broker (`mqtt`).
//!
//! The `sluice` binary wires it in as
//! `Commands::Bench(sluice_bench::BenchArgs) => sluice_bench::run_bench(args).await`.
//! MB are 10^6 bytes, as `dd` counts them; bytes are record keys and values.

pub mod consumer;
pub mod mqtt;
pub mod producer;
pub mod report;
pub mod txn;
pub mod units;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use sluice_client::{Acks, Client, Compression};

use consumer::{ConsumeControl, FetchSettings};
use producer::{Payload, ProducerOutcome, ProducerSettings, Stop};
use report::{Latency, Report, Throughput};
use units::{acks_name, compression_name, parse_acks, parse_bytes, parse_compression, parse_duration, parse_rate};

/// Benchmark a Kafka-compatible broker: produce, consume and end-to-end
/// throughput and latency.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(subcommand)]
    pub command: BenchCommand,
}

/// Options shared by every bench subcommand.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Broker to connect to first, as HOST:PORT (several may be given,
    /// separated by commas).
    #[arg(
        long,
        global = true,
        env = "SLUICE_BOOTSTRAP",
        default_value = "127.0.0.1:9092",
        value_name = "HOST:PORT"
    )]
    pub bootstrap: String,

    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// Print interim throughput on stderr this often (text mode only; 0 = never).
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub report_interval: Duration,
}

/// `sluice bench` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum BenchCommand {
    /// Produce as fast as possible (or at --rate): records/s, MB/s and
    /// per-record latency (enqueue to acknowledgement) percentiles.
    Produce(ProduceArgs),
    /// Fetch a topic's records: records/s and MB/s.
    Consume(ConsumeArgs),
    /// Produce timestamped records and consume them at the same time:
    /// end-to-end latency percentiles.
    E2e(E2eArgs),
    /// MQTT gateway load: many clients publishing at QoS 1 (msgs/s acknowledged),
    /// or holding idle connections (--idle); reports the server's RSS given --server-pid.
    Mqtt(mqtt::MqttBenchArgs),
}

/// Producer tuning shared by `produce` and `e2e`.
#[derive(Args, Debug, Clone)]
pub struct ProducerTuning {
    /// Partitions to create the topic with if it does not exist (an existing
    /// topic keeps its own count).
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,

    /// Acknowledgement level: 0, 1 or all.
    #[arg(long, default_value = "all", value_parser = parse_acks, value_name = "ACKS")]
    pub acks: Acks,

    /// Batch compression: none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none", value_parser = parse_compression, value_name = "CODEC")]
    pub compression: Compression,

    /// Largest batch per partition per request (batch.size).
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes, value_name = "BYTES")]
    pub batch_bytes: u64,

    /// How long a partial batch waits for more records (linger.ms).
    #[arg(long, default_value_t = 5, value_name = "MS")]
    pub linger_ms: u64,

    /// Produce requests in flight at once, each on its own connection.
    #[arg(long = "in-flight", visible_alias = "connections", default_value_t = 5, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..1025))]
    pub in_flight: u64,

    /// Most record bytes waiting to be sent; the generator blocks beyond
    /// (buffer.memory).
    #[arg(long, default_value = "32MiB", value_parser = parse_bytes, value_name = "BYTES")]
    pub buffer_bytes: u64,
}

/// `sluice bench produce`.
#[derive(Args, Debug, Clone)]
pub struct ProduceArgs {
    /// Topic to produce to (created if missing).
    #[arg(long)]
    pub topic: String,

    /// Value size of each record.
    #[arg(long, default_value = "1024", value_parser = parse_bytes, value_name = "BYTES")]
    pub record_size: u64,

    /// Stop after this many records.
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    pub count: Option<u64>,

    /// Stop after this long [default: 10s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,

    /// Target records per second (0 = as fast as possible).
    #[arg(long, default_value = "0", value_parser = parse_rate, value_name = "R")]
    pub rate: f64,

    /// Measure transactions: an idempotent phase, then a transactional one of
    /// the same length (--in-flight producers, one request each at a time);
    /// reports their throughput ratio and the commit latency.
    #[arg(long, conflicts_with_all = ["count", "rate"])]
    pub transactional: bool,

    /// With --transactional: how long each transaction stays open before its commit.
    #[arg(long, default_value_t = 100, value_name = "MS", requires = "transactional")]
    pub transaction_ms: u64,

    #[command(flatten)]
    pub tuning: ProducerTuning,
}

/// `sluice bench consume`.
#[derive(Args, Debug, Clone)]
pub struct ConsumeArgs {
    /// Topic to consume.
    #[arg(long)]
    pub topic: String,

    /// Stop after this many records.
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    pub count: Option<u64>,

    /// Stop after this long. Without --count or --duration, --from-beginning
    /// reads up to the end offsets found at the start; otherwise 10s.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,

    /// Start at the earliest offsets (default: the latest).
    #[arg(long)]
    pub from_beginning: bool,

    /// Connections fetching at once (the partitions are split among them).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u64).range(1..1025))]
    pub connections: u64,

    /// Most bytes per fetch response (fetch.max.bytes).
    #[arg(long, default_value = "50MiB", value_parser = parse_bytes, value_name = "BYTES")]
    pub fetch_max_bytes: u64,

    /// Most bytes per partition per fetch (max.partition.fetch.bytes).
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes, value_name = "BYTES")]
    pub partition_max_bytes: u64,

    /// Longest a fetch waits for data (fetch.max.wait.ms).
    #[arg(long, default_value_t = 500, value_name = "MS")]
    pub max_wait_ms: u64,
}

/// `sluice bench e2e`.
#[derive(Args, Debug, Clone)]
pub struct E2eArgs {
    /// Topic to produce to and consume from (created if missing).
    #[arg(long)]
    pub topic: String,

    /// Value size of each record (at least 20: the timestamp lives in it).
    #[arg(long, default_value = "1024", value_parser = parse_bytes, value_name = "BYTES")]
    pub record_size: u64,

    /// Target records per second (0 = as fast as possible).
    #[arg(long, default_value = "1000", value_parser = parse_rate, value_name = "R")]
    pub rate: f64,

    /// How long to produce.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Duration,

    /// How long to keep consuming after the last acknowledgement while
    /// records are missing.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub drain_timeout: Duration,

    #[command(flatten)]
    pub tuning: ProducerTuning,
}

/// Run `sluice bench ...`: print the report (text or JSON) on stdout. Fails
/// (after printing) if any record failed.
pub async fn run_bench(args: BenchArgs) -> Result<()> {
    let report = match &args.command {
        BenchCommand::Mqtt(a) => return mqtt::run(a.clone(), args.common.json).await,
        BenchCommand::Produce(a) => bench_produce(&args.common, a).await?,
        BenchCommand::Consume(a) => bench_consume(&args.common, a).await?,
        BenchCommand::E2e(a) => bench_e2e(&args.common, a).await?,
    };
    if args.common.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if report.errors > 0 {
        bail!("{} records failed", report.errors);
    }
    Ok(())
}

/// Make sure `topic` exists (creating it with `partitions` if not) and its
/// partitions have leaders; returns its partition count.
pub async fn ensure_topic(client: &mut Client, topic: &str, partitions: i32) -> Result<i32> {
    let exists = |md: &sluice_client::ClusterMetadata| {
        md.topics
            .iter()
            .find(|t| t.name == topic && t.error_code == 0 && !t.partitions.is_empty())
            .cloned()
    };
    let md = client.metadata(Some(&[topic])).await?;
    if exists(&md).is_none() {
        if let Err(e) = client.create_topics(topic, Some(partitions), None, &[]).await {
            // Someone else may have created it meanwhile.
            let md = client.metadata(Some(&[topic])).await?;
            if exists(&md).is_none() {
                return Err(e);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let md = client.metadata(Some(&[topic])).await?;
        if let Some(t) = exists(&md) {
            if t.partitions.iter().all(|p| p.leader >= 0) {
                return Ok(t.num_partitions());
            }
        }
        if Instant::now() >= deadline {
            bail!("topic {topic:?} has no leader for every partition after 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn producer_settings(
    common: &CommonArgs,
    topic: &str,
    partitions: i32,
    payload: Payload,
    stop: Stop,
    rate: f64,
    t: &ProducerTuning,
) -> ProducerSettings {
    ProducerSettings {
        bootstrap: common.bootstrap.clone(),
        topic: topic.to_string(),
        partitions,
        payload,
        stop,
        rate: rate.max(0.0),
        acks: t.acks,
        compression: t.compression,
        batch_bytes: t.batch_bytes as usize,
        linger: Duration::from_millis(t.linger_ms),
        in_flight: t.in_flight as usize,
        buffer_bytes: t.buffer_bytes as usize,
        report_interval: report_interval(common),
    }
}

fn report_interval(common: &CommonArgs) -> Option<Duration> {
    (!common.json && !common.report_interval.is_zero()).then_some(common.report_interval)
}

fn tuning_settings(m: &mut Map<String, Value>, partitions: i32, record_size: u64, rate: f64, t: &ProducerTuning) {
    m.insert("partitions".into(), json!(partitions));
    m.insert("record_size".into(), json!(record_size));
    m.insert("rate".into(), json!(rate));
    m.insert("acks".into(), json!(acks_name(t.acks)));
    m.insert("compression".into(), json!(compression_name(t.compression)));
    m.insert("batch_bytes".into(), json!(t.batch_bytes));
    m.insert("linger_ms".into(), json!(t.linger_ms));
    m.insert("in_flight".into(), json!(t.in_flight));
    m.insert("buffer_bytes".into(), json!(t.buffer_bytes));
}

fn producer_extra(r: &mut Report, out: &ProducerOutcome) {
    r.errors = out.errors;
    r.produce_latency = out.latency.summary();
    r.extra.push(("requests".into(), json!(out.requests)));
    if out.requests > 0 {
        r.extra.push((
            "records_per_request".into(),
            json!((out.acked as f64 / out.requests as f64 * 10.0).round() / 10.0),
        ));
    }
    r.extra.push((
        "generator_max_lag_ms".into(),
        json!((out.max_generator_lag.as_secs_f64() * 1e6).round() / 1e3),
    ));
    if let Some(e) = &out.first_error {
        r.extra.push(("first_error".into(), json!(e)));
    }
}

async fn bench_produce(common: &CommonArgs, a: &ProduceArgs) -> Result<Report> {
    let mut admin = consumer::connect(&common.bootstrap).await?;
    let partitions = ensure_topic(&mut admin, &a.topic, a.tuning.partitions).await?;
    drop(admin);
    if a.transactional {
        return bench_produce_transactional(common, a, partitions).await;
    }
    let stop = match (a.count, a.duration) {
        (Some(n), _) => Stop::Count(n),
        (None, Some(d)) => Stop::Duration(d),
        (None, None) => Stop::Duration(Duration::from_secs(10)),
    };
    let payload = Payload::Fixed(producer::filler(a.record_size as usize, 0x5eed));
    let s = producer_settings(common, &a.topic, partitions, payload, stop, a.rate, &a.tuning);
    let out = producer::run_producer(&s).await?;
    let mut r = Report::new(
        "produce",
        &a.topic,
        Throughput {
            records: out.acked,
            bytes: out.bytes,
            elapsed: out.elapsed,
        },
    );
    tuning_settings(&mut r.settings, partitions, a.record_size, a.rate, &a.tuning);
    match stop {
        Stop::Count(n) => r.settings.insert("count".into(), json!(n)),
        Stop::Duration(d) => r.settings.insert("duration_s".into(), json!(d.as_secs_f64())),
    };
    producer_extra(&mut r, &out);
    Ok(r)
}

async fn bench_produce_transactional(common: &CommonArgs, a: &ProduceArgs, partitions: i32) -> Result<Report> {
    let s = txn::TxnBenchSettings {
        bootstrap: common.bootstrap.clone(),
        topic: a.topic.clone(),
        partitions,
        value: producer::filler(a.record_size as usize, 0x5eed),
        acks: a.tuning.acks,
        compression: a.tuning.compression,
        batch_bytes: a.tuning.batch_bytes as usize,
        producers: a.tuning.in_flight as usize,
        duration: a.duration.unwrap_or(Duration::from_secs(10)),
        transaction: Duration::from_millis(a.transaction_ms),
    };
    let (idempotent, transactional) = txn::run(&s).await?;
    let mut r = Report::new("produce-transactional", &a.topic, transactional.throughput);
    tuning_settings(&mut r.settings, partitions, a.record_size, 0.0, &a.tuning);
    r.settings.insert("duration_s".into(), json!(s.duration.as_secs_f64()));
    r.settings.insert("transaction_ms".into(), json!(a.transaction_ms));
    r.produce_latency = transactional.produce_latency.summary();
    r.extra = txn::extra(&idempotent, &transactional);
    Ok(r)
}

async fn bench_consume(common: &CommonArgs, a: &ConsumeArgs) -> Result<Report> {
    let mut client = consumer::connect(&common.bootstrap).await?;
    let mut pos = consumer::positions(&mut client, &a.topic, a.from_beginning).await?;
    drop(client);
    let (limit, duration) = match (a.count, a.duration) {
        (Some(n), _) => (Some(n), None),
        (None, Some(d)) => (None, Some(d)),
        (None, None) if a.from_beginning => (None, None),
        (None, None) => (None, Some(Duration::from_secs(10))),
    };
    // Only an unbounded-by-count-and-time read from the beginning stops at
    // the end offsets.
    if limit.is_some() || duration.is_some() {
        pos.end = None;
    }
    let available: i64 = pos
        .end
        .iter()
        .flatten()
        .map(|(p, e)| e - pos.start.iter().find(|(sp, _)| sp == p).map_or(*e, |s| s.1))
        .sum();
    let fetch = FetchSettings {
        max_bytes: clamp_i32(a.fetch_max_bytes),
        partition_max_bytes: clamp_i32(a.partition_max_bytes),
        max_wait: Duration::from_millis(a.max_wait_ms),
    };
    let control = Arc::new(ConsumeControl::default());
    let progress = report_interval(common).map(|every| {
        let c = control.clone();
        let read = move || (c.records.load(Ordering::Relaxed), c.bytes.load(Ordering::Relaxed));
        tokio::spawn(report::print_progress(read, every, Instant::now()))
    });
    let (started, ended) = consumer::consume(
        &common.bootstrap,
        &a.topic,
        pos.clone(),
        fetch,
        a.connections as usize,
        control.clone(),
        limit,
        duration,
    )
    .await?;
    if let Some(p) = progress {
        p.abort();
    }
    let mut r = Report::new(
        "consume",
        &a.topic,
        Throughput {
            records: control.records.load(Ordering::Relaxed),
            bytes: control.bytes.load(Ordering::Relaxed),
            elapsed: ended.duration_since(started),
        },
    );
    let m = &mut r.settings;
    m.insert("partitions".into(), json!(pos.start.len()));
    m.insert("from_beginning".into(), json!(a.from_beginning));
    m.insert("connections".into(), json!(a.connections));
    m.insert("fetch_max_bytes".into(), json!(a.fetch_max_bytes));
    m.insert("partition_max_bytes".into(), json!(a.partition_max_bytes));
    m.insert("max_wait_ms".into(), json!(a.max_wait_ms));
    if let Some(n) = limit {
        m.insert("count".into(), json!(n));
    }
    if let Some(d) = duration {
        m.insert("duration_s".into(), json!(d.as_secs_f64()));
    }
    if pos.end.is_some() {
        r.extra.push(("records_available_at_start".into(), json!(available)));
    }
    Ok(r)
}

fn clamp_i32(v: u64) -> i32 {
    v.min(i32::MAX as u64) as i32
}

async fn bench_e2e(common: &CommonArgs, a: &E2eArgs) -> Result<Report> {
    if (a.record_size as usize) < producer::STAMP_LEN {
        bail!("--record-size must be at least {} for e2e", producer::STAMP_LEN);
    }
    let mut client = consumer::connect(&common.bootstrap).await?;
    let partitions = ensure_topic(&mut client, &a.topic, a.tuning.partitions).await?;
    let mut pos = consumer::positions(&mut client, &a.topic, false).await?;
    pos.end = None;
    let base = Instant::now();
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()) << 32;
    let control = Arc::new(ConsumeControl::default());
    let e2e = Arc::new(Mutex::new((Latency::new(), 0u64)));
    let fetch = FetchSettings {
        max_bytes: 50 << 20,
        partition_max_bytes: 1 << 20,
        max_wait: Duration::from_millis(100),
    };
    let consumer_task = {
        let (control, e2e, topic) = (control.clone(), e2e.clone(), a.topic.clone());
        tokio::spawn(async move {
            let mut latency = Latency::new();
            let mut matched = 0u64;
            let res = consumer::fetch_loop(
                &mut client,
                &topic,
                pos.start,
                None,
                fetch,
                &control,
                None,
                None,
                |records, arrived| {
                    for r in records {
                        if let Some(sent) = r.value.as_deref().and_then(|v| producer::read_stamp(v, run_id)) {
                            let sent = base + Duration::from_nanos(sent);
                            latency.record(arrived.saturating_duration_since(sent));
                            matched += 1;
                        }
                    }
                    // Publish progress so the coordinator knows when all arrived.
                    let mut g = e2e.lock().expect("e2e lock");
                    g.1 = matched;
                },
            )
            .await;
            e2e.lock().expect("e2e lock").0 = latency;
            res
        })
    };
    let payload = Payload::Stamped {
        run_id,
        base,
        size: a.record_size as usize,
        filler: producer::filler(a.record_size as usize, 0x5eed),
    };
    let s = producer_settings(
        common,
        &a.topic,
        partitions,
        payload,
        Stop::Duration(a.duration),
        a.rate,
        &a.tuning,
    );
    let out = producer::run_producer(&s).await;
    // Stop consuming once every acknowledged record arrived, or after the
    // drain timeout.
    let acked = out.as_ref().map_or(0, |o| o.acked);
    let drain_until = Instant::now() + a.drain_timeout;
    while Instant::now() < drain_until && e2e.lock().expect("e2e lock").1 < acked {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    control.stop.store(true, Ordering::Relaxed);
    let consumed = consumer_task.await;
    let out = out?;
    consumed.map_err(|e| anyhow::anyhow!("consumer task failed: {e}"))??;
    let (latency, matched) = {
        let g = e2e.lock().expect("e2e lock");
        (g.0.clone(), g.1)
    };
    let mut r = Report::new(
        "e2e",
        &a.topic,
        Throughput {
            records: out.acked,
            bytes: out.bytes,
            elapsed: out.elapsed,
        },
    );
    tuning_settings(&mut r.settings, partitions, a.record_size, a.rate, &a.tuning);
    r.settings.insert("duration_s".into(), json!(a.duration.as_secs_f64()));
    producer_extra(&mut r, &out);
    r.e2e_latency = latency.summary();
    r.extra.push(("consumed".into(), json!(matched)));
    let missing = out.acked.saturating_sub(matched);
    r.extra.push(("missing".into(), json!(missing)));
    if missing > 0 {
        // Acknowledged but never seen: count it as a failure.
        r.errors += missing;
    }
    Ok(r)
}

#[cfg(test)]
mod tests;
