//! `sluice transactions list|describe|abort`: transactions as the REST API shows them.

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::cluster_cli::{base_url, send};

#[derive(Args, Debug)]
pub struct TxnArgs {
    /// Any broker's HTTP address (for `abort`, the partition leader's).
    #[arg(long, global = true, env = "SLUICE_HTTP", default_value = "http://127.0.0.1:8080")]
    pub http: String,
    #[command(subcommand)]
    pub command: TxnCommand,
}

#[derive(Subcommand, Debug)]
pub enum TxnCommand {
    /// Every transactional id with its producer, state and open partitions.
    List {
        /// Print the REST answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One transactional id in full, as JSON.
    Describe { transactional_id: String },
    /// End a hanging transaction: write an ABORT marker for the producer whose open
    /// transaction on the partition starts at the given offset.
    Abort {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: i32,
        #[arg(long)]
        start_offset: i64,
    },
}

pub async fn run(args: TxnArgs) -> Result<()> {
    let base = base_url(&args.http);
    let client = reqwest::Client::new();
    match args.command {
        TxnCommand::List { json } => {
            let all: Value = send(client.get(format!("{base}/api/v1/transactions"))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print_list(&all);
            }
        }
        TxnCommand::Describe { transactional_id } => {
            let url = format!("{base}/api/v1/transactions/{}", urlencode(&transactional_id));
            let one: Value = send(client.get(url)).await?;
            println!("{}", serde_json::to_string_pretty(&one)?);
        }
        TxnCommand::Abort {
            topic,
            partition,
            start_offset,
        } => {
            let body = json!({"topic": topic, "partition": partition, "start_offset": start_offset});
            let r: Value = send(client.post(format!("{base}/api/v1/transactions/abort")).json(&body)).await?;
            println!(
                "aborted the transaction of producer {} at {topic}-{partition} offset {start_offset}",
                r["producer_id"]
            );
        }
    }
    Ok(())
}

/// Percent-encodes a path segment (transactional ids may hold any character).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print_list(all: &Value) {
    println!(
        "{:<32} {:>12} {:>6} {:<15} {:>10}  PARTITIONS",
        "TRANSACTIONAL-ID", "PRODUCER-ID", "EPOCH", "STATE", "TIMEOUT-MS"
    );
    for t in all.as_array().into_iter().flatten() {
        let parts: Vec<String> = t["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| format!("{}-{}", p["topic"].as_str().unwrap_or(""), p["partition"]))
            .collect();
        println!(
            "{:<32} {:>12} {:>6} {:<15} {:>10}  {}",
            t["transactional_id"].as_str().unwrap_or(""),
            t["producer_id"],
            t["producer_epoch"],
            t["state"].as_str().unwrap_or(""),
            t["timeout_ms"],
            parts.join(",")
        );
    }
}
