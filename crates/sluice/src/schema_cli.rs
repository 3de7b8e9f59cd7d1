//! `sluice schema`: a client of the registry's REST API, and the offline benchmark of
//! record validation (`sluice_schema::bench`).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use sluice_schema::bench;
use sluice_schema::formats::SchemaType;

#[derive(Args, Debug)]
pub struct SchemaArgs {
    /// Schema registry URL.
    #[arg(
        long,
        global = true,
        env = "SLUICE_REGISTRY",
        default_value = "http://127.0.0.1:8081"
    )]
    pub registry: String,
    #[command(subcommand)]
    pub command: SchemaCommand,
}

#[derive(Args, Debug)]
pub struct SchemaInput {
    /// File holding the schema (.avsc, .proto, .json); `-` reads stdin.
    #[arg(long, short = 'f', conflicts_with = "schema")]
    pub file: Option<String>,
    /// The schema text itself.
    #[arg(long, short = 's')]
    pub schema: Option<String>,
    /// AVRO, PROTOBUF or JSON. [default: from the file extension, else AVRO]
    #[arg(long = "type", short = 't')]
    pub schema_type: Option<String>,
    /// A reference: NAME=SUBJECT:VERSION (repeatable).
    #[arg(long = "ref", value_name = "NAME=SUBJECT:VERSION")]
    pub refs: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum SchemaCommand {
    /// Register a schema under a subject; prints its id.
    Register {
        subject: String,
        #[command(flatten)]
        input: SchemaInput,
    },
    /// Print a subject's version (default latest), or a schema by id.
    Get {
        /// Subject name (omit with --id).
        subject: Option<String>,
        #[arg(long, short = 'v', default_value = "latest")]
        version: String,
        /// Look a schema up by id instead.
        #[arg(long)]
        id: Option<i64>,
    },
    /// List subjects, or the versions of one subject.
    List {
        subject: Option<String>,
        /// Include soft-deleted subjects or versions.
        #[arg(long)]
        deleted: bool,
        /// Only subjects starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Check a schema's compatibility with a subject (exit status 1 if incompatible).
    Check {
        subject: String,
        #[command(flatten)]
        input: SchemaInput,
        /// Check against this version only. [default: the versions the subject's level names]
        #[arg(long, short = 'v')]
        version: Option<String>,
    },
    /// Delete a subject, or one version of it (soft unless --permanent).
    Delete {
        subject: String,
        #[arg(long, short = 'v')]
        version: Option<String>,
        #[arg(long)]
        permanent: bool,
    },
    /// Measure full Avro validation speed of 1 KiB records on one core (no broker needed).
    Bench {
        /// How long to run.
        #[arg(long, default_value = "3s", value_parser = humantime_duration)]
        duration: Duration,
        /// Approximate encoded record size in bytes.
        #[arg(long, default_value_t = 1024)]
        record_size: usize,
    },
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("bad duration {s}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        _ => Err(format!("bad duration {s}: use e.g. 500ms or 3s")),
    }
}

pub async fn run(args: SchemaArgs) -> Result<()> {
    let base = args.registry.trim_end_matches('/').to_string();
    let client = Client {
        http: reqwest::Client::new(),
        base,
    };
    match args.command {
        SchemaCommand::Register { subject, input } => {
            let body = input.body()?;
            let v = client
                .send("POST", &format!("/subjects/{}/versions", enc(&subject)), Some(body))
                .await?;
            println!("{}", v["id"]);
        }
        SchemaCommand::Get { subject, version, id } => {
            let v = match (id, subject) {
                (Some(id), _) => client.send("GET", &format!("/schemas/ids/{id}"), None).await?,
                (None, Some(s)) => {
                    client
                        .send(
                            "GET",
                            &format!("/subjects/{}/versions/{}", enc(&s), enc(&version)),
                            None,
                        )
                        .await?
                }
                (None, None) => bail!("give a subject or --id"),
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        SchemaCommand::List {
            subject,
            deleted,
            prefix,
        } => {
            let path = match subject {
                Some(s) => format!("/subjects/{}/versions?deleted={deleted}", enc(&s)),
                None => format!("/subjects?deleted={deleted}&subjectPrefix={}", enc(&prefix)),
            };
            let v = client.send("GET", &path, None).await?;
            for item in v.as_array().into_iter().flatten() {
                match item {
                    Value::String(s) => println!("{s}"),
                    other => println!("{other}"),
                }
            }
        }
        SchemaCommand::Check {
            subject,
            input,
            version,
        } => {
            let body = input.body()?;
            let path = match version {
                Some(v) => format!(
                    "/compatibility/subjects/{}/versions/{}?verbose=true",
                    enc(&subject),
                    enc(&v)
                ),
                None => format!("/compatibility/subjects/{}/versions?verbose=true", enc(&subject)),
            };
            let v = client.send("POST", &path, Some(body)).await?;
            if v["is_compatible"].as_bool() == Some(true) {
                println!("compatible");
            } else {
                println!("incompatible");
                for m in v["messages"].as_array().into_iter().flatten() {
                    println!("  {}", m.as_str().unwrap_or_default());
                }
                std::process::exit(1);
            }
        }
        SchemaCommand::Delete {
            subject,
            version,
            permanent,
        } => {
            let path = match version {
                Some(v) => format!("/subjects/{}/versions/{}?permanent={permanent}", enc(&subject), enc(&v)),
                None => format!("/subjects/{}?permanent={permanent}", enc(&subject)),
            };
            let v = client.send("DELETE", &path, None).await?;
            println!("deleted {v}");
        }
        SchemaCommand::Bench { duration, record_size } => {
            let report = |what: &str, r: &bench::BenchResult| {
                println!(
                    "{what}: {} records of {} bytes in {:.2}s: {:.0} records/s, {:.1} MB/s (one core)",
                    r.records,
                    r.record_bytes,
                    r.elapsed.as_secs_f64(),
                    r.records_per_sec(),
                    r.records_per_sec() * r.record_bytes as f64 / 1e6
                )
            };
            report(
                "full Avro validation, decoder only",
                &bench::bench_avro_validation(duration, record_size)?,
            );
            report(
                "full Avro validation, produce path (batch decode, subject check, decode)",
                &bench::bench_enforcer(duration, record_size).await?,
            );
        }
    }
    Ok(())
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{}", self.base, path);
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self
            .http
            .request(method, &url)
            .header("Accept", sluice_schema::api::CONTENT_TYPE);
        if let Some(b) = body {
            req = req
                .header("Content-Type", sluice_schema::api::CONTENT_TYPE)
                .body(b.to_string());
        }
        let resp = req.send().await.with_context(|| format!("connecting to {url}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let msg = v["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            bail!("{} (HTTP {status}, error code {})", msg, v["error_code"]);
        }
        Ok(v)
    }
}

impl SchemaInput {
    fn body(&self) -> Result<Value> {
        let text = match (&self.file, &self.schema) {
            (Some(f), _) if f == "-" => std::io::read_to_string(std::io::stdin())?,
            (Some(f), _) => std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?,
            (None, Some(s)) => s.clone(),
            (None, None) => bail!("give the schema with --file or --schema"),
        };
        let ty = match (&self.schema_type, &self.file) {
            (Some(t), _) => SchemaType::parse(t).with_context(|| format!("unknown schema type {t}"))?,
            (None, Some(f)) if f.ends_with(".proto") => SchemaType::Protobuf,
            (None, Some(f)) if f.ends_with(".json") => SchemaType::Json,
            _ => SchemaType::Avro,
        };
        let mut refs = Vec::new();
        for r in &self.refs {
            let (name, rest) = r
                .split_once('=')
                .with_context(|| format!("bad --ref {r}: NAME=SUBJECT:VERSION"))?;
            let (subject, version) = rest
                .rsplit_once(':')
                .with_context(|| format!("bad --ref {r}: NAME=SUBJECT:VERSION"))?;
            let version: i32 = version.parse().with_context(|| format!("bad version in --ref {r}"))?;
            refs.push(json!({"name": name, "subject": subject, "version": version}));
        }
        let mut body = json!({"schema": text, "schemaType": ty.as_str()});
        if !refs.is_empty() {
            body["references"] = json!(refs);
        }
        Ok(body)
    }
}
