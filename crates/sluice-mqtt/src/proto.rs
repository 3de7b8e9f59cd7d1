//! One view of MQTT 3.1.1 and 5.0 packets for the session layer: incoming
//! packets are normalised into [`In`], outgoing ones are built per version.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::error::{DecodeError, EncodeError};
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v3;
use rmqtt_codec::v5::{self, DisconnectReasonCode, RetainHandling, UserProperties};
use tokio_util::codec::{Decoder, Encoder};

/// Will message of a CONNECT.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub delay_secs: u32,
    pub expiry_secs: Option<NonZeroU32>,
    pub user_properties: UserProperties,
    pub content_type: Option<ByteString>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
}

#[derive(Debug, Clone)]
pub struct ConnectInfo {
    pub level: u8,
    pub client_id: String,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub will: Option<Will>,
    /// v5 only; v3 has none.
    pub session_expiry_secs: u32,
    pub receive_max: Option<u16>,
    pub max_packet_size: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
pub struct SubRequestOpts {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

/// An incoming packet, whatever the version.
#[derive(Debug)]
pub enum In {
    Connect(Box<ConnectInfo>),
    Publish(Box<Publish>),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pid: NonZeroU16,
        sub_id: Option<NonZeroU32>,
        filters: Vec<(ByteString, SubRequestOpts)>,
    },
    Unsubscribe {
        pid: NonZeroU16,
        filters: Vec<ByteString>,
    },
    PingReq,
    Disconnect {
        reason: u8,
        session_expiry_secs: Option<u32>,
    },
    /// A packet only a server sends, or AUTH (no enhanced authentication here).
    Unexpected(&'static str),
}

/// The codec of a connection once its version is known.
pub enum Codec {
    V3(v3::Codec),
    V5(v5::Codec),
}

impl Codec {
    pub fn new(v5: bool, max_in: u32) -> Self {
        if v5 {
            Codec::V5(v5::Codec::new(max_in, 0))
        } else {
            Codec::V3(v3::Codec::new(max_in))
        }
    }

    pub fn is_v5(&self) -> bool {
        matches!(self, Codec::V5(_))
    }

    /// Caps outgoing packets at the client's Maximum Packet Size (v5).
    pub fn set_max_out(&mut self, size: u32) {
        if let Codec::V5(c) = self {
            c.set_max_outbound_size(size);
        }
    }

    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<In>, DecodeError> {
        Ok(match self {
            Codec::V3(c) => c.decode(buf)?.map(|(p, _)| from_v3(p)),
            Codec::V5(c) => c.decode(buf)?.map(|(p, _)| from_v5(p)),
        })
    }

    fn put_v3(&mut self, p: v3::Packet, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Codec::V3(c) => c.encode(p, buf),
            Codec::V5(_) => Err(EncodeError::MalformedPacket),
        }
    }

    fn put_v5(&mut self, p: v5::Packet, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Codec::V5(c) => c.encode(p, buf),
            Codec::V3(_) => Err(EncodeError::MalformedPacket),
        }
    }

    /// Writes a packet built per version.
    fn put(
        &mut self,
        buf: &mut BytesMut,
        v3p: impl FnOnce() -> v3::Packet,
        v5p: impl FnOnce() -> v5::Packet,
    ) -> Result<(), EncodeError> {
        if self.is_v5() {
            self.put_v5(v5p(), buf)
        } else {
            self.put_v3(v3p(), buf)
        }
    }

    pub fn publish(&mut self, p: Publish, buf: &mut BytesMut) -> Result<(), EncodeError> {
        // Roll back a partly written packet so a refused one leaves no bytes behind.
        let mark = buf.len();
        let res = if self.is_v5() {
            self.put_v5(v5::Packet::Publish(Box::new(p)), buf)
        } else {
            let mut p = p;
            p.properties = None;
            self.put_v3(v3::Packet::Publish(Box::new(p)), buf)
        };
        if res.is_err() {
            buf.truncate(mark);
        }
        res
    }

    pub fn puback(&mut self, pid: NonZeroU16, reason: v5::PublishAckReason, buf: &mut BytesMut) {
        let _ = self.put(
            buf,
            || v3::Packet::PublishAck { packet_id: pid },
            || {
                v5::Packet::PublishAck(v5::PublishAck {
                    packet_id: pid,
                    reason_code: reason,
                    ..Default::default()
                })
            },
        );
    }

    pub fn pubrec(&mut self, pid: NonZeroU16, reason: v5::PublishAckReason, buf: &mut BytesMut) {
        let _ = self.put(
            buf,
            || v3::Packet::PublishReceived { packet_id: pid },
            || {
                v5::Packet::PublishReceived(v5::PublishAck {
                    packet_id: pid,
                    reason_code: reason,
                    ..Default::default()
                })
            },
        );
    }

    pub fn pubrel(&mut self, pid: NonZeroU16, buf: &mut BytesMut) {
        let _ = self.put(
            buf,
            || v3::Packet::PublishRelease { packet_id: pid },
            || {
                v5::Packet::PublishRelease(v5::PublishAck2 {
                    packet_id: pid,
                    ..Default::default()
                })
            },
        );
    }

    pub fn pubcomp(&mut self, pid: NonZeroU16, found: bool, buf: &mut BytesMut) {
        let _ = self.put(
            buf,
            || v3::Packet::PublishComplete { packet_id: pid },
            || {
                v5::Packet::PublishComplete(v5::PublishAck2 {
                    packet_id: pid,
                    reason_code: if found {
                        v5::PublishAck2Reason::Success
                    } else {
                        v5::PublishAck2Reason::PacketIdNotFound
                    },
                    ..Default::default()
                })
            },
        );
    }

    /// SUBACK: `Ok(qos)` granted, `Err(reason)` refused (v3 sends 0x80 for any refusal).
    pub fn suback(&mut self, pid: NonZeroU16, results: &[Result<QoS, v5::SubscribeAckReason>], buf: &mut BytesMut) {
        let _ = self.put(
            buf,
            || v3::Packet::SubscribeAck {
                packet_id: pid,
                status: results
                    .iter()
                    .map(|r| match r {
                        Ok(q) => v3::SubscribeReturnCode::Success(*q),
                        Err(_) => v3::SubscribeReturnCode::Failure,
                    })
                    .collect(),
            },
            || {
                v5::Packet::SubscribeAck(v5::SubscribeAck {
                    packet_id: pid,
                    properties: Vec::new(),
                    reason_string: None,
                    status: results
                        .iter()
                        .map(|r| match r {
                            Ok(QoS::AtMostOnce) => v5::SubscribeAckReason::GrantedQos0,
                            Ok(QoS::AtLeastOnce) => v5::SubscribeAckReason::GrantedQos1,
                            Ok(QoS::ExactlyOnce) => v5::SubscribeAckReason::GrantedQos2,
                            Err(e) => *e,
                        })
                        .collect(),
                })
            },
        );
    }

    pub fn unsuback(&mut self, pid: NonZeroU16, existed: &[bool], buf: &mut BytesMut) {
        let _ = self.put(
            buf,
            || v3::Packet::UnsubscribeAck { packet_id: pid },
            || {
                v5::Packet::UnsubscribeAck(v5::UnsubscribeAck {
                    packet_id: pid,
                    properties: Vec::new(),
                    reason_string: None,
                    status: existed
                        .iter()
                        .map(|e| {
                            if *e {
                                v5::UnsubscribeAckReason::Success
                            } else {
                                v5::UnsubscribeAckReason::NoSubscriptionExisted
                            }
                        })
                        .collect(),
                })
            },
        );
    }

    pub fn pingresp(&mut self, buf: &mut BytesMut) {
        let _ = self.put(buf, || v3::Packet::PingResponse, || v5::Packet::PingResponse);
    }

    /// DISCONNECT with a reason (v5 only; v3 servers just close).
    pub fn disconnect(&mut self, reason: DisconnectReasonCode, buf: &mut BytesMut) {
        if self.is_v5() {
            let _ = self.put_v5(
                v5::Packet::Disconnect(v5::Disconnect {
                    reason_code: reason,
                    ..Default::default()
                }),
                buf,
            );
        }
    }

    pub fn connack_v3(&mut self, code: v3::ConnectAckReason, present: bool, buf: &mut BytesMut) {
        let _ = self.put_v3(
            v3::Packet::ConnectAck(v3::ConnectAck {
                return_code: code,
                session_present: present,
            }),
            buf,
        );
    }

    pub fn connack_v5(&mut self, ack: v5::ConnectAck, buf: &mut BytesMut) {
        let _ = self.put_v5(v5::Packet::ConnectAck(Box::new(ack)), buf);
    }
}

fn from_v3(p: v3::Packet) -> In {
    use v3::Packet as P;
    match p {
        P::Connect(c) => In::Connect(Box::new(ConnectInfo {
            level: c.protocol.level(),
            client_id: c.client_id.to_string(),
            clean_start: c.clean_session,
            keep_alive: c.keep_alive,
            username: c.username.map(|u| u.to_string()),
            password: c.password,
            will: c.last_will.map(|w| Will {
                topic: w.topic,
                payload: w.message,
                qos: w.qos,
                retain: w.retain,
                delay_secs: 0,
                expiry_secs: None,
                user_properties: Vec::new(),
                content_type: None,
                response_topic: None,
                correlation_data: None,
            }),
            session_expiry_secs: 0,
            receive_max: None,
            max_packet_size: None,
        })),
        P::Publish(p) => In::Publish(p),
        P::PublishAck { packet_id } => In::PubAck(packet_id.get()),
        P::PublishReceived { packet_id } => In::PubRec(packet_id.get()),
        P::PublishRelease { packet_id } => In::PubRel(packet_id.get()),
        P::PublishComplete { packet_id } => In::PubComp(packet_id.get()),
        P::Subscribe {
            packet_id,
            topic_filters,
        } => In::Subscribe {
            pid: packet_id,
            sub_id: None,
            filters: topic_filters
                .into_iter()
                .map(|(f, qos)| {
                    (
                        f,
                        SubRequestOpts {
                            qos,
                            no_local: false,
                            retain_as_published: false,
                            retain_handling: RetainHandling::AtSubscribe,
                        },
                    )
                })
                .collect(),
        },
        P::Unsubscribe {
            packet_id,
            topic_filters,
        } => In::Unsubscribe {
            pid: packet_id,
            filters: topic_filters,
        },
        P::PingRequest => In::PingReq,
        P::Disconnect => In::Disconnect {
            reason: 0,
            session_expiry_secs: None,
        },
        P::ConnectAck(_) => In::Unexpected("CONNACK"),
        P::SubscribeAck { .. } => In::Unexpected("SUBACK"),
        P::UnsubscribeAck { .. } => In::Unexpected("UNSUBACK"),
        P::PingResponse => In::Unexpected("PINGRESP"),
    }
}

fn from_v5(p: v5::Packet) -> In {
    use v5::Packet as P;
    match p {
        P::Connect(c) => In::Connect(Box::new(ConnectInfo {
            level: 5,
            client_id: c.client_id.to_string(),
            clean_start: c.clean_start,
            keep_alive: c.keep_alive,
            username: c.username.map(|u| u.to_string()),
            password: c.password,
            will: c.last_will.map(|w| Will {
                topic: w.topic,
                payload: w.message,
                qos: w.qos,
                retain: w.retain,
                delay_secs: w.will_delay_interval_sec.unwrap_or(0),
                expiry_secs: w.message_expiry_interval,
                user_properties: w.user_properties,
                content_type: w.content_type,
                response_topic: w.response_topic,
                correlation_data: w.correlation_data,
            }),
            session_expiry_secs: c.session_expiry_interval_secs,
            receive_max: c.receive_max.map(|r| r.get()),
            max_packet_size: c.max_packet_size.map(|m| m.get()),
        })),
        P::Publish(p) => In::Publish(p),
        P::PublishAck(a) => In::PubAck(a.packet_id.get()),
        P::PublishReceived(a) => In::PubRec(a.packet_id.get()),
        P::PublishRelease(a) => In::PubRel(a.packet_id.get()),
        P::PublishComplete(a) => In::PubComp(a.packet_id.get()),
        P::Subscribe(s) => In::Subscribe {
            pid: s.packet_id,
            sub_id: s.id,
            filters: s
                .topic_filters
                .into_iter()
                .map(|(f, o)| {
                    (
                        f,
                        SubRequestOpts {
                            qos: o.qos,
                            no_local: o.no_local,
                            retain_as_published: o.retain_as_published,
                            retain_handling: o.retain_handling,
                        },
                    )
                })
                .collect(),
        },
        P::Unsubscribe(u) => In::Unsubscribe {
            pid: u.packet_id,
            filters: u.topic_filters,
        },
        P::PingRequest => In::PingReq,
        P::Disconnect(d) => In::Disconnect {
            reason: d.reason_code.into(),
            session_expiry_secs: d.session_expiry_interval_secs,
        },
        P::Auth(_) => In::Unexpected("AUTH"),
        P::ConnectAck(_) => In::Unexpected("CONNACK"),
        P::SubscribeAck(_) => In::Unexpected("SUBACK"),
        P::UnsubscribeAck(_) => In::Unexpected("UNSUBACK"),
        P::PingResponse => In::Unexpected("PINGRESP"),
    }
}

/// The DISCONNECT reason for a decode error.
pub fn reason_for(e: &DecodeError) -> DisconnectReasonCode {
    use rmqtt_codec::v5::ToReasonCode;
    e.to_reason_code()
}
