//! `sluice topic`, `sluice produce`, `sluice consume` and `sluice group`: clap
//! definitions and runners, on `sluice_client`.

mod consume;
mod group;
mod produce;
mod topic;

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use kafka_protocol::error::ResponseError;
use sluice_client::error::response_error;
use sluice_client::{Acks, Client, ClientConfig};

pub use consume::{run_consume, ConsumeArgs};
pub use group::{run_group, GroupArgs};
pub use produce::{run_produce, ProduceArgs};
pub use topic::{run_topic, TopicArgs};

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

/// How long produce and consume wait for a just-created topic to appear in
/// the metadata with a leader for every partition.
const TOPIC_WAIT: Duration = Duration::from_secs(5);

/// Metadata for `name`, retrying briefly while it is unknown or has
/// partitions without a leader (as right after creation, until the metadata
/// has propagated).
pub(crate) async fn wait_for_topic(client: &mut Client, name: &str) -> Result<sluice_client::TopicInfo> {
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
    use super::consume::{IsolationArg, Printer};
    use super::group::{GroupCommand, ResetOffsetsArgs, ResetTarget, TopicSpec};
    use super::produce::{split_once, unescape_separator, CompressionArg};
    use super::topic::TopicCommand;
    use super::*;
    use bytes::Bytes;
    use clap::{CommandFactory, Parser, Subcommand};
    use kafka_protocol::records::TimestampType;
    use sluice_client::ConsumedRecord;

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
