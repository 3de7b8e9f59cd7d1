//! The metadata store: topics, partitions (high watermarks, log start, leader
//! epochs), the offset index of stored batches, data objects, and idempotent
//! producer state.
//!
//! SQLite is the embedded default. Every statement is plain SQL shared by all
//! backends; the few dialect differences are in `dialect` (and connection setup in
//! `MetaStore::open`). One module per concern: `topics`, `index` (the offset index and
//! the flush commit), `producers`, `groups`, `cluster` (leases and leaders), `txn`,
//! `users`, `acls`.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor, Row};
use uuid::Uuid;

mod acls;
mod cluster;
mod dialect;
mod groups;
mod index;
mod producers;
mod topics;
mod txn;
mod users;
pub use acls::AclRow;
pub use cluster::{group_shard, BrokerRegistration, BrokerRow, Leadership, LeaseRow, Slot, GROUP_SHARDS};
pub use dialect::Backend;
pub use groups::{CommittedOffset, GroupRow};
pub use index::{BatchRow, FlushCommit, PartitionSize, WatermarkUpdate};
pub use producers::{AbortedTxnRow, ProducerStateRow, SeqEntry};
pub use topics::{PartitionRow, TopicRow};
pub use txn::{new_txn, TxnRow, TxnState};
pub use users::ScramRow;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Clone)]
pub struct MetaStore {
    /// Reads.
    readers: AnyPool,
    /// Writes. On SQLite this is one connection, so that writers queue here in
    /// order instead of meeting on SQLite's write lock, whose busy handler sleeps
    /// 1, 2, 5, 10 ms... between tries: with a flush committing every millisecond,
    /// a lease renewal that collided with it held produce acks for 5-20 ms. On
    /// PostgreSQL it is the same pool as `readers`.
    writer: AnyPool,
    backend: Backend,
}

impl MetaStore {
    /// Opens the store at `url` (`sqlite://PATH`, created if missing, or
    /// `postgres://...`) and applies migrations.
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite:") {
            // rwc: create the file if it is missing.
            let sep = if path.contains('?') { '&' } else { '?' };
            (Backend::Sqlite, format!("sqlite:{path}{sep}mode=rwc"))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            (Backend::Postgres, url.to_string())
        } else {
            bail!("unsupported metadata store URL {url:?}: expected sqlite://PATH or postgres://...");
        };
        let connect = |max_connections: u32| {
            AnyPoolOptions::new()
                .max_connections(max_connections)
                // A ping before every use is one more round trip to SQLite's worker thread
                // on each flush commit, and a local file does not drop connections.
                .test_before_acquire(backend == Backend::Postgres)
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        if backend == Backend::Sqlite {
                            // WAL for concurrent readers; FULL so that a commit acknowledged to a
                            // producer survives power loss too. Temporary storage in memory: a
                            // flush commit's statement journal was otherwise a new file in
                            // /var/tmp each time (created, written, unlinked).
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000; \
                                 PRAGMA temp_store = MEMORY",
                            )
                            .await?;
                        } else {
                            // A broker frozen mid-transaction (SIGSTOP, a VM pause) must not hold row
                            // locks that the controller needs to fail its partitions over: the server
                            // ends such a session after 1 s. Transactions here last milliseconds.
                            conn.execute("SET idle_in_transaction_session_timeout = 1000; SET lock_timeout = 10000")
                                .await?;
                        }
                        Ok(())
                    })
                })
                .connect(&url)
        };
        let opening = || format!("opening metadata store {}", redact(&url));
        let (readers, writer) = match backend {
            Backend::Sqlite => {
                let writer = connect(1).await.with_context(opening)?;
                (connect(4).await.with_context(opening)?, writer)
            }
            Backend::Postgres => {
                let pool = connect(8).await.with_context(opening)?;
                (pool.clone(), pool)
            }
        };
        let migrated = match backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&writer).await,
            Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&writer).await,
        };
        migrated.context("migrating metadata store")?;
        Ok(Self {
            readers,
            writer,
            backend,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool for modules that keep their own tables in this store: the
    /// writer, so that their writes queue with the log's (see `writer`).
    pub fn pool(&self) -> &AnyPool {
        &self.writer
    }

    /// The cluster id, created on first use.
    pub async fn cluster_id(&self) -> Result<String> {
        let fresh = Uuid::new_v4().simple().to_string();
        sqlx::query("INSERT INTO cluster (key, value) VALUES ('cluster_id', $1) ON CONFLICT (key) DO NOTHING")
            .bind(&fresh)
            .execute(&self.writer)
            .await?;
        let row = sqlx::query("SELECT value FROM cluster WHERE key = 'cluster_id'")
            .fetch_one(&self.writer)
            .await?;
        Ok(row.get(0))
    }
}

/// A URL with its password hidden, for logs and errors.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

pub(crate) fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).with_context(|| format!("bad uuid {s:?} in metadata store"))
}

#[cfg(test)]
pub(crate) mod tests;
