//! One client connection: size-prefixed frames in, responses out in request
//! order. Requests are read and started in order (so a connection's produce
//! requests reach the log in order) while their responses may still be
//! pending, which lets clients pipeline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, FetchResponse, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::Encodable;
use sluice_auth::{ClientAuth, SecurityProtocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::reply::Reply;
use crate::session::{ListenerConfig, Session};
use crate::{api, Broker, METRICS};

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

/// Serves one accepted connection: the TLS handshake first on a TLS listener.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    listener: Arc<ListenerConfig>,
) -> Result<()> {
    let wake = WakeThreshold(std::os::fd::AsRawFd::as_raw_fd(&stream));
    let Some(tls) = listener.tls.clone() else {
        let (rd, wr) = stream.into_split();
        let session = Session::new(listener, peer, None, broker.authorizer.clone());
        return run(rd, wr, broker, session, wake).await;
    };
    let client_auth = match (tls.mutual(), listener.protocol) {
        (false, _) => ClientAuth::None,
        (true, SecurityProtocol::Ssl) => ClientAuth::Required,
        (true, _) => ClientAuth::Optional,
    };
    // On SSL the principal is the client certificate's subject, mapped by the rules.
    let rules = (listener.protocol == SecurityProtocol::Ssl).then_some(&listener.principal_rules);
    let (stream, cert_principal) = match tls.accept(stream, client_auth, rules).await {
        Ok(accepted) => accepted,
        Err(e) => {
            METRICS.closed_bad_frames.with_label_values(&["tls_handshake"]).inc();
            return Err(e);
        }
    };
    if let Some(p) = &cert_principal {
        tracing::debug!(principal = %format!("User:{p}"), %peer, "client certificate verified");
    }
    let (rd, wr) = tokio::io::split(stream);
    let session = Session::new(listener, peer, cert_principal, broker.authorizer.clone());
    run(rd, wr, broker, session, wake).await
}

/// The socket's SO_RCVLOWAT while a large frame is read: raised towards what is still to
/// come, so that the reader wakes a few times per frame rather than once per TCP segment
/// or TLS record (a TLS client's records arrive 16 KiB at a time, and each wake-up is a
/// context switch). It never exceeds the bytes the frame still needs less [`WAKE_SLACK`]
/// (a partial TLS record may be buffered already), so a frame's tail is never waited for.
struct WakeThreshold(std::os::fd::RawFd);

/// Frames smaller than this are read without touching the threshold.
const WAKE_MIN_FRAME: usize = 256 << 10;
const WAKE_SLACK: usize = 64 << 10;
const WAKE_MAX: usize = 256 << 10;

impl WakeThreshold {
    fn set(&self, bytes: usize) -> usize {
        let bytes = bytes.clamp(1, WAKE_MAX);
        let v = bytes as libc::c_int;
        // SAFETY: the descriptor belongs to the connection's stream, alive while it reads;
        // the option value is a c_int, as SO_RCVLOWAT takes.
        unsafe {
            libc::setsockopt(
                self.0,
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        bytes
    }
}

async fn run<R, W>(mut rd: R, mut wr: W, broker: Arc<Broker>, mut session: Session, wake: WakeThreshold) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Pending>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(async move {
        let mut out = BytesMut::new();
        while let Some(p) = rx.recv().await {
            let body = match p.reply {
                Reply::Now(r) => *r,
                Reply::Later(f) => f.await,
                Reply::None => continue,
                Reply::RawToken(token) => {
                    let mut pieces = [Bytes::copy_from_slice(&(token.len() as u32).to_be_bytes()), token];
                    if write_pieces(&mut wr, &mut pieces).await.is_err() || wr.flush().await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            let encoded = match &body {
                // Record sets go out as they are, not copied into the encoded response.
                ResponseKind::Fetch(fetch) => encode_pieces(p.correlation_id, p.header_version, p.api_version, fetch),
                _ => encode_response(&mut out, p.correlation_id, p.header_version, p.api_version, &body)
                    .map(|()| vec![out.split().freeze()]),
            };
            let mut pieces = match encoded {
                Ok(pieces) => pieces,
                Err(e) => {
                    tracing::error!(error = %e, "encoding response failed; closing connection");
                    break;
                }
            };
            if write_pieces(&mut wr, &mut pieces).await.is_err() {
                break;
            }
            // TLS holds what the socket did not take yet until flushed (a no-op on TCP);
            // flush once no other response is queued behind this one.
            if rx.is_empty() && wr.flush().await.is_err() {
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

    let result = read_loop(&mut rd, &broker, &mut session, &tx, &wake).await;
    drop(tx);
    let _ = writer.await;
    result
}

async fn read_loop<R: AsyncRead + Unpin>(
    rd: &mut R,
    broker: &Arc<Broker>,
    session: &mut Session,
    tx: &mpsc::Sender<Pending>,
    wake: &WakeThreshold,
) -> Result<()> {
    loop {
        let mut size = [0u8; 4];
        match rd.read_exact(&mut size).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let size = i32::from_be_bytes(size);
        if session.expects_raw_token() {
            if !raw_token(rd, size, broker, session, tx).await? {
                return Ok(());
            }
            continue;
        }
        if size < 8 || size as usize > broker.config.max_frame_bytes {
            METRICS.closed_bad_frames.with_label_values(&["frame_size"]).inc();
            bail!("frame size {size} outside 8..={}", broker.config.max_frame_bytes);
        }
        // Read into spare capacity: zeroing a frame first (up to the 100 MiB limit) was 5 % of
        // the broker's CPU at full produce speed. `take` stops at the frame's end.
        let mut frame = BytesMut::with_capacity(size as usize);
        let mut body = (&mut *rd).take(size as u64);
        let large = size as usize >= WAKE_MIN_FRAME;
        let mut threshold = 1;
        while frame.len() < size as usize {
            if large {
                let safe = (size as usize - frame.len()).saturating_sub(WAKE_SLACK).max(1);
                let target = (safe / 2).clamp(1, WAKE_MAX);
                // Lower it at once past the safe bound; raise it only when well below target.
                if threshold > safe || threshold * 2 < target {
                    threshold = wake.set(target);
                }
            }
            if body.read_buf(&mut frame).await? == 0 {
                bail!("truncated frame");
            }
        }
        if threshold > 1 {
            threshold = wake.set(1);
        }
        debug_assert_eq!(threshold, 1);
        let (pending, close) = match handle_frame(frame.freeze(), broker, session).await {
            Ok(p) => p,
            Err(e) => {
                METRICS.closed_bad_frames.with_label_values(&["bad_request"]).inc();
                return Err(e);
            }
        };
        if tx.send(pending).await.is_err() || close {
            return Ok(());
        }
    }
}

/// Handles a SASL token sent without a Kafka header (after SaslHandshake v0). False when
/// the connection is to close: on failure v0 has no way to say why, and Kafka just closes.
async fn raw_token<R: AsyncRead + Unpin>(
    rd: &mut R,
    size: i32,
    broker: &Arc<Broker>,
    session: &mut Session,
    tx: &mpsc::Sender<Pending>,
) -> Result<bool> {
    let read = Instant::now();
    if size < 0 || size as usize > sluice_auth::sasl::MAX_TOKEN_BYTES {
        METRICS.closed_bad_frames.with_label_values(&["sasl_token"]).inc();
        bail!("SASL token of {size} bytes");
    }
    let mut token = vec![0; size as usize];
    rd.read_exact(&mut token).await?;
    let req = kafka_protocol::messages::SaslAuthenticateRequest::default().with_auth_bytes(token.into());
    let (resp, close) = session.authenticate(broker, req).await;
    if close {
        return Ok(false);
    }
    let pending = Pending {
        read: (read, "SaslAuthenticate"),
        correlation_id: 0,
        header_version: 0,
        api_version: 0,
        reply: Reply::RawToken(resp.auth_bytes),
    };
    Ok(tx.send(pending).await.is_ok())
}

/// Decodes one request frame and starts handling it. The flag says whether the
/// connection closes once the response is written.
async fn handle_frame(frame: Bytes, broker: &Arc<Broker>, session: &mut Session) -> Result<(Pending, bool)> {
    let read = Instant::now();
    let (key, version) = ((&frame[0..2]).get_i16(), (&frame[2..4]).get_i16());
    let correlation_id = (&frame[4..8]).get_i32();
    if let (Ok(ApiKey::ApiVersions), Some((min, max))) = (ApiKey::try_from(key), api::advertised(ApiKey::ApiVersions)) {
        if version < min || version > max {
            // KIP-511: answer in v0 with the supported versions so the client can retry.
            let pending = Pending {
                read: (read, "ApiVersions"),
                correlation_id,
                header_version: 0,
                api_version: 0,
                reply: Reply::Now(Box::new(api::unsupported_version_response())),
            };
            return Ok((pending, false));
        }
    }
    let (header, body) = api::decode_request(frame)?;
    let api_key = ApiKey::try_from(header.request_api_key).map_err(|_| anyhow::anyhow!("unknown API key"))?;
    METRICS.requests.with_label_values(&[api::name(api_key)]).inc();
    let (reply, close) = match body {
        RequestKind::SaslHandshake(r) => (Reply::Now(Box::new(session.handshake(r, version).into())), false),
        RequestKind::SaslAuthenticate(r) => {
            let (resp, close) = session.authenticate(broker, r).await;
            (Reply::Now(Box::new(resp.into())), close)
        }
        body => {
            session.check(api_key)?;
            (api::dispatch(broker, session, &header, body).await?, false)
        }
    };
    let pending = Pending {
        read: (read, api::name(api_key)),
        correlation_id,
        header_version: api_key.response_header_version(version),
        api_version: version,
        reply,
    };
    Ok((pending, close))
}

/// A Fetch response, size prefix included, as pieces to write in order: the encoded
/// fields, and between them the record sets themselves. Copying the record sets into the
/// encoded response was the largest user-space cost of a catch-up read (docs/benchmarks.md).
fn encode_pieces(
    correlation_id: i32,
    header_version: i16,
    api_version: i16,
    body: &FetchResponse,
) -> Result<Vec<Bytes>> {
    let records: Vec<&Bytes> = body
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .filter_map(|p| p.records.as_ref())
        .filter(|r| r.len() >= MIN_SHARED_RECORDS)
        .collect();
    let mut out = Pieces {
        head: BytesMut::with_capacity(1024),
        done: Vec::with_capacity(2 * records.len() + 2),
        done_len: 0,
        records,
    };
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut out, header_version)?;
    body.encode(&mut out, api_version)?;
    let size = i32::try_from(out.offset())?;
    let mut pieces = Vec::with_capacity(out.done.len() + 2);
    pieces.push(Bytes::copy_from_slice(&size.to_be_bytes()));
    pieces.append(&mut out.done);
    pieces.push(out.head.freeze());
    Ok(pieces)
}

/// Record sets smaller than this are copied like any other field.
const MIN_SHARED_RECORDS: usize = 4096;

/// An encoding buffer that keeps the record sets it is given by reference: when the encoder
/// writes one of them (recognised by its address and length), the bytes so far become a
/// piece and the record set the next one.
struct Pieces<'a> {
    head: BytesMut,
    done: Vec<Bytes>,
    done_len: usize,
    records: Vec<&'a Bytes>,
}

impl Pieces<'_> {
    /// Joins the pieces back into `head`: for an encoder that revisits bytes already written
    /// (none of the response encoders does).
    fn join(&mut self) {
        if self.done.is_empty() {
            return;
        }
        let mut all = BytesMut::with_capacity(self.done_len + self.head.len());
        for piece in self.done.drain(..) {
            all.extend_from_slice(&piece);
        }
        all.extend_from_slice(&self.head);
        (self.head, self.done_len) = (all, 0);
    }
}

// SAFETY: every method hands on to `head`, a BytesMut, whose own implementation upholds
// BufMut's contract; `put_slice` only reads `src` and appends (to `head` or as a piece).
unsafe impl BufMut for Pieces<'_> {
    fn remaining_mut(&self) -> usize {
        self.head.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialised `cnt` bytes of `chunk_mut`, which is head's.
        unsafe { self.head.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        self.head.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        // Every field comes through here: only a slice as large as a shared record set
        // is looked up.
        let shared = (src.len() >= MIN_SHARED_RECORDS)
            .then(|| {
                self.records
                    .iter()
                    .find(|r| r.len() == src.len() && r.as_ptr() == src.as_ptr())
            })
            .flatten();
        match shared {
            Some(records) => {
                let encoded = self.head.split().freeze();
                self.done_len += encoded.len() + records.len();
                self.done.push(encoded);
                self.done.push((*records).clone());
            }
            None => self.head.extend_from_slice(src),
        }
    }
}

impl ByteBufMut for Pieces<'_> {
    fn offset(&self) -> usize {
        self.done_len + self.head.len()
    }

    fn seek(&mut self, offset: usize) {
        if offset < self.done_len {
            self.join();
        }
        self.head.resize(offset - self.done_len, 0);
    }

    fn range(&mut self, r: std::ops::Range<usize>) -> &mut [u8] {
        if r.start < self.done_len {
            self.join();
        }
        &mut self.head[r.start - self.done_len..r.end - self.done_len]
    }
}

/// Writes `pieces` in order, as few system calls as the socket allows.
async fn write_pieces<W: AsyncWrite + Unpin>(wr: &mut W, pieces: &mut [Bytes]) -> std::io::Result<()> {
    let mut first = 0;
    while first < pieces.len() {
        let slices: Vec<std::io::IoSlice> = pieces[first..]
            .iter()
            .take(64)
            .map(|p| std::io::IoSlice::new(p))
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while first < pieces.len() && n >= pieces[first].len() {
            n -= pieces[first].len();
            first += 1;
        }
        if n > 0 {
            pieces[first].advance(n);
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;

    #[test]
    fn a_fetch_response_in_pieces_is_the_same_bytes_as_one_encoded_whole() {
        let big = Bytes::from((0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let small = Bytes::from_static(b"tiny record set");
        let records = [
            Some(big.clone()),
            Some(small),
            None,
            Some(Bytes::new()),
            Some(big.slice(5000..70_000)),
        ];
        let partitions = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                PartitionData::default()
                    .with_partition_index(i as i32)
                    .with_records(r.clone())
            })
            .collect();
        let topic = FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(partitions);
        let resp = FetchResponse::default().with_responses(vec![topic.clone(), topic]);
        for version in [4, 11, 12, 13, 16] {
            let header_version = ApiKey::Fetch.response_header_version(version);
            let mut whole = BytesMut::new();
            let kind = ResponseKind::Fetch(resp.clone());
            encode_response(&mut whole, 7, header_version, version, &kind).unwrap();
            let pieces = encode_pieces(7, header_version, version, &resp).unwrap();
            assert_eq!(pieces.concat(), whole.to_vec(), "version {version}");
            // The large record sets are not copied: pieces share their memory.
            let shared = pieces.iter().filter(|p| p.as_ptr() == big.as_ptr()).count();
            assert_eq!(shared, 2, "version {version}");
        }
    }
}
