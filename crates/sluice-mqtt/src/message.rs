//! A message as it travels inside the gateway, whatever protocol version
//! brought it in or takes it out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5::UserProperties;

#[derive(Debug, Clone)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 properties worth forwarding (user properties, content type,
    /// response topic, correlation data, payload format).
    pub props: Arc<ForwardProps>,
    /// From the message expiry interval; `None` never expires.
    pub expires_at: Option<Instant>,
    /// The publishing client, for `no_local`; `None` for the gateway's own (downlink).
    pub from: Option<Arc<str>>,
    pub created_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardProps {
    pub user_properties: UserProperties,
    pub content_type: Option<ByteString>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    pub is_utf8_payload: bool,
}

impl Message {
    /// Builds a message from an incoming PUBLISH whose topic alias is resolved.
    pub fn from_publish(p: &Publish, topic: ByteString, from: Option<Arc<str>>, now: Instant) -> Self {
        let (props, expires_at) = match &p.properties {
            Some(pp) => (
                ForwardProps {
                    user_properties: pp.user_properties.clone(),
                    content_type: pp.content_type.clone(),
                    response_topic: pp.response_topic.clone(),
                    correlation_data: pp.correlation_data.clone(),
                    is_utf8_payload: pp.is_utf8_payload,
                },
                pp.message_expiry_interval
                    .map(|s| now + Duration::from_secs(u64::from(s.get()))),
            ),
            None => (ForwardProps::default(), None),
        };
        Self {
            topic,
            payload: p.payload.clone(),
            qos: p.qos,
            retain: p.retain,
            props: Arc::new(props),
            expires_at,
            from,
            created_ms: sluice_meta::now_ms(),
        }
    }

    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

pub fn qos_from_u8(q: u8) -> Option<QoS> {
    match q {
        0 => Some(QoS::AtMostOnce),
        1 => Some(QoS::AtLeastOnce),
        2 => Some(QoS::ExactlyOnce),
        _ => None,
    }
}
