//! Kafka's ACL model and authorizer: resources (TOPIC, GROUP, CLUSTER, TRANSACTIONAL_ID)
//! named LITERAL, PREFIXED or by the `*` wildcard; ALLOW and DENY bindings per principal,
//! host and operation, DENY winning; super users bypass it. Codes are Kafka's wire codes.
//! Bindings live in the metadata store; every broker reloads them each second.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use anyhow::{bail, Result};
use prometheus::{register_int_counter_vec, IntCounterVec};
use sluice_meta::{AclRow, MetaStore};

/// The one CLUSTER resource's name.
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// Matches every resource name (LITERAL), every principal (`User:*`) or every host.
pub const WILDCARD: &str = "*";
/// How often each broker reloads the bindings; a change takes effect within twice this.
pub const REFRESH: Duration = Duration::from_secs(1);

macro_rules! codes {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $code:expr => $text:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),* }

        impl $name {
            pub fn code(self) -> i8 {
                match self { $(Self::$variant => $code),* }
            }
            pub fn from_code(code: i8) -> Option<Self> {
                match code { $($code => Some(Self::$variant),)* _ => None }
            }
            /// Kafka's name, as kafka-acls prints it.
            pub fn name(self) -> &'static str {
                match self { $(Self::$variant => $text),* }
            }
        }
    };
}

codes!(
    /// What kind of thing an ACL protects. `Any` only appears in filters.
    ResourceType {
        Any = 1 => "ANY",
        Topic = 2 => "TOPIC",
        Group = 3 => "GROUP",
        Cluster = 4 => "CLUSTER",
        TransactionalId = 5 => "TRANSACTIONAL_ID",
    }
);

codes!(
    /// How an ACL's resource name matches. `Any` and `Match` only appear in filters.
    PatternType {
        Any = 1 => "ANY",
        Match = 2 => "MATCH",
        Literal = 3 => "LITERAL",
        Prefixed = 4 => "PREFIXED",
    }
);

codes!(
    Operation {
        Any = 1 => "ANY",
        All = 2 => "ALL",
        Read = 3 => "READ",
        Write = 4 => "WRITE",
        Create = 5 => "CREATE",
        Delete = 6 => "DELETE",
        Alter = 7 => "ALTER",
        Describe = 8 => "DESCRIBE",
        ClusterAction = 9 => "CLUSTER_ACTION",
        DescribeConfigs = 10 => "DESCRIBE_CONFIGS",
        AlterConfigs = 11 => "ALTER_CONFIGS",
        IdempotentWrite = 12 => "IDEMPOTENT_WRITE",
    }
);

codes!(
    Permission {
        Any = 1 => "ANY",
        Deny = 2 => "DENY",
        Allow = 3 => "ALLOW",
    }
);

/// One binding, validated: concrete types only (no ANY or MATCH).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Acl {
    pub resource_type: ResourceType,
    pub resource_name: String,
    pub pattern_type: PatternType,
    pub principal: String,
    pub host: String,
    pub operation: Operation,
    pub permission: Permission,
}

impl Acl {
    /// Checks a binding to be created, with Kafka's reasons for refusing one.
    pub fn new(
        resource_type: i8,
        resource_name: &str,
        pattern_type: i8,
        principal: &str,
        host: &str,
        operation: i8,
        permission: i8,
    ) -> Result<Self> {
        let resource_type = match ResourceType::from_code(resource_type) {
            Some(ResourceType::Any) | None => bail!("Invalid resource type {resource_type}"),
            Some(t) => t,
        };
        let pattern_type = match PatternType::from_code(pattern_type) {
            Some(p @ (PatternType::Literal | PatternType::Prefixed)) => p,
            _ => bail!("Invalid pattern type {pattern_type}: only LITERAL and PREFIXED ACLs can be created"),
        };
        let operation = match Operation::from_code(operation) {
            Some(Operation::Any) | None => bail!("Invalid operation {operation}"),
            Some(o) => o,
        };
        let permission = match Permission::from_code(permission) {
            Some(Permission::Any) | None => bail!("Invalid permission type {permission}"),
            Some(p) => p,
        };
        if resource_name.is_empty() {
            bail!("Resource name must not be empty");
        }
        if resource_type == ResourceType::Cluster && resource_name != CLUSTER_NAME {
            bail!("The only valid name for the CLUSTER resource is {CLUSTER_NAME}");
        }
        if pattern_type == PatternType::Prefixed && resource_name == WILDCARD {
            bail!("A PREFIXED ACL cannot be named {WILDCARD}; use a LITERAL {WILDCARD}");
        }
        match principal.split_once(':') {
            Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {}
            _ => bail!("Could not parse principal from `{principal}` (no colon is found between the type and name)"),
        }
        if host.is_empty() {
            bail!("Host must not be empty; use {WILDCARD} for any host");
        }
        Ok(Self {
            resource_type,
            resource_name: resource_name.into(),
            pattern_type,
            principal: principal.into(),
            host: host.into(),
            operation,
            permission,
        })
    }

    pub fn row(&self) -> AclRow {
        AclRow {
            resource_type: self.resource_type.code(),
            resource_name: self.resource_name.clone(),
            pattern_type: self.pattern_type.code(),
            principal: self.principal.clone(),
            host: self.host.clone(),
            operation: self.operation.code(),
            permission: self.permission.code(),
        }
    }

    fn from_row(r: &AclRow) -> Result<Self> {
        Self::new(
            r.resource_type,
            &r.resource_name,
            r.pattern_type,
            &r.principal,
            &r.host,
            r.operation,
            r.permission,
        )
    }

    /// Whether this binding's resource pattern covers the resource `name`.
    fn covers(&self, kind: ResourceType, name: &str) -> bool {
        self.resource_type == kind
            && match self.pattern_type {
                PatternType::Literal => self.resource_name == name || self.resource_name == WILDCARD,
                PatternType::Prefixed => name.starts_with(&self.resource_name),
                _ => false,
            }
    }

    fn applies_to(&self, principal: &str, host: &str) -> bool {
        (self.principal == principal || self.principal == "User:*") && (self.host == host || self.host == WILDCARD)
    }
}

/// A DescribeAcls or DeleteAcls filter; None matches anything.
#[derive(Debug, Clone)]
pub struct AclFilter {
    pub resource_type: ResourceType,
    pub resource_name: Option<String>,
    pub pattern_type: PatternType,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Operation,
    pub permission: Permission,
}

impl AclFilter {
    pub fn new(
        resource_type: i8,
        resource_name: Option<&str>,
        pattern_type: i8,
        principal: Option<&str>,
        host: Option<&str>,
        operation: i8,
        permission: i8,
    ) -> Result<Self> {
        let (Some(rt), Some(pt), Some(op), Some(perm)) = (
            ResourceType::from_code(resource_type),
            PatternType::from_code(pattern_type),
            Operation::from_code(operation),
            Permission::from_code(permission),
        ) else {
            bail!(
                "Invalid ACL filter: resource type {resource_type}, pattern type {pattern_type}, \
                 operation {operation}, permission {permission}"
            );
        };
        Ok(Self {
            resource_type: rt,
            resource_name: resource_name.map(str::to_string),
            pattern_type: pt,
            principal: principal.map(str::to_string),
            host: host.map(str::to_string),
            operation: op,
            permission: perm,
        })
    }

    pub fn matches(&self, acl: &Acl) -> bool {
        let either = |f: &Option<String>, v: &str| f.as_deref().is_none_or(|f| f == v);
        let resource = match (self.pattern_type, &self.resource_name) {
            (PatternType::Any, _) | (PatternType::Match, None) => {
                either(&self.resource_name, &acl.resource_name)
                    && (self.resource_type == ResourceType::Any || self.resource_type == acl.resource_type)
            }
            // MATCH: every binding that would apply to a resource of this name.
            (PatternType::Match, Some(name)) => {
                (self.resource_type == ResourceType::Any || self.resource_type == acl.resource_type)
                    && acl.covers(acl.resource_type, name)
            }
            (pt, _) => {
                pt == acl.pattern_type
                    && either(&self.resource_name, &acl.resource_name)
                    && (self.resource_type == ResourceType::Any || self.resource_type == acl.resource_type)
            }
        };
        resource
            && either(&self.principal, &acl.principal)
            && either(&self.host, &acl.host)
            && (self.operation == Operation::Any || self.operation == acl.operation)
            && (self.permission == Permission::Any || self.permission == acl.permission)
    }
}

static DENIALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_authorization_denials_total",
        "Requests refused by the ACL authorizer, by resource type and operation",
        &["resource_type", "operation"]
    )
    .unwrap()
});

/// Decides requests against the bindings; shared by the Kafka, MQTT and HTTP front ends.
pub struct Authorizer {
    super_users: HashSet<String>,
    /// `allow.everyone.if.no.acl.found`: a resource no binding covers is open to all.
    allow_if_no_acl: bool,
    acls: RwLock<Arc<Vec<Acl>>>,
}

impl Authorizer {
    /// `super_users`: principals such as `User:admin` that every check lets through.
    pub fn new(super_users: impl IntoIterator<Item = String>, allow_if_no_acl: bool) -> Self {
        Self {
            super_users: super_users.into_iter().collect(),
            allow_if_no_acl,
            acls: RwLock::new(Arc::new(Vec::new())),
        }
    }

    pub fn acls(&self) -> Arc<Vec<Acl>> {
        self.acls.read().unwrap().clone()
    }

    pub fn set(&self, acls: Vec<Acl>) {
        *self.acls.write().unwrap() = Arc::new(acls);
    }

    /// Rereads the bindings from the store.
    pub async fn reload(&self, meta: &MetaStore) -> Result<()> {
        let rows = meta.list_acls().await?;
        let acls = rows
            .iter()
            .filter_map(|r| match Acl::from_row(r) {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!(acl = ?r, error = %e, "ignoring a stored ACL binding");
                    None
                }
            })
            .collect();
        self.set(acls);
        Ok(())
    }

    /// Reloads the bindings every [`REFRESH`] until the process ends.
    pub fn spawn_refresh(self: &Arc<Self>, meta: MetaStore) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = me.reload(&meta).await {
                    tracing::warn!(error = %format!("{e:#}"), "reloading ACLs");
                }
                tokio::time::sleep(REFRESH).await;
            }
        });
    }

    pub fn is_super_user(&self, principal: &str) -> bool {
        self.super_users.contains(principal)
    }

    /// Whether `principal` at `host` may do `op` on the resource; a refusal is logged and
    /// counted (Kafka's authorizer log).
    pub fn authorize(&self, principal: &str, host: &str, op: Operation, kind: ResourceType, name: &str) -> bool {
        let ok = self.permits(principal, host, op, kind, name);
        if !ok {
            DENIALS.with_label_values(&[kind.name(), op.name()]).inc();
            tracing::info!(
                target: "sluice::audit",
                principal, host, operation = op.name(), resource_type = kind.name(), resource = name,
                "authorization denied"
            );
        }
        ok
    }

    /// As [`Self::authorize`], without the audit: for listings that leave out what a
    /// principal may not see.
    pub fn permits(&self, principal: &str, host: &str, op: Operation, kind: ResourceType, name: &str) -> bool {
        if self.is_super_user(principal) {
            return true;
        }
        let acls = self.acls();
        let mut covering = acls.iter().filter(|a| a.covers(kind, name)).peekable();
        if covering.peek().is_none() {
            return self.allow_if_no_acl;
        }
        let mut allowed = false;
        for a in covering.filter(|a| a.applies_to(principal, host)) {
            match a.permission {
                Permission::Deny if a.operation == Operation::All || a.operation == op => return false,
                Permission::Allow if a.operation == Operation::All || implies(a.operation, op) => allowed = true,
                _ => {}
            }
        }
        allowed
    }

    /// Whether `principal` may do `op` on at least one resource of the kind (Kafka's
    /// authorizeByResourceType, used for idempotent producers without IDEMPOTENT_WRITE).
    pub fn permits_any(&self, principal: &str, host: &str, op: Operation, kind: ResourceType) -> bool {
        if self.is_super_user(principal) {
            return true;
        }
        let acls = self.acls();
        let applies = |a: &&Acl| a.resource_type == kind && a.applies_to(principal, host);
        let denied_everywhere = acls.iter().filter(applies).any(|a| {
            a.permission == Permission::Deny
                && (a.operation == Operation::All || a.operation == op)
                && a.pattern_type == PatternType::Literal
                && a.resource_name == WILDCARD
        });
        !denied_everywhere
            && acls.iter().filter(applies).any(|a| {
                a.permission == Permission::Allow && (a.operation == Operation::All || implies(a.operation, op))
            })
    }
}

/// Whether an ALLOW for `granted` also allows `wanted`: READ, WRITE, DELETE and ALTER imply
/// DESCRIBE; ALTER_CONFIGS implies DESCRIBE_CONFIGS.
fn implies(granted: Operation, wanted: Operation) -> bool {
    use Operation::*;
    granted == wanted
        || (wanted == Describe && matches!(granted, Read | Write | Delete | Alter))
        || (wanted == DescribeConfigs && granted == AlterConfigs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Operation::*;
    use ResourceType::*;

    fn acl(kind: ResourceType, name: &str, pattern: PatternType, who: &str, op: Operation, perm: Permission) -> Acl {
        Acl::new(kind.code(), name, pattern.code(), who, "*", op.code(), perm.code()).unwrap()
    }

    fn authorizer(acls: Vec<Acl>) -> Authorizer {
        let a = Authorizer::new(["User:admin".to_string()], false);
        a.set(acls);
        a
    }

    #[test]
    fn literal_prefixed_and_wildcard_names_match_as_in_kafka() {
        let a = authorizer(vec![
            acl(
                Topic,
                "orders",
                PatternType::Literal,
                "User:alice",
                Read,
                Permission::Allow,
            ),
            acl(
                Topic,
                "logs-",
                PatternType::Prefixed,
                "User:alice",
                Write,
                Permission::Allow,
            ),
            acl(Group, "*", PatternType::Literal, "User:*", Read, Permission::Allow),
        ]);
        assert!(a.authorize("User:alice", "10.0.0.1", Read, Topic, "orders"));
        assert!(!a.authorize("User:alice", "10.0.0.1", Read, Topic, "orders2"));
        assert!(a.authorize("User:alice", "10.0.0.1", Write, Topic, "logs-app"));
        assert!(!a.authorize("User:alice", "10.0.0.1", Write, Topic, "log"));
        assert!(!a.authorize("User:bob", "10.0.0.1", Read, Topic, "orders"));
        assert!(a.authorize("User:bob", "10.0.0.1", Read, Group, "any-group"));
        assert!(a.authorize("User:admin", "10.0.0.1", Delete, Topic, "orders"));
    }

    #[test]
    fn deny_wins_and_read_implies_describe_only() {
        let a = authorizer(vec![
            acl(Topic, "*", PatternType::Literal, "User:alice", All, Permission::Allow),
            acl(
                Topic,
                "secret",
                PatternType::Literal,
                "User:alice",
                Read,
                Permission::Deny,
            ),
            acl(
                Topic,
                "orders",
                PatternType::Literal,
                "User:bob",
                Read,
                Permission::Allow,
            ),
        ]);
        assert!(!a.authorize("User:alice", "h", Read, Topic, "secret"));
        assert!(a.authorize("User:alice", "h", Write, Topic, "secret"));
        assert!(a.authorize("User:bob", "h", Describe, Topic, "orders"));
        assert!(!a.authorize("User:bob", "h", Write, Topic, "orders"));
        assert!(!a.authorize("User:bob", "h", DescribeConfigs, Topic, "orders"));
    }

    #[test]
    fn hosts_and_the_no_acl_default_are_honoured() {
        let mut only_here = acl(Topic, "t", PatternType::Literal, "User:alice", Read, Permission::Allow);
        only_here.host = "10.0.0.1".into();
        let closed = authorizer(vec![only_here.clone()]);
        assert!(closed.authorize("User:alice", "10.0.0.1", Read, Topic, "t"));
        assert!(!closed.authorize("User:alice", "10.0.0.2", Read, Topic, "t"));
        assert!(!closed.authorize("User:alice", "10.0.0.1", Read, Topic, "uncovered"));
        let open = Authorizer::new([], true);
        open.set(vec![only_here]);
        assert!(open.authorize("User:bob", "h", Read, Topic, "uncovered"));
        assert!(!open.authorize("User:bob", "h", Read, Topic, "t"));
    }

    #[test]
    fn idempotent_writes_follow_write_on_any_topic() {
        let a = authorizer(vec![acl(
            Topic,
            "t-",
            PatternType::Prefixed,
            "User:alice",
            Write,
            Permission::Allow,
        )]);
        assert!(a.permits_any("User:alice", "h", Write, Topic));
        assert!(!a.permits_any("User:bob", "h", Write, Topic));
    }

    #[test]
    fn filters_match_like_describe_and_delete_acls() {
        let lit = acl(
            Topic,
            "orders",
            PatternType::Literal,
            "User:alice",
            Read,
            Permission::Allow,
        );
        let pre = acl(Topic, "ord", PatternType::Prefixed, "User:bob", Write, Permission::Deny);
        let any = AclFilter::new(1, None, 1, None, None, 1, 1).unwrap();
        assert!(any.matches(&lit) && any.matches(&pre));
        let matching = AclFilter::new(2, Some("orders"), 2, None, None, 1, 1).unwrap();
        assert!(matching.matches(&lit) && matching.matches(&pre));
        let literal = AclFilter::new(2, Some("orders"), 3, None, None, 1, 1).unwrap();
        assert!(literal.matches(&lit) && !literal.matches(&pre));
        let bobs = AclFilter::new(1, None, 1, Some("User:bob"), None, 1, 2).unwrap();
        assert!(!bobs.matches(&lit) && bobs.matches(&pre));
    }

    #[test]
    fn invalid_bindings_are_refused() {
        assert!(Acl::new(1, "t", 3, "User:a", "*", 3, 3).is_err());
        assert!(Acl::new(2, "t", 2, "User:a", "*", 3, 3).is_err());
        assert!(Acl::new(2, "t", 3, "alice", "*", 3, 3).is_err());
        assert!(Acl::new(4, "other", 3, "User:a", "*", 7, 3).is_err());
        assert!(Acl::new(2, "t", 3, "User:a", "*", 1, 3).is_err());
        assert!(Acl::new(2, "t", 3, "User:a", "*", 3, 1).is_err());
        assert!(Acl::new(4, CLUSTER_NAME, 3, "User:a", "*", 7, 3).is_ok());
    }
}
