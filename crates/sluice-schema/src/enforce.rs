//! Broker-side enforcement: records produced to a topic with
//! `sluice.{key,value}.schema.validation=true` must carry the registry's wire
//! format (magic byte 0, 4-byte schema id) naming a schema registered for the
//! record's subject and, at level `full`, decode against that schema.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use prometheus::{register_int_counter_vec, IntCounterVec};

use crate::formats::protobuf::message_indexes;
use crate::formats::Parsed;
use crate::registry::Registry;

/// Topic config keys; the first of each pair is Sluice's, the second Confluent's alias.
pub const KEY_VALIDATION: [&str; 2] = ["sluice.key.schema.validation", "confluent.key.schema.validation"];
pub const VALUE_VALIDATION: [&str; 2] = ["sluice.value.schema.validation", "confluent.value.schema.validation"];
pub const KEY_STRATEGY: [&str; 2] = [
    "sluice.key.subject.name.strategy",
    "confluent.key.subject.name.strategy",
];
pub const VALUE_STRATEGY: [&str; 2] = [
    "sluice.value.subject.name.strategy",
    "confluent.value.subject.name.strategy",
];
pub const LEVEL: &str = "sluice.schema.validation.level";
pub const STRATEGIES: &[&str] = &["TopicNameStrategy", "RecordNameStrategy", "TopicRecordNameStrategy"];
pub const LEVELS: &[&str] = &["header", "full"];

/// How long a subject's set of schema ids is trusted before it is re-read.
const IDS_TTL: Duration = Duration::from_secs(2);
/// At most this many per-record errors are reported per batch.
const MAX_RECORD_ERRORS: usize = 100;

static REJECTED_BATCHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_schema_rejected_batches_total",
        "Produce batches rejected by schema validation",
        &["topic"]
    )
    .unwrap()
});
static REJECTED_RECORDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_schema_rejected_records_total",
        "Records that failed schema validation",
        &["topic"]
    )
    .unwrap()
});

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Topic,
    Record,
    TopicRecord,
}

impl Strategy {
    /// Accepts the short names and Confluent's class names (`io.confluent...TopicNameStrategy`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().rsplit('.').next()? {
            "TopicNameStrategy" => Some(Strategy::Topic),
            "RecordNameStrategy" => Some(Strategy::Record),
            "TopicRecordNameStrategy" => Some(Strategy::TopicRecord),
            _ => None,
        }
    }
}

/// What a topic's configs ask to be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub key: Option<Strategy>,
    pub value: Option<Strategy>,
    pub full: bool,
}

fn first<'a>(configs: &'a BTreeMap<String, String>, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| configs.get(*k)).map(String::as_str)
}

impl Policy {
    /// `None` when the topic validates neither keys nor values.
    pub fn from_configs(configs: &BTreeMap<String, String>) -> Option<Self> {
        let on = |keys: &[&str]| first(configs, keys).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let strategy = |keys: &[&str]| {
            first(configs, keys)
                .and_then(Strategy::parse)
                .unwrap_or(Strategy::Topic)
        };
        let key = on(&KEY_VALIDATION).then(|| strategy(&KEY_STRATEGY));
        let value = on(&VALUE_VALIDATION).then(|| strategy(&VALUE_STRATEGY));
        if key.is_none() && value.is_none() {
            return None;
        }
        let full = !configs.get(LEVEL).is_some_and(|l| l.eq_ignore_ascii_case("header"));
        Some(Policy { key, value, full })
    }
}

/// Why a produce was refused: a summary and the failing records (index in the request, reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub message: String,
    pub record_errors: Vec<(i32, String)>,
}

/// A subject's live schema ids, when they were read, and the registry's change count then.
type SubjectIds = HashMap<String, (Instant, u64, Arc<HashSet<i64>>)>;

#[derive(Clone)]
pub struct Enforcer {
    registry: Registry,
    subject_ids: Arc<Mutex<SubjectIds>>,
}

impl Enforcer {
    pub fn new(registry: Registry) -> Self {
        LazyLock::force(&REJECTED_BATCHES);
        LazyLock::force(&REJECTED_RECORDS);
        Self {
            registry,
            subject_ids: Arc::default(),
        }
    }

    /// Checks every record of `data` (one or more v2 batches); nothing is
    /// stored unless all pass.
    pub async fn check(&self, topic: &str, policy: &Policy, data: &Bytes) -> Result<(), Rejection> {
        let mut buf = data.clone();
        let sets = RecordBatchDecoder::decode_all(&mut buf).map_err(|e| Rejection {
            message: format!("schema validation could not decode the record batch: {e}"),
            record_errors: vec![],
        })?;
        let mut errors = Vec::new();
        let mut failed = 0usize;
        let records = sets.iter().flat_map(|s| s.records.iter());
        for (i, r) in records.enumerate() {
            let mut problem = None;
            for (side, strategy, payload) in [("key", policy.key, &r.key), ("value", policy.value, &r.value)] {
                let (Some(strategy), Some(payload)) = (strategy, payload) else {
                    continue;
                };
                if let Err(e) = self.check_payload(topic, side, strategy, policy.full, payload).await {
                    problem = Some(format!("{side}: {e}"));
                    break;
                }
            }
            if let Some(p) = problem {
                failed += 1;
                if errors.len() < MAX_RECORD_ERRORS {
                    errors.push((i as i32, p));
                }
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        REJECTED_BATCHES.with_label_values(&[topic]).inc();
        REJECTED_RECORDS.with_label_values(&[topic]).inc_by(failed as u64);
        let (first_index, first_error) = &errors[0];
        Err(Rejection {
            message: format!(
                "{failed} record(s) failed schema validation for topic {topic}; record {first_index}: {first_error}"
            ),
            record_errors: errors,
        })
    }

    async fn check_payload(
        &self,
        topic: &str,
        side: &str,
        strategy: Strategy,
        full: bool,
        payload: &[u8],
    ) -> Result<(), String> {
        if payload.len() < 5 || payload[0] != 0 {
            return Err("not in the schema registry wire format (magic byte 0, then a 4-byte schema id)".into());
        }
        let id = i64::from(u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]));
        let body = &payload[5..];
        let parsed = match strategy {
            Strategy::Topic if !full => None,
            _ => Some(
                self.registry
                    .parsed(id)
                    .await
                    .map_err(|_| format!("schema id {id} is not registered"))?,
            ),
        };
        let subject = match strategy {
            Strategy::Topic => format!("{topic}-{side}"),
            Strategy::Record | Strategy::TopicRecord => {
                let p = parsed.as_deref().expect("parsed for record strategies");
                let name = record_name(p, body).ok_or_else(|| format!("schema id {id} names no record type"))?;
                if strategy == Strategy::Record {
                    name
                } else {
                    format!("{topic}-{name}")
                }
            }
        };
        if !self.registered(&subject, id).await {
            return Err(format!("schema id {id} is not registered under subject {subject}"));
        }
        if let Some(p) = parsed.filter(|_| full) {
            p.validate(body)
                .map_err(|e| format!("does not match schema id {id}: {e}"))?;
        }
        Ok(())
    }

    /// Whether `id` is a live version of `subject`, re-reading the store when
    /// the cached set is stale or lacks the id (it may have just been registered).
    async fn registered(&self, subject: &str, id: i64) -> bool {
        let cached = self.subject_ids.lock().unwrap().get(subject).cloned();
        let changes = self.registry.change_count();
        if let Some((at, seen_changes, ids)) = &cached {
            if ids.contains(&id) && at.elapsed() < IDS_TTL {
                return true;
            }
            // A miss re-reads the store, but junk ids must not hammer it: at most every
            // 100 ms, unless this broker changed the registry since.
            if at.elapsed() < Duration::from_millis(100) && *seen_changes == changes {
                return ids.contains(&id);
            }
        }
        let Ok(rows) = self.registry.store.versions(subject, false).await else {
            return false;
        };
        let ids: Arc<HashSet<i64>> = Arc::new(rows.iter().map(|v| v.schema_id).collect());
        let ok = ids.contains(&id);
        self.subject_ids
            .lock()
            .unwrap()
            .insert(subject.to_string(), (Instant::now(), changes, ids));
        ok
    }
}

fn record_name(p: &Parsed, body: &[u8]) -> Option<String> {
    match p {
        Parsed::Protobuf(_) => {
            let (path, _) = message_indexes(body).ok()?;
            p.record_name(&path)
        }
        _ => p.record_name(&[]),
    }
}
