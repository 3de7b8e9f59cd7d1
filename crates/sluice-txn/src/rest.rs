//! REST API of the transaction coordinator: `GET /api/v1/transactions` (every
//! transactional id), `GET /api/v1/transactions/{id}`, and
//! `POST /api/v1/transactions/abort` to end a hanging transaction on one partition.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{AbortError, TxnCoordinator, TxnRow};

pub fn router(txn: TxnCoordinator) -> Router {
    Router::new()
        .route("/api/v1/transactions", get(list))
        .route("/api/v1/transactions/abort", post(abort))
        .route("/api/v1/transactions/{id}", get(describe))
        .with_state(txn)
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": msg.to_string()}))).into_response()
}

fn view(r: &TxnRow) -> Value {
    json!({
        "transactional_id": r.transactional_id,
        "producer_id": r.producer_id,
        "producer_epoch": r.producer_epoch,
        "state": r.state.as_str(),
        "timeout_ms": r.timeout_ms,
        "started_ms": r.started_ms,
        "updated_ms": r.updated_ms,
        "partitions": r.partitions.iter().map(|(t, p)| json!({"topic": t, "partition": p})).collect::<Vec<_>>(),
        "groups": r.groups,
    })
}

async fn list(State(txn): State<TxnCoordinator>) -> Response {
    match txn.list().await {
        Ok(rows) => Json(rows.iter().map(view).collect::<Vec<_>>()).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
}

async fn describe(State(txn): State<TxnCoordinator>, Path(id): Path<String>) -> Response {
    match txn.describe(&id).await {
        Ok(Some(row)) => Json(view(&row)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("transactional id {id} not found")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
}

#[derive(Deserialize)]
struct AbortBody {
    topic: String,
    partition: i32,
    start_offset: i64,
}

async fn abort(
    State(txn): State<TxnCoordinator>,
    body: Result<Json<AbortBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match txn.abort_hanging(&b.topic, b.partition, b.start_offset).await {
        Ok(producer_id) => Json(json!({
            "topic": b.topic,
            "partition": b.partition,
            "start_offset": b.start_offset,
            "producer_id": producer_id,
        }))
        .into_response(),
        Err(e @ AbortError::NotFound(_)) => error(StatusCode::NOT_FOUND, e),
        Err(e @ AbortError::NotLeader { .. }) => error(StatusCode::MISDIRECTED_REQUEST, e),
        Err(e @ AbortError::Failed(_)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}
