//! `sluice bench mqtt`: many MQTT 3.1.1 clients publishing at QoS 1 (or
//! holding idle connections), reporting acknowledged messages per second and,
//! given the server's pid, its resident memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use clap::Args;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v3::{self, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

#[derive(Args, Debug, Clone)]
pub struct MqttBenchArgs {
    /// MQTT listener, as HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883", value_name = "HOST:PORT")]
    pub mqtt: String,
    /// Connected clients.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// How long to publish (or, with --idle, to hold the connections).
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    pub seconds: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// QoS of the publishes (0, 1 or 2).
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// Unacknowledged publishes per client.
    #[arg(long, default_value_t = 10)]
    pub inflight: usize,
    /// Only connect and hold the connections (no publishes).
    #[arg(long)]
    pub idle: bool,
    /// Pid of the server, to report its resident memory (VmRSS) while loaded.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Topic prefix; each client publishes to <prefix>/<client>.
    #[arg(long, default_value = "bench")]
    pub topic_prefix: String,
    /// Topic filters one more connection holds while the clients publish, none matching
    /// their topics (`<prefix>-sub/<n>/cmd`): what routing past many subscriptions costs,
    /// such as a command topic per device.
    #[arg(long, default_value_t = 0)]
    pub subscriptions: usize,
}

#[derive(Default)]
struct Stats {
    connected: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
}

/// Runs the benchmark; `json` prints one JSON object instead of text.
pub async fn run(args: MqttBenchArgs, json: bool) -> Result<()> {
    let qos = match args.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => bail!("--qos must be 0, 1 or 2"),
    };
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let subscriber = match args.subscriptions {
        0 => None,
        n => Some(subscribe_many(&args, n).await.context("subscribing")?),
    };
    let stats = Arc::new(Stats::default());
    let hold = Duration::from_secs(args.seconds);
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let (start_tx, start_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let (args, stats, gate, start) = (args.clone(), stats.clone(), gate.clone(), start_rx.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = client(i, &args, qos, &stats, &gate, start, hold).await {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(client = i, error = %e, "bench client failed");
            }
        }));
    }
    // Wait until everyone is connected (or failed), then start the clock.
    let connect_started = Instant::now();
    loop {
        let done = stats.connected.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed);
        if done as usize >= args.clients || connect_started.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let started = Instant::now();
    let _ = start_tx.send(true);
    tokio::time::sleep(hold / 2).await;
    let rss = args.server_pid.and_then(rss_kb);
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(subscriber);
    let acked = stats.acked.load(Ordering::Relaxed);
    let connected = stats.connected.load(Ordering::Relaxed);
    let rate = acked as f64 / secs;
    if connected == 0 {
        bail!("no client could connect to {}", args.mqtt);
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"clients": args.clients, "connected": connected, "failed": stats.failed.load(Ordering::Relaxed),
                "connect_seconds": connect_secs, "seconds": secs, "messages": acked, "messages_per_sec": rate,
                "qos": args.qos, "payload_bytes": args.payload, "subscriptions": args.subscriptions,
                "server_rss_kb": rss})
        );
    } else {
        println!("clients: {connected}/{} connected in {connect_secs:.1}s", args.clients);
        if args.subscriptions > 0 {
            println!("subscriptions held (matching no publish): {}", args.subscriptions);
        }
        if !args.idle {
            println!(
                "published: {acked} QoS {} messages acknowledged in {secs:.1}s = {rate:.0} msg/s",
                args.qos
            );
        }
        if let Some(kb) = rss {
            println!("server RSS: {:.1} MB", kb as f64 / 1024.0);
        }
    }
    Ok(())
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn client(
    i: usize,
    args: &MqttBenchArgs,
    qos: QoS,
    stats: &Stats,
    gate: &tokio::sync::Semaphore,
    mut start: tokio::sync::watch::Receiver<bool>,
    hold: Duration,
) -> Result<()> {
    let mut codec = v3::Codec::new(0);
    let mut rbuf = BytesMut::with_capacity(4096);
    let mut wbuf = BytesMut::with_capacity(4096);
    let mut s = {
        let _permit = gate.acquire().await?;
        connect(&args.mqtt, format!("bench-{i}"), &mut codec, &mut rbuf).await?
    };
    stats.connected.fetch_add(1, Ordering::Relaxed);
    let _ = start.wait_for(|go| *go).await;
    let deadline = Instant::now() + hold;
    if args.idle {
        tokio::time::sleep_until(deadline.into()).await;
        return Ok(());
    }
    let topic = ByteString::from(format!("{}/{i}", args.topic_prefix));
    let payload = Bytes::from(vec![b'x'; args.payload]);
    let mut pid: u16 = 0;
    let mut outstanding = 0usize;
    while Instant::now() < deadline {
        while outstanding < args.inflight.max(1) {
            pid = pid.wrapping_add(1).max(1);
            let p = Publish {
                dup: false,
                retain: false,
                qos,
                topic: topic.clone(),
                packet_id: (qos != QoS::AtMostOnce).then(|| std::num::NonZeroU16::new(pid).expect("non-zero")),
                payload: payload.clone(),
                properties: None,
            };
            codec.encode(Packet::Publish(Box::new(p)), &mut wbuf)?;
            if qos == QoS::AtMostOnce {
                stats.acked.fetch_add(1, Ordering::Relaxed);
            } else {
                outstanding += 1;
            }
        }
        s.write_all(&wbuf).await?;
        wbuf.clear();
        if qos == QoS::AtMostOnce {
            tokio::task::yield_now().await;
            continue;
        }
        // Wait for at least one acknowledgement, then take every one already buffered.
        let mut next = Some(read_packet(&mut s, &mut codec, &mut rbuf).await?);
        while let Some(p) = next {
            match p {
                Packet::PublishAck { .. } | Packet::PublishComplete { .. } => {
                    outstanding -= 1;
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                }
                Packet::PublishReceived { packet_id } => {
                    codec.encode(Packet::PublishRelease { packet_id }, &mut wbuf)?;
                }
                _ => {}
            }
            next = codec.decode(&mut rbuf)?.map(|(p, _)| p);
        }
    }
    // Drain what is still in flight so the server is not left mid-write.
    let drain_until = Instant::now() + Duration::from_secs(5);
    while outstanding > 0 && Instant::now() < drain_until {
        if !wbuf.is_empty() {
            s.write_all(&wbuf).await?;
            wbuf.clear();
        }
        match tokio::time::timeout(Duration::from_secs(5), read_packet(&mut s, &mut codec, &mut rbuf)).await {
            Ok(Ok(Packet::PublishAck { .. } | Packet::PublishComplete { .. })) => outstanding -= 1,
            Ok(Ok(Packet::PublishReceived { packet_id })) => {
                codec.encode(Packet::PublishRelease { packet_id }, &mut wbuf)?;
            }
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
    codec.encode(Packet::Disconnect, &mut wbuf)?;
    let _ = s.write_all(&wbuf).await;
    Ok(())
}

/// Connects as `client_id` (clean session, no keep-alive) and waits for the CONNACK.
async fn connect(mqtt: &str, client_id: String, codec: &mut v3::Codec, rbuf: &mut BytesMut) -> Result<TcpStream> {
    let mut s = TcpStream::connect(mqtt).await?;
    s.set_nodelay(true)?;
    let connect = v3::Connect {
        client_id: ByteString::from(client_id),
        clean_session: true,
        keep_alive: 0,
        ..Default::default()
    };
    let mut wbuf = BytesMut::new();
    codec.encode(Packet::Connect(Box::new(connect)), &mut wbuf)?;
    s.write_all(&wbuf).await?;
    match read_packet(&mut s, codec, rbuf).await? {
        Packet::ConnectAck(a) if a.return_code == v3::ConnectAckReason::ConnectionAccepted => Ok(s),
        other => bail!("connect refused: {other:?}"),
    }
}

/// Connects `bench-subscriber` and subscribes it to `n` filters, a thousand per SUBSCRIBE.
/// Returns the connection, to hold while the clients publish.
async fn subscribe_many(args: &MqttBenchArgs, n: usize) -> Result<TcpStream> {
    let (mut codec, mut rbuf) = (v3::Codec::new(0), BytesMut::new());
    let mut s = connect(&args.mqtt, "bench-subscriber".into(), &mut codec, &mut rbuf).await?;
    let filters: Vec<usize> = (0..n).collect();
    for (chunk, packet_id) in filters.chunks(1000).zip(1u16..) {
        let topic_filters = chunk
            .iter()
            .map(|i| {
                (
                    ByteString::from(format!("{}-sub/{i}/cmd", args.topic_prefix)),
                    QoS::AtLeastOnce,
                )
            })
            .collect();
        let packet_id = std::num::NonZeroU16::new(packet_id).context("too many subscriptions")?;
        let mut wbuf = BytesMut::new();
        codec.encode(
            Packet::Subscribe {
                packet_id,
                topic_filters,
            },
            &mut wbuf,
        )?;
        s.write_all(&wbuf).await?;
        match read_packet(&mut s, &mut codec, &mut rbuf).await? {
            Packet::SubscribeAck { .. } => {}
            other => bail!("expected SUBACK, got {other:?}"),
        }
    }
    Ok(s)
}

async fn read_packet(s: &mut TcpStream, codec: &mut v3::Codec, buf: &mut BytesMut) -> Result<Packet> {
    loop {
        if let Some((p, _)) = codec.decode(buf)? {
            return Ok(p);
        }
        if s.read_buf(buf).await? == 0 {
            bail!("connection closed");
        }
    }
}
