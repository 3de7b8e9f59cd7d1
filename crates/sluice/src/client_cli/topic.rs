//! `sluice topic`: create, list, describe, alter and delete topics.

use std::io::Write;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use kafka_protocol::error::ResponseError;
use sluice_client::error::response_error;
use sluice_client::{
    AlterConfigOp, Client, IsolationLevel, EARLIEST_LOCAL_TIMESTAMP, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP,
};

use super::{parse_key_value, ConnArgs};

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
            // Bytes per store: the first log dir is the main store, a second the tier store.
            let indexes: Vec<i32> = t.partitions.iter().map(|p| p.partition).collect();
            let dirs = client.describe_log_dirs(&name, &indexes).await?;
            let bytes = |dir: usize, partition: i32| {
                dirs.get(dir)
                    .and_then(|(_, sizes)| sizes.iter().find(|(i, _)| *i == partition))
                    .map_or(0, |(_, size)| *size)
            };
            for p in &t.partitions {
                let start = client.list_offsets(&name, p.partition, EARLIEST_TIMESTAMP).await?;
                let local_start = client
                    .list_offsets(&name, p.partition, EARLIEST_LOCAL_TIMESTAMP)
                    .await?;
                let end = client.list_offsets(&name, p.partition, LATEST_TIMESTAMP).await?;
                writeln!(
                    out,
                    "\tPartition: {}\tLeader: {}\tReplicas: {}\tIsr: {}\tLogStartOffset: {}\tLocalLogStartOffset: {}\tHighWatermark: {}\tLocalBytes: {}\tTierBytes: {}",
                    p.partition,
                    p.leader,
                    join_ids(&p.replicas),
                    join_ids(&p.isr),
                    start,
                    local_start,
                    end,
                    bytes(0, p.partition),
                    bytes(1, p.partition),
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
