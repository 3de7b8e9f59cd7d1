//! The object store that holds data objects, opened from a URL, with the one
//! thing object_store's local backend does not do: fsync before a write is
//! reported done.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::counting::CountingStore;

#[derive(Clone)]
pub struct DataStore {
    inner: Arc<dyn ObjectStore>,
    /// Root directory for `file://` stores, whose writes we fsync.
    local_root: Option<PathBuf>,
    url: String,
}

#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified_ms: i64,
}

impl DataStore {
    /// Opens `file:///dir`, `memory://`, `s3://bucket/prefix`, `gs://bucket/prefix`
    /// or `az://container/prefix`. Cloud credentials come from the standard
    /// environment variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).
    pub fn open(url: &str) -> Result<Self> {
        let parsed = url::Url::parse(url).with_context(|| format!("bad store URL {url:?}"))?;
        let prefix = parsed.path().trim_matches('/').to_string();
        let (inner, local_root): (Arc<dyn ObjectStore>, _) = match parsed.scheme() {
            "file" => {
                let dir = PathBuf::from(parsed.path());
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)?;
                (Arc::new(fs), Some(dir))
            }
            "memory" => (Arc::new(object_store::memory::InMemory::new()), None),
            "s3" | "s3a" => {
                let s3 = object_store::aws::AmazonS3Builder::from_env().with_url(url).build()?;
                (with_prefix(s3, &prefix), None)
            }
            "gs" => {
                let gcs = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .build()?;
                (with_prefix(gcs, &prefix), None)
            }
            "az" | "azure" | "abfs" | "abfss" => {
                let az = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .build()?;
                (with_prefix(az, &prefix), None)
            }
            other => bail!("unsupported store scheme {other:?} in {url:?}"),
        };
        Ok(Self {
            inner: Arc::new(CountingStore::new(inner)),
            local_root,
            url: url.to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Writes a whole object; on a local store it is on disk when this returns.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.inner.put(&Path::from(key), PutPayload::from_bytes(data)).await?;
        if let Some(root) = &self.local_root {
            let file = root.join(key);
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                std::fs::File::open(&file)?.sync_all()?;
                // The object was renamed into place: make the directory entry durable too.
                if let Some(dir) = file.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(())
            })
            .await??;
        }
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes> {
        Ok(self.inner.get(&Path::from(key)).await?.bytes().await?)
    }

    pub async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        Ok(self.inner.get_range(&Path::from(key), start..end).await?)
    }

    pub async fn get_ranges(&self, key: &str, ranges: &[std::ops::Range<u64>]) -> Result<Vec<Bytes>> {
        Ok(self.inner.get_ranges(&Path::from(key), ranges).await?)
    }

    pub async fn size(&self, key: &str) -> Result<u64> {
        Ok(self.inner.head(&Path::from(key)).await?.size)
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.inner.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let p = Path::from(prefix);
        let metas: Vec<_> = self.inner.list(Some(&p)).try_collect().await?;
        Ok(metas
            .into_iter()
            .map(|m| ObjectInfo {
                key: m.location.to_string(),
                size: m.size,
                last_modified_ms: m.last_modified.timestamp_millis(),
            })
            .collect())
    }
}

fn with_prefix<T: ObjectStore>(store: T, prefix: &str) -> Arc<dyn ObjectStore> {
    if prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    }
}
