//! Downlink: records produced to the commands topic (`mqtt.commands`) are
//! published to devices, on the MQTT topic named by their `mqtt.topic`
//! header, at the QoS of `mqtt.qos` (default 1). Other headers become MQTT 5
//! user properties.
//!
//! Every gateway publishes every partition to the devices connected to it: the
//! partitions its broker leads are read from the log as they are committed, the
//! others fetched from their leaders (`remote`). Progress per broker and partition
//! is kept in `mqtt_downlink_positions`, so a restart carries on where it stopped.
//! A command that no subscriber on any broker matched is reported once
//! (`message.dropped`), by the gateway leading its partition (`Routes`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytestring::ByteString;
use kafka_protocol::error::ResponseError;
use serde_json::json;
use sluice_client::error::response_error;
use sluice_client::records::{decode_fetched, ConsumedRecord};
use sluice_client::Client;
use sluice_log::{Log, LogError, Topic};
use sqlx::{AnyPool, Row};

use crate::events;
use crate::message::{qos_from_u8, ForwardProps, Message};
use crate::routes::Routes;
use crate::topic::valid_name;
use crate::uplink::topic_for;
use crate::Gateway;

/// How long a fetch from another broker waits for new commands.
const REMOTE_WAIT: Duration = Duration::from_millis(500);
const READ_BYTES: usize = 1 << 20;
/// Wait before fetching again after a failure (a leader moving, or gone).
const RETRY: Duration = Duration::from_millis(200);

/// What both readers share: the next offset each partition is published from, here.
struct Downlink {
    gw: Arc<Gateway>,
    log: Log,
    pool: AnyPool,
    routes: Arc<Routes>,
    node_id: i32,
    /// For partitions other brokers lead.
    bootstrap: String,
    positions: Mutex<HashMap<i32, i64>>,
    /// Where a partition this gateway has no position for starts (see `load_positions`).
    starts: Mutex<HashMap<i32, i64>>,
}

pub fn start(gw: Arc<Gateway>, log: Log, pool: AnyPool, routes: Arc<Routes>, node_id: i32, bootstrap: String) {
    let d = Arc::new(Downlink {
        gw,
        log,
        pool,
        routes,
        node_id,
        bootstrap,
        positions: Mutex::new(HashMap::new()),
        starts: Mutex::new(HashMap::new()),
    });
    tokio::spawn(async move {
        loop {
            if let Err(e) = d.run().await {
                tracing::warn!(error = %format!("{e:#}"), "MQTT downlink stopped; restarting");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

impl Downlink {
    /// Publishes the commands topic until it fails or is replaced.
    async fn run(&self) -> Result<()> {
        let name = self.gw.cfg.commands_topic.clone();
        let topic = topic_for(&self.log, &name)
            .await
            .context("creating the commands topic")?;
        self.load_positions(&name).await?;
        tokio::select! {
            r = self.local(&topic) => r?,
            r = self.remote(&topic) => r?,
        }
        // Replaced (deleted and created again): the new topic starts from its beginning.
        self.forget_positions(&name).await?;
        anyhow::bail!("commands topic {name} was replaced")
    }

    fn replaced(&self, topic: &Topic) -> bool {
        self.log.topic(&topic.name).is_none_or(|t| t.id != topic.id)
    }

    /// Publishes the partitions this broker leads, from the log, as they are committed.
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
                let at = self.position(p, o.log_start);
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
                progressed |= self.publish_from(p, at, records, next, true).await?;
            }
            if !progressed {
                // Woken by the next commit; the timeout also notices new partitions.
                let _ = tokio::time::timeout(Duration::from_secs(1), commits.changed()).await;
            }
        }
    }

    /// Publishes the partitions other brokers lead, fetched from them (long polls of
    /// `REMOTE_WAIT`). Returns when the topic is replaced.
    async fn remote(&self, topic: &Arc<Topic>) -> Result<()> {
        let name = topic.name.as_str();
        let mut client: Option<Client> = None;
        loop {
            if self.replaced(topic) {
                return Ok(());
            }
            let wanted: Vec<(i32, i64)> = (0..topic.partition_count())
                .filter_map(|p| {
                    let part = topic.partition(p).filter(|part| !part.is_led())?;
                    Some((p, self.position(p, part.offsets().log_start)))
                })
                .collect();
            if wanted.is_empty() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let c = match client.as_mut() {
                Some(c) => c,
                // A failure here must not stop the local reader: wait and try again.
                None => match Client::connect(&self.bootstrap).await {
                    Ok(c) => client.insert(c),
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "connecting to fetch MQTT commands failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            let fetched = match c
                .fetch_many(name, &wanted, REMOTE_WAIT, READ_BYTES as i32, READ_BYTES as i32)
                .await
            {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "fetching commands from other brokers failed");
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
                        self.publish_from(p, from, f.records, f.next_offset, false).await?;
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
                        tracing::debug!(partition = p, error = %format!("{e:#}"), "fetching commands failed");
                        failed = true;
                    }
                }
            }
            if failed {
                tokio::time::sleep(RETRY).await;
            }
        }
    }

    /// The offset partition `p` is published from next (`log_start` at the earliest).
    fn position(&self, p: i32, log_start: i64) -> i64 {
        let start = self.starts.lock().unwrap().get(&p).copied();
        let mut positions = self.positions.lock().unwrap();
        let at = positions.entry(p).or_insert_with(|| start.unwrap_or(log_start));
        *at = (*at).max(log_start);
        *at
    }

    /// Moves partition `p` from `from`, out of the log's range, to `to`.
    fn reset(&self, p: i32, from: i64, to: i64) {
        let mut positions = self.positions.lock().unwrap();
        if positions.get(&p) == Some(&from) {
            positions.insert(p, to);
        }
    }

    /// Publishes `records`, read from partition `p` at `from` up to `next`, unless the
    /// other reader has published them already (leadership moved meanwhile), and stores
    /// the new position. Returns whether it published them.
    async fn publish_from(
        &self,
        p: i32,
        from: i64,
        records: Vec<ConsumedRecord>,
        next: i64,
        lead: bool,
    ) -> Result<bool> {
        {
            let mut positions = self.positions.lock().unwrap();
            if next <= from || positions.get(&p) != Some(&from) {
                return Ok(false);
            }
            for rec in records {
                publish(
                    &self.gw,
                    &self.routes,
                    lead,
                    &rec.headers,
                    rec.value.unwrap_or_default(),
                    rec.offset,
                    p,
                );
            }
            positions.insert(p, next);
        }
        store_position(&self.pool, self.node_id, &self.gw.cfg.commands_topic, p, next).await?;
        Ok(true)
    }

    /// This broker's positions; where it has none, a partition starts where the other
    /// brokers are (a broker joining later does not publish the history again), or where
    /// the single gateway of earlier builds was (`mqtt_downlink_offsets`), or else at the
    /// log start.
    async fn load_positions(&self, topic: &str) -> Result<()> {
        let mut own = HashMap::new();
        let mut starts: HashMap<i32, i64> = HashMap::new();
        let rows = sqlx::query("SELECT node_id, partition, next_offset FROM mqtt_downlink_positions WHERE topic = $1")
            .bind(topic)
            .fetch_all(&self.pool)
            .await?;
        let legacy =
            sqlx::query("SELECT -1 AS node_id, partition, next_offset FROM mqtt_downlink_offsets WHERE topic = $1")
                .bind(topic)
                .fetch_all(&self.pool)
                .await?;
        for r in rows.iter().chain(&legacy) {
            let (node, p, at): (i32, i32, i64) = (
                r.try_get("node_id")?,
                r.try_get("partition")?,
                r.try_get("next_offset")?,
            );
            if node == self.node_id {
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

    async fn forget_positions(&self, topic: &str) -> Result<()> {
        sqlx::query("DELETE FROM mqtt_downlink_positions WHERE topic = $1 AND node_id = $2")
            .bind(topic)
            .bind(self.node_id)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM mqtt_downlink_offsets WHERE topic = $1")
            .bind(topic)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Publishes one command to the sessions on this broker. `lead`: this broker leads its
/// partition, so it reports a command that no broker could publish.
fn publish(
    gw: &Gateway,
    routes: &Routes,
    lead: bool,
    headers: &[(String, Option<bytes::Bytes>)],
    payload: bytes::Bytes,
    offset: i64,
    partition: i32,
) {
    let header = |k: &str| {
        headers
            .iter()
            .find(|(h, _)| h == k)
            .and_then(|(_, v)| v.as_ref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let where_from = json!({"kafka_partition": partition, "kafka_offset": offset});
    let Some(mqtt_topic) = header("mqtt.topic").filter(|t| valid_name(t)) else {
        if !lead {
            return;
        }
        gw.broker.events.emit(
            events::MESSAGE_DROPPED,
            "",
            json!({"reason": "no_valid_mqtt_topic_header", "source": where_from}),
        );
        return;
    };
    let qos = header("mqtt.qos")
        .and_then(|q| q.trim().parse::<u8>().ok())
        .and_then(qos_from_u8)
        .unwrap_or(rmqtt_codec::types::QoS::AtLeastOnce);
    let retain = header("mqtt.retain").is_some_and(|r| r == "true" || r == "1");
    let user_properties = headers
        .iter()
        .filter(|(k, _)| !k.starts_with("mqtt."))
        .map(|(k, v)| {
            let v = v
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (ByteString::from(k.clone()), ByteString::from(v))
        })
        .collect();
    let msg = Message {
        topic: ByteString::from(mqtt_topic.clone()),
        payload,
        qos,
        retain,
        props: Arc::new(ForwardProps {
            user_properties,
            ..Default::default()
        }),
        expires_at: None,
        from: None,
        created_ms: sluice_meta::now_ms(),
    };
    if gw.broker.route(&msg) == 0 && !retain && lead && !routes.elsewhere(&mqtt_topic) {
        gw.broker.events.emit(
            events::MESSAGE_DROPPED,
            "",
            json!({"topic": mqtt_topic, "qos": qos.value(), "reason": "no_subscribers", "source": where_from}),
        );
    }
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
