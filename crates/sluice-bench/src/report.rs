//! Latency histograms, throughput arithmetic and the printed report (text or
//! one JSON object).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// Largest latency recorded exactly (longer ones are clamped): one hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A latency distribution in microseconds, with 3 significant digits.
///
/// Every record (or every record of an acknowledged batch) is one sample, so
/// percentiles are over records, not averages of batches.
#[derive(Clone, Debug)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty distribution.
    pub fn new() -> Self {
        Self {
            hist: Histogram::new_with_max(MAX_LATENCY_US, 3).expect("valid histogram bounds"),
        }
    }

    /// Add one sample.
    pub fn record(&mut self, d: Duration) {
        self.record_n(d, 1);
    }

    /// Add `n` samples of the same value (e.g. every record of one batch).
    pub fn record_n(&mut self, d: Duration, n: u64) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).min(MAX_LATENCY_US);
        self.hist.saturating_record_n(us, n);
    }

    /// Add all samples of `other`.
    pub fn merge(&mut self, other: &Latency) {
        self.hist.add(&other.hist).expect("histograms with the same bounds");
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Percentiles in milliseconds; `None` without samples.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.hist.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(LatencySummary {
            count: self.hist.len(),
            min_ms: ms(self.hist.min()),
            mean_ms: self.hist.mean() / 1000.0,
            p50_ms: ms(self.hist.value_at_quantile(0.50)),
            p99_ms: ms(self.hist.value_at_quantile(0.99)),
            p999_ms: ms(self.hist.value_at_quantile(0.999)),
            max_ms: ms(self.hist.max()),
        })
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Smallest sample.
    pub min_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl LatencySummary {
    /// As a JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "count": self.count,
            "min": round3(self.min_ms),
            "mean": round3(self.mean_ms),
            "p50": round3(self.p50_ms),
            "p99": round3(self.p99_ms),
            "p999": round3(self.p999_ms),
            "max": round3(self.max_ms),
        })
    }

    /// One line: `p50 1.234  p99 ...  (N samples)`.
    pub fn to_text(&self) -> String {
        format!(
            "p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3} ms  ({} samples)",
            self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms, self.mean_ms, self.count
        )
    }
}

/// Records and bytes moved in some time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throughput {
    /// Records.
    pub records: u64,
    /// Payload bytes (keys and values).
    pub bytes: u64,
    /// Wall-clock time they took.
    pub elapsed: Duration,
}

impl Throughput {
    /// Records per second (0 when no time passed).
    pub fn records_per_sec(&self) -> f64 {
        per_sec(self.records as f64, self.elapsed)
    }

    /// Megabytes (10^6 bytes, as `dd` counts them) per second.
    pub fn mb_per_sec(&self) -> f64 {
        per_sec(self.bytes as f64 / 1e6, self.elapsed)
    }
}

fn per_sec(amount: f64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 {
        amount / s
    } else {
        0.0
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// What one bench run prints.
#[derive(Clone, Debug)]
pub struct Report {
    /// `produce`, `consume` or `e2e`.
    pub mode: &'static str,
    /// Topic driven.
    pub topic: String,
    /// Throughput of the main direction (produced records for produce and
    /// e2e, consumed records for consume).
    pub throughput: Throughput,
    /// Produce latency (enqueue to acknowledgement), per record.
    pub produce_latency: Option<LatencySummary>,
    /// End-to-end latency (enqueue to consumed), per record.
    pub e2e_latency: Option<LatencySummary>,
    /// Records that failed.
    pub errors: u64,
    /// The settings the run used.
    pub settings: Map<String, Value>,
    /// Further figures, in order (e.g. consumed and missing records in e2e).
    pub extra: Vec<(String, Value)>,
}

impl Report {
    /// A report with no latencies, errors or extra figures.
    pub fn new(mode: &'static str, topic: &str, throughput: Throughput) -> Self {
        Self {
            mode,
            topic: topic.to_string(),
            throughput,
            produce_latency: None,
            e2e_latency: None,
            errors: 0,
            settings: Map::new(),
            extra: Vec::new(),
        }
    }

    /// The JSON object `--json` prints.
    pub fn to_json(&self) -> Value {
        let t = &self.throughput;
        let mut o = Map::new();
        o.insert("mode".into(), json!(self.mode));
        o.insert("topic".into(), json!(self.topic));
        o.insert("records".into(), json!(t.records));
        o.insert("bytes".into(), json!(t.bytes));
        o.insert("elapsed_s".into(), json!(round3(t.elapsed.as_secs_f64())));
        o.insert("records_per_sec".into(), json!(round3(t.records_per_sec())));
        o.insert("mb_per_sec".into(), json!(round3(t.mb_per_sec())));
        if let Some(l) = &self.produce_latency {
            o.insert("latency_ms".into(), l.to_json());
        }
        if let Some(l) = &self.e2e_latency {
            o.insert("e2e_latency_ms".into(), l.to_json());
        }
        o.insert("errors".into(), json!(self.errors));
        for (k, v) in &self.extra {
            o.insert(k.clone(), v.clone());
        }
        o.insert("settings".into(), Value::Object(self.settings.clone()));
        Value::Object(o)
    }

    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let t = &self.throughput;
        let (verb, prep) = match self.mode {
            "consume" => ("consumed", "from"),
            _ => ("produced", "to"),
        };
        let mut s = format!(
            "{}: {verb} {} records ({:.1} MB) {prep} {:?} in {:.2} s: {:.1} records/s, {:.2} MB/s\n",
            self.mode,
            t.records,
            t.bytes as f64 / 1e6,
            self.topic,
            t.elapsed.as_secs_f64(),
            t.records_per_sec(),
            t.mb_per_sec()
        );
        if let Some(l) = &self.produce_latency {
            s.push_str(&format!("produce latency: {}\n", l.to_text()));
        }
        if let Some(l) = &self.e2e_latency {
            s.push_str(&format!("end-to-end latency: {}\n", l.to_text()));
        }
        for (k, v) in &self.extra {
            s.push_str(&format!("{k}: {v}\n"));
        }
        if self.errors > 0 {
            s.push_str(&format!("errors: {} records failed\n", self.errors));
        }
        let settings: Vec<String> = self.settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        s.push_str(&format!("settings: {}\n", settings.join(" ")));
        s
    }
}

/// Prints interim throughput to stderr every `every` from `start`, reading
/// the cumulative (records, bytes) counters with `read`. Runs until aborted.
pub async fn print_progress(read: impl Fn() -> (u64, u64), every: Duration, start: std::time::Instant) {
    let mut tick = tokio::time::interval_at((start + every).into(), every);
    let (mut records, mut bytes, mut at) = (0u64, 0u64, start);
    loop {
        tick.tick().await;
        let now = std::time::Instant::now();
        let (r, b) = read();
        let dt = now.duration_since(at).as_secs_f64().max(1e-9);
        eprintln!(
            "{:7.1} s: {:.1} records/s, {:.2} MB/s",
            now.duration_since(start).as_secs_f64(),
            (r - records) as f64 / dt,
            (b - bytes) as f64 / 1e6 / dt
        );
        (records, bytes, at) = (r, b, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn percentiles_over_records() {
        let mut l = Latency::new();
        // 990 fast records, 9 slow, 1 very slow.
        l.record_n(ms(1), 990);
        l.record_n(ms(10), 9);
        l.record(ms(100));
        let s = l.summary().unwrap();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 1.0).abs() < 0.01, "{s:?}");
        assert!((s.p99_ms - 1.0).abs() < 0.01, "{s:?}");
        assert!((s.p999_ms - 10.0).abs() < 0.02, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
        assert!((s.min_ms - 1.0).abs() < 0.01, "{s:?}");
        let mean = (990.0 + 90.0 + 100.0) / 1000.0;
        assert!((s.mean_ms - mean).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn batch_attribution_is_not_an_average() {
        // One batch of 100 records acknowledged together, but enqueued over
        // 10 ms: each record keeps its own latency.
        let mut l = Latency::new();
        for i in 0..100u64 {
            l.record(Duration::from_micros(10_000 - i * 100));
        }
        let s = l.summary().unwrap();
        assert!((s.max_ms - 10.0).abs() < 0.02, "{s:?}");
        assert!((s.min_ms - 0.1).abs() < 0.001, "{s:?}");
        assert!(s.p99_ms > 9.8 && s.p99_ms < 10.0, "{s:?}");
    }

    #[test]
    fn merge_and_clamp() {
        let mut a = Latency::new();
        a.record(ms(2));
        let mut b = Latency::new();
        b.record(ms(4));
        b.record(Duration::from_secs(10 * 3600)); // clamped to one hour
        a.merge(&b);
        assert_eq!(a.count(), 3);
        let s = a.summary().unwrap();
        assert!((s.max_ms - 3_600_000.0).abs() / 3_600_000.0 < 0.001, "{s:?}");
        assert!(Latency::new().summary().is_none());
    }

    #[test]
    fn throughput_math() {
        let t = Throughput {
            records: 200_000,
            bytes: 200_000 * 1024,
            elapsed: Duration::from_secs(2),
        };
        assert_eq!(t.records_per_sec(), 100_000.0);
        assert!((t.mb_per_sec() - 102.4).abs() < 1e-9);
        let zero = Throughput {
            records: 5,
            bytes: 5,
            elapsed: Duration::ZERO,
        };
        assert_eq!(zero.records_per_sec(), 0.0);
        assert_eq!(zero.mb_per_sec(), 0.0);
    }

    #[test]
    fn report_json_and_text() {
        let mut l = Latency::new();
        l.record_n(ms(3), 10);
        let mut r = Report::new(
            "produce",
            "t",
            Throughput {
                records: 10,
                bytes: 10_000,
                elapsed: Duration::from_millis(500),
            },
        );
        r.produce_latency = l.summary();
        r.settings.insert("acks".into(), json!("all"));
        r.extra.push(("generator_lag_ms".into(), json!(0.5)));
        let j = r.to_json();
        assert_eq!(j["mode"], "produce");
        assert_eq!(j["records"], 10);
        assert_eq!(j["records_per_sec"], 20.0);
        assert_eq!(j["mb_per_sec"], 0.02);
        assert_eq!(j["latency_ms"]["count"], 10);
        let p99 = j["latency_ms"]["p99"].as_f64().unwrap();
        assert!((p99 - 3.0).abs() < 0.01, "{p99}");
        assert_eq!(j["settings"]["acks"], "all");
        assert_eq!(j["generator_lag_ms"], 0.5);
        assert!(j.get("e2e_latency_ms").is_none());
        let text = r.to_text();
        assert!(text.contains("20.0 records/s"), "{text}");
        assert!(text.contains("p99 3.00"), "{text}");
        assert!(text.contains("acks=\"all\""), "{text}");
    }
}
