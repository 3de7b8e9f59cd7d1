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
//! No batch exceeds its topic's `max.message.bytes` (nor a byte target below
//! it): a partition's records are cut into batches by an upper bound of their
//! encoded size, in order. A record too large for a batch of its own fails alone,
//! with [`AckError::TooLarge`]. Records hold a share of a byte budget from the
//! moment they are queued until they are durable; when it is used up, `send`
//! waits, so connections stop reading from their sockets instead of queueing
//! without bound.
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
use sluice_client::records::{
    encode_batch, produce_record_bound, record_size_bound, split_within, ProduceRecord, BATCH_HEADER_BYTES,
};
use sluice_client::{Acks, Client};
use sluice_log::{Log, LogError, Topic};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

/// Outcome of writing one record.
pub type AckResult = Result<(), AckError>;

/// Why a record was not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckError {
    /// The record alone is larger than its topic's `max.message.bytes`.
    TooLarge(String),
    /// Anything else: the log's or the forwarder's reason.
    Failed(String),
    /// The client may not publish to the topic (ACLs).
    NotAuthorized,
}

impl std::fmt::Display for AckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AckError::TooLarge(why) | AckError::Failed(why) => f.write_str(why),
            AckError::NotAuthorized => f.write_str("not authorized"),
        }
    }
}

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

/// A record and its share of the in-flight byte budget, released once it is
/// durable or failed.
struct Queued {
    rec: OutRecord,
    permit: OwnedSemaphorePermit,
}

/// Handle to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct Uplink {
    tx: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
    budget_bytes: u32,
}

/// Records taken from the channel per round.
const MAX_ROUND: usize = 8192;
/// Record bytes per batch at most, below the default `max.message.bytes`: a
/// batch of this size is one large write, and a larger one only waits longer.
const TARGET_BATCH_BYTES: usize = 900 << 10;

impl Uplink {
    /// Starts the writer. `forward_to`: a Kafka address of this cluster (this broker's
    /// own) through which records for partitions led elsewhere reach their leader.
    /// `budget_bytes`: record bytes queued or being written at most.
    pub fn start(log: Log, forward_to: String, budget_bytes: u64) -> Self {
        let (tx, rx) = mpsc::channel(65536);
        let forwarder = Forwarder::start(forward_to);
        tokio::spawn(run(log, rx, forwarder));
        let budget_bytes = budget_bytes.clamp(1, u64::from(u32::MAX >> 3)) as u32;
        Self {
            tx,
            budget: Arc::new(Semaphore::new(budget_bytes as usize)),
            budget_bytes,
        }
    }

    /// Queues a record; waits while the byte budget is used up.
    pub async fn send(&self, rec: OutRecord) {
        // A record larger than the whole budget waits for all of it.
        let need = u32::try_from(record_bound(&rec))
            .unwrap_or(u32::MAX)
            .min(self.budget_bytes);
        let Ok(permit) = self.budget.clone().acquire_many_owned(need).await else {
            return fail(rec.ack, "gateway is shutting down".into());
        };
        if let Err(mpsc::error::SendError(q)) = self.tx.send(Queued { rec, permit }).await {
            fail(q.rec.ack, "gateway is shutting down".into());
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

async fn run(log: Log, mut rx: mpsc::Receiver<Queued>, forwarder: Forwarder) {
    let mut round = Vec::with_capacity(1024);
    let mut rr: u32 = 0;
    while rx.recv_many(&mut round, MAX_ROUND).await > 0 {
        let mut groups = Groups::default();
        // Looked up once per round: most records of a round go to the same few topics.
        let mut topics: HashMap<String, Arc<Topic>> = HashMap::new();
        for q in round.drain(..) {
            let rec = &q.rec;
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
                    let why = format!("topic {}: {e}", rec.topic);
                    fail(q.rec.ack, why);
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
            groups.push(topic, partition, q);
        }
        for (topic, partition, recs) in groups.groups {
            let limit = batch_limit(&topic);
            for chunk in split_within(recs, limit, |q| record_bound(&q.rec)) {
                submit(&log, &forwarder, &topic, partition, limit, chunk).await;
            }
        }
    }
}

/// The most bytes a batch for `topic` may take: its `max.message.bytes`, or the
/// byte target if lower.
fn batch_limit(topic: &Topic) -> usize {
    let max = usize::try_from(topic.config().max_message_bytes).unwrap_or(0);
    max.min(TARGET_BATCH_BYTES + BATCH_HEADER_BYTES)
}

async fn submit(log: &Log, forwarder: &Forwarder, topic: &Arc<Topic>, partition: i32, limit: usize, recs: Vec<Queued>) {
    let mut records = Vec::with_capacity(recs.len());
    let mut acks = Vec::with_capacity(recs.len());
    let mut permits = Vec::with_capacity(recs.len());
    for q in recs {
        let r = q.rec;
        records.push(ProduceRecord {
            key: r.key,
            value: Some(r.value),
            headers: r.headers,
            timestamp: Some(r.timestamp),
        });
        acks.push(r.ack);
        permits.push(q.permit);
    }
    let data = match encode_batch(&records, Compression::None) {
        Ok(d) => d,
        Err(e) => return fail_all(acks, AckError::Failed(format!("encoding record batch: {e:#}"))),
    };
    match log.submit(topic, partition, data).await {
        Ok(done) => {
            tokio::spawn(async move {
                let outcome = match done.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(AckError::Failed(e.to_string())),
                    Err(_) => Err(AckError::Failed("log is shutting down".to_string())),
                };
                drop(permits);
                for ack in acks.into_iter().flatten() {
                    let _ = ack.send(outcome.clone());
                }
            });
        }
        Err(LogError::NotLeader) => {
            let forward = Forward {
                topic: topic.name.clone(),
                partition,
                limit,
                records,
                acks,
                permits,
            };
            forwarder.send(forward).await;
        }
        // Batches are cut below the limit, so only a record too large on its own gets here.
        Err(LogError::MessageTooLarge(why)) => {
            tracing::warn!(topic = %topic.name, partition, error = %why, "MQTT record too large for its topic");
            fail_all(acks, AckError::TooLarge(why));
        }
        Err(e) => {
            tracing::warn!(topic = %topic.name, partition, error = %e, "MQTT uplink append refused");
            fail_all(acks, AckError::Failed(e.to_string()));
        }
    }
}

/// Records for a partition another broker leads, on their way to it.
struct Forward {
    topic: String,
    partition: i32,
    /// The topic's batch limit ([`batch_limit`]).
    limit: usize,
    records: Vec<ProduceRecord>,
    acks: Vec<Option<oneshot::Sender<AckResult>>>,
    permits: Vec<OwnedSemaphorePermit>,
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
            fail_all(f.acks, AckError::Failed("gateway is shutting down".into()));
        }
    }
}

/// Produces forwarded records to their leaders and then acknowledges them. Each round
/// takes what has queued, merged per partition in arrival order (within the topic's
/// batch limit), and sends it with one request per leader, so a backlog costs one round trip,
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
            let (acks, permits): (Vec<_>, Vec<_>) = parts.into_values().map(|m| (m.acks, m.permits)).unzip();
            drop(permits);
            let acks = acks.into_iter().flatten();
            match produced {
                Ok(_) => {
                    for ack in acks.flatten() {
                        let _ = ack.send(Ok(()));
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %topic, error = %format!("{e:#}"),
                        "forwarding MQTT records to the partitions' leaders failed");
                    let why = format!("forwarding to the partition's leader: {e:#}");
                    fail_all(acks.collect(), AckError::Failed(why));
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
    permits: Vec<OwnedSemaphorePermit>,
    bytes: usize,
}

/// Takes forwards from the front of `queue`, merged per topic and partition in order, until
/// one would take its partition's batch past the topic's limit. Each forward is one batch
/// the writer cut, so it fits alone.
fn take_round(queue: &mut VecDeque<Forward>) -> BTreeMap<String, BTreeMap<i32, Merged>> {
    let mut round: BTreeMap<String, BTreeMap<i32, Merged>> = BTreeMap::new();
    while let Some(f) = queue.front() {
        let size: usize = f.records.iter().map(produce_record_bound).sum();
        let merged = round
            .entry(f.topic.clone())
            .or_default()
            .entry(f.partition)
            .or_default();
        if !merged.records.is_empty() && BATCH_HEADER_BYTES + merged.bytes + size > f.limit {
            break;
        }
        let f = queue.pop_front().expect("a front");
        merged.bytes += size;
        merged.records.extend(f.records);
        merged.acks.extend(f.acks);
        merged.permits.extend(f.permits);
    }
    round
}

fn record_bound(r: &OutRecord) -> usize {
    let headers = r.headers.iter().map(|(k, v)| (k.len(), v.as_ref().map(Bytes::len)));
    record_size_bound(r.key.as_ref().map(Bytes::len), Some(r.value.len()), headers)
}

fn fail(ack: Option<oneshot::Sender<AckResult>>, why: String) {
    if let Some(a) = ack {
        let _ = a.send(Err(AckError::Failed(why)));
    }
}

fn fail_all(acks: Vec<Option<oneshot::Sender<AckResult>>>, why: AckError) {
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
    groups: Vec<(Arc<Topic>, i32, Vec<Queued>)>,
}

impl Groups {
    fn push(&mut self, topic: Arc<Topic>, partition: i32, rec: Queued) {
        let next = self.groups.len();
        let i = *self.index.entry((topic.id, partition)).or_insert(next);
        if i == next {
            self.groups.push((topic, partition, Vec::new()));
        }
        self.groups[i].2.push(rec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize, value: usize) -> ProduceRecord {
        ProduceRecord {
            key: Some(Bytes::from(format!("device-{}", i % 7))),
            value: Some(Bytes::from(vec![b'x'; value])),
            headers: vec![
                ("mqtt.topic".into(), Some(Bytes::from(format!("cars/{i}/telemetry")))),
                ("mqtt.qos".into(), Some(Bytes::from_static(b"1"))),
                ("mqtt.retain".into(), None),
            ],
            timestamp: Some(1_700_000_000_000 + i as i64 * 997),
        }
    }

    #[test]
    fn forwards_merge_within_the_limit() {
        let forward = |partition: i32, n: usize| Forward {
            topic: "t".into(),
            partition,
            limit: 2_500,
            records: (0..n).map(|i| record(i, 100)).collect(),
            acks: (0..n).map(|_| None).collect(),
            permits: Vec::new(),
        };
        let mut queue: VecDeque<Forward> = [forward(0, 5), forward(1, 5), forward(0, 5), forward(0, 5)].into();
        let round = take_round(&mut queue);
        let parts = &round["t"];
        for m in parts.values() {
            assert!(encode_batch(&m.records, Compression::None).unwrap().len() <= 2_500);
        }
        // Partition 0 took two forwards; the third would pass the limit and waits.
        assert_eq!(parts[&0].records.len(), 10);
        assert_eq!(parts[&1].records.len(), 5);
        assert_eq!(queue.len(), 1);
    }
}
