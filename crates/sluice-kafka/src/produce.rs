//! Produce and InitProducerId.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::*;
use sluice_log::{Appended, LogError};
use tokio::sync::oneshot;

use crate::conn::Reply;
use crate::{errors, Broker};

type Waiting = Result<oneshot::Receiver<Result<Appended, LogError>>, LogError>;
/// Per-record errors of a refused partition: (index of the record, reason).
type RecordErrors = Vec<(i32, String)>;
/// A topic's partitions, each with its pending append (or why it was refused).
type TopicWaiting = (TopicName, uuid::Uuid, Vec<(i32, Waiting, RecordErrors)>);

/// Queues every partition's batches in request order, then answers once all
/// are durable (acks=1 and acks=all alike: nothing is acknowledged before
/// it is committed to the object and metadata stores).
pub(crate) async fn handle(broker: &Arc<Broker>, req: ProduceRequest, version: i16) -> Reply {
    let acks = req.acks;
    let mut waiting: Vec<TopicWaiting> = Vec::new();
    for td in req.topic_data {
        let topic = if version >= 13 {
            broker.log.topic_by_id(td.topic_id)
        } else {
            broker.log.topic(td.name.as_str())
        };
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
                    Ok(()) => broker.log.submit(t, pd.index, records).await,
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

/// Hands out producer ids for idempotent producers, and bumps the epoch of
/// an existing one (KIP-360) so that its older epoch is fenced.
pub(crate) async fn init_producer_id(broker: &Arc<Broker>, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let resp = InitProducerIdResponse::default();
    if req.transactional_id.is_some() {
        return resp
            .with_error_code(ResponseError::InvalidRequest.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
        return resp
            .with_producer_id(req.producer_id)
            .with_producer_epoch(req.producer_epoch + 1);
    }
    match broker.log.meta().next_producer_id().await {
        Ok(id) => resp.with_producer_id(ProducerId(id)).with_producer_epoch(0),
        Err(e) => {
            tracing::error!(error = %e, "allocating producer id");
            resp.with_error_code(ResponseError::KafkaStorageError.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
    }
}
