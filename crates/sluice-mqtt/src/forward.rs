//! Routing between brokers: a publish that subscribers on other brokers want (their topic
//! filters are in `Routes`) is also written to the forward topic (`mqtt.forward`), with
//! the broker it came from in header `mqtt.node`. Every gateway reads that topic (a live
//! `Tail`) and delivers the messages of other brokers to its own sessions, as it does
//! its own clients' publishes, but without storing a retained message again (the
//! publisher's broker did) and without rules or the default topic (applied there).
//!
//! The forward record is keyed by the publisher's client id, so one publisher's messages
//! keep their order on every broker. It is written with the default topic's record and
//! acknowledged with it (QoS 1/2): once the publisher has its PUBACK, the message is
//! durable for the other brokers' subscribers too. The topic is created by the first
//! publish to forward, with a short retention and a partition per live broker (at least
//! the default count), so that forwarded traffic is spread over the cluster's leaders.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rmqtt_codec::types::QoS;
use sluice_client::records::ConsumedRecord;
use sluice_log::{Log, LogError};
use tokio::sync::OnceCell;

use crate::broker::Broker;
use crate::message::Message;
use crate::tail::{Progress, Tail};
use crate::uplink::{create_topic, OutRecord};

/// Header naming the broker a forwarded message was published on.
const NODE: &str = "mqtt.node";
/// Header, one per share group, naming the broker that delivers to it: `node/group/filter`.
/// A broker delivers a forwarded message to the share groups it is named for only.
const SHARE: &str = "mqtt.share";
/// Forwarded messages are for subscribers connected now: kept an hour, for brokers
/// catching up after a pause.
const RETENTION_MS: &str = "3600000";

pub struct Forward {
    topic: String,
    node_id: i32,
    log: Log,
    created: OnceCell<()>,
}

impl Forward {
    /// Starts reading the forward topic `topic` into `broker`'s sessions (once it exists).
    pub fn start(log: Log, topic: String, node_id: i32, bootstrap: String, broker: &Arc<Broker>) -> Self {
        let weak = Arc::downgrade(broker);
        let deliver = move |_: i32, _: bool, rec: ConsumedRecord| {
            if let Some(broker) = weak.upgrade() {
                deliver(&broker, node_id, rec);
            }
        };
        Tail::new(
            log.clone(),
            topic.clone(),
            false,
            bootstrap,
            Progress::Live,
            Box::new(deliver),
        )
        .start();
        Self {
            topic,
            node_id,
            log,
            created: OnceCell::new(),
        }
    }

    /// The record that carries `msg` to the other brokers, and to the share groups
    /// `shares` names (broker, group, filter); creates the topic first if it does not exist.
    pub async fn record(
        &self,
        msg: &Message,
        clientid: &str,
        shares: &[&(i32, String, String)],
    ) -> Result<OutRecord, LogError> {
        self.created
            .get_or_try_init(|| async {
                if self.log.topic(&self.topic).is_some() {
                    return Ok(());
                }
                let configs = BTreeMap::from([("retention.ms".to_string(), RETENTION_MS.to_string())]);
                let brokers = match self.log.meta().list_brokers().await {
                    Ok(rows) => rows.iter().filter(|b| b.alive).count() as i32,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "listing brokers failed");
                        1
                    }
                };
                let partitions = brokers.max(self.log.default_partitions());
                create_topic(&self.log, &self.topic, Some(partitions), configs)
                    .await
                    .map(drop)
            })
            .await?;
        let mut headers = msg.to_headers(Instant::now());
        headers.push((NODE.to_string(), Some(Bytes::from(self.node_id.to_string()))));
        for (node, group, filter) in shares {
            headers.push((SHARE.to_string(), Some(Bytes::from(format!("{node}/{group}/{filter}")))));
        }
        Ok(OutRecord {
            topic: self.topic.clone(),
            key: Some(Bytes::copy_from_slice(clientid.as_bytes())),
            value: msg.payload.clone(),
            headers,
            timestamp: msg.created_ms,
            ack: None,
        })
    }
}

/// Delivers a message another broker forwarded to this broker's sessions.
fn deliver(broker: &Broker, node_id: i32, rec: ConsumedRecord) {
    let own = node_id.to_string();
    let origin = rec
        .headers
        .iter()
        .find(|(k, _)| k == NODE)
        .and_then(|(_, v)| v.as_ref());
    if origin.is_some_and(|v| v.as_ref() == own.as_bytes()) {
        return;
    }
    let payload = rec.value.unwrap_or_default();
    let Some(mut msg) = Message::from_headers(&rec.headers, payload, QoS::AtMostOnce) else {
        tracing::debug!(
            offset = rec.offset,
            "forwarded MQTT message without a valid topic; skipped"
        );
        return;
    };
    msg.from = rec.key.map(|k| Arc::from(String::from_utf8_lossy(&k).as_ref()));
    let shares: Vec<(&str, &str)> = rec
        .headers
        .iter()
        .filter(|(k, _)| k == SHARE)
        .filter_map(|(_, v)| {
            let (node, rest) = std::str::from_utf8(v.as_deref()?).ok()?.split_once('/')?;
            (node == own).then(|| rest.split_once('/')).flatten()
        })
        .collect();
    broker.deliver(&msg, &|g, f| shares.iter().any(|&(sg, sf)| sg == g && sf == f));
}
