//! Avro: parsing with references (named types from other subjects), a
//! normalised form for ids, Avro's schema-resolution rules for compatibility,
//! and a validating decoder that walks the binary encoding without building
//! values.

use std::collections::{HashMap, HashSet};

use apache_avro::schema::{InnerDecimalSchema, Name, UuidSchema};
use apache_avro::Schema;

use super::Dep;

/// A schema compiled into an arena: references resolve to indices, logical
/// types to the encoding they use.
#[derive(Debug)]
pub struct AvroSchema {
    nodes: Vec<Node>,
    root: usize,
    canonical: String,
}

#[derive(Debug, Clone)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array(usize),
    Map(usize),
    Union(Vec<usize>),
    Record(Named<Vec<Field>>),
    Enum(Named<EnumBody>),
    Fixed(Named<usize>),
    /// Reserved while a named type's body compiles (recursion).
    Pending,
}

#[derive(Debug, Clone)]
struct Named<T> {
    fullname: String,
    aliases: Vec<String>,
    body: T,
}

#[derive(Debug, Clone)]
struct Field {
    name: String,
    aliases: Vec<String>,
    node: usize,
    has_default: bool,
}

#[derive(Debug, Clone)]
struct EnumBody {
    symbols: Vec<String>,
    default: Option<String>,
}

/// Records nested deeper than this are refused rather than risking the stack.
const MAX_DEPTH: usize = 200;

pub fn parse(text: &str, deps: &[Dep]) -> Result<AvroSchema, String> {
    let dep_texts: Vec<&str> = deps.iter().map(|d| d.text.as_str()).collect();
    let (schema, schemata) = if dep_texts.is_empty() {
        (Schema::parse_str(text).map_err(|e| e.to_string())?, Vec::new())
    } else {
        Schema::parse_str_with_list(text, &dep_texts).map_err(|e| e.to_string())?
    };
    let mut defs: HashMap<String, &Schema> = HashMap::new();
    for s in schemata.iter().chain(std::iter::once(&schema)) {
        collect_named(s, &mut defs);
    }
    let mut c = Compiler {
        defs,
        nodes: Vec::new(),
        by_name: HashMap::new(),
    };
    let root = c.compile(&schema)?;
    let canonical = serde_json::to_string(&schema).map_err(|e| e.to_string())?;
    Ok(AvroSchema {
        nodes: c.nodes,
        root,
        canonical,
    })
}

fn named(name: &Name, aliases: Option<&Vec<apache_avro::schema::Alias>>) -> (String, Vec<String>) {
    let aliases = aliases
        .map(|a| a.iter().map(|a| a.fullname(name.namespace())).collect())
        .unwrap_or_default();
    (name.fullname(None), aliases)
}

fn collect_named<'a>(s: &'a Schema, out: &mut HashMap<String, &'a Schema>) {
    match s {
        Schema::Record(r) => {
            out.insert(r.name.fullname(None), s);
            for f in &r.fields {
                collect_named(&f.schema, out);
            }
        }
        Schema::Enum(e) => {
            out.insert(e.name.fullname(None), s);
        }
        Schema::Fixed(f) | Schema::Duration(f) => {
            out.insert(f.name.fullname(None), s);
        }
        Schema::Decimal(d) => {
            if let InnerDecimalSchema::Fixed(f) = &d.inner {
                out.insert(f.name.fullname(None), s);
            }
        }
        Schema::Uuid(UuidSchema::Fixed(f)) => {
            out.insert(f.name.fullname(None), s);
        }
        Schema::Array(a) => collect_named(&a.items, out),
        Schema::Map(m) => collect_named(&m.types, out),
        Schema::Union(u) => u.variants().iter().for_each(|v| collect_named(v, out)),
        _ => {}
    }
}

struct Compiler<'a> {
    defs: HashMap<String, &'a Schema>,
    nodes: Vec<Node>,
    by_name: HashMap<String, usize>,
}

impl Compiler<'_> {
    fn push(&mut self, n: Node) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    /// Named types compile once; a second mention (or a recursive one) reuses the index.
    fn named(
        &mut self,
        fullname: String,
        body: impl FnOnce(&mut Self, usize) -> Result<Node, String>,
    ) -> Result<usize, String> {
        if let Some(&i) = self.by_name.get(&fullname) {
            return Ok(i);
        }
        let i = self.push(Node::Pending);
        self.by_name.insert(fullname, i);
        let n = body(self, i)?;
        self.nodes[i] = n;
        Ok(i)
    }

    fn fixed(&mut self, f: &apache_avro::schema::FixedSchema) -> Result<usize, String> {
        let (fullname, aliases) = named(&f.name, f.aliases.as_ref());
        let size = f.size;
        self.named(fullname.clone(), |_, _| {
            Ok(Node::Fixed(Named {
                fullname,
                aliases,
                body: size,
            }))
        })
    }

    fn compile(&mut self, s: &Schema) -> Result<usize, String> {
        Ok(match s {
            Schema::Null => self.push(Node::Null),
            Schema::Boolean => self.push(Node::Boolean),
            Schema::Int | Schema::Date | Schema::TimeMillis => self.push(Node::Int),
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.push(Node::Long),
            Schema::Float => self.push(Node::Float),
            Schema::Double => self.push(Node::Double),
            Schema::Bytes | Schema::BigDecimal | Schema::Uuid(UuidSchema::Bytes) => self.push(Node::Bytes),
            Schema::String | Schema::Uuid(UuidSchema::String) => self.push(Node::String),
            Schema::Uuid(UuidSchema::Fixed(f)) | Schema::Duration(f) => self.fixed(f)?,
            Schema::Decimal(d) => match &d.inner {
                InnerDecimalSchema::Bytes => self.push(Node::Bytes),
                InnerDecimalSchema::Fixed(f) => self.fixed(f)?,
            },
            Schema::Array(a) => {
                let items = self.compile(&a.items)?;
                self.push(Node::Array(items))
            }
            Schema::Map(m) => {
                let values = self.compile(&m.types)?;
                self.push(Node::Map(values))
            }
            Schema::Union(u) => {
                let branches = u.variants().iter().map(|v| self.compile(v)).collect::<Result<_, _>>()?;
                self.push(Node::Union(branches))
            }
            Schema::Record(r) => {
                let (fullname, aliases) = named(&r.name, r.aliases.as_ref());
                self.named(fullname.clone(), |c, _| {
                    let mut fields = Vec::with_capacity(r.fields.len());
                    for f in &r.fields {
                        fields.push(Field {
                            name: f.name.clone(),
                            aliases: f.aliases.clone(),
                            node: c.compile(&f.schema)?,
                            has_default: f.default.is_some(),
                        });
                    }
                    Ok(Node::Record(Named {
                        fullname,
                        aliases,
                        body: fields,
                    }))
                })?
            }
            Schema::Enum(e) => {
                let (fullname, aliases) = named(&e.name, e.aliases.as_ref());
                let body = EnumBody {
                    symbols: e.symbols.clone(),
                    default: e.default.clone(),
                };
                self.named(fullname.clone(), |_, _| {
                    Ok(Node::Enum(Named {
                        fullname,
                        aliases,
                        body,
                    }))
                })?
            }
            Schema::Fixed(f) => self.fixed(f)?,
            Schema::Ref { name } => {
                let fullname = name.fullname(None);
                if let Some(&i) = self.by_name.get(&fullname) {
                    return Ok(i);
                }
                let def = *self
                    .defs
                    .get(&fullname)
                    .ok_or_else(|| format!("unknown named type {fullname}"))?;
                self.compile(def)?
            }
        })
    }
}

impl AvroSchema {
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// The full name of the top-level record (RecordNameStrategy subjects).
    pub fn record_name(&self) -> Option<&str> {
        match &self.nodes[self.root] {
            Node::Record(n) => Some(&n.fullname),
            Node::Enum(n) => Some(&n.fullname),
            Node::Fixed(n) => Some(&n.fullname),
            _ => None,
        }
    }

    /// Checks that `data` is exactly one datum of this schema.
    pub fn validate(&self, data: &[u8]) -> Result<(), String> {
        let mut pos = 0;
        self.skip(self.root, data, &mut pos, 0)?;
        if pos != data.len() {
            return Err(format!("{} trailing bytes after the Avro datum", data.len() - pos));
        }
        Ok(())
    }

    fn skip(&self, n: usize, d: &[u8], pos: &mut usize, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("datum nested too deeply".into());
        }
        match &self.nodes[n] {
            Node::Null => Ok(()),
            Node::Boolean => match take(d, pos, 1)?[0] {
                0 | 1 => Ok(()),
                b => Err(format!("invalid boolean byte {b}")),
            },
            Node::Int => {
                let v = long(d, pos)?;
                i32::try_from(v)
                    .map(|_| ())
                    .map_err(|_| format!("int out of range: {v}"))
            }
            Node::Long => long(d, pos).map(|_| ()),
            Node::Float => take(d, pos, 4).map(|_| ()),
            Node::Double => take(d, pos, 8).map(|_| ()),
            Node::Bytes => bytes(d, pos).map(|_| ()),
            Node::String => {
                let b = bytes(d, pos)?;
                std::str::from_utf8(b)
                    .map(|_| ())
                    .map_err(|_| "string is not valid UTF-8".into())
            }
            Node::Fixed(f) => take(d, pos, f.body).map(|_| ()),
            Node::Enum(e) => {
                let i = long(d, pos)?;
                if i < 0 || i as usize >= e.body.symbols.len() {
                    return Err(format!("enum {} index {i} out of range", e.fullname));
                }
                Ok(())
            }
            Node::Union(branches) => {
                let i = long(d, pos)?;
                let b = usize::try_from(i)
                    .ok()
                    .and_then(|i| branches.get(i))
                    .ok_or_else(|| format!("union branch {i} out of range (union has {})", branches.len()))?;
                self.skip(*b, d, pos, depth + 1)
            }
            Node::Array(items) => self.blocks(d, pos, |s, d, pos| s.skip(*items, d, pos, depth + 1)),
            Node::Map(values) => self.blocks(d, pos, |s, d, pos| {
                let k = bytes(d, pos)?;
                std::str::from_utf8(k).map_err(|_| "map key is not valid UTF-8".to_string())?;
                s.skip(*values, d, pos, depth + 1)
            }),
            Node::Record(r) => {
                for f in &r.body {
                    self.skip(f.node, d, pos, depth + 1)
                        .map_err(|e| format!("{}.{}: {e}", short(&r.fullname), f.name))?;
                }
                Ok(())
            }
            Node::Pending => Err("schema is incomplete".into()),
        }
    }

    fn blocks(
        &self,
        d: &[u8],
        pos: &mut usize,
        mut item: impl FnMut(&Self, &[u8], &mut usize) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            let mut count = long(d, pos)?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                count = count.checked_neg().ok_or("invalid block count")?;
                let size = long(d, pos)?;
                if size < 0 {
                    return Err("negative block size".into());
                }
            }
            // Every item takes at least... nothing (null items), so bound by a sane count.
            if count as u64 > (d.len() as u64).max(1) * 8 + 1024 {
                return Err(format!("block count {count} exceeds the datum"));
            }
            for _ in 0..count {
                item(self, d, pos)?;
            }
        }
    }
}

fn short(fullname: &str) -> &str {
    fullname.rsplit('.').next().unwrap_or(fullname)
}

fn take<'a>(d: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], String> {
    let end = pos.checked_add(n).filter(|&e| e <= d.len()).ok_or("datum ends early")?;
    let s = &d[*pos..end];
    *pos = end;
    Ok(s)
}

fn long(d: &[u8], pos: &mut usize) -> Result<i64, String> {
    let mut v: u64 = 0;
    for shift in (0..70).step_by(7) {
        let b = *d.get(*pos).ok_or("datum ends early")?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
        }
    }
    Err("varint longer than 10 bytes".into())
}

fn bytes<'a>(d: &'a [u8], pos: &mut usize) -> Result<&'a [u8], String> {
    let len = long(d, pos)?;
    let len = usize::try_from(len).map_err(|_| format!("negative length {len}"))?;
    take(d, pos, len)
}

// ---- compatibility: Avro schema resolution (reader reads writer's data) ----

/// Why `reader` cannot read data written with `writer`; empty if it can.
pub fn can_read(reader: &AvroSchema, writer: &AvroSchema) -> Vec<String> {
    let mut c = Compat {
        r: reader,
        w: writer,
        seen: HashSet::new(),
        out: Vec::new(),
    };
    c.check(reader.root, writer.root, "/");
    c.out
}

struct Compat<'a> {
    r: &'a AvroSchema,
    w: &'a AvroSchema,
    seen: HashSet<(usize, usize)>,
    out: Vec<String>,
}

fn type_name(n: &Node) -> &'static str {
    match n {
        Node::Null => "null",
        Node::Boolean => "boolean",
        Node::Int => "int",
        Node::Long => "long",
        Node::Float => "float",
        Node::Double => "double",
        Node::Bytes => "bytes",
        Node::String => "string",
        Node::Array(_) => "array",
        Node::Map(_) => "map",
        Node::Union(_) => "union",
        Node::Record(_) => "record",
        Node::Enum(_) => "enum",
        Node::Fixed(_) => "fixed",
        Node::Pending => "?",
    }
}

fn names_match<T>(r: &Named<T>, w: &Named<T>) -> bool {
    short(&r.fullname) == short(&w.fullname) || r.aliases.contains(&w.fullname)
}

impl Compat<'_> {
    /// Whether reader node `rn` can read writer node `wn`, without recording why not.
    fn readable(&mut self, rn: usize, wn: usize) -> bool {
        let (before, seen) = (self.out.len(), self.seen.clone());
        self.check(rn, wn, "");
        let ok = self.out.len() == before;
        self.out.truncate(before);
        self.seen = seen;
        ok
    }

    fn check(&mut self, rn: usize, wn: usize, path: &str) {
        let (r, w) = (&self.r.nodes[rn], &self.w.nodes[wn]);
        // Recursive records: assume compatible on re-entry.
        if matches!(r, Node::Record(_)) && !self.seen.insert((rn, wn)) {
            return;
        }
        use Node::*;
        match (r, w) {
            (_, Union(wb)) => {
                let wb = wb.clone();
                for (i, b) in wb.iter().enumerate() {
                    if let Union(_) = r {
                        if !self.readable_by_union(rn, *b) {
                            self.out.push(format!(
                                "{{errorType:'MISSING_UNION_BRANCH', description:'The new schema is missing a type inside a union field at path '{path}{i}' in the old schema', additionalInfo:'reader union lacking writer type: {}'}}",
                                type_name(&self.w.nodes[*b]).to_uppercase()
                            ));
                        }
                    } else {
                        self.check(rn, *b, &format!("{path}{i}/"));
                    }
                }
            }
            (Union(_), _) => {
                if !self.readable_by_union(rn, wn) {
                    self.out.push(format!(
                        "{{errorType:'MISSING_UNION_BRANCH', description:'The new schema is missing a type inside a union field at path '{path}' in the old schema', additionalInfo:'reader union lacking writer type: {}'}}",
                        type_name(w).to_uppercase()
                    ));
                }
            }
            (Null, Null) | (Boolean, Boolean) | (Int, Int) | (Long, Long) | (Float, Float) | (Double, Double) => {}
            (Bytes, Bytes) | (String, String) | (Bytes, String) | (String, Bytes) => {}
            (Long, Int) | (Float, Int | Long) | (Double, Int | Long | Float) => {}
            (Array(ri), Array(wi)) => {
                let (ri, wi) = (*ri, *wi);
                self.check(ri, wi, &format!("{path}items/"));
            }
            (Map(rv), Map(wv)) => {
                let (rv, wv) = (*rv, *wv);
                self.check(rv, wv, &format!("{path}values/"));
            }
            (Fixed(rf), Fixed(wf)) => {
                if !names_match(rf, wf) {
                    self.name_mismatch(path, &rf.fullname, &wf.fullname);
                } else if rf.body != wf.body {
                    self.out.push(format!(
                        "{{errorType:'FIXED_SIZE_MISMATCH', description:'The size of FIXED type field at path '{path}size' in the new schema does not match with the old schema', additionalInfo:'expected: {}, found: {}'}}",
                        wf.body, rf.body
                    ));
                }
            }
            (Enum(re), Enum(we)) => {
                if !names_match(re, we) {
                    self.name_mismatch(path, &re.fullname, &we.fullname);
                } else if re.body.default.is_none() {
                    let missing: Vec<&str> = we
                        .body
                        .symbols
                        .iter()
                        .filter(|s| !re.body.symbols.contains(s))
                        .map(|s| s.as_str())
                        .collect();
                    if !missing.is_empty() {
                        self.out.push(format!(
                            "{{errorType:'MISSING_ENUM_SYMBOLS', description:'The new schema is missing enum symbols '{}' at path '{path}symbols' in the old schema', additionalInfo:'enum type {} is missing symbols'}}",
                            missing.join(","),
                            re.fullname
                        ));
                    }
                }
            }
            (Record(rr), Record(wr)) => {
                if !names_match(rr, wr) {
                    self.name_mismatch(path, &rr.fullname, &wr.fullname);
                    return;
                }
                let (rfields, wfields) = (rr.body.clone(), wr.body.clone());
                for (i, rf) in rfields.iter().enumerate() {
                    let wf = wfields
                        .iter()
                        .find(|wf| wf.name == rf.name || rf.aliases.contains(&wf.name));
                    match wf {
                        Some(wf) => self.check(rf.node, wf.node, &format!("{path}fields/{i}/type/")),
                        None if rf.has_default => {}
                        None => self.out.push(format!(
                            "{{errorType:'READER_FIELD_MISSING_DEFAULT_VALUE', description:'The field '{}' at path '{path}fields/{i}' in the new schema has no default value and is missing in the old schema', additionalInfo:'{}'}}",
                            rf.name, rf.name
                        )),
                    }
                }
            }
            _ => self.out.push(format!(
                "{{errorType:'TYPE_MISMATCH', description:'The type (path '{path}') of a field in the new schema does not match with the old schema', additionalInfo:'reader type: {} not compatible with writer type: {}'}}",
                type_name(r).to_uppercase(),
                type_name(w).to_uppercase()
            )),
        }
    }

    fn readable_by_union(&mut self, rn: usize, wn: usize) -> bool {
        let Node::Union(rb) = &self.r.nodes[rn] else {
            return self.readable(rn, wn);
        };
        let rb = rb.clone();
        // Avro picks the first branch of the same type, else the first it can promote to.
        rb.iter().any(|b| self.readable(*b, wn))
    }

    fn name_mismatch(&mut self, path: &str, reader: &str, writer: &str) {
        self.out.push(format!(
            "{{errorType:'NAME_MISMATCH', description:'The name of the schema has changed (path '{path}name')', additionalInfo:'expected: {writer}, found: {reader}'}}"
        ));
    }
}
