//! Security for the HTTP listeners (REST admin, metrics, schema registry): https:// with
//! the broker's certificates, and HTTP Basic authentication against the user store.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use prometheus::{register_int_counter_vec, IntCounterVec};
use sluice_meta::MetaStore;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::acl::CLUSTER_NAME;
use crate::{Authorizer, ClientAuth, Operation, ResourceType, ScramMechanism, Tls};

/// Who made an HTTP request: `User:name` after Basic authentication. Absent, the request
/// is anonymous.
#[derive(Debug, Clone)]
pub struct Principal(pub String);

/// The client's address, for handlers and middleware: `ConnectInfo<ClientAddr>`.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// Serves `router` on `listener` until it fails: over TLS when `tls` is given.
pub async fn serve(listener: TcpListener, router: Router, tls: Option<Arc<Tls>>) -> Result<()> {
    let app = router.into_make_service_with_connect_info::<ClientAddr>();
    match tls {
        None => axum::serve(listener, app).await?,
        Some(tls) => axum::serve(TlsListener::start(listener, tls), app).await?,
    }
    Ok(())
}

/// Accepted TLS connections, each handshaken on its own task so a slow client delays no
/// other.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    fn start(listener: TcpListener, tls: Arc<Tls>) -> Self {
        let local = listener.local_addr().expect("a bound listener has an address");
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting an HTTPS connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (tx, tls) = (tx.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls.accept(stream, ClientAuth::None, None).await {
                        Ok((s, _)) => {
                            let _ = tx.send((s, peer)).await;
                        }
                        Err(e) => tracing::debug!(%peer, error = %format!("{e:#}"), "HTTPS connection refused"),
                    }
                });
            }
        });
        Self { local, ready }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop never ends; should it, serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

static FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_http_authentication_failures_total",
        "HTTP requests refused 401 for missing or wrong Basic credentials",
        &["reason"]
    )
    .unwrap()
});

/// How long a verified user and password pair is trusted without hashing it again
/// (PBKDF2 costs milliseconds per request otherwise).
const VERIFIED_FOR: Duration = Duration::from_secs(10);

/// HTTP Basic authentication against the SCRAM users of the metadata store.
pub struct BasicAuth {
    meta: MetaStore,
    /// Paths served without credentials (`/health`, and `/metrics` if so configured).
    open: Vec<String>,
    /// sha256(user NUL password) → when it was verified.
    verified: Mutex<HashMap<Vec<u8>, Instant>>,
}

impl BasicAuth {
    pub fn new(meta: MetaStore, open: impl IntoIterator<Item = String>) -> Arc<Self> {
        Arc::new(Self {
            meta,
            open: open.into_iter().collect(),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Requires Basic credentials on every route of `router` except the open paths.
    pub fn protect(self: &Arc<Self>, router: Router) -> Router {
        router.layer(axum::middleware::from_fn_with_state(self.clone(), require_basic))
    }

    async fn verify(&self, user: &str, password: &str) -> bool {
        let key = ring::digest::digest(&ring::digest::SHA256, format!("{user}\0{password}").as_bytes());
        let key = key.as_ref().to_vec();
        if let Some(at) = self.verified.lock().unwrap().get(&key) {
            if at.elapsed() < VERIFIED_FOR {
                return true;
            }
        }
        let rows = match self.meta.scram_for(user).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading users for HTTP authentication");
                return false;
            }
        };
        let ok = ScramMechanism::verify_any(&rows, password);
        let mut verified = self.verified.lock().unwrap();
        verified.retain(|_, at| at.elapsed() < VERIFIED_FOR);
        if ok {
            verified.insert(key, Instant::now());
        }
        ok
    }
}

/// `router` behind Basic authentication, if it is on.
pub fn protect(router: Router, basic: Option<&Arc<BasicAuth>>) -> Router {
    match basic {
        Some(b) => b.protect(router),
        None => router,
    }
}

/// Who sent a request and from where, as the authorizer takes them: the Basic-authenticated
/// principal (`User:ANONYMOUS` without one) and the client's IP address.
pub fn identity(req: &Request) -> (String, String) {
    let principal = req
        .extensions()
        .get::<Principal>()
        .map_or_else(|| "User:ANONYMOUS".to_string(), |p| p.0.clone());
    let host = req
        .extensions()
        .get::<axum::extract::ConnectInfo<ClientAddr>>()
        .map_or_else(String::new, |c| c.0 .0.ip().to_canonical().to_string());
    (principal, host)
}

/// Under ACLs the REST API (`/api/...`) is the cluster's, as Kafka's admin APIs are: reads
/// need DESCRIBE on the cluster, changes ALTER. `/health` and `/metrics` need no ACL. Apply
/// inside [`protect`], which sets the principal.
pub fn require_cluster_acls(router: Router, authorizer: Option<Arc<Authorizer>>) -> Router {
    match authorizer {
        Some(a) => router.layer(axum::middleware::from_fn_with_state(a, check_cluster_acl)),
        None => router,
    }
}

async fn check_cluster_acl(State(authorizer): State<Arc<Authorizer>>, req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with("/api/") {
        return next.run(req).await;
    }
    let op = match *req.method() {
        Method::GET | Method::HEAD => Operation::Describe,
        _ => Operation::Alter,
    };
    let (principal, host) = identity(&req);
    if authorizer.authorize(&principal, &host, op, ResourceType::Cluster, CLUSTER_NAME) {
        return next.run(req).await;
    }
    let message = format!("{principal} is not authorized to {} the cluster", op.name());
    (
        StatusCode::FORBIDDEN,
        axum::Json(serde_json::json!({"error_code": 403, "message": message})),
    )
        .into_response()
}

/// `user:password` of an `Authorization: Basic ...` header.
fn basic_credentials(req: &Request) -> Option<(String, String)> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let (user, password) = String::from_utf8(decoded)
        .ok()?
        .split_once(':')
        .map(|(u, p)| (u.to_string(), p.to_string()))?;
    Some((user, password))
}

async fn require_basic(State(auth): State<Arc<BasicAuth>>, mut req: Request, next: Next) -> Response {
    if auth.open.iter().any(|p| p == req.uri().path()) {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<ClientAddr>>()
        .map(|c| c.0 .0.to_string())
        .unwrap_or_default();
    let reason = match basic_credentials(&req) {
        None => "missing",
        Some((user, password)) if auth.verify(&user, &password).await => {
            req.extensions_mut().insert(Principal(format!("User:{user}")));
            return next.run(req).await;
        }
        Some((user, _)) => {
            tracing::warn!(target: "sluice::audit", principal = %format!("User:{user}"), client = %peer,
                path = %req.uri().path(), "HTTP authentication failed");
            "failed"
        }
    };
    FAILURES.with_label_values(&[reason]).inc();
    let body = serde_json::json!({"error_code": 401, "message": "Unauthorized"});
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"sluice\", charset=\"UTF-8\"")],
        axum::Json(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(auth: Option<&str>) -> Request {
        let mut b = axum::http::Request::builder().uri("/x");
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn basic_credentials_are_decoded_and_bad_headers_refused() {
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:pw:with:colons")
        );
        assert_eq!(
            basic_credentials(&request(Some(&good))),
            Some(("alice".into(), "pw:with:colons".into()))
        );
        assert_eq!(basic_credentials(&request(None)), None);
        assert_eq!(basic_credentials(&request(Some("Bearer abc"))), None);
        assert_eq!(basic_credentials(&request(Some("Basic !!!"))), None);
        let no_colon = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice"));
        assert_eq!(basic_credentials(&request(Some(&no_colon))), None);
    }
}
