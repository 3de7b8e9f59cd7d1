//! Reading one Kafka topic on every broker, as it grows: the partitions this broker
//! leads are read from the log as they are committed, the others fetched from their
//! leaders (long polls of `REMOTE_WAIT`). The two readers share the positions, so a
//! partition whose leadership moves between them is read on from where it was.
//!
//! Used by the downlink (`mqtt.commands` to devices, positions kept in the store) and
//! by cross-broker routing (`mqtt.forward` to subscribers, live only).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::stream::{FuturesUnordered, StreamExt};
use kafka_protocol::error::ResponseError;
use sluice_client::error::response_error;
use sluice_client::records::{decode_fetched, ConsumedRecord};
use sluice_client::Client;
use sluice_log::{Log, LogError, Topic};
use sqlx::{AnyPool, Row};

use crate::uplink::topic_for;

/// How long a fetch from another broker waits for new records.
const REMOTE_WAIT: Duration = Duration::from_millis(500);
const READ_BYTES: usize = 1 << 20;
/// Wait before fetching again after a failure (a leader moving, or gone).
const RETRY: Duration = Duration::from_millis(200);

/// Where a tail starts reading, and whether its progress is kept.
pub enum Progress {
    /// Kept per broker in `mqtt_downlink_positions`, so that a restart carries on where it
    /// stopped. A partition this broker has no position for starts where the other
    /// brokers are (a broker joining later does not read the history again), or where the
    /// single gateway of earlier builds was (`mqtt_downlink_offsets`), or at the log start.
    Stored { pool: AnyPool, node_id: i32 },
    /// Not kept: the partitions that exist when the tail starts are read from their end;
    /// a topic or partition created later, from its start.
    Live,
}

/// What a tail does with each record: `(partition, this broker leads it, record)`.
pub type Handler = Box<dyn Fn(i32, bool, ConsumedRecord) + Send + Sync>;

/// Marks a partition in `starts` that begins at its end, once that is known.
const AT_END: i64 = -1;

pub struct Tail {
    log: Log,
    topic: String,
    /// Create the topic if it is missing; else wait until it exists.
    create: bool,
    /// A Kafka address of the cluster, for the partitions other brokers lead.
    bootstrap: String,
    progress: Progress,
    handler: Handler,
    /// The next offset each partition is read from.
    positions: Mutex<HashMap<i32, i64>>,
    /// Where a partition with no position starts (an offset or `AT_END`); else the log start.
    starts: Mutex<HashMap<i32, i64>>,
    began: AtomicBool,
}

impl Tail {
    pub fn new(log: Log, topic: String, create: bool, bootstrap: String, progress: Progress, handler: Handler) -> Self {
        Self {
            log,
            topic,
            create,
            bootstrap,
            progress,
            handler,
            positions: Mutex::new(HashMap::new()),
            starts: Mutex::new(HashMap::new()),
            began: AtomicBool::new(false),
        }
    }

    /// Reads the topic for as long as the process runs; restarts a second after a failure.
    pub fn start(self) {
        let t = Arc::new(self);
        tokio::spawn(async move {
            loop {
                if let Err(e) = t.run().await {
                    tracing::warn!(topic = %t.topic, error = %format!("{e:#}"), "MQTT tail stopped; restarting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Reads the topic until it fails or is replaced.
    async fn run(&self) -> Result<()> {
        let first = !self.began.swap(true, Ordering::Relaxed);
        let mut waited = false;
        let topic = loop {
            if self.create {
                break topic_for(&self.log, &self.topic)
                    .await
                    .with_context(|| format!("creating topic {}", self.topic))?;
            }
            if let Some(t) = self.log.topic(&self.topic) {
                break t;
            }
            waited = true;
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        match &self.progress {
            Progress::Stored { pool, node_id } => self.load_positions(pool, *node_id).await?,
            Progress::Live if first && !waited => {
                let mut starts = self.starts.lock().unwrap();
                starts.extend((0..topic.partition_count()).map(|p| (p, AT_END)));
            }
            Progress::Live => {}
        }
        tokio::select! {
            r = self.local(&topic) => r?,
            r = self.remote(&topic) => r?,
        }
        // Replaced (deleted and created again): the new topic is read from its beginning.
        self.positions.lock().unwrap().clear();
        self.starts.lock().unwrap().clear();
        if let Progress::Stored { pool, node_id } = &self.progress {
            forget_positions(pool, *node_id, &self.topic).await?;
        }
        anyhow::bail!("topic {} was replaced", self.topic)
    }

    fn replaced(&self, topic: &Topic) -> bool {
        self.log.topic(&topic.name).is_none_or(|t| t.id != topic.id)
    }

    /// Reads the partitions this broker leads, from the log, as they are committed.
    /// Returns when the topic is replaced.
    async fn local(&self, topic: &Arc<Topic>) -> Result<()> {
        let mut commits = self.log.subscribe();
        loop {
            if self.replaced(topic) {
                return Ok(());
            }
            let mut progressed = false;
            for p in 0..topic.partition_count() {
                let Some(part) = topic.partition(p) else { continue };
                let Ok(o) = part.led_offsets() else { continue };
                let Some(at) = self.position(p, o.log_start) else {
                    self.begin(p, o.high_watermark);
                    continue;
                };
                if at >= o.high_watermark {
                    continue;
                }
                let read = match self.log.read(topic, p, at, READ_BYTES).await {
                    Ok(r) => r,
                    Err(LogError::OffsetOutOfRange | LogError::NotLeader) => continue,
                    Err(e) => return Err(e.into()),
                };
                let (mut records, mut next) = (Vec::new(), at);
                for batch in read.batches {
                    let decoded = decode_fetched(p, batch, next, None)?;
                    records.extend(decoded.records);
                    next = next.max(decoded.next_offset);
                }
                progressed |= self.handle(p, at, records, next, true).await?;
            }
            if !progressed {
                // Woken by the next commit; the timeout also notices new partitions.
                let _ = tokio::time::timeout(Duration::from_secs(1), commits.changed()).await;
            }
        }
    }

    /// Reads the partitions other brokers lead, fetched from them: one reader per leader,
    /// each with its own connection, so that a long poll waiting on one leader does not
    /// hold up what another has. Returns when the topic is replaced.
    async fn remote(&self, topic: &Arc<Topic>) -> Result<()> {
        let mut running = HashSet::new();
        let mut readers = FuturesUnordered::new();
        loop {
            if self.replaced(topic) {
                return Ok(());
            }
            for leader in self.led_elsewhere(topic).into_values() {
                if running.insert(leader) {
                    readers.push(async move { (leader, self.remote_from(topic, leader).await) });
                }
            }
            tokio::select! {
                Some((leader, result)) = readers.next() => {
                    running.remove(&leader);
                    result?;
                }
                // Leaders that appeared meanwhile (a reader ends once its leader has none).
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// The partitions other brokers lead, as this broker last read the metadata, by leader.
    fn led_elsewhere(&self, topic: &Topic) -> HashMap<i32, i32> {
        (0..topic.partition_count())
            .filter_map(|p| {
                let part = topic.partition(p).filter(|part| !part.is_led())?;
                Some((p, part.leader()))
            })
            .collect()
    }

    /// Reads the partitions `leader` leads, until it leads none or the topic is replaced.
    async fn remote_from(&self, topic: &Arc<Topic>, leader: i32) -> Result<()> {
        let name = topic.name.as_str();
        let mut client: Option<Client> = None;
        loop {
            if self.replaced(topic) {
                return Ok(());
            }
            let elsewhere: Vec<(i32, Option<i64>)> = self
                .led_elsewhere(topic)
                .into_iter()
                .filter(|&(_, l)| l == leader)
                .map(|(p, _)| {
                    let log_start = topic.partition(p).map_or(0, |part| part.offsets().log_start);
                    (p, self.position(p, log_start))
                })
                .collect();
            if elsewhere.is_empty() {
                return Ok(());
            }
            let c = match client.as_mut() {
                Some(c) => c,
                // A failure here must not stop the local reader: wait and try again.
                None => match Client::connect(&self.bootstrap).await {
                    Ok(c) => client.insert(c),
                    Err(e) => {
                        tracing::warn!(topic = name, error = %format!("{e:#}"), "connecting to fetch from other brokers failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            let mut wanted = Vec::with_capacity(elsewhere.len());
            for (p, at) in elsewhere {
                match at {
                    Some(at) => wanted.push((p, at)),
                    // Starts at its end: read from the next round on.
                    None => self.begin(p, c.list_offsets(name, p, -1).await?),
                }
            }
            if wanted.is_empty() {
                continue;
            }
            let fetched = match c
                .fetch_many(name, &wanted, REMOTE_WAIT, READ_BYTES as i32, READ_BYTES as i32)
                .await
            {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(topic = name, error = %format!("{e:#}"), "fetching from other brokers failed");
                    client = None;
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            let mut failed = false;
            for (p, result) in fetched {
                let Some(&(_, from)) = wanted.iter().find(|w| w.0 == p) else {
                    continue;
                };
                match result {
                    Ok(f) => {
                        self.handle(p, from, f.records, f.next_offset, false).await?;
                    }
                    // Behind the log start (retention), or past the end (a position taken
                    // from elsewhere): carry on from the start, or from the end.
                    Err(e) if response_error(&e) == Some(ResponseError::OffsetOutOfRange) => {
                        let earliest = c.list_offsets(name, p, -2).await?;
                        let to = if from < earliest {
                            earliest
                        } else {
                            c.list_offsets(name, p, -1).await?
                        };
                        self.reset(p, from, to);
                        failed = true;
                    }
                    // Leadership moving: the client re-reads the metadata.
                    Err(e) => {
                        tracing::debug!(topic = name, partition = p, error = %format!("{e:#}"), "fetching failed");
                        failed = true;
                    }
                }
            }
            if failed {
                tokio::time::sleep(RETRY).await;
            }
        }
    }

    /// The offset partition `p` is read from next (`log_start` at the earliest); `None`
    /// if it starts at its end, which the caller finds out (`begin`).
    fn position(&self, p: i32, log_start: i64) -> Option<i64> {
        let start = self.starts.lock().unwrap().get(&p).copied();
        let mut positions = self.positions.lock().unwrap();
        if !positions.contains_key(&p) && start == Some(AT_END) {
            return None;
        }
        let at = positions.entry(p).or_insert_with(|| start.unwrap_or(log_start));
        *at = (*at).max(log_start);
        Some(*at)
    }

    /// Starts partition `p` at `end`, unless the other reader started it meanwhile.
    fn begin(&self, p: i32, end: i64) {
        self.positions.lock().unwrap().entry(p).or_insert(end);
    }

    /// Moves partition `p` from `from`, out of the log's range, to `to`.
    fn reset(&self, p: i32, from: i64, to: i64) {
        let mut positions = self.positions.lock().unwrap();
        if positions.get(&p) == Some(&from) {
            positions.insert(p, to);
        }
    }

    /// Handles `records`, read from partition `p` at `from` up to `next`, unless the other
    /// reader has handled them already (leadership moved meanwhile), and keeps the new
    /// position. Returns whether it handled them.
    async fn handle(&self, p: i32, from: i64, records: Vec<ConsumedRecord>, next: i64, lead: bool) -> Result<bool> {
        {
            // Held while the records are handled (in-memory work only), so that leadership
            // moving mid-batch cannot hand them over twice.
            let mut positions = self.positions.lock().unwrap();
            if next <= from || positions.get(&p) != Some(&from) {
                return Ok(false);
            }
            for rec in records {
                (self.handler)(p, lead, rec);
            }
            positions.insert(p, next);
        }
        if let Progress::Stored { pool, node_id } = &self.progress {
            store_position(pool, *node_id, &self.topic, p, next).await?;
        }
        Ok(true)
    }

    /// This broker's stored positions, and where the partitions it has none for start.
    async fn load_positions(&self, pool: &AnyPool, node_id: i32) -> Result<()> {
        let mut own = HashMap::new();
        let mut starts: HashMap<i32, i64> = HashMap::new();
        let rows = sqlx::query("SELECT node_id, partition, next_offset FROM mqtt_downlink_positions WHERE topic = $1")
            .bind(&self.topic)
            .fetch_all(pool)
            .await?;
        let legacy =
            sqlx::query("SELECT -1 AS node_id, partition, next_offset FROM mqtt_downlink_offsets WHERE topic = $1")
                .bind(&self.topic)
                .fetch_all(pool)
                .await?;
        for r in rows.iter().chain(&legacy) {
            let (node, p, at): (i32, i32, i64) = (
                r.try_get("node_id")?,
                r.try_get("partition")?,
                r.try_get("next_offset")?,
            );
            if node == node_id {
                own.insert(p, at);
            } else {
                let s = starts.entry(p).or_insert(at);
                *s = (*s).max(at);
            }
        }
        *self.positions.lock().unwrap() = own;
        *self.starts.lock().unwrap() = starts;
        Ok(())
    }
}

async fn forget_positions(pool: &AnyPool, node_id: i32, topic: &str) -> Result<()> {
    sqlx::query("DELETE FROM mqtt_downlink_positions WHERE topic = $1 AND node_id = $2")
        .bind(topic)
        .bind(node_id)
        .execute(pool)
        .await?;
    sqlx::query("DELETE FROM mqtt_downlink_offsets WHERE topic = $1")
        .bind(topic)
        .execute(pool)
        .await?;
    Ok(())
}

async fn store_position(pool: &AnyPool, node_id: i32, topic: &str, partition: i32, next: i64) -> Result<()> {
    // The two readers may store one partition's positions out of order: keep the later.
    sqlx::query(
        "INSERT INTO mqtt_downlink_positions (node_id, topic, partition, next_offset) VALUES ($1, $2, $3, $4)
         ON CONFLICT (node_id, topic, partition) DO UPDATE SET next_offset = excluded.next_offset
         WHERE mqtt_downlink_positions.next_offset < excluded.next_offset",
    )
    .bind(node_id)
    .bind(topic)
    .bind(partition)
    .bind(next)
    .execute(pool)
    .await?;
    Ok(())
}
