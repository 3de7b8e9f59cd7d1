//! Writing a transaction's markers through each partition's current leader: this
//! broker's log for partitions it leads, WriteTxnMarkers to the leader for the others.
//! Leaders move; a marker is retried until the leader of the moment has written it.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures::future::join_all;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic};
use kafka_protocol::messages::{ProducerId, TopicName, WriteTxnMarkersRequest};
use kafka_protocol::protocol::StrBytes;
use sluice_log::LogError;

use crate::Inner;

/// How long one attempt to complete a transaction keeps retrying its markers; the
/// background pass tries again after that.
const MARKER_DEADLINE: Duration = Duration::from_secs(10);
const RETRY_WAIT: Duration = Duration::from_millis(100);

/// Why a partition's marker was not written.
struct Failure {
    /// The partition's producer state has a newer epoch: a newer marker or producer
    /// fenced this one, so nothing is left for it to end and retrying cannot help.
    fenced: bool,
    why: String,
}

impl Failure {
    fn retry(why: impl Into<String>) -> Self {
        Self {
            fenced: false,
            why: why.into(),
        }
    }
}

type Failed = Vec<((String, i32), Failure)>;

/// Writes a COMMIT or ABORT marker into every partition, or says why it could not.
pub(crate) async fn write_all(
    inner: &Inner,
    partitions: &BTreeSet<(String, i32)>,
    producer_id: i64,
    epoch: i16,
    commit: bool,
) -> Result<(), String> {
    let deadline = Instant::now() + MARKER_DEADLINE;
    let mut left: Vec<(String, i32)> = partitions.iter().cloned().collect();
    loop {
        let mut local = Vec::new();
        let mut remote: HashMap<String, Vec<(String, i32)>> = HashMap::new();
        let mut failures: Failed = Vec::new();
        for (topic, partition) in left.drain(..) {
            // A deleted topic or partition has nothing left to mark.
            let Some(part) = inner.log.topic(&topic).and_then(|t| t.partition(partition)) else {
                continue;
            };
            if part.is_led() {
                local.push((topic, partition));
                continue;
            }
            let view = inner.cluster.view();
            match view.broker(part.leader()).filter(|b| b.alive) {
                Some(b) => remote
                    .entry(format!("{}:{}", b.host, b.port))
                    .or_default()
                    .push((topic, partition)),
                None => failures.push(((topic, partition), Failure::retry("no live leader"))),
            }
        }
        let writes = local.iter().map(|(topic, partition)| async move {
            let result = match inner.log.topic(topic) {
                Some(t) => inner
                    .log
                    .write_marker(&t, *partition, producer_id, epoch, commit, 0)
                    .await
                    .map(|_| ()),
                None => Ok(()),
            };
            ((topic.clone(), *partition), result)
        });
        for (key, result) in join_all(writes).await {
            match result {
                Ok(()) => {}
                Err(e @ LogError::InvalidProducerEpoch(_)) => failures.push((
                    key,
                    Failure {
                        fenced: true,
                        why: e.to_string(),
                    },
                )),
                Err(e) => failures.push((key, Failure::retry(e.to_string()))),
            }
        }
        for (addr, parts) in remote {
            failures.extend(write_remote(&addr, &parts, producer_id, epoch, commit).await);
        }
        failures.retain(|(_, f)| !f.fenced);
        if failures.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let ((topic, partition), f) = &failures[0];
            return Err(format!(
                "{} marker(s) not written, e.g. {topic}-{partition}: {}",
                failures.len(),
                f.why
            ));
        }
        left = failures.into_iter().map(|(k, _)| k).collect();
        tokio::time::sleep(RETRY_WAIT).await;
        // Leaders may have moved: the cluster's refresh updates what each partition names.
    }
}

/// WriteTxnMarkers to another broker; returns the partitions it did not write.
async fn write_remote(addr: &str, parts: &[(String, i32)], producer_id: i64, epoch: i16, commit: bool) -> Failed {
    let mut topics: Vec<WritableTxnMarkerTopic> = Vec::new();
    for (topic, partition) in parts {
        match topics.iter_mut().find(|t| t.name.as_str() == topic) {
            Some(t) => t.partition_indexes.push(*partition),
            None => topics.push(
                WritableTxnMarkerTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.clone())))
                    .with_partition_indexes(vec![*partition]),
            ),
        }
    }
    let req = WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
        .with_transaction_result(commit)
        .with_topics(topics)
        .with_coordinator_epoch(0)]);
    let all_failed = |why: String| parts.iter().map(|p| (p.clone(), Failure::retry(why.clone()))).collect();
    let mut conn =
        match sluice_client::Connection::connect(addr, "sluice-txn-coordinator", Duration::from_secs(5)).await {
            Ok(c) => c,
            Err(e) => return all_failed(format!("{e:#}")),
        };
    let version = match conn.version_capped::<WriteTxnMarkersRequest>(1) {
        Ok(v) => v,
        Err(e) => return all_failed(format!("{e:#}")),
    };
    let resp = match conn.request(&req, version).await {
        Ok(r) => r,
        Err(e) => return all_failed(format!("{e:#}")),
    };
    let mut failed = Vec::new();
    for marker in resp.markers {
        for t in marker.topics {
            for p in t.partitions {
                if p.error_code != 0 {
                    let error = ResponseError::try_from_code(p.error_code);
                    let failure = Failure {
                        fenced: error == Some(ResponseError::InvalidProducerEpoch),
                        why: error.map_or_else(|| format!("error {}", p.error_code), |e| e.to_string()),
                    };
                    failed.push(((t.name.to_string(), p.partition_index), failure));
                }
            }
        }
    }
    failed
}
