//! The registry's tables in the metadata store (migration 0006). The database
//! is the truth: several brokers may serve the same registry.

use serde::{Deserialize, Serialize};
use sluice_meta::{now_ms, MetaStore};
use sqlx::{AnyPool, Row};

use crate::error::Result;
use crate::formats::SchemaType;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    pub name: String,
    pub subject: String,
    pub version: i32,
}

#[derive(Debug, Clone)]
pub struct StoredSchema {
    pub id: i64,
    pub schema_type: SchemaType,
    pub text: String,
    pub refs: Vec<Reference>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    pub subject: String,
    pub version: i32,
    pub schema_id: i64,
    pub deleted: bool,
}

/// Subject under which global settings are kept.
pub const GLOBAL: &str = "";

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
}

impl Store {
    pub fn new(meta: &MetaStore) -> Self {
        Self {
            pool: meta.pool().clone(),
        }
    }

    /// The id of this schema, creating it if new. Equal fingerprints share one id.
    pub async fn intern_schema(
        &self,
        schema_type: SchemaType,
        fingerprint: &str,
        text: &str,
        refs: &[Reference],
    ) -> Result<i64> {
        if let Some(id) = self.id_by_fingerprint(fingerprint).await? {
            return Ok(id);
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO schema_registry_schemas (schema_type, fingerprint, schema_text, refs, created_ms)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (fingerprint) DO NOTHING",
        )
        .bind(schema_type.as_str())
        .bind(fingerprint)
        .bind(text)
        .bind(serde_json::to_string(refs).unwrap_or_else(|_| "[]".into()))
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let id: i64 = sqlx::query("SELECT id FROM schema_registry_schemas WHERE fingerprint = $1")
            .bind(fingerprint)
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        for r in refs {
            sqlx::query(
                "INSERT INTO schema_registry_references (schema_id, name, ref_subject, ref_version)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (schema_id, name) DO NOTHING",
            )
            .bind(id)
            .bind(&r.name)
            .bind(&r.subject)
            .bind(r.version)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    pub async fn id_by_fingerprint(&self, fingerprint: &str) -> Result<Option<i64>> {
        Ok(
            sqlx::query("SELECT id FROM schema_registry_schemas WHERE fingerprint = $1")
                .bind(fingerprint)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.get(0)),
        )
    }

    pub async fn schema(&self, id: i64) -> Result<Option<StoredSchema>> {
        let row = sqlx::query("SELECT id, schema_type, schema_text, refs FROM schema_registry_schemas WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| StoredSchema {
            id: r.get(0),
            schema_type: SchemaType::parse(r.get::<String, _>(1).as_str()).unwrap_or(SchemaType::Avro),
            text: r.get(2),
            refs: serde_json::from_str(r.get::<String, _>(3).as_str()).unwrap_or_default(),
        }))
    }

    /// A subject's versions in order; soft-deleted ones only if asked for.
    pub async fn versions(&self, subject: &str, include_deleted: bool) -> Result<Vec<VersionRow>> {
        let rows = sqlx::query(
            "SELECT subject, version, schema_id, deleted FROM schema_registry_versions
             WHERE subject = $1 ORDER BY version",
        )
        .bind(subject)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(version_row)
            .filter(|v| include_deleted || !v.deleted)
            .collect())
    }

    /// Every version of every subject holding schema `id`.
    pub async fn versions_of_schema(&self, id: i64) -> Result<Vec<VersionRow>> {
        let rows = sqlx::query(
            "SELECT subject, version, schema_id, deleted FROM schema_registry_versions
             WHERE schema_id = $1 ORDER BY subject, version",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(version_row).collect())
    }

    /// Adds the next version of `subject`; versions are never reused while the
    /// subject has rows, even soft-deleted ones.
    pub async fn add_version(&self, subject: &str, schema_id: i64) -> Result<i32> {
        let mut last_err = None;
        for _ in 0..5 {
            let next: i64 = sqlx::query(
                "SELECT CAST(COALESCE(MAX(version), 0) + 1 AS BIGINT) FROM schema_registry_versions WHERE subject = $1",
            )
            .bind(subject)
            .fetch_one(&self.pool)
            .await?
            .get(0);
            let next = i32::try_from(next).map_err(crate::error::RegistryError::store)?;
            let r = sqlx::query(
                "INSERT INTO schema_registry_versions (subject, version, schema_id, deleted, created_ms)
                 VALUES ($1, $2, $3, 0, $4)",
            )
            .bind(subject)
            .bind(next)
            .bind(schema_id)
            .bind(now_ms())
            .execute(&self.pool)
            .await;
            match r {
                Ok(_) => return Ok(next),
                // Another broker took this version number at the same moment: try the next.
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err
            .map(Into::into)
            .unwrap_or_else(|| crate::error::RegistryError::store("version race")))
    }

    pub async fn soft_delete(&self, subject: &str, version: i32) -> Result<()> {
        sqlx::query("UPDATE schema_registry_versions SET deleted = 1 WHERE subject = $1 AND version = $2")
            .bind(subject)
            .bind(version)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn hard_delete(&self, subject: &str, version: i32) -> Result<()> {
        sqlx::query("DELETE FROM schema_registry_versions WHERE subject = $1 AND version = $2")
            .bind(subject)
            .bind(version)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Subjects with at least one (live, or any if `deleted`) version.
    pub async fn subjects(&self, deleted: bool) -> Result<Vec<String>> {
        let sql = if deleted {
            "SELECT DISTINCT subject FROM schema_registry_versions ORDER BY subject"
        } else {
            "SELECT DISTINCT subject FROM schema_registry_versions WHERE deleted = 0 ORDER BY subject"
        };
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Ids of schemas, still registered under some subject, that reference (subject, version).
    pub async fn referenced_by(&self, subject: &str, version: i32) -> Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT DISTINCT r.schema_id FROM schema_registry_references r
             JOIN schema_registry_versions v ON v.schema_id = r.schema_id AND v.deleted = 0
             WHERE r.ref_subject = $1 AND r.ref_version = $2 ORDER BY r.schema_id",
        )
        .bind(subject)
        .bind(version)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub async fn setting(&self, subject: &str, kind: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query("SELECT value FROM schema_registry_settings WHERE subject = $1 AND kind = $2")
                .bind(subject)
                .bind(kind)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.get(0)),
        )
    }

    pub async fn set_setting(&self, subject: &str, kind: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO schema_registry_settings (subject, kind, value) VALUES ($1, $2, $3)
             ON CONFLICT (subject, kind) DO UPDATE SET value = excluded.value",
        )
        .bind(subject)
        .bind(kind)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_setting(&self, subject: &str, kind: &str) -> Result<()> {
        sqlx::query("DELETE FROM schema_registry_settings WHERE subject = $1 AND kind = $2")
            .bind(subject)
            .bind(kind)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn version_row(r: &sqlx::any::AnyRow) -> VersionRow {
    VersionRow {
        subject: r.get(0),
        version: r.get(1),
        schema_id: r.get(2),
        deleted: r.get::<i32, _>(3) != 0,
    }
}
