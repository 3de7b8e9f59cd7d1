//! Which APIs and versions Sluice serves, and routing of decoded requests to
//! their handlers. APIs not listed here are not advertised, and a request
//! for one closes the connection, as Kafka does.

use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;

use crate::conn::Reply;
use crate::{admin, configs, fetch, metadata, offsets, produce, Broker};

/// (API, highest version served). The lowest is the protocol crate's.
const APIS: &[(ApiKey, i16)] = &[
    (ApiKey::Produce, 13),
    (ApiKey::Fetch, 17),
    (ApiKey::ListOffsets, 10),
    (ApiKey::Metadata, 13),
    (ApiKey::ApiVersions, 4),
    (ApiKey::CreateTopics, 7),
    (ApiKey::DeleteTopics, 6),
    (ApiKey::InitProducerId, 5),
    (ApiKey::OffsetForLeaderEpoch, 4),
    (ApiKey::DescribeConfigs, 4),
    (ApiKey::AlterConfigs, 2),
    (ApiKey::DeleteRecords, 2),
    (ApiKey::DescribeLogDirs, 4),
    (ApiKey::CreatePartitions, 3),
    (ApiKey::IncrementalAlterConfigs, 1),
    (ApiKey::DescribeCluster, 2),
];

/// The version range served for `key`, if it is served at all.
pub(crate) fn advertised(key: ApiKey) -> Option<(i16, i16)> {
    let (_, max) = APIS.iter().find(|(k, _)| *k == key)?;
    let range = key.valid_versions();
    Some((range.min, (*max).min(range.max)))
}

/// Every served API as (key, min version, max version).
pub fn supported_apis() -> Vec<(i16, i16, i16)> {
    APIS.iter()
        .filter_map(|(k, _)| advertised(*k).map(|(min, max)| (*k as i16, min, max)))
        .collect()
}

pub(crate) fn name(key: ApiKey) -> &'static str {
    match key {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::OffsetForLeaderEpoch => "OffsetForLeaderEpoch",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::AlterConfigs => "AlterConfigs",
        ApiKey::DeleteRecords => "DeleteRecords",
        ApiKey::DescribeLogDirs => "DescribeLogDirs",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::DescribeCluster => "DescribeCluster",
        _ => "other",
    }
}

fn api_versions() -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(
        supported_apis()
            .into_iter()
            .map(|(k, min, max)| {
                ApiVersion::default()
                    .with_api_key(k)
                    .with_min_version(min)
                    .with_max_version(max)
            })
            .collect(),
    )
}

pub(crate) fn unsupported_version_response() -> ResponseKind {
    ResponseKind::ApiVersions(api_versions().with_error_code(ResponseError::UnsupportedVersion.code()))
}

fn decode<T: Decodable>(body: &mut Bytes, version: i16) -> Result<T> {
    T::decode(body, version).context("decoding request body")
}

/// Decodes the request body and runs its handler.
pub(crate) async fn dispatch(
    broker: &Arc<Broker>,
    key: ApiKey,
    header: &RequestHeader,
    body: &mut Bytes,
) -> Result<Reply> {
    let v = header.request_api_version;
    let now = |r: ResponseKind| Ok(Reply::Now(Box::new(r)));
    match key {
        ApiKey::ApiVersions => {
            let _req: ApiVersionsRequest = decode(body, v)?;
            now(ResponseKind::ApiVersions(api_versions()))
        }
        ApiKey::Produce => Ok(produce::handle(broker, decode(body, v)?, v).await),
        ApiKey::Fetch => Ok(fetch::handle(broker, decode(body, v)?, v)),
        ApiKey::Metadata => now(metadata::metadata(broker, decode(body, v)?, v).await.into()),
        ApiKey::DescribeCluster => now(metadata::describe_cluster(broker, decode(body, v)?).into()),
        ApiKey::ListOffsets => now(offsets::list_offsets(broker, decode(body, v)?, v).await.into()),
        ApiKey::OffsetForLeaderEpoch => now(offsets::offset_for_leader_epoch(broker, decode(body, v)?).await.into()),
        ApiKey::DeleteRecords => now(offsets::delete_records(broker, decode(body, v)?).await.into()),
        ApiKey::InitProducerId => now(produce::init_producer_id(broker, decode(body, v)?).await.into()),
        ApiKey::CreateTopics => now(admin::create_topics(broker, decode(body, v)?, v).await.into()),
        ApiKey::DeleteTopics => now(admin::delete_topics(broker, decode(body, v)?, v).await.into()),
        ApiKey::CreatePartitions => now(admin::create_partitions(broker, decode(body, v)?).await.into()),
        ApiKey::DescribeLogDirs => now(admin::describe_log_dirs(broker, decode(body, v)?).await.into()),
        ApiKey::DescribeConfigs => now(configs::describe(broker, decode(body, v)?).into()),
        ApiKey::AlterConfigs => now(configs::alter(broker, decode(body, v)?).await.into()),
        ApiKey::IncrementalAlterConfigs => now(configs::incremental_alter(broker, decode(body, v)?).await.into()),
        other => anyhow::bail!("API {other:?} is not served"),
    }
}
