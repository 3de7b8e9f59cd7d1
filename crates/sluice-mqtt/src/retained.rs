//! Retained messages: kept in memory for subscribes, and written through to
//! the metadata store (table `mqtt_retained`) so that they survive a restart.
//! Brokers sharing the store re-read it (`refresh`) for what the others retained
//! or cleared; the latest update of a topic wins, and a clearing is an empty row.

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

/// A topic's retained message, or its clearing, and when it was set (ms since the epoch).
/// Clearings are kept a while, so that an older row read from the store cannot bring back
/// what was cleared since.
struct Entry {
    msg: Option<Message>,
    updated_ms: i64,
}

/// A change to write through: the topic's new message (`None`: cleared) and its time.
struct Write {
    topic: String,
    msg: Option<Message>,
    updated_ms: i64,
}

/// Rows re-read on each refresh from this far before the newest one seen: another broker's
/// write may land in the store later than a newer one, and clocks differ a little.
const REFRESH_OVERLAP_MS: i64 = 5_000;

/// Clearings older than this are forgotten, in memory and in the store, every `PURGE_EVERY`.
const CLEARED_KEPT_MS: i64 = 3_600_000;
const PURGE_EVERY: Duration = Duration::from_secs(600);

pub struct RetainedStore {
    map: RwLock<HashMap<String, Entry>>,
    writes: Option<mpsc::UnboundedSender<Write>>,
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

    /// Loads the retained messages and starts writing changes through. Every `refresh`
    /// it re-reads what other brokers sharing the store retained or cleared.
    pub async fn open(pool: AnyPool, refresh: Duration) -> Result<Arc<Self>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let store = Self {
            map: RwLock::new(HashMap::new()),
            writes: Some(tx),
        };
        let newest = store.load(&pool, i64::MIN).await?;
        tokio::spawn(write_through(pool.clone(), rx));
        let store = Arc::new(store);
        tokio::spawn(refresh_loop(Arc::downgrade(&store), pool, refresh, newest));
        Ok(store)
    }

    /// Applies the rows updated after `since` (ms); returns the newest update time seen.
    async fn load(&self, pool: &AnyPool, since: i64) -> Result<i64> {
        let rows =
            sqlx::query("SELECT topic, qos, payload, properties, updated_ms FROM mqtt_retained WHERE updated_ms > $1")
                .bind(since)
                .fetch_all(pool)
                .await?;
        let now_ms = sluice_meta::now_ms();
        let now = Instant::now();
        let mut newest = since;
        for r in rows {
            let topic: String = r.try_get("topic")?;
            let qos: i32 = r.try_get("qos")?;
            let payload: Vec<u8> = r.try_get("payload")?;
            let props: StoredProps = serde_json::from_str(&r.try_get::<String, _>("properties")?).unwrap_or_default();
            let updated_ms: i64 = r.try_get("updated_ms")?;
            newest = newest.max(updated_ms);
            // An empty payload is a clearing; an expired message is one too.
            let msg = (!payload.is_empty() && props.expires_at_ms.is_none_or(|t| t > now_ms))
                .then(|| stored_message(&topic, qos, payload, props, now_ms, now));
            self.apply(topic, msg, updated_ms);
        }
        Ok(newest)
    }

    /// Takes a row read from the store unless this broker holds a newer one for the topic.
    fn apply(&self, topic: String, msg: Option<Message>, updated_ms: i64) {
        let mut map = self.map.write().unwrap();
        if map.get(&topic).is_some_and(|e| e.updated_ms >= updated_ms) {
            return;
        }
        map.insert(topic, Entry { msg, updated_ms });
    }

    /// Retains `msg` for its topic; an empty payload clears the topic.
    pub fn set(&self, msg: &Message) {
        let topic = msg.topic.to_string();
        let stored = (!msg.payload.is_empty()).then(|| msg.clone());
        let updated_ms = {
            let mut map = self.map.write().unwrap();
            // Later than what the topic holds, even if that came from a clock a little ahead.
            let updated_ms = map
                .get(&topic)
                .map_or(i64::MIN, |e| e.updated_ms + 1)
                .max(sluice_meta::now_ms());
            map.insert(
                topic.clone(),
                Entry {
                    msg: stored.clone(),
                    updated_ms,
                },
            );
            updated_ms
        };
        if let Some(w) = &self.writes {
            let _ = w.send(Write {
                topic,
                msg: stored,
                updated_ms,
            });
        }
    }

    pub fn matching(&self, filter: &str) -> Vec<Message> {
        self.map
            .read()
            .unwrap()
            .iter()
            .filter_map(|(t, e)| e.msg.as_ref().filter(|_| matches(filter, t)))
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap().values().filter(|e| e.msg.is_some()).count()
    }

    /// Forgets clearings older than `before` (ms).
    fn forget_cleared(&self, before: i64) {
        self.map
            .write()
            .unwrap()
            .retain(|_, e| e.msg.is_some() || e.updated_ms >= before);
    }
}

/// A message as read back from `mqtt_retained`.
fn stored_message(topic: &str, qos: i32, payload: Vec<u8>, props: StoredProps, now_ms: i64, now: Instant) -> Message {
    Message {
        topic: ByteString::from(topic),
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
    }
}

/// Re-reads what other brokers retained or cleared, every `every`, until the store is
/// dropped; now and then forgets old clearings.
async fn refresh_loop(store: std::sync::Weak<RetainedStore>, pool: AnyPool, every: Duration, mut newest: i64) {
    let mut purged = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let Some(store) = store.upgrade() else { return };
        match store.load(&pool, newest.saturating_sub(REFRESH_OVERLAP_MS)).await {
            Ok(n) => newest = newest.max(n),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "re-reading retained MQTT messages failed"),
        }
        if purged.elapsed() < PURGE_EVERY {
            continue;
        }
        purged = Instant::now();
        let before = sluice_meta::now_ms() - CLEARED_KEPT_MS;
        store.forget_cleared(before);
        let res = sqlx::query("DELETE FROM mqtt_retained WHERE length(payload) = 0 AND updated_ms < $1")
            .bind(before)
            .execute(&pool)
            .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "purging cleared retained MQTT messages failed");
        }
    }
}

async fn write_through(pool: AnyPool, mut rx: mpsc::UnboundedReceiver<Write>) {
    while let Some(w) = rx.recv().await {
        let now = Instant::now();
        let (qos, payload, props) = match &w.msg {
            // A clearing is kept as an empty row, so that other brokers see it.
            None => (0, Vec::new(), StoredProps::default()),
            Some(m) => (
                i32::from(m.qos.value()),
                m.payload.to_vec(),
                StoredProps {
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
                },
            ),
        };
        // A row another broker wrote later stays.
        let res = sqlx::query(
            "INSERT INTO mqtt_retained (topic, qos, payload, properties, updated_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (topic) DO UPDATE SET qos = excluded.qos, payload = excluded.payload,
               properties = excluded.properties, updated_ms = excluded.updated_ms
             WHERE mqtt_retained.updated_ms <= excluded.updated_ms",
        )
        .bind(w.topic)
        .bind(qos)
        .bind(payload)
        .bind(serde_json::to_string(&props).unwrap_or_default())
        .bind(w.updated_ms)
        .execute(&pool)
        .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "could not store a retained MQTT message");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(payload: &'static [u8]) -> Message {
        Message {
            topic: ByteString::from("t"),
            payload: Bytes::from_static(payload),
            qos: rmqtt_codec::types::QoS::AtLeastOnce,
            retain: true,
            props: Arc::new(ForwardProps::default()),
            expires_at: None,
            from: None,
            created_ms: 0,
        }
    }

    fn held(store: &RetainedStore) -> Vec<Bytes> {
        store.matching("#").into_iter().map(|m| m.payload).collect()
    }

    #[test]
    fn the_latest_update_of_a_topic_wins_whichever_broker_made_it() {
        let store = RetainedStore::in_memory();
        store.set(&msg(b"local"));
        let local_ms = store.map.read().unwrap()["t"].updated_ms;
        // A row another broker wrote before this one's set is not taken.
        store.apply("t".into(), Some(msg(b"older")), local_ms - 1);
        assert_eq!(held(&store), vec![Bytes::from_static(b"local")]);
        // A later one is.
        store.apply("t".into(), Some(msg(b"later")), local_ms + 10_000);
        assert_eq!(held(&store), vec![Bytes::from_static(b"later")]);
        // A set here after it is later still, even if this clock is behind the other's.
        store.set(&msg(b"again"));
        assert_eq!(store.map.read().unwrap()["t"].updated_ms, local_ms + 10_001);
        assert_eq!(held(&store), vec![Bytes::from_static(b"again")]);
    }

    #[test]
    fn a_clearing_is_kept_so_that_an_older_row_cannot_bring_the_message_back() {
        let store = RetainedStore::in_memory();
        store.apply("t".into(), Some(msg(b"v1")), 1_000);
        store.apply("t".into(), None, 2_000);
        assert!(held(&store).is_empty());
        assert_eq!(store.len(), 0);
        store.apply("t".into(), Some(msg(b"v1")), 1_000);
        assert!(held(&store).is_empty());
        // Once forgotten, the clearing no longer stands in the way (the store's row went too).
        store.forget_cleared(2_001);
        assert!(store.map.read().unwrap().is_empty());
        store.apply("t".into(), Some(msg(b"v3")), 3_000);
        assert_eq!(held(&store), vec![Bytes::from_static(b"v3")]);
    }

    #[test]
    fn clearing_locally_keeps_a_clearing_to_write_through() {
        let store = RetainedStore::in_memory();
        store.set(&msg(b"v1"));
        store.set(&msg(b""));
        assert!(held(&store).is_empty());
        assert!(store.map.read().unwrap()["t"].msg.is_none());
    }
}
