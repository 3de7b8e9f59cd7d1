//! `sluice bench` as a standalone binary, for running the benchmark before (or
//! without) the `sluice` binary: `cargo run --release -p sluice-bench
//! --example bench -- produce --topic t`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "sluice-bench", about = "Benchmark a Kafka-compatible broker")]
struct Cli {
    #[command(flatten)]
    args: sluice_bench::BenchArgs,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = sluice_bench::run_bench(cli.args).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
