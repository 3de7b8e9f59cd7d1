//! The Confluent Schema Registry REST API on axum.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{RegistryError, Result};
use crate::formats::{Parsed, SchemaType};
use crate::registry::{Registry, SubjectVersion, VersionSpec, LEVELS, MODES};
use crate::store::{Reference, GLOBAL};

pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Errors go out as Confluent's body: `{"error_code", "message"}`.
impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let body = json!({"error_code": self.code, "message": self.message});
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], body.to_string()).into_response()
    }
}

type Params = Query<HashMap<String, String>>;

fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn reply(v: Value) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], v.to_string()).into_response()
}

pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/", get(|| async { reply(json!({})) }))
        .route(
            "/schemas/types",
            get(|| async { reply(json!(["JSON", "PROTOBUF", "AVRO"])) }),
        )
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_of_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_of_id))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route(
            "/subjects/{subject}/versions/{version}",
            get(version).delete(delete_version),
        )
        .route("/subjects/{subject}/versions/{version}/schema", get(raw_version))
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route("/compatibility/subjects/{subject}/versions", post(compat_all))
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compat_version),
        )
        .route(
            "/config",
            get(global_config).put(put_global_config).delete(delete_global_config),
        )
        .route(
            "/config/{subject}",
            get(subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route("/mode", get(global_mode).put(put_global_mode))
        .route(
            "/mode/{subject}",
            get(subject_mode).put(put_subject_mode).delete(delete_subject_mode),
        )
        .fallback(|| async { RegistryError::not_found() })
        .with_state(registry)
}

// ---- request bodies ----

#[derive(Deserialize)]
struct SchemaBody {
    schema: Option<String>,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<Reference>>,
}

struct SchemaRequest {
    ty: SchemaType,
    text: String,
    refs: Vec<Reference>,
}

fn schema_request(body: &Bytes) -> Result<SchemaRequest> {
    let b: SchemaBody =
        serde_json::from_slice(body).map_err(|e| RegistryError::bad_request(format!("Invalid request body: {e}")))?;
    let text = b
        .schema
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| RegistryError::invalid_schema("Empty schema"))?;
    let ty = match b.schema_type.as_deref() {
        None | Some("") => SchemaType::Avro,
        Some(t) => {
            SchemaType::parse(t).ok_or_else(|| RegistryError::invalid_schema(format!("unknown schema type {t}")))?
        }
    };
    Ok(SchemaRequest {
        ty,
        text,
        refs: b.references.unwrap_or_default(),
    })
}

fn body_field(body: &Bytes, keys: &[&str]) -> Result<String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| RegistryError::bad_request(format!("Invalid request body: {e}")))?;
    keys.iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .map(str::to_string)
        .ok_or_else(|| RegistryError::bad_request(format!("request body needs {}", keys[0])))
}

// ---- response shapes ----

/// The schema text in the requested format (`serialized`: a protobuf descriptor).
async fn schema_text(reg: &Registry, id: i64, text: &str, q: &HashMap<String, String>) -> Result<String> {
    if q.get("format").map(String::as_str) == Some("serialized") {
        if let Parsed::Protobuf(p) = &*reg.parsed(id).await? {
            return Ok(p.serialized());
        }
    }
    Ok(text.to_string())
}

fn with_type_and_refs(mut v: Value, ty: SchemaType, refs: &[Reference]) -> Value {
    if ty != SchemaType::Avro {
        v["schemaType"] = json!(ty.as_str());
    }
    if !refs.is_empty() {
        v["references"] = json!(refs);
    }
    v
}

async fn version_json(reg: &Registry, v: &SubjectVersion, q: &HashMap<String, String>) -> Result<Value> {
    let text = schema_text(reg, v.schema.id, &v.schema.text, q).await?;
    let out = json!({"subject": v.subject, "version": v.version, "id": v.schema.id, "schema": text});
    Ok(with_type_and_refs(out, v.schema.schema_type, &v.schema.refs))
}

fn parse_id(id: &str) -> Result<i64> {
    id.parse().map_err(|_| RegistryError::schema_not_found())
}

// ---- schemas by id ----

async fn schema_by_id(State(reg): State<Registry>, Path(id): Path<String>, Query(q): Params) -> Result<Response> {
    let id = parse_id(&id)?;
    let s = reg.schema(id).await?;
    if reg
        .versions_of_schema(id, q.get("subject").map(String::as_str), true)
        .await?
        .is_empty()
    {
        return Err(RegistryError::schema_not_found());
    }
    let text = schema_text(&reg, id, &s.text, &q).await?;
    Ok(reply(with_type_and_refs(
        json!({"schema": text}),
        s.schema_type,
        &s.refs,
    )))
}

async fn raw_schema_by_id(State(reg): State<Registry>, Path(id): Path<String>, Query(q): Params) -> Result<Response> {
    let id = parse_id(&id)?;
    let s = reg.schema(id).await?;
    let text = schema_text(&reg, id, &s.text, &q).await?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

async fn versions_of_id(State(reg): State<Registry>, Path(id): Path<String>, Query(q): Params) -> Result<Response> {
    let rows = reg
        .versions_of_schema(
            parse_id(&id)?,
            q.get("subject").map(String::as_str),
            flag(&q, "deleted"),
        )
        .await?;
    let out: Vec<Value> = rows
        .iter()
        .map(|v| json!({"subject": v.subject, "version": v.version}))
        .collect();
    Ok(reply(json!(out)))
}

async fn subjects_of_id(State(reg): State<Registry>, Path(id): Path<String>, Query(q): Params) -> Result<Response> {
    let rows = reg
        .versions_of_schema(
            parse_id(&id)?,
            q.get("subject").map(String::as_str),
            flag(&q, "deleted"),
        )
        .await?;
    let mut out: Vec<&str> = rows.iter().map(|v| v.subject.as_str()).collect();
    out.dedup();
    Ok(reply(json!(out)))
}

// ---- subjects ----

async fn subjects(State(reg): State<Registry>, Query(q): Params) -> Result<Response> {
    let prefix = q.get("subjectPrefix").map(String::as_str).unwrap_or("");
    Ok(reply(json!(reg.subjects(flag(&q, "deleted"), prefix).await?)))
}

async fn versions(State(reg): State<Registry>, Path(subject): Path<String>, Query(q): Params) -> Result<Response> {
    let v = reg.versions(&subject, flag(&q, "deleted")).await?;
    Ok(reply(json!(v.iter().map(|v| v.version).collect::<Vec<_>>())))
}

async fn register(State(reg): State<Registry>, Path(subject): Path<String>, body: Bytes) -> Result<Response> {
    let r = schema_request(&body)?;
    let id = reg.register(&subject, r.ty, &r.text, &r.refs).await?;
    Ok(reply(json!({"id": id})))
}

async fn lookup(
    State(reg): State<Registry>,
    Path(subject): Path<String>,
    Query(q): Params,
    body: Bytes,
) -> Result<Response> {
    let r = schema_request(&body)?;
    let v = reg
        .lookup(&subject, r.ty, &r.text, &r.refs, flag(&q, "deleted"))
        .await?;
    Ok(reply(version_json(&reg, &v, &q).await?))
}

async fn delete_subject(
    State(reg): State<Registry>,
    Path(subject): Path<String>,
    Query(q): Params,
) -> Result<Response> {
    Ok(reply(json!(reg.delete_subject(&subject, flag(&q, "permanent")).await?)))
}

async fn version(
    State(reg): State<Registry>,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Params,
) -> Result<Response> {
    let v = reg
        .version(&subject, VersionSpec::parse(&version)?, flag(&q, "deleted"))
        .await?;
    Ok(reply(version_json(&reg, &v, &q).await?))
}

async fn raw_version(
    State(reg): State<Registry>,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Params,
) -> Result<Response> {
    let v = reg
        .version(&subject, VersionSpec::parse(&version)?, flag(&q, "deleted"))
        .await?;
    let text = schema_text(&reg, v.schema.id, &v.schema.text, &q).await?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

async fn delete_version(
    State(reg): State<Registry>,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Params,
) -> Result<Response> {
    let v = reg
        .delete_version(&subject, VersionSpec::parse(&version)?, flag(&q, "permanent"))
        .await?;
    Ok(reply(json!(v)))
}

async fn referenced_by(
    State(reg): State<Registry>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response> {
    Ok(reply(json!(
        reg.referenced_by(&subject, VersionSpec::parse(&version)?).await?
    )))
}

// ---- compatibility ----

fn compat_reply(messages: Vec<String>, verbose: bool) -> Response {
    let mut v = json!({"is_compatible": messages.is_empty()});
    if verbose {
        v["messages"] = json!(messages);
    }
    reply(v)
}

async fn compat_version(
    State(reg): State<Registry>,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Params,
    body: Bytes,
) -> Result<Response> {
    let spec = VersionSpec::parse(&version)?;
    let r = schema_request(&body)?;
    let m = reg
        .check_compatibility(&subject, Some(spec), r.ty, &r.text, &r.refs)
        .await?;
    Ok(compat_reply(m, flag(&q, "verbose")))
}

async fn compat_all(
    State(reg): State<Registry>,
    Path(subject): Path<String>,
    Query(q): Params,
    body: Bytes,
) -> Result<Response> {
    let r = schema_request(&body)?;
    let m = reg.check_compatibility(&subject, None, r.ty, &r.text, &r.refs).await?;
    Ok(compat_reply(m, flag(&q, "verbose")))
}

// ---- config and mode ----

fn level(body: &Bytes) -> Result<String> {
    let l = body_field(body, &["compatibility", "compatibilityLevel"])?.to_ascii_uppercase();
    if !LEVELS.contains(&l.as_str()) {
        return Err(RegistryError::invalid_compatibility_level(&l));
    }
    Ok(l)
}

async fn global_config(State(reg): State<Registry>) -> Result<Response> {
    Ok(reply(json!({"compatibilityLevel": reg.compatibility(GLOBAL).await?})))
}

async fn put_global_config(State(reg): State<Registry>, body: Bytes) -> Result<Response> {
    let l = level(&body)?;
    reg.set_setting(GLOBAL, "compatibility", &l).await?;
    Ok(reply(json!({"compatibility": l})))
}

async fn delete_global_config(State(reg): State<Registry>) -> Result<Response> {
    let old = reg.compatibility(GLOBAL).await?;
    reg.delete_setting(GLOBAL, "compatibility").await?;
    Ok(reply(json!({"compatibilityLevel": old})))
}

async fn subject_config(
    State(reg): State<Registry>,
    Path(subject): Path<String>,
    Query(q): Params,
) -> Result<Response> {
    match reg.setting(&subject, "compatibility").await? {
        Some(l) => Ok(reply(json!({"compatibilityLevel": l}))),
        None if flag(&q, "defaultToGlobal") => {
            Ok(reply(json!({"compatibilityLevel": reg.compatibility(GLOBAL).await?})))
        }
        None => Err(RegistryError::subject_compat_not_configured(&subject)),
    }
}

async fn put_subject_config(State(reg): State<Registry>, Path(subject): Path<String>, body: Bytes) -> Result<Response> {
    let l = level(&body)?;
    reg.set_setting(&subject, "compatibility", &l).await?;
    Ok(reply(json!({"compatibility": l})))
}

async fn delete_subject_config(State(reg): State<Registry>, Path(subject): Path<String>) -> Result<Response> {
    let old = reg
        .setting(&subject, "compatibility")
        .await?
        .ok_or_else(|| RegistryError::subject_compat_not_configured(&subject))?;
    reg.delete_setting(&subject, "compatibility").await?;
    Ok(reply(json!({"compatibilityLevel": old})))
}

fn mode(body: &Bytes) -> Result<String> {
    let m = body_field(body, &["mode"])?.to_ascii_uppercase();
    if !MODES.contains(&m.as_str()) {
        return Err(RegistryError::invalid_mode(&m));
    }
    Ok(m)
}

async fn global_mode(State(reg): State<Registry>) -> Result<Response> {
    Ok(reply(json!({"mode": reg.mode(GLOBAL).await?})))
}

async fn put_global_mode(State(reg): State<Registry>, body: Bytes) -> Result<Response> {
    let m = mode(&body)?;
    reg.set_setting(GLOBAL, "mode", &m).await?;
    Ok(reply(json!({"mode": m})))
}

async fn subject_mode(State(reg): State<Registry>, Path(subject): Path<String>, Query(q): Params) -> Result<Response> {
    match reg.setting(&subject, "mode").await? {
        Some(m) => Ok(reply(json!({"mode": m}))),
        None if flag(&q, "defaultToGlobal") => Ok(reply(json!({"mode": reg.mode(GLOBAL).await?}))),
        None => Err(RegistryError::subject_mode_not_configured(&subject)),
    }
}

async fn put_subject_mode(State(reg): State<Registry>, Path(subject): Path<String>, body: Bytes) -> Result<Response> {
    let m = mode(&body)?;
    reg.set_setting(&subject, "mode", &m).await?;
    Ok(reply(json!({"mode": m})))
}

async fn delete_subject_mode(State(reg): State<Registry>, Path(subject): Path<String>) -> Result<Response> {
    let old = reg
        .setting(&subject, "mode")
        .await?
        .ok_or_else(|| RegistryError::subject_mode_not_configured(&subject))?;
    reg.delete_setting(&subject, "mode").await?;
    Ok(reply(json!({"mode": old})))
}
