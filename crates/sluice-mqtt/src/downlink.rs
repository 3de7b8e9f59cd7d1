//! Downlink: records produced to the commands topic (`mqtt.commands`) are
//! published to devices, on the MQTT topic named by their `mqtt.topic`
//! header, at the QoS of `mqtt.qos` (default 1). Other headers become MQTT 5
//! properties (`Message::from_headers`).
//!
//! Every gateway publishes every partition to the devices connected to it (a `Tail`
//! over the topic). Progress per broker and partition is kept in
//! `mqtt_downlink_positions`, so a restart carries on where it stopped. A command that
//! no subscriber on any broker matched is reported once (`message.dropped`), by the
//! gateway leading its partition (`Routes`).

use std::sync::Arc;

use rmqtt_codec::types::QoS;
use serde_json::json;
use sluice_client::records::ConsumedRecord;
use sluice_log::Log;
use sqlx::AnyPool;

use crate::events;
use crate::message::Message;
use crate::routes::{share_owner, Routes};
use crate::tail::{Progress, Tail};
use crate::Gateway;

pub fn start(gw: Arc<Gateway>, log: Log, pool: AnyPool, routes: Arc<Routes>, node_id: i32, bootstrap: String) {
    let topic = gw.cfg.commands_topic.clone();
    let publish = move |p, lead, rec| publish(&gw, &routes, lead, p, rec);
    let progress = Progress::Stored { pool, node_id };
    Tail::new(log, topic, true, bootstrap, progress, Box::new(publish)).start();
}

/// Publishes one command to the sessions on this broker. `lead`: this broker leads its
/// partition, so it reports a command that no broker could publish.
fn publish(gw: &Gateway, routes: &Routes, lead: bool, partition: i32, rec: ConsumedRecord) {
    let where_from = json!({"kafka_partition": partition, "kafka_offset": rec.offset});
    let payload = rec.value.unwrap_or_default();
    let Some(msg) = Message::from_headers(&rec.headers, payload, QoS::AtLeastOnce) else {
        if lead {
            gw.broker.events.emit(
                events::MESSAGE_DROPPED,
                "",
                json!({"reason": "no_valid_mqtt_topic_header", "source": where_from}),
            );
        }
        return;
    };
    // A share group with members on several brokers: every broker reads the command, and
    // the one `share_owner` picks for its offset delivers it.
    let (own, key) = (routes.node_id(), ((partition as u64) << 48) ^ rec.offset as u64);
    let mine = |group: &str, filter: &str| {
        let mut brokers = routes.share_brokers(group, filter);
        brokers.insert(own);
        share_owner(&brokers, group, key) == Some(own)
    };
    if gw.broker.route(&msg, &mine) == 0 && !msg.retain && lead && !routes.elsewhere(&msg.topic) {
        gw.broker.events.emit(
            events::MESSAGE_DROPPED,
            "",
            json!({"topic": &*msg.topic, "qos": msg.qos.value(), "reason": "no_subscribers", "source": where_from}),
        );
    }
}
