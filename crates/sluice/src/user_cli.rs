//! `sluice user create|list|delete`: SCRAM users in the metadata store. Works before the
//! first `serve` (to make the first admin) and beside running brokers sharing the store.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use sluice_auth::scram::{MAX_ITERATIONS, MIN_ITERATIONS};
use sluice_auth::ScramMechanism;
use sluice_meta::MetaStore;

use crate::config::{self, ServeArgs, StorageArgs};

#[derive(Args, Debug)]
pub struct UserArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user, or replace its credential for the mechanism.
    Create {
        name: String,
        #[arg(long, env = "SLUICE_USER_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long, default_value = "SCRAM-SHA-256", value_name = "SCRAM-SHA-256|SCRAM-SHA-512")]
        mechanism: String,
        #[arg(long, default_value_t = MIN_ITERATIONS)]
        iterations: u32,
    },
    /// Users and their mechanisms.
    List,
    /// Delete a user's credentials: all of them, or one mechanism's.
    Delete {
        name: String,
        #[arg(long)]
        mechanism: Option<String>,
    },
}

fn mechanism(name: &str) -> Result<ScramMechanism> {
    ScramMechanism::parse(name)
        .ok_or_else(|| anyhow::anyhow!("unknown mechanism {name:?}: SCRAM-SHA-256 or SCRAM-SHA-512"))
}

pub async fn run(args: UserArgs) -> Result<()> {
    let cfg = config::resolve(&ServeArgs {
        storage: args.storage,
        ..Default::default()
    })?;
    let meta = MetaStore::open(&cfg.meta_url()?).await?;
    match args.command {
        UserCommand::Create {
            name,
            password,
            mechanism: m,
            iterations,
        } => {
            let m = mechanism(&m)?;
            if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
                bail!("--iterations must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}");
            }
            if name.is_empty() || password.is_empty() {
                bail!("the user name and password must not be empty");
            }
            meta.upsert_scram(&m.credential(&name, &password, iterations)).await?;
            println!("user {name}: {} credential stored", m.name());
        }
        UserCommand::List => {
            let mut current: Option<String> = None;
            let mut line = String::new();
            for row in meta.list_scram().await? {
                if current.as_deref() != Some(&row.user) {
                    if !line.is_empty() {
                        println!("{line}");
                    }
                    line = row.user.clone();
                    current = Some(row.user.clone());
                }
                line.push_str(&format!("\t{}(iterations={})", row.mechanism, row.iterations));
            }
            if !line.is_empty() {
                println!("{line}");
            }
        }
        UserCommand::Delete { name, mechanism: m } => {
            let m = m.as_deref().map(mechanism).transpose()?;
            let n = meta.delete_scram(&name, m.map(|m| m.name())).await?;
            if n == 0 {
                bail!("user {name} has no such credential");
            }
            println!("user {name}: {n} credential(s) deleted");
        }
    }
    Ok(())
}
