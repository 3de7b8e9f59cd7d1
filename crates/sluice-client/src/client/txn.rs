//! A producer's coordinator calls: InitProducerId (idempotent or
//! transactional), AddPartitionsToTxn and EndTxn, as a Kafka producer makes
//! them. The batches themselves go out through [`Client::produce_encoded`].

use anyhow::Result;
use kafka_protocol::error::{ParseResponseErrorCode, ResponseError};
use kafka_protocol::messages::{
    add_partitions_to_txn_request::AddPartitionsToTxnTopic, AddPartitionsToTxnRequest, EndTxnRequest,
    InitProducerIdRequest, ProducerId, TransactionalId,
};
use kafka_protocol::protocol::Request;

use super::groups::{is_coordinator_error, Backoff};
use super::{sb, topic_name, Client};
use crate::error::check;

/// FindCoordinator key type of a transactional id.
const KEY_TYPE_TRANSACTION: i8 = 1;

/// AddPartitionsToTxn v4+ is the brokers' batched form; producers send v3.
const ADD_PARTITIONS_CLIENT_MAX_VERSION: i16 = 3;

/// A producer id and epoch from InitProducerId.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdentity {
    pub producer_id: i64,
    pub epoch: i16,
}

impl Client {
    /// InitProducerId: a new idempotent producer (`transactional_id` None), or
    /// the transactional producer of that id, fencing its previous epoch.
    pub async fn init_producer_id(
        &mut self,
        transactional_id: Option<&str>,
        transaction_timeout_ms: i32,
    ) -> Result<ProducerIdentity> {
        let build = |_| {
            InitProducerIdRequest::default()
                .with_transactional_id(transactional_id.map(|t| TransactionalId(sb(t))))
                .with_transaction_timeout_ms(transaction_timeout_ms)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        };
        let resp = match transactional_id {
            Some(txid) => self.txn_request(txid, i16::MAX, build, |r| r.error_code).await?,
            None => {
                let conn = self.bootstrap_conn().await?;
                let version = conn.version::<InitProducerIdRequest>()?;
                let resp = conn.request(&build(version), version).await?;
                check(resp.error_code, None, || "init producer id".to_string())?;
                resp
            }
        };
        Ok(ProducerIdentity {
            producer_id: *resp.producer_id,
            epoch: resp.producer_epoch,
        })
    }

    /// AddPartitionsToTxn: `partitions` of `topic` join the producer's open
    /// transaction (which this begins if none is open).
    pub async fn add_partitions_to_txn(
        &mut self,
        transactional_id: &str,
        producer: ProducerIdentity,
        topic: &str,
        partitions: &[i32],
    ) -> Result<()> {
        let build = |_| {
            AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(TransactionalId(sb(transactional_id)))
                .with_v3_and_below_producer_id(ProducerId(producer.producer_id))
                .with_v3_and_below_producer_epoch(producer.epoch)
                .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(partitions.to_vec())])
        };
        // v3 and below report errors per partition only; the first that is not
        // OPERATION_NOT_ATTEMPTED (set on the others when one fails) stands for all.
        let first_error = |r: &kafka_protocol::messages::AddPartitionsToTxnResponse| {
            r.results_by_topic_v3_and_below
                .iter()
                .flat_map(|t| &t.results_by_partition)
                .map(|p| p.partition_error_code)
                .find(|c| *c != 0 && c.err() != Some(ResponseError::OperationNotAttempted))
                .unwrap_or(0)
        };
        self.txn_request(transactional_id, ADD_PARTITIONS_CLIENT_MAX_VERSION, build, first_error)
            .await?;
        Ok(())
    }

    /// EndTxn: commit or abort the producer's open transaction.
    pub async fn end_txn(&mut self, transactional_id: &str, producer: ProducerIdentity, commit: bool) -> Result<()> {
        let build = |_| {
            EndTxnRequest::default()
                .with_transactional_id(TransactionalId(sb(transactional_id)))
                .with_producer_id(ProducerId(producer.producer_id))
                .with_producer_epoch(producer.epoch)
                .with_committed(commit)
        };
        self.txn_request(transactional_id, i16::MAX, build, |r| r.error_code)
            .await?;
        Ok(())
    }

    /// Send a request to the transaction coordinator of `transactional_id`
    /// (at most version `cap`), finding the coordinator again when it moved and
    /// retrying CONCURRENT_TRANSACTIONS (a previous EndTxn still writing its
    /// markers); other errors found by `error` are returned.
    async fn txn_request<R: Request>(
        &mut self,
        transactional_id: &str,
        cap: i16,
        build: impl Fn(i16) -> R,
        error: impl Fn(&R::Response) -> i16,
    ) -> Result<R::Response> {
        let mut backoff = Backoff::new(self.config.retry_for);
        loop {
            let node = match self.txn_coordinators.get(transactional_id) {
                Some(n) => *n,
                None => {
                    let b = self.find_coordinator_of(transactional_id, KEY_TYPE_TRANSACTION).await?;
                    self.txn_coordinators.insert(transactional_id.to_string(), b.node_id);
                    b.node_id
                }
            };
            let sent = async {
                let conn = self.broker_conn(node).await?;
                let version = conn.version_capped::<R>(cap)?;
                conn.request(&build(version), version).await
            }
            .await;
            let context = || format!("transaction coordinator of {transactional_id:?}");
            let err = match self.note_conn_result(node, sent) {
                Ok(resp) => {
                    let code = error(&resp);
                    let retriable =
                        is_coordinator_error(code) || code.err() == Some(ResponseError::ConcurrentTransactions);
                    if !retriable {
                        check(code, None, context)?;
                        return Ok(resp);
                    }
                    if is_coordinator_error(code) {
                        self.txn_coordinators.remove(transactional_id);
                    }
                    check(code, None, context).unwrap_err()
                }
                Err(e) => {
                    self.txn_coordinators.remove(transactional_id);
                    e
                }
            };
            tracing::debug!("{}: retrying: {err:#}", context());
            if !backoff.wait().await {
                return Err(err);
            }
        }
    }
}
