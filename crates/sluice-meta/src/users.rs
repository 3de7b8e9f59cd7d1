//! SCRAM credentials per user and mechanism: salts and derived keys only (RFC 5802),
//! never passwords. PLAIN authentication verifies against the same rows.

use anyhow::Result;
use sqlx::Row;

use crate::MetaStore;

/// One user's credential for one SCRAM mechanism. Byte fields are base64 in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramRow {
    pub user: String,
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    pub salt: String,
    pub stored_key: String,
    pub server_key: String,
    pub iterations: i32,
}

const COLUMNS: &str = "user_name, mechanism, salt, stored_key, server_key, iterations";

fn from_row(r: &sqlx::any::AnyRow) -> Result<ScramRow> {
    Ok(ScramRow {
        user: r.try_get(0)?,
        mechanism: r.try_get(1)?,
        salt: r.try_get(2)?,
        stored_key: r.try_get(3)?,
        server_key: r.try_get(4)?,
        iterations: r.try_get(5)?,
    })
}

impl MetaStore {
    /// Creates or replaces `row.user`'s credential for `row.mechanism`.
    pub async fn upsert_scram(&self, row: &ScramRow) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO scram_credentials ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (user_name, mechanism) DO UPDATE SET salt = excluded.salt,
               stored_key = excluded.stored_key, server_key = excluded.server_key, iterations = excluded.iterations"
        ))
        .bind(&row.user)
        .bind(&row.mechanism)
        .bind(&row.salt)
        .bind(&row.stored_key)
        .bind(&row.server_key)
        .bind(row.iterations)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Deletes a user's credential for one mechanism, or for all when `mechanism` is None.
    /// Returns how many were deleted.
    pub async fn delete_scram(&self, user: &str, mechanism: Option<&str>) -> Result<u64> {
        let done = match mechanism {
            Some(m) => {
                sqlx::query("DELETE FROM scram_credentials WHERE user_name = $1 AND mechanism = $2")
                    .bind(user)
                    .bind(m)
                    .execute(&self.writer)
                    .await?
            }
            None => {
                sqlx::query("DELETE FROM scram_credentials WHERE user_name = $1")
                    .bind(user)
                    .execute(&self.writer)
                    .await?
            }
        };
        Ok(done.rows_affected())
    }

    /// A user's credentials, one per mechanism, by mechanism name.
    pub async fn scram_for(&self, user: &str) -> Result<Vec<ScramRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM scram_credentials WHERE user_name = $1 ORDER BY mechanism"
        ))
        .bind(user)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Every credential, by user then mechanism.
    pub async fn list_scram(&self) -> Result<Vec<ScramRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM scram_credentials ORDER BY user_name, mechanism"
        ))
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::store;

    fn row(user: &str, mechanism: &str, salt: &str) -> ScramRow {
        ScramRow {
            user: user.into(),
            mechanism: mechanism.into(),
            salt: salt.into(),
            stored_key: "sk".into(),
            server_key: "svk".into(),
            iterations: 4096,
        }
    }

    #[tokio::test]
    async fn credentials_are_replaced_listed_and_deleted_per_mechanism() {
        let (_d, m) = store().await;
        m.upsert_scram(&row("alice", "SCRAM-SHA-256", "s1")).await.unwrap();
        m.upsert_scram(&row("alice", "SCRAM-SHA-256", "s2")).await.unwrap();
        m.upsert_scram(&row("alice", "SCRAM-SHA-512", "s3")).await.unwrap();
        m.upsert_scram(&row("bob", "SCRAM-SHA-512", "s4")).await.unwrap();
        let alice = m.scram_for("alice").await.unwrap();
        assert_eq!(
            alice,
            vec![row("alice", "SCRAM-SHA-256", "s2"), row("alice", "SCRAM-SHA-512", "s3")]
        );
        assert_eq!(m.list_scram().await.unwrap().len(), 3);
        assert_eq!(m.delete_scram("alice", Some("SCRAM-SHA-512")).await.unwrap(), 1);
        assert_eq!(m.delete_scram("alice", None).await.unwrap(), 1);
        assert_eq!(m.delete_scram("alice", None).await.unwrap(), 0);
        let left: Vec<String> = m.list_scram().await.unwrap().into_iter().map(|r| r.user).collect();
        assert_eq!(left, vec!["bob"]);
    }
}
