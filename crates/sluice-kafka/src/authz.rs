//! Requests that one authorization check refuses whole, answered before their handler
//! runs. Checks per topic, partition or group of a request live in its handler, as in
//! Kafka's request handlers.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::DescribeUserScramCredentialsResult;
use kafka_protocol::messages::*;
use sluice_auth::Operation;

use crate::session::Session;

const DENIED: &str = "Cluster authorization failed.";

pub(crate) fn refused(session: &Session, body: &RequestKind) -> Option<ResponseKind> {
    let group = ResponseError::GroupAuthorizationFailed.code();
    let cluster = ResponseError::ClusterAuthorizationFailed.code();
    let member_of = |g: &GroupId| !session.allowed_group(Operation::Read, g);
    Some(match body {
        // Group membership needs READ on the group.
        RequestKind::JoinGroup(r) if member_of(&r.group_id) => {
            JoinGroupResponse::default().with_error_code(group).into()
        }
        RequestKind::SyncGroup(r) if member_of(&r.group_id) => {
            SyncGroupResponse::default().with_error_code(group).into()
        }
        RequestKind::Heartbeat(r) if member_of(&r.group_id) => {
            HeartbeatResponse::default().with_error_code(group).into()
        }
        RequestKind::LeaveGroup(r) if member_of(&r.group_id) => {
            LeaveGroupResponse::default().with_error_code(group).into()
        }
        RequestKind::ConsumerGroupHeartbeat(r) if member_of(&r.group_id) => {
            ConsumerGroupHeartbeatResponse::default().with_error_code(group).into()
        }
        // Users are the cluster's: DESCRIBE to list them, ALTER to change them.
        RequestKind::DescribeUserScramCredentials(r) if !session.allowed_cluster(Operation::Describe) => {
            let named = r.users.iter().flatten().map(|u| {
                DescribeUserScramCredentialsResult::default()
                    .with_user(u.name.clone())
                    .with_error_code(cluster)
                    .with_error_message(Some(crate::errors::str(DENIED)))
            });
            let named: Vec<_> = named.collect();
            // Named users carry the error each; a top-level error beside them aborts
            // confluent-kafka-python's result handling, so it is set for "all users" only.
            let top = if named.is_empty() { cluster } else { 0 };
            DescribeUserScramCredentialsResponse::default()
                .with_error_code(top)
                .with_error_message((top != 0).then(|| crate::errors::str(DENIED)))
                .with_results(named)
                .into()
        }
        RequestKind::AlterUserScramCredentials(r) if !session.allowed_cluster(Operation::Alter) => {
            let users = r
                .deletions
                .iter()
                .map(|d| &d.name)
                .chain(r.upsertions.iter().map(|u| &u.name));
            let mut names: Vec<_> = users.cloned().collect();
            names.dedup();
            let results = names.into_iter().map(|user| {
                AlterUserScramCredentialsResult::default()
                    .with_user(user)
                    .with_error_code(cluster)
            });
            AlterUserScramCredentialsResponse::default()
                .with_results(results.collect())
                .into()
        }
        _ => return None,
    })
}
