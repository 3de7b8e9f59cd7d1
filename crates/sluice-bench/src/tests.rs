//! Argument parsing.

use clap::{Parser, Subcommand};

use super::*;

#[derive(Parser, Debug)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand, Debug)]
enum Top {
    Bench(BenchArgs),
}

fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
    let mut full = vec!["sluice", "bench"];
    full.extend_from_slice(args);
    Cli::try_parse_from(full).map(|c| match c.command {
        Top::Bench(b) => b,
    })
}

#[test]
fn produce_defaults() {
    let b = parse(&["produce", "--topic", "t"]).unwrap();
    assert!(!b.common.json);
    let BenchCommand::Produce(p) = b.command else {
        panic!("not produce")
    };
    assert_eq!(p.topic, "t");
    assert_eq!(p.record_size, 1024);
    assert_eq!(p.count, None);
    assert_eq!(p.duration, None);
    assert_eq!(p.rate, 0.0);
    assert_eq!(p.tuning.partitions, 8);
    assert_eq!(p.tuning.acks, Acks::All);
    assert_eq!(p.tuning.compression, Compression::None);
    assert_eq!(p.tuning.batch_bytes, 1 << 20);
    assert_eq!(p.tuning.linger_ms, 5);
    assert_eq!(p.tuning.in_flight, 5);
}

#[test]
fn produce_everything() {
    let b = parse(&[
        "produce",
        "--topic",
        "t",
        "--partitions",
        "3",
        "--record-size",
        "100",
        "--duration",
        "2s",
        "--rate",
        "2000",
        "--acks",
        "1",
        "--compression",
        "zstd",
        "--batch-bytes",
        "64KiB",
        "--linger-ms",
        "0",
        "--connections",
        "2",
        "--bootstrap",
        "127.0.0.1:1234",
        "--json",
    ])
    .unwrap();
    assert!(b.common.json);
    assert_eq!(b.common.bootstrap, "127.0.0.1:1234");
    let BenchCommand::Produce(p) = b.command else {
        panic!("not produce")
    };
    assert_eq!(p.tuning.partitions, 3);
    assert_eq!(p.record_size, 100);
    assert_eq!(p.duration, Some(Duration::from_secs(2)));
    assert_eq!(p.rate, 2000.0);
    assert_eq!(p.tuning.acks, Acks::Leader);
    assert_eq!(p.tuning.compression, Compression::Zstd);
    assert_eq!(p.tuning.batch_bytes, 65536);
    assert_eq!(p.tuning.linger_ms, 0);
    assert_eq!(p.tuning.in_flight, 2);
    // --in-flight is the same option.
    let b = parse(&["produce", "--topic", "t", "--in-flight", "7"]).unwrap();
    let BenchCommand::Produce(p) = b.command else {
        panic!("not produce")
    };
    assert_eq!(p.tuning.in_flight, 7);
}

#[test]
fn produce_rejects_bad_values() {
    assert!(parse(&["produce"]).is_err(), "--topic is required");
    assert!(parse(&["produce", "--topic", "t", "--count", "5", "--duration", "1s"]).is_err());
    assert!(parse(&["produce", "--topic", "t", "--acks", "2"]).is_err());
    assert!(parse(&["produce", "--topic", "t", "--compression", "brotli"]).is_err());
    assert!(parse(&["produce", "--topic", "t", "--partitions", "0"]).is_err());
    assert!(parse(&["produce", "--topic", "t", "--in-flight", "0"]).is_err());
    assert!(parse(&["produce", "--topic", "t", "--duration", "soon"]).is_err());
}

#[test]
fn consume_and_e2e() {
    let b = parse(&["--json", "consume", "--topic", "t", "--from-beginning", "--count", "10"]).unwrap();
    assert!(b.common.json, "--json is global");
    let BenchCommand::Consume(c) = b.command else {
        panic!("not consume")
    };
    assert!(c.from_beginning);
    assert_eq!(c.count, Some(10));
    assert_eq!(c.connections, 1);
    assert_eq!(c.fetch_max_bytes, 50 << 20);
    assert_eq!(c.partition_max_bytes, 1 << 20);

    let b = parse(&[
        "e2e",
        "--topic",
        "t",
        "--rate",
        "500",
        "--duration",
        "3s",
        "--record-size",
        "64",
    ])
    .unwrap();
    let BenchCommand::E2e(e) = b.command else {
        panic!("not e2e")
    };
    assert_eq!(e.rate, 500.0);
    assert_eq!(e.duration, Duration::from_secs(3));
    assert_eq!(e.record_size, 64);
    assert_eq!(e.tuning.acks, Acks::All);
    let b = parse(&["e2e", "--topic", "t"]).unwrap();
    let BenchCommand::E2e(e) = b.command else {
        panic!("not e2e")
    };
    assert_eq!(e.rate, 1000.0);
    assert_eq!(e.duration, Duration::from_secs(10));
}

#[test]
fn settings_from_args() {
    assert!(parse(&["produce", "--topic", "t", "--rate=-5"]).is_err());
    let b = parse(&["produce", "--topic", "t", "--linger-ms", "0"]).unwrap();
    let BenchCommand::Produce(p) = &b.command else {
        panic!("not produce")
    };
    let s = producer_settings(
        &b.common,
        "t",
        8,
        Payload::Fixed(producer::filler(10, 1)),
        Stop::Count(3),
        -1.0,
        &p.tuning,
    );
    assert_eq!(s.rate, 0.0, "negative rates mean unthrottled");
    assert_eq!(s.linger, Duration::ZERO);
    assert_eq!(s.batch_bytes, 1 << 20);
    assert_eq!(s.report_interval, Some(Duration::from_secs(5)));
    let mut m = Map::new();
    tuning_settings(&mut m, 8, 1024, 0.0, &p.tuning);
    assert_eq!(m["acks"], "all");
    assert_eq!(m["compression"], "none");
    assert_eq!(m["partitions"], 8);
}

#[test]
fn produce_transactional() {
    let b = parse(&["produce", "--topic", "t", "--transactional"]).unwrap();
    let BenchCommand::Produce(p) = b.command else {
        panic!("not produce")
    };
    assert!(p.transactional);
    assert_eq!(p.transaction_ms, 100);
    let b = parse(&["produce", "--topic", "t", "--transactional", "--transaction-ms", "250"]).unwrap();
    let BenchCommand::Produce(p) = b.command else {
        panic!("not produce")
    };
    assert_eq!(p.transaction_ms, 250);
    // The interval means nothing without transactions; a count or a rate does
    // not fit the two timed phases.
    assert!(parse(&["produce", "--topic", "t", "--transaction-ms", "250"]).is_err());
    assert!(parse(&["produce", "--topic", "t", "--transactional", "--count", "10"]).is_err());
    assert!(parse(&["produce", "--topic", "t", "--transactional", "--rate", "10"]).is_err());
}

#[test]
fn transactional_report_compares_the_phases() {
    use report::{Latency, Throughput};
    let phase = |records: u64, commits: &[u64]| {
        let mut commit_latency = Latency::new();
        for ms in commits {
            commit_latency.record(Duration::from_millis(*ms));
        }
        txn::PhaseOutcome {
            throughput: Throughput {
                records,
                bytes: records * 1000,
                elapsed: Duration::from_secs(10),
            },
            produce_latency: Latency::new(),
            commit_latency,
            transactions: commits.len() as u64,
        }
    };
    let extra = txn::extra(&phase(100_000, &[]), &phase(85_000, &[2, 3, 4]));
    let get = |k: &str| extra.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(get("idempotent_records_per_sec"), json!(10_000.0));
    assert_eq!(get("transactional_to_idempotent_ratio"), json!(0.85));
    assert_eq!(get("transactions"), json!(3));
    assert_eq!(get("commit_latency_ms")["count"], json!(3));
    let p50 = get("commit_latency_ms")["p50"].as_f64().unwrap();
    assert!((p50 - 3.0).abs() < 0.01, "{p50}");
}
