//! An object_store wrapper that counts requests and bytes by kind, so that
//! the cost of a configuration (PUTs and GETs per GB) is measured, not guessed.
//! Ranged reads are merged as object_store merges them, and each merged read
//! counts as one GET, as a remote store would see it.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    coalesce_ranges, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, OBJECT_STORE_COALESCE_DEFAULT,
};
use prometheus::{register_int_counter_vec, IntCounterVec};

pub(crate) struct StoreMetrics {
    pub requests: IntCounterVec,
    pub bytes: IntCounterVec,
}

pub(crate) static STORE_METRICS: LazyLock<StoreMetrics> = LazyLock::new(|| StoreMetrics {
    requests: register_int_counter_vec!(
        "sluice_store_requests_total",
        "Object-store requests, by kind (put, get, head, delete, list, copy)",
        &["op"]
    )
    .unwrap(),
    bytes: register_int_counter_vec!(
        "sluice_store_bytes_total",
        "Bytes written to and read from the object store",
        &["direction"]
    )
    .unwrap(),
});

/// Counts of requests and bytes so far, for benchmarks and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub puts: u64,
    pub gets: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
}

pub fn store_counts() -> StoreCounts {
    let m = &*STORE_METRICS;
    StoreCounts {
        puts: m.requests.with_label_values(&["put"]).get(),
        gets: m.requests.with_label_values(&["get"]).get(),
        bytes_written: m.bytes.with_label_values(&["written"]).get(),
        bytes_read: m.bytes.with_label_values(&["read"]).get(),
    }
}

fn count(op: &str) {
    STORE_METRICS.requests.with_label_values(&[op]).inc();
}

/// Counts a PUT made without object_store (the local store's durable write).
pub(crate) fn count_put(bytes: u64) {
    count("put");
    STORE_METRICS.bytes.with_label_values(&["written"]).inc_by(bytes);
}

/// Counts a ranged GET made without object_store (the local store's read).
pub(crate) fn count_get(bytes: u64) {
    count("get");
    STORE_METRICS.bytes.with_label_values(&["read"]).inc_by(bytes);
}

#[derive(Debug)]
pub(crate) struct CountingStore {
    inner: Arc<dyn ObjectStore>,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner }
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        count_put(payload.content_length() as u64);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        count("put");
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        count(if options.head { "head" } else { "get" });
        let r = self.inner.get_opts(location, options).await?;
        STORE_METRICS
            .bytes
            .with_label_values(&["read"])
            .inc_by(r.range.end - r.range.start);
        Ok(r)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        // Merge nearby ranges as object_store does, and count each merged read as a GET.
        coalesce_ranges(
            ranges,
            |r| async move {
                count("get");
                STORE_METRICS.bytes.with_label_values(&["read"]).inc_by(r.end - r.start);
                self.inner.get_range(location, r).await
            },
            OBJECT_STORE_COALESCE_DEFAULT,
        )
        .await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations.inspect(|_| count("delete")).boxed())
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        count("list");
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        count("list");
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        count("copy");
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The counters are process-wide and tests run in parallel, so check lower bounds.
    #[tokio::test]
    async fn counts_puts_and_merged_range_reads() {
        let store = CountingStore::new(Arc::new(object_store::memory::InMemory::new()));
        let path = Path::from("a");
        let before = store_counts();
        store.put(&path, PutPayload::from(vec![7u8; 4096])).await.unwrap();
        let after_put = store_counts();
        assert!(after_put.puts > before.puts);
        assert!(after_put.bytes_written >= before.bytes_written + 4096);
        // Two nearby ranges are one GET of the span covering both.
        let got = store.get_ranges(&path, &[0..10, 100..200]).await.unwrap();
        assert_eq!(got.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![10, 100]);
        let after_get = store_counts();
        assert!(after_get.gets > after_put.gets);
        assert!(after_get.bytes_read >= after_put.bytes_read + 200);
    }
}
