//! Writing records into the log: MQTT publishes, rule outputs and events.
//!
//! Every connection hands its records to one writer task through a channel.
//! The writer takes whatever has queued up, groups it by topic and partition
//! (keeping arrival order within each), encodes one record batch per group and
//! submits them to the log, which group-commits all of them in its next flush.
//! A record's acknowledgement fires once its batch is durable. Submitting in
//! channel order keeps each key's records in order, since a key maps to one
//! partition and the log commits a partition's batches in submission order.
//!
//! In a cluster a partition may be led by another broker: the log refuses
//! those batches (NotLeader), and the writer hands their records to the
//! forwarder, which produces them to the leader through a Kafka client
//! (acks=all), in rounds one after another, so a partition's records keep
//! their order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::records::Compression;
use sluice_client::partitioner::partition_for_key;
use sluice_client::records::{encode_batch, ProduceRecord};
use sluice_client::{Acks, Client};
use sluice_log::{Log, LogError, Topic};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Outcome of writing one record: `Err` carries the log's reason.
pub type AckResult = Result<(), String>;

/// A record on its way into the log.
pub struct OutRecord {
    pub topic: String,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(String, Option<Bytes>)>,
    pub timestamp: i64,
    /// Told once the record is durable (or failed); `None` for fire-and-forget.
    pub ack: Option<oneshot::Sender<AckResult>>,
}

/// Handle to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct Uplink {
    tx: mpsc::Sender<OutRecord>,
}

/// Records taken from the channel per round.
const MAX_ROUND: usize = 8192;
/// Bytes per encoded batch, kept under the default `max.message.bytes`.
const MAX_BATCH_BYTES: usize = 900 << 10;

impl Uplink {
    /// Starts the writer. `forward_to`: a Kafka address of this cluster (this broker's
    /// own) through which records for partitions led elsewhere reach their leader.
    pub fn start(log: Log, forward_to: String) -> Self {
        let (tx, rx) = mpsc::channel(65536);
        let forwarder = Forwarder::start(forward_to);
        tokio::spawn(run(log, rx, forwarder));
        Self { tx }
    }

    /// Queues a record; waits while the writer is saturated.
    pub async fn send(&self, rec: OutRecord) {
        if let Err(mpsc::error::SendError(rec)) = self.tx.send(rec).await {
            if let Some(ack) = rec.ack {
                let _ = ack.send(Err("gateway is shutting down".into()));
            }
        }
    }

    /// Queues a record and returns a receiver for its durability.
    pub async fn send_acked(&self, mut rec: OutRecord) -> oneshot::Receiver<AckResult> {
        let (tx, rx) = oneshot::channel();
        rec.ack = Some(tx);
        self.send(rec).await;
        rx
    }
}

async fn run(log: Log, mut rx: mpsc::Receiver<OutRecord>, forwarder: Forwarder) {
    let mut round = Vec::with_capacity(1024);
    let mut rr: u32 = 0;
    while rx.recv_many(&mut round, MAX_ROUND).await > 0 {
        let mut groups = Groups::default();
        // Looked up once per round: most records of a round go to the same few topics.
        let mut topics: HashMap<String, Arc<Topic>> = HashMap::new();
        for rec in round.drain(..) {
            let found = match topics.get(&rec.topic) {
                Some(t) => Ok(t.clone()),
                None => topic_for(&log, &rec.topic).await,
            };
            let topic = match found {
                Ok(t) => {
                    if !topics.contains_key(&rec.topic) {
                        topics.insert(rec.topic.clone(), t.clone());
                    }
                    t
                }
                Err(e) => {
                    fail(rec.ack, format!("topic {}: {e}", rec.topic));
                    continue;
                }
            };
            let n = topic.partition_count();
            let partition = match &rec.key {
                Some(k) => partition_for_key(k, n),
                None => {
                    rr = rr.wrapping_add(1);
                    (rr % n as u32) as i32
                }
            };
            groups.push(topic, partition, rec);
        }
        for (topic, partition, recs) in groups.groups {
            for chunk in split_by_size(recs) {
                submit(&log, &forwarder, &topic, partition, chunk).await;
            }
        }
    }
}

async fn submit(log: &Log, forwarder: &Forwarder, topic: &Arc<Topic>, partition: i32, recs: Vec<OutRecord>) {
    let (records, acks): (Vec<ProduceRecord>, Vec<_>) = recs
        .into_iter()
        .map(|r| {
            (
                ProduceRecord {
                    key: r.key,
                    value: Some(r.value),
                    headers: r.headers,
                    timestamp: Some(r.timestamp),
                },
                r.ack,
            )
        })
        .unzip();
    let data = match encode_batch(&records, Compression::None) {
        Ok(d) => d,
        Err(e) => return fail_all(acks, format!("encoding record batch: {e:#}")),
    };
    match log.submit(topic, partition, data).await {
        Ok(done) => {
            if acks.iter().all(Option::is_none) {
                return;
            }
            tokio::spawn(async move {
                let outcome = match done.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("log is shutting down".to_string()),
                };
                for ack in acks.into_iter().flatten() {
                    let _ = ack.send(outcome.clone());
                }
            });
        }
        Err(LogError::NotLeader) => {
            let forward = Forward {
                topic: topic.name.clone(),
                partition,
                records,
                acks,
            };
            forwarder.send(forward).await;
        }
        Err(e) => {
            tracing::warn!(topic = %topic.name, partition, error = %e, "MQTT uplink append refused");
            fail_all(acks, e.to_string());
        }
    }
}

/// Records for a partition another broker leads, on their way to it.
struct Forward {
    topic: String,
    partition: i32,
    records: Vec<ProduceRecord>,
    acks: Vec<Option<oneshot::Sender<AckResult>>>,
}

/// Handle to the forwarding task.
struct Forwarder {
    tx: mpsc::Sender<Forward>,
}

impl Forwarder {
    fn start(bootstrap: String) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(forward(bootstrap, rx));
        Self { tx }
    }

    async fn send(&self, f: Forward) {
        if let Err(mpsc::error::SendError(f)) = self.tx.send(f).await {
            fail_all(f.acks, "gateway is shutting down".into());
        }
    }
}

/// Produces forwarded records to their leaders and then acknowledges them. Each round
/// takes what has queued, merged per partition in arrival order (up to `MAX_BATCH_BYTES`
/// each), and sends it with one request per leader, so a backlog costs one round trip,
/// not one per batch. Rounds run one after another, which keeps each partition's order;
/// the client finds the leaders and retries while leadership moves.
async fn forward(bootstrap: String, mut rx: mpsc::Receiver<Forward>) {
    let mut client: Option<Client> = None;
    let mut queue: VecDeque<Forward> = VecDeque::new();
    let mut arrived = Vec::new();
    loop {
        if queue.is_empty() && rx.recv_many(&mut arrived, 1024).await == 0 {
            return;
        }
        while let Ok(f) = rx.try_recv() {
            arrived.push(f);
        }
        queue.extend(arrived.drain(..));
        for (topic, parts) in take_round(&mut queue) {
            let batches: Vec<(i32, &[ProduceRecord])> = parts.iter().map(|(p, m)| (*p, &m.records[..])).collect();
            let produced = match client.as_mut() {
                Some(c) => c.produce_partitions(&topic, &batches, Acks::All).await,
                None => match Client::connect(&bootstrap).await {
                    Ok(c) => client.insert(c).produce_partitions(&topic, &batches, Acks::All).await,
                    Err(e) => Err(e),
                },
            };
            let acks = parts.into_values().flat_map(|m| m.acks);
            match produced {
                Ok(_) => {
                    for ack in acks.flatten() {
                        let _ = ack.send(Ok(()));
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %topic, error = %format!("{e:#}"),
                        "forwarding MQTT records to the partitions' leaders failed");
                    fail_all(acks.collect(), format!("forwarding to the partition's leader: {e:#}"));
                    // A fresh connection and metadata for the next round.
                    client = None;
                }
            }
        }
    }
}

/// One partition's forwarded records in a round.
#[derive(Default)]
struct Merged {
    records: Vec<ProduceRecord>,
    acks: Vec<Option<oneshot::Sender<AckResult>>>,
    bytes: usize,
}

/// Takes forwards from the front of `queue`, merged per topic and partition in order, until
/// one would take its partition's batch past `MAX_BATCH_BYTES`.
fn take_round(queue: &mut VecDeque<Forward>) -> BTreeMap<String, BTreeMap<i32, Merged>> {
    let mut round: BTreeMap<String, BTreeMap<i32, Merged>> = BTreeMap::new();
    while let Some(f) = queue.front() {
        let size: usize = f.records.iter().map(record_bytes).sum();
        let merged = round
            .entry(f.topic.clone())
            .or_default()
            .entry(f.partition)
            .or_default();
        if !merged.records.is_empty() && merged.bytes + size > MAX_BATCH_BYTES {
            break;
        }
        let f = queue.pop_front().expect("a front");
        merged.bytes += size;
        merged.records.extend(f.records);
        merged.acks.extend(f.acks);
    }
    round
}

/// About what a record takes in a batch.
fn record_bytes(r: &ProduceRecord) -> usize {
    let len = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len);
    32 + len(&r.key) + len(&r.value) + r.headers.iter().map(|(k, v)| k.len() + len(v)).sum::<usize>()
}

fn split_by_size(recs: Vec<OutRecord>) -> Vec<Vec<OutRecord>> {
    let mut out = vec![Vec::new()];
    let mut size = 0;
    for r in recs {
        let s = 32 + r.value.len() + r.key.as_ref().map_or(0, Bytes::len);
        if size + s > MAX_BATCH_BYTES && !out.last().unwrap().is_empty() {
            out.push(Vec::new());
            size = 0;
        }
        size += s;
        out.last_mut().unwrap().push(r);
    }
    out
}

fn fail(ack: Option<oneshot::Sender<AckResult>>, why: String) {
    if let Some(a) = ack {
        let _ = a.send(Err(why));
    }
}

fn fail_all(acks: Vec<Option<oneshot::Sender<AckResult>>>, why: String) {
    for a in acks.into_iter().flatten() {
        let _ = a.send(Err(why.clone()));
    }
}

/// The topic, created with the broker's defaults if it does not exist yet.
pub async fn topic_for(log: &Log, name: &str) -> Result<Arc<Topic>, LogError> {
    if let Some(t) = log.topic(name) {
        return Ok(t);
    }
    create_topic(log, name, None, BTreeMap::new()).await
}

/// Creates topic `name`, or returns it if another task or broker created it first.
pub async fn create_topic(
    log: &Log,
    name: &str,
    partitions: Option<i32>,
    configs: BTreeMap<String, String>,
) -> Result<Arc<Topic>, LogError> {
    match log.create_topic(name, partitions, configs, false).await {
        Ok(t) => Ok(t),
        Err(LogError::TopicExists) => log.topic(name).ok_or(LogError::UnknownTopicOrPartition),
        Err(e) => Err(e),
    }
}

/// Groups records by (topic, partition), keeping the order groups first
/// appeared in and the order of records within each.
#[derive(Default)]
struct Groups {
    index: HashMap<(Uuid, i32), usize>,
    groups: Vec<(Arc<Topic>, i32, Vec<OutRecord>)>,
}

impl Groups {
    fn push(&mut self, topic: Arc<Topic>, partition: i32, rec: OutRecord) {
        let next = self.groups.len();
        let i = *self.index.entry((topic.id, partition)).or_insert(next);
        if i == next {
            self.groups.push((topic, partition, Vec::new()));
        }
        self.groups[i].2.push(rec);
    }
}
