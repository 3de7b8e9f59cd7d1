//! The client commands on their own, wired exactly as the `sluice` binary
//! wires them; handy for trying the client against any Kafka-compatible
//! broker: `cargo run -p sluice-client --example sluice-cli -- topic list`.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "sluice", about = "Kafka client commands of sluice")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Create, list, describe, alter and delete topics.
    Topic(sluice_client::cli::TopicArgs),
    /// Write records read from stdin, one line per record.
    Produce(sluice_client::cli::ProduceArgs),
    /// Read records and print them to stdout, one per line.
    Consume(sluice_client::cli::ConsumeArgs),
    /// List, describe and delete consumer groups, and reset their offsets.
    Group(sluice_client::cli::GroupArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Commands::Topic(args) => sluice_client::cli::run_topic(args).await,
        Commands::Produce(args) => sluice_client::cli::run_produce(args).await,
        Commands::Consume(args) => sluice_client::cli::run_consume(args).await,
        Commands::Group(args) => sluice_client::cli::run_group(args).await,
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
