//! The Kafka protocol front end: connections, framing, version negotiation
//! and request routing. Each API family has its own module; all of them
//! work through [`sluice_log::Log`].

mod acls;
mod admin;
mod api;
mod authz;
mod configs;
mod conn;
mod errors;
mod fetch;
mod groups;
mod metadata;
mod offsets;
mod produce;
mod reply;
mod session;
mod txn;
mod users;

use std::sync::{Arc, LazyLock};

use anyhow::Result;
use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge, HistogramVec, IntCounterVec, IntGauge,
};
use sluice_log::Log;
use tokio::net::TcpListener;

pub use api::{decode_request, supported_apis};
pub use session::ListenerConfig;

/// What the broker tells clients about itself, and its limits.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: i32,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub cluster_id: String,
    /// Create unknown topics when clients ask for their metadata or produce to them.
    pub auto_create_topics: bool,
    /// Largest request frame accepted; larger ones close the connection.
    pub max_frame_bytes: usize,
}

pub struct Broker {
    pub log: Log,
    pub groups: sluice_groups::Coordinator,
    pub cluster: sluice_cluster::Cluster,
    pub txn: sluice_txn::TxnCoordinator,
    pub config: BrokerConfig,
    /// Schema validation of produced records; `None` turns it off.
    pub schemas: Option<sluice_schema::Enforcer>,
    /// Kafka ACLs (`--authorization acl`); `None` lets every principal do everything.
    pub authorizer: Option<Arc<sluice_auth::Authorizer>>,
}

pub(crate) struct Metrics {
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub connections: IntGauge,
    pub closed_bad_frames: IntCounterVec,
    pub authentications: IntCounterVec,
}

pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    requests: register_int_counter_vec!("sluice_kafka_requests_total", "Kafka requests handled", &["api"]).unwrap(),
    request_seconds: register_histogram_vec!(
        "sluice_kafka_request_seconds",
        "Time from a request read whole to its response written (Kafka's TotalTimeMs, less the read)",
        &["api"],
        vec![0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0]
    )
    .unwrap(),
    connections: register_int_gauge!("sluice_kafka_connections", "Open Kafka connections").unwrap(),
    closed_bad_frames: register_int_counter_vec!(
        "sluice_kafka_connections_closed_total",
        "Connections closed for a protocol violation",
        &["reason"]
    )
    .unwrap(),
    authentications: register_int_counter_vec!(
        "sluice_kafka_sasl_authentications_total",
        "SASL authentications on Kafka listeners, by mechanism and result (ok, reauthenticated, failed)",
        &["mechanism", "result"]
    )
    .unwrap(),
});

/// Accepts Kafka connections until the listener fails.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>, config: Arc<ListenerConfig>) -> Result<()> {
    LazyLock::force(&METRICS);
    loop {
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (broker, config) = (broker.clone(), config.clone());
        tokio::spawn(async move {
            METRICS.connections.inc();
            if let Err(e) = conn::serve(stream, peer, broker, config).await {
                tracing::debug!(%peer, error = %format!("{e:#}"), "connection closed");
            }
            METRICS.connections.dec();
        });
    }
}

#[cfg(test)]
mod tests;
