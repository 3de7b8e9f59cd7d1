//! The measuring consumer: fetches every partition of a topic (split over
//! one or more connections, one fetch in flight on each) and counts what
//! arrives.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sluice_client::{Client, ClientConfig, ConsumedRecord, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};

/// Fetch sizes and wait.
#[derive(Clone, Copy, Debug)]
pub struct FetchSettings {
    /// Most bytes per fetch response.
    pub max_bytes: i32,
    /// Most bytes per partition per fetch response.
    pub partition_max_bytes: i32,
    /// Longest a fetch waits for data.
    pub max_wait: Duration,
}

/// Where each partition starts, and (optionally) where it ends.
#[derive(Clone, Debug)]
pub struct Positions {
    /// `(partition, start offset)`.
    pub start: Vec<(i32, i64)>,
    /// The offset each partition is read up to (exclusive), if bounded.
    pub end: Option<Vec<(i32, i64)>>,
}

/// Look up start offsets (earliest or latest) and the current end offsets of
/// every partition of `topic`.
pub async fn positions(client: &mut Client, topic: &str, from_beginning: bool) -> Result<Positions> {
    let info = client.topic(topic).await?;
    let mut start = Vec::new();
    let mut end = Vec::new();
    for p in &info.partitions {
        let hi = client.list_offsets(topic, p.partition, LATEST_TIMESTAMP).await?;
        let lo = if from_beginning {
            client.list_offsets(topic, p.partition, EARLIEST_TIMESTAMP).await?
        } else {
            hi
        };
        start.push((p.partition, lo));
        end.push((p.partition, hi));
    }
    Ok(Positions { start, end: Some(end) })
}

/// Shared stop conditions and counters of a consumer run.
#[derive(Debug, Default)]
pub struct ConsumeControl {
    /// Set to stop every fetch loop (checked between fetches).
    pub stop: AtomicBool,
    /// Records received so far, all connections together.
    pub records: AtomicU64,
    /// Key and value bytes received so far.
    pub bytes: AtomicU64,
}

/// One fetch loop over `start`'s partitions until `control.stop`, `limit`
/// records in total, `deadline`, or (with `end`) every partition reaching its
/// end offset. `on_records` sees every non-empty fetch result with the time it
/// arrived. Returns when the loop stopped.
#[allow(clippy::too_many_arguments)]
pub async fn fetch_loop(
    client: &mut Client,
    topic: &str,
    mut start: Vec<(i32, i64)>,
    end: Option<Vec<(i32, i64)>>,
    fetch: FetchSettings,
    control: &ConsumeControl,
    limit: Option<u64>,
    deadline: Option<Instant>,
    mut on_records: impl FnMut(&[ConsumedRecord], Instant),
) -> Result<Instant> {
    let reached = |pos: &[(i32, i64)]| {
        end.as_ref().is_some_and(|end| {
            pos.iter()
                .all(|(p, off)| end.iter().any(|(ep, eoff)| ep == p && off >= eoff))
        })
    };
    loop {
        let now = Instant::now();
        if control.stop.load(Ordering::Relaxed)
            || limit.is_some_and(|l| control.records.load(Ordering::Relaxed) >= l)
            || deadline.is_some_and(|d| now >= d)
            || reached(&start)
        {
            return Ok(now);
        }
        let mut wait = fetch.max_wait;
        if let Some(d) = deadline {
            wait = wait.min(d.saturating_duration_since(now));
        }
        let results = client
            .fetch_many(topic, &start, wait, fetch.max_bytes, fetch.partition_max_bytes)
            .await?;
        let arrived = Instant::now();
        for (p, res) in results {
            let got = res.with_context(|| format!("fetching partition {p} of {topic:?}"))?;
            if let Some(pos) = start.iter_mut().find(|(sp, _)| *sp == p) {
                pos.1 = pos.1.max(got.next_offset);
            }
            if got.records.is_empty() {
                continue;
            }
            let bytes: u64 = got
                .records
                .iter()
                .map(|r| (r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len())) as u64)
                .sum();
            control.records.fetch_add(got.records.len() as u64, Ordering::Relaxed);
            control.bytes.fetch_add(bytes, Ordering::Relaxed);
            on_records(&got.records, arrived);
        }
    }
}

/// Consume `positions` over `connections` connections (all connected before
/// the clock starts). Returns when every loop has stopped: the start time and
/// the time the last loop stopped.
#[allow(clippy::too_many_arguments)]
pub async fn consume(
    bootstrap: &str,
    topic: &str,
    positions: Positions,
    fetch: FetchSettings,
    connections: usize,
    control: Arc<ConsumeControl>,
    limit: Option<u64>,
    duration: Option<Duration>,
) -> Result<(Instant, Instant)> {
    let n = connections.clamp(1, positions.start.len().max(1));
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let mut client = connect(bootstrap).await?;
        client.cached_topic(topic).await?;
        clients.push(client);
    }
    let started = Instant::now();
    let deadline = duration.map(|d| started + d);
    let mut tasks = Vec::with_capacity(n);
    for (k, mut client) in clients.into_iter().enumerate() {
        let start: Vec<(i32, i64)> = positions.start.iter().skip(k).step_by(n).copied().collect();
        let end = positions.end.clone();
        let control = control.clone();
        let topic = topic.to_string();
        tasks.push(tokio::spawn(async move {
            fetch_loop(
                &mut client,
                &topic,
                start,
                end,
                fetch,
                &control,
                limit,
                deadline,
                |_, _| {},
            )
            .await
        }));
    }
    let mut last = started;
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(at)) => last = last.max(at),
            Ok(Err(e)) => {
                control.stop.store(true, Ordering::Relaxed);
                first_err.get_or_insert(e);
            }
            Err(e) => bail!("fetch task failed: {e}"),
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok((started, last)),
    }
}

/// A client for the bench.
pub async fn connect(bootstrap: &str) -> Result<Client> {
    let config = ClientConfig {
        client_id: "sluice-bench".to_string(),
        ..ClientConfig::default()
    };
    Client::connect_with(bootstrap, config)
        .await
        .with_context(|| format!("connecting to {bootstrap}"))
}
