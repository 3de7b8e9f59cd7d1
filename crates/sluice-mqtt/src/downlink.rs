//! Downlink: records produced to the commands topic (`mqtt.commands`) are
//! published to devices, on the MQTT topic named by their `mqtt.topic`
//! header, at the QoS of `mqtt.qos` (default 1). Other headers become MQTT 5
//! user properties. Progress per partition is kept in `mqtt_downlink_offsets`,
//! so a restart carries on where it stopped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytestring::ByteString;
use serde_json::json;
use sluice_client::records::decode_fetched;
use sluice_log::{Log, LogError, Topic};
use sqlx::{AnyPool, Row};

use crate::events;
use crate::message::{qos_from_u8, ForwardProps, Message};
use crate::topic::valid_name;
use crate::uplink::topic_for;
use crate::Gateway;

pub fn start(gw: Arc<Gateway>, log: Log, pool: AnyPool) {
    tokio::spawn(async move {
        loop {
            if let Err(e) = run(&gw, &log, &pool).await {
                tracing::warn!(error = %format!("{e:#}"), "MQTT downlink stopped; restarting");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

async fn run(gw: &Gateway, log: &Log, pool: &AnyPool) -> Result<()> {
    let name = gw.cfg.commands_topic.clone();
    let topic = topic_for(log, &name).await.context("creating the commands topic")?;
    let mut next = load_offsets(pool, &name).await?;
    let mut commits = log.subscribe();
    loop {
        // A deleted and re-created topic: start over with the new one.
        if log.topic(&name).is_none_or(|t| t.id != topic.id) {
            anyhow::bail!("commands topic {name} was replaced");
        }
        let mut progressed = false;
        for p in 0..topic.partition_count() {
            let Some(part) = topic.partition(p) else { continue };
            // In a cluster each partition's leader delivers it.
            let Ok(o) = part.led_offsets() else { continue };
            let at = next.entry(p).or_insert(o.log_start);
            if *at < o.log_start {
                *at = o.log_start;
            }
            if *at >= o.high_watermark {
                continue;
            }
            let after = deliver(gw, log, &topic, p, *at).await?;
            if after > *at {
                *at = after;
                store_offset(pool, &name, p, after).await?;
                progressed = true;
            }
        }
        if !progressed {
            // Woken by the next commit; the timeout also notices new partitions.
            let _ = tokio::time::timeout(Duration::from_secs(1), commits.changed()).await;
        }
    }
}

/// Publishes the records from `offset` on; returns the next offset to read.
async fn deliver(gw: &Gateway, log: &Log, topic: &Topic, partition: i32, offset: i64) -> Result<i64> {
    let read = match log.read(topic, partition, offset, 1 << 20).await {
        Ok(r) => r,
        Err(LogError::OffsetOutOfRange) => return Ok(offset),
        Err(e) => return Err(e.into()),
    };
    let mut at = offset;
    for batch in read.batches {
        let decoded = decode_fetched(partition, batch, at, None)?;
        for rec in decoded.records {
            publish(gw, &rec.headers, rec.value.unwrap_or_default(), rec.offset, partition);
        }
        at = at.max(decoded.next_offset);
    }
    Ok(at)
}

fn publish(
    gw: &Gateway,
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
    if gw.broker.route(&msg) == 0 && !retain {
        gw.broker.events.emit(
            events::MESSAGE_DROPPED,
            "",
            json!({"topic": mqtt_topic, "qos": qos.value(), "reason": "no_subscribers", "source": where_from}),
        );
    }
}

async fn load_offsets(pool: &AnyPool, topic: &str) -> Result<HashMap<i32, i64>> {
    let rows = sqlx::query("SELECT partition, next_offset FROM mqtt_downlink_offsets WHERE topic = $1")
        .bind(topic)
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|r| Ok((r.try_get::<i32, _>("partition")?, r.try_get::<i64, _>("next_offset")?)))
        .collect()
}

async fn store_offset(pool: &AnyPool, topic: &str, partition: i32, next: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO mqtt_downlink_offsets (topic, partition, next_offset) VALUES ($1, $2, $3)
         ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
    )
    .bind(topic)
    .bind(partition)
    .bind(next)
    .execute(pool)
    .await?;
    Ok(())
}
