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

/// The data objects' store, and the tier store (`--tier-store`, KIP-405's remote
/// storage) that the keys under `tier/` live in. Index rows name objects by key alone:
/// the key's prefix says which store holds it.
#[derive(Clone)]
pub struct DataStore {
    main: Backend,
    tier: Option<Backend>,
}

/// One opened object store.
#[derive(Clone)]
struct Backend {
    inner: Arc<dyn ObjectStore>,
    /// Root directory for `file://` stores, whose writes we fsync.
    local_root: Option<PathBuf>,
    /// Write large local objects with O_DIRECT (`write_parts`).
    direct_io: bool,
    url: String,
}

#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified_ms: i64,
}

/// Keys of objects in the tier store start with this.
pub const TIER_PREFIX: &str = "tier/";

/// Whether an object key names an object in the tier store.
pub fn in_tier(key: &str) -> bool {
    key.starts_with(TIER_PREFIX)
}

impl DataStore {
    /// Opens `file:///dir`, `memory://`, `s3://bucket/prefix`, `gs://bucket/prefix`
    /// or `az://container/prefix`. Cloud credentials come from the standard
    /// environment variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).
    pub fn open(url: &str) -> Result<Self> {
        Ok(Self {
            main: Backend::open(url)?,
            tier: None,
        })
    }

    /// Keeps the objects under `tier/` in the store at `url` (cold tiering).
    pub fn with_tier(mut self, url: &str) -> Result<Self> {
        self.tier = Some(Backend::open(url)?);
        Ok(self)
    }

    /// On a local store, writes objects of 1 MiB or more past the page cache (O_DIRECT), and
    /// reads ranges of 64 KiB or more the same way: less CPU per byte, reads from the disk.
    pub fn with_direct_io(mut self, on: bool) -> Self {
        self.main.direct_io = on;
        self
    }

    pub fn url(&self) -> &str {
        &self.main.url
    }

    /// The tier store's URL, if there is one.
    pub fn tier_url(&self) -> Option<&str> {
        self.tier.as_ref().map(|t| t.url.as_str())
    }

    /// The store that holds `key`; a `tier/` key without a tier store stays in the main one
    /// (where its reads then fail as missing, never as another object).
    fn route(&self, key: &str) -> &Backend {
        match &self.tier {
            Some(tier) if in_tier(key) => tier,
            _ => &self.main,
        }
    }

    /// Writes a whole object; on a local store it is on disk when this returns.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.put_parts(key, vec![data]).await
    }

    /// Writes an object made of `parts`, in order, without joining them first.
    pub async fn put_parts(&self, key: &str, parts: Vec<Bytes>) -> Result<()> {
        self.route(key).put(key, parts, None).await
    }

    /// `put_parts` for a write nobody waits on (an upload of journaled appends): on a
    /// local store it gives way to the writes of `foreground` before each piece it writes
    /// and before its sync, for at most `YIELD_LIMIT` each.
    pub(crate) async fn put_parts_behind(
        &self,
        key: &str,
        parts: Vec<Bytes>,
        foreground: Arc<Foreground>,
    ) -> Result<()> {
        self.route(key).put(key, parts, Some(foreground)).await
    }

    pub async fn get(&self, key: &str) -> Result<Bytes> {
        Ok(self.route(key).inner.get(&Path::from(key)).await?.bytes().await?)
    }

    /// Whether the main store's objects are files on this machine's disk.
    pub(crate) fn is_local(&self) -> bool {
        self.main.local_root.is_some()
    }

    /// On a local store, waits up to `YIELD_LIMIT` for the writes of `foreground` to end:
    /// background work (compaction, collection) calls it before each disk operation. A
    /// remote store's requests do not share the disk.
    pub(crate) async fn give_way_to(&self, foreground: &Arc<Foreground>) {
        if self.is_local() {
            let foreground = foreground.clone();
            let _ = tokio::task::spawn_blocking(move || give_way(Some(&foreground))).await;
        }
    }

    pub async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        self.route(key).get_range(key, start, end).await
    }

    pub async fn get_ranges(&self, key: &str, ranges: &[std::ops::Range<u64>]) -> Result<Vec<Bytes>> {
        Ok(self.route(key).inner.get_ranges(&Path::from(key), ranges).await?)
    }

    pub async fn size(&self, key: &str) -> Result<u64> {
        Ok(self.route(key).inner.head(&Path::from(key)).await?.size)
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.route(key).inner.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The objects whose keys start with `prefix`, from the store that holds them.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let backend = self.route(&format!("{}/", prefix.trim_end_matches('/')));
        let p = Path::from(prefix);
        let metas: Vec<_> = backend.inner.list(Some(&p)).try_collect().await?;
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

impl Backend {
    fn open(url: &str) -> Result<Self> {
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
            direct_io: false,
            url: url.to_string(),
        })
    }

    async fn put(&self, key: &str, parts: Vec<Bytes>, behind: Option<Arc<Foreground>>) -> Result<()> {
        match &self.local_root {
            // One blocking call for the whole write: each hop to a blocking thread is a
            // wake-up on the produce path, and object_store's own put takes two more.
            Some(root) => {
                let (root, key, direct) = (root.clone(), key.to_string(), self.direct_io);
                let len = parts.iter().map(|p| p.len() as u64).sum();
                let path = root.join(&key);
                tokio::task::spawn_blocking(move || write_durably(&root, &key, &parts, direct, behind.as_deref()))
                    .await?
                    .with_context(|| format!("writing {}", path.display()))?;
                crate::counting::count_put(len);
                Ok(())
            }
            None => {
                self.inner.put(&Path::from(key), PutPayload::from_iter(parts)).await?;
                Ok(())
            }
        }
    }

    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        match &self.local_root {
            // object_store's local read zero-fills its buffer before reading into it (5 % of
            // a catch-up read's CPU), and cannot read past the page cache.
            Some(root) => {
                let (path, direct) = (root.join(key), self.direct_io);
                let data = tokio::task::spawn_blocking(move || read_range(&path, start, end, direct))
                    .await?
                    .with_context(|| format!("reading {key} [{start}, {end})"))?;
                crate::counting::count_get(data.len() as u64);
                Ok(data)
            }
            None => Ok(self.inner.get_range(&Path::from(key), start..end).await?),
        }
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
fn write_durably(
    root: &std::path::Path,
    key: &str,
    parts: &[Bytes],
    direct: bool,
    behind: Option<&Foreground>,
) -> std::io::Result<()> {
    use std::fs::{File, OpenOptions};
    use std::io::ErrorKind;
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
    let target = staging.as_deref().unwrap_or(&path);
    let written = write_parts(&mut file, target, parts, direct, behind).and_then(|()| {
        give_way(behind);
        file.sync_data()
    });
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

/// With `direct_io`, objects at least this large are written with O_DIRECT, past the page
/// cache: copying written data into the page cache and writing it back was the broker's
/// largest cost at full speed (a quarter of its CPU), and dd writes 2 GiB with a seventh of
/// the system time that way. The price: reading them back
/// comes from the disk.
const DIRECT_IO_BYTES: usize = 1 << 20;
/// O_DIRECT needs the buffer address, the length and the file offset aligned to this.
const DIRECT_ALIGN: usize = 4096;
/// Data goes through an aligned buffer of this size.
const DIRECT_CHUNK: usize = 1 << 20;
/// With `direct_io`, ranges at least this large are read with O_DIRECT.
const DIRECT_READ_BYTES: usize = 64 << 10;

/// Whether a store error says the object does not exist.
pub(crate) fn not_found(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<object_store::Error>(),
        Some(object_store::Error::NotFound { .. })
    )
}

/// Writes that acknowledge appends (journal records, objects of large flushes), which
/// background object writes give way to: beside an upload's writes, a journal append of
/// 1 MiB took twice as long as alone, and a producer waits
/// for it.
#[derive(Default)]
pub(crate) struct Foreground {
    running: std::sync::Mutex<usize>,
    idle: std::sync::Condvar,
}

/// A foreground write in progress, until dropped.
pub(crate) struct ForegroundWrite(Arc<Foreground>);

impl Foreground {
    pub(crate) fn start(self: &Arc<Self>) -> ForegroundWrite {
        *self.running.lock().unwrap() += 1;
        ForegroundWrite(self.clone())
    }

    /// Waits until no foreground write runs, or `limit` has passed; true if none runs.
    fn wait_idle(&self, limit: std::time::Duration) -> bool {
        let running = self.running.lock().unwrap();
        !self
            .idle
            .wait_timeout_while(running, limit, |n| *n > 0)
            .unwrap()
            .1
            .timed_out()
    }
}

impl Drop for ForegroundWrite {
    fn drop(&mut self) {
        let mut running = self.0.running.lock().unwrap();
        *running -= 1;
        if *running == 0 {
            self.0.idle.notify_all();
        }
    }
}

/// The longest a background write waits for foreground writes before each piece: it
/// must still keep up (journaled appends wait in memory for their upload).
const YIELD_LIMIT: std::time::Duration = std::time::Duration::from_millis(5);

fn give_way(behind: Option<&Foreground>) {
    if let Some(foreground) = behind {
        foreground.wait_idle(YIELD_LIMIT);
    }
}

/// Writes `parts` to the new, empty file `file` at `path`: with `direct`, through a second
/// descriptor opened with O_DIRECT if the object is large and the file system allows it,
/// else through `file`. Not synced. `behind`: give way to foreground writes before each
/// piece written with O_DIRECT (a write through the page cache only copies).
fn write_parts(
    file: &mut std::fs::File,
    path: &std::path::Path,
    parts: &[Bytes],
    direct: bool,
    behind: Option<&Foreground>,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let direct = if direct && len >= DIRECT_IO_BYTES {
        open_direct(path, true)
    } else {
        None
    };
    let Some(direct) = direct else {
        return parts.iter().try_for_each(|p| file.write_all(p));
    };
    let (mut raw, start) = aligned_buffer(DIRECT_CHUNK);
    let buf = &mut raw[start..start + DIRECT_CHUNK];
    let (mut filled, mut at) = (0usize, 0u64);
    for part in parts {
        let mut rest = &part[..];
        while !rest.is_empty() {
            let n = rest.len().min(DIRECT_CHUNK - filled);
            buf[filled..filled + n].copy_from_slice(&rest[..n]);
            (filled, rest) = (filled + n, &rest[n..]);
            if filled == DIRECT_CHUNK {
                give_way(behind);
                direct.write_all_at(buf, at)?;
                (filled, at) = (0, at + DIRECT_CHUNK as u64);
            }
        }
    }
    if filled > 0 {
        // The last block is padded with zeros, then cut back to the object's length.
        let padded = filled.next_multiple_of(DIRECT_ALIGN);
        buf[filled..padded].fill(0);
        give_way(behind);
        direct.write_all_at(&buf[..padded], at)?;
        file.set_len(len as u64)?;
    }
    Ok(())
}

/// Reads bytes `start..end` of the file at `path`. With `direct`, a large range is read
/// with O_DIRECT (objects written that way are not in the page cache, and going through it
/// would cost a copy and its bookkeeping): the aligned range around it goes into an aligned
/// buffer, in one request to the disk, and the result is a slice of that buffer.
fn read_range(path: &std::path::Path, start: u64, end: u64, direct: bool) -> std::io::Result<Bytes> {
    use std::io::{ErrorKind, Read, Seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    let len = end.saturating_sub(start) as usize;
    let opened = if direct && len >= DIRECT_READ_BYTES {
        open_direct(path, false)
    } else {
        None
    };
    let short = || std::io::Error::new(ErrorKind::UnexpectedEof, format!("object shorter than {end} bytes"));
    let Some(file) = opened else {
        // Read into spare capacity: File reads without initialising the buffer first.
        let mut file = std::fs::File::open(path)?;
        file.seek(SeekFrom::Start(start))?;
        let mut data = Vec::with_capacity(len);
        file.take(len as u64).read_to_end(&mut data)?;
        return if data.len() == len {
            Ok(data.into())
        } else {
            Err(short())
        };
    };
    let from = start - start % DIRECT_ALIGN as u64;
    let span = (end - from).next_multiple_of(DIRECT_ALIGN as u64) as usize;
    let (mut raw, at) = aligned_buffer(span);
    let mut got = 0;
    while got < span {
        // A short read ends at the end of the file, whose last block is partial.
        match file.read_at(&mut raw[at + got..at + span], from + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let skip = (start - from) as usize;
    if got < skip + len {
        return Err(short());
    }
    Ok(Bytes::from(raw).slice(at + skip..at + skip + len))
}

/// Opens `path` for writing or reading with O_DIRECT; None if the file system refuses it
/// (the caller then goes through the page cache).
fn open_direct(path: &std::path::Path, write: bool) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options
        .read(!write)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

/// A zeroed buffer with `len` bytes from an offset aligned for O_DIRECT: (buffer, offset).
fn aligned_buffer(len: usize) -> (Vec<u8>, usize) {
    let raw = vec![0u8; len + DIRECT_ALIGN];
    let at = raw.as_ptr().align_offset(DIRECT_ALIGN);
    (raw, at)
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
    use super::{write_durably, Foreground};
    use bytes::Bytes;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_background_write_waits_for_foreground_writes_to_end() {
        let foreground = Arc::new(Foreground::default());
        assert!(foreground.wait_idle(Duration::ZERO), "nothing runs");
        let (first, second) = (foreground.start(), foreground.start());
        assert!(!foreground.wait_idle(Duration::from_millis(1)), "gives up at its limit");
        let waiter = {
            let foreground = foreground.clone();
            std::thread::spawn(move || foreground.wait_idle(Duration::from_secs(600)))
        };
        drop(first);
        assert!(!foreground.wait_idle(Duration::ZERO), "one still runs");
        drop(second);
        assert!(waiter.join().unwrap(), "woken when the last one ends, not by its limit");

        // Behind no foreground write, a background write writes the same bytes.
        let root = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(2 * super::DIRECT_CHUNK + 99)).map(|i| (i % 251) as u8).collect();
        let parts = [
            Bytes::copy_from_slice(&data[..1000]),
            Bytes::copy_from_slice(&data[1000..]),
        ];
        for direct in [false, true] {
            write_durably(root.path(), "data/b.sobj", &parts, direct, Some(&foreground)).unwrap();
            assert_eq!(std::fs::read(root.path().join("data/b.sobj")).unwrap(), data);
        }
    }

    #[test]
    fn a_new_key_is_written_in_place_and_an_existing_one_replaced_whole() {
        let root = tempfile::tempdir().unwrap();
        write_durably(root.path(), "data/a.sobj", &[Bytes::from_static(b"first")], false, None).unwrap();
        assert_eq!(std::fs::read(root.path().join("data/a.sobj")).unwrap(), b"first");
        let parts = [Bytes::from_static(b"second, "), Bytes::from_static(b"longer")];
        write_durably(root.path(), "data/a.sobj", &parts, false, None).unwrap();
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

    #[test]
    fn ranges_read_back_what_was_written_directly_or_not() {
        let root = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(3 * super::DIRECT_CHUNK + 777)).map(|i| (i % 253) as u8).collect();
        write_durably(root.path(), "data/r.sobj", &[Bytes::copy_from_slice(&data)], true, None).unwrap();
        let path = root.path().join("data/r.sobj");
        let n = data.len() as u64;
        // Unaligned starts and ends, one ending at the partial last block, small and large.
        for (start, end) in [
            (0, 10),
            (5, 70_000),
            (4095, 1 << 20),
            (4096, 3 << 20),
            (n - 100_000, n),
            (0, n),
        ] {
            for direct in [false, true] {
                let got = super::read_range(&path, start, end, direct).unwrap();
                assert_eq!(
                    &got[..],
                    &data[start as usize..end as usize],
                    "{start}..{end} direct {direct}"
                );
            }
        }
        for direct in [false, true] {
            let past = super::read_range(&path, n - 10, n + 100_000, direct).unwrap_err();
            assert_eq!(past.kind(), std::io::ErrorKind::UnexpectedEof);
        }
    }

    #[test]
    fn a_large_object_is_written_whole_whatever_its_parts() {
        let root = tempfile::tempdir().unwrap();
        // Over two aligned chunks, in parts that straddle the chunk and block boundaries,
        // and a length that is not a multiple of the block size.
        let data: Vec<u8> = (0..(2 * super::DIRECT_CHUNK + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        let cuts = [0, 1, 4095, 4097, super::DIRECT_CHUNK + 3, data.len()];
        let parts: Vec<Bytes> = cuts
            .windows(2)
            .map(|w| Bytes::copy_from_slice(&data[w[0]..w[1]]))
            .collect();
        write_durably(root.path(), "data/big.sobj", &parts, true, None).unwrap();
        assert_eq!(std::fs::read(root.path().join("data/big.sobj")).unwrap(), data);
        // Replaced whole, by a shorter one.
        write_durably(root.path(), "data/big.sobj", &parts[..4], true, None).unwrap();
        let want = &data[..super::DIRECT_CHUNK + 3];
        assert_eq!(std::fs::read(root.path().join("data/big.sobj")).unwrap(), want);
    }
}
