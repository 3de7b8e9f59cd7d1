//! HTTP: `/health`, Prometheus `/metrics`, and the REST admin API under
//! `/api/v1`. Later roles merge their routers into [`router`].

mod cluster;
mod groups;

use std::sync::{Arc, LazyLock};

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use prometheus::{register_int_gauge_vec, Encoder, IntGaugeVec, TextEncoder};
use sluice_groups::Coordinator;
use sluice_log::Log;

/// What the HTTP handlers read from.
pub struct AppState {
    pub log: Log,
    pub groups: Coordinator,
    pub cluster: sluice_cluster::Cluster,
}

static GROUP_LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "sluice_group_lag",
        "Records between a group's committed offset and the partition's high watermark",
        &["group", "topic", "partition"]
    )
    .unwrap()
});

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/groups", get(groups::list))
        .route("/api/v1/groups/{id}", get(groups::describe))
        .route("/api/v1/cluster", get(cluster::status))
        .route("/api/v1/cluster/brokers/{id}/drain", post(cluster::drain))
        .route("/api/v1/cluster/brokers/{id}/undrain", post(cluster::undrain))
        .with_state(state)
}

/// 200 while the broker serves; 503 once it refuses every write until a restart (a
/// failed flush with the journal), so that a supervisor restarts it and the journal is
/// recovered.
async fn health(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> impl IntoResponse {
    let (status, body) = match state.log.write_failure() {
        None => (StatusCode::OK, serde_json::json!({"status": "ok"})),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "status": "failed",
                "reason": format!("a flush failed, and writes are refused until a restart: {reason}"),
            }),
        ),
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string())
}

async fn metrics(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> impl IntoResponse {
    // Lag is computed at scrape time, so it is never stale.
    GROUP_LAG.reset();
    if let Ok(all) = groups::all_lags(&state).await {
        for (group, lags) in all {
            for l in lags {
                GROUP_LAG
                    .with_label_values(&[group.as_str(), l.topic.as_str(), &l.partition.to_string()])
                    .set(l.lag);
            }
        }
    }
    let encoder = TextEncoder::new();
    let mut buf = Vec::new();
    match encoder.encode(&prometheus::gather(), &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_string())],
            buf,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_string())],
            e.to_string().into_bytes(),
        ),
    }
}
