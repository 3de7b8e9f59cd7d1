//! TLS for every listener: the server certificate and key (a chain is allowed), optional
//! client certificate verification, and reloading all of them from disk on SIGHUP or
//! when a file changes, without a restart. Connections already open keep their session.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::principal::{subject_dn, PrincipalRules};

/// The PEM files TLS is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to: turns on mutual TLS.
    pub client_ca: Option<PathBuf>,
}

/// How a listener treats client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Not asked for.
    None,
    /// Asked for and verified if sent (a SASL listener takes its principal from SASL).
    Optional,
    /// Required and verified: the principal is the certificate's subject.
    Required,
}

struct Configs {
    none: Arc<ServerConfig>,
    optional: Arc<ServerConfig>,
    required: Arc<ServerConfig>,
    stamps: Vec<Option<SystemTime>>,
}

/// Server TLS configurations that reload from their files.
pub struct Tls {
    files: TlsFiles,
    configs: RwLock<Configs>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn load(files: &TlsFiles) -> Result<Configs> {
    let stamps = stamps(files);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("reading TLS certificate {}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing TLS certificate {}", files.cert.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", files.cert.display());
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key).with_context(|| format!("reading TLS key {}", files.key.display()))?;
    let build = |verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>| -> Result<Arc<ServerConfig>> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match verifier {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs.clone(), key.clone_key())
            .context("the TLS certificate does not match its key")?;
        Ok(Arc::new(config))
    };
    let none = build(None)?;
    let (optional, required) = match &files.client_ca {
        None => (none.clone(), none.clone()),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in
                CertificateDer::pem_file_iter(ca).with_context(|| format!("reading client CA {}", ca.display()))?
            {
                roots
                    .add(cert.with_context(|| format!("parsing client CA {}", ca.display()))?)
                    .with_context(|| format!("adding client CA {}", ca.display()))?;
            }
            let roots = Arc::new(roots);
            let verifier = |optional: bool| {
                let b = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
                let b = if optional { b.allow_unauthenticated() } else { b };
                b.build().context("building the client certificate verifier")
            };
            (build(Some(verifier(true)?))?, build(Some(verifier(false)?))?)
        }
    };
    Ok(Configs {
        none,
        optional,
        required,
        stamps,
    })
}

impl Tls {
    /// Loads the files, failing if any is missing or invalid.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>> {
        let configs = load(&files)?;
        Ok(Arc::new(Self {
            files,
            configs: RwLock::new(configs),
        }))
    }

    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// An acceptor with the current certificates.
    pub fn acceptor(&self, auth: ClientAuth) -> TlsAcceptor {
        let c = self.configs.read().unwrap();
        TlsAcceptor::from(match auth {
            ClientAuth::None => c.none.clone(),
            ClientAuth::Optional => c.optional.clone(),
            ClientAuth::Required => c.required.clone(),
        })
    }

    /// The TLS handshake of an accepted connection, within `HANDSHAKE_TIMEOUT`. With
    /// `rules`, also the principal of the client's certificate if it sent one, mapped by
    /// them (a certificate whose subject cannot be read fails the connection); without,
    /// the certificate names no one.
    pub async fn accept<S>(
        &self,
        stream: S,
        auth: ClientAuth,
        rules: Option<&PrincipalRules>,
    ) -> Result<(TlsStream<S>, Option<String>)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor(auth).accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => bail!("TLS handshake failed: {e}"),
            Err(_) => bail!("TLS handshake timed out"),
        };
        let principal = match (rules, stream.get_ref().1.peer_certificates()) {
            (Some(rules), Some([cert, ..])) => Some(rules.map(&subject_dn(cert)?)),
            _ => None,
        };
        Ok((stream, principal))
    }

    /// Re-reads the files. On failure the certificates in use stay.
    pub fn reload(&self) -> Result<()> {
        let configs = load(&self.files)?;
        *self.configs.write().unwrap() = configs;
        tracing::info!(cert = %self.files.cert.display(), "TLS certificates reloaded");
        Ok(())
    }

    /// Reloads on SIGHUP, and when a file's modification time changes (checked every `poll`).
    pub fn watch(self: &Arc<Self>, poll: Duration) {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "no SIGHUP handler; certificates reload on file change only");
                    return;
                }
            };
            let mut tick = tokio::time::interval(poll);
            loop {
                let forced = tokio::select! {
                    _ = hup.recv() => true,
                    _ = tick.tick() => false,
                };
                let changed = forced || stamps(&tls.files) != tls.configs.read().unwrap().stamps;
                if changed {
                    if let Err(e) = tls.reload() {
                        tracing::error!(error = %format!("{e:#}"), "reloading TLS certificates failed; keeping the old ones");
                        // Do not retry a broken file every tick: wait for the next change.
                        tls.configs.write().unwrap().stamps = stamps(&tls.files);
                    }
                }
            }
        });
    }
}

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
