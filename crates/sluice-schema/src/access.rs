//! Who may change the registry under `--authorization acl`. A write to a subject (register,
//! delete, its config or mode) needs ALTER on the subject's topic: the subject less its
//! `-key` or `-value` suffix (TopicNameStrategy), else the subject itself. Global config
//! and mode need ALTER on the cluster. Reads are open to every authenticated client.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use sluice_auth::acl::CLUSTER_NAME;
use sluice_auth::{Authorizer, Operation, ResourceType};

use crate::error::RegistryError;

/// The topic whose ACLs govern `subject`.
pub fn subject_topic(subject: &str) -> &str {
    subject
        .strip_suffix("-value")
        .or_else(|| subject.strip_suffix("-key"))
        .filter(|t| !t.is_empty())
        .unwrap_or(subject)
}

/// The resource a request changes, or None for a read. POST /subjects/{s} (look up) and
/// POST /compatibility/... (test) change nothing.
fn changed_resource(method: &Method, path: &str) -> Option<(ResourceType, String)> {
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let topic = |s: &str| Some((ResourceType::Topic, subject_topic(s).to_string()));
    let cluster = || Some((ResourceType::Cluster, CLUSTER_NAME.to_string()));
    match (
        method.clone(),
        segments.iter().map(String::as_str).collect::<Vec<_>>().as_slice(),
    ) {
        (Method::POST, ["subjects", s, "versions"]) => topic(s),
        (Method::DELETE, ["subjects", s, ..]) => topic(s),
        (Method::PUT | Method::DELETE, ["config" | "mode", s]) => topic(s),
        (Method::PUT | Method::DELETE, ["config" | "mode"]) => cluster(),
        _ => None,
    }
}

/// Adds the ALTER checks to the registry's routes.
pub fn protect(router: Router, authorizer: Arc<Authorizer>) -> Router {
    router.layer(axum::middleware::from_fn_with_state(authorizer, check))
}

async fn check(State(authorizer): State<Arc<Authorizer>>, req: Request, next: Next) -> Response {
    let Some((kind, name)) = changed_resource(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let (principal, host) = sluice_auth::http::identity(&req);
    if authorizer.authorize(&principal, &host, Operation::Alter, kind, &name) {
        return next.run(req).await;
    }
    RegistryError::forbidden(format!("{principal} is not authorized to ALTER {} {name}", kind.name())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_map_to_the_subjects_topic_or_the_cluster() {
        let t = |s: &str| Some((ResourceType::Topic, s.to_string()));
        assert_eq!(
            changed_resource(&Method::POST, "/subjects/orders-value/versions"),
            t("orders")
        );
        assert_eq!(
            changed_resource(&Method::DELETE, "/subjects/orders-key/versions/3"),
            t("orders")
        );
        assert_eq!(
            changed_resource(&Method::PUT, "/config/com.acme.Order"),
            t("com.acme.Order")
        );
        assert_eq!(changed_resource(&Method::DELETE, "/mode/a%2Db-value"), t("a-b"));
        assert_eq!(
            changed_resource(&Method::PUT, "/config"),
            Some((ResourceType::Cluster, CLUSTER_NAME.into()))
        );
        assert_eq!(changed_resource(&Method::POST, "/subjects/orders-value"), None);
        assert_eq!(changed_resource(&Method::GET, "/subjects/orders-value/versions"), None);
        assert_eq!(
            changed_resource(&Method::POST, "/compatibility/subjects/x/versions/1"),
            None
        );
        assert_eq!(subject_topic("-value"), "-value");
    }
}
