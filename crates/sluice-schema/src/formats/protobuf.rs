//! Protobuf: schemas arrive as .proto text or as a base64 FileDescriptorProto
//! (what Confluent's Python serializer sends); both compile with protox, with
//! references served as imports and Google's well-known types built in.
//! Payloads start with Confluent's message-index path, then the message.

use std::collections::HashMap;

use base64::Engine;
use prost::Message;
use prost_reflect::{Cardinality, DescriptorPool, DynamicMessage, FileDescriptor, Kind, MessageDescriptor};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

use super::Dep;

/// Name given to a main schema sent as text (it has none of its own).
const MAIN_FILE: &str = "sluice_schema.proto";

#[derive(Debug)]
pub struct ProtoSchema {
    file: FileDescriptor,
}

struct Sources(HashMap<String, String>);

impl FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        let text = self.0.get(name).ok_or_else(|| protox::Error::file_not_found(name))?;
        to_file(name, text)
    }
}

/// A base64 FileDescriptorProto, if `text` is one.
fn as_descriptor(text: &str) -> Option<prost_types::FileDescriptorProto> {
    let t = text.trim();
    if t.contains(';') || t.contains(char::is_whitespace) {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(t).ok()?;
    prost_types::FileDescriptorProto::decode(bytes.as_slice()).ok()
}

fn to_file(name: &str, text: &str) -> Result<File, protox::Error> {
    match as_descriptor(text) {
        Some(mut fd) => {
            fd.name = Some(name.to_string());
            Ok(File::from_file_descriptor_proto(fd))
        }
        None => File::from_source(name, text),
    }
}

pub fn parse(text: &str, deps: &[Dep]) -> Result<ProtoSchema, String> {
    let main_name = as_descriptor(text)
        .and_then(|fd| fd.name)
        .filter(|n| !deps.iter().any(|d| &d.name == n))
        .unwrap_or_else(|| MAIN_FILE.to_string());
    let mut sources: HashMap<String, String> = deps.iter().map(|d| (d.name.clone(), d.text.clone())).collect();
    sources.insert(main_name.clone(), text.to_string());
    let mut chain = ChainFileResolver::new();
    chain.add(Sources(sources));
    chain.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(chain);
    compiler.include_imports(true).include_source_info(false);
    compiler.open_file(&main_name).map_err(|e| e.to_string())?;
    let pool: DescriptorPool = compiler.descriptor_pool();
    let file = pool
        .get_file_by_name(&main_name)
        .ok_or_else(|| "compiled file missing".to_string())?;
    if file.messages().len() == 0 {
        return Err("the schema defines no message".into());
    }
    Ok(ProtoSchema { file })
}

impl ProtoSchema {
    /// The file without source info, so formatting and comments do not change the id.
    pub fn canonical(&self) -> String {
        let mut fd = self.file.file_descriptor_proto().clone();
        fd.name = None;
        fd.source_code_info = None;
        base64::engine::general_purpose::STANDARD.encode(fd.encode_to_vec())
    }

    /// The schema as a base64 FileDescriptorProto (`?format=serialized`).
    pub fn serialized(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.file.file_descriptor_proto().encode_to_vec())
    }

    fn message_at(&self, path: &[i64]) -> Option<MessageDescriptor> {
        let first = usize::try_from(*path.first().unwrap_or(&0)).ok()?;
        let mut m = self.file.messages().nth(first)?;
        for &i in path.iter().skip(1) {
            let child = m.child_messages().nth(usize::try_from(i).ok()?)?;
            m = child;
        }
        Some(m)
    }

    pub fn message_name(&self, path: &[i64]) -> Option<String> {
        self.message_at(path).map(|m| m.full_name().to_string())
    }

    /// `payload` is the message-index path followed by the encoded message.
    pub fn validate(&self, payload: &[u8]) -> Result<(), String> {
        let (path, body) = message_indexes(payload)?;
        let m = self
            .message_at(&path)
            .ok_or_else(|| format!("message index {path:?} names no message of the schema"))?;
        DynamicMessage::decode(m.clone(), body)
            .map(|_| ())
            .map_err(|e| format!("not a valid {}: {e}", m.full_name()))
    }
}

/// Confluent's message-index path: a zigzag count, then that many zigzag
/// indexes; a count of 0 means the first message.
pub fn message_indexes(d: &[u8]) -> Result<(Vec<i64>, &[u8]), String> {
    let mut pos = 0;
    let n = zigzag(d, &mut pos)?;
    if !(0..=64).contains(&n) {
        return Err(format!("invalid message-index count {n}"));
    }
    let mut path = Vec::with_capacity(n.max(1) as usize);
    for _ in 0..n {
        path.push(zigzag(d, &mut pos)?);
    }
    if path.is_empty() {
        path.push(0);
    }
    Ok((path, &d[pos..]))
}

fn zigzag(d: &[u8], pos: &mut usize) -> Result<i64, String> {
    let mut v: u64 = 0;
    for shift in (0..70).step_by(7) {
        let b = *d.get(*pos).ok_or("payload ends inside the message indexes")?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
        }
    }
    Err("varint longer than 10 bytes".into())
}

// ---- compatibility, after Confluent's protobuf rules ----

fn diff(out: &mut Vec<String>, kind: &str, path: &str, info: impl std::fmt::Display) {
    out.push(format!(
        "{{errorType:'{kind}', description:'at path '{path}' in the new schema', additionalInfo:'{info}'}}"
    ));
}

/// Scalar kinds that share a wire encoding and so can replace each other.
fn wire_group(k: &Kind) -> Option<u8> {
    Some(match k {
        Kind::Int32 | Kind::Uint32 | Kind::Int64 | Kind::Uint64 | Kind::Bool => 0,
        Kind::Sint32 | Kind::Sint64 => 1,
        Kind::Fixed32 | Kind::Sfixed32 => 2,
        Kind::Fixed64 | Kind::Sfixed64 => 3,
        Kind::String | Kind::Bytes => 4,
        Kind::Float => 5,
        Kind::Double => 6,
        _ => return None,
    })
}

/// Why a consumer using `reader` cannot read what `writer` produced.
pub fn can_read(reader: &ProtoSchema, writer: &ProtoSchema) -> Vec<String> {
    let mut out = Vec::new();
    if reader.file.package_name() != writer.file.package_name() {
        diff(
            &mut out,
            "PACKAGE_CHANGED",
            "#/",
            format!("{} -> {}", writer.file.package_name(), reader.file.package_name()),
        );
    }
    let rpool = reader.file.parent_pool();
    let mut stack: Vec<MessageDescriptor> = writer.file.messages().collect();
    while let Some(wm) = stack.pop() {
        stack.extend(wm.child_messages().filter(|m| !m.is_map_entry()));
        let path = format!("#/{}", wm.full_name());
        let Some(rm) = rpool.get_message_by_name(wm.full_name()) else {
            diff(&mut out, "MESSAGE_REMOVED", &path, wm.full_name());
            continue;
        };
        for wf in wm.fields() {
            let fpath = format!("{path}/{}", wf.number());
            let Some(rf) = rm.get_field(wf.number()) else {
                if wf.cardinality() == Cardinality::Required {
                    diff(&mut out, "REQUIRED_FIELD_REMOVED", &fpath, wf.name());
                }
                if wf.containing_oneof().is_some() {
                    diff(&mut out, "ONEOF_FIELD_REMOVED", &fpath, wf.name());
                }
                continue;
            };
            let (rk, wk) = (rf.kind(), wf.kind());
            match (&rk, &wk) {
                (Kind::Message(r), Kind::Message(w)) if r.full_name() != w.full_name() => diff(
                    &mut out,
                    "FIELD_NAMED_TYPE_CHANGED",
                    &fpath,
                    format!("{} -> {}", w.full_name(), r.full_name()),
                ),
                (Kind::Enum(r), Kind::Enum(w)) if r.full_name() != w.full_name() => diff(
                    &mut out,
                    "FIELD_NAMED_TYPE_CHANGED",
                    &fpath,
                    format!("{} -> {}", w.full_name(), r.full_name()),
                ),
                (Kind::Message(_), Kind::Message(_)) | (Kind::Enum(_), Kind::Enum(_)) => {}
                (Kind::Enum(_), k) | (k, Kind::Enum(_)) if wire_group(k) == Some(0) => {}
                _ => match (wire_group(&rk), wire_group(&wk)) {
                    (Some(a), Some(b)) if a == b => {}
                    (Some(_), Some(_)) => diff(
                        &mut out,
                        "FIELD_SCALAR_KIND_CHANGED",
                        &fpath,
                        format!("{wk:?} -> {rk:?}"),
                    ),
                    _ => diff(&mut out, "FIELD_KIND_CHANGED", &fpath, format!("{wk:?} -> {rk:?}")),
                },
            }
            if rf.is_list() != wf.is_list() || rf.is_map() != wf.is_map() {
                diff(&mut out, "FIELD_NUMERIC_LABEL_CHANGED", &fpath, rf.name());
            }
            if rf.containing_oneof().is_some() && wf.containing_oneof().is_none() {
                diff(&mut out, "FIELD_MOVED_TO_EXISTING_ONEOF", &fpath, rf.name());
            }
        }
        for rf in rm.fields() {
            if wm.get_field(rf.number()).is_none() && rf.cardinality() == Cardinality::Required {
                diff(
                    &mut out,
                    "REQUIRED_FIELD_ADDED",
                    &format!("{path}/{}", rf.number()),
                    rf.name(),
                );
            }
        }
    }
    out
}
