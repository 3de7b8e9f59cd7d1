//! Topic configuration: the keys Sluice understands, their defaults, and
//! validation. Unknown keys are refused, as Kafka refuses them.

use std::collections::BTreeMap;

use kafka_protocol::records::Compression;

use crate::LogError;

/// Broker-wide defaults a topic inherits unless it overrides them.
#[derive(Debug, Clone)]
pub struct TopicDefaults {
    pub partitions: i32,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: i64,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        Self {
            partitions: 1,
            retention_ms: 604_800_000,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    /// A long with a minimum value.
    Long(i64),
    /// One of a fixed set of strings.
    OneOf(&'static [&'static str]),
    /// Accepted for client compatibility; has no effect on object storage.
    Inert,
    /// A schema-registry subject name strategy: short name or Confluent class name.
    SubjectStrategy,
    /// `cleanup.policy`: `delete`, `compact`, or both, comma-separated.
    Policy,
    /// A fraction from 0 to 1.
    Ratio,
    /// An integer from the first to the second bound.
    Range(i64, i64),
    /// A comma-separated list, accepted for client compatibility with no effect
    /// (replication throttles: there are no follower replicas to throttle).
    InertList,
}

const STRATEGIES: &[&str] = &["TopicNameStrategy", "RecordNameStrategy", "TopicRecordNameStrategy"];

/// Every topic config a client may set, with the Kafka default where the
/// broker does not supply one.
const KEYS: &[(&str, Kind, &str)] = &[
    ("cleanup.policy", Kind::Policy, "delete"),
    ("max.message.bytes", Kind::Long(0), ""),
    (
        "message.timestamp.type",
        Kind::OneOf(&["CreateTime", "LogAppendTime"]),
        "CreateTime",
    ),
    ("retention.bytes", Kind::Long(-1), ""),
    ("retention.ms", Kind::Long(-1), ""),
    (
        "compression.type",
        Kind::OneOf(&["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"]),
        "producer",
    ),
    // Accepted and validated; batches are recompressed at the codec's default level.
    ("compression.gzip.level", Kind::Range(-1, 9), "-1"),
    ("compression.lz4.level", Kind::Range(1, 17), "9"),
    ("compression.zstd.level", Kind::Range(-131_072, 22), "3"),
    ("delete.retention.ms", Kind::Long(0), "86400000"),
    ("file.delete.delay.ms", Kind::Inert, "60000"),
    ("flush.messages", Kind::Inert, "9223372036854775807"),
    ("flush.ms", Kind::Inert, "9223372036854775807"),
    ("follower.replication.throttled.replicas", Kind::InertList, ""),
    ("index.interval.bytes", Kind::Inert, "4096"),
    ("leader.replication.throttled.replicas", Kind::InertList, ""),
    ("local.retention.bytes", Kind::Long(-2), "-2"),
    ("local.retention.ms", Kind::Long(-2), "-2"),
    ("max.compaction.lag.ms", Kind::Long(1), "9223372036854775807"),
    // Removed in Kafka 4.0 (KIP-724) but still sent by older tools: no down-conversion here.
    ("message.downconversion.enable", Kind::Inert, "true"),
    ("message.format.version", Kind::Inert, "3.0-IV1"),
    ("message.timestamp.after.max.ms", Kind::Long(0), "9223372036854775807"),
    ("message.timestamp.before.max.ms", Kind::Long(0), "9223372036854775807"),
    (
        "message.timestamp.difference.max.ms",
        Kind::Inert,
        "9223372036854775807",
    ),
    ("min.cleanable.dirty.ratio", Kind::Ratio, "0.5"),
    ("min.compaction.lag.ms", Kind::Long(0), "0"),
    ("min.insync.replicas", Kind::Inert, "1"),
    ("preallocate", Kind::Inert, "false"),
    ("remote.log.copy.disable", Kind::Inert, "false"),
    ("remote.log.delete.on.disable", Kind::Inert, "false"),
    ("remote.storage.enable", Kind::OneOf(&["true", "false"]), "false"),
    ("segment.bytes", Kind::Long(14), "1073741824"),
    ("segment.index.bytes", Kind::Inert, "10485760"),
    ("segment.jitter.ms", Kind::Inert, "0"),
    ("segment.ms", Kind::Long(1), "604800000"),
    ("unclean.leader.election.enable", Kind::Inert, "false"),
    // Schema validation of produced records (sluice-schema), with Confluent's names as aliases.
    ("sluice.key.schema.validation", Kind::OneOf(&["true", "false"]), "false"),
    (
        "sluice.value.schema.validation",
        Kind::OneOf(&["true", "false"]),
        "false",
    ),
    (
        "confluent.key.schema.validation",
        Kind::OneOf(&["true", "false"]),
        "false",
    ),
    (
        "confluent.value.schema.validation",
        Kind::OneOf(&["true", "false"]),
        "false",
    ),
    (
        "sluice.key.subject.name.strategy",
        Kind::SubjectStrategy,
        "TopicNameStrategy",
    ),
    (
        "sluice.value.subject.name.strategy",
        Kind::SubjectStrategy,
        "TopicNameStrategy",
    ),
    (
        "confluent.key.subject.name.strategy",
        Kind::SubjectStrategy,
        "TopicNameStrategy",
    ),
    (
        "confluent.value.subject.name.strategy",
        Kind::SubjectStrategy,
        "TopicNameStrategy",
    ),
    (
        "sluice.schema.validation.level",
        Kind::OneOf(&["header", "full"]),
        "full",
    ),
];

/// The parsed settings the log acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: i64,
    /// `message.timestamp.type=LogAppendTime`: the broker stamps each batch with the time
    /// it is appended.
    pub log_append_time: bool,
    /// How far a record's timestamp may lie before the broker's clock
    /// (`message.timestamp.before.max.ms`, KIP-937).
    pub timestamp_before_max_ms: i64,
    /// ... and after it (`message.timestamp.after.max.ms`).
    pub timestamp_after_max_ms: i64,
    /// `compression.type`: the codec batches are stored with; `None` (`producer`) keeps
    /// each batch as sent.
    pub compression: Option<Compression>,
    /// `cleanup.policy` holds `compact`: the cleaner keeps the newest record per key.
    pub compact: bool,
    /// `cleanup.policy` holds `delete`: retention by time and size applies.
    pub delete: bool,
    /// The settings of the cleaner (`cleaner.rs`), with Kafka's meanings.
    pub compaction: CompactionConfig,
    /// `remote.storage.enable`: batches past local retention move to the tier store.
    pub remote_storage: bool,
    /// `local.retention.ms` and `local.retention.bytes`, with -2 (the default) resolved to
    /// `retention.ms` and `retention.bytes`: how much stays in the main store.
    pub local_retention_ms: i64,
    pub local_retention_bytes: i64,
}

/// When a compacted partition is cleaned, and what its tombstones live for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionConfig {
    /// `min.cleanable.dirty.ratio`, in millionths: the dirty share of the log's bytes
    /// that makes it worth cleaning.
    pub min_dirty_ratio_ppm: u32,
    pub min_lag_ms: i64,
    pub max_lag_ms: i64,
    pub delete_retention_ms: i64,
    /// The part of the log written last stays dirty (Kafka's active segment) until it
    /// holds `segment.bytes` or its first batch is `segment.ms` old.
    pub segment_ms: i64,
    pub segment_bytes: i64,
}

/// One config as DescribeConfigs reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: &'static str,
    pub value: String,
    pub is_default: bool,
}

impl TopicDefaults {
    fn default_value(&self, key: &str, fallback: &str) -> String {
        match key {
            "retention.ms" => self.retention_ms.to_string(),
            "retention.bytes" => self.retention_bytes.to_string(),
            "max.message.bytes" => self.max_message_bytes.to_string(),
            _ => fallback.to_string(),
        }
    }

    pub fn resolve(&self, overrides: &BTreeMap<String, String>) -> TopicConfig {
        let long = |k: &str, d: i64| overrides.get(k).and_then(|v| v.trim().parse().ok()).unwrap_or(d);
        let policy = overrides.get("cleanup.policy").map_or("delete", String::as_str);
        let retention_ms = long("retention.ms", self.retention_ms);
        let retention_bytes = long("retention.bytes", self.retention_bytes);
        let local = |k: &str, total: i64| match long(k, -2) {
            -2 => total,
            v => v,
        };
        TopicConfig {
            retention_ms,
            retention_bytes,
            remote_storage: overrides.get("remote.storage.enable").map(String::as_str) == Some("true"),
            local_retention_ms: local("local.retention.ms", retention_ms),
            local_retention_bytes: local("local.retention.bytes", retention_bytes),
            max_message_bytes: long("max.message.bytes", self.max_message_bytes),
            log_append_time: overrides.get("message.timestamp.type").map(String::as_str) == Some("LogAppendTime"),
            timestamp_before_max_ms: long("message.timestamp.before.max.ms", i64::MAX),
            timestamp_after_max_ms: long("message.timestamp.after.max.ms", i64::MAX),
            compression: match overrides.get("compression.type").map(String::as_str) {
                Some("uncompressed") => Some(Compression::None),
                Some("gzip") => Some(Compression::Gzip),
                Some("snappy") => Some(Compression::Snappy),
                Some("lz4") => Some(Compression::Lz4),
                Some("zstd") => Some(Compression::Zstd),
                _ => None,
            },
            compact: policy.split(',').any(|p| p.trim() == "compact"),
            delete: policy.split(',').any(|p| p.trim() == "delete"),
            compaction: CompactionConfig {
                min_dirty_ratio_ppm: overrides
                    .get("min.cleanable.dirty.ratio")
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .map_or(500_000, |r| (r.clamp(0.0, 1.0) * 1e6) as u32),
                min_lag_ms: long("min.compaction.lag.ms", 0),
                max_lag_ms: long("max.compaction.lag.ms", i64::MAX),
                delete_retention_ms: long("delete.retention.ms", 86_400_000),
                segment_ms: long("segment.ms", 604_800_000),
                segment_bytes: long("segment.bytes", 1 << 30),
            },
        }
    }

    /// All configs of a topic, overrides marked as such.
    pub fn describe(&self, overrides: &BTreeMap<String, String>) -> Vec<ConfigEntry> {
        KEYS.iter()
            .map(|(name, _, fallback)| match overrides.get(*name) {
                Some(v) => ConfigEntry {
                    name,
                    value: v.clone(),
                    is_default: false,
                },
                None => ConfigEntry {
                    name,
                    value: self.default_value(name, fallback),
                    is_default: true,
                },
            })
            .collect()
    }
}

/// Checks one key and value; the error message names what is wrong.
pub fn validate(key: &str, value: &str) -> Result<(), LogError> {
    let Some((_, kind, _)) = KEYS.iter().find(|(k, _, _)| *k == key) else {
        return Err(LogError::InvalidConfig(format!("Unknown topic config name: {key}")));
    };
    match kind {
        Kind::Long(min) => match value.trim().parse::<i64>() {
            Ok(v) if v >= *min => Ok(()),
            _ => Err(LogError::InvalidConfig(format!(
                "Invalid value {value} for configuration {key}: must be an integer >= {min}"
            ))),
        },
        Kind::OneOf(allowed) if allowed.contains(&value) => Ok(()),
        Kind::OneOf(allowed) => Err(LogError::InvalidConfig(format!(
            "Invalid value {value} for configuration {key}: supported values are {allowed:?}"
        ))),
        Kind::Inert | Kind::InertList => Ok(()),
        Kind::Range(min, max) => match value.trim().parse::<i64>() {
            Ok(v) if (*min..=*max).contains(&v) => Ok(()),
            _ => Err(LogError::InvalidConfig(format!(
                "Invalid value {value} for configuration {key}: must be an integer from {min} to {max}"
            ))),
        },
        Kind::Policy => {
            let parts: Vec<&str> = value.split(',').map(str::trim).collect();
            if !parts.is_empty() && parts.iter().all(|p| matches!(*p, "compact" | "delete")) {
                Ok(())
            } else {
                Err(LogError::InvalidConfig(format!(
                    "Invalid value {value} for configuration {key}: supported values are [compact, delete], comma-separated"
                )))
            }
        }
        Kind::Ratio => match value.trim().parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => Ok(()),
            _ => Err(LogError::InvalidConfig(format!(
                "Invalid value {value} for configuration {key}: must be a number from 0 to 1"
            ))),
        },
        Kind::SubjectStrategy if STRATEGIES.contains(&value.rsplit('.').next().unwrap_or(value)) => Ok(()),
        Kind::SubjectStrategy => Err(LogError::InvalidConfig(format!(
            "Invalid value {value} for configuration {key}: supported values are {STRATEGIES:?} (or io.confluent.kafka.serializers.subject.<name>)"
        ))),
    }
}

/// For a list config (`cleanup.policy`, the replication throttles), the value that
/// IncrementalAlterConfigs APPEND and SUBTRACT start from when the topic does not set it.
pub fn list_default(key: &str) -> Option<&'static str> {
    KEYS.iter()
        .find(|(k, kind, _)| *k == key && matches!(kind, Kind::Policy | Kind::InertList))
        .map(|(_, _, default)| *default)
}

pub fn validate_all(configs: &BTreeMap<String, String>) -> Result<(), LogError> {
    configs.iter().try_for_each(|(k, v)| validate(k, v))
}

/// Checks what no single config says wrong: the tiering configs against each other, the
/// retention configs and whether this broker has a tier store (Kafka's checks and messages).
pub fn check_combination(config: &TopicConfig, tier_store: bool) -> Result<(), LogError> {
    let invalid = |m: String| Err(LogError::InvalidConfig(m));
    if config.remote_storage && !tier_store {
        return invalid(
            "Tiered Storage functionality is disabled in the broker (no --tier-store). \
             Topic cannot be configured with remote log storage."
                .into(),
        );
    }
    if config.remote_storage && config.compact {
        return invalid("Remote log storage is unsupported for compacted topics (cleanup.policy=compact)".into());
    }
    let within = |local: i64, total: i64| total < 0 || (0..=total).contains(&local);
    if !within(config.local_retention_ms, config.retention_ms) {
        return invalid(format!(
            "Invalid value {} for configuration local.retention.ms: Value must not be more than retention.ms property value: {}",
            config.local_retention_ms, config.retention_ms
        ));
    }
    if !within(config.local_retention_bytes, config.retention_bytes) {
        return invalid(format!(
            "Invalid value {} for configuration local.retention.bytes: Value must not be more than retention.bytes property value: {}",
            config.local_retention_bytes, config.retention_bytes
        ));
    }
    Ok(())
}

/// Kafka's legal topic names: 1-249 of [a-zA-Z0-9._-], not "." or "..".
pub fn validate_topic_name(name: &str) -> Result<(), LogError> {
    let ok_chars = name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if name.is_empty() || name.len() > 249 || !ok_chars || name == "." || name == ".." {
        return Err(LogError::InvalidTopic(format!(
            "Topic name {name:?} is illegal: it must be 1-249 characters of [a-zA-Z0-9._-] and not '.' or '..'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_keys_and_values() {
        assert!(validate("retention.ms", "1000").is_ok());
        assert!(validate("retention.ms", "-1").is_ok());
        assert!(validate("retention.ms", "-2").is_err());
        assert!(validate("retention.ms", "soon").is_err());
        assert!(validate("segment.bytes", "14").is_ok());
        assert!(validate("segment.bytes", "1").is_err());
        assert!(matches!(validate("no.such.key", "1"), Err(LogError::InvalidConfig(_))));
        for policy in ["compact", "delete", "compact,delete", "delete, compact"] {
            assert!(validate("cleanup.policy", policy).is_ok(), "{policy}");
        }
        for policy in ["", "compacted", "compact,,delete"] {
            assert!(validate("cleanup.policy", policy).is_err(), "{policy}");
        }
        assert!(validate("min.cleanable.dirty.ratio", "0.01").is_ok());
        assert!(validate("min.cleanable.dirty.ratio", "1.5").is_err());
        assert!(validate("segment.ms", "0").is_err());
        assert!(validate("confluent.value.schema.validation", "true").is_ok());
        assert!(validate("sluice.key.schema.validation", "maybe").is_err());
        assert!(validate(
            "confluent.value.subject.name.strategy",
            "io.confluent.kafka.serializers.subject.RecordNameStrategy"
        )
        .is_ok());
        assert!(validate("sluice.value.subject.name.strategy", "NoSuchStrategy").is_err());
        assert!(validate("sluice.schema.validation.level", "header").is_ok());
        // Legacy and no-op configs Kafka still accepts are accepted, never refused.
        for (key, value) in [
            ("message.format.version", "2.8"),
            ("message.downconversion.enable", "false"),
            ("unclean.leader.election.enable", "true"),
            ("follower.replication.throttled.replicas", "0:1,1:2"),
            ("compression.zstd.level", "-5"),
        ] {
            assert!(validate(key, value).is_ok(), "{key}={value}");
        }
        assert!(validate("compression.gzip.level", "10").is_err());
        assert_eq!(list_default("cleanup.policy"), Some("delete"));
        assert_eq!(list_default("leader.replication.throttled.replicas"), Some(""));
        assert_eq!(list_default("retention.ms"), None);
    }

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("orders.v1_x-y").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn describe_marks_overrides() {
        let d = TopicDefaults::default();
        let o = BTreeMap::from([("retention.ms".to_string(), "5".to_string())]);
        let all = d.describe(&o);
        let r = all.iter().find(|e| e.name == "retention.ms").unwrap();
        assert_eq!((r.value.as_str(), r.is_default), ("5", false));
        let m = all.iter().find(|e| e.name == "max.message.bytes").unwrap();
        assert_eq!((m.value.as_str(), m.is_default), ("1048588", true));
        assert_eq!(d.resolve(&o).retention_ms, 5);
        assert!(!d.resolve(&o).log_append_time);
        assert_eq!(d.resolve(&o).timestamp_after_max_ms, i64::MAX);
        assert!(d.resolve(&o).delete && !d.resolve(&o).compact);
        let both = BTreeMap::from([
            ("cleanup.policy".to_string(), "compact,delete".to_string()),
            ("min.cleanable.dirty.ratio".to_string(), "0.25".to_string()),
        ]);
        let c = d.resolve(&both);
        assert!(c.compact && c.delete);
        assert_eq!(c.compaction.min_dirty_ratio_ppm, 250_000);
        assert_eq!(c.compaction.delete_retention_ms, 86_400_000);
    }

    #[test]
    fn tiering_configs_resolve_and_combine() {
        let d = TopicDefaults::default();
        let plain = d.resolve(&BTreeMap::new());
        assert!(!plain.remote_storage);
        assert_eq!(
            (plain.local_retention_ms, plain.local_retention_bytes),
            (plain.retention_ms, plain.retention_bytes)
        );
        assert!(check_combination(&plain, false).is_ok());
        let tiered =
            |pairs: &[(&str, &str)]| d.resolve(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        let t = tiered(&[("remote.storage.enable", "true"), ("local.retention.ms", "1000")]);
        assert!(t.remote_storage);
        assert_eq!(t.local_retention_ms, 1000);
        assert!(check_combination(&t, true).is_ok());
        let no_tier = check_combination(&t, false).unwrap_err().to_string();
        assert!(no_tier.contains("Tiered Storage"), "{no_tier}");
        let compact = tiered(&[("remote.storage.enable", "true"), ("cleanup.policy", "compact")]);
        assert!(check_combination(&compact, true).is_err());
        let longer = tiered(&[("retention.ms", "1000"), ("local.retention.ms", "5000")]);
        assert!(check_combination(&longer, true)
            .unwrap_err()
            .to_string()
            .contains("local.retention.ms"));
        let bytes = tiered(&[("retention.bytes", "100"), ("local.retention.bytes", "-1")]);
        assert!(check_combination(&bytes, true).is_err());
        assert!(validate("local.retention.ms", "-3").is_err());
        assert!(validate("remote.storage.enable", "yes").is_err());
    }

    #[test]
    fn timestamp_configs() {
        assert!(validate("message.timestamp.type", "LogAppendTime").is_ok());
        assert!(validate("message.timestamp.type", "AppendTime").is_err());
        assert!(validate("message.timestamp.before.max.ms", "-1").is_err());
        let o = BTreeMap::from([
            ("message.timestamp.type".to_string(), "LogAppendTime".to_string()),
            ("message.timestamp.before.max.ms".to_string(), "60000".to_string()),
        ]);
        let c = TopicDefaults::default().resolve(&o);
        assert!(c.log_append_time);
        assert_eq!(
            (c.timestamp_before_max_ms, c.timestamp_after_max_ms),
            (60_000, i64::MAX)
        );
    }
}
