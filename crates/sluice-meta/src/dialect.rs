//! What differs between SQLite and PostgreSQL, and the multi-row statements shared by both.

use anyhow::Result;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::Any;

use crate::MetaStore;

/// Which SQL dialect the store speaks. Statements are shared; only what
/// cannot be written portably (connection setup, DDL, the clock) differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The database server's clock in Unix milliseconds, as an SQL expression.
    /// Leases are timed on it so that brokers' clocks never need to agree.
    pub(crate) fn now_ms_sql(self) -> &'static str {
        match self {
            Backend::Sqlite => "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }
}

/// Rows per multi-row statement: far below SQLite's 32,766 and PostgreSQL's 65,535
/// bound parameters.
pub(crate) const ROWS_PER_STATEMENT: usize = 500;

/// A transaction's statements, each with its arguments in order.
#[derive(Default)]
pub(crate) struct Statements {
    pub(crate) sql: Vec<String>,
    pub(crate) args: Vec<Vec<Arg>>,
}

pub(crate) enum Arg {
    Text(String),
    I32(i32),
    I64(i64),
}

fn bind_all<'q>(mut q: Query<'q, Any, AnyArguments<'q>>, args: Vec<Arg>) -> Query<'q, Any, AnyArguments<'q>> {
    for a in args {
        q = match a {
            Arg::Text(v) => q.bind(v),
            Arg::I32(v) => q.bind(v),
            Arg::I64(v) => q.bind(v),
        };
    }
    q
}

impl Statements {
    /// Adds `sql`, whose `{}` stands for the VALUES rows, once per ROWS_PER_STATEMENT rows.
    pub(crate) fn each_rows(&mut self, backend: Backend, sql: &str, rows: Vec<Vec<Arg>>) {
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<Vec<Arg>> = rows.by_ref().take(ROWS_PER_STATEMENT).collect();
            let mut n = 0;
            let values: Vec<String> = chunk
                .iter()
                .map(|row| {
                    let params: Vec<String> = row
                        .iter()
                        .map(|_| {
                            n += 1;
                            // SQLite gets all statements in one request, and numbers each
                            // statement's `?` after the previous statement's parameters.
                            match backend {
                                Backend::Sqlite => "?".to_string(),
                                Backend::Postgres => format!("${n}"),
                            }
                        })
                        .collect();
                    format!("({})", params.join(", "))
                })
                .collect();
            self.sql.push(sql.replace("{}", &values.join(", ")));
            self.args.push(chunk.into_iter().flatten().collect());
        }
    }
}

impl MetaStore {
    /// Runs `statements` in one transaction on the writer and returns the rows they
    /// return. On SQLite the whole transaction is a single request to SQLite's thread
    /// (one round trip instead of one per statement, a flush's commit waits for each);
    /// PostgreSQL cannot take several statements with parameters in one request.
    pub(crate) async fn write_transaction(&self, statements: Statements) -> Result<Vec<AnyRow>> {
        if self.backend == Backend::Postgres {
            let mut tx = self.writer.begin().await?;
            let mut rows = Vec::new();
            for (sql, args) in statements.sql.iter().zip(statements.args) {
                rows.extend(bind_all(sqlx::query(sql), args).fetch_all(&mut *tx).await?);
            }
            tx.commit().await?;
            return Ok(rows);
        }
        let sql = format!("BEGIN IMMEDIATE; {}; COMMIT", statements.sql.join("; "));
        let query = bind_all(sqlx::query(&sql), statements.args.into_iter().flatten().collect());
        // Closes the connection unless it is known to be outside a transaction: dropped
        // half-way (the caller gave up) or failed with a rollback that failed too.
        struct CloseUnlessClean(Option<sqlx::pool::PoolConnection<Any>>);
        impl Drop for CloseUnlessClean {
            fn drop(&mut self) {
                if let Some(conn) = &mut self.0 {
                    conn.close_on_drop();
                }
            }
        }
        let mut conn = CloseUnlessClean(Some(self.writer.acquire().await?));
        let c = conn.0.as_mut().expect("held");
        let result = query.fetch_all(&mut **c).await;
        // A statement after BEGIN failed: the transaction is still open on this connection.
        let clean = result.is_ok() || sqlx::query("ROLLBACK").execute(&mut **c).await.is_ok();
        if clean {
            conn.0.take();
        }
        Ok(result?)
    }
}
