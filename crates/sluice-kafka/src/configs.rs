//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs. Topic configs
//! are stored overrides over broker defaults; broker configs are static
//! (set at startup) and read-only here.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use sluice_log::LogError;

use sluice_auth::Operation;

use crate::admin::{SOURCE_DEFAULT, SOURCE_TOPIC};
use crate::session::Session;
use crate::{errors, Broker};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_STATIC_BROKER: i8 = 4;

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// Kafka's check for a config resource: the topic's, or the cluster's for a broker.
fn denied(session: &Session, op: Operation, resource_type: i8, name: &str) -> Option<(i16, String)> {
    let (ok, code) = match resource_type {
        RESOURCE_TOPIC => (session.allowed_topic(op, name), ResponseError::TopicAuthorizationFailed),
        RESOURCE_BROKER => (session.allowed_cluster(op), ResponseError::ClusterAuthorizationFailed),
        _ => return None,
    };
    (!ok).then(|| (code.code(), format!("Not authorized to {} {name}", op.name())))
}

pub(crate) fn describe(
    broker: &Arc<Broker>,
    session: &Session,
    req: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let results = req
        .resources
        .into_iter()
        .map(|r| {
            let base = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            if let Some((code, msg)) = denied(session, Operation::DescribeConfigs, r.resource_type, &r.resource_name) {
                return base.with_error_code(code).with_error_message(Some(errors::str(&msg)));
            }
            let entries = match r.resource_type {
                RESOURCE_TOPIC => match broker.log.topic(r.resource_name.as_str()) {
                    Some(t) => Ok(broker
                        .log
                        .options()
                        .defaults
                        .describe(&t.overrides())
                        .into_iter()
                        .map(|c| {
                            (
                                c.name.to_string(),
                                c.value,
                                if c.is_default { SOURCE_DEFAULT } else { SOURCE_TOPIC },
                                false,
                            )
                        })
                        .collect::<Vec<_>>()),
                    None => Err(LogError::UnknownTopicOrPartition),
                },
                RESOURCE_BROKER => Ok(broker_configs(broker)),
                other => {
                    return base
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(Some(errors::str(&format!("unsupported resource type {other}"))))
                }
            };
            match entries {
                Err(e) => base
                    .with_error_code(errors::code(&e))
                    .with_error_message(errors::message(&e)),
                Ok(entries) => base.with_configs(
                    entries
                        .into_iter()
                        .filter(|(name, ..)| {
                            r.configuration_keys
                                .as_ref()
                                .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
                        })
                        .map(|(name, value, source, read_only)| {
                            DescribeConfigsResourceResult::default()
                                .with_name(errors::str(&name))
                                .with_value(Some(errors::str(&value)))
                                .with_config_source(source)
                                .with_read_only(read_only)
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn broker_configs(broker: &Broker) -> Vec<(String, String, i8, bool)> {
    let d = &broker.log.options().defaults;
    [
        ("broker.id", broker.config.node_id.to_string()),
        ("node.id", broker.config.node_id.to_string()),
        (
            "auto.create.topics.enable",
            broker.config.auto_create_topics.to_string(),
        ),
        ("num.partitions", d.partitions.to_string()),
        ("log.retention.ms", d.retention_ms.to_string()),
        ("log.retention.bytes", d.retention_bytes.to_string()),
        ("message.max.bytes", d.max_message_bytes.to_string()),
        ("socket.request.max.bytes", broker.config.max_frame_bytes.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v, SOURCE_STATIC_BROKER, true))
    .collect()
}

/// AlterConfigs: replaces a topic's overrides with exactly the given set.
pub(crate) async fn alter(broker: &Arc<Broker>, session: &Session, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        let configs: BTreeMap<String, String> = r
            .configs
            .iter()
            .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
            .collect();
        let result = apply(
            broker,
            session,
            r.resource_type,
            &r.resource_name,
            req.validate_only,
            |_| Ok(configs),
        )
        .await;
        responses.push(
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name)
                .with_error_code(result.as_ref().err().map_or(0, |e| e.0))
                .with_error_message(result.err().map(|e| errors::str(&e.1))),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

/// IncrementalAlterConfigs: SET, DELETE, APPEND and SUBTRACT per key.
pub(crate) async fn incremental_alter(
    broker: &Arc<Broker>,
    session: &Session,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        let ops: Vec<(String, i8, Option<String>)> = r
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    c.config_operation,
                    c.value.as_ref().map(|v| v.to_string()),
                )
            })
            .collect();
        let result = apply(
            broker,
            session,
            r.resource_type,
            &r.resource_name,
            req.validate_only,
            |current| {
                let mut next = current.clone();
                for (name, op, value) in &ops {
                    match (*op, value) {
                        (OP_SET, Some(v)) => {
                            next.insert(name.clone(), v.clone());
                        }
                        (OP_DELETE, _) => {
                            next.remove(name);
                        }
                        (OP_APPEND | OP_SUBTRACT, Some(v)) => {
                            let Some(default) = sluice_log::config::list_default(name) else {
                                return Err(LogError::InvalidConfig(format!(
                                    "{name} is not a list config; APPEND/SUBTRACT do not apply"
                                )));
                            };
                            let current = next.get(name).map_or(default, String::as_str);
                            let edited = edit_list(current, v, *op == OP_APPEND);
                            next.insert(name.clone(), edited);
                        }
                        _ => return Err(LogError::InvalidConfig(format!("invalid operation {op} on {name}"))),
                    }
                }
                Ok(next)
            },
        )
        .await;
        responses.push(
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name)
                .with_error_code(result.as_ref().err().map_or(0, |e| e.0))
                .with_error_message(result.err().map(|e| errors::str(&e.1))),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// A list config's value after APPEND (the items not in it yet, at the end) or
/// SUBTRACT (without the items named), as Kafka edits it.
fn edit_list(current: &str, value: &str, append: bool) -> String {
    let items = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .map(String::from)
            .collect()
    };
    let (mut list, changes) = (items(current), items(value));
    if append {
        for c in changes {
            if !list.contains(&c) {
                list.push(c);
            }
        }
    } else {
        list.retain(|i| !changes.contains(i));
    }
    list.join(",")
}

async fn apply(
    broker: &Broker,
    session: &Session,
    resource_type: i8,
    name: &StrBytes,
    validate_only: bool,
    change: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, LogError>,
) -> Result<(), (i16, String)> {
    if let Some(refused) = denied(session, Operation::AlterConfigs, resource_type, name) {
        return Err(refused);
    }
    match resource_type {
        RESOURCE_TOPIC => {}
        RESOURCE_BROKER => {
            return Err((
                ResponseError::InvalidRequest.code(),
                "broker configs are static in Sluice: set them with flags, environment or the config file".into(),
            ))
        }
        other => {
            return Err((
                ResponseError::InvalidRequest.code(),
                format!("unsupported resource type {other}"),
            ))
        }
    }
    let err = |e: LogError| (errors::code(&e), e.to_string());
    let topic = broker
        .log
        .topic(name.as_str())
        .ok_or(LogError::UnknownTopicOrPartition)
        .map_err(err)?;
    let next = change(&topic.overrides()).map_err(err)?;
    broker
        .log
        .set_topic_configs(name.as_str(), next, validate_only)
        .await
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::edit_list;

    #[test]
    fn list_configs_append_and_subtract_as_kafka_does() {
        assert_eq!(edit_list("delete", "compact", true), "delete,compact");
        assert_eq!(edit_list("delete,compact", "compact", true), "delete,compact");
        assert_eq!(edit_list("delete, compact", "delete", false), "compact");
        assert_eq!(edit_list("", "0:1,1:1", true), "0:1,1:1");
        assert_eq!(edit_list("compact", "delete", false), "compact");
    }
}
