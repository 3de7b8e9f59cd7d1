//! Broker configuration: defaults, then a TOML file (`--config`), then
//! `SLUICE_*` environment variables, then command-line flags.
//!
//! File keys are the flag names without dashes prefix (`kafka-listen = ...`);
//! flush settings nest as `flush.interval` / `flush.bytes`. Environment
//! variables are the flag names upper-cased with `_`: `SLUICE_KAFKA_LISTEN`,
//! `SLUICE_FLUSH_INTERVAL`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use sluice_auth::{parse_kafka_listeners, KafkaListener, TlsFiles};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    pub kafka_listen: String,
    pub advertise: Option<String>,
    pub http_listen: String,
    pub registry_listen: String,
    pub mqtt_listen: String,
    pub store: Option<String>,
    pub tier_store: Option<String>,
    pub meta: Option<String>,
    pub node_id: i32,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: i64,
    pub max_frame_bytes: usize,
    pub flush: FlushConfig,
    pub tail_cache_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub retention_check_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub gc_orphan_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub group_initial_rebalance_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub group_min_session_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub group_max_session_timeout: Duration,
    pub offsets_retention_minutes: u64,
    #[serde(with = "humantime_serde")]
    pub group_consumer_session_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub group_consumer_heartbeat_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub compaction_min_age: Duration,
    pub segment_bytes: usize,
    pub compaction_keep_run_bytes: usize,
    pub compaction_memory: usize,
    /// None: journal when the metadata store is this node's own (`meta` unset).
    pub journal: Option<bool>,
    #[serde(with = "humantime_serde")]
    pub upload_interval: Duration,
    /// Write large objects on a local store past the page cache (O_DIRECT).
    pub direct_io: bool,
    #[serde(with = "humantime_serde")]
    pub broker_lease: Duration,
    #[serde(with = "humantime_serde")]
    pub cluster_poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub handoff_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// The longest transaction.timeout.ms a transactional producer may ask for.
    #[serde(with = "humantime_serde")]
    pub transaction_max_timeout: Duration,
    /// A transactional.id unused this long is forgotten (transactional.id.expiration.ms).
    #[serde(with = "humantime_serde")]
    pub transactional_id_expiration: Duration,
    /// Server certificate (a chain is allowed), its key, and the CA client certificates
    /// must chain to (mutual TLS); PEM files.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    /// Kafka's ssl.principal.mapping.rules, for client certificates on SSL listeners.
    pub ssl_principal_mapping_rules: String,
    /// connections.max.reauth.ms: a SASL session's lifetime (KIP-368); 0 for no limit.
    pub connections_max_reauth_ms: u64,
    /// `none` or `acl` (Kafka's ACL authorizer).
    pub authorization: String,
    /// Principals that bypass ACLs: `User:admin,User:ops`.
    pub super_users: String,
    /// allow.everyone.if.no.acl.found: a resource without ACLs is open to everyone.
    pub allow_everyone_if_no_acl_found: bool,
    /// `none` or `basic`: HTTP Basic credentials of a stored user on the HTTP and registry listeners.
    pub http_auth: String,
    /// With `http-auth = "basic"`, whether /metrics stays open for scrapers without credentials.
    pub metrics_public: bool,
    /// The `[mqtt]` table: `mqtt.default-topic`, `mqtt.users`, `[[mqtt.rules]]`, ...
    pub mqtt: sluice_mqtt::MqttConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlushConfig {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./sluice-data"),
            kafka_listen: "0.0.0.0:9092".into(),
            advertise: None,
            http_listen: "0.0.0.0:8080".into(),
            registry_listen: "0.0.0.0:8081".into(),
            mqtt_listen: "0.0.0.0:1883".into(),
            store: None,
            tier_store: None,
            meta: None,
            node_id: 0,
            auto_create_topics: true,
            default_partitions: 1,
            retention_ms: 604_800_000,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            max_frame_bytes: 100 << 20,
            flush: FlushConfig {
                interval: Duration::ZERO,
                bytes: 4 << 20,
            },
            tail_cache_bytes: 256 << 20,
            retention_check_interval: Duration::from_secs(30),
            gc_orphan_grace: Duration::from_secs(600),
            group_initial_rebalance_delay: Duration::from_secs(3),
            group_min_session_timeout: Duration::from_secs(6),
            group_max_session_timeout: Duration::from_secs(1800),
            offsets_retention_minutes: 10080,
            group_consumer_session_timeout: Duration::from_secs(45),
            group_consumer_heartbeat_interval: Duration::from_secs(5),
            compaction_min_age: Duration::from_secs(60),
            segment_bytes: 64 << 20,
            compaction_keep_run_bytes: 512 << 10,
            compaction_memory: 128 << 20,
            journal: None,
            upload_interval: Duration::from_millis(250),
            direct_io: true,
            broker_lease: Duration::from_secs(2),
            cluster_poll_interval: Duration::from_millis(200),
            handoff_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            transaction_max_timeout: Duration::from_secs(15 * 60),
            transactional_id_expiration: Duration::from_secs(7 * 24 * 3600),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            ssl_principal_mapping_rules: "DEFAULT".into(),
            connections_max_reauth_ms: 0,
            authorization: "none".into(),
            super_users: String::new(),
            allow_everyone_if_no_acl_found: false,
            http_auth: "none".into(),
            metrics_public: false,
            mqtt: sluice_mqtt::MqttConfig::default(),
        }
    }
}

/// Where data and metadata live: shared by `serve` and the offline admin tools.
#[derive(Args, Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct StorageArgs {
    /// TOML config file; its settings are overridden by SLUICE_* environment
    /// variables, which are overridden by flags.
    #[arg(long, global = true, env = "SLUICE_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Directory for the embedded defaults: the local object store and the SQLite metadata store. [default: ./sluice-data]
    #[arg(long, global = true, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Object store for data: file:///dir, s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or memory://. S3 credentials and endpoint come from AWS_* variables. [default: file://<data-dir>/objects]
    #[arg(long, global = true, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Tier store for cold data (KIP-405's remote storage), a URL as for --store: topics with remote.storage.enable=true move batches past local.retention.ms / local.retention.bytes there, and reads stay transparent. [default: none; tiering off]
    #[arg(long, global = true, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier_store: Option<String>,
    /// Metadata store. [default: sqlite://<data-dir>/meta.db]
    #[arg(long, global = true, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<String>,
}

/// `sluice serve` flags. Each is optional: unset flags fall back to the
/// environment, the config file, then the default shown.
#[derive(Args, Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServeArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub storage: StorageArgs,
    /// Kafka listeners: a comma-separated list of [PROTOCOL://]HOST:PORT, PROTOCOL being PLAINTEXT (the default), SSL, SASL_PLAINTEXT or SASL_SSL. The first PLAINTEXT one (or else the first) is the one other brokers use. [default: 0.0.0.0:9092]
    #[arg(long, value_name = "LISTENERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_listen: Option<String>,
    /// Addresses returned to clients in Metadata, per listener protocol (PROTOCOL://HOST:PORT,...); a bare HOST:PORT is the first listener's. [default: each listen address, with 127.0.0.1 for a wildcard host]
    #[arg(long, value_name = "LISTENERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// PEM certificate (chain) for TLS listeners.
    #[arg(long, value_name = "PEM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: turns on mutual TLS. SSL listeners then require client certificates and take the principal from the subject.
    #[arg(long, value_name = "PEM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// ssl.principal.mapping.rules: DEFAULT, or RULE:pattern/replacement/[LU],... applied to client certificate subjects. [default: DEFAULT]
    #[arg(long, value_name = "RULES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_principal_mapping_rules: Option<String>,
    /// connections.max.reauth.ms: SASL clients must re-authenticate this often (KIP-368); 0 turns it off. [default: 0]
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections_max_reauth_ms: Option<u64>,
    /// `acl` turns on Kafka's ACL authorizer for Kafka, MQTT and registry requests: principals need ALLOW bindings (CreateAcls) for what they do. [default: none]
    #[arg(long, value_name = "none|acl")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization: Option<String>,
    /// Principals that bypass ACLs, comma-separated: User:admin,User:ops.
    #[arg(long, value_name = "PRINCIPALS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub super_users: Option<String>,
    /// allow.everyone.if.no.acl.found: a resource that no ACL covers is open to every principal. [default: false]
    #[arg(long, value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_everyone_if_no_acl_found: Option<bool>,
    /// `basic` requires HTTP Basic credentials of a stored user (sluice user create) on the HTTP and schema registry listeners; /health stays open. [default: none]
    #[arg(long, value_name = "none|basic")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_auth: Option<String>,
    /// With --http-auth basic, leave /metrics open for scrapers without credentials. [default: false]
    #[arg(long, value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_public: Option<bool>,
    /// Address for HTTP: /health and Prometheus /metrics. [default: 0.0.0.0:8080]
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<String>,
    /// Address for the schema registry's REST API (Confluent-compatible). [default: 0.0.0.0:8081]
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_listen: Option<String>,
    /// Address for MQTT 3.1.1/5.0 clients (the MQTT gateway). [default: 0.0.0.0:1883]
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt_listen: Option<String>,
    /// This broker's id in Metadata. [default: 0]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<i32>,
    /// Create unknown topics when clients ask for their metadata. [default: true]
    #[arg(long, value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics and of topics created without a count. [default: 1]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_partitions: Option<i32>,
    /// Default retention.ms of topics; -1 keeps data forever. [default: 604800000]
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<i64>,
    /// Default retention.bytes per partition; -1 for no limit. [default: -1]
    #[arg(long, value_name = "BYTES", allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<i64>,
    /// Default max.message.bytes: the largest record batch accepted. [default: 1048588]
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<i64>,
    /// Largest request frame; a larger one closes the connection. [default: 104857600]
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_frame_bytes: Option<usize>,
    /// flush.interval: how long appends are gathered before a flush writes them as one data object; with 0 a flush starts as soon as the previous one is written, and appends arriving meanwhile form the next. [default: 0s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip)]
    pub flush_interval: Option<String>,
    /// flush.bytes: write the data object sooner once this many bytes are pending. [default: 4194304]
    #[arg(long, value_name = "BYTES")]
    #[serde(skip)]
    pub flush_bytes: Option<usize>,
    /// Memory for recently written batches, served to consumers without reading the store. [default: 268435456]
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tail_cache_bytes: Option<usize>,
    /// How often retention and garbage collection run. [default: 30s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_check_interval: Option<String>,
    /// Age after which a data object that no commit recorded (a crash between write and commit) is deleted. [default: 10m]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gc_orphan_grace: Option<String>,
    /// group.initial.rebalance.delay.ms: how long the first rebalance of an empty group waits for more members. [default: 3s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_initial_rebalance_delay: Option<String>,
    /// Smallest session timeout a group member may ask for. [default: 6s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_min_session_timeout: Option<String>,
    /// Largest session timeout a group member may ask for. [default: 30m]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_max_session_timeout: Option<String>,
    /// offsets.retention.minutes: committed offsets of a group that has been empty this long are deleted. [default: 10080]
    #[arg(long, value_name = "MINUTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offsets_retention_minutes: Option<u64>,
    /// group.consumer.session.timeout.ms: session timeout of members using the consumer protocol (KIP-848). [default: 45s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_consumer_session_timeout: Option<String>,
    /// group.consumer.heartbeat.interval.ms: how often consumer-protocol members heartbeat. [default: 5s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_consumer_heartbeat_interval: Option<String>,
    /// Flush objects older than this are compacted into per-partition segments (each retention check). [default: 60s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction_min_age: Option<String>,
    /// Largest segment that compaction writes. [default: 67108864]
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment_bytes: Option<usize>,
    /// A partition's batches in one flush object that add up to this many bytes are not compacted: a cold read takes them with one request anyway, and copying them would write a busy partition's history twice. Smaller runs (a trickle's) are gathered into segments. [default: 524288]
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction_keep_run_bytes: Option<usize>,
    /// Memory for the log cleaner's key map (topics with cleanup.policy=compact), as Kafka's log.cleaner.dedupe.buffer.size: a partition with more keys to clean than it holds is cleaned in several passes. [default: 134217728]
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction_memory: Option<usize>,
    /// Acknowledge appends once they are synced to a local journal in <data-dir>/journal, and upload them to the object store in groups; false: every flush writes an object and commits before its acknowledgement. Only for a single node: a broker taking over another's partitions could not read its journal. [default: true when --meta is not given (the node's own SQLite store), else false; refused with PostgreSQL]
    #[arg(long, value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal: Option<bool>,
    /// With the journal: the longest journaled appends wait before they are uploaded as one object (sooner once 8 MiB are waiting). [default: 250ms]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_interval: Option<String>,
    /// On a local (file://) store, write objects of 1 MiB or more with O_DIRECT, past the page cache, and read large ranges of them the same way: about 40 % more produce throughput at full speed and a quarter less broker CPU; data older than the tail cache is read from disk (read ahead for readers going in order) instead of the page cache. [default: true]
    #[arg(long, value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_io: Option<bool>,
    /// How long a broker's lease in the metadata store lasts without renewal; its partitions move this long after it dies. [default: 2s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_lease: Option<String>,
    /// How often brokers read the cluster's state and the controller rebalances. [default: 200ms]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_poll_interval: Option<String>,
    /// How long a leader may take to hand a partition over before the controller forces the move. [default: 5s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handoff_timeout: Option<String>,
    /// On SIGTERM, how long to wait for this broker's partitions to move to others before exiting. [default: 30s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<String>,
    /// The longest transaction.timeout.ms a transactional producer may ask for. [default: 15m]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_max_timeout: Option<String>,
    /// A transactional.id unused this long is forgotten. [default: 7days]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transactional_id_expiration: Option<String>,
}

/// Maps `SLUICE_FLUSH_INTERVAL` to `flush.interval`, `SLUICE_KAFKA_LISTEN` to `kafka-listen`,
/// `SLUICE_MQTT_DEFAULT_TOPIC` to `mqtt.default-topic` (but `SLUICE_MQTT_LISTEN` to `mqtt-listen`).
fn env_key(key: &str) -> String {
    let k = key.replace('_', "-");
    if let Some(rest) = k.strip_prefix("flush-") {
        return format!("flush.{rest}");
    }
    match k.strip_prefix("mqtt-") {
        Some(rest) if rest != "listen" => format!("mqtt.{rest}"),
        _ => k,
    }
}

const ENV_KEYS: &[&str] = &[
    "data_dir",
    "kafka_listen",
    "advertise",
    "http_listen",
    "registry_listen",
    "mqtt_listen",
    "mqtt_default_topic",
    "mqtt_events_topic",
    "mqtt_commands_topic",
    "mqtt_forward_topic",
    "mqtt_max_packet_size",
    "mqtt_allow_anonymous",
    "mqtt_inflight_bytes",
    "store",
    "tier_store",
    "meta",
    "node_id",
    "auto_create_topics",
    "default_partitions",
    "retention_ms",
    "retention_bytes",
    "max_message_bytes",
    "max_frame_bytes",
    "flush_interval",
    "flush_bytes",
    "tail_cache_bytes",
    "retention_check_interval",
    "gc_orphan_grace",
    "group_initial_rebalance_delay",
    "group_min_session_timeout",
    "group_max_session_timeout",
    "offsets_retention_minutes",
    "group_consumer_session_timeout",
    "group_consumer_heartbeat_interval",
    "compaction_min_age",
    "segment_bytes",
    "compaction_keep_run_bytes",
    "compaction_memory",
    "journal",
    "upload_interval",
    "direct_io",
    "broker_lease",
    "cluster_poll_interval",
    "handoff_timeout",
    "drain_timeout",
    "transaction_max_timeout",
    "transactional_id_expiration",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "ssl_principal_mapping_rules",
    "connections_max_reauth_ms",
    "authorization",
    "super_users",
    "allow_everyone_if_no_acl_found",
    "http_auth",
    "metrics_public",
];

pub fn resolve(args: &ServeArgs) -> Result<Config> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = &args.storage.config {
        if !path.exists() {
            anyhow::bail!("config file {} not found", path.display());
        }
        fig = fig.merge(Toml::file(path));
    }
    fig = fig.merge(
        Env::prefixed("SLUICE_")
            .filter(|k| ENV_KEYS.contains(&k.as_str().to_ascii_lowercase().as_str()))
            .map(|k| env_key(&k.as_str().to_ascii_lowercase()).into()),
    );
    fig = fig.merge(Serialized::defaults(args));
    if let Some(v) = &args.flush_interval {
        fig = fig.merge(Serialized::default("flush.interval", v));
    }
    if let Some(v) = &args.flush_bytes {
        fig = fig.merge(Serialized::default("flush.bytes", v));
    }
    let cfg: Config = fig.extract().context("invalid configuration")?;
    Ok(cfg)
}

impl Config {
    pub fn store_url(&self) -> Result<String> {
        match &self.store {
            Some(s) => Ok(s.clone()),
            None => Ok(format!(
                "file://{}",
                absolute(&self.data_dir)?.join("objects").display()
            )),
        }
    }

    pub fn meta_url(&self) -> Result<String> {
        match &self.meta {
            Some(m) => Ok(m.clone()),
            None => Ok(format!(
                "sqlite://{}",
                absolute(&self.data_dir)?.join("meta.db").display()
            )),
        }
    }

    /// The journal's directory, if appends are journaled: only on a single node, so by
    /// default only with the node's own metadata store (brokers sharing a SQLite file
    /// hand partitions to each other).
    pub fn journal_dir(&self) -> Result<Option<PathBuf>> {
        let on = match self.journal {
            Some(true) if !self.meta_url()?.starts_with("sqlite:") => {
                anyhow::bail!(
                    "journal = true needs SQLite metadata: a cluster's brokers cannot read each other's journals"
                )
            }
            Some(on) => on,
            None => self.meta.is_none(),
        };
        Ok(if on {
            Some(absolute(&self.data_dir)?.join("journal"))
        } else {
            None
        })
    }

    /// The Kafka listeners, each with the address advertised for it.
    pub fn kafka_listeners(&self) -> Result<Vec<(KafkaListener, (String, i32))>> {
        let listeners = parse_kafka_listeners(&self.kafka_listen).context("--kafka-listen")?;
        let advertised = match &self.advertise {
            Some(a) if a.contains("://") => parse_kafka_listeners(a).context("--advertise")?,
            Some(a) => vec![KafkaListener {
                protocol: listeners[0].protocol,
                address: a.clone(),
            }],
            None => Vec::new(),
        };
        if let Some(extra) = advertised
            .iter()
            .find(|a| !listeners.iter().any(|l| l.protocol == a.protocol))
        {
            anyhow::bail!(
                "--advertise names {}, which no --kafka-listen listener has",
                extra.protocol.name()
            );
        }
        listeners
            .into_iter()
            .map(|l| {
                let addr = advertised
                    .iter()
                    .find(|a| a.protocol == l.protocol)
                    .map_or(&l.address, |a| &a.address);
                let reachable = sluice_auth::listener::reachable(addr)?;
                Ok((l, reachable))
            })
            .collect()
    }

    /// The ACL authorizer, with `authorization = "acl"`.
    pub fn authorizer(&self) -> Result<Option<sluice_auth::Authorizer>> {
        match self.authorization.as_str() {
            "none" => Ok(None),
            "acl" => {
                let supers = self.super_users.split(',').map(str::trim).filter(|p| !p.is_empty());
                let supers: Vec<String> = supers.map(str::to_string).collect();
                if let Some(bad) = supers.iter().find(|p| !p.contains(':')) {
                    anyhow::bail!("--super-users: {bad} is not a principal such as User:{bad}");
                }
                Ok(Some(sluice_auth::Authorizer::new(
                    supers,
                    self.allow_everyone_if_no_acl_found,
                )))
            }
            other => anyhow::bail!("--authorization must be none or acl, not {other}"),
        }
    }

    /// The TLS files, if any listener needs them.
    pub fn tls_files(&self) -> Result<Option<TlsFiles>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            })),
            (None, None) if self.tls_client_ca.is_none() => Ok(None),
            _ => anyhow::bail!("TLS needs both --tls-cert and --tls-key"),
        }
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(p).with_context(|| format!("creating data dir {}", p.display()))?;
    p.canonicalize().with_context(|| format!("resolving {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
    fn layers_file_env_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sluice.toml");
        std::fs::write(
            &file,
            "kafka-listen = \"127.0.0.1:1\"\nhttp-listen = \"127.0.0.1:2\"\nnode-id = 3\nflush.interval = \"7ms\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("SLUICE_HTTP_LISTEN", "127.0.0.1:20");
            jail.set_env("SLUICE_FLUSH_BYTES", "99");
            jail.set_env("SLUICE_BOOTSTRAP", "ignored:1");
            let args = ServeArgs {
                storage: StorageArgs {
                    config: Some(file.clone()),
                    ..Default::default()
                },
                node_id: Some(5),
                retention_check_interval: Some("1s".into()),
                ..Default::default()
            };
            let c = resolve(&args).unwrap();
            assert_eq!(c.kafka_listen, "127.0.0.1:1"); // file
            assert_eq!(c.http_listen, "127.0.0.1:20"); // env over file
            assert_eq!(c.node_id, 5); // flag over file
            assert_eq!(c.flush.interval, Duration::from_millis(7));
            assert_eq!(c.flush.bytes, 99);
            assert_eq!(c.retention_check_interval, Duration::from_secs(1));
            assert_eq!(c.max_frame_bytes, 100 << 20); // default
            assert_eq!(c.mqtt_listen, "0.0.0.0:1883"); // default
            assert_eq!(c.mqtt.default_topic, "mqtt"); // default
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
    fn authorization_from_file_env_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sluice.toml");
        std::fs::write(
            &file,
            "authorization = \"acl\"\nsuper-users = \"User:admin, User:ops\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("SLUICE_HTTP_AUTH", "basic");
            let args = ServeArgs {
                storage: StorageArgs {
                    config: Some(file.clone()),
                    ..Default::default()
                },
                allow_everyone_if_no_acl_found: Some(true),
                ..Default::default()
            };
            let c = resolve(&args).unwrap();
            assert_eq!(
                (c.http_auth.as_str(), c.allow_everyone_if_no_acl_found),
                ("basic", true)
            );
            let a = c.authorizer().unwrap().expect("acl mode");
            assert!(a.is_super_user("User:ops") && !a.is_super_user("User:alice"));
            // A resource no ACL covers is open, as the flag asked.
            assert!(a.authorize(
                "User:alice",
                "h",
                sluice_auth::Operation::Read,
                sluice_auth::ResourceType::Topic,
                "t"
            ));
            let mut bad = c.clone();
            bad.authorization = "rbac".into();
            assert!(bad.authorizer().is_err());
            bad.authorization = "acl".into();
            bad.super_users = "admin".into();
            assert!(bad.authorizer().is_err(), "a super user needs a principal type");
            bad.authorization = "none".into();
            assert!(bad.authorizer().unwrap().is_none());
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
    fn mqtt_settings_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sluice.toml");
        std::fs::write(
            &file,
            "mqtt-listen = \"127.0.0.1:7\"\n[mqtt]\nusers = [\"car:pw\"]\n[[mqtt.rules]]\nname = \"r1\"\nsql = \"SELECT * FROM t\"\nkafka-topic = \"out\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("SLUICE_MQTT_DEFAULT_TOPIC", "devices");
            jail.set_env("SLUICE_MQTT_LISTEN", "127.0.0.1:8");
            let args = ServeArgs {
                storage: StorageArgs {
                    config: Some(file.clone()),
                    ..Default::default()
                },
                ..Default::default()
            };
            let c = resolve(&args).unwrap();
            assert_eq!(c.mqtt_listen, "127.0.0.1:8"); // env over file
            assert_eq!(c.mqtt.default_topic, "devices");
            assert_eq!(c.mqtt.users, vec!["car:pw".to_string()]);
            assert_eq!(c.mqtt.rules[0].kafka_topic, "out");
            assert_eq!(c.mqtt.events_topic, "mqtt.events"); // default kept beside file keys
            Ok(())
        });
    }

    #[test]
    fn rejects_unknown_file_keys_and_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "kafka-listn = \"x\"\n").unwrap();
        let args = ServeArgs {
            storage: StorageArgs {
                config: Some(file),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(resolve(&args).is_err());
        let args = ServeArgs {
            flush_interval: Some("soon".into()),
            ..Default::default()
        };
        assert!(resolve(&args).is_err());
    }

    #[test]
    fn the_journal_is_on_only_with_the_nodes_own_metadata_store() {
        let cfg = |meta: Option<&str>, journal: Option<bool>| {
            resolve(&ServeArgs {
                storage: StorageArgs {
                    meta: meta.map(String::from),
                    data_dir: Some("/d".into()),
                    ..Default::default()
                },
                journal,
                ..Default::default()
            })
            .unwrap()
            .journal_dir()
        };
        assert_eq!(cfg(None, None).unwrap(), Some(PathBuf::from("/d/journal")));
        assert_eq!(cfg(None, Some(false)).unwrap(), None);
        assert_eq!(cfg(Some("sqlite:///other/meta.db"), None).unwrap(), None);
        assert_eq!(
            cfg(Some("sqlite:///other/meta.db"), Some(true)).unwrap(),
            Some(PathBuf::from("/d/journal"))
        );
        assert!(cfg(Some("postgres://pg/sluice"), Some(true)).is_err());
        assert_eq!(cfg(Some("postgres://pg/sluice"), None).unwrap(), None);
    }

    #[test]
    fn advertised_defaults_to_loopback_for_wildcards() {
        let addrs = |c: &Config| -> Vec<(String, (String, i32))> {
            c.kafka_listeners()
                .unwrap()
                .into_iter()
                .map(|(l, a)| (l.protocol.name().to_string(), a))
                .collect()
        };
        let c = Config::default();
        assert_eq!(addrs(&c), [("PLAINTEXT".into(), ("127.0.0.1".into(), 9092))]);
        let c = Config {
            advertise: Some("broker-1.example:19092".into()),
            ..Config::default()
        };
        assert_eq!(addrs(&c), [("PLAINTEXT".into(), ("broker-1.example".into(), 19092))]);
        let c = Config {
            kafka_listen: "PLAINTEXT://0.0.0.0:9092,SASL_SSL://0.0.0.0:9093".into(),
            advertise: Some("SASL_SSL://public.example:443".into()),
            ..Config::default()
        };
        assert_eq!(
            addrs(&c),
            [
                ("PLAINTEXT".into(), ("127.0.0.1".into(), 9092)),
                ("SASL_SSL".into(), ("public.example".into(), 443))
            ]
        );
        let c = Config {
            advertise: Some("SSL://x:1".into()),
            ..Config::default()
        };
        assert!(
            c.kafka_listeners().is_err(),
            "advertising a listener that does not exist"
        );
    }
}
