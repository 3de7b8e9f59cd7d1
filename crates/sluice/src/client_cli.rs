//! `sluice topic`, `sluice produce`, `sluice consume` and `sluice group`: clap
//! definitions and runners, on `sluice_client`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use kafka_protocol::error::ResponseError;
use tokio::io::{AsyncBufReadExt, BufReader};

use sluice_client::error::response_error;

mod group;

pub use group::{run_group, GroupArgs};

use sluice_client::{
    partition_for_key, Acks, AlterConfigOp, Client, ClientConfig, Compression, ConsumedRecord, IsolationLevel,
    ProduceRecord, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP,
};

/// Connection options shared by the client commands.
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// Broker to connect to first, as HOST:PORT (several may be given,
    /// separated by commas); the partition leaders' addresses come from its
    /// metadata.
    #[arg(
        long,
        global = true,
        env = "SLUICE_BOOTSTRAP",
        default_value = "127.0.0.1:9092",
        value_name = "HOST:PORT"
    )]
    pub bootstrap: String,

    /// Timeout in milliseconds for connecting and for each request to the
    /// broker.
    #[arg(long, global = true, default_value_t = 30_000, value_name = "MS")]
    pub request_timeout_ms: u64,
}

impl ConnArgs {
    fn client_config(&self) -> ClientConfig {
        ClientConfig {
            client_id: "sluice-cli".to_string(),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            ..ClientConfig::default()
        }
    }
}

// --------------------------------------------------------------------- topic

/// Create, list, describe, alter and delete topics.
#[derive(Args, Debug, Clone)]
pub struct TopicArgs {
    #[command(flatten)]
    pub conn: ConnArgs,

    #[command(subcommand)]
    pub command: TopicCommand,
}

/// `sluice topic` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Name of the topic to create.
        name: String,
        /// Number of partitions (default: the broker's default).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
        partitions: Option<i32>,
        /// Replication factor (default: the broker's default).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i16).range(1..))]
        replication_factor: Option<i16>,
        /// Topic config to set, as KEY=VALUE (e.g. retention.ms=86400000);
        /// repeat for several.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
        /// Succeed without changes if the topic already exists.
        #[arg(long)]
        if_not_exists: bool,
    },
    /// List topic names, one per line, sorted.
    List {
        /// Leave out internal topics (such as __consumer_offsets).
        #[arg(long)]
        exclude_internal: bool,
    },
    /// Show a topic's id, partitions (leader, replicas, log start offset and
    /// high watermark) and the configs set on it.
    Describe {
        /// Name of the topic to describe.
        name: String,
        /// Show every config with its source, not only those set on the topic.
        #[arg(long)]
        all_configs: bool,
    },
    /// Add partitions to a topic and/or change its configs.
    Alter {
        /// Name of the topic to alter.
        name: String,
        /// New total number of partitions (can only grow).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
        partitions: Option<i32>,
        /// Topic config to set, as KEY=VALUE; repeat for several.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
        /// Topic config to remove (back to the default); repeat for several.
        #[arg(long = "delete-config", value_name = "KEY")]
        delete_configs: Vec<String>,
    },
    /// Delete a topic and its data.
    Delete {
        /// Name of the topic to delete.
        name: String,
        /// Succeed without changes if the topic does not exist.
        #[arg(long)]
        if_exists: bool,
    },
}

/// Run `sluice topic ...`.
pub async fn run_topic(args: TopicArgs) -> Result<()> {
    let mut cfg = args.conn.client_config();
    // Describe reports the high watermark, not the last stable offset.
    cfg.isolation_level = IsolationLevel::ReadUncommitted;
    let mut client = Client::connect_with(&args.conn.bootstrap, cfg).await?;
    let mut out = std::io::stdout().lock();
    match args.command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
            if_not_exists,
        } => {
            match client
                .create_topics(&name, partitions, replication_factor, &configs)
                .await
            {
                Ok(_) => writeln!(out, "Created topic {name}.")?,
                Err(e) if if_not_exists && response_error(&e) == Some(ResponseError::TopicAlreadyExists) => {
                    writeln!(out, "Topic {name} already exists.")?
                }
                Err(e) => return Err(e),
            }
        }
        TopicCommand::List { exclude_internal } => {
            let md = client.metadata(None).await?;
            let mut names: Vec<&str> = md
                .topics
                .iter()
                .filter(|t| t.error_code == 0 && !(exclude_internal && t.is_internal))
                .map(|t| t.name.as_str())
                .collect();
            names.sort_unstable();
            for n in names {
                writeln!(out, "{n}")?;
            }
        }
        TopicCommand::Describe { name, all_configs } => {
            let t = client.topic(&name).await?;
            let configs = client.describe_configs(&name).await?;
            let mut shown: Vec<String> = configs
                .iter()
                .filter(|c| all_configs || c.is_topic_override())
                .map(|c| {
                    let v = if c.is_sensitive {
                        "(sensitive)".to_string()
                    } else {
                        c.value.clone().unwrap_or_else(|| "(null)".to_string())
                    };
                    if all_configs {
                        format!("{}={} ({:?})", c.name, v, c.source)
                    } else {
                        format!("{}={}", c.name, v)
                    }
                })
                .collect();
            shown.sort();
            let rf = t.partitions.first().map_or(0, |p| p.replicas.len());
            writeln!(
                out,
                "Topic: {}\tTopicId: {}\tPartitionCount: {}\tReplicationFactor: {}\tConfigs: {}",
                t.name,
                t.topic_id,
                t.partitions.len(),
                rf,
                shown.join(",")
            )?;
            for p in &t.partitions {
                let start = client.list_offsets(&name, p.partition, EARLIEST_TIMESTAMP).await?;
                let end = client.list_offsets(&name, p.partition, LATEST_TIMESTAMP).await?;
                writeln!(
                    out,
                    "\tPartition: {}\tLeader: {}\tReplicas: {}\tIsr: {}\tLogStartOffset: {}\tHighWatermark: {}",
                    p.partition,
                    p.leader,
                    join_ids(&p.replicas),
                    join_ids(&p.isr),
                    start,
                    end
                )?;
            }
        }
        TopicCommand::Alter {
            name,
            partitions,
            configs,
            delete_configs,
        } => {
            if partitions.is_none() && configs.is_empty() && delete_configs.is_empty() {
                bail!("nothing to alter: give --partitions, --config or --delete-config");
            }
            if let Some(n) = partitions {
                let current = client.topic(&name).await?.num_partitions();
                if n != current {
                    client.create_partitions(&name, n).await?;
                }
            }
            if !configs.is_empty() || !delete_configs.is_empty() {
                let ops: Vec<AlterConfigOp> = configs
                    .into_iter()
                    .map(|(k, v)| AlterConfigOp::Set(k, v))
                    .chain(delete_configs.into_iter().map(AlterConfigOp::Delete))
                    .collect();
                client.incremental_alter_configs(&name, &ops).await?;
            }
            writeln!(out, "Altered topic {name}.")?;
        }
        TopicCommand::Delete { name, if_exists } => match client.delete_topics(&name).await {
            Ok(()) => writeln!(out, "Deleted topic {name}.")?,
            Err(e) if if_exists && response_error(&e) == Some(ResponseError::UnknownTopicOrPartition) => {
                writeln!(out, "Topic {name} does not exist.")?
            }
            Err(e) => return Err(e),
        },
    }
    out.flush()?;
    Ok(())
}

fn join_ids(ids: &[i32]) -> String {
    ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

// ------------------------------------------------------------------- produce

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

fn split_once<'a>(line: &'a [u8], sep: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    if sep.is_empty() || line.len() < sep.len() {
        return None;
    }
    let at = line.windows(sep.len()).position(|w| w == sep)?;
    Some((&line[..at], &line[at + sep.len()..]))
}

fn unescape_separator(s: &str) -> String {
    s.replace("\\t", "\t")
}

// ------------------------------------------------------------------- consume

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

/// How long produce and consume wait for a just-created topic to appear in
/// the metadata with a leader for every partition.
const TOPIC_WAIT: Duration = Duration::from_secs(5);

/// Metadata for `name`, retrying briefly while it is unknown or has
/// partitions without a leader (as right after creation, until the metadata
/// has propagated).
async fn wait_for_topic(client: &mut Client, name: &str) -> Result<sluice_client::TopicInfo> {
    let deadline = Instant::now() + TOPIC_WAIT;
    loop {
        let res = client.topic(name).await;
        let retriable = match &res {
            Ok(t) => t.partitions.iter().any(|p| p.leader < 0),
            Err(e) => matches!(
                response_error(e),
                Some(ResponseError::UnknownTopicOrPartition | ResponseError::LeaderNotAvailable)
            ),
        };
        if !retriable || Instant::now() >= deadline {
            return res;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
struct Printer {
    partition: bool,
    offset: bool,
    timestamp: bool,
    headers: bool,
    key: bool,
}

impl Printer {
    fn print(&self, out: &mut impl Write, r: &ConsumedRecord) -> std::io::Result<()> {
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

// ------------------------------------------------------------------- parsing

/// Parse `KEY=VALUE` (split at the first `=`; the value may contain `=` or be empty).
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Parse `0`, `1`, `all` or `-1`.
pub fn parse_acks(s: &str) -> Result<Acks, String> {
    match s.to_ascii_lowercase().as_str() {
        "0" => Ok(Acks::None),
        "1" => Ok(Acks::Leader),
        "all" | "-1" => Ok(Acks::All),
        _ => Err(format!("expected 0, 1 or all, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::group::{GroupCommand, ResetOffsetsArgs, ResetTarget, TopicSpec};
    use super::*;
    use clap::{CommandFactory, Parser};
    use kafka_protocol::records::TimestampType;

    /// Mirrors how the `sluice` binary embeds these commands.
    #[derive(Parser, Debug)]
    #[command(name = "sluice")]
    struct Cli {
        #[command(subcommand)]
        command: Commands,
    }

    #[derive(Subcommand, Debug)]
    enum Commands {
        Topic(TopicArgs),
        Produce(ProduceArgs),
        Consume(ConsumeArgs),
        Group(GroupArgs),
    }

    fn parse(args: &[&str]) -> Result<Commands, clap::Error> {
        Cli::try_parse_from(std::iter::once("sluice").chain(args.iter().copied())).map(|c| c.command)
    }

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(a.get_help().is_some(), "{path} {id} has no help text");
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() == "help" {
                    continue;
                }
                assert!(sub.get_about().is_some(), "{path} {} has no about", sub.get_name());
                walk(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        walk(&Cli::command(), "sluice");
    }

    #[test]
    fn key_value_parsing() {
        assert_eq!(parse_key_value("a=b"), Ok(("a".into(), "b".into())));
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_key_value("a="), Ok(("a".into(), "".into())));
        assert!(parse_key_value("a").is_err());
        assert!(parse_key_value("=b").is_err());
    }

    #[test]
    fn acks_parsing() {
        assert_eq!(parse_acks("0"), Ok(Acks::None));
        assert_eq!(parse_acks("1"), Ok(Acks::Leader));
        assert_eq!(parse_acks("all"), Ok(Acks::All));
        assert_eq!(parse_acks("-1"), Ok(Acks::All));
        assert!(parse_acks("2").is_err());
    }

    #[test]
    fn topic_create_parses() {
        let Commands::Topic(t) = parse(&[
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--replication-factor",
            "1",
            "--config",
            "retention.ms=1000",
            "--config",
            "cleanup.policy=compact",
            "--bootstrap",
            "10.0.0.1:9999",
        ])
        .unwrap() else {
            panic!("not a topic command")
        };
        assert_eq!(t.conn.bootstrap, "10.0.0.1:9999");
        match t.command {
            TopicCommand::Create {
                name,
                partitions,
                replication_factor,
                configs,
                if_not_exists,
            } => {
                assert_eq!(name, "orders");
                assert_eq!(partitions, Some(3));
                assert_eq!(replication_factor, Some(1));
                assert_eq!(
                    configs,
                    vec![
                        ("retention.ms".to_string(), "1000".to_string()),
                        ("cleanup.policy".to_string(), "compact".to_string())
                    ]
                );
                assert!(!if_not_exists);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["topic", "create", "x", "--partitions", "0"]).is_err());
        assert!(parse(&["topic", "create", "x", "--config", "novalue"]).is_err());
    }

    #[test]
    fn bootstrap_before_subcommand_and_default() {
        let Commands::Topic(t) = parse(&["topic", "--bootstrap", "h:1", "list"]).unwrap() else {
            panic!()
        };
        assert_eq!(t.conn.bootstrap, "h:1");
        assert!(matches!(t.command, TopicCommand::List { .. }));
    }

    #[test]
    fn topic_alter_parses() {
        let Commands::Topic(t) = parse(&[
            "topic",
            "alter",
            "t",
            "--partitions",
            "6",
            "--config",
            "a=1",
            "--delete-config",
            "b",
            "--delete-config",
            "c",
        ])
        .unwrap() else {
            panic!()
        };
        match t.command {
            TopicCommand::Alter {
                name,
                partitions,
                configs,
                delete_configs,
            } => {
                assert_eq!(name, "t");
                assert_eq!(partitions, Some(6));
                assert_eq!(configs, vec![("a".to_string(), "1".to_string())]);
                assert_eq!(delete_configs, vec!["b".to_string(), "c".to_string()]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn produce_parses() {
        let Commands::Produce(p) = parse(&[
            "produce",
            "t",
            "--key-separator",
            ":",
            "--header",
            "a=1",
            "--header",
            "b=x=y",
            "--acks",
            "1",
            "--partition",
            "2",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(p.topic, "t");
        assert_eq!(p.key_separator.as_deref(), Some(":"));
        assert_eq!(p.headers, vec![("a".into(), "1".into()), ("b".into(), "x=y".into())]);
        assert_eq!(p.acks, Acks::Leader);
        assert_eq!(p.partition, Some(2));
        assert_eq!(p.batch_records, 1000);
        assert_eq!(p.compression, CompressionArg::None);

        let Commands::Produce(p) = parse(&["produce", "t"]).unwrap() else {
            panic!()
        };
        assert_eq!(p.acks, Acks::All);
        assert!(parse(&["produce", "t", "--acks", "2"]).is_err());
    }

    #[test]
    fn consume_parses() {
        let Commands::Consume(c) = parse(&[
            "consume",
            "t",
            "--from-beginning",
            "--max-messages",
            "10",
            "--timeout-ms",
            "5000",
            "--print-key",
            "--print-headers",
            "--print-offset",
        ])
        .unwrap() else {
            panic!()
        };
        assert!(c.from_beginning && c.print_key && c.print_headers && c.print_offset);
        assert_eq!(c.max_messages, Some(10));
        assert_eq!(c.timeout_ms, Some(5000));
        assert_eq!(c.partition, None);
        assert_eq!(c.isolation_level, IsolationArg::ReadCommitted);

        let Commands::Consume(c) = parse(&["consume", "t", "--offset", "-5"]).unwrap() else {
            panic!()
        };
        assert_eq!(c.offset, Some(-5));
        assert!(parse(&["consume", "t", "--offset", "3", "--from-beginning"]).is_err());
    }

    #[test]
    fn separator_splitting() {
        assert_eq!(split_once(b"k1:v:1", b":"), Some((&b"k1"[..], &b"v:1"[..])));
        assert_eq!(split_once(b"k1::v", b"::"), Some((&b"k1"[..], &b"v"[..])));
        assert_eq!(split_once(b":v", b":"), Some((&b""[..], &b"v"[..])));
        assert_eq!(split_once(b"novalue", b":"), None);
        assert_eq!(unescape_separator("\\t"), "\t");
    }

    #[test]
    fn printing() {
        let r = ConsumedRecord {
            partition: 2,
            offset: 41,
            timestamp: 1000,
            timestamp_type: TimestampType::Creation,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v")),
            headers: vec![("a".into(), Some(Bytes::from_static(b"1"))), ("b".into(), None)],
        };
        let mut out = Vec::new();
        Printer::default().print(&mut out, &r).unwrap();
        assert_eq!(out, b"v\n");
        out.clear();
        Printer {
            partition: true,
            offset: true,
            timestamp: true,
            headers: true,
            key: true,
        }
        .print(&mut out, &r)
        .unwrap();
        assert_eq!(String::from_utf8(out.clone()).unwrap(), "2\t41\t1000\ta=1,b\tk\tv\n");
        out.clear();
        let null = ConsumedRecord {
            key: None,
            value: None,
            headers: vec![],
            ..r
        };
        Printer {
            key: true,
            headers: true,
            ..Printer::default()
        }
        .print(&mut out, &null)
        .unwrap();
        assert_eq!(out, b"\t\t\n");
    }

    fn parse_group(args: &[&str]) -> Result<GroupArgs, clap::Error> {
        let mut argv = vec!["group"];
        argv.extend_from_slice(args);
        match parse(&argv)? {
            Commands::Group(g) => Ok(g),
            other => panic!("not a group command: {other:?}"),
        }
    }

    #[test]
    fn group_list_and_describe_parse() {
        let g = parse_group(&["list"]).unwrap();
        assert_eq!(g.conn.bootstrap, "127.0.0.1:9092");
        assert!(matches!(g.command, GroupCommand::List { ref states } if states.is_empty()));
        let g = parse_group(&[
            "list",
            "--state",
            "stable,EMPTY",
            "--state",
            "dead",
            "--bootstrap",
            "h:1",
        ])
        .unwrap();
        assert_eq!(g.conn.bootstrap, "h:1");
        match g.command {
            GroupCommand::List { states } => assert_eq!(states, ["Stable", "Empty", "Dead"]),
            other => panic!("{other:?}"),
        }
        assert!(parse_group(&["list", "--state", "busy"]).is_err());
        let g = parse_group(&["--bootstrap", "h:2", "describe", "g1"]).unwrap();
        assert_eq!(g.conn.bootstrap, "h:2");
        assert!(matches!(g.command, GroupCommand::Describe { ref group } if group == "g1"));
        assert!(parse_group(&["describe"]).is_err());
    }

    #[test]
    fn group_delete_parses() {
        match parse_group(&["delete", "a", "b"]).unwrap().command {
            GroupCommand::Delete { groups } => assert_eq!(groups, ["a", "b"]),
            other => panic!("{other:?}"),
        }
        assert!(parse_group(&["delete"]).is_err());
        match parse_group(&["delete-offsets", "g", "--topic", "t:1"]).unwrap().command {
            GroupCommand::DeleteOffsets { group, topics } => {
                assert_eq!(group, "g");
                assert_eq!(topics[0].partitions, Some(vec![1]));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_group(&["delete-offsets", "g"]).is_err());
    }

    fn reset(args: &[&str]) -> Result<ResetOffsetsArgs, clap::Error> {
        let mut argv = vec!["reset-offsets"];
        argv.extend_from_slice(args);
        match parse_group(&argv)?.command {
            GroupCommand::ResetOffsets(r) => Ok(r),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn group_reset_offsets_parses() {
        let r = reset(&["g", "--topic", "a", "--topic", "b:0,2", "--to-earliest", "--dry-run"]).unwrap();
        assert_eq!(r.group, "g");
        assert_eq!(
            r.topics,
            vec![
                TopicSpec {
                    topic: "a".into(),
                    partitions: None
                },
                TopicSpec {
                    topic: "b".into(),
                    partitions: Some(vec![0, 2])
                }
            ]
        );
        assert!(r.dry_run && !r.all_topics);
        assert_eq!(r.target(), ResetTarget::Earliest);

        let r = reset(&["g", "--all-topics", "--to-latest"]).unwrap();
        assert!(r.all_topics && !r.dry_run);
        assert_eq!(r.target(), ResetTarget::Latest);

        let r = reset(&["g", "--all-topics", "--to-datetime", "2026-11-25T10:00:00Z"]).unwrap();
        assert_eq!(r.target(), ResetTarget::Datetime(1_795_600_800_000));
        let r = reset(&["g", "--all-topics", "--to-offset", "42"]).unwrap();
        assert_eq!(r.target(), ResetTarget::Offset(42));
        let r = reset(&["g", "--all-topics", "--to-offset", "-3"]).unwrap();
        assert_eq!(r.target(), ResetTarget::Offset(-3));

        // Exactly one target and one scope.
        assert!(reset(&["g", "--all-topics"]).is_err());
        assert!(reset(&["g", "--to-earliest"]).is_err());
        assert!(reset(&["g", "--all-topics", "--to-earliest", "--to-latest"]).is_err());
        assert!(reset(&["g", "--all-topics", "--to-offset", "1", "--to-datetime", "2026-01-01"]).is_err());
        assert!(reset(&["g", "--all-topics", "--topic", "t", "--to-earliest"]).is_err());
        assert!(reset(&["g", "--all-topics", "--to-datetime", "tomorrow"]).is_err());
        assert!(reset(&["g", "--topic", "t:x", "--to-earliest"]).is_err());
        assert!(reset(&["--all-topics", "--to-earliest"]).is_err());
    }
}
