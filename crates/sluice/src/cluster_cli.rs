//! `sluice cluster status|drain|undrain`: the cluster as the REST API shows it.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Any broker's HTTP address.
    #[arg(long, global = true, env = "SLUICE_HTTP", default_value = "http://127.0.0.1:8080")]
    pub http: String,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Brokers and their leases, the controller, and who leads what.
    Status {
        /// Print the REST answer as JSON.
        #[arg(long)]
        json: bool,
        /// Also list every partition's leader.
        #[arg(long)]
        partitions: bool,
    },
    /// Move everything a broker leads to the other brokers (before stopping it).
    Drain { node_id: i32 },
    /// Let a drained broker lead partitions again.
    Undrain { node_id: i32 },
}

/// The HTTP address as a base URL (`127.0.0.1:8080` means `http://127.0.0.1:8080`).
pub(crate) fn base_url(http: &str) -> String {
    let base = http.trim_end_matches('/');
    if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    }
}

pub async fn run(args: ClusterArgs) -> Result<()> {
    let base = base_url(&args.http);
    let client = reqwest::Client::new();
    match args.command {
        ClusterCommand::Status { json, partitions } => {
            let status: Value = send(client.get(format!("{base}/api/v1/cluster"))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status, partitions);
            }
        }
        ClusterCommand::Drain { node_id } | ClusterCommand::Undrain { node_id } => {
            let verb = if matches!(args.command, ClusterCommand::Drain { .. }) {
                "drain"
            } else {
                "undrain"
            };
            send(client.post(format!("{base}/api/v1/cluster/brokers/{node_id}/{verb}"))).await?;
            println!("broker {node_id}: {verb} requested");
        }
    }
    Ok(())
}

pub(crate) async fn send(req: reqwest::RequestBuilder) -> Result<Value> {
    let resp = req.send().await.context("reaching the broker's HTTP API")?;
    let status = resp.status();
    let body: Value = resp.json().await.context("reading the answer")?;
    if !status.is_success() {
        bail!("{status}: {}", body["error"].as_str().unwrap_or("request failed"));
    }
    Ok(body)
}

fn print_status(s: &Value, partitions: bool) {
    let controller = s["controller"].as_i64().map_or("none".to_string(), |c| c.to_string());
    println!(
        "controller: {controller} (epoch {})   topology version: {}",
        s["controller_epoch"], s["topology_version"]
    );
    println!(
        "{:>6}  {:<24} {:<7} {:<9} {:>10} {:>12}",
        "NODE", "KAFKA", "ALIVE", "DRAINING", "PARTITIONS", "GROUP-SHARDS"
    );
    for b in s["brokers"].as_array().into_iter().flatten() {
        println!(
            "{:>6}  {:<24} {:<7} {:<9} {:>10} {:>12}",
            b["node_id"],
            format!("{}:{}", b["host"].as_str().unwrap_or(""), b["port"]),
            b["alive"],
            b["draining"],
            b["partitions"],
            b["group_shards"]
        );
    }
    if partitions {
        println!(
            "\n{:<32} {:>9} {:>7} {:>6} {:>5}",
            "TOPIC", "PARTITION", "LEADER", "EPOCH", "NEXT"
        );
        for p in s["partitions"].as_array().into_iter().flatten() {
            println!(
                "{:<32} {:>9} {:>7} {:>6} {:>5}",
                p["topic"].as_str().unwrap_or(""),
                p["partition"],
                p["leader"],
                p["epoch"],
                p["next_leader"]
            );
        }
    }
}
