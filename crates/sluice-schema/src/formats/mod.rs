//! The three schema formats behind one interface: parse (with references),
//! normalise, check compatibility, validate a payload.

pub mod avro;
pub mod json;
pub mod protobuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SchemaType {
    #[serde(rename = "AVRO")]
    Avro,
    #[serde(rename = "PROTOBUF")]
    Protobuf,
    #[serde(rename = "JSON")]
    Json,
}

impl SchemaType {
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaType::Avro => "AVRO",
            SchemaType::Protobuf => "PROTOBUF",
            SchemaType::Json => "JSON",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "AVRO" => Some(SchemaType::Avro),
            "PROTOBUF" => Some(SchemaType::Protobuf),
            "JSON" => Some(SchemaType::Json),
            _ => None,
        }
    }
}

/// A referenced schema, already resolved: `name` is what the referring schema
/// calls it (an Avro full name, a .proto import path, a JSON Schema URI).
#[derive(Debug, Clone)]
pub struct Dep {
    pub name: String,
    pub text: String,
}

/// A parsed, compiled schema of any format.
#[derive(Debug)]
pub enum Parsed {
    Avro(avro::AvroSchema),
    Protobuf(protobuf::ProtoSchema),
    Json(json::JsonSchema),
}

pub fn parse(ty: SchemaType, text: &str, deps: &[Dep]) -> Result<Parsed, String> {
    Ok(match ty {
        SchemaType::Avro => Parsed::Avro(avro::parse(text, deps)?),
        SchemaType::Protobuf => Parsed::Protobuf(protobuf::parse(text, deps)?),
        SchemaType::Json => Parsed::Json(json::parse(text, deps)?),
    })
}

impl Parsed {
    pub fn schema_type(&self) -> SchemaType {
        match self {
            Parsed::Avro(_) => SchemaType::Avro,
            Parsed::Protobuf(_) => SchemaType::Protobuf,
            Parsed::Json(_) => SchemaType::Json,
        }
    }

    /// The normalised text: equivalent schemas have the same one, so they share an id.
    pub fn canonical(&self) -> String {
        match self {
            Parsed::Avro(s) => s.canonical().to_string(),
            Parsed::Protobuf(s) => s.canonical(),
            Parsed::Json(s) => s.canonical(),
        }
    }

    /// Names of the record types a RecordNameStrategy subject may be named after.
    pub fn record_name(&self, message_index: &[i64]) -> Option<String> {
        match self {
            Parsed::Avro(s) => s.record_name().map(str::to_string),
            Parsed::Protobuf(s) => s.message_name(message_index),
            Parsed::Json(s) => s.title(),
        }
    }

    /// Checks a payload (what follows the 5-byte wire-format header).
    pub fn validate(&self, payload: &[u8]) -> Result<(), String> {
        match self {
            Parsed::Avro(s) => s.validate(payload),
            Parsed::Protobuf(s) => s.validate(payload),
            Parsed::Json(s) => s.validate(payload),
        }
    }

    /// Why a consumer using `self` cannot read data written with `writer`
    /// (empty if it can).
    pub fn can_read(&self, writer: &Parsed) -> Vec<String> {
        match (self, writer) {
            (Parsed::Avro(r), Parsed::Avro(w)) => avro::can_read(r, w),
            (Parsed::Protobuf(r), Parsed::Protobuf(w)) => protobuf::can_read(r, w),
            (Parsed::Json(r), Parsed::Json(w)) => json::can_read(r, w),
            (r, w) => vec![format!(
                "{{errorType:'SCHEMA_TYPE_MISMATCH', description:'Incompatible because of different schema type', additionalInfo:'{} is not {}'}}",
                r.schema_type().as_str(),
                w.schema_type().as_str()
            )],
        }
    }
}
