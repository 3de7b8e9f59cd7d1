//! REST API of the gateway: `/api/v1/mqtt/rules` and a status summary.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::rules::RuleError;
use crate::Gateway;

#[derive(Deserialize)]
struct RuleBody {
    name: String,
    sql: String,
    kafka_topic: String,
    #[serde(default)]
    key: Option<String>,
}

pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/api/v1/mqtt/rules", get(list_rules).post(create_rule))
        .route("/api/v1/mqtt/rules/{name}", get(get_rule).delete(delete_rule))
        .route("/api/v1/mqtt/status", get(status))
        .with_state(gw)
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": msg.to_string()}))).into_response()
}

async fn list_rules(State(gw): State<Arc<Gateway>>) -> Response {
    Json(gw.rules.list()).into_response()
}

async fn get_rule(State(gw): State<Arc<Gateway>>, Path(name): Path<String>) -> Response {
    match gw.rules.get(&name) {
        Some(r) => Json(r).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("rule {name} not found")),
    }
}

async fn create_rule(
    State(gw): State<Arc<Gateway>>,
    body: Result<Json<RuleBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match gw.rules.put(&b.name, &b.sql, &b.kafka_topic, b.key.as_deref()).await {
        Ok(view) => (StatusCode::CREATED, Json(view)).into_response(),
        Err(RuleError::Invalid(msg)) => error(StatusCode::BAD_REQUEST, msg),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn delete_rule(State(gw): State<Arc<Gateway>>, Path(name): Path<String>) -> Response {
    match gw.rules.delete(&name).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("rule {name} not found")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn status(State(gw): State<Arc<Gateway>>) -> Response {
    Json(json!({
        "sessions": gw.broker.session_count(),
        "retained": gw.broker.retained.len(),
        "rules": gw.rules.list().len(),
        "default_topic": gw.cfg.default_topic,
        "events_topic": gw.cfg.events_topic,
        "commands_topic": gw.cfg.commands_topic,
        "forward_topic": gw.cfg.forward_topic,
    }))
    .into_response()
}
