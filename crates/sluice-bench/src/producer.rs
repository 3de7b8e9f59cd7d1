//! The load-generating producer: a generator task enqueues records (at a
//! target rate, or as fast as the buffer allows) into per-partition queues;
//! `in_flight` sender tasks, each with its own connection, drain them into
//! produce requests carrying one batch per partition, the way a Kafka
//! producer's accumulator does (a batch is ready when it is full or its
//! oldest record has waited `linger`; a request then takes every partition's
//! pending batch). Each record's latency runs from its enqueue to the
//! acknowledgement of the request that carried it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use sluice_client::{Acks, Client, ClientConfig, Compression, ProduceRecord};

use crate::report::Latency;

/// Records enqueued per lock acquisition when unthrottled.
const CHUNK: u64 = 256;

/// Magic prefix of a timestamped (e2e) record value.
pub const STAMP_MAGIC: &[u8; 4] = b"SLB1";
/// Bytes taken by magic + run id + send time at the start of a stamped value.
pub const STAMP_LEN: usize = 4 + 8 + 8;

/// When the producer stops generating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// After this many records.
    Count(u64),
    /// After this long.
    Duration(Duration),
}

/// What the records' values are.
#[derive(Clone, Debug)]
pub enum Payload {
    /// The same bytes in every record.
    Fixed(Bytes),
    /// `STAMP_MAGIC`, `run_id` and the nanoseconds since `base` at enqueue,
    /// then filler up to `size` bytes, so a consumer in this process can
    /// measure end-to-end latency.
    Stamped {
        /// Identifies this run's records.
        run_id: u64,
        /// Time origin of the stamps.
        base: Instant,
        /// Value size (at least `STAMP_LEN`).
        size: usize,
        /// Filler.
        filler: Bytes,
    },
}

impl Payload {
    /// The value size of each record.
    pub fn size(&self) -> usize {
        match self {
            Payload::Fixed(b) => b.len(),
            Payload::Stamped { size, .. } => *size,
        }
    }

    fn value(&self) -> Bytes {
        match self {
            Payload::Fixed(b) => b.clone(),
            Payload::Stamped {
                run_id,
                base,
                size,
                filler,
            } => {
                let mut v = BytesMut::with_capacity(*size);
                v.put_slice(STAMP_MAGIC);
                v.put_u64(*run_id);
                v.put_u64(base.elapsed().as_nanos() as u64);
                v.put_slice(&filler[..size - STAMP_LEN]);
                v.freeze()
            }
        }
    }
}

/// The send time (nanoseconds since the run's base instant) stamped in a
/// record value of run `run_id`, if the value carries one.
pub fn read_stamp(value: &[u8], run_id: u64) -> Option<u64> {
    if value.len() < STAMP_LEN || &value[..4] != STAMP_MAGIC {
        return None;
    }
    let id = u64::from_be_bytes(value[4..12].try_into().ok()?);
    if id != run_id {
        return None;
    }
    Some(u64::from_be_bytes(value[12..20].try_into().ok()?))
}

/// `n` bytes of pseudo-random capital letters (like kafka-producer-perf-test's
/// payload: not all zeros, so compression has realistic work to do).
pub fn filler(n: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'A' + (x % 26) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Everything the producer needs.
#[derive(Clone, Debug)]
pub struct ProducerSettings {
    /// Bootstrap address.
    pub bootstrap: String,
    /// Topic (must exist).
    pub topic: String,
    /// Its partition count; records go round-robin over partitions.
    pub partitions: i32,
    /// Record values.
    pub payload: Payload,
    /// When to stop.
    pub stop: Stop,
    /// Target records per second; 0 = as fast as possible.
    pub rate: f64,
    /// Acknowledgement level.
    pub acks: Acks,
    /// Batch compression.
    pub compression: Compression,
    /// Largest batch per partition per request (approximate record bytes).
    pub batch_bytes: usize,
    /// How long a partial batch may wait for more records.
    pub linger: Duration,
    /// Concurrent requests (one connection each).
    pub in_flight: usize,
    /// Most record bytes queued but not yet sent; the generator waits beyond.
    pub buffer_bytes: usize,
    /// Print throughput on stderr this often (text mode).
    pub report_interval: Option<Duration>,
}

/// What a producer run measured.
#[derive(Debug)]
pub struct ProducerOutcome {
    /// Records acknowledged.
    pub acked: u64,
    /// Value bytes acknowledged.
    pub bytes: u64,
    /// Records whose request failed.
    pub errors: u64,
    /// The first error, if any.
    pub first_error: Option<String>,
    /// Per-record latency, enqueue to acknowledgement.
    pub latency: Latency,
    /// From the first enqueue to the last acknowledgement.
    pub elapsed: Duration,
    /// Produce requests sent.
    pub requests: u64,
    /// How far the throttled generator fell behind its schedule at worst
    /// (coordinated omission: records it could not enqueue on time).
    pub max_generator_lag: Duration,
}

struct Queued {
    record: ProduceRecord,
    enqueued: Instant,
    size: usize,
}

#[derive(Default)]
struct PartQueue {
    records: VecDeque<Queued>,
    bytes: usize,
}

struct State {
    parts: Vec<PartQueue>,
    queued_bytes: usize,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Records were added (or the generator finished).
    data: tokio::sync::Notify,
    /// Records were taken out (buffer space freed).
    space: tokio::sync::Notify,
    acked: AtomicU64,
    acked_bytes: AtomicU64,
}

/// One request's worth: `(partition, records, their enqueue times)`.
type Drained = Vec<(i32, Vec<ProduceRecord>, Vec<Instant>)>;

enum Take {
    Send(Drained),
    Wait(Option<Instant>),
    Done,
}

impl State {
    /// Take the next request's batches if any partition is ready.
    fn take(&mut self, now: Instant, batch_bytes: usize, linger: Duration) -> Take {
        if self.queued_bytes == 0 {
            return if self.closed { Take::Done } else { Take::Wait(None) };
        }
        let ready = |q: &PartQueue| {
            q.records
                .front()
                .is_some_and(|f| q.bytes >= batch_bytes || now >= f.enqueued + linger)
        };
        if !self.closed && !self.parts.iter().any(ready) {
            let next = self
                .parts
                .iter()
                .filter_map(|q| q.records.front().map(|f| f.enqueued + linger))
                .min();
            return Take::Wait(next);
        }
        let mut out = Vec::new();
        for (p, q) in self.parts.iter_mut().enumerate() {
            let mut records = Vec::new();
            let mut times = Vec::new();
            let mut taken = 0usize;
            while let Some(front) = q.records.front() {
                if !records.is_empty() && taken + front.size > batch_bytes {
                    break;
                }
                let r = q.records.pop_front().expect("front exists");
                taken += r.size;
                records.push(r.record);
                times.push(r.enqueued);
            }
            if !records.is_empty() {
                q.bytes -= taken;
                self.queued_bytes -= taken;
                out.push((p as i32, records, times));
            }
        }
        Take::Send(out)
    }
}

/// Run the producer to completion.
pub async fn run_producer(s: &ProducerSettings) -> Result<ProducerOutcome> {
    anyhow::ensure!(s.partitions > 0, "topic {:?} has no partitions", s.topic);
    let in_flight = s.in_flight.max(1);
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            parts: (0..s.partitions).map(|_| PartQueue::default()).collect(),
            queued_bytes: 0,
            closed: false,
        }),
        data: tokio::sync::Notify::new(),
        space: tokio::sync::Notify::new(),
        acked: AtomicU64::new(0),
        acked_bytes: AtomicU64::new(0),
    });
    // Connect every sender before the clock starts.
    let mut clients = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        let config = ClientConfig {
            client_id: "sluice-bench".to_string(),
            compression: s.compression,
            ..ClientConfig::default()
        };
        let mut c = Client::connect_with(&s.bootstrap, config)
            .await
            .with_context(|| format!("connecting to {}", s.bootstrap))?;
        c.cached_topic(&s.topic).await?;
        clients.push(c);
    }
    let start = Instant::now();
    let mut senders = Vec::with_capacity(in_flight);
    for client in clients {
        senders.push(tokio::spawn(sender(client, shared.clone(), s.clone())));
    }
    let progress = s.report_interval.map(|every| {
        let sh = shared.clone();
        let read = move || (sh.acked.load(Ordering::Relaxed), sh.acked_bytes.load(Ordering::Relaxed));
        tokio::spawn(crate::report::print_progress(read, every, start))
    });
    let max_generator_lag = generate(&shared, s, start).await;
    let mut out = ProducerOutcome {
        acked: 0,
        bytes: 0,
        errors: 0,
        first_error: None,
        latency: Latency::new(),
        elapsed: Duration::ZERO,
        requests: 0,
        max_generator_lag,
    };
    let mut last_ack = start;
    for h in senders {
        let st = h.await.context("sender task panicked")?;
        out.acked += st.acked;
        out.bytes += st.bytes;
        out.errors += st.errors;
        out.requests += st.requests;
        out.latency.merge(&st.latency);
        if out.first_error.is_none() {
            out.first_error = st.first_error;
        }
        last_ack = last_ack.max(st.last_ack);
    }
    if let Some(p) = progress {
        p.abort();
    }
    out.elapsed = last_ack.duration_since(start);
    Ok(out)
}

/// Enqueue records until the stop condition; returns the worst schedule lag.
async fn generate(shared: &Shared, s: &ProducerSettings, start: Instant) -> Duration {
    let deadline = match s.stop {
        Stop::Duration(d) => Some(start + d),
        Stop::Count(_) => None,
    };
    let limit = match s.stop {
        Stop::Count(n) => n,
        Stop::Duration(_) => u64::MAX,
    };
    let size = s.payload.size();
    let approx = ProduceRecord::new(Bytes::new()).approx_size() + size;
    let partitions = s.partitions as u64;
    let mut i: u64 = 0;
    let mut max_lag = Duration::ZERO;
    while i < limit {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        let n = if s.rate > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / s.rate);
            if due > now {
                let wake = match deadline {
                    Some(d) => due.min(d),
                    None => due,
                };
                tokio::time::sleep_until(wake.into()).await;
                continue;
            }
            max_lag = max_lag.max(now - due);
            let due_by_now = ((now - start).as_secs_f64() * s.rate).floor() as u64 + 1;
            due_by_now.saturating_sub(i).clamp(1, CHUNK)
        } else {
            CHUNK
        }
        .min(limit - i);
        let need = approx * n as usize;
        let values: Vec<Bytes> = (0..n).map(|_| s.payload.value()).collect();
        let mut values = Some(values);
        loop {
            let space = shared.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let mut st = shared.state.lock().expect("producer state lock");
                if st.queued_bytes == 0 || st.queued_bytes + need <= s.buffer_bytes {
                    let enqueued = Instant::now();
                    for (k, v) in values.take().expect("values not yet enqueued").into_iter().enumerate() {
                        let q = &mut st.parts[((i + k as u64) % partitions) as usize];
                        q.bytes += approx;
                        q.records.push_back(Queued {
                            record: ProduceRecord {
                                value: Some(v),
                                ..ProduceRecord::default()
                            },
                            enqueued,
                            size: approx,
                        });
                    }
                    st.queued_bytes += need;
                    break;
                }
            }
            space.await;
        }
        shared.data.notify_waiters();
        i += n;
    }
    shared.state.lock().expect("producer state lock").closed = true;
    shared.data.notify_waiters();
    max_lag
}

struct SenderStats {
    acked: u64,
    bytes: u64,
    errors: u64,
    requests: u64,
    first_error: Option<String>,
    latency: Latency,
    last_ack: Instant,
}

async fn sender(mut client: Client, shared: Arc<Shared>, s: ProducerSettings) -> SenderStats {
    let mut st = SenderStats {
        acked: 0,
        bytes: 0,
        errors: 0,
        requests: 0,
        first_error: None,
        latency: Latency::new(),
        last_ack: Instant::now(),
    };
    loop {
        let data = shared.data.notified();
        tokio::pin!(data);
        data.as_mut().enable();
        let take = shared
            .state
            .lock()
            .expect("producer state lock")
            .take(Instant::now(), s.batch_bytes, s.linger);
        let batches = match take {
            Take::Done => break,
            Take::Wait(None) => {
                data.await;
                continue;
            }
            Take::Wait(Some(t)) => {
                tokio::select! {
                    _ = &mut data => {}
                    _ = tokio::time::sleep_until(t.into()) => {}
                }
                continue;
            }
            Take::Send(b) => b,
        };
        shared.space.notify_waiters();
        let refs: Vec<(i32, &[ProduceRecord])> = batches.iter().map(|(p, r, _)| (*p, &r[..])).collect();
        let n: u64 = batches.iter().map(|(_, r, _)| r.len() as u64).sum();
        let res = client.produce_partitions(&s.topic, &refs, s.acks).await;
        let ack = Instant::now();
        st.requests += 1;
        match res {
            Ok(_) => {
                let bytes: u64 = batches
                    .iter()
                    .flat_map(|(_, r, _)| r.iter())
                    .map(|r| r.value.as_ref().map_or(0, |v| v.len() as u64))
                    .sum();
                for (_, _, times) in &batches {
                    for t in times {
                        st.latency.record(ack.duration_since(*t));
                    }
                }
                st.acked += n;
                st.bytes += bytes;
                st.last_ack = ack;
                shared.acked.fetch_add(n, Ordering::Relaxed);
                shared.acked_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(e) => {
                st.errors += n;
                if st.first_error.is_none() {
                    eprintln!("produce error: {e:#}");
                    st.first_error = Some(format!("{e:#}"));
                }
            }
        }
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(p: &mut State, part: usize, size: usize, at: Instant) {
        let q = &mut p.parts[part];
        q.bytes += size;
        q.records.push_back(Queued {
            record: ProduceRecord::new("x"),
            enqueued: at,
            size,
        });
        p.queued_bytes += size;
    }

    fn state(parts: usize) -> State {
        State {
            parts: (0..parts).map(|_| PartQueue::default()).collect(),
            queued_bytes: 0,
            closed: false,
        }
    }

    #[test]
    fn linger_and_batch_size() {
        let t0 = Instant::now();
        let linger = Duration::from_millis(5);
        let mut st = state(2);
        assert!(matches!(st.take(t0, 1000, linger), Take::Wait(None)));
        queued(&mut st, 0, 100, t0);
        // Not full, not lingered: wait until t0 + linger.
        match st.take(t0, 1000, linger) {
            Take::Wait(Some(t)) => assert_eq!(t, t0 + linger),
            _ => panic!("expected to wait"),
        }
        // Lingered: every partition with records is drained.
        queued(&mut st, 1, 100, t0 + Duration::from_millis(4));
        match st.take(t0 + linger, 1000, linger) {
            Take::Send(b) => {
                assert_eq!(b.len(), 2);
                assert_eq!(b[0].0, 0);
                assert_eq!(b[1].0, 1);
            }
            _ => panic!("expected a request"),
        }
        assert_eq!(st.queued_bytes, 0);
        // Full batch: sent at once, capped at batch_bytes per partition.
        for _ in 0..25 {
            queued(&mut st, 0, 100, t0);
        }
        match st.take(t0, 1000, linger) {
            Take::Send(b) => {
                assert_eq!(b.len(), 1);
                assert_eq!(b[0].1.len(), 10);
                assert_eq!(b[0].2.len(), 10);
            }
            _ => panic!("expected a request"),
        }
        assert_eq!(st.queued_bytes, 1500);
        // Closed: the rest is flushed regardless of linger, then done.
        st.closed = true;
        let mut sent = 0;
        while let Take::Send(b) = st.take(t0, 1000, linger) {
            sent += b[0].1.len();
        }
        assert_eq!(sent, 15);
        assert!(matches!(st.take(t0, 1000, linger), Take::Done));
    }

    #[test]
    fn oversized_record_still_sent() {
        let t0 = Instant::now();
        let mut st = state(1);
        queued(&mut st, 0, 5000, t0);
        queued(&mut st, 0, 5000, t0);
        match st.take(t0, 1000, Duration::ZERO) {
            Take::Send(b) => assert_eq!(b[0].1.len(), 1),
            _ => panic!("expected a request"),
        }
    }

    #[test]
    fn stamps_round_trip() {
        let base = Instant::now();
        let p = Payload::Stamped {
            run_id: 42,
            base,
            size: 64,
            filler: filler(64, 7),
        };
        let v = p.value();
        assert_eq!(v.len(), 64);
        assert!(read_stamp(&v, 42).is_some());
        assert!(read_stamp(&v, 43).is_none());
        assert!(read_stamp(b"short", 42).is_none());
        assert!(read_stamp(&filler(64, 1), 42).is_none());
        let f = filler(1000, 3);
        assert!(f.iter().all(|b| b.is_ascii_uppercase()));
        assert_eq!(Payload::Fixed(f).size(), 1000);
    }
}
