//! Sessions, subscriptions, retained messages and routing between MQTT clients.
//!
//! A session outlives its connections when the client asked for that (clean
//! start off, session expiry). Messages for a session always go into its
//! queue; the connection that currently owns the session drains the queue
//! (respecting the in-flight window) when woken through `notify`. So offline
//! queueing, takeover by a new connection and redelivery after a reconnect
//! all work on the same state.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5::PublishProperties;
use serde_json::json;
use tokio::sync::Notify;

use crate::events::{self, Events};
use crate::message::Message;
use crate::retained::RetainedStore;
use crate::topic::{matches, FilterTree, SubFilter};

/// Which share groups, by (group, filter), a message is delivered to on this broker.
pub type Shares<'a> = &'a dyn Fn(&str, &str) -> bool;

/// Options of one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOpts {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub sub_id: Option<NonZeroU32>,
}

/// A message waiting for, or in flight to, a subscriber.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub msg: Message,
    pub qos: QoS,
    pub retain: bool,
    pub sub_ids: Vec<NonZeroU32>,
}

impl Outgoing {
    /// The PUBLISH for the subscriber. `v5` adds properties, with the
    /// remaining expiry interval and the subscription identifiers.
    pub fn to_publish(&self, packet_id: Option<NonZeroU16>, dup: bool, v5: bool, now: Instant) -> Publish {
        let m = &self.msg;
        let properties = v5.then(|| PublishProperties {
            topic_alias: None,
            correlation_data: m.props.correlation_data.clone(),
            message_expiry_interval: m.expires_at.and_then(|t| {
                let left = t.saturating_duration_since(now).as_secs().max(1);
                NonZeroU32::new(u32::try_from(left).unwrap_or(u32::MAX))
            }),
            content_type: m.props.content_type.clone(),
            user_properties: m.props.user_properties.clone(),
            is_utf8_payload: m.props.is_utf8_payload,
            response_topic: m.props.response_topic.clone(),
            subscription_ids: self.sub_ids.clone(),
        });
        Publish {
            dup,
            retain: self.retain,
            qos: self.qos,
            topic: m.topic.clone(),
            packet_id,
            payload: m.payload.clone(),
            properties,
        }
    }
}

/// A QoS 1/2 message sent and not yet fully acknowledged.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub out: Outgoing,
    /// QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP.
    pub released: bool,
}

pub struct SessionState {
    /// Id of the connection that owns the session; 0 while offline.
    pub owner: u64,
    /// Bumped at each attach, so that expiry timers of an older disconnect do nothing.
    pub generation: u64,
    pub subs: HashMap<String, SubOpts>,
    pub queue: VecDeque<Outgoing>,
    pub inflight: BTreeMap<u16, Inflight>,
    next_pid: u16,
    /// QoS 2 packet ids received (and PUBREC'd or about to be), until PUBREL.
    pub incoming_qos2: HashSet<u16>,
    /// How long the session outlives a disconnect; `None`: forever, zero: not at all.
    pub expiry: Option<Duration>,
    /// Wakes the owning connection when another one takes the session over.
    kick: Option<Arc<Notify>>,
}

impl SessionState {
    /// A packet id not in flight.
    pub fn next_packet_id(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.next_pid) {
                return self.next_pid;
            }
        }
    }
}

pub struct Session {
    pub client_id: Arc<str>,
    pub notify: Notify,
    pub state: Mutex<SessionState>,
}

#[derive(Default)]
struct SubIndex {
    /// filter → client → options.
    plain: FilterTree<HashMap<Arc<str>, SubOpts>>,
    /// (group, filter) → members; one member gets each message, in turn.
    shared: HashMap<(String, String), SharedGroup>,
    /// Moves on every change of the filters above.
    generation: u64,
}

#[derive(Default)]
struct SharedGroup {
    members: Vec<(Arc<str>, SubOpts)>,
    next: usize,
}

pub struct Broker {
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    subs: RwLock<SubIndex>,
    pub retained: Arc<RetainedStore>,
    pub events: Events,
    max_queued: usize,
    next_conn: AtomicU64,
}

/// The result of attaching a connection to a session.
pub struct Attached {
    pub session: Arc<Session>,
    pub present: bool,
    pub conn_id: u64,
}

impl Broker {
    pub fn new(events: Events, retained: Arc<RetainedStore>, max_queued: usize) -> Arc<Self> {
        Arc::new(Self {
            sessions: Mutex::new(HashMap::new()),
            subs: RwLock::new(SubIndex::default()),
            retained,
            events,
            max_queued: max_queued.max(1),
            next_conn: AtomicU64::new(1),
        })
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().unwrap().len()
    }

    /// Attaches a new connection to the client's session, creating it (or
    /// replacing it, with `clean_start`). A connection that owned the session
    /// is woken through its `kick` and sees it no longer owns the session.
    pub fn attach(&self, client_id: &str, clean_start: bool, expiry: Option<Duration>, kick: Arc<Notify>) -> Attached {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut sessions = self.sessions.lock().unwrap();
        if let Some(existing) = sessions.get(client_id).cloned() {
            let mut st = existing.state.lock().unwrap();
            if let Some(old) = st.kick.take() {
                old.notify_one();
            }
            if !clean_start {
                st.owner = conn_id;
                st.generation += 1;
                st.expiry = expiry;
                st.kick = Some(kick);
                drop(st);
                return Attached {
                    session: existing,
                    present: true,
                    conn_id,
                };
            }
            st.owner = 0;
            let filters: Vec<String> = st.subs.keys().cloned().collect();
            drop(st);
            sessions.remove(client_id);
            self.remove_subs(&existing.client_id, &filters);
        }
        let session = Arc::new(Session {
            client_id: Arc::from(client_id),
            notify: Notify::new(),
            state: Mutex::new(SessionState {
                owner: conn_id,
                generation: 1,
                subs: HashMap::new(),
                queue: VecDeque::new(),
                inflight: BTreeMap::new(),
                next_pid: 0,
                incoming_qos2: HashSet::new(),
                expiry,
                kick: Some(kick),
            }),
        });
        sessions.insert(session.client_id.clone(), session.clone());
        Attached {
            session,
            present: false,
            conn_id,
        }
    }

    /// Detaches connection `conn_id`; ends the session now or when it expires.
    pub fn detach(self: &Arc<Self>, session: &Arc<Session>, conn_id: u64) {
        let (expiry, generation) = {
            let mut st = session.state.lock().unwrap();
            if st.owner != conn_id {
                return; // taken over by a newer connection
            }
            st.owner = 0;
            st.kick = None;
            (st.expiry, st.generation)
        };
        match expiry {
            Some(d) if d.is_zero() => self.end_session(session, generation),
            Some(d) => {
                let broker = self.clone();
                let session = session.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    broker.end_session(&session, generation);
                });
            }
            None => {}
        }
    }

    /// Removes the session if it is still offline and was not re-attached since `generation`.
    fn end_session(&self, session: &Arc<Session>, generation: u64) {
        let mut sessions = self.sessions.lock().unwrap();
        let filters: Vec<String> = {
            let st = session.state.lock().unwrap();
            if st.owner != 0 || st.generation != generation {
                return;
            }
            st.subs.keys().cloned().collect()
        };
        if sessions
            .get(&session.client_id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            sessions.remove(&session.client_id);
            self.remove_subs(&session.client_id, &filters);
        }
    }

    fn remove_subs(&self, client: &Arc<str>, filters: &[String]) {
        let mut idx = self.subs.write().unwrap();
        for raw in filters {
            if let Some(f) = SubFilter::parse(raw) {
                idx.remove(client, &f);
            }
        }
    }

    /// Adds (or replaces) a subscription. Returns whether it existed before.
    pub fn subscribe(&self, session: &Session, filter: &SubFilter, opts: SubOpts) -> bool {
        let existed = session.state.lock().unwrap().subs.insert(filter.raw(), opts).is_some();
        let mut idx = self.subs.write().unwrap();
        idx.generation += 1;
        match &filter.group {
            None => {
                idx.plain
                    .get_or_insert_with(&filter.filter, HashMap::new)
                    .insert(session.client_id.clone(), opts);
            }
            Some(g) => {
                let group = idx.shared.entry((g.clone(), filter.filter.clone())).or_default();
                group.members.retain(|(c, _)| c != &session.client_id);
                group.members.push((session.client_id.clone(), opts));
            }
        }
        existed
    }

    /// A number that moves whenever a subscription is added or removed.
    pub fn filters_generation(&self) -> u64 {
        self.subs.read().unwrap().generation
    }

    /// The topic filters this broker has subscribers for (share groups as `$share/g/f`),
    /// with the `filters_generation` they are of.
    pub fn filters(&self) -> (u64, HashSet<String>) {
        let idx = self.subs.read().unwrap();
        let plain = idx
            .plain
            .iter()
            .filter(|(_, c)| !c.is_empty())
            .map(|(f, _)| f.to_string());
        let shared = idx
            .shared
            .iter()
            .filter(|(_, g)| !g.members.is_empty())
            .map(|((g, f), _)| format!("$share/{g}/{f}"));
        (idx.generation, plain.chain(shared).collect())
    }

    /// The share groups with members here whose filter matches `topic`: (group, filter).
    pub fn share_groups_matching(&self, topic: &str) -> Vec<(String, String)> {
        let idx = self.subs.read().unwrap();
        idx.shared
            .iter()
            .filter(|((_, f), g)| !g.members.is_empty() && matches(f, topic))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&self, session: &Session, filter: &SubFilter) -> bool {
        let existed = session.state.lock().unwrap().subs.remove(&filter.raw()).is_some();
        if existed {
            self.subs.write().unwrap().remove(&session.client_id, filter);
        }
        existed
    }

    /// Delivers `msg` to every matching subscription, and to one member of each share
    /// group `shares` accepts (by group and filter; in a cluster a group's message goes to
    /// the members on one broker), and updates the retained store. Returns the number of
    /// sessions the message was queued for.
    pub fn route(&self, msg: &Message, shares: Shares) -> usize {
        if msg.retain {
            self.retained.set(msg);
        }
        self.deliver(msg, shares)
    }

    /// Delivers `msg` as `route` does, without storing it as retained (another
    /// broker routed it and stored it).
    pub fn deliver(&self, msg: &Message, shares: Shares) -> usize {
        let topic: &str = &msg.topic;
        // One delivery per session, at the highest QoS of its matching subscriptions.
        let mut targets: HashMap<Arc<str>, (SubOpts, Vec<NonZeroU32>)> = HashMap::new();
        {
            let mut add = |client: &Arc<str>, o: &SubOpts| {
                if o.no_local && msg.from.as_deref() == Some(&**client) {
                    return;
                }
                let e = targets.entry(client.clone()).or_insert((*o, Vec::new()));
                if o.qos > e.0.qos {
                    e.0.qos = o.qos;
                }
                e.0.retain_as_published |= o.retain_as_published;
                if let Some(id) = o.sub_id {
                    e.1.push(id);
                }
            };
            let idx = self.subs.read().unwrap();
            idx.plain.for_each_match(topic, |_, clients| {
                for (c, o) in clients {
                    add(c, o);
                }
            });
            let has_shared = !idx.shared.is_empty();
            drop(idx);
            if has_shared {
                // Lock order everywhere: sessions, then subscriptions, then a session's state.
                let sessions = self.sessions.lock().unwrap();
                let mut idx = self.subs.write().unwrap();
                for ((name, filter), group) in idx.shared.iter_mut() {
                    if group.members.is_empty() || !matches(filter, topic) || !shares(name, filter) {
                        continue;
                    }
                    // Prefer a connected member; fall back to the next in turn.
                    let n = group.members.len();
                    let pick = (0..n)
                        .map(|i| (group.next + i) % n)
                        .find(|&i| {
                            sessions
                                .get(&group.members[i].0)
                                .is_some_and(|s| s.state.lock().unwrap().owner != 0)
                        })
                        .unwrap_or(group.next % n);
                    group.next = pick + 1;
                    let (c, o) = &group.members[pick];
                    add(c, o);
                }
            }
        }
        let mut queued = 0;
        for (client, (opts, sub_ids)) in targets {
            let Some(session) = self.sessions.lock().unwrap().get(&client).cloned() else {
                continue;
            };
            let out = Outgoing {
                msg: msg.clone(),
                qos: msg.qos.less_value(opts.qos),
                // Live messages go out with retain cleared unless the subscriber asked otherwise.
                retain: msg.retain && opts.retain_as_published,
                sub_ids,
            };
            if self.enqueue(&session, out) {
                queued += 1;
            }
        }
        queued
    }

    /// Queues a message for a session and wakes its connection. Returns false
    /// if the message was dropped (offline QoS 0).
    pub fn enqueue(&self, session: &Session, out: Outgoing) -> bool {
        let mut st = session.state.lock().unwrap();
        if st.owner == 0 && out.qos == QoS::AtMostOnce {
            drop(st);
            self.dropped(&session.client_id, &out.msg, "offline_qos0");
            return false;
        }
        let mut evicted = None;
        if st.queue.len() >= self.max_queued {
            evicted = st.queue.pop_front();
        }
        st.queue.push_back(out);
        drop(st);
        if let Some(old) = evicted {
            self.dropped(&session.client_id, &old.msg, "queue_full");
        }
        session.notify.notify_one();
        true
    }

    /// Queues the retained messages matching a new subscription.
    pub fn deliver_retained(&self, session: &Session, filter: &str, opts: SubOpts) {
        let now = Instant::now();
        for msg in self.retained.matching(filter) {
            if msg.expired(now) {
                continue;
            }
            let out = Outgoing {
                qos: msg.qos.less_value(opts.qos),
                retain: true,
                sub_ids: opts.sub_id.into_iter().collect(),
                msg,
            };
            self.enqueue(session, out);
        }
    }

    pub fn dropped(&self, clientid: &str, msg: &Message, reason: &str) {
        self.events.emit(
            events::MESSAGE_DROPPED,
            clientid,
            json!({"topic": &*msg.topic, "qos": msg.qos.value(), "reason": reason,
                   "from_clientid": msg.from.as_deref()}),
        );
    }
}

impl SubIndex {
    fn remove(&mut self, client: &Arc<str>, f: &SubFilter) {
        self.generation += 1;
        match &f.group {
            None => {
                if let Some(m) = self.plain.get_mut(&f.filter) {
                    m.remove(client);
                    if m.is_empty() {
                        self.plain.remove(&f.filter);
                    }
                }
            }
            Some(g) => {
                let key = (g.clone(), f.filter.clone());
                if let Some(group) = self.shared.get_mut(&key) {
                    group.members.retain(|(c, _)| c != client);
                    if group.members.is_empty() {
                        self.shared.remove(&key);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use bytestring::ByteString;

    use super::*;

    /// Every share group.
    fn all(_: &str, _: &str) -> bool {
        true
    }
    use crate::message::ForwardProps;

    fn broker() -> (Arc<Broker>, tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>) {
        let (events, rx) = Events::capture();
        (Broker::new(events, Arc::new(RetainedStore::in_memory()), 3), rx)
    }

    fn msg(topic: &str, qos: QoS, retain: bool) -> Message {
        Message {
            topic: ByteString::from(topic.to_string()),
            payload: Bytes::from_static(b"p"),
            qos,
            retain,
            props: Arc::new(ForwardProps::default()),
            expires_at: None,
            from: Some(Arc::from("pub")),
            created_ms: 0,
        }
    }

    fn opts(qos: QoS) -> SubOpts {
        SubOpts {
            qos,
            no_local: false,
            retain_as_published: false,
            sub_id: None,
        }
    }

    fn queued(s: &Session) -> Vec<(String, QoS)> {
        let st = s.state.lock().unwrap();
        st.queue.iter().map(|o| (o.msg.topic.to_string(), o.qos)).collect()
    }

    #[test]
    fn routes_with_downgraded_qos_once_per_session() {
        let (b, _ev) = broker();
        let a = b.attach("a", true, Some(Duration::ZERO), Arc::new(Notify::new()));
        b.subscribe(
            &a.session,
            &SubFilter::parse("cars/+/cmd").unwrap(),
            opts(QoS::AtLeastOnce),
        );
        b.subscribe(&a.session, &SubFilter::parse("cars/#").unwrap(), opts(QoS::AtMostOnce));
        assert_eq!(b.route(&msg("cars/1/cmd", QoS::ExactlyOnce, false), &all), 1);
        assert_eq!(b.route(&msg("bikes/1/cmd", QoS::ExactlyOnce, false), &all), 0);
        assert_eq!(queued(&a.session), vec![("cars/1/cmd".to_string(), QoS::AtLeastOnce)]);
    }

    #[test]
    fn shared_groups_take_turns_and_offline_queues_are_bounded() {
        let (b, mut ev) = broker();
        let s1 = b.attach("s1", false, None, Arc::new(Notify::new()));
        let s2 = b.attach("s2", false, None, Arc::new(Notify::new()));
        let f = SubFilter::parse("$share/g/jobs/#").unwrap();
        b.subscribe(&s1.session, &f, opts(QoS::AtLeastOnce));
        b.subscribe(&s2.session, &f, opts(QoS::AtLeastOnce));
        for _ in 0..4 {
            b.route(&msg("jobs/x", QoS::AtLeastOnce, false), &all);
        }
        assert_eq!(queued(&s1.session).len(), 2);
        assert_eq!(queued(&s2.session).len(), 2);
        // Offline: QoS 0 is dropped, QoS 1 queued up to the cap (3), oldest evicted.
        b.detach(&s1.session, s1.conn_id);
        b.unsubscribe(&s2.session, &f);
        b.route(&msg("jobs/y", QoS::AtMostOnce, false), &all);
        b.route(&msg("jobs/z", QoS::AtLeastOnce, false), &all);
        b.route(&msg("jobs/w", QoS::AtLeastOnce, false), &all);
        assert_eq!(queued(&s1.session).len(), 3);
        let mut reasons = Vec::new();
        while let Ok(e) = ev.try_recv() {
            reasons.push(e["reason"].as_str().unwrap_or_default().to_string());
        }
        assert_eq!(reasons, vec!["offline_qos0", "queue_full"]);
    }

    #[test]
    fn clean_start_replaces_a_session_and_resume_keeps_it() {
        let (b, _ev) = broker();
        let k1 = Arc::new(Notify::new());
        let first = b.attach("c", false, None, k1.clone());
        b.subscribe(&first.session, &SubFilter::parse("t").unwrap(), opts(QoS::AtLeastOnce));
        let resumed = b.attach("c", false, None, Arc::new(Notify::new()));
        assert!(resumed.present && Arc::ptr_eq(&first.session, &resumed.session));
        // The first connection was kicked: its permit is stored.
        assert!(futures::FutureExt::now_or_never(k1.notified()).is_some());
        let fresh = b.attach("c", true, Some(Duration::ZERO), Arc::new(Notify::new()));
        assert!(!fresh.present);
        assert_eq!(b.route(&msg("t", QoS::AtLeastOnce, false), &all), 0);
        b.detach(&fresh.session, fresh.conn_id);
        assert_eq!(b.session_count(), 0);
    }

    #[test]
    fn filters_are_those_with_a_subscriber_left() {
        let (b, _ev) = broker();
        let s = b.attach("s", true, Some(Duration::ZERO), Arc::new(Notify::new()));
        let plain = SubFilter::parse("cmd/+").unwrap();
        let shared = SubFilter::parse("$share/g/jobs/#").unwrap();
        let before = b.filters_generation();
        b.subscribe(&s.session, &plain, opts(QoS::AtLeastOnce));
        b.subscribe(&s.session, &shared, opts(QoS::AtLeastOnce));
        let (generation, filters) = b.filters();
        assert!(generation > before);
        let mut got: Vec<String> = filters.into_iter().collect();
        got.sort();
        assert_eq!(got, ["$share/g/jobs/#", "cmd/+"]);
        b.unsubscribe(&s.session, &plain);
        b.unsubscribe(&s.session, &shared);
        let (after, filters) = b.filters();
        assert!(filters.is_empty() && after > generation);
    }

    #[test]
    fn retained_messages_are_replaced_and_cleared() {
        let (b, _ev) = broker();
        b.route(&msg("a/b", QoS::AtLeastOnce, true), &all);
        let s = b.attach("s", true, Some(Duration::ZERO), Arc::new(Notify::new()));
        b.deliver_retained(&s.session, "a/+", opts(QoS::AtMostOnce));
        assert_eq!(queued(&s.session), vec![("a/b".to_string(), QoS::AtMostOnce)]);
        let mut clear = msg("a/b", QoS::AtLeastOnce, true);
        clear.payload = Bytes::new();
        b.route(&clear, &all);
        assert!(b.retained.matching("#").is_empty());
    }
}
