//! `sluice consume`: records printed as they arrive, or up to an end.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use kafka_protocol::error::ResponseError;
use sluice_client::error::response_error;
use sluice_client::{Client, ConsumedRecord, IsolationLevel, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};

use super::{wait_for_topic, ConnArgs};

/// Isolation level for reading.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationArg {
    /// Only committed data: stop at the last stable offset and hide aborted
    /// transactions.
    ReadCommitted,
    /// Everything up to the high watermark, including open and aborted
    /// transactions.
    ReadUncommitted,
}

/// Read records and print them to stdout, one per line.
#[derive(Args, Debug, Clone)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub conn: ConnArgs,

    /// Topic to read from.
    pub topic: String,

    /// Read only this partition (default: all partitions of the topic).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    pub partition: Option<i32>,

    /// Start at the earliest offset still in the log (default: start at the
    /// end and print only new records).
    #[arg(long, conflicts_with = "offset")]
    pub from_beginning: bool,

    /// Start at this offset in each partition read; a negative N starts N
    /// records before the end. An offset outside the log is reset to the
    /// nearest end with a warning.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub offset: Option<i64>,

    /// Exit after printing this many records in total.
    #[arg(long, value_name = "N")]
    pub max_messages: Option<u64>,

    /// Exit after this many milliseconds without new records (default: run
    /// until killed or --max-messages is reached).
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,

    /// Print the record key before the value (empty for a null key).
    #[arg(long)]
    pub print_key: bool,

    /// Print the headers before the key and value, as KEY=VALUE joined by
    /// commas (a header with a null value prints as KEY).
    #[arg(long)]
    pub print_headers: bool,

    /// Print the record's offset first.
    #[arg(long)]
    pub print_offset: bool,

    /// Print the record's partition first (before the offset).
    #[arg(long)]
    pub print_partition: bool,

    /// Print the record's timestamp (ms since the epoch) after the offset.
    #[arg(long)]
    pub print_timestamp: bool,

    /// Which records to see when transactions are in use.
    #[arg(long, value_enum, default_value_t = IsolationArg::ReadCommitted)]
    pub isolation_level: IsolationArg,
}

/// Run `sluice consume ...`.
///
/// Output: one line per record, fields separated by tabs, in the order
/// partition, offset, timestamp, headers, key, value (each only when asked
/// for; the value always). Records of one partition come in offset order.
pub async fn run_consume(args: ConsumeArgs) -> Result<()> {
    let mut cfg = args.conn.client_config();
    cfg.isolation_level = match args.isolation_level {
        IsolationArg::ReadCommitted => IsolationLevel::ReadCommitted,
        IsolationArg::ReadUncommitted => IsolationLevel::ReadUncommitted,
    };
    let mut client = Client::connect_with(&args.conn.bootstrap, cfg).await?;
    let topic = wait_for_topic(&mut client, &args.topic).await?;
    let partitions: Vec<i32> = match args.partition {
        Some(p) => {
            if !topic.partitions.iter().any(|x| x.partition == p) {
                bail!(
                    "topic {:?} has {} partitions; there is no partition {p}",
                    args.topic,
                    topic.partitions.len()
                );
            }
            vec![p]
        }
        None => topic.partitions.iter().map(|p| p.partition).collect(),
    };
    let name = args.topic.as_str();

    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    for &p in &partitions {
        let start = match args.offset {
            Some(n) if n >= 0 => n,
            Some(n) => {
                let end = client.list_offsets(name, p, LATEST_TIMESTAMP).await?;
                let begin = client.list_offsets(name, p, EARLIEST_TIMESTAMP).await?;
                (end + n).max(begin)
            }
            None if args.from_beginning => client.list_offsets(name, p, EARLIEST_TIMESTAMP).await?,
            None => client.list_offsets(name, p, LATEST_TIMESTAMP).await?,
        };
        positions.insert(p, start);
    }

    let printer = Printer {
        partition: args.print_partition,
        offset: args.print_offset,
        timestamp: args.print_timestamp,
        headers: args.print_headers,
        key: args.print_key,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut printed: u64 = 0;
    let timeout = args.timeout_ms.map(Duration::from_millis);
    let mut last_data = Instant::now();
    let poll = Duration::from_millis(500);
    let mut retry_backoff = Duration::from_millis(50);

    if args.max_messages == Some(0) {
        return Ok(());
    }
    loop {
        let max_wait = match timeout {
            Some(t) => {
                let idle = last_data.elapsed();
                if idle >= t {
                    break;
                }
                poll.min(t - idle)
            }
            None => poll,
        };
        let round_start = Instant::now();
        let pos: Vec<(i32, i64)> = positions.iter().map(|(p, o)| (*p, *o)).collect();
        let results = client.fetch_many(name, &pos, max_wait, 50 << 20, 1 << 20).await?;
        let mut got_any = false;
        let mut had_retriable = false;
        for (p, res) in results {
            match res {
                Ok(fp) => {
                    positions.insert(p, fp.next_offset);
                    for r in &fp.records {
                        if args.max_messages.is_some_and(|m| printed >= m) {
                            break;
                        }
                        if let Err(e) = printer.print(&mut out, r) {
                            return quiet_broken_pipe(e);
                        }
                        printed += 1;
                        got_any = true;
                    }
                }
                Err(e) => match response_error(&e) {
                    Some(ResponseError::OffsetOutOfRange) => {
                        let at = positions[&p];
                        let begin = client.list_offsets(name, p, EARLIEST_TIMESTAMP).await?;
                        let end = client.list_offsets(name, p, LATEST_TIMESTAMP).await?;
                        let reset = if at < begin { begin } else { end };
                        eprintln!(
                            "warning: offset {at} is out of range for {name} partition {p} \
                             (log has {begin}..{end}); resetting to {reset}"
                        );
                        positions.insert(p, reset);
                    }
                    Some(err) if err.is_retriable() => {
                        tracing::debug!("retrying fetch: {e:#}");
                        had_retriable = true;
                    }
                    _ => return Err(e),
                },
            }
        }
        if let Err(e) = out.flush() {
            return quiet_broken_pipe(e);
        }
        if args.max_messages.is_some_and(|m| printed >= m) {
            break;
        }
        if got_any {
            last_data = Instant::now();
            retry_backoff = Duration::from_millis(50);
        } else if had_retriable {
            tokio::time::sleep(retry_backoff).await;
            retry_backoff = (retry_backoff * 2).min(Duration::from_secs(1));
        } else if round_start.elapsed() < max_wait / 2 {
            // The broker answered early with nothing; do not spin.
            tokio::time::sleep(Duration::from_millis(20).min(max_wait)).await;
        }
    }
    if let Err(e) = out.flush() {
        return quiet_broken_pipe(e);
    }
    Ok(())
}

fn quiet_broken_pipe(e: std::io::Error) -> Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(anyhow::Error::new(e).context("writing to stdout"))
    }
}

/// Which fields to print for each consumed record.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Printer {
    pub(super) partition: bool,
    pub(super) offset: bool,
    pub(super) timestamp: bool,
    pub(super) headers: bool,
    pub(super) key: bool,
}

impl Printer {
    pub(super) fn print(&self, out: &mut impl Write, r: &ConsumedRecord) -> std::io::Result<()> {
        if self.partition {
            write!(out, "{}\t", r.partition)?;
        }
        if self.offset {
            write!(out, "{}\t", r.offset)?;
        }
        if self.timestamp {
            write!(out, "{}\t", r.timestamp)?;
        }
        if self.headers {
            for (i, (k, v)) in r.headers.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                out.write_all(k.as_bytes())?;
                if let Some(v) = v {
                    out.write_all(b"=")?;
                    out.write_all(v)?;
                }
            }
            out.write_all(b"\t")?;
        }
        if self.key {
            if let Some(k) = &r.key {
                out.write_all(k)?;
            }
            out.write_all(b"\t")?;
        }
        if let Some(v) = &r.value {
            out.write_all(v)?;
        }
        out.write_all(b"\n")
    }
}
