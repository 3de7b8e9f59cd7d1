//! Registry operations: registration with normalisation and compatibility
//! checks, lookups, deletes, configs and modes. Parsed schemas are cached by
//! id (ids are immutable); everything else is read from the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use sluice_meta::MetaStore;

use crate::error::{RegistryError, Result};
use crate::formats::{self, Dep, Parsed, SchemaType};
use crate::store::{Reference, Store, StoredSchema, VersionRow, GLOBAL};

pub const LEVELS: &[&str] = &[
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
];
pub const MODES: &[&str] = &["READWRITE", "READONLY", "READONLY_OVERRIDE", "IMPORT"];
pub const DEFAULT_LEVEL: &str = "BACKWARD";
pub const DEFAULT_MODE: &str = "READWRITE";

/// Deepest chain of references followed.
const MAX_REF_DEPTH: usize = 32;

#[derive(Clone)]
pub struct Registry {
    pub(crate) store: Store,
    parsed: Arc<Mutex<HashMap<i64, Arc<Parsed>>>>,
    /// Bumped by every change to subjects made through this broker, so that
    /// enforcement re-reads a subject's ids at once instead of waiting out its cache.
    pub(crate) changes: Arc<std::sync::atomic::AtomicU64>,
}

/// A version as the API shows it.
#[derive(Debug, Clone)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: i32,
    pub schema: StoredSchema,
    pub deleted: bool,
}

/// Which version a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    Latest,
    Number(i32),
}

impl VersionSpec {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "latest" | "-1" => Ok(VersionSpec::Latest),
            _ => match s.parse::<i32>() {
                Ok(v) if v >= 1 => Ok(VersionSpec::Number(v)),
                _ => Err(RegistryError::invalid_version(s)),
            },
        }
    }
}

fn fingerprint(ty: SchemaType, canonical: &str, refs: &[Reference]) -> String {
    let mut h = Sha256::new();
    h.update(ty.as_str());
    h.update([0]);
    h.update(canonical);
    h.update([0]);
    h.update(serde_json::to_string(refs).unwrap_or_default());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Registry {
    pub fn new(meta: &MetaStore) -> Self {
        Self {
            store: Store::new(meta),
            parsed: Arc::default(),
            changes: Arc::default(),
        }
    }

    // ---- schemas ----

    /// Referenced schemas in dependency order (a reference's own references first).
    pub async fn resolve_refs(&self, refs: &[Reference]) -> Result<Vec<Dep>> {
        let mut out = Vec::new();
        let mut stack: Vec<(Reference, usize, bool)> = refs.iter().rev().map(|r| (r.clone(), 0, false)).collect();
        let mut texts: HashMap<String, StoredSchema> = HashMap::new();
        while let Some((r, depth, expanded)) = stack.pop() {
            if depth > MAX_REF_DEPTH {
                return Err(RegistryError::invalid_schema("references nest too deeply"));
            }
            if out.iter().any(|d: &Dep| d.name == r.name) {
                continue;
            }
            if expanded {
                let s = &texts[&r.name];
                out.push(Dep {
                    name: r.name.clone(),
                    text: s.text.clone(),
                });
                continue;
            }
            let spec = if r.version <= 0 {
                VersionSpec::Latest
            } else {
                VersionSpec::Number(r.version)
            };
            let v = self.version(&r.subject, spec, true).await.map_err(|_| {
                RegistryError::invalid_schema(format!(
                    "reference {} to subject {} version {} does not exist",
                    r.name, r.subject, r.version
                ))
            })?;
            let inner = v.schema.refs.clone();
            texts.insert(r.name.clone(), v.schema);
            stack.push((r, depth, true));
            stack.extend(inner.into_iter().rev().map(|i| (i, depth + 1, false)));
        }
        Ok(out)
    }

    pub async fn parse(&self, ty: SchemaType, text: &str, refs: &[Reference]) -> Result<Parsed> {
        let deps = self.resolve_refs(refs).await?;
        formats::parse(ty, text, &deps).map_err(RegistryError::invalid_schema)
    }

    pub async fn schema(&self, id: i64) -> Result<StoredSchema> {
        self.store.schema(id).await?.ok_or_else(RegistryError::schema_not_found)
    }

    /// The compiled schema with this id; cached, since an id's schema never changes.
    pub async fn parsed(&self, id: i64) -> Result<Arc<Parsed>> {
        if let Some(p) = self.parsed.lock().unwrap().get(&id) {
            return Ok(p.clone());
        }
        let s = self.schema(id).await?;
        let p = Arc::new(self.parse(s.schema_type, &s.text, &s.refs).await?);
        self.parsed.lock().unwrap().insert(id, p.clone());
        Ok(p)
    }

    // ---- subjects and versions ----

    pub async fn subjects(&self, deleted: bool, prefix: &str) -> Result<Vec<String>> {
        let all = self.store.subjects(deleted).await?;
        Ok(all.into_iter().filter(|s| s.starts_with(prefix)).collect())
    }

    /// A subject's versions; 40401 if it has none.
    pub async fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<VersionRow>> {
        let v = self.store.versions(subject, deleted).await?;
        if v.is_empty() {
            return Err(RegistryError::subject_not_found(subject));
        }
        Ok(v)
    }

    pub async fn version(&self, subject: &str, spec: VersionSpec, deleted: bool) -> Result<SubjectVersion> {
        let all = self.store.versions(subject, true).await?;
        if all.is_empty() {
            return Err(RegistryError::subject_not_found(subject));
        }
        let row = match spec {
            VersionSpec::Latest => all.iter().rev().find(|v| !v.deleted),
            VersionSpec::Number(n) => all.iter().find(|v| v.version == n && (deleted || !v.deleted)),
        };
        let Some(row) = row else {
            if spec == VersionSpec::Latest {
                return Err(RegistryError::subject_not_found(subject));
            }
            let n = match spec {
                VersionSpec::Number(n) => n.to_string(),
                VersionSpec::Latest => "latest".into(),
            };
            return Err(RegistryError::version_not_found(&n));
        };
        Ok(SubjectVersion {
            subject: subject.to_string(),
            version: row.version,
            schema: self.schema(row.schema_id).await?,
            deleted: row.deleted,
        })
    }

    /// Registers a schema under a subject (or returns the id it already has there).
    pub async fn register(&self, subject: &str, ty: SchemaType, text: &str, refs: &[Reference]) -> Result<i64> {
        if subject.is_empty() {
            return Err(RegistryError::bad_request("subject name must not be empty"));
        }
        let mode = self.mode(subject).await?;
        if mode == "READONLY" || mode == "READONLY_OVERRIDE" {
            return Err(RegistryError::operation_not_permitted(format!(
                "Subject {subject} is in read-only mode"
            )));
        }
        let parsed = self.parse(ty, text, refs).await?;
        let canonical = parsed.canonical();
        let fp = fingerprint(ty, &canonical, refs);
        let live = self.store.versions(subject, false).await?;
        if let Some(id) = self.store.id_by_fingerprint(&fp).await? {
            if live.iter().any(|v| v.schema_id == id) {
                return Ok(id);
            }
        }
        let level = self.compatibility(subject).await?;
        let messages = self.incompatibilities(&parsed, &live, &level).await?;
        if !messages.is_empty() {
            return Err(RegistryError::incompatible(&messages));
        }
        // Protobuf keeps the text as sent (a .proto or a descriptor); the others their normal form.
        let stored = if ty == SchemaType::Protobuf { text } else { &canonical };
        let id = self.store.intern_schema(ty, &fp, stored, refs).await?;
        self.store.add_version(subject, id).await?;
        self.changed();
        Ok(id)
    }

    /// The subject's version holding this schema.
    pub async fn lookup(
        &self,
        subject: &str,
        ty: SchemaType,
        text: &str,
        refs: &[Reference],
        deleted: bool,
    ) -> Result<SubjectVersion> {
        let all = self.store.versions(subject, deleted).await?;
        if all.is_empty() {
            return Err(RegistryError::subject_not_found(subject));
        }
        let parsed = self.parse(ty, text, refs).await?;
        let fp = fingerprint(ty, &parsed.canonical(), refs);
        let id = self
            .store
            .id_by_fingerprint(&fp)
            .await?
            .ok_or_else(RegistryError::schema_not_found)?;
        let row = all
            .iter()
            .rev()
            .find(|v| v.schema_id == id)
            .ok_or_else(RegistryError::schema_not_found)?;
        Ok(SubjectVersion {
            subject: subject.to_string(),
            version: row.version,
            schema: self.schema(id).await?,
            deleted: row.deleted,
        })
    }

    /// Messages saying why `new` breaks `level` against the subject's versions.
    pub async fn incompatibilities(&self, new: &Parsed, live: &[VersionRow], level: &str) -> Result<Vec<String>> {
        let (backward, forward) = match level {
            "BACKWARD" | "BACKWARD_TRANSITIVE" => (true, false),
            "FORWARD" | "FORWARD_TRANSITIVE" => (false, true),
            "FULL" | "FULL_TRANSITIVE" => (true, true),
            _ => return Ok(Vec::new()),
        };
        let against: Vec<&VersionRow> = if level.ends_with("_TRANSITIVE") {
            live.iter().collect()
        } else {
            live.last().into_iter().collect()
        };
        let mut out = Vec::new();
        for v in against.into_iter().rev() {
            let old = self.parsed(v.schema_id).await?;
            let mut found = Vec::new();
            if backward {
                found.extend(new.can_read(&old));
            }
            if forward {
                found.extend(old.can_read(new));
            }
            if !found.is_empty() {
                out.extend(found);
                out.push(format!("{{oldSchemaVersion: {}}}", v.version));
                out.push(format!("{{compatibility: '{level}'}}"));
            }
        }
        Ok(out)
    }

    /// Checks a schema against one version, or all that the level names (`None`).
    pub async fn check_compatibility(
        &self,
        subject: &str,
        spec: Option<VersionSpec>,
        ty: SchemaType,
        text: &str,
        refs: &[Reference],
    ) -> Result<Vec<String>> {
        let parsed = self.parse(ty, text, refs).await?;
        let level = self.compatibility(subject).await?;
        let live = self.store.versions(subject, false).await?;
        let against = match spec {
            None => live,
            Some(spec) => {
                let v = self.version(subject, spec, false).await?;
                live.into_iter().filter(|r| r.version == v.version).collect()
            }
        };
        // One named version: the level's direction, without transitivity.
        let level = match spec {
            Some(_) => level.trim_end_matches("_TRANSITIVE").to_string(),
            None => level,
        };
        self.incompatibilities(&parsed, &against, &level).await
    }

    fn changed(&self) {
        self.changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn change_count(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn ensure_unreferenced(&self, subject: &str, version: i32) -> Result<()> {
        if !self.store.referenced_by(subject, version).await?.is_empty() {
            return Err(RegistryError::reference_exists(subject, version));
        }
        Ok(())
    }

    pub async fn delete_version(&self, subject: &str, spec: VersionSpec, permanent: bool) -> Result<i32> {
        self.ensure_writable(subject).await?;
        let all = self.store.versions(subject, true).await?;
        if all.is_empty() {
            return Err(RegistryError::subject_not_found(subject));
        }
        let row = match spec {
            VersionSpec::Latest => all.iter().rev().find(|v| !v.deleted),
            VersionSpec::Number(n) => all.iter().find(|v| v.version == n),
        };
        let Some(row) = row else {
            return Err(RegistryError::version_not_found(&match spec {
                VersionSpec::Number(n) => n.to_string(),
                VersionSpec::Latest => "latest".into(),
            }));
        };
        self.ensure_unreferenced(subject, row.version).await?;
        if permanent {
            if !row.deleted {
                return Err(RegistryError::version_not_soft_deleted(subject, row.version));
            }
            self.store.hard_delete(subject, row.version).await?;
        } else {
            if row.deleted {
                return Err(RegistryError::version_soft_deleted(subject, row.version));
            }
            self.store.soft_delete(subject, row.version).await?;
        }
        self.changed();
        Ok(row.version)
    }

    pub async fn delete_subject(&self, subject: &str, permanent: bool) -> Result<Vec<i32>> {
        self.ensure_writable(subject).await?;
        let all = self.store.versions(subject, true).await?;
        if all.is_empty() {
            return Err(RegistryError::subject_not_found(subject));
        }
        let live: Vec<&VersionRow> = all.iter().filter(|v| !v.deleted).collect();
        for v in &all {
            self.ensure_unreferenced(subject, v.version).await?;
        }
        if permanent {
            if !live.is_empty() {
                return Err(RegistryError::subject_not_soft_deleted(subject));
            }
            for v in &all {
                self.store.hard_delete(subject, v.version).await?;
            }
            self.store.delete_setting(subject, "compatibility").await?;
            self.store.delete_setting(subject, "mode").await?;
            return Ok(all.iter().map(|v| v.version).collect());
        }
        if live.is_empty() {
            return Err(RegistryError::subject_soft_deleted(subject));
        }
        for v in &live {
            self.store.soft_delete(subject, v.version).await?;
        }
        self.changed();
        Ok(live.iter().map(|v| v.version).collect())
    }

    pub async fn referenced_by(&self, subject: &str, spec: VersionSpec) -> Result<Vec<i64>> {
        let v = self.version(subject, spec, true).await?;
        self.store.referenced_by(subject, v.version).await
    }

    pub async fn versions_of_schema(&self, id: i64, subject: Option<&str>, deleted: bool) -> Result<Vec<VersionRow>> {
        self.schema(id).await?;
        let rows = self.store.versions_of_schema(id).await?;
        Ok(rows
            .into_iter()
            .filter(|v| deleted || !v.deleted)
            .filter(|v| subject.is_none_or(|s| v.subject == s))
            .collect())
    }

    // ---- config and mode ----

    /// The subject's level, else the global one, else BACKWARD.
    pub async fn compatibility(&self, subject: &str) -> Result<String> {
        if let Some(l) = self.store.setting(subject, "compatibility").await? {
            return Ok(l);
        }
        Ok(self
            .store
            .setting(GLOBAL, "compatibility")
            .await?
            .unwrap_or_else(|| DEFAULT_LEVEL.into()))
    }

    pub async fn mode(&self, subject: &str) -> Result<String> {
        if let Some(m) = self.store.setting(subject, "mode").await? {
            return Ok(m);
        }
        Ok(self
            .store
            .setting(GLOBAL, "mode")
            .await?
            .unwrap_or_else(|| DEFAULT_MODE.into()))
    }

    async fn ensure_writable(&self, subject: &str) -> Result<()> {
        let mode = self.mode(subject).await?;
        if mode == "READONLY" || mode == "READONLY_OVERRIDE" {
            return Err(RegistryError::operation_not_permitted(format!(
                "Subject {subject} is in read-only mode"
            )));
        }
        Ok(())
    }

    pub async fn setting(&self, subject: &str, kind: &str) -> Result<Option<String>> {
        self.store.setting(subject, kind).await
    }

    pub async fn set_setting(&self, subject: &str, kind: &str, value: &str) -> Result<()> {
        self.store.set_setting(subject, kind, value).await
    }

    pub async fn delete_setting(&self, subject: &str, kind: &str) -> Result<()> {
        self.store.delete_setting(subject, kind).await
    }
}
