//! One TCP connection to one broker: framing, headers, correlation ids and
//! API version negotiation.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Message, Request, StrBytes, VersionRange};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::check;

/// Largest response frame we accept (a fetch is bounded by its max_bytes).
const MAX_FRAME: usize = 1 << 30;
/// Kafka error code UNSUPPORTED_VERSION.
const UNSUPPORTED_VERSION: i16 = 35;

/// A connection to one broker, after the ApiVersions handshake.
///
/// Requests are sent one at a time (one in flight); responses are matched by
/// correlation id. After an I/O error or timeout the connection is marked
/// broken and must be replaced.
pub struct Connection {
    addr: String,
    stream: TcpStream,
    client_id: StrBytes,
    next_correlation_id: i32,
    broker_versions: HashMap<i16, VersionRange>,
    request_timeout: Duration,
    broken: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connect to `addr` (`host:port`) and negotiate API versions.
    pub async fn connect(addr: &str, client_id: &str, request_timeout: Duration) -> Result<Self> {
        let stream = tokio::time::timeout(request_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connecting to {addr}: timed out after {request_timeout:?}"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).ok();
        let mut conn = Self {
            addr: addr.to_string(),
            stream,
            client_id: StrBytes::from_string(client_id.to_string()),
            next_correlation_id: 0,
            broker_versions: HashMap::new(),
            request_timeout,
            broken: false,
        };
        conn.negotiate()
            .await
            .with_context(|| format!("ApiVersions handshake with {addr}"))?;
        Ok(conn)
    }

    /// The `host:port` this connection was made to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether an I/O error or timeout has made this connection unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The version range the broker advertised for `key`, if any.
    pub fn broker_versions(&self, key: ApiKey) -> Option<VersionRange> {
        self.broker_versions.get(&(key as i16)).copied()
    }

    /// The version to use for request type `R`: the highest both sides support.
    pub fn version<R: Request>(&self) -> Result<i16> {
        self.version_capped::<R>(i16::MAX)
    }

    /// Like [`Connection::version`], but never above `cap`.
    pub fn version_capped<R: Request>(&self, cap: i16) -> Result<i16> {
        let key = api_key::<R>()?;
        let ours = VersionRange {
            min: R::VERSIONS.min,
            max: R::VERSIONS.max.min(cap),
        };
        let theirs = self
            .broker_versions(key)
            .ok_or_else(|| anyhow!("broker {} does not support the {key:?} API", self.addr))?;
        let both = ours.intersect(&theirs);
        if both.is_empty() {
            bail!(
                "broker {} supports {key:?} versions {theirs}, this client {ours}: no common version",
                self.addr
            );
        }
        Ok(both.max)
    }

    /// Send `req` at `version` and wait for its response.
    pub async fn request<R: Request>(&mut self, req: &R, version: i16) -> Result<R::Response> {
        let timeout = self.request_timeout;
        self.request_with_timeout(req, version, timeout).await
    }

    /// Like [`Connection::request`] with an explicit timeout (e.g. a fetch's
    /// max_wait plus the usual request timeout).
    pub async fn request_with_timeout<R: Request>(
        &mut self,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response> {
        let key = api_key::<R>()?;
        let mut body = self
            .round_trip(key, version, req, true, timeout)
            .await?
            .expect("a response was expected");
        R::Response::decode(&mut body, version)
            .with_context(|| format!("decoding {key:?} v{version} response from {}", self.addr))
    }

    /// Send `req` without waiting for a response (Produce with acks=0, to which
    /// the broker does not answer).
    pub async fn send_only<R: Request>(&mut self, req: &R, version: i16) -> Result<()> {
        let key = api_key::<R>()?;
        let timeout = self.request_timeout;
        self.round_trip(key, version, req, false, timeout).await?;
        Ok(())
    }

    async fn round_trip<E: Encodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &E,
        expect_response: bool,
        timeout: Duration,
    ) -> Result<Option<Bytes>> {
        if self.broken {
            bail!("connection to {} is broken", self.addr);
        }
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let mut frame = BytesMut::with_capacity(64);
        frame.put_i32(0);
        header.encode(&mut frame, key.request_header_version(version))?;
        req.encode(&mut frame, version)
            .with_context(|| format!("encoding {key:?} v{version} request"))?;
        let len = i32::try_from(frame.len() - 4).context("request too large")?;
        frame[0..4].copy_from_slice(&len.to_be_bytes());

        let io = async {
            self.stream.write_all(&frame).await?;
            if !expect_response {
                return Ok::<_, std::io::Error>(None);
            }
            let size = self.stream.read_i32().await?;
            if size < 0 || size as usize > MAX_FRAME {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("invalid response size {size}"),
                ));
            }
            let mut buf = vec![0u8; size as usize];
            self.stream.read_exact(&mut buf).await?;
            Ok(Some(Bytes::from(buf)))
        };
        let res = match tokio::time::timeout(timeout, io).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.broken = true;
                return Err(anyhow::Error::new(e).context(format!("{key:?} request to {}", self.addr)));
            }
            Err(_) => {
                self.broken = true;
                bail!("{key:?} request to {} timed out after {timeout:?}", self.addr);
            }
        };
        let Some(mut body) = res else {
            return Ok(None);
        };
        let header = ResponseHeader::decode(&mut body, key.response_header_version(version))
            .with_context(|| format!("decoding {key:?} response header from {}", self.addr))?;
        if header.correlation_id != correlation_id {
            self.broken = true;
            bail!(
                "{key:?} response from {} has correlation id {}, expected {correlation_id}",
                self.addr,
                header.correlation_id
            );
        }
        Ok(Some(body))
    }

    async fn negotiate(&mut self) -> Result<()> {
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("sluice-client"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let mut version = ApiVersionsRequest::VERSIONS.max;
        for _attempt in 0..2 {
            let timeout = self.request_timeout;
            let body = self
                .round_trip(ApiKey::ApiVersions, version, &req, true, timeout)
                .await?
                .expect("a response was expected");
            let error_code = body
                .get(0..2)
                .map(|b| i16::from_be_bytes([b[0], b[1]]))
                .context("empty ApiVersions response")?;
            // A broker that does not know our version answers in v0 with
            // UNSUPPORTED_VERSION and its own ApiVersions range (KIP-511).
            let decode_version = if error_code == UNSUPPORTED_VERSION { 0 } else { version };
            let resp = ApiVersionsResponse::decode(&mut body.clone(), decode_version)
                .context("decoding ApiVersions response")?;
            if error_code == UNSUPPORTED_VERSION {
                let theirs = resp
                    .api_keys
                    .iter()
                    .find(|k| k.api_key == ApiKey::ApiVersions as i16)
                    .map(|k| k.max_version)
                    .unwrap_or(0);
                let next = theirs.min(ApiVersionsRequest::VERSIONS.max);
                if next >= version {
                    break;
                }
                version = next;
                continue;
            }
            check(resp.error_code, None, || "ApiVersions".to_string())?;
            self.broker_versions = resp
                .api_keys
                .iter()
                .map(|k| {
                    (
                        k.api_key,
                        VersionRange {
                            min: k.min_version,
                            max: k.max_version,
                        },
                    )
                })
                .collect();
            return Ok(());
        }
        bail!("broker rejected every ApiVersions version this client can send")
    }
}

fn api_key<R: Request>() -> Result<ApiKey> {
    ApiKey::try_from(R::KEY).map_err(|_| anyhow!("unknown API key {}", R::KEY))
}
