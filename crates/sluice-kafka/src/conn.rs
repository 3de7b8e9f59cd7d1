//! One client connection: size-prefixed frames in, responses out in request
//! order. Requests are read and started in order (so a connection's produce
//! requests reach the log in order) while their responses may still be
//! pending, which lets clients pipeline.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use kafka_protocol::messages::{ApiKey, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Encodable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::{api, Broker, METRICS};

/// A response still being worked out, or none at all (acks=0 produce).
pub(crate) enum Reply {
    Now(Box<ResponseKind>),
    Later(BoxFuture<'static, ResponseKind>),
    None,
}

/// Requests in flight on one connection before reading pauses.
const MAX_IN_FLIGHT: usize = 64;

struct Pending {
    /// When the request was read whole, and its API's name, for the request-time metric.
    read: (Instant, &'static str),
    correlation_id: i32,
    header_version: i16,
    api_version: i16,
    reply: Reply,
}

pub(crate) async fn run(stream: TcpStream, broker: Arc<Broker>) -> Result<()> {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Pending>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(async move {
        let mut out = BytesMut::new();
        while let Some(p) = rx.recv().await {
            let body = match p.reply {
                Reply::Now(r) => *r,
                Reply::Later(f) => f.await,
                Reply::None => continue,
            };
            out.clear();
            if let Err(e) = encode_response(&mut out, p.correlation_id, p.header_version, p.api_version, &body) {
                tracing::error!(error = %e, "encoding response failed; closing connection");
                break;
            }
            if wr.write_all(&out).await.is_err() {
                break;
            }
            let (read, api) = p.read;
            METRICS
                .request_seconds
                .with_label_values(&[api])
                .observe(read.elapsed().as_secs_f64());
        }
        let _ = wr.shutdown().await;
    });

    let result = read_loop(&mut rd, &broker, &tx).await;
    drop(tx);
    let _ = writer.await;
    result
}

async fn read_loop(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    broker: &Arc<Broker>,
    tx: &mpsc::Sender<Pending>,
) -> Result<()> {
    loop {
        let mut size = [0u8; 4];
        match rd.read_exact(&mut size).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let size = i32::from_be_bytes(size);
        if size < 8 || size as usize > broker.config.max_frame_bytes {
            METRICS.closed_bad_frames.with_label_values(&["frame_size"]).inc();
            bail!("frame size {size} outside 8..={}", broker.config.max_frame_bytes);
        }
        // Read into spare capacity: zeroing a frame first (up to the 100 MiB limit) was 5 % of
        // the broker's CPU at full produce speed. `take` stops at the frame's end.
        let mut frame = BytesMut::with_capacity(size as usize);
        let mut body = (&mut *rd).take(size as u64);
        while frame.len() < size as usize {
            if body.read_buf(&mut frame).await? == 0 {
                bail!("truncated frame");
            }
        }
        let pending = match handle_frame(frame.freeze(), broker).await {
            Ok(p) => p,
            Err(e) => {
                METRICS.closed_bad_frames.with_label_values(&["bad_request"]).inc();
                return Err(e);
            }
        };
        if tx.send(pending).await.is_err() {
            return Ok(());
        }
    }
}

/// Decodes one request frame and starts handling it.
async fn handle_frame(frame: Bytes, broker: &Arc<Broker>) -> Result<Pending> {
    let read = Instant::now();
    let (key, version) = ((&frame[0..2]).get_i16(), (&frame[2..4]).get_i16());
    let correlation_id = (&frame[4..8]).get_i32();
    if let (Ok(ApiKey::ApiVersions), Some((min, max))) = (ApiKey::try_from(key), api::advertised(ApiKey::ApiVersions)) {
        if version < min || version > max {
            // KIP-511: answer in v0 with the supported versions so the client can retry.
            return Ok(Pending {
                read: (read, "ApiVersions"),
                correlation_id,
                header_version: 0,
                api_version: 0,
                reply: Reply::Now(Box::new(api::unsupported_version_response())),
            });
        }
    }
    let (header, body) = api::decode_request(frame)?;
    let api_key = ApiKey::try_from(header.request_api_key).map_err(|_| anyhow::anyhow!("unknown API key"))?;
    METRICS.requests.with_label_values(&[api::name(api_key)]).inc();
    let reply = api::dispatch(broker, &header, body).await?;
    Ok(Pending {
        read: (read, api::name(api_key)),
        correlation_id,
        header_version: api_key.response_header_version(version),
        api_version: version,
        reply,
    })
}

fn encode_response(
    out: &mut BytesMut,
    correlation_id: i32,
    header_version: i16,
    api_version: i16,
    body: &ResponseKind,
) -> Result<()> {
    out.put_i32(0); // size, filled in below
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(out, header_version)?;
    body.encode(out, api_version)?;
    let size = (out.len() - 4) as i32;
    out[0..4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}
