//! Retained messages: kept in memory for subscribes, and written through to
//! the metadata store (table `mqtt_retained`) so that they survive a restart.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use sqlx::{AnyPool, Row};
use tokio::sync::mpsc;

use crate::message::{qos_from_u8, ForwardProps, Message};
use crate::topic::matches;

/// Properties column of `mqtt_retained`.
#[derive(Serialize, Deserialize, Default)]
struct StoredProps {
    user_properties: Vec<(String, String)>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<Vec<u8>>,
    is_utf8_payload: bool,
    expires_at_ms: Option<i64>,
    from: Option<String>,
}

enum Op {
    Set(Message),
    Delete(String),
}

pub struct RetainedStore {
    map: RwLock<HashMap<String, Message>>,
    writes: Option<mpsc::UnboundedSender<Op>>,
}

impl RetainedStore {
    /// A store that keeps nothing across restarts (unit tests).
    #[cfg(test)]
    pub fn in_memory() -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            writes: None,
        }
    }

    /// Loads the retained messages and starts writing changes through.
    pub async fn open(pool: AnyPool) -> Result<Self> {
        let rows = sqlx::query("SELECT topic, qos, payload, properties FROM mqtt_retained")
            .fetch_all(&pool)
            .await?;
        let now_ms = sluice_meta::now_ms();
        let now = Instant::now();
        let mut map = HashMap::new();
        for r in rows {
            let topic: String = r.try_get("topic")?;
            let qos: i32 = r.try_get("qos")?;
            let payload: Vec<u8> = r.try_get("payload")?;
            let props: StoredProps = serde_json::from_str(&r.try_get::<String, _>("properties")?).unwrap_or_default();
            if props.expires_at_ms.is_some_and(|t| t <= now_ms) {
                continue;
            }
            let msg = Message {
                topic: ByteString::from(topic.clone()),
                payload: Bytes::from(payload),
                qos: qos_from_u8(qos as u8).unwrap_or(rmqtt_codec::types::QoS::AtMostOnce),
                retain: true,
                props: Arc::new(ForwardProps {
                    user_properties: props
                        .user_properties
                        .into_iter()
                        .map(|(k, v)| (k.into(), v.into()))
                        .collect(),
                    content_type: props.content_type.map(Into::into),
                    response_topic: props.response_topic.map(Into::into),
                    correlation_data: props.correlation_data.map(Bytes::from),
                    is_utf8_payload: props.is_utf8_payload,
                }),
                expires_at: props
                    .expires_at_ms
                    .map(|t| now + Duration::from_millis((t - now_ms).max(0) as u64)),
                from: props.from.map(Arc::from),
                created_ms: now_ms,
            };
            map.insert(topic, msg);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_through(pool, rx));
        Ok(Self {
            map: RwLock::new(map),
            writes: Some(tx),
        })
    }

    /// Retains `msg` for its topic; an empty payload clears the topic.
    pub fn set(&self, msg: &Message) {
        let topic = msg.topic.to_string();
        let op = if msg.payload.is_empty() {
            self.map.write().unwrap().remove(&topic);
            Op::Delete(topic)
        } else {
            self.map.write().unwrap().insert(topic, msg.clone());
            Op::Set(msg.clone())
        };
        if let Some(w) = &self.writes {
            let _ = w.send(op);
        }
    }

    pub fn matching(&self, filter: &str) -> Vec<Message> {
        self.map
            .read()
            .unwrap()
            .iter()
            .filter(|(t, _)| matches(filter, t))
            .map(|(_, m)| m.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap().len()
    }
}

async fn write_through(pool: AnyPool, mut rx: mpsc::UnboundedReceiver<Op>) {
    while let Some(op) = rx.recv().await {
        let res = match op {
            Op::Delete(topic) => sqlx::query("DELETE FROM mqtt_retained WHERE topic = $1")
                .bind(topic)
                .execute(&pool)
                .await
                .map(|_| ()),
            Op::Set(m) => {
                let now = Instant::now();
                let props = StoredProps {
                    user_properties: m
                        .props
                        .user_properties
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    content_type: m.props.content_type.as_ref().map(ToString::to_string),
                    response_topic: m.props.response_topic.as_ref().map(ToString::to_string),
                    correlation_data: m.props.correlation_data.as_ref().map(|b| b.to_vec()),
                    is_utf8_payload: m.props.is_utf8_payload,
                    expires_at_ms: m
                        .expires_at
                        .map(|t| sluice_meta::now_ms() + t.saturating_duration_since(now).as_millis() as i64),
                    from: m.from.as_deref().map(ToString::to_string),
                };
                sqlx::query(
                    "INSERT INTO mqtt_retained (topic, qos, payload, properties, updated_ms) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (topic) DO UPDATE SET qos = excluded.qos, payload = excluded.payload,
                       properties = excluded.properties, updated_ms = excluded.updated_ms",
                )
                .bind(m.topic.to_string())
                .bind(i32::from(m.qos.value()))
                .bind(m.payload.to_vec())
                .bind(serde_json::to_string(&props).unwrap_or_default())
                .bind(sluice_meta::now_ms())
                .execute(&pool)
                .await
                .map(|_| ())
            }
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "could not store a retained MQTT message");
        }
    }
}
