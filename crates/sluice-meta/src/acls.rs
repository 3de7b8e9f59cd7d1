//! Kafka ACL bindings. The store keeps Kafka's wire codes as they are; what they mean and
//! how they match is the authorizer's business (sluice-auth).

use anyhow::Result;
use sqlx::Row;

use crate::MetaStore;

/// One ACL binding: who may (or may not) do what to which resources.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AclRow {
    pub resource_type: i8,
    pub resource_name: String,
    pub pattern_type: i8,
    /// `User:alice`, or `User:*` for everyone.
    pub principal: String,
    /// A client address, or `*` for any.
    pub host: String,
    pub operation: i8,
    pub permission: i8,
}

const COLUMNS: &str = "resource_type, resource_name, pattern_type, principal, host, operation, permission";

impl MetaStore {
    /// Stores bindings; one already stored is left as it is.
    pub async fn create_acls(&self, rows: &[AclRow]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        for r in rows {
            sqlx::query(&format!(
                "INSERT INTO acls ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"
            ))
            .bind(r.resource_type as i32)
            .bind(&r.resource_name)
            .bind(r.pattern_type as i32)
            .bind(&r.principal)
            .bind(&r.host)
            .bind(r.operation as i32)
            .bind(r.permission as i32)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every binding, in a stable order.
    pub async fn list_acls(&self) -> Result<Vec<AclRow>> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM acls ORDER BY {COLUMNS}"))
            .fetch_all(&self.readers)
            .await?;
        rows.iter()
            .map(|r| {
                let code = |i: usize| -> Result<i8> { Ok(r.try_get::<i32, _>(i)? as i8) };
                Ok(AclRow {
                    resource_type: code(0)?,
                    resource_name: r.try_get(1)?,
                    pattern_type: code(2)?,
                    principal: r.try_get(3)?,
                    host: r.try_get(4)?,
                    operation: code(5)?,
                    permission: code(6)?,
                })
            })
            .collect()
    }

    /// Deletes these bindings; returns how many were stored.
    pub async fn delete_acls(&self, rows: &[AclRow]) -> Result<u64> {
        let mut tx = self.writer.begin().await?;
        let mut deleted = 0;
        for r in rows {
            deleted += sqlx::query(
                "DELETE FROM acls WHERE resource_type = $1 AND resource_name = $2 AND pattern_type = $3
                 AND principal = $4 AND host = $5 AND operation = $6 AND permission = $7",
            )
            .bind(r.resource_type as i32)
            .bind(&r.resource_name)
            .bind(r.pattern_type as i32)
            .bind(&r.principal)
            .bind(&r.host)
            .bind(r.operation as i32)
            .bind(r.permission as i32)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::store;

    fn acl(name: &str, principal: &str, op: i8) -> AclRow {
        AclRow {
            resource_type: 2,
            resource_name: name.into(),
            pattern_type: 3,
            principal: principal.into(),
            host: "*".into(),
            operation: op,
            permission: 3,
        }
    }

    #[tokio::test]
    async fn bindings_are_stored_once_listed_and_deleted() {
        let (_d, m) = store().await;
        let (a, b) = (acl("orders", "User:alice", 3), acl("orders", "User:bob", 4));
        m.create_acls(&[a.clone(), b.clone()]).await.unwrap();
        m.create_acls(std::slice::from_ref(&a)).await.unwrap();
        assert_eq!(m.list_acls().await.unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(
            m.delete_acls(&[a.clone(), acl("other", "User:alice", 3)])
                .await
                .unwrap(),
            1
        );
        assert_eq!(m.list_acls().await.unwrap(), vec![b]);
    }
}
