//! `sluice produce`: lines from stdin (or a file) as records.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use sluice_client::{partition_for_key, Acks, Client, Compression, ProduceRecord};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{parse_acks, parse_key_value, wait_for_topic, ConnArgs};

/// Compression codec for produced batches.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionArg {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Self {
        match c {
            CompressionArg::None => Compression::None,
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Snappy => Compression::Snappy,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        }
    }
}

/// Write records read from stdin, one line per record.
#[derive(Args, Debug, Clone)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub conn: ConnArgs,

    /// Topic to write to.
    pub topic: String,

    /// Write every record to this partition. Without it, keyed records go to
    /// murmur2(key) % partitions (as the Java client and librdkafka's
    /// murmur2 partitioner do) and unkeyed records are spread round-robin.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    pub partition: Option<i32>,

    /// Split each line at the first SEP into key and value (`KEY SEP VALUE`);
    /// a line without SEP is an error. `\t` stands for a tab. Without this
    /// option the whole line is the value and the key is null.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,

    /// Header to add to every record, as KEY=VALUE; repeat for several.
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub headers: Vec<(String, String)>,

    /// Acknowledgement to wait for: 0 (none, fire and forget), 1 (leader) or
    /// all (fully committed).
    #[arg(long, default_value = "all", value_name = "0|1|all", value_parser = parse_acks)]
    pub acks: Acks,

    /// Compression codec for record batches.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,

    /// Send a produce request once this many lines are buffered.
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_records: u64,

    /// Send a produce request once this many bytes are buffered.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_bytes: u64,

    /// Send buffered lines once no new line has arrived for this many
    /// milliseconds, so that slow or interactive input goes out promptly.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    pub linger_ms: u64,
}

/// Run `sluice produce ...`: read stdin to the end, producing each line.
/// Prints nothing on success; errors go to stderr and the exit code.
pub async fn run_produce(args: ProduceArgs) -> Result<()> {
    let mut cfg = args.conn.client_config();
    cfg.compression = args.compression.into();
    let mut client = Client::connect_with(&args.conn.bootstrap, cfg).await?;
    let topic = wait_for_topic(&mut client, &args.topic).await?;
    let num_partitions = topic.num_partitions();
    if num_partitions == 0 {
        bail!("topic {:?} has no partitions", args.topic);
    }
    if let Some(p) = args.partition {
        if p >= num_partitions {
            bail!(
                "topic {:?} has {num_partitions} partitions; there is no partition {p}",
                args.topic
            );
        }
    }
    let separator = args.key_separator.as_deref().map(unescape_separator);
    if separator.as_deref() == Some("") {
        bail!("--key-separator must not be empty");
    }
    let headers: Vec<(String, Option<Bytes>)> = args
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Some(Bytes::from(v.clone()))))
        .collect();

    let mut producer = LineProducer {
        client: &mut client,
        topic: &args.topic,
        acks: args.acks,
        pending: BTreeMap::new(),
        pending_records: 0,
        pending_bytes: 0,
    };
    let mut stdin = BufReader::with_capacity(1 << 16, tokio::io::stdin());
    let linger = Duration::from_millis(args.linger_ms);
    let mut line = Vec::new();
    let mut line_no: u64 = 0;
    let mut round_robin: i32 = 0;
    loop {
        // While lines are buffered, wait at most `linger` for the next one
        // (bytes of a line read so far stay in `line`: read_until appends).
        let read = if producer.pending_records > 0 {
            match tokio::time::timeout(linger, stdin.read_until(b'\n', &mut line)).await {
                Ok(r) => r,
                Err(_) => {
                    producer.flush().await?;
                    continue;
                }
            }
        } else {
            stdin.read_until(b'\n', &mut line).await
        };
        read.context("reading stdin")?;
        if line.is_empty() {
            break; // end of input
        }
        line_no += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let (key, value) = match &separator {
            None => (None, Bytes::copy_from_slice(&line)),
            Some(sep) => match split_once(&line, sep.as_bytes()) {
                Some((k, v)) => (Some(Bytes::copy_from_slice(k)), Bytes::copy_from_slice(v)),
                None => {
                    producer.flush().await?;
                    bail!("line {line_no} has no key separator {sep:?}; lines before it were produced");
                }
            },
        };
        let partition = match (args.partition, &key) {
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, num_partitions),
            (None, None) => {
                let p = round_robin;
                round_robin = (round_robin + 1) % num_partitions;
                p
            }
        };
        let record = ProduceRecord {
            key,
            value: Some(value),
            headers: headers.clone(),
            timestamp: None,
        };
        line.clear();
        producer.push(partition, record);
        if producer.pending_records >= args.batch_records || producer.pending_bytes >= args.batch_bytes {
            producer.flush().await?;
        }
    }
    producer.flush().await?;
    Ok(())
}

struct LineProducer<'a> {
    client: &'a mut Client,
    topic: &'a str,
    acks: Acks,
    pending: BTreeMap<i32, Vec<ProduceRecord>>,
    pending_records: u64,
    pending_bytes: u64,
}

impl LineProducer<'_> {
    fn push(&mut self, partition: i32, record: ProduceRecord) {
        self.pending_records += 1;
        self.pending_bytes += record.approx_size() as u64;
        self.pending.entry(partition).or_default().push(record);
    }

    async fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_records = 0;
        self.pending_bytes = 0;
        let batches: Vec<(i32, &[ProduceRecord])> = pending.iter().map(|(p, r)| (*p, r.as_slice())).collect();
        self.client.produce_partitions(self.topic, &batches, self.acks).await?;
        Ok(())
    }
}

pub(super) fn split_once<'a>(line: &'a [u8], sep: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    if sep.is_empty() || line.len() < sep.len() {
        return None;
    }
    let at = line.windows(sep.len()).position(|w| w == sep)?;
    Some((&line[..at], &line[at + sep.len()..]))
}

pub(super) fn unescape_separator(s: &str) -> String {
    s.replace("\\t", "\t")
}
