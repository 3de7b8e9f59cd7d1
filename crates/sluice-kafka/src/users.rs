//! KIP-554: DescribeUserScramCredentials and AlterUserScramCredentials, over the user
//! store. Clients send the salt and salted password; only derived keys are stored.

use std::collections::{BTreeMap, HashSet};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::*;
use sluice_auth::scram::{MAX_ITERATIONS, MIN_ITERATIONS};
use sluice_auth::ScramMechanism;

use crate::errors::str as s;
use crate::Broker;

pub(crate) async fn describe(
    broker: &Broker,
    req: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let meta = broker.log.meta();
    let failed = |e: anyhow::Error| {
        DescribeUserScramCredentialsResponse::default()
            .with_error_code(ResponseError::UnknownServerError.code())
            .with_error_message(Some(s(&format!("reading credentials failed: {e:#}"))))
    };
    let all = match meta.list_scram().await {
        Ok(rows) => rows,
        Err(e) => return failed(e),
    };
    let mut by_user: BTreeMap<String, Vec<CredentialInfo>> = BTreeMap::new();
    for row in all {
        if let Some(m) = ScramMechanism::parse(&row.mechanism) {
            by_user.entry(row.user).or_default().push(
                CredentialInfo::default()
                    .with_mechanism(m.kafka_type())
                    .with_iterations(row.iterations),
            );
        }
    }
    let results = match req.users.filter(|u| !u.is_empty()) {
        // Null or empty: every user with a credential.
        None => by_user
            .into_iter()
            .map(|(user, infos)| {
                DescribeUserScramCredentialsResult::default()
                    .with_user(s(&user))
                    .with_credential_infos(infos)
            })
            .collect(),
        Some(users) => {
            let mut seen = HashSet::new();
            let duplicated: HashSet<&str> = users
                .iter()
                .filter(|u| !seen.insert(u.name.as_str()))
                .map(|u| u.name.as_str())
                .collect();
            let mut reported = HashSet::new();
            users
                .iter()
                .filter(|u| reported.insert(u.name.as_str()))
                .map(|u| {
                    let r = DescribeUserScramCredentialsResult::default().with_user(u.name.clone());
                    if duplicated.contains(u.name.as_str()) {
                        return r
                            .with_error_code(ResponseError::DuplicateResource.code())
                            .with_error_message(Some(s(&format!(
                                "Cannot describe SCRAM credentials for the same user twice in a single request: {}",
                                u.name.as_str()
                            ))));
                    }
                    match by_user.get(u.name.as_str()) {
                        Some(infos) => r.with_credential_infos(infos.clone()),
                        None => r
                            .with_error_code(ResponseError::ResourceNotFound.code())
                            .with_error_message(Some(s(&format!(
                                "Attempt to describe a user credential that does not exist: {}",
                                u.name.as_str()
                            )))),
                    }
                })
                .collect()
        }
    };
    DescribeUserScramCredentialsResponse::default().with_results(results)
}

pub(crate) async fn alter(broker: &Broker, req: AlterUserScramCredentialsRequest) -> AlterUserScramCredentialsResponse {
    let meta = broker.log.meta();
    // Validate everything per user first: a user with any invalid change gets only that error.
    let mut errors: BTreeMap<String, (ResponseError, String)> = BTreeMap::new();
    let mut touched: BTreeMap<String, HashSet<i8>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut note = |user: &str, mechanism: i8, errors: &mut BTreeMap<String, (ResponseError, String)>| {
        if !order.iter().any(|u| u == user) {
            order.push(user.to_string());
        }
        if !touched.entry(user.to_string()).or_default().insert(mechanism) {
            errors.entry(user.to_string()).or_insert((
                ResponseError::DuplicateResource,
                "A user credential cannot be altered twice in the same request".into(),
            ));
        }
    };
    for d in &req.deletions {
        note(d.name.as_str(), d.mechanism, &mut errors);
    }
    for u in &req.upsertions {
        note(u.name.as_str(), u.mechanism, &mut errors);
    }
    for (user, mechanism) in req
        .deletions
        .iter()
        .map(|d| (d.name.as_str(), d.mechanism))
        .chain(req.upsertions.iter().map(|u| (u.name.as_str(), u.mechanism)))
    {
        if user.is_empty() {
            set_error(
                &mut errors,
                user,
                ResponseError::UnacceptableCredential,
                "Username must not be empty".into(),
            );
        } else if ScramMechanism::from_kafka_type(mechanism).is_none() {
            set_error(
                &mut errors,
                user,
                ResponseError::UnsupportedSaslMechanism,
                format!("Unknown SCRAM mechanism {mechanism}"),
            );
        }
    }
    for u in &req.upsertions {
        let iterations = u.iterations;
        if iterations < MIN_ITERATIONS as i32 || iterations > MAX_ITERATIONS as i32 {
            set_error(
                &mut errors,
                u.name.as_str(),
                ResponseError::UnacceptableCredential,
                format!("Iterations {iterations} must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}"),
            );
        } else if u.salt.is_empty() || u.salted_password.is_empty() {
            set_error(
                &mut errors,
                u.name.as_str(),
                ResponseError::UnacceptableCredential,
                "Salt and salted password must not be empty".into(),
            );
        }
    }
    for d in &req.deletions {
        let user = d.name.as_str();
        if errors.contains_key(user) {
            continue;
        }
        let Some(m) = ScramMechanism::from_kafka_type(d.mechanism) else {
            continue;
        };
        match meta.scram_for(user).await {
            Ok(rows) if rows.iter().any(|r| r.mechanism == m.name()) => {}
            Ok(_) => set_error(
                &mut errors,
                user,
                ResponseError::ResourceNotFound,
                "Attempt to delete a user credential that does not exist".into(),
            ),
            Err(e) => set_error(&mut errors, user, ResponseError::UnknownServerError, format!("{e:#}")),
        }
    }
    for d in &req.deletions {
        let user = d.name.as_str();
        if errors.contains_key(user) {
            continue;
        }
        if let Some(m) = ScramMechanism::from_kafka_type(d.mechanism) {
            if let Err(e) = meta.delete_scram(user, Some(m.name())).await {
                set_error(&mut errors, user, ResponseError::UnknownServerError, format!("{e:#}"));
            }
        }
    }
    for u in &req.upsertions {
        let user = u.name.as_str();
        if errors.contains_key(user) {
            continue;
        }
        if let Some(m) = ScramMechanism::from_kafka_type(u.mechanism) {
            let row = m.credential_from_salted(user, &u.salt, &u.salted_password, u.iterations as u32);
            if let Err(e) = meta.upsert_scram(&row).await {
                set_error(&mut errors, user, ResponseError::UnknownServerError, format!("{e:#}"));
            }
        }
    }
    let results = order
        .iter()
        .map(|user| {
            let r = AlterUserScramCredentialsResult::default().with_user(s(user));
            match errors.get(user) {
                Some((e, msg)) => r.with_error_code(e.code()).with_error_message(Some(s(msg))),
                None => r,
            }
        })
        .collect();
    AlterUserScramCredentialsResponse::default().with_results(results)
}

/// Records a user's first error; later ones for the same user are dropped.
fn set_error(errors: &mut BTreeMap<String, (ResponseError, String)>, user: &str, e: ResponseError, msg: String) {
    errors.entry(user.to_string()).or_insert((e, msg));
}
