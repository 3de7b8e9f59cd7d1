//! The MQTT gateway: an MQTT 3.1.1/5.0 broker whose publishes land in the log.
//!
//! - `conn`: one task per connection: protocol version detection, CONNECT,
//!   the packet loop, keep-alive, wills; `proto` normalises v3/v5 packets.
//! - `broker`: sessions, subscriptions (plain and `$share/`), routing, queues.
//! - `uplink`: batches records from all connections into the log; QoS 1/2
//!   publishes are acknowledged once their record is durable.
//! - `rules`: EMQX-style SQL rules (`SELECT ... FROM "<filter>" WHERE ...`) and their REST API.
//! - `events`: lifecycle and delivery events into `mqtt.events`.
//! - `downlink`: records of `mqtt.commands` published to devices, on every broker.
//! - `routes`: the topic filters each broker has subscribers for, shared through the store.
//! - `forward`: publishes to subscribers on other brokers, through `mqtt.forward`.
//! - `tail`: reads a topic on every broker (for `downlink` and `forward`).

pub mod auth;
mod broker;
pub mod config;
mod conn;
mod downlink;
mod event_names;
mod events;
mod forward;
mod message;
mod proto;
mod rest;
mod retained;
mod routes;
pub mod rules;
mod tail;
pub mod topic;
mod uplink;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use sluice_log::Log;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use auth::{Authenticator, Credentials, StaticUsers};
pub use config::{MqttConfig, RuleConfig};

use broker::Broker;
use forward::Forward;
use message::Message;
use routes::Routes;
use rules::{MessageCtx, Rules};
use uplink::{AckError, AckResult, OutRecord, Uplink};

/// The broker a gateway runs in, as one of a cluster's (or the only one).
pub struct Membership {
    pub node_id: i32,
    /// The broker's own Kafka address: records and commands of partitions another broker
    /// leads are produced to and fetched from it through there.
    pub kafka_address: String,
    /// How often what other brokers keep in the metadata store is re-read (retained
    /// messages, subscriptions' topic filters).
    pub refresh: std::time::Duration,
}

/// Certificates of an mqtts:// listener, and how client certificate subjects become
/// principals (ssl.principal.mapping.rules).
#[derive(Clone)]
pub struct MqttTls {
    pub tls: Arc<sluice_auth::Tls>,
    pub principal_rules: sluice_auth::PrincipalRules,
}

/// Everything a connection needs. One per process.
pub struct Gateway {
    broker: Arc<Broker>,
    uplink: Uplink,
    rules: Arc<Rules>,
    auth: Arc<dyn Authenticator>,
    /// Kafka ACLs on what clients publish and subscribe to (`--authorization acl`).
    authorizer: Option<Arc<sluice_auth::Authorizer>>,
    cfg: MqttConfig,
    routes: Arc<Routes>,
    /// None when `forward-topic` is empty (no routing between brokers).
    forward: Option<Forward>,
    /// Numbers messages, to spread them over the brokers of a share group.
    share_key: AtomicU64,
}

impl Gateway {
    /// Loads rules and retained messages from the metadata store, starts the
    /// uplink writer, the event writer, the route registry, routing between brokers and
    /// the downlink, for the broker `member` describes.
    pub async fn start(
        log: Log,
        cfg: MqttConfig,
        auth: Option<Arc<dyn Authenticator>>,
        authorizer: Option<Arc<sluice_auth::Authorizer>>,
        member: Membership,
    ) -> Result<Arc<Self>> {
        let auth: Arc<dyn Authenticator> = match auth {
            Some(a) => a,
            None => {
                let configured =
                    Arc::new(StaticUsers::new(&cfg.users, cfg.allow_anonymous)?.deny_subscribe(&cfg.deny_subscribe));
                let stored_only = cfg.users.is_empty() && !cfg.allow_anonymous;
                Arc::new(auth::StoreUsers::start(log.meta().clone(), configured, stored_only).await?)
            }
        };
        let pool = log.meta().pool().clone();
        let rules = Arc::new(Rules::load(pool.clone()).await.context("loading MQTT rules")?);
        for r in &cfg.rules {
            rules
                .put(&r.name, &r.sql, &r.kafka_topic, r.key.as_deref())
                .await
                .with_context(|| format!("rule {} in the config file", r.name))?;
        }
        let uplink = Uplink::start(log.clone(), member.kafka_address.clone(), cfg.inflight_bytes);
        let events = events::Events::start(uplink.clone(), cfg.events_topic.clone(), rules.clone());
        let retained = retained::RetainedStore::open(pool.clone(), member.refresh)
            .await
            .context("loading retained MQTT messages")?;
        let broker = Broker::new(events, retained, cfg.max_queued_messages);
        let routes = Routes::start(&broker, log.meta().clone(), member.node_id, member.refresh)
            .await
            .context("registering MQTT routes")?;
        let forward = (!cfg.forward_topic.is_empty()).then(|| {
            let (topic, address) = (cfg.forward_topic.clone(), member.kafka_address.clone());
            Forward::start(log.clone(), topic, member.node_id, address, &broker)
        });
        let gw = Arc::new(Self {
            broker,
            uplink,
            rules,
            auth,
            authorizer,
            cfg,
            routes: routes.clone(),
            forward,
            share_key: AtomicU64::new(0),
        });
        if !gw.cfg.commands_topic.is_empty() {
            downlink::start(gw.clone(), log, pool, routes, member.node_id, member.kafka_address);
        }
        Ok(gw)
    }

    /// Accepts MQTT connections until the listener fails: TLS ones (mqtts) when `tls` is
    /// given, with client certificates verified if it has a client CA.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: Option<MqttTls>) -> Result<()> {
        loop {
            let (stream, peer) = listener.accept().await.context("accepting MQTT connection")?;
            let _ = stream.set_nodelay(true);
            let Some(tls) = &tls else {
                tokio::spawn(conn::handle(self.clone(), stream, peer, None));
                continue;
            };
            let (gw, tls) = (self.clone(), tls.clone());
            tokio::spawn(async move {
                let client_auth = if tls.tls.mutual() {
                    sluice_auth::ClientAuth::Optional
                } else {
                    sluice_auth::ClientAuth::None
                };
                let (stream, principal) = match tls.tls.accept(stream, client_auth, Some(&tls.principal_rules)).await {
                    Ok(accepted) => accepted,
                    Err(e) => return tracing::debug!(%peer, error = %format!("{e:#}"), "MQTT TLS connection refused"),
                };
                conn::handle(gw, stream, peer, principal).await;
            });
        }
    }

    /// The REST routes (`/api/v1/mqtt/...`), to merge into the HTTP router.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        rest::router(self.clone())
    }

    /// Everything a message does once it is accepted from a client (or a
    /// will fires): retained store and subscribers, subscribers on other brokers, rules,
    /// and the default topic. Returns, when `acked` is set, a receiver per record whose
    /// durability the publisher's acknowledgement waits for (the default topic's, and the
    /// forward topic's if other brokers have subscribers for it).
    async fn ingest(
        &self,
        msg: &Message,
        clientid: &str,
        username: Option<&str>,
        acked: bool,
    ) -> Vec<oneshot::Receiver<AckResult>> {
        let mut durable = Vec::new();
        let own = self.routes.node_id();
        let shares = self.plan_shares(&msg.topic);
        let mine = |g: &str, f: &str| shares.iter().any(|(n, sg, sf)| *n == own && sg == g && sf == f);
        self.broker.route(msg, &mine);
        let theirs: Vec<&(i32, String, String)> = shares.iter().filter(|(n, _, _)| *n != own).collect();
        let wanted = !theirs.is_empty() || self.routes.plain_elsewhere(&msg.topic);
        if let Some(forward) = self.forward.as_ref().filter(|_| wanted) {
            match forward.record(msg, clientid, &theirs).await {
                Ok(rec) => durable.extend(self.write(rec, acked).await),
                Err(e) => {
                    tracing::warn!(error = %e, "forwarding an MQTT message to other brokers failed");
                    let (tx, rx) = oneshot::channel();
                    let _ = tx.send(Err(AckError::Failed(format!("forwarding to other brokers: {e}"))));
                    durable.push(rx);
                }
            }
        }
        if self.rules.any() {
            let ctx = MessageCtx {
                clientid,
                username,
                msg,
            };
            for out in self.rules.on_message(&ctx) {
                self.uplink.send(out).await;
            }
        }
        if !self.cfg.default_topic.is_empty() {
            let rec = OutRecord {
                topic: self.cfg.default_topic.clone(),
                key: Some(Bytes::copy_from_slice(clientid.as_bytes())),
                value: msg.payload.clone(),
                headers: msg.to_headers(std::time::Instant::now()),
                timestamp: msg.created_ms,
                ack: None,
            };
            durable.extend(self.write(rec, acked).await);
        }
        if !acked {
            durable.clear();
        }
        durable
    }

    /// Which broker delivers a message on `topic` to each matching share group of the
    /// cluster, as (broker, group, filter): one of those with members, in turn. Without
    /// routing between brokers, this broker's groups only.
    fn plan_shares(&self, topic: &str) -> Vec<(i32, String, String)> {
        let own = self.routes.node_id();
        let mut groups: BTreeMap<(String, String), BTreeSet<i32>> = BTreeMap::new();
        for key in self.broker.share_groups_matching(topic) {
            groups.entry(key).or_default().insert(own);
        }
        if self.forward.is_some() {
            for (group, filter, brokers) in self.routes.shares_elsewhere(topic) {
                groups.entry((group, filter)).or_default().extend(brokers);
            }
        }
        if groups.is_empty() {
            return Vec::new();
        }
        let key = self.share_key.fetch_add(1, Ordering::Relaxed);
        groups
            .into_iter()
            .filter_map(|((g, f), brokers)| Some((routes::share_owner(&brokers, &g, key)?, g, f)))
            .collect()
    }

    /// Queues a record for the log; with `acked`, returns a receiver for its durability.
    async fn write(&self, rec: OutRecord, acked: bool) -> Option<oneshot::Receiver<AckResult>> {
        if acked {
            Some(self.uplink.send_acked(rec).await)
        } else {
            self.uplink.send(rec).await;
            None
        }
    }
}
