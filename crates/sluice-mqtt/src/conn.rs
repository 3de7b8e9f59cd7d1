//! One MQTT connection: version detection, CONNECT, then the packet loop.
//!
//! The loop waits on four things: bytes from the client, acknowledgements of
//! the client's QoS 1/2 publishes becoming durable (kept in arrival order, so
//! PUBACKs go out in order), the session's queue being fed, and the
//! keep-alive deadline. Everything written in one turn goes out in one write.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use bytestring::ByteString;
use futures::stream::FuturesOrdered;
use futures::{Future, StreamExt};
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v3;
use rmqtt_codec::v5::{self, DisconnectReasonCode, PublishAckReason, RetainHandling};
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use serde_json::json;
use sluice_auth::{Operation, ResourceType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::codec::Decoder;

use crate::auth::Credentials;
use crate::broker::{Inflight, Session, SubOpts};
use crate::events;
use crate::message::Message;
use crate::proto::{reason_for, Codec, ConnectInfo, In, SubRequestOpts, Will};
use crate::topic::{valid_name, SubFilter};
use crate::uplink::{AckError, AckResult};
use crate::Gateway;

/// Time a new connection has to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Topic aliases a client may use towards us.
const TOPIC_ALIAS_MAX: u16 = 64;
/// Unacknowledged QoS 1/2 publishes we accept from one client (v5 Receive Maximum).
const RECEIVE_MAX: u16 = 1024;
/// Above this many pending acknowledgements we stop reading from the client.
const MAX_PENDING_ACKS: usize = 4096;

type AckFuture = Pin<Box<dyn Future<Output = PendingAck> + Send>>;

struct PendingAck {
    pid: NonZeroU16,
    qos2: bool,
    result: AckResult,
}

/// Why a connection ended.
enum End {
    /// DISCONNECT from the client; `will` says whether to publish the will anyway (v5 0x04).
    Client {
        will: bool,
    },
    Closed,
    KeepAlive,
    TakenOver,
    Protocol(DisconnectReasonCode, String),
    Io(String),
}

impl End {
    fn label(&self) -> String {
        match self {
            End::Client { .. } => "normal".into(),
            End::Closed => "closed".into(),
            End::KeepAlive => "keepalive_timeout".into(),
            End::TakenOver => "takenover".into(),
            End::Protocol(code, why) => format!("{code:?}: {why}"),
            End::Io(e) => format!("io: {e}"),
        }
    }
}

/// Serves one connection, plain or TLS. `cert_principal`: the mapped subject of a client
/// certificate verified during the TLS handshake (mqtts with --tls-client-ca).
pub async fn handle<S>(gw: Arc<Gateway>, stream: S, peer: SocketAddr, cert_principal: Option<String>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut rbuf = BytesMut::with_capacity(256);
    let connect = match tokio::time::timeout(CONNECT_TIMEOUT, read_connect(&gw, &mut rd, &mut rbuf)).await {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) => return,
        Ok(Err(reply)) => {
            let _ = wr.write_all(&reply).await;
            return;
        }
        Err(_) => return,
    };
    let (mut codec, info) = connect;
    let mut wbuf = BytesMut::with_capacity(256);
    let Some(mut conn) = Conn::accept(&gw, &mut codec, *info, peer, cert_principal, &mut wbuf) else {
        let _ = wr.write_all(&wbuf).await;
        return;
    };
    let end = conn.run(codec, rd, &mut wr, rbuf, wbuf).await;
    conn.finish(end).await;
}

/// Reads the CONNECT. `Err` carries bytes to send before closing (a refusal).
async fn read_connect(
    gw: &Gateway,
    rd: &mut (impl AsyncReadExt + Unpin),
    buf: &mut BytesMut,
) -> Result<Option<(Codec, Box<ConnectInfo>)>, BytesMut> {
    loop {
        match VersionCodec.decode(buf) {
            Ok(Some(v)) => {
                let mut codec = Codec::new(v == ProtocolVersion::MQTT5, gw.cfg.max_packet_size);
                loop {
                    match codec.decode(buf) {
                        Ok(Some(In::Connect(c))) => return Ok(Some((codec, c))),
                        Ok(Some(_)) => return Ok(None),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "bad MQTT CONNECT");
                            let mut out = BytesMut::new();
                            if codec.is_v5() {
                                let ack = v5::ConnectAck {
                                    reason_code: connack_reason_for(&e),
                                    ..Default::default()
                                };
                                codec.connack_v5(ack, &mut out);
                            }
                            return Err(out);
                        }
                    }
                    if rd.read_buf(buf).await.map_err(|_| BytesMut::new())? == 0 {
                        return Ok(None);
                    }
                }
            }
            Ok(None) => {}
            Err(rmqtt_codec::error::DecodeError::InvalidProtocol) if buf.first() == Some(&0x10) => {
                // A CONNECT with a protocol level we do not speak: return code 1 (MQTT-3.1.2-2).
                let mut out = BytesMut::new();
                Codec::new(false, 0).connack_v3(v3::ConnectAckReason::UnacceptableProtocolVersion, false, &mut out);
                return Err(out);
            }
            Err(_) => return Ok(None),
        }
        if rd.read_buf(buf).await.map_err(|_| BytesMut::new())? == 0 {
            return Ok(None);
        }
    }
}

fn connack_reason_for(e: &rmqtt_codec::error::DecodeError) -> v5::ConnectAckReason {
    use rmqtt_codec::error::DecodeError as D;
    match e {
        D::MaxSizeExceeded { .. } => v5::ConnectAckReason::PacketTooLarge,
        D::InvalidProtocol | D::ConnectReservedFlagSet | D::InvalidConnectFlags => v5::ConnectAckReason::ProtocolError,
        D::InvalidClientId => v5::ConnectAckReason::ClientIdentifierNotValid,
        _ => v5::ConnectAckReason::MalformedPacket,
    }
}

struct Conn {
    gw: Arc<Gateway>,
    session: Arc<Session>,
    conn_id: u64,
    client_id: Arc<str>,
    username: Option<String>,
    /// `User:name` for ACL checks: the client certificate's subject, the username, or ANONYMOUS.
    principal: String,
    /// The client's address as ACL bindings name hosts.
    host: String,
    v5: bool,
    keep_alive: Option<Duration>,
    will: Option<Will>,
    inflight_limit: usize,
    aliases: HashMap<u16, ByteString>,
    pending: FuturesOrdered<AckFuture>,
    /// QoS 1 publishes received and not yet acknowledged (QoS 2 ones are in
    /// the session's `incoming_qos2` until PUBREL): together the client's
    /// use of our Receive Maximum.
    pending_qos1: usize,
    /// Notified when another connection takes the session over.
    kick: Arc<Notify>,
}

impl Conn {
    /// Checks the CONNECT, attaches the session and queues the CONNACK.
    /// `None` means refused (the CONNACK saying why is in `wbuf`).
    fn accept(
        gw: &Arc<Gateway>,
        codec: &mut Codec,
        c: ConnectInfo,
        peer: SocketAddr,
        cert_principal: Option<String>,
        wbuf: &mut BytesMut,
    ) -> Option<Conn> {
        let v5 = codec.is_v5();
        let mut client_id = c.client_id.clone();
        let mut assigned = None;
        if client_id.is_empty() {
            if !v5 && !c.clean_start {
                codec.connack_v3(v3::ConnectAckReason::IdentifierRejected, false, wbuf);
                return None;
            }
            client_id = format!("sluice-{}", uuid::Uuid::new_v4().simple());
            assigned = Some(client_id.clone());
        }
        let creds = Credentials {
            client_id: &client_id,
            username: c.username.as_deref(),
            password: c.password.as_deref(),
        };
        // A verified client certificate is the credential, unless a password is given too.
        let by_certificate = cert_principal.is_some() && c.password.is_none();
        if !by_certificate && !gw.auth.authenticate(&creds) {
            tracing::warn!(
                target: "sluice::audit",
                client = %client_id, peer = %peer, username = ?c.username, "MQTT authentication failed"
            );
            if v5 {
                let ack = v5::ConnectAck {
                    reason_code: v5::ConnectAckReason::BadUserNameOrPassword,
                    ..Default::default()
                };
                codec.connack_v5(ack, wbuf);
            } else {
                codec.connack_v3(v3::ConnectAckReason::BadUserNameOrPassword, false, wbuf);
            }
            return None;
        }
        if let Some(w) = &c.will {
            if !valid_name(&w.topic) {
                if v5 {
                    let ack = v5::ConnectAck {
                        reason_code: v5::ConnectAckReason::TopicNameInvalid,
                        ..Default::default()
                    };
                    codec.connack_v5(ack, wbuf);
                }
                return None;
            }
        }
        let expiry = if v5 {
            match c.session_expiry_secs {
                u32::MAX => None,
                s => Some(Duration::from_secs(u64::from(s))),
            }
        } else if c.clean_start {
            Some(Duration::ZERO)
        } else {
            None
        };
        let kick = Arc::new(Notify::new());
        let attached = gw.broker.attach(&client_id, c.clean_start, expiry, kick.clone());
        let max_ka = gw.cfg.max_keep_alive;
        let keep_alive = if max_ka > 0 && (c.keep_alive == 0 || c.keep_alive > max_ka) {
            max_ka
        } else {
            c.keep_alive
        };
        if v5 {
            if let Some(m) = c.max_packet_size {
                codec.set_max_out(m);
            }
            let ack = v5::ConnectAck {
                session_present: attached.present,
                reason_code: v5::ConnectAckReason::Success,
                receive_max: NonZeroU16::new(RECEIVE_MAX).expect("non-zero"),
                max_packet_size: Some(gw.cfg.max_packet_size),
                assigned_client_id: assigned.map(ByteString::from),
                topic_alias_max: TOPIC_ALIAS_MAX,
                server_keepalive_sec: (keep_alive != c.keep_alive).then_some(keep_alive),
                ..Default::default()
            };
            codec.connack_v5(ack, wbuf);
        } else {
            codec.connack_v3(v3::ConnectAckReason::ConnectionAccepted, attached.present, wbuf);
        }
        let limit = usize::from(gw.cfg.max_inflight.max(1));
        let inflight_limit = c.receive_max.map_or(limit, |r| limit.min(usize::from(r)));
        gw.broker.events.emit(
            events::CLIENT_CONNECTED,
            &client_id,
            json!({
                "username": c.username,
                "peername": peer.to_string(),
                "proto_ver": c.level,
                "keepalive": c.keep_alive,
                "clean_start": c.clean_start,
                "expiry_interval": expiry.map(|d| d.as_secs()),
                "session_present": attached.present,
            }),
        );
        tracing::debug!(client = %client_id, %peer, v5, "MQTT client connected");
        Some(Conn {
            gw: gw.clone(),
            client_id: attached.session.client_id.clone(),
            session: attached.session,
            conn_id: attached.conn_id,
            principal: match (&cert_principal, &c.username) {
                (Some(p), _) if by_certificate => format!("User:{p}"),
                (_, Some(u)) => format!("User:{u}"),
                _ => "User:ANONYMOUS".into(),
            },
            host: peer.ip().to_canonical().to_string(),
            username: c.username,
            v5,
            keep_alive: (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
            will: c.will,
            inflight_limit,
            aliases: HashMap::new(),
            pending: FuturesOrdered::new(),
            pending_qos1: 0,
            kick,
        })
    }

    async fn run(
        &mut self,
        mut codec: Codec,
        mut rd: impl AsyncRead + Unpin,
        wr: &mut (impl AsyncWrite + Unpin),
        mut rbuf: BytesMut,
        mut wbuf: BytesMut,
    ) -> End {
        // A resumed session: resend what was in flight, then whatever queued up.
        self.resend_inflight(&mut codec, &mut wbuf);
        let mut end = None;
        if !self.pump(&mut codec, &mut wbuf) {
            end = Some(End::TakenOver);
        }
        let mut deadline = self.keep_alive.map(|k| tokio::time::Instant::now() + k);
        // Packets already buffered behind the CONNECT.
        if end.is_none() {
            end = self.on_bytes(&mut codec, &mut rbuf, &mut wbuf).await;
        }
        while end.is_none() {
            if !wbuf.is_empty() {
                if let Err(e) = wr.write_all(&wbuf).await {
                    return End::Io(e.to_string());
                }
                wbuf.clear();
                if wbuf.capacity() > 64 << 10 {
                    wbuf = BytesMut::with_capacity(256);
                }
            }
            let keepalive = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = rd.read_buf(&mut rbuf), if self.pending.len() < MAX_PENDING_ACKS => match r {
                    Ok(0) => end = Some(End::Closed),
                    Ok(_) => {
                        deadline = self.keep_alive.map(|k| tokio::time::Instant::now() + k);
                        end = self.on_bytes(&mut codec, &mut rbuf, &mut wbuf).await;
                    }
                    Err(e) => end = Some(End::Io(e.to_string())),
                },
                Some(ack) = self.pending.next(), if !self.pending.is_empty() => {
                    end = self.on_durable(ack, &mut codec, &mut wbuf);
                }
                _ = self.session.notify.notified() => {
                    if !self.pump(&mut codec, &mut wbuf) {
                        // The wake-up was meant for the new owner: pass it on.
                        self.session.notify.notify_one();
                        end = Some(End::TakenOver);
                    }
                }
                _ = self.kick.notified() => end = Some(End::TakenOver),
                _ = keepalive => end = Some(End::KeepAlive),
            }
        }
        let end = end.expect("loop ends with a reason");
        match &end {
            End::Protocol(code, _) => codec.disconnect(*code, &mut wbuf),
            End::TakenOver => codec.disconnect(DisconnectReasonCode::SessionTakenOver, &mut wbuf),
            End::KeepAlive => codec.disconnect(DisconnectReasonCode::KeepAliveTimeout, &mut wbuf),
            _ => {}
        }
        if !wbuf.is_empty() {
            let _ = wr.write_all(&wbuf).await;
        }
        let _ = wr.shutdown().await;
        end
    }

    /// Handles every whole packet in `rbuf`.
    async fn on_bytes(&mut self, codec: &mut Codec, rbuf: &mut BytesMut, wbuf: &mut BytesMut) -> Option<End> {
        loop {
            match codec.decode(rbuf) {
                Ok(Some(p)) => {
                    if let Some(end) = self.on_packet(p, codec, wbuf).await {
                        return Some(end);
                    }
                }
                Ok(None) => return None,
                Err(e) => return Some(End::Protocol(reason_for(&e), e.to_string())),
            }
        }
    }

    async fn on_packet(&mut self, p: In, codec: &mut Codec, wbuf: &mut BytesMut) -> Option<End> {
        match p {
            In::Publish(p) => return self.on_publish(p).await,
            In::PubAck(pid) => self.on_ack(pid, false, codec, wbuf),
            In::PubRec(pid) => {
                let known = {
                    let mut st = self.session.state.lock().unwrap();
                    match st.inflight.get_mut(&pid) {
                        Some(i) if i.out.qos == QoS::ExactlyOnce => {
                            i.released = true;
                            true
                        }
                        _ => false,
                    }
                };
                if let Some(pid) = NonZeroU16::new(pid) {
                    codec.pubrel(pid, wbuf);
                }
                if !known {
                    tracing::debug!(client = %self.client_id, pid, "PUBREC for an unknown packet id");
                }
            }
            In::PubComp(pid) => self.on_ack(pid, true, codec, wbuf),
            In::PubRel(pid) => {
                let found = self.session.state.lock().unwrap().incoming_qos2.remove(&pid);
                if let Some(pid) = NonZeroU16::new(pid) {
                    codec.pubcomp(pid, found, wbuf);
                }
            }
            In::Subscribe { pid, sub_id, filters } => self.on_subscribe(pid, sub_id, filters, codec, wbuf),
            In::Unsubscribe { pid, filters } => {
                let mut existed = Vec::with_capacity(filters.len());
                for f in &filters {
                    let ok = SubFilter::parse(f).is_some_and(|sf| self.gw.broker.unsubscribe(&self.session, &sf));
                    existed.push(ok);
                    if ok {
                        self.gw.broker.events.emit(
                            events::SESSION_UNSUBSCRIBED,
                            &self.client_id,
                            json!({"topic": &**f, "username": self.username}),
                        );
                    }
                }
                codec.unsuback(pid, &existed, wbuf);
            }
            In::PingReq => codec.pingresp(wbuf),
            In::Disconnect {
                reason,
                session_expiry_secs,
            } => {
                if let Some(s) = session_expiry_secs {
                    let mut st = self.session.state.lock().unwrap();
                    // A session that ends at disconnect cannot be extended by DISCONNECT (MQTT-3.14.2-2).
                    if st.expiry == Some(Duration::ZERO) && s != 0 {
                        drop(st);
                        return Some(End::Protocol(
                            DisconnectReasonCode::ProtocolError,
                            "session expiry set on DISCONNECT after zero at CONNECT".into(),
                        ));
                    }
                    st.expiry = (s != u32::MAX).then(|| Duration::from_secs(u64::from(s)));
                }
                return Some(End::Client { will: reason == 0x04 });
            }
            In::Connect(_) => {
                return Some(End::Protocol(
                    DisconnectReasonCode::ProtocolError,
                    "second CONNECT".into(),
                ))
            }
            In::Unexpected(what) => {
                return Some(End::Protocol(
                    DisconnectReasonCode::ProtocolError,
                    format!("{what} from a client"),
                ))
            }
        }
        None
    }

    async fn on_publish(&mut self, mut p: Box<Publish>) -> Option<End> {
        let topic = match self.resolve_alias(&mut p) {
            Ok(t) => t,
            Err(end) => return Some(end),
        };
        if !valid_name(&topic) {
            return Some(End::Protocol(
                DisconnectReasonCode::TopicNameInvalid,
                format!("bad topic name {topic:?}"),
            ));
        }
        let pid = match (p.qos, p.packet_id) {
            (QoS::AtMostOnce, _) => None,
            (_, Some(pid)) => Some(pid),
            (_, None) => {
                return Some(End::Protocol(
                    DisconnectReasonCode::ProtocolError,
                    "QoS 1/2 publish without packet id".into(),
                ))
            }
        };
        if !self.may(Operation::Write, &topic) {
            // Dropped; MQTT 5 is told NOT_AUTHORIZED, 3.1.1 (which has no such code) is acknowledged.
            if let Some(pid) = pid {
                let qos2 = p.qos == QoS::ExactlyOnce;
                if !qos2 {
                    self.pending_qos1 += 1;
                }
                self.pending.push_back(Box::pin(async move {
                    PendingAck {
                        pid,
                        qos2,
                        result: Err(AckError::NotAuthorized),
                    }
                }));
            }
            return None;
        }
        if let (true, Some(id)) = (self.v5, pid) {
            let (in_use, resend) = {
                let st = self.session.state.lock().unwrap();
                let resend = p.qos == QoS::ExactlyOnce && st.incoming_qos2.contains(&id.get());
                (self.pending_qos1 + st.incoming_qos2.len(), resend)
            };
            if in_use >= usize::from(RECEIVE_MAX) && !resend {
                return Some(End::Protocol(
                    DisconnectReasonCode::ReceiveMaximumExceeded,
                    format!("more than {RECEIVE_MAX} unacknowledged QoS 1/2 publishes"),
                ));
            }
        }
        if p.qos == QoS::ExactlyOnce {
            let pid = pid.expect("checked above");
            let fresh = self.session.state.lock().unwrap().incoming_qos2.insert(pid.get());
            if !fresh {
                // A resend before PUBREL: the first copy is (being) stored; answer it again.
                self.pending.push_back(Box::pin(async move {
                    PendingAck {
                        pid,
                        qos2: true,
                        result: Ok(()),
                    }
                }));
                return None;
            }
        }
        let msg = Message::from_publish(&p, topic, Some(self.client_id.clone()), Instant::now());
        let durable = self
            .gw
            .ingest(&msg, &self.client_id, self.username.as_deref(), pid.is_some())
            .await;
        if let Some(pid) = pid {
            let qos2 = p.qos == QoS::ExactlyOnce;
            if !qos2 {
                self.pending_qos1 += 1;
            }
            self.pending.push_back(Box::pin(async move {
                let mut result = Ok(());
                for rx in durable {
                    let r = rx
                        .await
                        .unwrap_or_else(|_| Err(AckError::Failed("gateway is shutting down".into())));
                    result = result.and(r);
                }
                PendingAck { pid, qos2, result }
            }));
        }
        None
    }

    /// Whether the client may publish to (WRITE) or subscribe to (READ) an MQTT topic or
    /// filter: ACLs on the Kafka topic its publishes land in (`mqtt.default-topic`) cover
    /// every MQTT topic; TOPIC bindings named by MQTT topics (`sensors/` PREFIXED) cover
    /// those. Always, without --authorization acl.
    fn may(&self, op: Operation, mqtt_topic: &str) -> bool {
        may(&self.gw, &self.principal, &self.host, op, mqtt_topic)
    }

    /// Applies an MQTT 5 topic alias: registers it, or fills in the topic.
    fn resolve_alias(&mut self, p: &mut Publish) -> Result<ByteString, End> {
        let alias = p.properties.as_ref().and_then(|pp| pp.topic_alias).map(|a| a.get());
        let Some(alias) = alias else {
            return Ok(p.topic.clone());
        };
        if alias > TOPIC_ALIAS_MAX {
            return Err(End::Protocol(
                DisconnectReasonCode::TopicAliasInvalid,
                format!("topic alias {alias} above maximum {TOPIC_ALIAS_MAX}"),
            ));
        }
        if p.topic.is_empty() {
            match self.aliases.get(&alias) {
                Some(t) => Ok(t.clone()),
                None => Err(End::Protocol(
                    DisconnectReasonCode::ProtocolError,
                    format!("unknown topic alias {alias}"),
                )),
            }
        } else {
            self.aliases.insert(alias, p.topic.clone());
            Ok(p.topic.clone())
        }
    }

    /// A client publish became durable (or failed): acknowledge it.
    fn on_durable(&mut self, ack: PendingAck, codec: &mut Codec, wbuf: &mut BytesMut) -> Option<End> {
        if !ack.qos2 {
            self.pending_qos1 = self.pending_qos1.saturating_sub(1);
        }
        let reason = match &ack.result {
            Ok(()) => PublishAckReason::Success,
            Err(AckError::NotAuthorized) if self.v5 => PublishAckReason::NotAuthorized,
            Err(AckError::NotAuthorized) => PublishAckReason::Success,
            Err(AckError::TooLarge(why)) => {
                // PUBACK has no code for it; MQTT 5 ends the connection with 0x95, 3.1.1 closes it.
                tracing::warn!(client = %self.client_id, error = %why, "MQTT publish too large for its Kafka topic");
                return Some(if self.v5 {
                    End::Protocol(DisconnectReasonCode::PacketTooLarge, why.clone())
                } else {
                    End::Io(format!("publish too large: {why}"))
                });
            }
            Err(e) => {
                tracing::warn!(client = %self.client_id, error = %e, "MQTT publish could not be stored");
                if !self.v5 {
                    // MQTT 3.1.1 has no negative acknowledgement: closing makes the client resend.
                    return Some(End::Io(format!("storing publish failed: {e}")));
                }
                if ack.qos2 {
                    self.session.state.lock().unwrap().incoming_qos2.remove(&ack.pid.get());
                }
                PublishAckReason::ImplementationSpecificError
            }
        };
        if ack.qos2 {
            codec.pubrec(ack.pid, reason, wbuf);
        } else {
            codec.puback(ack.pid, reason, wbuf);
        }
        None
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) from the client for a message we sent.
    fn on_ack(&mut self, pid: u16, comp: bool, codec: &mut Codec, wbuf: &mut BytesMut) {
        let done = {
            let mut st = self.session.state.lock().unwrap();
            let want = if comp { QoS::ExactlyOnce } else { QoS::AtLeastOnce };
            match st.inflight.get(&pid) {
                Some(i) if i.out.qos == want => st.inflight.remove(&pid),
                _ => None,
            }
        };
        if let Some(i) = done {
            self.gw.broker.events.emit(
                events::MESSAGE_ACKED,
                &self.client_id,
                json!({"topic": &*i.out.msg.topic, "qos": i.out.qos.value(), "packet_id": pid,
                       "from_clientid": i.out.msg.from.as_deref(), "username": self.username,
                       "payload": String::from_utf8_lossy(&i.out.msg.payload)}),
            );
            // The window has room again.
            self.pump(codec, wbuf);
        }
    }

    fn on_subscribe(
        &mut self,
        pid: NonZeroU16,
        sub_id: Option<std::num::NonZeroU32>,
        filters: Vec<(ByteString, SubRequestOpts)>,
        codec: &mut Codec,
        wbuf: &mut BytesMut,
    ) {
        let mut results = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        for (raw, o) in filters {
            let Some(f) = SubFilter::parse(&raw) else {
                results.push(Err(v5::SubscribeAckReason::TopicFilterInvalid));
                continue;
            };
            if f.group.is_some() && o.no_local {
                results.push(Err(v5::SubscribeAckReason::UnspecifiedError));
                continue;
            }
            if !self
                .gw
                .auth
                .may_subscribe(&self.client_id, self.username.as_deref(), &raw)
            {
                results.push(Err(v5::SubscribeAckReason::UnspecifiedError));
                continue;
            }
            if !self.may(Operation::Read, &f.filter) {
                results.push(Err(v5::SubscribeAckReason::NotAuthorized));
                continue;
            }
            let opts = SubOpts {
                qos: o.qos,
                no_local: o.no_local,
                retain_as_published: o.retain_as_published,
                sub_id,
            };
            let existed = self.gw.broker.subscribe(&self.session, &f, opts);
            results.push(Ok(o.qos));
            self.gw.broker.events.emit(
                events::SESSION_SUBSCRIBED,
                &self.client_id,
                json!({"topic": &*raw, "qos": o.qos.value(), "username": self.username}),
            );
            let send_retained = match o.retain_handling {
                RetainHandling::AtSubscribe => true,
                RetainHandling::AtSubscribeNew => !existed,
                RetainHandling::NoAtSubscribe => false,
            };
            if f.group.is_none() && send_retained {
                retained.push((f.filter, opts));
            }
        }
        codec.suback(pid, &results, wbuf);
        for (filter, opts) in retained {
            self.gw.broker.deliver_retained(&self.session, &filter, opts);
        }
    }

    /// Sends queued messages while the in-flight window has room. Returns
    /// false if another connection has taken the session over.
    fn pump(&mut self, codec: &mut Codec, wbuf: &mut BytesMut) -> bool {
        let now = Instant::now();
        let mut st = self.session.state.lock().unwrap();
        if st.owner != self.conn_id {
            return false;
        }
        while let Some(front) = st.queue.front() {
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= self.inflight_limit {
                break;
            }
            let out = st.queue.pop_front().expect("front exists");
            if out.msg.expired(now) {
                self.gw.broker.dropped(&self.client_id, &out.msg, "expired");
                continue;
            }
            let pid = (out.qos != QoS::AtMostOnce).then(|| st.next_packet_id());
            let publish = out.to_publish(pid.and_then(NonZeroU16::new), false, self.v5, now);
            if let Err(e) = codec.publish(publish, wbuf) {
                tracing::debug!(client = %self.client_id, error = %e, "message not sent");
                self.gw.broker.dropped(&self.client_id, &out.msg, "too_large");
                continue;
            }
            self.gw.broker.events.emit(
                events::MESSAGE_DELIVERED,
                &self.client_id,
                json!({"topic": &*out.msg.topic, "qos": out.qos.value(),
                       "from_clientid": out.msg.from.as_deref(), "username": self.username}),
            );
            if let Some(pid) = pid {
                st.inflight.insert(pid, Inflight { out, released: false });
            }
        }
        true
    }

    /// After a reconnect: PUBLISH again (DUP) or PUBREL what was in flight.
    fn resend_inflight(&mut self, codec: &mut Codec, wbuf: &mut BytesMut) {
        let now = Instant::now();
        let st = self.session.state.lock().unwrap();
        for (pid, i) in &st.inflight {
            let Some(id) = NonZeroU16::new(*pid) else { continue };
            if i.released {
                codec.pubrel(id, wbuf);
            } else {
                let p = i.out.to_publish(Some(id), true, self.v5, now);
                let _ = codec.publish(p, wbuf);
            }
        }
    }

    async fn finish(self, end: End) {
        let Conn {
            gw,
            session,
            conn_id,
            client_id,
            username,
            will,
            principal,
            host,
            ..
        } = self;
        let allowed = |w: &Will| may(&gw, &principal, &host, Operation::Write, &w.topic);
        let will = will.filter(allowed);
        let publish_will = !matches!(end, End::Client { will: false });
        if let (true, Some(w)) = (publish_will, will) {
            let owner = WillOwner {
                gw: gw.clone(),
                session: session.clone(),
                client_id: client_id.clone(),
                username: username.clone(),
            };
            owner.publish_will(w).await;
        }
        if !matches!(end, End::TakenOver) {
            gw.broker.detach(&session, conn_id);
        }
        tracing::debug!(client = %client_id, reason = %end.label(), "MQTT client disconnected");
        gw.broker.events.emit(
            events::CLIENT_DISCONNECTED,
            &client_id,
            json!({"reason": end.label(), "username": username}),
        );
    }
}

fn may(gw: &Gateway, principal: &str, host: &str, op: Operation, mqtt_topic: &str) -> bool {
    let Some(a) = &gw.authorizer else {
        return true;
    };
    let kafka = &gw.cfg.default_topic;
    (!kafka.is_empty() && a.permits(principal, host, op, ResourceType::Topic, kafka))
        || a.authorize(principal, host, op, ResourceType::Topic, mqtt_topic)
}

/// What publishing a will needs, apart from the connection.
struct WillOwner {
    gw: Arc<Gateway>,
    session: Arc<Session>,
    client_id: Arc<str>,
    username: Option<String>,
}

impl WillOwner {
    async fn publish_will(self, w: Will) {
        let now = Instant::now();
        let msg = Message {
            topic: w.topic.clone(),
            payload: w.payload.clone(),
            qos: w.qos,
            retain: w.retain,
            props: Arc::new(crate::message::ForwardProps {
                user_properties: w.user_properties.clone(),
                content_type: w.content_type.clone(),
                response_topic: w.response_topic.clone(),
                correlation_data: w.correlation_data.clone(),
                is_utf8_payload: false,
            }),
            expires_at: w.expiry_secs.map(|s| now + Duration::from_secs(u64::from(s.get()))),
            from: Some(self.client_id.clone()),
            created_ms: sluice_meta::now_ms(),
        };
        if w.delay_secs == 0 {
            self.gw
                .ingest(&msg, &self.client_id, self.username.as_deref(), false)
                .await;
            return;
        }
        // Will Delay Interval: publish later unless the session was resumed
        // meanwhile; at the latest when the session would end.
        let (generation, expiry) = {
            let st = self.session.state.lock().unwrap();
            (st.generation, st.expiry)
        };
        let delay = Duration::from_secs(u64::from(w.delay_secs)).min(expiry.unwrap_or(Duration::MAX));
        let WillOwner {
            gw,
            session,
            client_id: client,
            username: user,
        } = self;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let resumed = {
                let st = session.state.lock().unwrap();
                st.generation != generation || st.owner != 0
            };
            if !resumed {
                gw.ingest(&msg, &client, user.as_deref(), false).await;
            }
        });
    }
}
