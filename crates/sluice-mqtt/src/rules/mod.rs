//! SQL rules in the style of EMQX's rule engine:
//!
//! ```sql
//! SELECT payload.speed AS speed, clientid, nth(2, split(topic, '/')) AS car
//! FROM "cars/+/telemetry" WHERE payload.speed > 100
//! ```
//!
//! A rule selects from MQTT topic filters or from events (`FROM "$events/client.connected"`),
//! and writes each output row as a JSON record to its Kafka topic, keyed by a
//! template (`${clientid}` by default). SQL is parsed by `sqlparser`; the
//! expressions are evaluated over the message's fields as JSON values.

mod eval;
mod functions;
mod value;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};
use sqlparser::ast::{Expr, SelectItem, SetExpr, Statement, TableFactor};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlx::{AnyPool, Row};

use crate::event_names;
use crate::message::Message;
use crate::topic::{matches, valid_filter};
use crate::uplink::OutRecord;

pub const DEFAULT_KEY: &str = "${clientid}";

/// What a rule reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Topic(String),
    Event(String),
}

/// A parsed rule: where it reads, what it selects, where it writes.
pub struct Rule {
    pub name: String,
    pub sql: String,
    pub kafka_topic: String,
    pub key: String,
    sources: Vec<Source>,
    select: Vec<SelectItem>,
    condition: Option<Expr>,
    matched: AtomicU64,
    passed: AtomicU64,
    failed: AtomicU64,
}

/// A rule as the REST API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RuleView {
    pub name: String,
    pub sql: String,
    pub kafka_topic: String,
    pub key: String,
    pub metrics: RuleMetrics,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct RuleMetrics {
    pub matched: u64,
    pub passed: u64,
    pub failed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("{0}")]
    Invalid(String),
    #[error("storing rule: {0}")]
    Store(#[from] sqlx::Error),
}

/// The fields a message rule can read.
pub struct MessageCtx<'a> {
    pub clientid: &'a str,
    pub username: Option<&'a str>,
    pub msg: &'a Message,
}

impl Rule {
    /// Parses and checks a rule; the error says what is wrong with the SQL.
    pub fn parse(name: &str, sql: &str, kafka_topic: &str, key: Option<&str>) -> Result<Self, String> {
        if name.is_empty() || name.contains('/') {
            return Err("rule name must be non-empty and contain no '/'".into());
        }
        if kafka_topic.is_empty() {
            return Err("kafka_topic must not be empty".into());
        }
        let mut stmts = Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| format!("SQL parse error: {e}"))?;
        if stmts.len() != 1 {
            return Err("expected exactly one SELECT statement".into());
        }
        let Statement::Query(q) = stmts.remove(0) else {
            return Err("a rule must be a SELECT statement".into());
        };
        if q.with.is_some() || q.order_by.is_some() || q.limit_clause.is_some() {
            return Err("WITH, ORDER BY and LIMIT are not supported in rules".into());
        }
        let SetExpr::Select(select) = *q.body else {
            return Err("a rule must be a single SELECT".into());
        };
        if select.from.is_empty() {
            return Err("FROM \"<topic filter>\" is required".into());
        }
        let mut sources = Vec::new();
        for t in &select.from {
            if !t.joins.is_empty() {
                return Err("joins are not supported in rules".into());
            }
            let TableFactor::Table { name, .. } = &t.relation else {
                return Err("FROM takes quoted topic filters, e.g. FROM \"cars/+/state\"".into());
            };
            let filter = name
                .0
                .iter()
                .map(|p| p.as_ident().map(|i| i.value.clone()).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(".");
            if let Some(ev) = filter.strip_prefix("$events/") {
                if !event_names::ALL.contains(&ev) {
                    return Err(format!("unknown event {ev}; known: {}", event_names::ALL.join(", ")));
                }
                sources.push(Source::Event(ev.to_string()));
            } else if valid_filter(&filter) {
                sources.push(Source::Topic(filter));
            } else {
                return Err(format!("invalid topic filter {filter:?}"));
            }
        }
        if select.group_by != sqlparser::ast::GroupByExpr::Expressions(vec![], vec![]) || select.having.is_some() {
            return Err("GROUP BY and HAVING are not supported in rules".into());
        }
        for item in &select.projection {
            match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => eval::check(e)?,
                SelectItem::Wildcard(_) => {}
                other => return Err(format!("unsupported select item {other}")),
            }
        }
        if let Some(c) = &select.selection {
            eval::check(c)?;
        }
        let key = key.filter(|k| !k.is_empty()).unwrap_or(DEFAULT_KEY).to_string();
        Ok(Self {
            name: name.to_string(),
            sql: sql.to_string(),
            kafka_topic: kafka_topic.to_string(),
            key,
            sources,
            select: select.projection.clone(),
            condition: select.selection.clone(),
            matched: AtomicU64::new(0),
            passed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    fn reads_topic(&self, topic: &str) -> bool {
        self.sources
            .iter()
            .any(|s| matches!(s, Source::Topic(f) if matches(f, topic)))
    }

    fn reads_event(&self, name: &str) -> bool {
        self.sources.iter().any(|s| matches!(s, Source::Event(e) if e == name))
    }

    /// Runs the rule on a context: `Ok(None)` if WHERE filtered it out.
    pub fn apply(&self, ctx: &Map<String, Value>) -> Result<Option<Map<String, Value>>, String> {
        self.matched.fetch_add(1, Ordering::Relaxed);
        let result = self.evaluate(ctx);
        match &result {
            Ok(Some(_)) => self.passed.fetch_add(1, Ordering::Relaxed),
            Ok(None) => 0,
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    fn evaluate(&self, ctx: &Map<String, Value>) -> Result<Option<Map<String, Value>>, String> {
        if let Some(c) = &self.condition {
            if !value::truthy(&eval::eval(c, ctx)?) {
                return Ok(None);
            }
        }
        let mut out = Map::new();
        for item in &self.select {
            match item {
                SelectItem::Wildcard(_) => out.extend(ctx.clone()),
                SelectItem::ExprWithAlias { expr, alias } => {
                    out.insert(alias.value.clone(), eval::eval(expr, ctx)?);
                }
                SelectItem::UnnamedExpr(expr) => {
                    let v = eval::eval(expr, ctx)?;
                    match expr {
                        Expr::Identifier(id) => {
                            out.insert(id.value.clone(), v);
                        }
                        // payload.a.b → {"payload": {"a": {"b": v}}}, as EMQX does.
                        Expr::CompoundIdentifier(parts) => {
                            insert_path(&mut out, &parts.iter().map(|p| p.value.as_str()).collect::<Vec<_>>(), v)
                        }
                        other => {
                            out.insert(other.to_string(), v);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Some(out))
    }

    /// The record key: `${field}` placeholders filled from the output, then the context.
    fn key_for(&self, out: &Map<String, Value>, ctx: &Map<String, Value>) -> String {
        render_template(&self.key, |path| {
            lookup(out, path)
                .or_else(|| lookup(ctx, path))
                .map(value::as_text)
                .unwrap_or_default()
        })
    }

    fn to_record(&self, out: Map<String, Value>, ctx: &Map<String, Value>, extra: &[(&str, String)]) -> OutRecord {
        let key = self.key_for(&out, ctx);
        let mut headers = vec![("mqtt.rule".to_string(), Some(Bytes::from(self.name.clone())))];
        for (k, v) in extra {
            headers.push((k.to_string(), Some(Bytes::from(v.clone()))));
        }
        OutRecord {
            topic: self.kafka_topic.clone(),
            key: (!key.is_empty()).then(|| Bytes::from(key)),
            value: Bytes::from(serde_json::to_vec(&Value::Object(out)).unwrap_or_default()),
            headers,
            timestamp: ctx
                .get("timestamp")
                .and_then(Value::as_i64)
                .unwrap_or_else(sluice_meta::now_ms),
            ack: None,
        }
    }

    pub fn view(&self) -> RuleView {
        RuleView {
            name: self.name.clone(),
            sql: self.sql.clone(),
            kafka_topic: self.kafka_topic.clone(),
            key: self.key.clone(),
            metrics: RuleMetrics {
                matched: self.matched.load(Ordering::Relaxed),
                passed: self.passed.load(Ordering::Relaxed),
                failed: self.failed.load(Ordering::Relaxed),
            },
        }
    }
}

fn insert_path(out: &mut Map<String, Value>, path: &[&str], v: Value) {
    match path {
        [] => {}
        [last] => {
            out.insert(last.to_string(), v);
        }
        [first, rest @ ..] => {
            let child = out
                .entry(first.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !child.is_object() {
                *child = Value::Object(Map::new());
            }
            if let Value::Object(m) = child {
                insert_path(m, rest, v);
            }
        }
    }
}

fn lookup<'a>(m: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut v = m.get(parts.next()?)?;
    for p in parts {
        v = v.get(p)?;
    }
    (!v.is_null()).then_some(v)
}

/// Replaces each `${path}` in `template` with `value(path)`.
pub fn render_template(template: &str, value: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        match rest[start + 2..].find('}') {
            Some(end) => {
                out.push_str(&value(rest[start + 2..start + 2 + end].trim()));
                rest = &rest[start + 2 + end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The message fields a rule sees.
fn message_context(c: &MessageCtx<'_>) -> Map<String, Value> {
    let msg = c.msg;
    let payload = serde_json::from_slice::<Value>(&msg.payload)
        .ok()
        .filter(|v| v.is_object() || v.is_array())
        .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&msg.payload).into_owned()));
    let user_props: Map<String, Value> = msg
        .props
        .user_properties
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let mut m = Map::new();
    m.insert("clientid".into(), Value::String(c.clientid.to_string()));
    m.insert(
        "username".into(),
        c.username.map_or(Value::Null, |u| Value::String(u.to_string())),
    );
    m.insert("topic".into(), Value::String(msg.topic.to_string()));
    m.insert("qos".into(), Value::from(msg.qos.value()));
    m.insert("retain".into(), Value::Bool(msg.retain));
    m.insert("payload".into(), payload);
    m.insert("timestamp".into(), Value::from(msg.created_ms));
    m.insert("user_properties".into(), Value::Object(user_props));
    m.insert("event".into(), Value::String("message.publish".into()));
    m
}

/// The rules of this gateway, persisted in the metadata store.
pub struct Rules {
    pool: Option<AnyPool>,
    rules: RwLock<Arc<Vec<Arc<Rule>>>>,
}

impl Rules {
    /// Rules kept in memory only (tests).
    pub fn in_memory() -> Self {
        Self {
            pool: None,
            rules: RwLock::new(Arc::new(Vec::new())),
        }
    }

    pub async fn load(pool: AnyPool) -> anyhow::Result<Self> {
        let rows = sqlx::query("SELECT name, sql_text, kafka_topic, key_template FROM mqtt_rules ORDER BY name")
            .fetch_all(&pool)
            .await?;
        let mut rules = Vec::new();
        for r in rows {
            let name: String = r.try_get("name")?;
            let sql: String = r.try_get("sql_text")?;
            let topic: String = r.try_get("kafka_topic")?;
            let key: String = r.try_get("key_template")?;
            match Rule::parse(&name, &sql, &topic, Some(&key)) {
                Ok(rule) => rules.push(Arc::new(rule)),
                Err(e) => tracing::warn!(rule = %name, error = %e, "skipping stored MQTT rule"),
            }
        }
        Ok(Self {
            pool: Some(pool),
            rules: RwLock::new(Arc::new(rules)),
        })
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Rule>>> {
        self.rules.read().unwrap().clone()
    }

    pub fn any(&self) -> bool {
        !self.rules.read().unwrap().is_empty()
    }

    /// Creates or replaces a rule.
    pub async fn put(
        &self,
        name: &str,
        sql: &str,
        kafka_topic: &str,
        key: Option<&str>,
    ) -> Result<RuleView, RuleError> {
        let rule = Rule::parse(name, sql, kafka_topic, key).map_err(RuleError::Invalid)?;
        if let Some(pool) = &self.pool {
            sqlx::query(
                "INSERT INTO mqtt_rules (name, sql_text, kafka_topic, key_template, created_ms) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (name) DO UPDATE SET sql_text = excluded.sql_text, kafka_topic = excluded.kafka_topic,
                   key_template = excluded.key_template",
            )
            .bind(&rule.name)
            .bind(&rule.sql)
            .bind(&rule.kafka_topic)
            .bind(&rule.key)
            .bind(sluice_meta::now_ms())
            .execute(pool)
            .await?;
        }
        let view = rule.view();
        let mut guard = self.rules.write().unwrap();
        let mut next: Vec<Arc<Rule>> = guard.iter().filter(|r| r.name != name).cloned().collect();
        next.push(Arc::new(rule));
        next.sort_by(|a, b| a.name.cmp(&b.name));
        *guard = Arc::new(next);
        Ok(view)
    }

    /// Deletes a rule; returns whether it existed.
    pub async fn delete(&self, name: &str) -> Result<bool, RuleError> {
        if let Some(pool) = &self.pool {
            sqlx::query("DELETE FROM mqtt_rules WHERE name = $1")
                .bind(name)
                .execute(pool)
                .await?;
        }
        let mut guard = self.rules.write().unwrap();
        let before = guard.len();
        let next: Vec<Arc<Rule>> = guard.iter().filter(|r| r.name != name).cloned().collect();
        let existed = next.len() != before;
        *guard = Arc::new(next);
        Ok(existed)
    }

    pub fn list(&self) -> Vec<RuleView> {
        self.snapshot().iter().map(|r| r.view()).collect()
    }

    pub fn get(&self, name: &str) -> Option<RuleView> {
        self.snapshot().iter().find(|r| r.name == name).map(|r| r.view())
    }

    /// Output records of the rules reading this message's topic.
    pub fn on_message(&self, c: &MessageCtx<'_>) -> Vec<OutRecord> {
        let rules = self.snapshot();
        let mut ctx = None;
        let mut out = Vec::new();
        for rule in rules.iter().filter(|r| r.reads_topic(&c.msg.topic)) {
            let ctx = ctx.get_or_insert_with(|| message_context(c));
            match rule.apply(ctx) {
                Ok(Some(row)) => out.push(rule.to_record(row, ctx, &[("mqtt.topic", c.msg.topic.to_string())])),
                Ok(None) => {}
                Err(e) => tracing::debug!(rule = %rule.name, error = %e, "MQTT rule failed"),
            }
        }
        out
    }

    /// Output records of the rules reading this event.
    pub fn on_event(&self, name: &str, event: &Value) -> Vec<OutRecord> {
        let rules = self.snapshot();
        let Some(ctx) = event.as_object() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for rule in rules.iter().filter(|r| r.reads_event(name)) {
            match rule.apply(ctx) {
                Ok(Some(row)) => out.push(rule.to_record(row, ctx, &[("mqtt.event", name.to_string())])),
                Ok(None) => {}
                Err(e) => tracing::debug!(rule = %rule.name, error = %e, "MQTT rule failed"),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
