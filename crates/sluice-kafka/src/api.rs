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

use crate::reply::Reply;
use crate::session::Session;
use crate::{acls, admin, authz, configs, fetch, groups, metadata, offsets, produce, txn, users, Broker};

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
    (ApiKey::AlterReplicaLogDirs, 2),
    (ApiKey::CreatePartitions, 3),
    (ApiKey::IncrementalAlterConfigs, 1),
    (ApiKey::DescribeCluster, 2),
    (ApiKey::FindCoordinator, 6),
    (ApiKey::JoinGroup, 9),
    (ApiKey::SyncGroup, 5),
    (ApiKey::Heartbeat, 4),
    (ApiKey::LeaveGroup, 5),
    (ApiKey::OffsetCommit, 9),
    (ApiKey::OffsetFetch, 9),
    (ApiKey::OffsetDelete, 0),
    (ApiKey::ListGroups, 5),
    (ApiKey::DescribeGroups, 5),
    (ApiKey::DeleteGroups, 2),
    (ApiKey::ConsumerGroupHeartbeat, 1),
    (ApiKey::ConsumerGroupDescribe, 1),
    (ApiKey::AddPartitionsToTxn, 5),
    (ApiKey::AddOffsetsToTxn, 4),
    (ApiKey::EndTxn, 4),
    (ApiKey::WriteTxnMarkers, 1),
    (ApiKey::TxnOffsetCommit, 4),
    (ApiKey::DescribeProducers, 0),
    (ApiKey::DescribeTransactions, 0),
    (ApiKey::ListTransactions, 1),
    (ApiKey::DescribeTopicPartitions, 0),
    (ApiKey::ElectLeaders, 2),
    (ApiKey::SaslHandshake, 1),
    (ApiKey::SaslAuthenticate, 2),
    (ApiKey::DescribeUserScramCredentials, 0),
    (ApiKey::AlterUserScramCredentials, 0),
    (ApiKey::DescribeAcls, 3),
    (ApiKey::CreateAcls, 3),
    (ApiKey::DeleteAcls, 3),
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
        ApiKey::AlterReplicaLogDirs => "AlterReplicaLogDirs",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::OffsetDelete => "OffsetDelete",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::ConsumerGroupHeartbeat => "ConsumerGroupHeartbeat",
        ApiKey::ConsumerGroupDescribe => "ConsumerGroupDescribe",
        ApiKey::AddPartitionsToTxn => "AddPartitionsToTxn",
        ApiKey::AddOffsetsToTxn => "AddOffsetsToTxn",
        ApiKey::EndTxn => "EndTxn",
        ApiKey::WriteTxnMarkers => "WriteTxnMarkers",
        ApiKey::TxnOffsetCommit => "TxnOffsetCommit",
        ApiKey::DescribeProducers => "DescribeProducers",
        ApiKey::DescribeTransactions => "DescribeTransactions",
        ApiKey::ListTransactions => "ListTransactions",
        ApiKey::DescribeTopicPartitions => "DescribeTopicPartitions",
        ApiKey::ElectLeaders => "ElectLeaders",
        ApiKey::SaslHandshake => "SaslHandshake",
        ApiKey::SaslAuthenticate => "SaslAuthenticate",
        ApiKey::DescribeUserScramCredentials => "DescribeUserScramCredentials",
        ApiKey::AlterUserScramCredentials => "AlterUserScramCredentials",
        ApiKey::DescribeAcls => "DescribeAcls",
        ApiKey::CreateAcls => "CreateAcls",
        ApiKey::DeleteAcls => "DeleteAcls",
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

/// Decodes a request frame (without its size prefix): header and body.
/// Anything malformed, unknown or unsupported is an error, never a panic.
pub fn decode_request(mut frame: Bytes) -> Result<(RequestHeader, RequestKind)> {
    if frame.len() < 8 {
        anyhow::bail!("frame of {} bytes is too short for a request header", frame.len());
    }
    let (key, version) = (
        i16::from_be_bytes([frame[0], frame[1]]),
        i16::from_be_bytes([frame[2], frame[3]]),
    );
    let api_key = ApiKey::try_from(key).map_err(|_| anyhow::anyhow!("unknown API key {key}"))?;
    let (min, max) = advertised(api_key).with_context(|| format!("API {api_key:?} is not supported"))?;
    if version < min || version > max {
        anyhow::bail!("{api_key:?} v{version} is not supported (supported: v{min}-v{max})");
    }
    let header = RequestHeader::decode(&mut frame, api_key.request_header_version(version))
        .with_context(|| format!("decoding {api_key:?} v{version} request header"))?;
    let body = RequestKind::decode(api_key, &mut frame, version)
        .with_context(|| format!("decoding {api_key:?} v{version} request body"))?;
    Ok((header, body))
}

/// Runs the handler for a decoded request.
pub(crate) async fn dispatch(
    broker: &Arc<Broker>,
    session: &Session,
    header: &RequestHeader,
    body: RequestKind,
) -> Result<Reply> {
    let v = header.request_api_version;
    let now = |r: ResponseKind| Ok(Reply::Now(Box::new(r)));
    if let Some(refused) = authz::refused(session, &body) {
        return now(refused);
    }
    match body {
        RequestKind::ApiVersions(_) => now(ResponseKind::ApiVersions(api_versions())),
        RequestKind::Produce(r) => Ok(produce::handle(broker, session, r, v).await),
        RequestKind::Fetch(r) => Ok(fetch::handle(broker, session, r, v)),
        RequestKind::Metadata(r) => now(metadata::metadata(broker, session, r, v).await.into()),
        RequestKind::DescribeCluster(r) => now(metadata::describe_cluster(broker, session, r).into()),
        RequestKind::DescribeTopicPartitions(r) => now(metadata::describe_topic_partitions(broker, session, r).into()),
        RequestKind::ElectLeaders(r) => now(metadata::elect_leaders(broker, session, r).into()),
        RequestKind::ListOffsets(r) => now(offsets::list_offsets(broker, session, r, v).await.into()),
        RequestKind::OffsetForLeaderEpoch(r) => now(offsets::offset_for_leader_epoch(broker, session, r).await.into()),
        RequestKind::DeleteRecords(r) => now(offsets::delete_records(broker, session, r).await.into()),
        RequestKind::InitProducerId(r) => now(txn::init_producer_id(broker, session, r, v).await.into()),
        RequestKind::AddPartitionsToTxn(r) => now(txn::add_partitions_to_txn(broker, session, r, v).await.into()),
        RequestKind::AddOffsetsToTxn(r) => now(txn::add_offsets_to_txn(broker, session, r, v).await.into()),
        RequestKind::EndTxn(r) => now(txn::end_txn(broker, session, r, v).await.into()),
        RequestKind::WriteTxnMarkers(r) => now(txn::write_txn_markers(broker, session, r).await.into()),
        RequestKind::TxnOffsetCommit(r) => now(txn::txn_offset_commit(broker, session, r, v).await.into()),
        RequestKind::DescribeProducers(r) => now(txn::describe_producers(broker, session, r).await.into()),
        RequestKind::DescribeTransactions(r) => now(txn::describe_transactions(broker, session, r).await.into()),
        RequestKind::ListTransactions(r) => now(txn::list_transactions(broker, session, r).await.into()),
        RequestKind::CreateTopics(r) => now(admin::create_topics(broker, session, r, v).await.into()),
        RequestKind::DeleteTopics(r) => now(admin::delete_topics(broker, session, r, v).await.into()),
        RequestKind::CreatePartitions(r) => now(admin::create_partitions(broker, session, r).await.into()),
        RequestKind::DescribeLogDirs(r) => now(admin::describe_log_dirs(broker, session, r).await.into()),
        RequestKind::AlterReplicaLogDirs(r) => now(admin::alter_replica_log_dirs(broker, session, r).into()),
        RequestKind::DescribeConfigs(r) => now(configs::describe(broker, session, r).into()),
        RequestKind::AlterConfigs(r) => now(configs::alter(broker, session, r).await.into()),
        RequestKind::IncrementalAlterConfigs(r) => now(configs::incremental_alter(broker, session, r).await.into()),
        RequestKind::FindCoordinator(r) => now(groups::find_coordinator(broker, session, r, v).into()),
        RequestKind::JoinGroup(r) => {
            let client_id = header.client_id.as_ref().map(|c| c.to_string()).unwrap_or_default();
            Ok(groups::join_group(broker, r, v, client_id))
        }
        RequestKind::SyncGroup(r) => Ok(groups::sync_group(broker, r, v)),
        RequestKind::Heartbeat(r) => now(groups::heartbeat(broker, r).into()),
        RequestKind::LeaveGroup(r) => now(groups::leave_group(broker, r, v).await.into()),
        RequestKind::OffsetCommit(r) => now(groups::offset_commit(broker, session, r).await.into()),
        RequestKind::OffsetFetch(r) => now(groups::offset_fetch(broker, session, r, v).await.into()),
        RequestKind::OffsetDelete(r) => now(groups::offset_delete(broker, session, r).await.into()),
        RequestKind::ListGroups(r) => now(groups::list_groups(broker, session, r, v).await.into()),
        RequestKind::DescribeGroups(r) => now(groups::describe_groups(broker, session, r, v).await.into()),
        RequestKind::DeleteGroups(r) => now(groups::delete_groups(broker, session, r).await.into()),
        RequestKind::ConsumerGroupHeartbeat(r) => {
            let client_id = header.client_id.as_ref().map(|c| c.to_string()).unwrap_or_default();
            now(groups::consumer_group_heartbeat(broker, session, r, v, client_id)
                .await
                .into())
        }
        RequestKind::ConsumerGroupDescribe(r) => now(groups::consumer_group_describe(broker, session, r).into()),
        RequestKind::DescribeUserScramCredentials(r) => now(users::describe(broker, r).await.into()),
        RequestKind::AlterUserScramCredentials(r) => now(users::alter(broker, r).await.into()),
        RequestKind::CreateAcls(r) => now(acls::create(broker, session, r).await.into()),
        RequestKind::DescribeAcls(r) => now(acls::describe(session, r).into()),
        RequestKind::DeleteAcls(r) => now(acls::delete(broker, session, r).await.into()),
        _ => anyhow::bail!("API {:?} is not served", header.request_api_key),
    }
}
