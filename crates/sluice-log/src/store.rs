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
        self.put_parts(key, vec![data]).await
    }

    /// Writes an object made of `parts`, in order, without joining them first.
    pub async fn put_parts(&self, key: &str, parts: Vec<Bytes>) -> Result<()> {
        match &self.local_root {
            // One blocking call for the whole write: each hop to a blocking thread is a
            // wake-up on the produce path, and object_store's own put takes two more.
            Some(root) => {
                let (root, key) = (root.clone(), key.to_string());
                let len = parts.iter().map(|p| p.len() as u64).sum();
                tokio::task::spawn_blocking(move || write_durably(&root, &key, &parts)).await??;
                crate::counting::count_put(len);
                Ok(())
            }
            None => {
                self.inner.put(&Path::from(key), PutPayload::from_iter(parts)).await?;
                Ok(())
            }
        }
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

/// Writes `root/key` so that it is on disk, whole, when this returns.
///
/// A new key is written in place: file, fdatasync, then fsync of the directory for
/// the new entry. That is one journal commit on ext4 instead of two with a rename.
/// It is safe because nothing reads an object before the metadata commit that
/// names it, and that commit follows this write; a crash mid-write leaves an
/// unnamed partial object, which the orphan collector removes (and `rebuild-index`
/// skips, as its footer does not check). An existing key is replaced atomically
/// through a staging file (named `#<digits>` so that listings skip it, as
/// object_store's own staging files) and a rename.
fn write_durably(root: &std::path::Path, key: &str, parts: &[Bytes]) -> std::io::Result<()> {
    use std::fs::{File, OpenOptions};
    use std::io::{ErrorKind, Write};
    let path = root.join(key);
    let dir = path.parent().expect("an object key names a file");
    let create = |p: &std::path::Path| OpenOptions::new().write(true).create_new(true).open(p);
    let (mut file, staging) = match create(&path) {
        Ok(file) => (file, None),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            (create(&path)?, None)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let staging = path.with_file_name(format!(
                "{}#{}",
                path.file_name().unwrap().to_string_lossy(),
                uuid::Uuid::new_v4().as_u64_pair().0
            ));
            (create(&staging)?, Some(staging))
        }
        Err(e) => return Err(e),
    };
    let written = parts
        .iter()
        .try_for_each(|p| file.write_all(p))
        .and_then(|()| file.sync_data());
    let placed = match &staging {
        Some(staging) => written.and_then(|()| std::fs::rename(staging, &path)),
        None => written,
    };
    if let Err(e) = placed {
        let _ = std::fs::remove_file(staging.as_deref().unwrap_or(&path));
        return Err(e);
    }
    File::open(dir)?.sync_all()
}

fn with_prefix<T: ObjectStore>(store: T, prefix: &str) -> Arc<dyn ObjectStore> {
    if prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::write_durably;
    use bytes::Bytes;

    #[test]
    fn a_new_key_is_written_in_place_and_an_existing_one_replaced_whole() {
        let root = tempfile::tempdir().unwrap();
        write_durably(root.path(), "data/a.sobj", &[Bytes::from_static(b"first")]).unwrap();
        assert_eq!(std::fs::read(root.path().join("data/a.sobj")).unwrap(), b"first");
        let parts = [Bytes::from_static(b"second, "), Bytes::from_static(b"longer")];
        write_durably(root.path(), "data/a.sobj", &parts).unwrap();
        assert_eq!(
            std::fs::read(root.path().join("data/a.sobj")).unwrap(),
            b"second, longer"
        );
        let names: Vec<String> = std::fs::read_dir(root.path().join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.sobj"], "no staging file is left behind");
    }
}
