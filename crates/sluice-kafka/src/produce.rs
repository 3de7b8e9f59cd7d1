//! Produce and InitProducerId.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::*;
use sluice_log::{Appended, LogError};
use tokio::sync::oneshot;

use sluice_auth::Operation;

use crate::reply::Reply;
use crate::session::Session;
use crate::{errors, Broker};

type Waiting = Result<oneshot::Receiver<Result<Appended, LogError>>, LogError>;
/// Per-record errors of a refused partition: (index of the record, reason).
type RecordErrors = Vec<(i32, String)>;
/// A topic's partitions, each with its pending append (or why it was refused).
type TopicWaiting = (TopicName, uuid::Uuid, Vec<(i32, Waiting, RecordErrors)>);

/// Queues every partition's batches in request order, then answers once all
/// are durable (acks=1 and acks=all alike: nothing is acknowledged before
/// it is committed to the object and metadata stores).
pub(crate) async fn handle(broker: &Arc<Broker>, session: &Session, req: ProduceRequest, version: i16) -> Reply {
    let acks = req.acks;
    let mut waiting: Vec<TopicWaiting> = Vec::new();
    // Kafka's checks: WRITE on the transactional id for a transactional producer, and
    // WRITE on each topic.
    let txn_denied = req
        .transactional_id
        .as_ref()
        .is_some_and(|id| !id.is_empty() && !session.allowed_txn(Operation::Write, id));
    let mut denied = Vec::new();
    for td in req.topic_data {
        let topic = if version >= 13 {
            broker.log.topic_by_id(td.topic_id)
        } else {
            broker.log.topic(td.name.as_str())
        };
        let name = topic.as_ref().map_or_else(|| td.name.to_string(), |t| t.name.clone());
        let code = if txn_denied {
            Some(ResponseError::TransactionalIdAuthorizationFailed)
        } else {
            (!session.allowed_topic(Operation::Write, &name)).then_some(ResponseError::TopicAuthorizationFailed)
        };
        if let Some(code) = code {
            let refused = td.partition_data.iter().map(|pd| {
                PartitionProduceResponse::default()
                    .with_index(pd.index)
                    .with_error_code(code.code())
                    .with_base_offset(-1)
                    .with_log_append_time_ms(-1)
                    .with_log_start_offset(-1)
            });
            denied.push(
                TopicProduceResponse::default()
                    .with_name(td.name)
                    .with_topic_id(td.topic_id)
                    .with_partition_responses(refused.collect()),
            );
            continue;
        }
        let mut parts = Vec::with_capacity(td.partition_data.len());
        for pd in td.partition_data {
            let mut record_errors = Vec::new();
            let w = match (&topic, pd.records) {
                _ if !matches!(acks, -1..=1) => Err(LogError::InvalidRecord(format!("invalid acks {acks}"))),
                (None, _) => Err(LogError::UnknownTopicOrPartition),
                (Some(_), None) => Err(LogError::CorruptMessage("no records".into())),
                (Some(t), Some(records)) => match check_schemas(broker, t, &records).await {
                    Err(rejection) => {
                        record_errors = rejection.record_errors;
                        Err(LogError::InvalidRecord(rejection.message))
                    }
                    Ok(()) => {
                        match check_transaction(broker, req.transactional_id.as_ref(), t, pd.index, &records).await {
                            Err(e) => Err(e),
                            Ok(()) => broker.log.submit(t, pd.index, records).await,
                        }
                    }
                },
            };
            parts.push((pd.index, w, record_errors));
        }
        waiting.push((td.name, td.topic_id, parts));
    }

    let fut = async move {
        let mut responses = Vec::with_capacity(waiting.len());
        for (name, topic_id, parts) in waiting {
            let mut out = Vec::with_capacity(parts.len());
            for (index, w, record_errors) in parts {
                let result = match w {
                    Ok(rx) => rx
                        .await
                        .unwrap_or_else(|_| Err(LogError::Storage("log stopped".into()))),
                    Err(e) => Err(e),
                };
                out.push(partition_response(index, result, record_errors, acks, version));
            }
            responses.push(
                TopicProduceResponse::default()
                    .with_name(name)
                    .with_topic_id(topic_id)
                    .with_partition_responses(out),
            );
        }
        responses.extend(denied);
        ResponseKind::Produce(ProduceResponse::default().with_responses(responses))
    };
    if acks == 0 {
        // No response is sent; the appends still complete in the background.
        tokio::spawn(fut);
        Reply::None
    } else {
        Reply::Later(Box::pin(fut))
    }
}

/// A transactional batch opening the producer's transaction on a partition must belong to
/// its id's open transaction, which added the partition (AddPartitionsToTxn); later
/// batches of the same transaction pass without asking.
async fn check_transaction(
    broker: &Arc<Broker>,
    transactional_id: Option<&TransactionalId>,
    topic: &Arc<sluice_log::Topic>,
    partition: i32,
    records: &bytes::Bytes,
) -> Result<(), LogError> {
    let Ok(header) = sluice_log::batch::parse_header(records, 0) else {
        return Ok(()); // the log refuses it with the reason
    };
    if !header.is_transactional() {
        return Ok(());
    }
    let Some(id) = transactional_id.filter(|id| !id.is_empty()) else {
        return Err(LogError::InvalidTxnState(
            "a transactional batch without a transactional.id".into(),
        ));
    };
    let open = topic
        .partition(partition)
        .is_some_and(|p| p.open_transactions().iter().any(|(pid, _)| *pid == header.producer_id));
    if open {
        return Ok(());
    }
    broker
        .txn
        .verify_produce(
            id.as_str(),
            header.producer_id,
            header.producer_epoch,
            &topic.name,
            partition,
        )
        .await
        .map_err(|e| match e {
            ResponseError::InvalidProducerEpoch | ResponseError::ProducerFenced => {
                LogError::InvalidProducerEpoch("the producer was fenced by a newer instance".into())
            }
            ResponseError::InvalidProducerIdMapping => LogError::InvalidProducerIdMapping,
            _ => LogError::InvalidTxnState(format!(
                "partition {}-{partition} is not in the producer's open transaction",
                topic.name
            )),
        })
}

/// Schema validation, for topics whose configs ask for it (sluice-schema).
async fn check_schemas(
    broker: &Arc<Broker>,
    topic: &Arc<sluice_log::Topic>,
    records: &bytes::Bytes,
) -> Result<(), sluice_schema::Rejection> {
    let Some(enforcer) = &broker.schemas else {
        return Ok(());
    };
    match sluice_schema::Policy::from_configs(&topic.overrides()) {
        Some(policy) => enforcer.check(&topic.name, &policy, records).await,
        None => Ok(()),
    }
}

/// Fields a version lacks must keep their defaults, or encoding fails.
fn partition_response(
    index: i32,
    result: Result<Appended, LogError>,
    schema_errors: RecordErrors,
    acks: i16,
    version: i16,
) -> PartitionProduceResponse {
    let base = PartitionProduceResponse::default()
        .with_index(index)
        .with_log_append_time_ms(-1);
    match result {
        Ok(a) => base
            .with_base_offset(a.base_offset)
            .with_log_append_time_ms(a.log_append_time_ms)
            .with_log_start_offset(if version >= 5 { a.log_start_offset } else { -1 }),
        Err(e) => {
            let code = if !matches!(acks, -1..=1) {
                ResponseError::InvalidRequiredAcks.code()
            } else {
                errors::code(&e)
            };
            let detailed = version >= 8;
            let record_errors = if detailed && !schema_errors.is_empty() {
                schema_errors
                    .into_iter()
                    .map(|(i, m)| {
                        BatchIndexAndErrorMessage::default()
                            .with_batch_index(i)
                            .with_batch_index_error_message(Some(errors::str(&m)))
                    })
                    .collect()
            } else if let (true, LogError::KeylessRecords(indices)) = (detailed, &e) {
                // Kafka names each refused record; librdkafka fails the rest of the batch
                // with _INVALID_DIFFERENT_RECORD.
                indices
                    .iter()
                    .map(|&i| {
                        BatchIndexAndErrorMessage::default()
                            .with_batch_index(i)
                            .with_batch_index_error_message(Some(errors::str(
                                "Compacted topic cannot accept message without key",
                            )))
                    })
                    .collect()
            } else if detailed && matches!(e, LogError::InvalidRecord(_)) {
                vec![BatchIndexAndErrorMessage::default()
                    .with_batch_index(0)
                    .with_batch_index_error_message(errors::message(&e))]
            } else {
                vec![]
            };
            base.with_error_code(code)
                .with_base_offset(-1)
                .with_log_start_offset(-1)
                .with_error_message(if detailed { errors::message(&e) } else { None })
                .with_record_errors(record_errors)
        }
    }
}
