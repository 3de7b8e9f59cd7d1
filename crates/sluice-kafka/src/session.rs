//! A connection's security: the listener it came in on, its principal, and SASL
//! authentication (SaslHandshake, SaslAuthenticate, KIP-368 re-authentication). On a SASL
//! listener nothing but ApiVersions and the SASL requests is served before authentication.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use sluice_auth::{Authorizer, Operation, PrincipalRules, ResourceType, Sasl, SecurityProtocol, Step, Tls};
use sluice_meta::BrokerRow;

use crate::errors::str as s;
use crate::{Broker, METRICS};

/// How one Kafka listener is secured.
pub struct ListenerConfig {
    pub protocol: SecurityProtocol,
    /// Certificates for SSL and SASL_SSL.
    pub tls: Option<Arc<Tls>>,
    /// `ssl.principal.mapping.rules` for client certificates on SSL.
    pub principal_rules: PrincipalRules,
    /// `connections.max.reauth.ms`: a SASL session's lifetime; None for no limit.
    pub reauth: Option<Duration>,
    /// Whether this listener is the first one, which brokers registered before listener
    /// lists existed advertise as their plain host and port.
    pub first: bool,
}

impl ListenerConfig {
    pub fn plaintext() -> Self {
        Self {
            protocol: SecurityProtocol::Plaintext,
            tls: None,
            principal_rules: PrincipalRules::default(),
            reauth: None,
            first: true,
        }
    }

    /// Where clients of this listener reach broker `b`; None if it has no such listener.
    pub(crate) fn endpoint(&self, b: &BrokerRow) -> Option<(String, i32)> {
        if b.listeners.is_empty() {
            return self.first.then(|| (b.host.clone(), b.port));
        }
        sluice_auth::listener::endpoint_of(&b.listeners, self.protocol.name())
    }
}

/// Kafka's connection.failed.authentication.delay.ms: a failed attempt is answered this
/// late, which slows password guessing from one connection.
const FAILED_AUTH_DELAY: Duration = Duration::from_millis(100);

/// Failed SASL attempts per client address, across connections and listeners.
static FAILURES: std::sync::LazyLock<sluice_auth::limit::FailureLimiter> = std::sync::LazyLock::new(Default::default);

enum Auth {
    /// A listener without SASL.
    Open,
    AwaitHandshake,
    AwaitAuthenticate(Sasl, &'static str),
    Authenticated {
        expires: Option<Instant>,
    },
    /// Re-authenticating (KIP-368): requests are still served meanwhile.
    Reauthenticating(Sasl, &'static str, Option<Instant>),
}

pub(crate) struct Session {
    pub listener: Arc<ListenerConfig>,
    pub peer: SocketAddr,
    /// `User:name`: the SASL user, the client certificate's mapped subject, or ANONYMOUS.
    pub principal: String,
    auth: Auth,
    /// SaslHandshake v0 was used: the tokens come as bare frames, not SaslAuthenticate.
    raw_tokens: bool,
    /// The ACL authorizer, with `--authorization acl`.
    authorizer: Option<Arc<Authorizer>>,
    /// The client's address as ACL bindings name hosts.
    host: String,
}

impl Session {
    pub fn new(
        listener: Arc<ListenerConfig>,
        peer: SocketAddr,
        cert_principal: Option<String>,
        authorizer: Option<Arc<Authorizer>>,
    ) -> Self {
        let auth = if listener.protocol.sasl() {
            Auth::AwaitHandshake
        } else {
            Auth::Open
        };
        let principal = format!("User:{}", cert_principal.as_deref().unwrap_or("ANONYMOUS"));
        Self {
            listener,
            peer,
            principal,
            auth,
            raw_tokens: false,
            authorizer,
            host: peer.ip().to_canonical().to_string(),
        }
    }

    /// Whether this principal may do `op` on the resource: always without an authorizer.
    /// A refusal is logged and counted.
    pub fn allowed(&self, op: Operation, kind: ResourceType, name: &str) -> bool {
        self.authorizer
            .as_ref()
            .is_none_or(|a| a.authorize(&self.principal, &self.host, op, kind, name))
    }

    pub fn allowed_topic(&self, op: Operation, topic: &str) -> bool {
        self.allowed(op, ResourceType::Topic, topic)
    }

    pub fn allowed_group(&self, op: Operation, group: &str) -> bool {
        self.allowed(op, ResourceType::Group, group)
    }

    pub fn allowed_txn(&self, op: Operation, transactional_id: &str) -> bool {
        self.allowed(op, ResourceType::TransactionalId, transactional_id)
    }

    pub fn allowed_cluster(&self, op: Operation) -> bool {
        self.allowed(op, ResourceType::Cluster, sluice_auth::acl::CLUSTER_NAME)
    }

    /// As [`Self::allowed`] but silent: for listings that leave out what may not be seen.
    pub fn sees(&self, op: Operation, kind: ResourceType, name: &str) -> bool {
        self.authorizer
            .as_ref()
            .is_none_or(|a| a.permits(&self.principal, &self.host, op, kind, name))
    }

    /// Whether this principal may do `op` on some resource of the kind.
    pub fn allowed_any(&self, op: Operation, kind: ResourceType) -> bool {
        self.authorizer
            .as_ref()
            .is_none_or(|a| a.permits_any(&self.principal, &self.host, op, kind))
    }

    pub fn authorizer(&self) -> Option<&Arc<Authorizer>> {
        self.authorizer.as_ref()
    }

    /// Whether the next frame is a bare SASL token (after SaslHandshake v0).
    pub fn expects_raw_token(&self) -> bool {
        self.raw_tokens && matches!(self.auth, Auth::AwaitAuthenticate(..) | Auth::Reauthenticating(..))
    }

    /// Fails (closing the connection) for a request this session may not make yet.
    pub fn check(&self, key: ApiKey) -> Result<()> {
        if key == ApiKey::ApiVersions {
            return Ok(());
        }
        let expired = |e: &Option<Instant>| e.is_some_and(|t| Instant::now() >= t);
        match &self.auth {
            Auth::Open => Ok(()),
            Auth::Authenticated { expires } | Auth::Reauthenticating(_, _, expires) if !expired(expires) => Ok(()),
            Auth::Authenticated { .. } | Auth::Reauthenticating(..) => {
                METRICS.closed_bad_frames.with_label_values(&["session_expired"]).inc();
                bail!("{key:?} after the SASL session of {} expired", self.principal)
            }
            _ => {
                METRICS.closed_bad_frames.with_label_values(&["unauthenticated"]).inc();
                bail!("ILLEGAL_SASL_STATE: {key:?} before SASL authentication")
            }
        }
    }

    pub fn handshake(&mut self, req: SaslHandshakeRequest, version: i16) -> SaslHandshakeResponse {
        let offered = sluice_auth::sasl::MECHANISMS.iter().map(|m| s(m)).collect();
        let resp = SaslHandshakeResponse::default().with_mechanisms(offered);
        let expires = match &self.auth {
            Auth::AwaitHandshake => None,
            Auth::Authenticated { expires } => Some(*expires),
            _ => return resp.with_error_code(ResponseError::IllegalSaslState.code()),
        };
        let mechanism = sluice_auth::sasl::MECHANISMS
            .iter()
            .find(|m| **m == req.mechanism.as_str());
        let (Some(mechanism), Some(sasl)) = (mechanism, Sasl::new(req.mechanism.as_str())) else {
            return resp.with_error_code(ResponseError::UnsupportedSaslMechanism.code());
        };
        self.raw_tokens = version == 0;
        self.auth = match expires {
            None => Auth::AwaitAuthenticate(sasl, mechanism),
            Some(expires) => Auth::Reauthenticating(sasl, mechanism, expires),
        };
        resp
    }

    /// One SaslAuthenticate round. The flag says whether to close the connection after
    /// the response (authentication failed).
    pub async fn authenticate(
        &mut self,
        broker: &Broker,
        req: SaslAuthenticateRequest,
    ) -> (SaslAuthenticateResponse, bool) {
        let (sasl, mechanism, reauth) = match &mut self.auth {
            Auth::AwaitAuthenticate(sasl, m) => (sasl, *m, false),
            Auth::Reauthenticating(sasl, m, _) => (sasl, *m, true),
            _ => {
                let resp = SaslAuthenticateResponse::default()
                    .with_error_code(ResponseError::IllegalSaslState.code())
                    .with_error_message(Some(s("SaslAuthenticate before SaslHandshake")));
                return (resp, true);
            }
        };
        if !FAILURES.allows(self.peer.ip()) {
            let why = "too many failed authentications from this address; retry later";
            return self.failed(mechanism, "unknown", why).await;
        }
        match sasl.step(&req.auth_bytes, broker.log.meta()).await {
            Ok(Step::Continue(challenge)) => (
                SaslAuthenticateResponse::default().with_auth_bytes(challenge.into()),
                false,
            ),
            Ok(Step::Done { user, reply }) => {
                let principal = format!("User:{user}");
                if reauth && principal != self.principal {
                    // KIP-368: re-authentication may not change who the connection is.
                    return self
                        .failed(mechanism, &principal, "re-authentication may not change the principal")
                        .await;
                }
                let lifetime = self.listener.reauth;
                FAILURES.succeeded(self.peer.ip());
                self.principal = principal;
                self.raw_tokens = false;
                self.auth = Auth::Authenticated {
                    expires: lifetime.map(|l| Instant::now() + l),
                };
                METRICS
                    .authentications
                    .with_label_values(&[mechanism, if reauth { "reauthenticated" } else { "ok" }])
                    .inc();
                tracing::debug!(principal = %self.principal, peer = %self.peer, mechanism, reauth, "authenticated");
                let resp = SaslAuthenticateResponse::default()
                    .with_auth_bytes(reply.into())
                    .with_session_lifetime_ms(lifetime.map_or(0, |l| l.as_millis() as i64));
                (resp, false)
            }
            Err(failure) => {
                let claimed = sluice_auth::sasl::claimed_user(mechanism, &req.auth_bytes)
                    .map(|u| format!("User:{u}"))
                    .unwrap_or_else(|| "unknown".into());
                self.failed(mechanism, &claimed, &failure.0).await
            }
        }
    }

    async fn failed(&mut self, mechanism: &str, principal: &str, reason: &str) -> (SaslAuthenticateResponse, bool) {
        METRICS.authentications.with_label_values(&[mechanism, "failed"]).inc();
        FAILURES.failed(self.peer.ip());
        tracing::warn!(
            target: "sluice::audit",
            principal,
            client = %self.peer,
            mechanism,
            listener = self.listener.protocol.name(),
            reason,
            "authentication failed"
        );
        self.auth = Auth::AwaitHandshake;
        tokio::time::sleep(FAILED_AUTH_DELAY).await;
        let resp = SaslAuthenticateResponse::default()
            .with_error_code(ResponseError::SaslAuthenticationFailed.code())
            .with_error_message(Some(s(reason)));
        (resp, true)
    }
}
