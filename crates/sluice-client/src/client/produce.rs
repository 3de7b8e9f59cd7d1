//! Produce: records encoded into batches per partition, sent to each leader, with
//! retries only where the broker certainly wrote nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use kafka_protocol::messages::{
    produce_request::{PartitionProduceData, TopicProduceData},
    ProduceRequest, TransactionalId,
};
use uuid::Uuid;

use super::{is_safe_to_retry, sb, topic_name, Acks, Client};
use crate::error::check;
use crate::records::{encode_batch, ProduceRecord};

impl Client {
    /// Produce `records` to one partition as one batch. Returns the base
    /// offset the broker assigned (-1 with `Acks::None`).
    pub async fn produce(&mut self, topic: &str, partition: i32, records: &[ProduceRecord], acks: Acks) -> Result<i64> {
        let out = self.produce_partitions(topic, &[(partition, records)], acks).await?;
        Ok(out.first().map_or(-1, |(_, o)| *o))
    }

    /// Produce one batch to each of several partitions of a topic, one request
    /// per leader. Returns `(partition, base offset)` pairs. Errors that
    /// guarantee nothing was written (not leader, leader not available,
    /// unknown partition) are retried with fresh metadata for up to
    /// `ClientConfig::retry_for`.
    pub async fn produce_partitions(
        &mut self,
        topic: &str,
        batches: &[(i32, &[ProduceRecord])],
        acks: Acks,
    ) -> Result<Vec<(i32, i64)>> {
        let compression = self.config.compression;
        let pending: Vec<(i32, Bytes)> = batches
            .iter()
            .filter(|(_, recs)| !recs.is_empty())
            .map(|(p, recs)| Ok((*p, encode_batch(recs, compression)?)))
            .collect::<Result<_>>()?;
        self.produce_encoded(topic, pending, acks, None).await
    }

    /// Produce encoded record batches, one per partition, with the retries of
    /// [`Client::produce_partitions`]; `transactional_id` for a transactional
    /// producer's batches. A retried idempotent batch keeps its sequence, so the
    /// broker writes it once.
    pub async fn produce_encoded(
        &mut self,
        topic: &str,
        mut pending: Vec<(i32, Bytes)>,
        acks: Acks,
        transactional_id: Option<&str>,
    ) -> Result<Vec<(i32, i64)>> {
        let mut done = Vec::with_capacity(pending.len());
        let deadline = tokio::time::Instant::now() + self.config.retry_for;
        let mut backoff = Duration::from_millis(50);
        loop {
            let (ok, retry, fatal) = self.produce_attempt(topic, &pending, acks, transactional_id).await?;
            done.extend(ok);
            if let Some(e) = fatal {
                return Err(e);
            }
            if retry.is_empty() {
                break;
            }
            let last_err = retry.last().map(|(_, e)| format!("{e:#}")).unwrap_or_default();
            if tokio::time::Instant::now() + backoff > deadline {
                bail!("produce to {topic:?} still failing after retries: {last_err}");
            }
            tracing::debug!("produce to {topic:?} retrying {} partitions: {last_err}", retry.len());
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            self.forget_topic(topic);
            let retry_parts: Vec<i32> = retry.iter().map(|(p, _)| *p).collect();
            pending.retain(|(p, _)| retry_parts.contains(p));
        }
        done.sort_by_key(|(p, _)| *p);
        Ok(done)
    }

    /// One round of produce requests. Returns successes, partitions to retry
    /// (with their error), and the first non-retriable error.
    #[allow(clippy::type_complexity)]
    async fn produce_attempt(
        &mut self,
        topic: &str,
        pending: &[(i32, Bytes)],
        acks: Acks,
        transactional_id: Option<&str>,
    ) -> Result<(Vec<(i32, i64)>, Vec<(i32, anyhow::Error)>, Option<anyhow::Error>)> {
        let mut ok = Vec::new();
        let mut retry = Vec::new();
        let mut by_leader: BTreeMap<i32, Vec<(i32, Bytes)>> = BTreeMap::new();
        let mut topic_id = Uuid::nil();
        for (p, data) in pending {
            match self.leader_of(topic, *p).await {
                Ok((leader, id)) => {
                    topic_id = id;
                    by_leader.entry(leader).or_default().push((*p, data.clone()));
                }
                Err(e) if is_safe_to_retry(&e) => retry.push((*p, e)),
                Err(e) => return Ok((ok, retry, Some(e))),
            }
        }
        let timeout_ms = self.timeout_ms();
        let request_timeout = self.config.request_timeout + Duration::from_millis(timeout_ms as u64);
        for (leader, parts) in by_leader {
            let conn = match self.broker_conn(leader).await {
                Ok(c) => c,
                Err(e) => {
                    // Nothing was sent: safe to retry with fresh metadata.
                    for (p, _) in &parts {
                        retry.push((*p, anyhow!("{e:#}")));
                    }
                    continue;
                }
            };
            let cap = if topic_id.is_nil() { 12 } else { i16::MAX };
            let version = conn.version_capped::<ProduceRequest>(cap)?;
            let mut td = TopicProduceData::default().with_partition_data(
                parts
                    .iter()
                    .map(|(p, data)| {
                        PartitionProduceData::default()
                            .with_index(*p)
                            .with_records(Some(data.clone()))
                    })
                    .collect(),
            );
            if version >= 13 {
                td.topic_id = topic_id;
            } else {
                td.name = topic_name(topic);
            }
            let req = ProduceRequest::default()
                .with_transactional_id(transactional_id.map(|t| TransactionalId(sb(t))))
                .with_acks(acks.as_i16())
                .with_timeout_ms(timeout_ms)
                .with_topic_data(vec![td]);
            if acks == Acks::None {
                let sent = conn.send_only(&req, version).await;
                self.note_conn_result(leader, sent)?;
                ok.extend(parts.iter().map(|(p, _)| (*p, -1)));
                continue;
            }
            let resp = conn.request_with_timeout(&req, version, request_timeout).await;
            let resp = self.note_conn_result(leader, resp)?;
            for (p, _) in &parts {
                let r = resp
                    .responses
                    .iter()
                    .flat_map(|t| t.partition_responses.iter())
                    .find(|r| r.index == *p);
                let Some(r) = r else {
                    return Ok((
                        ok,
                        retry,
                        Some(anyhow!("Produce response does not mention partition {p}")),
                    ));
                };
                let mut msg = r.error_message.as_ref().map(|m| m.to_string());
                if let Some(first) = r.record_errors.first() {
                    let detail = first
                        .batch_index_error_message
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_default();
                    msg = Some(format!(
                        "{} (record {}: {detail})",
                        msg.unwrap_or_default(),
                        first.batch_index
                    ));
                }
                match check(r.error_code, msg.as_deref(), || {
                    format!("produce to {topic:?} partition {p}")
                }) {
                    Ok(()) => ok.push((*p, r.base_offset)),
                    Err(e) if is_safe_to_retry(&e) => retry.push((*p, e)),
                    Err(e) => return Ok((ok, retry, Some(e))),
                }
            }
        }
        Ok((ok, retry, None))
    }
}
