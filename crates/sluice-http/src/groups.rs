//! `GET /api/v1/groups` and `GET /api/v1/groups/{id}`: consumer groups with
//! their members, committed offsets and lag.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;

use crate::AppState;

#[derive(Debug, Serialize)]
pub(crate) struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub committed_offset: i64,
    pub log_end_offset: i64,
    pub lag: i64,
}

/// Lag per committed partition: high watermark minus committed offset.
pub(crate) async fn lags(state: &AppState, group: &str) -> Result<Vec<PartitionLag>, String> {
    let offsets = state.groups.fetch_offsets(group).await.map_err(|e| format!("{e:?}"))?;
    let mut out = Vec::with_capacity(offsets.len());
    for o in offsets {
        let Some(part) = state.log.topic(&o.topic).and_then(|t| t.partition(o.partition)) else {
            continue;
        };
        // Another broker may lead the partition: its committed watermark is in the store.
        let end = match part.led_offsets() {
            Ok(offsets) => offsets.high_watermark,
            Err(_) => match state.log.meta().get_partition(part.topic_id, part.index).await {
                Ok(Some(row)) => row.high_watermark,
                _ => continue,
            },
        };
        out.push(PartitionLag {
            topic: o.topic,
            partition: o.partition,
            committed_offset: o.offset,
            log_end_offset: end,
            lag: (end - o.offset).max(0),
        });
    }
    Ok(out)
}

pub(crate) async fn all_lags(state: &AppState) -> Result<Vec<(String, Vec<PartitionLag>)>, String> {
    let groups = state.groups.list().await.map_err(|e| format!("{e:?}"))?;
    let mut out = Vec::with_capacity(groups.len());
    for (id, _, _) in groups {
        let l = lags(state, &id).await?;
        out.push((id, l));
    }
    Ok(out)
}

fn unavailable(e: String) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": e}))).into_response()
}

pub(crate) async fn list(State(state): State<Arc<AppState>>) -> Response {
    let groups = match state.groups.list().await {
        Ok(g) => g,
        Err(e) => return unavailable(format!("{e:?}")),
    };
    let mut out = Vec::with_capacity(groups.len());
    for (id, protocol_type, group_state) in groups {
        let members = state.groups.describe(&id).map_or(0, |d| d.members.len());
        let total_lag: i64 = match lags(&state, &id).await {
            Ok(l) => l.iter().map(|p| p.lag).sum(),
            Err(e) => return unavailable(e),
        };
        out.push(json!({
            "group_id": id,
            "state": group_state,
            "protocol_type": protocol_type,
            "members": members,
            "total_lag": total_lag,
        }));
    }
    Json(json!({ "groups": out })).into_response()
}

pub(crate) async fn describe(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let known = match state.groups.list().await {
        Ok(g) => g.into_iter().find(|(g, _, _)| *g == id),
        Err(e) => return unavailable(format!("{e:?}")),
    };
    let Some((_, protocol_type, group_state)) = known else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("group {id} not found")})),
        )
            .into_response();
    };
    let described = state.groups.describe(&id);
    let members: Vec<_> = described
        .as_ref()
        .map(|d| {
            d.members
                .iter()
                .map(|m| {
                    let assigned: Vec<_> = sluice_groups::protocol::assigned_partitions(&m.assignment)
                        .into_iter()
                        .map(|(t, p)| json!({"topic": t, "partitions": p}))
                        .collect();
                    json!({
                        "member_id": m.member_id,
                        "instance_id": m.instance_id,
                        "client_id": m.client_id,
                        "client_host": m.client_host,
                        "assignment": assigned,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let offsets = match lags(&state, &id).await {
        Ok(l) => l,
        Err(e) => return unavailable(e),
    };
    let total_lag: i64 = offsets.iter().map(|p| p.lag).sum();
    Json(json!({
        "group_id": id,
        "state": group_state,
        "protocol_type": protocol_type,
        "protocol": described.as_ref().map(|d| d.protocol.clone()).unwrap_or_default(),
        "generation": described.as_ref().map_or(0, |d| d.generation),
        "members": members,
        "offsets": offsets,
        "total_lag": total_lag,
    }))
    .into_response()
}
