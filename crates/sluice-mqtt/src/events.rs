//! Lifecycle and delivery events: JSON records in the events topic, and input
//! for rules that select `FROM "$events/<name>"`.
//!
//! Emitting never blocks the caller (it may hold a session lock): events go
//! through an unbounded channel to a task that writes them.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::rules::Rules;
use crate::uplink::{OutRecord, Uplink};

pub use crate::event_names::*;

/// Handle for emitting events. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::UnboundedSender<Value>,
}

impl Events {
    /// Starts the writer. An empty `topic` keeps events for rules only.
    pub fn start(uplink: Uplink, topic: String, rules: Arc<Rules>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, uplink, topic, rules));
        Self { tx }
    }

    /// Events that go to the returned receiver instead of the log (unit tests).
    #[cfg(test)]
    pub fn capture() -> (Self, mpsc::UnboundedReceiver<Value>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, rx)
    }

    /// Emits `event` about `clientid` with extra `fields`.
    pub fn emit(&self, event: &str, clientid: &str, fields: Value) {
        let mut obj = Map::new();
        obj.insert("event".into(), json!(event));
        obj.insert("clientid".into(), json!(clientid));
        obj.insert("timestamp".into(), json!(sluice_meta::now_ms()));
        if let Value::Object(extra) = fields {
            obj.extend(extra);
        }
        let _ = self.tx.send(Value::Object(obj));
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Value>, uplink: Uplink, topic: String, rules: Arc<Rules>) {
    while let Some(ev) = rx.recv().await {
        let name = ev["event"].as_str().unwrap_or_default().to_string();
        let clientid = ev["clientid"].as_str().unwrap_or_default().to_string();
        let ts = ev["timestamp"].as_i64().unwrap_or_else(sluice_meta::now_ms);
        for out in rules.on_event(&name, &ev) {
            uplink.send(out).await;
        }
        if topic.is_empty() {
            continue;
        }
        let value = Bytes::from(serde_json::to_vec(&ev).unwrap_or_default());
        uplink
            .send(OutRecord {
                topic: topic.clone(),
                key: Some(Bytes::from(clientid)),
                value,
                headers: vec![("mqtt.event".into(), Some(Bytes::from(name)))],
                timestamp: ts,
                ack: None,
            })
            .await;
    }
}
