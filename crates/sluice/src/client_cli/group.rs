//! `sluice group list|describe|delete|reset-offsets|delete-offsets`: consumer
//! group administration, after Kafka's `kafka-consumer-groups` tool.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args, Subcommand};
use kafka_protocol::error::ResponseError;

use super::ConnArgs;
use sluice_client::error::response_error;
use sluice_client::{Client, GroupDescription, IsolationLevel, EARLIEST_TIMESTAMP, GROUP_NOT_EMPTY, LATEST_TIMESTAMP};

/// List, describe and delete consumer groups, and reset their offsets.
#[derive(Args, Debug, Clone)]
pub struct GroupArgs {
    #[command(flatten)]
    pub conn: ConnArgs,

    #[command(subcommand)]
    pub command: GroupCommand,
}

/// `sluice group` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum GroupCommand {
    /// List groups, one per line: id, state and protocol type, separated by
    /// tabs, sorted by id.
    List {
        /// Only groups in this state (Empty, Stable, PreparingRebalance,
        /// CompletingRebalance, Dead, Assigning, Reconciling; any case);
        /// repeat or separate with commas for several.
        #[arg(long = "state", value_name = "STATE", value_delimiter = ',', value_parser = parse_group_state)]
        states: Vec<String>,
    },
    /// Show a group's state and members, and for each partition it has
    /// committed offsets for or is assigned: the committed offset, the log end
    /// offset and the lag between them.
    Describe {
        /// Id of the group to describe.
        group: String,
    },
    /// Delete groups and their committed offsets; only groups without active
    /// members can be deleted.
    Delete {
        /// Ids of the groups to delete.
        #[arg(required = true, value_name = "GROUP")]
        groups: Vec<String>,
    },
    /// Set a group's committed offsets (only while the group has no active
    /// members) and print them as TOPIC PARTITION NEW-OFFSET.
    ResetOffsets(ResetOffsetsArgs),
    /// Delete a group's committed offsets of some topics or partitions.
    DeleteOffsets {
        /// Id of the group.
        group: String,
        /// Topic whose committed offsets to delete, optionally only of some
        /// partitions (TOPIC:0,2); repeat for several topics.
        #[arg(long = "topic", required = true, value_name = "TOPIC[:P,P...]", value_parser = parse_topic_spec)]
        topics: Vec<TopicSpec>,
    },
}

/// `sluice group reset-offsets` options.
#[derive(Args, Debug, Clone)]
#[command(group(ArgGroup::new("scope").required(true).args(["topics", "all_topics"])))]
#[command(group(ArgGroup::new("target").required(true).args(["to_earliest", "to_latest", "to_datetime", "to_offset"])))]
pub struct ResetOffsetsArgs {
    /// Id of the group whose offsets to reset.
    pub group: String,

    /// Topic to reset, optionally only some of its partitions (TOPIC:0,2);
    /// without partitions, all of them. Repeat for several topics.
    #[arg(long = "topic", value_name = "TOPIC[:P,P...]", value_parser = parse_topic_spec)]
    pub topics: Vec<TopicSpec>,

    /// Reset every partition the group has committed offsets for.
    #[arg(long)]
    pub all_topics: bool,

    /// Reset to the first offset still in each partition's log.
    #[arg(long)]
    pub to_earliest: bool,

    /// Reset to each partition's log end offset (skip everything not yet read).
    #[arg(long)]
    pub to_latest: bool,

    /// Reset to the first record with a timestamp at or after this time, or
    /// to the log end where there is none. ISO 8601 / RFC 3339, e.g.
    /// 2026-11-25T10:00:00Z, 2026-11-25T10:00:00.500+01:00 or 2026-11-25;
    /// a time without a zone is UTC.
    #[arg(long, value_name = "DATETIME", value_parser = parse_datetime_ms)]
    pub to_datetime: Option<i64>,

    /// Reset to this offset, clamped to each partition's log start and log
    /// end offsets.
    #[arg(long, value_name = "OFFSET", allow_negative_numbers = true)]
    pub to_offset: Option<i64>,

    /// Only print the offsets the group would get; commit nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl ResetOffsetsArgs {
    /// The reset target chosen by the flags.
    pub fn target(&self) -> ResetTarget {
        if self.to_earliest {
            ResetTarget::Earliest
        } else if self.to_latest {
            ResetTarget::Latest
        } else if let Some(ms) = self.to_datetime {
            ResetTarget::Datetime(ms)
        } else if let Some(o) = self.to_offset {
            ResetTarget::Offset(o)
        } else {
            unreachable!("clap requires one of the reset targets")
        }
    }
}

/// Where `reset-offsets` moves each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    /// The log start offset.
    Earliest,
    /// The log end offset.
    Latest,
    /// The first offset with a timestamp at or after this time (ms since the epoch).
    Datetime(i64),
    /// This offset, clamped to the log.
    Offset(i64),
}

/// The new offset of one partition, given its log start and end offsets and,
/// for [`ResetTarget::Datetime`], the broker's offset for that time (`None`
/// or negative when no record is that recent).
pub fn reset_offset(target: ResetTarget, log_start: i64, log_end: i64, offset_for_time: Option<i64>) -> i64 {
    let clamp = |o: i64| o.max(log_start).min(log_end);
    match target {
        ResetTarget::Earliest => log_start,
        ResetTarget::Latest => log_end,
        ResetTarget::Datetime(_) => match offset_for_time {
            Some(o) if o >= 0 => clamp(o),
            _ => log_end,
        },
        ResetTarget::Offset(o) => clamp(o),
    }
}

/// Lag of a partition: log end minus committed offset; `None` (shown as `-`)
/// when either is unknown.
pub fn lag(committed: Option<i64>, log_end: Option<i64>) -> Option<i64> {
    Some(log_end? - committed?)
}

/// A `--topic` value: a topic and optionally some of its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub topic: String,
    /// Partitions; `None` for all of them.
    pub partitions: Option<Vec<i32>>,
}

/// Parse `TOPIC` or `TOPIC:P,P...` (Kafka topic names cannot contain `:`).
pub fn parse_topic_spec(s: &str) -> Result<TopicSpec, String> {
    let (topic, parts) = match s.split_once(':') {
        None => (s, None),
        Some((t, p)) => (t, Some(p)),
    };
    if topic.is_empty() {
        return Err(format!("expected TOPIC or TOPIC:P,P..., got {s:?}"));
    }
    let partitions = match parts {
        None => None,
        Some(p) => {
            let mut out = Vec::new();
            for x in p.split(',') {
                let n: i32 = x
                    .trim()
                    .parse()
                    .map_err(|_| format!("invalid partition {x:?} in {s:?}: expected TOPIC:P,P... with numbers"))?;
                if n < 0 {
                    return Err(format!("invalid partition {n} in {s:?}"));
                }
                if !out.contains(&n) {
                    out.push(n);
                }
            }
            out.sort_unstable();
            Some(out)
        }
    };
    Ok(TopicSpec {
        topic: topic.to_string(),
        partitions,
    })
}

/// Group states Kafka defines, as ListGroups spells them.
const GROUP_STATES: &[&str] = &[
    "PreparingRebalance",
    "CompletingRebalance",
    "Stable",
    "Dead",
    "Empty",
    "Assigning",
    "Reconciling",
    "Unknown",
];

/// Parse a group state name, case-insensitively, into Kafka's spelling.
pub fn parse_group_state(s: &str) -> Result<String, String> {
    GROUP_STATES
        .iter()
        .find(|g| g.eq_ignore_ascii_case(s.trim()))
        .map(|g| g.to_string())
        .ok_or_else(|| format!("unknown group state {s:?}; expected one of {}", GROUP_STATES.join(", ")))
}

/// Parse an ISO 8601 / RFC 3339 date-time into milliseconds since the Unix
/// epoch: `YYYY-MM-DD`, optionally followed by `T` (or a space) and
/// `HH:MM[:SS[.fraction]]`, optionally followed by `Z` or an offset
/// `±HH[:MM]` / `±HHMM`. Without a zone the time is UTC.
pub fn parse_datetime_ms(s: &str) -> Result<i64, String> {
    let err = |why: &str| format!("invalid date-time {s:?} ({why}); expected e.g. 2026-11-25T10:00:00Z");
    let b = s.trim().as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, String> {
        let part = b.get(from..from + len).ok_or_else(|| err("too short"))?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(err("expected digits"));
        }
        Ok(part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let expect = |at: usize, c: u8| -> Result<(), String> {
        if b.get(at) == Some(&c) {
            Ok(())
        } else {
            Err(err(&format!("expected '{}' at position {}", c as char, at + 1)))
        }
    };
    let year = num(0, 4)?;
    expect(4, b'-')?;
    let month = num(5, 2)?;
    expect(7, b'-')?;
    let day = num(8, 2)?;
    if !(1..=12).contains(&month) {
        return Err(err("month out of range"));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(err("day out of range"));
    }
    let mut i = 10;
    let (mut hour, mut minute, mut second, mut millis) = (0, 0, 0, 0);
    if i < b.len() && matches!(b[i], b'T' | b't' | b' ') {
        i += 1;
        hour = num(i, 2)?;
        expect(i + 2, b':')?;
        minute = num(i + 3, 2)?;
        i += 5;
        if b.get(i) == Some(&b':') {
            second = num(i + 1, 2)?;
            i += 3;
            if matches!(b.get(i), Some(b'.' | b',')) {
                i += 1;
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i == start {
                    return Err(err("expected digits after the decimal point"));
                }
                // Milliseconds: the first three digits, the rest truncated.
                let digits = &b[start..i.min(start + 3)];
                millis = digits.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
                millis *= 10i64.pow(3 - digits.len() as u32);
            }
        }
        if hour > 23 || minute > 59 || second > 60 {
            return Err(err("time out of range"));
        }
    }
    let offset_minutes = match b.get(i) {
        None => 0,
        Some(b'Z' | b'z') => {
            i += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let h = num(i + 1, 2)?;
            i += 3;
            let m = if b.get(i) == Some(&b':') {
                i += 3;
                num(i - 2, 2)?
            } else if b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 2;
                num(i - 2, 2)?
            } else {
                0
            };
            if h > 23 || m > 59 {
                return Err(err("zone offset out of range"));
            }
            let total = h * 60 + m;
            if sign == b'-' {
                -total
            } else {
                total
            }
        }
        Some(_) => return Err(err("unexpected text after the date")),
    };
    if i != b.len() {
        return Err(err("unexpected text at the end"));
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    let ms = secs * 1000 + millis;
    if ms < 0 {
        return Err(err("before 1970-01-01T00:00:00Z"));
    }
    Ok(ms)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Write rows as columns aligned with spaces (the last column unpadded);
/// empty cells are shown as `-` so that every line splits on whitespace into
/// the same number of fields.
fn write_table(out: &mut impl Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    let cell = |c: &String| if c.is_empty() { "-".to_string() } else { c.clone() };
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell(c).chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            let c = cell(c);
            if i + 1 == row.len() {
                line.push_str(&c);
            } else {
                line.push_str(&format!("{c:<width$}  ", width = widths[i]));
            }
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn header(cols: &[&str]) -> Vec<String> {
    cols.iter().map(|c| c.to_string()).collect()
}

fn opt(v: Option<i64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// `t:0,1;u:2`, `-` for an empty assignment.
fn format_assignment(a: &[(String, Vec<i32>)]) -> String {
    if a.is_empty() {
        return "-".to_string();
    }
    a.iter()
        .map(|(t, ps)| {
            let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
            format!("{t}:{}", ps.join(","))
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// Run `sluice group ...`.
pub async fn run_group(args: GroupArgs) -> Result<()> {
    let mut cfg = args.conn.client_config();
    // Log end offsets are high watermarks, as kafka-consumer-groups reports them.
    cfg.isolation_level = IsolationLevel::ReadUncommitted;
    let mut client = Client::connect_with(&args.conn.bootstrap, cfg).await?;
    let mut out = std::io::stdout().lock();
    match args.command {
        GroupCommand::List { states } => {
            for g in client.list_groups(&states).await? {
                writeln!(
                    out,
                    "{}\t{}\t{}",
                    g.group_id,
                    g.state.as_deref().unwrap_or("-"),
                    g.protocol_type
                )?;
            }
        }
        GroupCommand::Describe { group } => describe(&mut client, &group, &mut out).await?,
        GroupCommand::Delete { groups } => {
            let ids: Vec<&str> = groups.iter().map(String::as_str).collect();
            let mut failures = Vec::new();
            for (id, res) in client.delete_groups(&ids).await? {
                match res {
                    Ok(()) => writeln!(out, "Deleted group {id}.")?,
                    Err(e) => {
                        let e = if response_error(&e) == Some(ResponseError::NonEmptyGroup) {
                            e.context(format!(
                                "cannot delete group {id:?}: it has active members; stop its consumers first"
                            ))
                        } else {
                            e.context(format!("cannot delete group {id:?}"))
                        };
                        failures.push(e);
                    }
                }
            }
            out.flush()?;
            match failures.len() {
                0 => {}
                1 => return Err(failures.pop().expect("one failure")),
                n => {
                    for e in &failures {
                        eprintln!("error: {e:#}");
                    }
                    bail!("{n} of {} groups could not be deleted", ids.len());
                }
            }
        }
        GroupCommand::ResetOffsets(reset) => reset_offsets(&mut client, &reset, &mut out).await?,
        GroupCommand::DeleteOffsets { group, topics } => {
            let mut parts: Vec<(String, Vec<i32>)> = Vec::new();
            for spec in &topics {
                let ps = partitions_of(&mut client, spec).await?;
                match parts.iter_mut().find(|(t, _)| *t == spec.topic) {
                    Some((_, have)) => {
                        have.extend(ps);
                        have.sort_unstable();
                        have.dedup();
                    }
                    None => parts.push((spec.topic.clone(), ps)),
                }
            }
            client
                .offset_delete(&group, &parts)
                .await
                .with_context(|| format!("cannot delete committed offsets of group {group:?}"))?;
            let mut rows = vec![header(&["TOPIC", "PARTITION"])];
            for (t, ps) in &parts {
                for p in ps {
                    rows.push(vec![t.clone(), p.to_string()]);
                }
            }
            write_table(&mut out, &rows)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The partitions a `--topic` value names, checked against the topic's metadata.
async fn partitions_of(client: &mut Client, spec: &TopicSpec) -> Result<Vec<i32>> {
    let t = client.topic(&spec.topic).await?;
    let all: Vec<i32> = t.partitions.iter().map(|p| p.partition).collect();
    match &spec.partitions {
        None => Ok(all),
        Some(ps) => {
            for p in ps {
                if !all.contains(p) {
                    bail!(
                        "topic {:?} has {} partitions; there is no partition {p}",
                        spec.topic,
                        all.len()
                    );
                }
            }
            Ok(ps.clone())
        }
    }
}

async fn describe_one(client: &mut Client, group: &str) -> Result<GroupDescription> {
    let mut descs = client.describe_groups(&[group]).await?;
    descs.pop().context("DescribeGroups returned nothing")
}

async fn describe(client: &mut Client, group: &str, out: &mut impl Write) -> Result<()> {
    let desc = describe_one(client, group).await?;
    let committed = client.offset_fetch(group, None).await?;
    if !desc.exists() && committed.is_empty() {
        bail!("consumer group {group:?} does not exist");
    }
    write_table(
        out,
        &[
            header(&["GROUP", "STATE", "PROTOCOL-TYPE", "PROTOCOL", "MEMBERS"]),
            vec![
                desc.group_id.clone(),
                desc.state.clone(),
                desc.protocol_type.clone(),
                desc.protocol.clone(),
                desc.members.len().to_string(),
            ],
        ],
    )?;
    writeln!(out)?;

    // Partition -> member id, from the members' assignments.
    let mut owner: BTreeMap<(String, i32), String> = BTreeMap::new();
    if desc.members.is_empty() {
        writeln!(out, "Group {group} has no active members.")?;
    } else {
        let mut rows = vec![header(&["MEMBER-ID", "CLIENT-ID", "HOST", "INSTANCE-ID", "ASSIGNMENT"])];
        for m in &desc.members {
            let assignment = match &m.assigned_partitions {
                Some(a) => {
                    for (t, ps) in a {
                        for p in ps {
                            owner.insert((t.clone(), *p), m.member_id.clone());
                        }
                    }
                    format_assignment(a)
                }
                None if m.assignment.is_empty() => "-".to_string(),
                None => "?".to_string(),
            };
            rows.push(vec![
                m.member_id.clone(),
                m.client_id.clone(),
                m.client_host.clone(),
                m.group_instance_id.clone().unwrap_or_default(),
                assignment,
            ]);
        }
        write_table(out, &rows)?;
    }
    writeln!(out)?;

    let mut partitions: BTreeMap<(String, i32), Option<i64>> = BTreeMap::new();
    for c in &committed {
        partitions.insert((c.topic.clone(), c.partition), c.offset);
    }
    for tp in owner.keys() {
        partitions.entry(tp.clone()).or_insert(None);
    }
    if partitions.is_empty() {
        writeln!(out, "Group {group} has no committed offsets.")?;
        return Ok(());
    }
    let mut rows = vec![header(&[
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "CONSUMER-ID",
    ])];
    for ((topic, partition), offset) in &partitions {
        let end = match client.list_offsets(topic, *partition, LATEST_TIMESTAMP).await {
            Ok(o) if o >= 0 => Some(o),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!("log end offset of {topic:?} partition {partition}: {e:#}");
                None
            }
        };
        rows.push(vec![
            topic.clone(),
            partition.to_string(),
            opt(*offset),
            opt(end),
            opt(lag(*offset, end)),
            owner.get(&(topic.clone(), *partition)).cloned().unwrap_or_default(),
        ]);
    }
    write_table(out, &rows)?;
    Ok(())
}

async fn reset_offsets(client: &mut Client, args: &ResetOffsetsArgs, out: &mut impl Write) -> Result<()> {
    let group = args.group.as_str();
    let desc = describe_one(client, group).await?;
    if !desc.is_inactive() {
        let n = desc.members.len();
        let why = format!(
            "cannot reset offsets of group {group:?}: {GROUP_NOT_EMPTY} (state {}, {n} active member{})",
            desc.state,
            if n == 1 { "" } else { "s" }
        );
        if !args.dry_run {
            bail!(why);
        }
        eprintln!("warning: {why}; showing the plan anyway");
    }

    let mut targets: BTreeSet<(String, i32)> = BTreeSet::new();
    if args.all_topics {
        for c in client.offset_fetch(group, None).await? {
            if c.offset.is_some() {
                targets.insert((c.topic, c.partition));
            }
        }
        if targets.is_empty() {
            bail!("group {group:?} has no committed offsets; name the topics to reset with --topic");
        }
    } else {
        for spec in &args.topics {
            for p in partitions_of(client, spec).await? {
                targets.insert((spec.topic.clone(), p));
            }
        }
    }

    let target = args.target();
    let mut plan: Vec<(String, i32, i64)> = Vec::with_capacity(targets.len());
    for (topic, partition) in targets {
        let start = client.list_offsets(&topic, partition, EARLIEST_TIMESTAMP).await?;
        let end = client.list_offsets(&topic, partition, LATEST_TIMESTAMP).await?;
        let for_time = match target {
            ResetTarget::Datetime(ms) => Some(client.list_offsets(&topic, partition, ms).await?),
            _ => None,
        };
        plan.push((topic, partition, reset_offset(target, start, end, for_time)));
    }

    if !args.dry_run {
        client.offset_commit(group, &plan).await?;
    }
    let mut rows = vec![header(&["TOPIC", "PARTITION", "NEW-OFFSET"])];
    rows.extend(
        plan.iter()
            .map(|(t, p, o)| vec![t.clone(), p.to_string(), o.to_string()]),
    );
    write_table(out, &rows)?;
    if args.dry_run {
        out.flush()?;
        eprintln!("Dry run: nothing committed.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_specs() {
        assert_eq!(
            parse_topic_spec("orders"),
            Ok(TopicSpec {
                topic: "orders".into(),
                partitions: None
            })
        );
        assert_eq!(
            parse_topic_spec("orders:2,0,2"),
            Ok(TopicSpec {
                topic: "orders".into(),
                partitions: Some(vec![0, 2])
            })
        );
        assert_eq!(parse_topic_spec("a.b-c_d:7").unwrap().partitions, Some(vec![7]));
        assert!(parse_topic_spec("").is_err());
        assert!(parse_topic_spec(":1").is_err());
        assert!(parse_topic_spec("t:").is_err());
        assert!(parse_topic_spec("t:x").is_err());
        assert!(parse_topic_spec("t:-1").is_err());
        assert!(parse_topic_spec("t:1,,2").is_err());
    }

    #[test]
    fn group_states() {
        assert_eq!(parse_group_state("stable").unwrap(), "Stable");
        assert_eq!(parse_group_state("EMPTY").unwrap(), "Empty");
        assert_eq!(parse_group_state("preparingrebalance").unwrap(), "PreparingRebalance");
        let e = parse_group_state("Busy").unwrap_err();
        assert!(e.contains("CompletingRebalance"), "{e}");
    }

    #[test]
    fn lag_math() {
        assert_eq!(lag(Some(4), Some(10)), Some(6));
        assert_eq!(lag(Some(10), Some(10)), Some(0));
        assert_eq!(lag(None, Some(10)), None);
        assert_eq!(lag(Some(3), None), None);
        // A commit past the log end (e.g. the topic was recreated) shows as negative, as in Kafka.
        assert_eq!(lag(Some(12), Some(10)), Some(-2));
    }

    #[test]
    fn reset_targets() {
        use ResetTarget::*;
        assert_eq!(reset_offset(Earliest, 3, 10, None), 3);
        assert_eq!(reset_offset(Latest, 3, 10, None), 10);
        assert_eq!(reset_offset(Offset(5), 3, 10, None), 5);
        assert_eq!(reset_offset(Offset(1), 3, 10, None), 3);
        assert_eq!(reset_offset(Offset(-7), 3, 10, None), 3);
        assert_eq!(reset_offset(Offset(99), 3, 10, None), 10);
        assert_eq!(reset_offset(Datetime(0), 3, 10, Some(6)), 6);
        assert_eq!(reset_offset(Datetime(0), 3, 10, Some(-1)), 10);
        assert_eq!(reset_offset(Datetime(0), 3, 10, None), 10);
        assert_eq!(reset_offset(Datetime(0), 3, 10, Some(1)), 3);
        assert_eq!(reset_offset(Earliest, 0, 0, None), 0);
    }

    #[test]
    fn datetimes() {
        let ms = |s| parse_datetime_ms(s).unwrap();
        assert_eq!(ms("1970-01-01T00:00:00Z"), 0);
        assert_eq!(ms("1970-01-01"), 0);
        assert_eq!(ms("2000-03-01T00:00:00Z"), 951_868_800_000);
        assert_eq!(ms("2026-11-25T10:00:00Z"), 1_795_600_800_000);
        assert_eq!(ms("2026-11-25T10:00:00"), 1_795_600_800_000);
        assert_eq!(ms("2026-11-25 10:00:00z"), 1_795_600_800_000);
        assert_eq!(ms("2026-11-25T10:00Z"), 1_795_600_800_000);
        assert_eq!(ms("2026-11-25T11:00:00+01:00"), 1_795_600_800_000);
        assert_eq!(ms("2026-11-25T11:30:00+0130"), 1_795_600_800_000);
        assert_eq!(ms("2026-11-25T05:00:00-05"), 1_795_600_800_000);
        assert_eq!(ms("2026-11-25T10:00:00.5Z"), 1_795_600_800_500);
        assert_eq!(ms("2026-11-25T10:00:00.123456789Z"), 1_795_600_800_123);
        assert_eq!(ms("2026-11-25T10:00:00,25+00:00"), 1_795_600_800_250);
        assert_eq!(ms("2024-02-29T23:59:59.999Z"), 1_709_251_199_999);
        assert_eq!(ms("  2026-11-25T10:00:00Z "), 1_795_600_800_000);
        for bad in [
            "",
            "2026",
            "2026-11",
            "2026-13-01",
            "2026-02-29",
            "2026-11-31",
            "2026-11-25T24:00:00Z",
            "2026-11-25T10:60:00Z",
            "2026-11-25T10",
            "2026-11-25T10:00:00.Z",
            "2026-11-25T10:00:00Zjunk",
            "2026-11-25T10:00:00+25:00",
            "1969-12-31T23:59:59Z",
            "yesterday",
            "1795600800000",
        ] {
            assert!(parse_datetime_ms(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn civil_days_match_a_day_by_day_count() {
        let mut days = 0;
        for y in 1970..2100 {
            for m in 1..=12 {
                for d in 1..=days_in_month(y, m) {
                    assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
                    days += 1;
                }
            }
        }
    }

    #[test]
    fn tables_align_and_fill_empty_cells() {
        let mut out = Vec::new();
        write_table(
            &mut out,
            &[
                header(&["TOPIC", "PARTITION", "LAG"]),
                vec!["orders".into(), "0".into(), "".into()],
                vec!["t".into(), "12".into(), "5".into()],
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "TOPIC   PARTITION  LAG\norders  0          -\nt       12         5\n"
        );
    }

    #[test]
    fn assignments_format() {
        assert_eq!(format_assignment(&[]), "-");
        assert_eq!(
            format_assignment(&[("a".into(), vec![0, 1]), ("b".into(), vec![2])]),
            "a:0,1;b:2"
        );
    }
}
