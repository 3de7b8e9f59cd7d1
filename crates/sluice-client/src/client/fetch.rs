//! Fetch and ListOffsets.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use kafka_protocol::messages::{
    fetch_request::{FetchPartition, FetchTopic},
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
    BrokerId, FetchRequest, ListOffsetsRequest,
};

use super::{topic_name, Client, IsolationLevel};
use crate::error::check;
use uuid::Uuid;

use crate::records::{decode_fetched, AbortedTxn, ConsumedRecord};

/// One partition's answer to a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedPartition {
    /// Partition index.
    pub partition: i32,
    /// Records at or after the fetch offset (control batches and, under
    /// read_committed, aborted transactions removed).
    pub records: Vec<ConsumedRecord>,
    /// Offset to fetch next.
    pub next_offset: i64,
    /// High watermark.
    pub high_watermark: i64,
    /// Last stable offset (-1 if unknown).
    pub last_stable_offset: i64,
    /// Log start offset (-1 if unknown).
    pub log_start_offset: i64,
}

impl Client {
    /// The offset for `timestamp` in a partition: [`LATEST_TIMESTAMP`] (-1),
    /// [`EARLIEST_TIMESTAMP`] (-2), or the first offset whose timestamp is at
    /// or after a time in ms (-1 if there is none).
    pub async fn list_offsets(&mut self, topic: &str, partition: i32, timestamp: i64) -> Result<i64> {
        let (leader, _) = self.leader_of(topic, partition).await?;
        let isolation = self.config.isolation_level.as_i8();
        let timeout_ms = self.timeout_ms();
        let conn = self.broker_conn(leader).await?;
        let version = conn.version::<ListOffsetsRequest>()?;
        let mut req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_timestamp(timestamp)])]);
        if version >= 2 {
            req.isolation_level = isolation;
        }
        if version >= 10 {
            req.timeout_ms = timeout_ms;
        }
        let resp = conn.request(&req, version).await;
        let resp = self.note_conn_result(leader, resp)?;
        let p = resp
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| anyhow!("ListOffsets response does not mention partition {partition}"))?;
        let res = check(p.error_code, None, || {
            format!("list offsets of {topic:?} partition {partition}")
        });
        if let Err(e) = &res {
            self.forget_if_stale(topic, e);
        }
        res?;
        Ok(p.offset)
    }

    /// Fetch from one partition starting at `offset`, waiting up to `max_wait`
    /// for data, returning at most about `max_bytes` (at least one batch).
    pub async fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait: Duration,
        max_bytes: i32,
    ) -> Result<FetchedPartition> {
        let mut out = self
            .fetch_many(topic, &[(partition, offset)], max_wait, max_bytes, max_bytes)
            .await?;
        match out.pop() {
            Some((_, r)) => r,
            None => bail!("fetch response does not mention partition {partition}"),
        }
    }

    /// Fetch from several partitions of a topic, one request per leader (sent
    /// in turn). Returns each partition's result; a partition-level error
    /// (e.g. `OFFSET_OUT_OF_RANGE`) is that partition's `Err`.
    pub async fn fetch_many(
        &mut self,
        topic: &str,
        positions: &[(i32, i64)],
        max_wait: Duration,
        max_bytes: i32,
        partition_max_bytes: i32,
    ) -> Result<Vec<(i32, Result<FetchedPartition>)>> {
        let mut out = Vec::with_capacity(positions.len());
        let mut by_leader: BTreeMap<i32, Vec<(i32, i64)>> = BTreeMap::new();
        let mut topic_id = Uuid::nil();
        for &(p, off) in positions {
            match self.leader_of(topic, p).await {
                Ok((leader, id)) => {
                    topic_id = id;
                    by_leader.entry(leader).or_default().push((p, off));
                }
                Err(e) => {
                    self.forget_if_stale(topic, &e);
                    out.push((p, Err(e)));
                }
            }
        }
        let isolation = self.config.isolation_level;
        let timeout = self.config.request_timeout + max_wait;
        for (leader, parts) in by_leader {
            let conn = match self.broker_conn(leader).await {
                Ok(c) => c,
                Err(e) => {
                    self.forget_topic(topic);
                    for (p, _) in &parts {
                        out.push((*p, Err(anyhow!("{e:#}"))));
                    }
                    continue;
                }
            };
            let cap = if topic_id.is_nil() { 12 } else { i16::MAX };
            let version = conn.version_capped::<FetchRequest>(cap)?;
            let mut ft = FetchTopic::default().with_partitions(
                parts
                    .iter()
                    .map(|&(p, off)| {
                        FetchPartition::default()
                            .with_partition(p)
                            .with_fetch_offset(off)
                            .with_partition_max_bytes(partition_max_bytes)
                    })
                    .collect(),
            );
            if version >= 13 {
                ft.topic_id = topic_id;
            } else {
                ft.topic = topic_name(topic);
            }
            let req = FetchRequest::default()
                .with_max_wait_ms(max_wait.as_millis().min(i32::MAX as u128) as i32)
                .with_min_bytes(1)
                .with_max_bytes(max_bytes)
                .with_isolation_level(isolation.as_i8())
                .with_session_id(0)
                .with_session_epoch(-1)
                .with_topics(vec![ft]);
            let resp = conn.request_with_timeout(&req, version, timeout).await;
            let resp = self.note_conn_result(leader, resp)?;
            check(resp.error_code, None, || format!("fetch from {topic:?}"))?;
            for &(p, off) in &parts {
                let Some(pd) = resp
                    .responses
                    .iter()
                    .flat_map(|t| t.partitions.iter())
                    .find(|pd| pd.partition_index == p)
                else {
                    // Not in the answer (a broker may leave out partitions it
                    // has nothing for): no data this time.
                    out.push((
                        p,
                        Ok(FetchedPartition {
                            partition: p,
                            records: Vec::new(),
                            next_offset: off,
                            high_watermark: -1,
                            last_stable_offset: -1,
                            log_start_offset: -1,
                        }),
                    ));
                    continue;
                };
                if let Err(e) = check(pd.error_code, None, || {
                    format!("fetch from {topic:?} partition {p} at offset {off}")
                }) {
                    self.forget_if_stale(topic, &e);
                    out.push((p, Err(e)));
                    continue;
                }
                let aborted: Option<Vec<AbortedTxn>> = match isolation {
                    IsolationLevel::ReadUncommitted => None,
                    IsolationLevel::ReadCommitted => Some(
                        pd.aborted_transactions
                            .iter()
                            .flatten()
                            .map(|a| AbortedTxn {
                                producer_id: *a.producer_id,
                                first_offset: a.first_offset,
                            })
                            .collect(),
                    ),
                };
                let data = pd.records.clone().unwrap_or_default();
                let decoded = decode_fetched(p, data, off, aborted.as_deref())
                    .with_context(|| format!("fetch from {topic:?} partition {p} at offset {off}"));
                out.push((
                    p,
                    decoded.map(|d| FetchedPartition {
                        partition: p,
                        records: d.records,
                        next_offset: d.next_offset,
                        high_watermark: pd.high_watermark,
                        last_stable_offset: pd.last_stable_offset,
                        log_start_offset: pd.log_start_offset,
                    }),
                ));
            }
        }
        Ok(out)
    }
}
