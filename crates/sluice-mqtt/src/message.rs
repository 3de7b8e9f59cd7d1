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

/// Record headers of a message in Kafka.
pub type Headers = Vec<(String, Option<Bytes>)>;

/// MQTT 5 properties carried as headers of their own (user properties are headers
/// named by their key).
const CONTENT_TYPE: &str = "mqtt.content_type";
const RESPONSE_TOPIC: &str = "mqtt.response_topic";
const CORRELATION_DATA: &str = "mqtt.correlation_data";
const PAYLOAD_FORMAT: &str = "mqtt.payload_format";
const EXPIRY: &str = "mqtt.message_expiry_interval";

impl Message {
    /// The headers that carry this message in a record: `mqtt.topic`, `mqtt.qos`,
    /// `mqtt.retain`, the MQTT 5 properties it has (`mqtt.content_type`, ..., and the
    /// expiry interval left, in seconds), then its user properties.
    pub fn to_headers(&self, now: Instant) -> Headers {
        let text = |s: &str| Some(Bytes::copy_from_slice(s.as_bytes()));
        let p = &self.props;
        let mut h = Vec::with_capacity(3 + p.user_properties.len());
        h.push(("mqtt.topic".to_string(), text(&self.topic)));
        h.push(("mqtt.qos".to_string(), text(&self.qos.value().to_string())));
        h.push(("mqtt.retain".to_string(), text(&self.retain.to_string())));
        if let Some(v) = &p.content_type {
            h.push((CONTENT_TYPE.to_string(), text(v)));
        }
        if let Some(v) = &p.response_topic {
            h.push((RESPONSE_TOPIC.to_string(), text(v)));
        }
        if let Some(v) = &p.correlation_data {
            h.push((CORRELATION_DATA.to_string(), Some(v.clone())));
        }
        if p.is_utf8_payload {
            h.push((PAYLOAD_FORMAT.to_string(), text("1")));
        }
        if let Some(at) = self.expires_at {
            let left = at.saturating_duration_since(now).as_secs_f64().ceil().max(1.0);
            h.push((EXPIRY.to_string(), text(&(left as u64).to_string())));
        }
        for (k, v) in &p.user_properties {
            h.push((k.to_string(), text(v)));
        }
        h
    }

    /// The message a record carries (the reverse of `to_headers`); `None` without a
    /// valid `mqtt.topic`. Without `mqtt.qos` it is `default_qos`.
    pub fn from_headers(headers: &[(String, Option<Bytes>)], payload: Bytes, default_qos: QoS) -> Option<Self> {
        let raw = |k: &str| headers.iter().find(|(h, _)| h == k).and_then(|(_, v)| v.clone());
        let text = |k: &str| raw(k).map(|v| ByteString::from(String::from_utf8_lossy(&v).into_owned()));
        let topic = text("mqtt.topic").filter(|t| crate::topic::valid_name(t))?;
        let qos = text("mqtt.qos")
            .and_then(|q| q.trim().parse::<u8>().ok())
            .and_then(qos_from_u8)
            .unwrap_or(default_qos);
        let retain = text("mqtt.retain").is_some_and(|r| &*r == "true" || &*r == "1");
        let expires_at = text(EXPIRY)
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|s| Instant::now() + Duration::from_secs(s));
        let user_properties = headers
            .iter()
            .filter(|(k, _)| !k.starts_with("mqtt."))
            .map(|(k, v)| {
                let v = v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
                (ByteString::from(k.clone()), ByteString::from(v.unwrap_or_default()))
            })
            .collect();
        Some(Self {
            topic,
            payload,
            qos,
            retain,
            props: Arc::new(ForwardProps {
                user_properties,
                content_type: text(CONTENT_TYPE),
                response_topic: text(RESPONSE_TOPIC).filter(|t| crate::topic::valid_name(t)),
                correlation_data: raw(CORRELATION_DATA),
                is_utf8_payload: text(PAYLOAD_FORMAT).is_some_and(|f| &*f == "1"),
            }),
            expires_at,
            from: None,
            created_ms: sluice_meta::now_ms(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_its_headers() {
        let now = Instant::now();
        let msg = Message {
            topic: "site/a/state".into(),
            payload: Bytes::from_static(b"{}"),
            qos: QoS::ExactlyOnce,
            retain: true,
            props: Arc::new(ForwardProps {
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
                content_type: Some("application/json".into()),
                response_topic: Some("site/a/reply".into()),
                correlation_data: Some(Bytes::from_static(&[0, 159, 255])),
                is_utf8_payload: true,
            }),
            expires_at: Some(now + Duration::from_millis(2500)),
            from: None,
            created_ms: 0,
        };
        let headers = msg.to_headers(now);
        assert!(headers.contains(&(EXPIRY.to_string(), Some(Bytes::from_static(b"3")))));
        let before = Instant::now();
        let back = Message::from_headers(&headers, msg.payload.clone(), QoS::AtMostOnce).unwrap();
        let after = Instant::now();
        assert_eq!(
            (&*back.topic, back.qos, back.retain),
            ("site/a/state", QoS::ExactlyOnce, true)
        );
        assert_eq!(back.props, msg.props);
        // The 2.5 s left, rounded up to whole seconds, from when the record was read.
        let expires = back.expires_at.unwrap();
        assert!(expires >= before + Duration::from_secs(3) && expires <= after + Duration::from_secs(3));
    }

    #[test]
    fn headers_without_a_valid_topic_carry_no_message() {
        let h = |t: &'static [u8]| vec![("mqtt.topic".to_string(), Some(Bytes::from_static(t)))];
        assert!(Message::from_headers(&h(b"a/+"), Bytes::new(), QoS::AtMostOnce).is_none());
        assert!(Message::from_headers(&[], Bytes::new(), QoS::AtMostOnce).is_none());
        let m = Message::from_headers(&h(b"a/b"), Bytes::new(), QoS::AtLeastOnce).unwrap();
        assert_eq!((m.qos, m.retain, m.expires_at), (QoS::AtLeastOnce, false, None));
    }
}
