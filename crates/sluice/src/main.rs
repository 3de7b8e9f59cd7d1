//! `sluice`: the one binary. `serve` runs the broker; the other commands are
//! clients and offline tools.

mod client_cli;
mod cluster_cli;
mod config;
mod schema_cli;
mod txn_cli;
mod user_cli;

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sluice_auth::{PrincipalRules, SecurityProtocol, Tls};
use sluice_kafka::{Broker, BrokerConfig, ListenerConfig};
use sluice_log::{DataStore, Log, LogOptions, TopicDefaults};
use sluice_meta::MetaStore;
use tokio::net::TcpListener;

use config::{Config, ServeArgs, StorageArgs};

// glibc's allocator took about a third of the broker's CPU under many small MQTT
// publishes, much of it in its arena locks (docs/benchmarks.md, MQTT gateway).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sluice: a Kafka-compatible streaming platform in one binary. Data lives in
/// an object store, metadata in SQLite (or PostgreSQL for a cluster).
#[derive(Parser)]
#[command(name = "sluice", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker: the Kafka listener, the MQTT gateway and HTTP (/health, /metrics, /api/v1).
    Serve(Box<ServeArgs>),
    /// Create, list, describe, alter and delete topics.
    Topic(client_cli::TopicArgs),
    /// Produce lines from stdin as records.
    Produce(client_cli::ProduceArgs),
    /// Print records of a topic as lines on stdout.
    Consume(client_cli::ConsumeArgs),
    /// List, describe and delete consumer groups; show lag; reset committed offsets.
    Group(client_cli::GroupArgs),
    /// Cluster status, and draining brokers before maintenance.
    Cluster(cluster_cli::ClusterArgs),
    /// List and describe transactions; abort a hanging one.
    Transactions(txn_cli::TxnArgs),
    /// Create, list and delete SCRAM users (for SASL SCRAM and PLAIN) in the metadata store.
    User(user_cli::UserArgs),
    /// Register, get, list, check and delete schemas in the schema registry.
    Schema(schema_cli::SchemaArgs),
    /// Load generator: produce, consume and end-to-end throughput and latency percentiles.
    Bench(sluice_bench::BenchArgs),
    /// Offline maintenance of the stores (run with the broker stopped).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Rebuild the offset index and watermarks from the data objects' footers,
    /// e.g. after losing the metadata store.
    RebuildIndex(StorageArgs),
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // A panicking task is otherwise only a line on stderr between the log's lines; this
    // puts it in the log, with where it happened.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "a task panicked");
        default_hook(info);
    }));
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(config::resolve(&args)?).await,
            Command::Topic(args) => client_cli::run_topic(args).await,
            Command::Produce(args) => client_cli::run_produce(args).await,
            Command::Consume(args) => client_cli::run_consume(args).await,
            Command::Group(args) => client_cli::run_group(args).await,
            Command::Schema(args) => schema_cli::run(args).await,
            Command::Bench(args) => sluice_bench::run_bench(args).await,
            Command::Cluster(args) => cluster_cli::run(args).await,
            Command::Transactions(args) => txn_cli::run(args).await,
            Command::User(args) => user_cli::run(args).await,
            Command::Admin {
                command: AdminCommand::RebuildIndex(storage),
            } => {
                let cfg = config::resolve(&ServeArgs {
                    storage,
                    ..Default::default()
                })?;
                rebuild_index(&cfg).await
            }
        }
    })
}

async fn open_stores(cfg: &Config) -> Result<(MetaStore, DataStore)> {
    let meta = MetaStore::open(&cfg.meta_url()?).await?;
    let mut store = DataStore::open(&cfg.store_url()?)?.with_direct_io(cfg.direct_io);
    if let Some(url) = &cfg.tier_store {
        store = store.with_tier(url).context("opening the tier store")?;
    }
    Ok((meta, store))
}

/// A pause in milliseconds from the environment, for crash tests; none when unset.
fn test_pause(var: &str) -> std::time::Duration {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_millis)
        .unwrap_or_default()
}

async fn serve(cfg: Config) -> Result<()> {
    let (meta, store) = open_stores(&cfg).await?;
    let cluster_id = meta.cluster_id().await?;
    let opts = LogOptions {
        node_id: cfg.node_id,
        flush_interval: cfg.flush.interval,
        flush_bytes: cfg.flush.bytes,
        tail_cache_bytes: cfg.tail_cache_bytes,
        retention_check_interval: cfg.retention_check_interval,
        gc_orphan_grace: cfg.gc_orphan_grace,
        compaction_min_age: cfg.compaction_min_age,
        segment_bytes: cfg.segment_bytes,
        compaction_keep_run_bytes: cfg.compaction_keep_run_bytes,
        compaction_memory: cfg.compaction_memory,
        // Test-only hooks: a pause between a rewrite's object and its commit, and between
        // a tier move's verified copy and its commit.
        cleaner_commit_pause: test_pause("SLUICE_TEST_CLEANER_PAUSE_MS"),
        tier_commit_pause: test_pause("SLUICE_TEST_TIER_PAUSE_MS"),
        journal: cfg.journal_dir()?,
        upload_interval: cfg.upload_interval,
        defaults: TopicDefaults {
            partitions: cfg.default_partitions,
            retention_ms: cfg.retention_ms,
            retention_bytes: cfg.retention_bytes,
            max_message_bytes: cfg.max_message_bytes,
        },
    };
    let groups = sluice_groups::Coordinator::start(
        meta.clone(),
        sluice_groups::GroupOptions {
            min_session_timeout: cfg.group_min_session_timeout,
            max_session_timeout: cfg.group_max_session_timeout,
            initial_rebalance_delay: cfg.group_initial_rebalance_delay,
            offsets_retention: std::time::Duration::from_secs(cfg.offsets_retention_minutes * 60),
            consumer_session_timeout: cfg.group_consumer_session_timeout,
            consumer_heartbeat_interval: cfg.group_consumer_heartbeat_interval,
            ..Default::default()
        },
    );
    // Groups are restored per coordinator shard as the cluster hands shards to this broker.
    let registry = sluice_schema::Registry::new(&meta);
    let log = Log::open(meta.clone(), store, opts).await?;
    let listeners = cfg.kafka_listeners()?;
    // Other brokers and the MQTT gateway's forwarding reach this broker on its first
    // PLAINTEXT listener, or else the first.
    let internal = listeners
        .iter()
        .position(|(l, _)| l.protocol == SecurityProtocol::Plaintext)
        .unwrap_or(0);
    let (host, port) = listeners[internal].1.clone();
    let advertised_listeners = listeners
        .iter()
        .map(|(l, (h, p))| format!("{}://{h}:{p}", l.protocol.name()))
        .collect::<Vec<_>>()
        .join(",");
    let authorizer = cfg.authorizer()?.map(Arc::new);
    if let Some(a) = &authorizer {
        a.reload(&meta).await.context("loading ACLs")?;
        a.spawn_refresh(meta.clone());
    }
    let tls = cfg.tls_files()?.map(Tls::load).transpose()?;
    if let Some(tls) = &tls {
        tls.watch(std::time::Duration::from_secs(2));
    }
    let principal_rules = PrincipalRules::parse(&cfg.ssl_principal_mapping_rules)?;
    let reauth =
        (cfg.connections_max_reauth_ms > 0).then(|| std::time::Duration::from_millis(cfg.connections_max_reauth_ms));
    let cluster = sluice_cluster::Cluster::start(
        meta,
        log.clone(),
        groups.clone(),
        sluice_cluster::ClusterOptions {
            node_id: cfg.node_id,
            host: host.clone(),
            port,
            http: advertised_http(&cfg.http_listen, &host)?,
            listeners: advertised_listeners,
            lease: cfg.broker_lease,
            poll_interval: cfg.cluster_poll_interval,
            handoff_timeout: cfg.handoff_timeout,
            drain_timeout: cfg.drain_timeout,
        },
    )
    .await
    .context("joining the cluster")?;
    let txn = sluice_txn::TxnCoordinator::start(
        log.meta().clone(),
        log.clone(),
        groups.clone(),
        cluster.clone(),
        sluice_txn::TxnOptions {
            max_timeout: cfg.transaction_max_timeout,
            id_expiration: cfg.transactional_id_expiration,
            // A test-only hook: a pause between deciding a transaction and writing its markers.
            pause_before_markers: std::env::var("SLUICE_TEST_TXN_MARKER_PAUSE_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(std::time::Duration::from_millis)
                .unwrap_or_default(),
            ..Default::default()
        },
    );
    let broker = Arc::new(Broker {
        log,
        groups,
        cluster: cluster.clone(),
        txn: txn.clone(),
        config: BrokerConfig {
            node_id: cfg.node_id,
            advertised_host: host,
            advertised_port: port,
            cluster_id,
            auto_create_topics: cfg.auto_create_topics,
            max_frame_bytes: cfg.max_frame_bytes,
        },
        schemas: Some(sluice_schema::Enforcer::new(registry.clone())),
        authorizer: authorizer.clone(),
    });
    let mut kafka = tokio::task::JoinSet::new();
    for (i, (listener, _)) in listeners.iter().enumerate() {
        let protocol = listener.protocol;
        if protocol.tls() && tls.is_none() {
            anyhow::bail!("listener {} needs --tls-cert and --tls-key", listener.url());
        }
        let socket = TcpListener::bind(&listener.address)
            .await
            .with_context(|| format!("binding Kafka listener {}", listener.url()))?;
        let config = Arc::new(ListenerConfig {
            protocol,
            tls: if protocol.tls() { tls.clone() } else { None },
            principal_rules: principal_rules.clone(),
            reauth,
            first: i == internal,
        });
        kafka.spawn(sluice_kafka::serve(socket, broker.clone(), config));
    }
    let (https, http_address) = sluice_auth::parse_url(&cfg.http_listen, "http", "https").context("--http-listen")?;
    let http = TcpListener::bind(&http_address)
        .await
        .with_context(|| format!("binding HTTP listener {}", cfg.http_listen))?;
    let (registry_https, registry_address) =
        sluice_auth::parse_url(&cfg.registry_listen, "http", "https").context("--registry-listen")?;
    let registry_listener = TcpListener::bind(&registry_address)
        .await
        .with_context(|| format!("binding schema registry listener {}", cfg.registry_listen))?;
    let tls_for = |on: bool, flag: &str| match (on, &tls) {
        (false, _) => Ok(None),
        (true, Some(tls)) => Ok(Some(tls.clone())),
        (true, None) => Err(anyhow::anyhow!("{flag} https:// needs --tls-cert and --tls-key")),
    };
    let (http_tls, registry_tls) = (
        tls_for(https, "--http-listen")?,
        tls_for(registry_https, "--registry-listen")?,
    );
    let basic = match cfg.http_auth.as_str() {
        "none" => None,
        "basic" => {
            let mut open = vec!["/health".to_string()];
            if cfg.metrics_public {
                open.push("/metrics".into());
            }
            Some(sluice_auth::http::BasicAuth::new(broker.log.meta().clone(), open))
        }
        other => anyhow::bail!("--http-auth must be none or basic, not {other}"),
    };
    let (mqtts, mqtt_address) = sluice_auth::parse_url(&cfg.mqtt_listen, "mqtt", "mqtts").context("--mqtt-listen")?;
    let mqtt = TcpListener::bind(&mqtt_address)
        .await
        .with_context(|| format!("binding MQTT listener {}", cfg.mqtt_listen))?;
    let mqtt_tls = match (&tls, mqtts) {
        (Some(tls), true) => Some(sluice_mqtt::MqttTls {
            tls: tls.clone(),
            principal_rules: principal_rules.clone(),
        }),
        (None, true) => anyhow::bail!("--mqtt-listen mqtts:// needs --tls-cert and --tls-key"),
        (_, false) => None,
    };
    let own_kafka = format!("{}:{}", broker.config.advertised_host, broker.config.advertised_port);
    let member = sluice_mqtt::Membership {
        node_id: cfg.node_id,
        kafka_address: own_kafka,
        // What other brokers' gateways keep in the store is re-read every second, or every
        // cluster-poll-interval if that is longer.
        refresh: cfg.cluster_poll_interval.max(std::time::Duration::from_secs(1)),
    };
    let gateway =
        sluice_mqtt::Gateway::start(broker.log.clone(), cfg.mqtt.clone(), None, authorizer.clone(), member).await?;
    tracing::info!(
        kafka = %cfg.kafka_listen,
        http = %cfg.http_listen,
        registry = %cfg.registry_listen,
        mqtt = %cfg.mqtt_listen,
        store = %cfg.store_url()?,
        meta = %cfg.meta_url()?,
        "sluice is serving"
    );
    let http_state = Arc::new(sluice_http::AppState {
        log: broker.log.clone(),
        groups: broker.groups.clone(),
        cluster: cluster.clone(),
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let http_router = sluice_http::router(http_state)
        .merge(gateway.router())
        .merge(sluice_txn::rest::router(txn));
    let http = tokio::spawn(sluice_auth::http::serve(
        http,
        sluice_auth::http::protect(
            sluice_auth::http::require_cluster_acls(http_router, authorizer.clone()),
            basic.as_ref(),
        ),
        http_tls,
    ));
    let registry_router =
        sluice_auth::http::protect(sluice_schema::router(registry, authorizer.clone()), basic.as_ref());
    let registry_task = tokio::spawn(sluice_auth::http::serve(
        registry_listener,
        registry_router,
        registry_tls,
    ));
    let mqtt_task = tokio::spawn({
        let gateway = gateway.clone();
        async move { gateway.serve(mqtt, mqtt_tls).await }
    });
    tokio::select! {
        Some(r) = kafka.join_next() => return r?.context("Kafka listener failed"),
        r = http => return r?.context("HTTP listener failed"),
        r = registry_task => return r?.context("schema registry listener failed"),
        r = mqtt_task => return r?.context("MQTT listener failed"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; handing partitions over"),
        _ = term.recv() => tracing::info!("terminated; handing partitions over"),
    }
    // Keep serving while the partitions move, so that clients see no errors.
    cluster.shutdown().await
}

/// The HTTP address other brokers and tools can reach, from the listen address.
/// The HTTP address other brokers list for this one: `https://` when it serves TLS.
fn advertised_http(listen: &str, host: &str) -> Result<String> {
    let (https, address) = sluice_auth::parse_url(listen, "http", "https").context("--http-listen")?;
    let address = match address.rsplit_once(':') {
        Some((h, port)) if matches!(h.trim_matches(['[', ']']), "0.0.0.0" | "::" | "") => format!("{host}:{port}"),
        _ => address,
    };
    Ok(if https { format!("https://{address}") } else { address })
}

async fn rebuild_index(cfg: &Config) -> Result<()> {
    let (meta, store) = open_stores(cfg).await?;
    let report = sluice_log::rebuild_index(&meta, &store).await?;
    println!(
        "rebuilt index: {} objects, {} batches, {} topics{}",
        report.objects,
        report.batches,
        report.topics,
        if report.damaged.is_empty() {
            String::new()
        } else {
            format!(", damaged and skipped: {:?}", report.damaged)
        }
    );
    Ok(())
}
