//! JSON Schema: validation with the `jsonschema` crate (references served from
//! the registry, never fetched), a normalised text, and compatibility rules
//! after Confluent's: a reader accepts what the writer produced.

use std::collections::HashMap;

use jsonschema::{Retrieve, Uri, Validator};
use serde_json::Value;

use super::Dep;

pub struct JsonSchema {
    value: Value,
    validator: Validator,
}

impl std::fmt::Debug for JsonSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonSchema").field("value", &self.value).finish()
    }
}

/// Serves referenced schemas by the name they were registered under.
struct Refs(HashMap<String, Value>);

impl Retrieve for Refs {
    fn retrieve(&self, uri: &Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let u = uri.as_str();
        self.0
            .iter()
            .find(|(name, _)| u == name.as_str() || u.ends_with(&format!("/{}", name.trim_start_matches("./"))))
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("reference {u} is not among the schema's references").into())
    }
}

pub fn parse(text: &str, deps: &[Dep]) -> Result<JsonSchema, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if !matches!(value, Value::Object(_) | Value::Bool(_)) {
        return Err("a JSON Schema must be an object or a boolean".into());
    }
    let mut refs = HashMap::new();
    for d in deps {
        let v: Value = serde_json::from_str(&d.text).map_err(|e| format!("reference {} is not JSON: {e}", d.name))?;
        refs.insert(d.name.clone(), v);
    }
    jsonschema::meta::validate(&value).map_err(|e| format!("not a valid JSON Schema: {e}"))?;
    let validator = jsonschema::options()
        .with_retriever(Refs(refs))
        .build(&value)
        .map_err(|e| e.to_string())?;
    Ok(JsonSchema { value, validator })
}

impl JsonSchema {
    pub fn canonical(&self) -> String {
        self.value.to_string()
    }

    pub fn title(&self) -> Option<String> {
        self.value.get("title").and_then(Value::as_str).map(str::to_string)
    }

    pub fn validate(&self, payload: &[u8]) -> Result<(), String> {
        let v: Value = serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
        self.validator.validate(&v).map_err(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("{at}: {e}")
            }
        })
    }
}

/// Why documents valid under `writer` may be invalid under `reader`.
pub fn can_read(reader: &JsonSchema, writer: &JsonSchema) -> Vec<String> {
    let mut out = Vec::new();
    check(&reader.value, &writer.value, "#", &mut out);
    out
}

fn diff(out: &mut Vec<String>, kind: &str, path: &str, info: impl std::fmt::Display) {
    out.push(format!(
        "{{errorType:'{kind}', description:'at path '{path}' in the new schema', additionalInfo:'{info}'}}"
    ));
}

fn types(s: &Value) -> Option<Vec<&str>> {
    match s.get("type")? {
        Value::String(t) => Some(vec![t.as_str()]),
        Value::Array(a) => Some(a.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn num(s: &Value, k: &str) -> Option<f64> {
    s.get(k).and_then(Value::as_f64)
}

/// Open content model: properties not listed are allowed.
fn is_open(s: &Value) -> bool {
    !matches!(s.get("additionalProperties"), Some(Value::Bool(false)))
        && !matches!(s.get("unevaluatedProperties"), Some(Value::Bool(false)))
}

fn check(r: &Value, w: &Value, path: &str, out: &mut Vec<String>) {
    match (r, w) {
        (Value::Bool(true), _) => return,
        (_, Value::Bool(false)) => return,
        (Value::Bool(false), _) => return diff(out, "TYPE_NARROWED", path, "the new schema accepts nothing"),
        _ => {}
    }
    if r == w {
        return;
    }
    if let (Some(rr), Some(wr)) = (r.get("$ref"), w.get("$ref")) {
        if rr != wr {
            diff(out, "REFERENCE_CHANGED", path, format!("{wr} -> {rr}"));
        }
        return;
    }
    match (types(r), types(w)) {
        (Some(rt), Some(wt)) => {
            for t in &wt {
                let covered = rt.contains(t) || (*t == "integer" && rt.contains(&"number"));
                if !covered {
                    diff(out, "TYPE_NARROWED", path, format!("type {t} is no longer accepted"));
                }
            }
        }
        (Some(rt), None) => diff(out, "TYPE_NARROWED", path, format!("type restricted to {rt:?}")),
        _ => {}
    }
    // Numeric and string ranges may only widen.
    for (k, tighter) in [
        ("maximum", f64::lt as fn(&f64, &f64) -> bool),
        ("exclusiveMaximum", f64::lt),
        ("maxLength", f64::lt),
        ("maxItems", f64::lt),
        ("maxProperties", f64::lt),
        ("minimum", f64::gt),
        ("exclusiveMinimum", f64::gt),
        ("minLength", f64::gt),
        ("minItems", f64::gt),
        ("minProperties", f64::gt),
    ] {
        match (num(r, k), num(w, k)) {
            (Some(rv), Some(wv)) if tighter(&rv, &wv) => diff(
                out,
                &format!("{}_CHANGED", k.to_uppercase()),
                path,
                format!("{k} {wv} -> {rv}"),
            ),
            (Some(rv), None) => diff(
                out,
                &format!("{}_ADDED", k.to_uppercase()),
                path,
                format!("{k} {rv} added"),
            ),
            _ => {}
        }
    }
    if let Some(rp) = r.get("pattern") {
        if w.get("pattern") != Some(rp) {
            diff(out, "PATTERN_ADDED_OR_CHANGED", path, format!("pattern {rp}"));
        }
    }
    if let Some(Value::Array(re)) = r.get("enum") {
        match w.get("enum") {
            Some(Value::Array(we)) => {
                if we.iter().any(|v| !re.contains(v)) {
                    diff(out, "ENUM_ARRAY_NARROWED", path, "enum values removed");
                }
            }
            _ => diff(out, "ENUM_ARRAY_NARROWED", path, "enum added"),
        }
    }
    check_object(r, w, path, out);
    match (r.get("items"), w.get("items")) {
        (Some(ri), Some(wi)) => check(ri, wi, &format!("{path}/items"), out),
        (Some(ri), None) => check(ri, &Value::Bool(true), &format!("{path}/items"), out),
        _ => {}
    }
}

fn check_object(r: &Value, w: &Value, path: &str, out: &mut Vec<String>) {
    let empty = serde_json::Map::new();
    let rp = r.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    let wp = w.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    for (name, rs) in rp {
        let p = format!("{path}/properties/{name}");
        match wp.get(name) {
            Some(ws) => check(rs, ws, &p, out),
            None if is_open(w) && !matches!(rs, Value::Bool(true)) && rs.as_object().is_none_or(|o| !o.is_empty()) => {
                diff(out, "PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL", &p, name)
            }
            None => {}
        }
    }
    for name in wp.keys() {
        if !rp.contains_key(name) && !is_open(r) {
            diff(
                out,
                "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL",
                &format!("{path}/properties/{name}"),
                name,
            );
        }
    }
    if is_open(w) && !is_open(r) {
        diff(
            out,
            "ADDITIONAL_PROPERTIES_REMOVED",
            path,
            "additionalProperties: false",
        );
    }
    let req = |s: &Value| -> Vec<String> {
        s.get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default()
    };
    let wreq = req(w);
    for name in req(r) {
        if !wreq.contains(&name) {
            diff(out, "REQUIRED_ATTRIBUTE_ADDED", &format!("{path}/required"), name);
        }
    }
}
