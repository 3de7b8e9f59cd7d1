//! Gateway settings: the `[mqtt]` table of the config file (`mqtt.default-topic`, ...).

use serde::{Deserialize, Serialize};

/// A rule declared in the config file; the same fields as `POST /api/v1/mqtt/rules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    pub sql: String,
    pub kafka_topic: String,
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Kafka topic every MQTT publish lands in; empty disables the uplink.
    pub default_topic: String,
    /// Kafka topic of lifecycle and delivery events; empty disables them.
    pub events_topic: String,
    /// Kafka topic whose records are published to devices.
    pub commands_topic: String,
    /// Kafka topic carrying publishes to subscribers on other brokers of a cluster;
    /// empty: subscribers receive the publishes made on their own broker only.
    pub forward_topic: String,
    /// Largest MQTT packet accepted; a larger one closes the connection with 0x95.
    pub max_packet_size: u32,
    /// `user:password` pairs allowed to connect. Empty: anyone may connect
    /// unless `allow-anonymous` is false.
    pub users: Vec<String>,
    /// Whether clients without a username may connect when `users` is set.
    pub allow_anonymous: bool,
    /// Messages kept per offline persistent session; older ones are dropped.
    pub max_queued_messages: usize,
    /// QoS 1/2 messages sent to a subscriber and not yet acknowledged (the
    /// client's Receive Maximum lowers it).
    pub max_inflight: u16,
    /// Topic filters clients may not subscribe to (SUBACK 0x80).
    pub deny_subscribe: Vec<String>,
    /// Longest keep-alive (seconds) a client may use; a longer one (or 0) is
    /// lowered to this and told to MQTT 5 clients as Server Keep Alive. 0: no limit.
    pub max_keep_alive: u16,
    /// Record bytes the gateway holds between reading publishes and their being
    /// durable; beyond it connections stop reading from their sockets until the log
    /// catches up (TCP back-pressure).
    pub inflight_bytes: u64,
    /// Rules declared in the config file; created (or replaced) at start.
    pub rules: Vec<RuleConfig>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            default_topic: "mqtt".into(),
            events_topic: "mqtt.events".into(),
            commands_topic: "mqtt.commands".into(),
            forward_topic: "mqtt.forward".into(),
            max_packet_size: 1 << 20,
            users: Vec::new(),
            allow_anonymous: true,
            max_queued_messages: 1000,
            max_inflight: 32,
            deny_subscribe: Vec::new(),
            max_keep_alive: 0,
            inflight_bytes: 64 << 20,
            rules: Vec::new(),
        }
    }
}
