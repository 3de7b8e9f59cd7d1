//! `GET /api/v1/cluster`: brokers, leases, leaders and the controller.
//! `POST /api/v1/cluster/brokers/{id}/drain` (and `/undrain`): move a
//! broker's partitions and group shards to the others, or let it take some again.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::AppState;

pub(crate) async fn status(State(state): State<Arc<AppState>>) -> Response {
    match state.cluster.status().await {
        Ok(s) => Json(s).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
}

pub(crate) async fn drain(State(state): State<Arc<AppState>>, Path(id): Path<i32>) -> Response {
    set_draining(&state, id, true).await
}

pub(crate) async fn undrain(State(state): State<Arc<AppState>>, Path(id): Path<i32>) -> Response {
    set_draining(&state, id, false).await
}

async fn set_draining(state: &AppState, id: i32, draining: bool) -> Response {
    match state.cluster.drain(id, draining).await {
        Ok(true) => Json(json!({"node_id": id, "draining": draining})).into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("broker {id} is not registered")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}
