//! CreateAcls, DescribeAcls and DeleteAcls over the bindings in the metadata store. Without
//! `--authorization acl` they answer SECURITY_DISABLED, as Kafka does without an authorizer.
//! A change is applied to this broker's authorizer at once; the others reload within a second.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{DeleteAclsFilterResult, DeleteAclsMatchingAcl};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::*;
use sluice_auth::{Acl, AclFilter, Authorizer, Operation};

use crate::errors::str as s;
use crate::session::Session;
use crate::Broker;

/// The authorizer, or the error every ACL request gets: SECURITY_DISABLED without one,
/// CLUSTER_AUTHORIZATION_FAILED without `op` on the cluster.
fn gate(session: &Session, op: Operation) -> Result<&Authorizer, (ResponseError, &'static str)> {
    let Some(authorizer) = session.authorizer() else {
        return Err((
            ResponseError::SecurityDisabled,
            "No Authorizer is configured: start with --authorization acl",
        ));
    };
    if !session.allowed_cluster(op) {
        return Err((
            ResponseError::ClusterAuthorizationFailed,
            "Cluster authorization failed",
        ));
    }
    Ok(authorizer)
}

fn text(v: &Option<kafka_protocol::protocol::StrBytes>) -> Option<&str> {
    v.as_ref().map(|v| v.as_str())
}

pub(crate) async fn create(broker: &Broker, session: &Session, req: CreateAclsRequest) -> CreateAclsResponse {
    let failed = |e: ResponseError, msg: &str| {
        AclCreationResult::default()
            .with_error_code(e.code())
            .with_error_message(Some(s(msg)))
    };
    let authorizer = match gate(session, Operation::Alter) {
        Ok(a) => a,
        Err((e, msg)) => {
            let results = req.creations.iter().map(|_| failed(e, msg)).collect();
            return CreateAclsResponse::default().with_results(results);
        }
    };
    let parsed: Vec<Result<Acl, String>> = req
        .creations
        .iter()
        .map(|c| {
            Acl::new(
                c.resource_type,
                &c.resource_name,
                c.resource_pattern_type,
                &c.principal,
                &c.host,
                c.operation,
                c.permission_type,
            )
            .map_err(|e| e.to_string())
        })
        .collect();
    let rows: Vec<_> = parsed.iter().filter_map(|a| a.as_ref().ok()).map(Acl::row).collect();
    let stored = broker.log.meta().create_acls(&rows).await;
    if stored.is_ok() {
        reload(broker, authorizer).await;
    }
    let results = parsed
        .into_iter()
        .map(|a| match (a, &stored) {
            (Err(msg), _) => failed(ResponseError::InvalidRequest, &msg),
            (Ok(_), Err(e)) => failed(
                ResponseError::UnknownServerError,
                &format!("storing ACLs failed: {e:#}"),
            ),
            (Ok(acl), Ok(())) => {
                tracing::info!(target: "sluice::audit", principal = %session.principal, acl = ?acl, "ACL created");
                AclCreationResult::default()
            }
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

pub(crate) fn describe(session: &Session, req: DescribeAclsRequest) -> DescribeAclsResponse {
    let authorizer = match gate(session, Operation::Describe) {
        Ok(a) => a,
        Err((e, msg)) => {
            return DescribeAclsResponse::default()
                .with_error_code(e.code())
                .with_error_message(Some(s(msg)))
        }
    };
    let filter = match AclFilter::new(
        req.resource_type_filter,
        text(&req.resource_name_filter),
        req.pattern_type_filter,
        text(&req.principal_filter),
        text(&req.host_filter),
        req.operation,
        req.permission_type,
    ) {
        Ok(f) => f,
        Err(e) => {
            return DescribeAclsResponse::default()
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(Some(s(&e.to_string())))
        }
    };
    let mut by_resource: BTreeMap<(i8, String, i8), Vec<AclDescription>> = BTreeMap::new();
    for acl in authorizer.acls().iter().filter(|a| filter.matches(a)) {
        by_resource
            .entry((
                acl.resource_type.code(),
                acl.resource_name.clone(),
                acl.pattern_type.code(),
            ))
            .or_default()
            .push(
                AclDescription::default()
                    .with_principal(s(&acl.principal))
                    .with_host(s(&acl.host))
                    .with_operation(acl.operation.code())
                    .with_permission_type(acl.permission.code()),
            );
    }
    let resources = by_resource
        .into_iter()
        .map(|((kind, name, pattern), acls)| {
            DescribeAclsResource::default()
                .with_resource_type(kind)
                .with_resource_name(s(&name))
                .with_pattern_type(pattern)
                .with_acls(acls)
        })
        .collect();
    DescribeAclsResponse::default().with_resources(resources)
}

pub(crate) async fn delete(broker: &Broker, session: &Session, req: DeleteAclsRequest) -> DeleteAclsResponse {
    let failed = |e: ResponseError, msg: &str| {
        DeleteAclsFilterResult::default()
            .with_error_code(e.code())
            .with_error_message(Some(s(msg)))
    };
    let authorizer = match gate(session, Operation::Alter) {
        Ok(a) => a,
        Err((e, msg)) => {
            let results = req.filters.iter().map(|_| failed(e, msg)).collect();
            return DeleteAclsResponse::default().with_filter_results(results);
        }
    };
    // Match against the store, not this broker's copy, which may be a second old.
    if let Err(e) = authorizer.reload(broker.log.meta()).await {
        let msg = format!("reading ACLs failed: {e:#}");
        let results = req
            .filters
            .iter()
            .map(|_| failed(ResponseError::UnknownServerError, &msg))
            .collect();
        return DeleteAclsResponse::default().with_filter_results(results);
    }
    let current = authorizer.acls();
    let mut results = Vec::with_capacity(req.filters.len());
    for f in &req.filters {
        let filter = match AclFilter::new(
            f.resource_type_filter,
            text(&f.resource_name_filter),
            f.pattern_type_filter,
            text(&f.principal_filter),
            text(&f.host_filter),
            f.operation,
            f.permission_type,
        ) {
            Ok(filter) => filter,
            Err(e) => {
                results.push(failed(ResponseError::InvalidRequest, &e.to_string()));
                continue;
            }
        };
        let matched: Vec<&Acl> = current.iter().filter(|a| filter.matches(a)).collect();
        let rows: Vec<_> = matched.iter().map(|a| a.row()).collect();
        if let Err(e) = broker.log.meta().delete_acls(&rows).await {
            results.push(failed(
                ResponseError::UnknownServerError,
                &format!("deleting ACLs failed: {e:#}"),
            ));
            continue;
        }
        for acl in &matched {
            tracing::info!(target: "sluice::audit", principal = %session.principal, acl = ?acl, "ACL deleted");
        }
        let matching = matched.iter().map(|a| {
            DeleteAclsMatchingAcl::default()
                .with_resource_type(a.resource_type.code())
                .with_resource_name(s(&a.resource_name))
                .with_pattern_type(a.pattern_type.code())
                .with_principal(s(&a.principal))
                .with_host(s(&a.host))
                .with_operation(a.operation.code())
                .with_permission_type(a.permission.code())
        });
        results.push(DeleteAclsFilterResult::default().with_matching_acls(matching.collect()));
    }
    reload(broker, authorizer).await;
    DeleteAclsResponse::default().with_filter_results(results)
}

async fn reload(broker: &Broker, authorizer: &Authorizer) {
    if let Err(e) = authorizer.reload(broker.log.meta()).await {
        tracing::warn!(error = %format!("{e:#}"), "reloading ACLs after a change");
    }
}
