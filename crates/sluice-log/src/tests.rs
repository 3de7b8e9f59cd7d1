//! Log engine tests against a real SQLite store and a local object store.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use sluice_meta::MetaStore;

use crate::batch::tests::make_batch;
use crate::*;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn meta_url(&self) -> String {
        format!("sqlite://{}/meta.db", self.dir.path().display())
    }
    fn store(&self) -> DataStore {
        DataStore::open(&format!("file://{}/objects", self.dir.path().display())).unwrap()
    }
    async fn open(&self, opts: LogOptions) -> Log {
        let meta = MetaStore::open(&self.meta_url()).await.unwrap();
        Log::open(meta, self.store(), opts).await.unwrap()
    }
    /// A log that caches no tail and compacts whatever is flushed, when asked.
    async fn open_compacting(&self) -> Log {
        let opts = LogOptions {
            compaction_min_age: Duration::ZERO,
            tail_cache_bytes: 0,
            ..opts()
        };
        self.open(opts).await
    }
    /// A log that caches no tail (every read goes to the objects), with a topic "t".
    async fn open_uncached_topic(&self) -> (Log, Arc<Topic>) {
        let opts = LogOptions {
            tail_cache_bytes: 0,
            ..opts()
        };
        let log = self.open(opts).await;
        let t = log.create_topic("t", None, BTreeMap::new(), false).await.unwrap();
        (log, t)
    }
}

fn opts() -> LogOptions {
    LogOptions {
        retention_check_interval: Duration::from_secs(3600),
        ..LogOptions::default()
    }
}

/// Decodes batches into (offset, value) pairs at or after `from`.
fn values(batches: &[Bytes], from: i64) -> Vec<(i64, String)> {
    let mut out = vec![];
    for b in batches {
        let mut buf = b.clone();
        for set in RecordBatchDecoder::decode_all(&mut buf).unwrap() {
            for r in set.records {
                if r.offset >= from {
                    out.push((r.offset, String::from_utf8(r.value.unwrap().to_vec()).unwrap()));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn append_assigns_offsets_and_survives_restart() {
    let fx = Fixture::new();
    let log = fx.open(opts()).await;
    let t = log.create_topic("t", Some(2), BTreeMap::new(), false).await.unwrap();
    let a = log
        .append(&t, 0, make_batch(3, -1, 0, 10, Compression::None))
        .await
        .unwrap();
    let b = log
        .append(&t, 0, make_batch(2, -1, 0, 20, Compression::Zstd))
        .await
        .unwrap();
    let c = log
        .append(&t, 1, make_batch(4, -1, 0, 30, Compression::Gzip))
        .await
        .unwrap();
    assert_eq!((a.base_offset, b.base_offset, c.base_offset), (0, 3, 0));
    assert_eq!(t.partition(0).unwrap().offsets().high_watermark, 5);

    let r = log.read(&t, 0, 4, 1 << 20).await.unwrap();
    assert_eq!(values(&r.batches, 4), vec![(4, "value-1".to_string())]);
    assert!(matches!(log.read(&t, 0, 6, 100).await, Err(LogError::OffsetOutOfRange)));
    assert!(log.read(&t, 0, 5, 100).await.unwrap().batches.is_empty());
    drop(log);

    // A new broker process: everything comes from the index and objects.
    let log = fx.open(opts()).await;
    let t = log.topic("t").unwrap();
    assert_eq!(t.partition(0).unwrap().offsets().high_watermark, 5);
    let r = log.read(&t, 0, 0, 1 << 20).await.unwrap();
    let got: Vec<i64> = values(&r.batches, 0).into_iter().map(|(o, _)| o).collect();
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
    let r = log.read(&t, 1, 0, 1 << 20).await.unwrap();
    assert_eq!(values(&r.batches, 0).len(), 4);
    // The next append continues the offsets.
    let d = log
        .append(&t, 0, make_batch(1, -1, 0, 40, Compression::Lz4))
        .await
        .unwrap();
    assert_eq!(d.base_offset, 5);
}

#[tokio::test]
async fn read_respects_max_bytes_but_returns_one_batch() {
    let fx = Fixture::new();
    let (log, t) = fx.open_uncached_topic().await;
    for _ in 0..5 {
        log.append(&t, 0, make_batch(10, -1, 0, 0, Compression::None))
            .await
            .unwrap();
    }
    let r = log.read(&t, 0, 0, 1).await.unwrap();
    assert_eq!(r.batches.len(), 1);
    let one = r.batches[0].len();
    let r = log.read(&t, 0, 15, one * 2).await.unwrap();
    assert_eq!(values(&r.batches, 15).first().unwrap().0, 15);
    assert_eq!(r.batches.len(), 2);
}

/// A reader catching up through many small objects (one per flush), partly
/// behind the tail cache: every read starts at the offset asked for, is dense,
/// and the reads together return the whole log in order.
#[tokio::test]
async fn catch_up_reads_through_many_objects_are_dense() {
    let fx = Fixture::new();
    let log = fx.open(opts()).await;
    let t = log.create_topic("t", None, BTreeMap::new(), false).await.unwrap();
    for i in 0..600 {
        log.append(&t, 0, make_batch(2, -1, 0, i, Compression::None))
            .await
            .unwrap();
    }
    drop(log);
    // A restarted broker: the first batches come from objects, later ones from the
    // tail cache once it appends more.
    let log = fx.open(opts()).await;
    let t = log.topic("t").unwrap();
    for i in 0..50 {
        log.append(&t, 0, make_batch(2, -1, 0, 600 + i, Compression::None))
            .await
            .unwrap();
    }
    assert_eq!(read_offsets(&log, &t, 0, 1300).await, (0..1300).collect::<Vec<_>>());
}

/// A reader going through cold data in order is answered from reads started ahead of
/// it, with the same batches; one that jumps elsewhere is answered correctly too.
#[tokio::test]
async fn sequential_cold_reads_are_read_ahead() {
    let fx = Fixture::new();
    let (log, t) = fx.open_uncached_topic().await;
    for i in 0..40 {
        log.append(&t, 0, make_batch(5, -1, 0, i, Compression::None))
            .await
            .unwrap();
    }
    let one = log.read(&t, 0, 0, 1).await.unwrap().batches[0].len();
    let mut next = 0;
    while next < 200 {
        let r = log.read(&t, 0, next, 2 * one).await.unwrap();
        let got = values(&r.batches, next);
        assert_eq!(got.first().unwrap().0, next);
        let want: Vec<i64> = (next..next + got.len() as i64).collect();
        assert_eq!(got.iter().map(|(o, _)| *o).collect::<Vec<_>>(), want);
        next += got.len() as i64;
    }
    // One read ahead holds many reads' worth (4 MiB), handed out a read at a time: after
    // the first read from the objects, every read is answered from read aheads, and few
    // were started.
    // (One, unless a slow machine makes the read ahead stop at its time budget.)
    let (started, hits) = log.read_ahead_counts();
    assert_eq!(hits, 19, "reads answered ahead");
    assert!((1..5).contains(&started), "{started} read aheads started");
    // A jump back, then on from there.
    let r = log.read(&t, 0, 7, 2 * one).await.unwrap();
    assert_eq!(values(&r.batches, 7).first().unwrap().0, 7);
    let r = log.read(&t, 0, 10, 2 * one).await.unwrap();
    assert_eq!(values(&r.batches, 10).first().unwrap().0, 10);
}

/// The offsets of the records read from partition `p`, from 0 until `end`, one read after another.
async fn read_offsets(log: &Log, t: &Topic, p: i32, end: i64) -> Vec<i64> {
    let mut read = Vec::new();
    let mut next = 0;
    while next < end {
        let r = log.read(t, p, next, 1 << 20).await.unwrap();
        let got = values(&r.batches, next);
        assert!(!got.is_empty(), "no progress at {next}");
        next = got.last().unwrap().0 + 1;
        read.extend(got.into_iter().map(|(o, _)| o));
    }
    read
}

#[tokio::test]
async fn idempotent_producer_dedupes_and_fences() {
    let fx = Fixture::new();
    let log = fx.open(opts()).await;
    let t = log.create_topic("idem", None, BTreeMap::new(), false).await.unwrap();
    let first = make_batch(5, 42, 0, 0, Compression::None);
    assert_eq!(log.append(&t, 0, first.clone()).await.unwrap().base_offset, 0);
    log.append(&t, 0, make_batch(5, 42, 5, 0, Compression::None))
        .await
        .unwrap();
    // A retry of the first batch gets its original offset and writes nothing.
    assert_eq!(log.append(&t, 0, first.clone()).await.unwrap().base_offset, 0);
    assert_eq!(t.partition(0).unwrap().offsets().high_watermark, 10);
    let gap = log.append(&t, 0, make_batch(1, 42, 20, 0, Compression::None)).await;
    assert!(matches!(gap, Err(LogError::OutOfOrderSequence(_))));
    drop(log);
    // Producer state survives a restart.
    let log = fx.open(opts()).await;
    let t = log.topic("idem").unwrap();
    assert_eq!(log.append(&t, 0, first).await.unwrap().base_offset, 0);
    assert_eq!(
        log.append(&t, 0, make_batch(2, 42, 10, 0, Compression::None))
            .await
            .unwrap()
            .base_offset,
        10
    );
}

#[tokio::test]
async fn bad_input_is_refused_without_effect() {
    let fx = Fixture::new();
    let log = fx.open(opts()).await;
    let cfg = BTreeMap::from([("max.message.bytes".to_string(), "100".to_string())]);
    let t = log.create_topic("small", None, cfg, false).await.unwrap();
    let big = make_batch(20, -1, 0, 0, Compression::None);
    assert!(matches!(
        log.append(&t, 0, big).await,
        Err(LogError::MessageTooLarge(_))
    ));
    assert!(matches!(
        log.append(&t, 3, make_batch(1, -1, 0, 0, Compression::None)).await,
        Err(LogError::UnknownTopicOrPartition)
    ));
    assert!(matches!(
        log.create_topic("small", None, BTreeMap::new(), false).await,
        Err(LogError::TopicExists)
    ));
    assert!(matches!(
        log.create_topic("bad name", None, BTreeMap::new(), false).await,
        Err(LogError::InvalidTopic(_))
    ));
    let bad_cfg = BTreeMap::from([("nope".to_string(), "1".to_string())]);
    assert!(matches!(
        log.create_topic("x", None, bad_cfg, false).await,
        Err(LogError::InvalidConfig(_))
    ));
    assert!(log.create_topic("v", None, BTreeMap::new(), true).await.is_ok());
    assert!(log.topic("v").is_none());
    assert_eq!(t.partition(0).unwrap().offsets().high_watermark, 0);
}

#[tokio::test]
async fn retention_delete_records_and_gc() {
    let fx = Fixture::new();
    let log = fx.open(opts()).await;
    let cfg = BTreeMap::from([("retention.ms".to_string(), "60000".to_string())]);
    let t = log.create_topic("r", None, cfg, false).await.unwrap();
    let now = sluice_meta::now_ms();
    log.append(&t, 0, make_batch(3, -1, 0, now - 120_000, Compression::None))
        .await
        .unwrap();
    log.append(&t, 0, make_batch(3, -1, 0, now, Compression::None))
        .await
        .unwrap();
    log.enforce_retention().await.unwrap();
    let o = t.partition(0).unwrap().offsets();
    assert_eq!((o.log_start, o.high_watermark), (3, 6));
    assert!(matches!(log.read(&t, 0, 0, 100).await, Err(LogError::OffsetOutOfRange)));

    assert_eq!(log.delete_records(&t, 0, -1).await.unwrap(), 6);
    assert!(matches!(
        log.delete_records(&t, 0, 7).await,
        Err(LogError::OffsetOutOfRange)
    ));
    log.enforce_retention().await.unwrap();
    // Both objects are now unreferenced and gone.
    assert!(fx.store().list("data").await.unwrap().is_empty());

    // An object written but never committed is an orphan.
    fx.store()
        .put("data/stray.sobj", Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(log.collect_orphans(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(log.collect_orphans(Duration::ZERO).await.unwrap(), 1);
    assert!(fx.store().list("data").await.unwrap().is_empty());
}

/// Time retention reads the index a page at a time (4 rows in tests) up to the first
/// batch it keeps.
#[tokio::test]
async fn retention_by_time_crosses_index_pages() {
    let fx = Fixture::new();
    let log = fx.open(opts()).await;
    let cfg = BTreeMap::from([("retention.ms".to_string(), "60000".to_string())]);
    let t = log.create_topic("rt", None, cfg, false).await.unwrap();
    let now = sluice_meta::now_ms();
    for ts in [now - 120_000; 6].into_iter().chain([now, now - 120_000]) {
        log.append(&t, 0, make_batch(3, -1, 0, ts, Compression::None))
            .await
            .unwrap();
    }
    log.enforce_retention().await.unwrap();
    // The six old batches go; the old one after a kept batch stays, as in Kafka.
    let o = t.partition(0).unwrap().offsets();
    assert_eq!((o.log_start, o.high_watermark), (18, 24));
}

#[tokio::test]
async fn retention_by_bytes() {
    let fx = Fixture::new();
    let log = fx.open(opts()).await;
    let one = make_batch(5, -1, 0, 0, Compression::None);
    let cfg = BTreeMap::from([
        ("retention.bytes".to_string(), (one.len() * 2).to_string()),
        ("retention.ms".to_string(), "-1".to_string()),
    ]);
    let t = log.create_topic("rb", None, cfg, false).await.unwrap();
    for _ in 0..5 {
        log.append(&t, 0, one.clone()).await.unwrap();
    }
    log.enforce_retention().await.unwrap();
    assert_eq!(t.partition(0).unwrap().offsets().log_start, 15);
}

#[tokio::test]
async fn timestamps_and_rebuild() {
    let fx = Fixture::new();
    let log = fx.open(opts()).await;
    let t = log.create_topic("ts", Some(2), BTreeMap::new(), false).await.unwrap();
    log.append(&t, 0, make_batch(5, -1, 0, 1000, Compression::Snappy))
        .await
        .unwrap();
    log.append(&t, 0, make_batch(5, -1, 0, 2000, Compression::None))
        .await
        .unwrap();
    log.append(&t, 1, make_batch(2, -1, 0, 3000, Compression::None))
        .await
        .unwrap();
    let at = log.offset_for_timestamp(&t, 0, 1003).await.unwrap().unwrap();
    assert_eq!((at.offset, at.timestamp), (3, 1003));
    let at = log.offset_for_timestamp(&t, 0, 1500).await.unwrap().unwrap();
    assert_eq!((at.offset, at.timestamp), (5, 2000));
    assert!(log.offset_for_timestamp(&t, 0, 9999).await.unwrap().is_none());
    let max = log.max_timestamp_offset(&t, 0).await.unwrap().unwrap();
    assert_eq!((max.offset, max.timestamp), (9, 2004));
    let id = t.id;
    drop(log);

    // Lose the metadata store entirely, then rebuild it from the objects.
    for f in ["meta.db", "meta.db-wal", "meta.db-shm"] {
        let _ = std::fs::remove_file(fx.dir.path().join(f));
    }
    let meta = MetaStore::open(&fx.meta_url()).await.unwrap();
    let report = rebuild_index(&meta, &fx.store()).await.unwrap();
    assert_eq!((report.objects, report.batches, report.topics), (3, 3, 1));
    let log = Log::open(meta, fx.store(), opts()).await.unwrap();
    let t = log.topic("ts").unwrap();
    assert_eq!((t.id, t.partition_count()), (id, 2));
    // Rebuilt partitions have no leader until the cluster layer assigns one.
    assert_eq!(log.read(&t, 0, 0, 1 << 20).await.unwrap_err(), LogError::NotLeader);
    log.take_leadership(&[(id, 0, 1), (id, 1, 1)]).await.unwrap();
    let r = log.read(&t, 0, 0, 1 << 20).await.unwrap();
    assert_eq!(values(&r.batches, 0).len(), 10);
    assert_eq!(t.partition(1).unwrap().offsets().high_watermark, 2);
}

#[tokio::test]
async fn topic_deletion_and_partitions() {
    let fx = Fixture::new();
    let log = fx.open(opts()).await;
    let t = log.create_topic("d", Some(1), BTreeMap::new(), false).await.unwrap();
    log.append(&t, 0, make_batch(1, -1, 0, 0, Compression::None))
        .await
        .unwrap();
    log.add_partitions("d", 3, false).await.unwrap();
    assert_eq!(t.partition_count(), 3);
    assert!(matches!(
        log.add_partitions("d", 2, false).await,
        Err(LogError::InvalidPartitions(_))
    ));
    log.append(&t, 2, make_batch(1, -1, 0, 0, Compression::None))
        .await
        .unwrap();
    log.delete_topic("d").await.unwrap();
    assert!(log.topic("d").is_none());
    assert!(matches!(
        log.append(&t, 0, make_batch(1, -1, 0, 0, Compression::None)).await,
        Err(LogError::UnknownTopicOrPartition)
    ));
    log.enforce_retention().await.unwrap();
    assert!(fx.store().list("data").await.unwrap().is_empty());
    // The name can be reused; the new topic starts empty.
    let t2 = log.create_topic("d", Some(1), BTreeMap::new(), false).await.unwrap();
    assert_ne!(t2.id, t.id);
    assert_eq!(t2.partition(0).unwrap().offsets().high_watermark, 0);
}

#[tokio::test]
async fn compaction_moves_history_into_segments_without_changing_it() {
    let fx = Fixture::new();
    let log = fx.open_compacting().await;
    let t = log.create_topic("c", Some(2), BTreeMap::new(), false).await.unwrap();
    // Each append is its own flush: ten objects, each holding both partitions.
    let now = sluice_meta::now_ms();
    for i in 0..10 {
        let (a, b) = (
            make_batch(3, -1, 0, now + i, Compression::None),
            make_batch(2, -1, 0, now + i, Compression::Lz4),
        );
        let (ra, rb) = tokio::join!(log.append(&t, 0, a), log.append(&t, 1, b));
        ra.unwrap();
        rb.unwrap();
    }
    let read_all = |p: i32| {
        let (log, t) = (log.clone(), t.clone());
        async move { values(&log.read(&t, p, 0, 1 << 20).await.unwrap().batches, 0) }
    };
    let (p0, p1) = (read_all(0).await, read_all(1).await);
    assert_eq!((p0.len(), p1.len()), (30, 20));
    let objects_before = fx.store().list("data").await.unwrap().len();

    let report = log.compact().await.unwrap();
    assert_eq!((report.segments, report.batches), (2, 20));
    // Nothing left to compact: segments are not compacted again.
    assert_eq!(log.compact().await.unwrap().segments, 0);
    log.enforce_retention().await.unwrap();
    let objects_after = fx.store().list("data").await.unwrap();
    assert_eq!(
        objects_after.len(),
        2,
        "only the segments remain (was {objects_before})"
    );
    assert!(objects_after.iter().all(|o| o.key.ends_with(".segment")));
    assert_eq!((read_all(0).await, read_all(1).await), (p0, p1));
    // Appends continue after compaction at the next offsets.
    assert_eq!(
        log.append(&t, 0, make_batch(1, -1, 0, now, Compression::None))
            .await
            .unwrap()
            .base_offset,
        30
    );
}

/// A tiered topic keeps `local.retention.ms` in the main store; older batches move to the
/// tier store, their flush objects are collected, and reads, restarts, retention and the
/// orphan sweep see one log across both stores. A damaged tier object is an error.
#[tokio::test]
async fn tiering_moves_old_batches_to_the_tier_store_and_reads_stay_the_same() {
    let fx = Fixture::new();
    let tier_url = format!("file://{}/tier", fx.dir.path().display());
    let open = || async {
        let meta = MetaStore::open(&fx.meta_url()).await.unwrap();
        let store = fx.store().with_tier(&tier_url).unwrap();
        let opts = LogOptions {
            tail_cache_bytes: 0,
            segment_bytes: 1000,
            ..opts()
        };
        Log::open(meta, store, opts).await.unwrap()
    };
    // Without a tier store, tiering is refused as Kafka refuses it.
    let plain = fx.open(opts()).await;
    let tiered_cfg = BTreeMap::from([
        ("remote.storage.enable".to_string(), "true".to_string()),
        ("local.retention.ms".to_string(), "60000".to_string()),
    ]);
    let refused = plain.create_topic("x", None, tiered_cfg.clone(), false).await;
    assert!(matches!(refused, Err(LogError::InvalidConfig(m)) if m.contains("Tiered Storage")));
    drop(plain);

    let log = open().await;
    let t = log.create_topic("t", None, tiered_cfg, false).await.unwrap();
    let now = sluice_meta::now_ms();
    // Ten old batches (2 hours old), then three recent ones: one flush object each.
    for i in 0..13 {
        let ts = if i < 10 { now - 7_200_000 + i } else { now };
        log.append(&t, 0, make_batch(5, -1, 0, ts, Compression::None))
            .await
            .unwrap();
    }
    let before = values(&log.read(&t, 0, 0, 1 << 20).await.unwrap().batches, 0);
    assert_eq!(before.len(), 65);
    assert_eq!(log.local_log_start(&t, 0).await.unwrap(), (0, None));

    let report = log.tier().await.unwrap();
    assert_eq!(report.batches, 10);
    assert!(report.segments >= 2, "segment_bytes splits the move: {report:?}");
    assert_eq!(log.tier().await.unwrap(), TierReport::default());
    assert_eq!(log.local_log_start(&t, 0).await.unwrap(), (50, Some(49)));
    log.enforce_retention().await.unwrap();
    // The moved flush objects are collected; the recent three stay in the main store.
    assert_eq!(fx.store().list("data").await.unwrap().len(), 3);
    let tier = DataStore::open(&tier_url).unwrap();
    let tier_objects = tier.list("tier").await.unwrap();
    assert_eq!(tier_objects.len(), report.segments);
    let sizes = log.partition_sizes(&t).await.unwrap()[&0];
    assert!(sizes.tier > 0 && sizes.local > 0, "{sizes:?}");
    let read_all = |log: Log, t: Arc<Topic>| async move {
        let mut out = Vec::new();
        let mut at = 0;
        while at < 65 {
            let r = log.read(&t, 0, at, 1 << 20).await.unwrap();
            let v = values(&r.batches, at);
            at = v.last().unwrap().0 + 1;
            out.extend(v);
        }
        out
    };
    assert_eq!(read_all(log.clone(), t.clone()).await, before);
    // An orphan in the tier store (a crash between its PUT and its commit) is swept.
    tier.put("tier/stray.segment", Bytes::from_static(b"x")).await.unwrap();
    assert_eq!(log.collect_orphans(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(tier.list("tier").await.unwrap().len(), report.segments);
    drop(log);

    // After a restart, reads go on across both stores.
    let log = open().await;
    let t = log.topic("t").unwrap();
    assert_eq!(read_all(log.clone(), t.clone()).await, before);

    // Damage one byte of a tier object: its reads fail, they never return other data.
    let victim = &tier_objects[0].key;
    let path = fx.dir.path().join("tier").join(victim);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[70] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let damaged = log.read(&t, 0, 0, 1 << 20).await;
    assert!(
        matches!(&damaged, Err(LogError::Storage(m)) if m.contains("damaged")),
        "{damaged:?}"
    );

    // Retention bounds the whole log: expired tier segments go from the tier store.
    let cfg = BTreeMap::from([
        ("remote.storage.enable".to_string(), "true".to_string()),
        ("retention.ms".to_string(), "3600000".to_string()),
        ("local.retention.ms".to_string(), "60000".to_string()),
    ]);
    log.set_topic_configs("t", cfg, false).await.unwrap();
    log.enforce_retention().await.unwrap();
    assert_eq!(t.partition(0).unwrap().offsets().log_start, 50);
    assert!(tier.list("tier").await.unwrap().is_empty());
    assert_eq!(
        values(&log.read(&t, 0, 50, 1 << 20).await.unwrap().batches, 50).len(),
        15
    );
}

/// Runs of `compaction_keep_run_bytes` or more in a flush object stay where they are (moving them
/// would write a busy partition's history twice); the small runs between them are gathered
/// into segments, and a lone small object between kept runs is left and not looked at again.
#[tokio::test]
async fn compaction_leaves_long_runs_in_place_and_gathers_the_small_ones() {
    let fx = Fixture::new();
    let log = fx.open_compacting().await;
    let t = log.create_topic("k", Some(2), BTreeMap::new(), false).await.unwrap();
    let now = sluice_meta::now_ms();
    let big = make_batch(24_000, -1, 0, now, Compression::None);
    assert!((opts().compaction_keep_run_bytes..1 << 20).contains(&big.len()));
    // Partition 0: 3 small, big, 3 small, big, 1 small, big. Partition 1: 7 small. Each
    // append is its own flush object; a small round puts both partitions in one object.
    let small_rounds = |n: usize| {
        let (log, t) = (log.clone(), t.clone());
        async move {
            for _ in 0..n {
                let one = || make_batch(3, -1, 0, now, Compression::None);
                let (a, b) = tokio::join!(log.append(&t, 0, one()), log.append(&t, 1, one()));
                a.unwrap();
                b.unwrap();
            }
        }
    };
    for n in [3, 3, 1] {
        small_rounds(n).await;
        log.append(&t, 0, big.clone()).await.unwrap();
    }
    let rows = |p: i32| {
        let (log, t) = (log.clone(), t.clone());
        async move { log.inner.meta.batches_from(t.id, p, 0, 1000).await.unwrap() }
    };
    let read_all = |p: i32| {
        let (log, t) = (log.clone(), t.clone());
        async move {
            let end = t.partition(p).unwrap().offsets().high_watermark;
            assert_eq!(end, if p == 0 { 3 * 24_000 + 7 * 3 } else { 7 * 3 });
            read_offsets(&log, &t, p, end).await
        }
    };
    let before = rows(0).await;
    let (p0, p1) = (read_all(0).await, read_all(1).await);

    let mut segments = 0;
    loop {
        let r = log.compact().await.unwrap();
        if r.segments == 0 {
            break;
        }
        segments += r.segments;
    }
    // Partition 0's two runs of three small batches, and partition 1's seven.
    assert_eq!(segments, 3);
    let after = rows(0).await;
    let is_segment = |r: &sluice_meta::BatchRow| r.object_key.ends_with(".segment");
    let moved: Vec<bool> = after.iter().map(is_segment).collect();
    let expected = [true, true, true, false, true, true, true, false, false, false];
    assert_eq!(moved, expected, "partition 0's batches in segments");
    for (b, a) in before.iter().zip(&after) {
        if !is_segment(a) {
            assert_eq!(
                (&a.object_key, a.position),
                (&b.object_key, b.position),
                "kept in place"
            );
        }
    }
    assert!(rows(1).await.iter().all(is_segment));
    // Everything up to the end is settled: later passes do not read it again.
    let part = t.partition(0).unwrap();
    assert_eq!(
        part.compacted_to.load(std::sync::atomic::Ordering::Relaxed),
        part.offsets().high_watermark
    );
    log.enforce_retention().await.unwrap();
    assert_eq!((read_all(0).await, read_all(1).await), (p0, p1));
}

/// A cold read of a segment gathers its index rows across pages before reading, so the
/// segment's adjacent batches come back in one GET (a GET per index page, or per sixteen
/// rows, made compacted history cost five times the GETs it should).
#[tokio::test]
async fn a_cold_read_of_a_segment_is_one_get_across_index_pages() {
    let fx = Fixture::new();
    let log = fx.open_compacting().await;
    let t = log.create_topic("s", Some(1), BTreeMap::new(), false).await.unwrap();
    // Each append is its own flush object; there are more batches than an index page.
    for _ in 0..40 {
        log.append(&t, 0, make_batch(1, -1, 0, sluice_meta::now_ms(), Compression::None))
            .await
            .unwrap();
    }
    assert_eq!(log.compact().await.unwrap().segments, 1);
    let rows = crate::read::index_rows(&log.inner.meta, (t.id, 0), 0, 40, 1 << 20, std::time::Instant::now())
        .await
        .unwrap();
    assert_eq!(rows.len(), 40);
    assert!(rows.iter().all(|r| r.object_key.ends_with(".segment")));
    assert_eq!(crate::read::get_chunks(&rows, 16).len(), 1);
    assert_eq!(log.read(&t, 0, 0, 1 << 20).await.unwrap().batches.len(), 40);
}

/// Compaction walks the index a page at a time and remembers where compacted history
/// ends, so a log whose head is many pages of segments still gets its new objects
/// compacted (one unpaged query used to stop seeing them past its row limit).
#[tokio::test]
async fn compaction_keeps_up_behind_pages_of_compacted_history() {
    let fx = Fixture::new();
    let one = make_batch(3, -1, 0, sluice_meta::now_ms(), Compression::None);
    let log = fx
        .open(LogOptions {
            compaction_min_age: Duration::ZERO,
            segment_bytes: one.len() * 3,
            tail_cache_bytes: 0,
            ..opts()
        })
        .await;
    let t = log.create_topic("cc", Some(2), BTreeMap::new(), false).await.unwrap();
    let append_rounds = |rounds: usize| {
        let (log, t, one) = (log.clone(), t.clone(), one.clone());
        async move {
            for _ in 0..rounds {
                let (a, b) = tokio::join!(log.append(&t, 0, one.clone()), log.append(&t, 1, one.clone()));
                a.unwrap();
                b.unwrap();
            }
        }
    };
    let compact_all = || {
        let log = log.clone();
        async move {
            let mut batches = 0;
            loop {
                let r = log.compact().await.unwrap();
                if r.segments == 0 {
                    return batches;
                }
                batches += r.batches;
            }
        }
    };
    let only_segments_left = || {
        let (log, fx) = (log.clone(), &fx);
        async move {
            log.enforce_retention().await.unwrap();
            let keys: Vec<String> = fx
                .store()
                .list("data")
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect();
            keys.iter().all(|k| k.ends_with(".segment"))
        }
    };
    append_rounds(12).await;
    assert_eq!(compact_all().await, 24);
    assert!(only_segments_left().await);
    // Twelve segment rows per partition now precede anything new: three pages in tests.
    append_rounds(6).await;
    assert_eq!(compact_all().await, 12);
    assert!(only_segments_left().await);
    for p in 0..2 {
        assert_eq!(read_offsets(&log, &t, p, 54).await, (0..54).collect::<Vec<_>>());
    }
}

/// Appends `rounds` × 3 batches of 2 records concurrently over 3 partitions;
/// returns the base offsets each partition handed out, or the first error.
async fn append_concurrently(log: &Log, t: &Arc<Topic>, rounds: usize) -> Result<Vec<Vec<i64>>, LogError> {
    let appends = (0..rounds * 3).map(|i| {
        let (log, t) = (log.clone(), t.clone());
        async move {
            let a = log.append(&t, (i % 3) as i32, make_batch(2, -1, 0, i as i64, Compression::None));
            a.await.map(|a| ((i % 3), a.base_offset))
        }
    });
    let mut offsets = vec![Vec::new(); 3];
    for r in futures::future::join_all(appends).await {
        let (p, base) = r?;
        offsets[p].push(base);
    }
    for o in &mut offsets {
        o.sort();
    }
    Ok(offsets)
}

#[tokio::test]
async fn concurrent_flushes_hand_out_dense_offsets_and_a_failed_write_hands_out_none() {
    let fx = Fixture::new();
    // Tiny flushes, so that several objects are written at once.
    let log = fx
        .open(LogOptions {
            flush_bytes: 200,
            ..opts()
        })
        .await;
    let t = log.create_topic("t", Some(3), BTreeMap::new(), false).await.unwrap();
    let dense = |from: i64, n: usize| (0..n as i64).map(|i| from + 2 * i).collect::<Vec<_>>();
    assert_eq!(
        append_concurrently(&log, &t, 100).await.unwrap(),
        vec![dense(0, 100); 3]
    );

    // Objects cannot be written: every append fails, and none takes an offset.
    let data_dir = fx.dir.path().join("objects/data");
    let moved = fx.dir.path().join("objects/moved");
    std::fs::rename(&data_dir, &moved).unwrap();
    std::fs::write(&data_dir, b"not a directory").unwrap();
    assert!(matches!(
        append_concurrently(&log, &t, 20).await,
        Err(LogError::Storage(_))
    ));
    for p in 0..3 {
        assert_eq!(t.partition(p).unwrap().offsets().high_watermark, 200);
    }

    // Writable again: offsets continue where the last committed flush left them.
    std::fs::remove_file(&data_dir).unwrap();
    std::fs::rename(&moved, &data_dir).unwrap();
    assert_eq!(
        append_concurrently(&log, &t, 50).await.unwrap(),
        vec![dense(200, 50); 3]
    );
    for p in 0..3 {
        let read = read_offsets(&log, &t, p, 300).await;
        assert_eq!(read, (0..300).collect::<Vec<_>>(), "partition {p} reads back densely");
    }
    drop(log);
    // And the store agrees after a restart.
    let log = fx.open(opts()).await;
    let t = log.topic("t").unwrap();
    assert_eq!(t.partition(2).unwrap().offsets().high_watermark, 300);
}

fn journal_opts(fx: &Fixture, upload_interval: Duration) -> LogOptions {
    LogOptions {
        journal: Some(fx.dir.path().join("journal")),
        upload_interval,
        ..opts()
    }
}

/// The high watermark the metadata store has for a partition (what is uploaded).
async fn stored_watermark(log: &Log, topic: &Topic, partition: i32) -> i64 {
    let rows = log.meta().list_partitions().await.unwrap();
    let row = rows.iter().find(|r| r.topic_id == topic.id && r.partition == partition);
    row.unwrap().high_watermark
}

fn data_objects(fx: &Fixture) -> usize {
    std::fs::read_dir(fx.dir.path().join("objects/data")).map_or(0, |d| d.count())
}

#[test]
fn journaled_appends_survive_a_crash_before_their_upload() {
    let fx = Fixture::new();
    let jopts = journal_opts(&fx, Duration::from_secs(3600));
    let pid = 7;
    // First run: appends are acknowledged from the journal, then the process "dies":
    // dropping the runtime stops the flusher without an upload.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let log = fx.open(jopts.clone()).await;
        let t = log.create_topic("j", Some(2), BTreeMap::new(), false).await.unwrap();
        let a = log
            .append(&t, 0, make_batch(3, -1, 0, 10, Compression::None))
            .await
            .unwrap();
        let b = log
            .append(&t, 1, make_batch(2, pid, 0, 20, Compression::Zstd))
            .await
            .unwrap();
        let c = log
            .append(&t, 0, make_batch(2, -1, 0, 30, Compression::None))
            .await
            .unwrap();
        assert_eq!((a.base_offset, b.base_offset, c.base_offset), (0, 0, 3));
        // Readable at once, from the tail cache, though the store has none of it.
        let r = log.read(&t, 0, 0, 1 << 20).await.unwrap();
        assert_eq!(values(&r.batches, 0).len(), 5);
        assert_eq!(stored_watermark(&log, &t, 0).await, 0);
        assert_eq!(data_objects(&fx), 0);
    });
    // Second run: the journal is uploaded before anything is served.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let log = fx.open(jopts.clone()).await;
        let t = log.topic("j").unwrap();
        assert_eq!(stored_watermark(&log, &t, 0).await, 5);
        assert_eq!(t.partition(1).unwrap().offsets().high_watermark, 2);
        assert_eq!(data_objects(&fx), 1, "one object for every journaled flush");
        let r = log.read(&t, 0, 0, 1 << 20).await.unwrap();
        let got: Vec<i64> = values(&r.batches, 0).into_iter().map(|(o, _)| o).collect();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        // The idempotent producer's state came back from the journal too: a retry of its
        // batch is a duplicate, and its next batch follows.
        let retry = log
            .append(&t, 1, make_batch(2, pid, 0, 20, Compression::Zstd))
            .await
            .unwrap();
        assert_eq!(retry.base_offset, 0);
        let next = log
            .append(&t, 1, make_batch(1, pid, 2, 40, Compression::None))
            .await
            .unwrap();
        assert_eq!(next.base_offset, 2);
    });
    // Third run: nothing is uploaded twice.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let log = fx.open(jopts).await;
        let t = log.topic("j").unwrap();
        assert_eq!(stored_watermark(&log, &t, 1).await, 3);
        let r = log.read(&t, 1, 0, 1 << 20).await.unwrap();
        assert_eq!(values(&r.batches, 0).len(), 3);
    });
}

#[tokio::test]
async fn journaled_flushes_are_uploaded_as_one_object() {
    let fx = Fixture::new();
    let log = fx.open(journal_opts(&fx, Duration::from_secs(3600))).await;
    let t = log.create_topic("u", Some(2), BTreeMap::new(), false).await.unwrap();
    for i in 0..6 {
        log.append(&t, i % 2, make_batch(2, -1, 0, i as i64, Compression::None))
            .await
            .unwrap();
    }
    assert_eq!(data_objects(&fx), 0);
    // A barrier waits for the upload.
    log.barrier().await;
    assert_eq!(data_objects(&fx), 1);
    assert_eq!(stored_watermark(&log, &t, 0).await, 6);
    assert_eq!(stored_watermark(&log, &t, 1).await, 6);
    let rows = log.meta().batches_from(t.id, 1, 0, 100).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.base_offset).collect::<Vec<_>>(), [0, 2, 4]);
    // A partition's batches are adjacent in the object, though their flushes alternated.
    for pair in rows.windows(2) {
        assert_eq!(pair[1].position, pair[0].position + pair[0].length as i64);
    }
    // Later flushes are uploaded once their interval passes.
    drop(log);
    let log = fx.open(journal_opts(&fx, Duration::from_millis(20))).await;
    let t = log.topic("u").unwrap();
    // Read back from the object (the tail cache starts empty).
    let r = log.read(&t, 1, 0, 1 << 20).await.unwrap();
    let got: Vec<i64> = values(&r.batches, 0).into_iter().map(|(o, _)| o).collect();
    assert_eq!(got, [0, 1, 2, 3, 4, 5]);
    log.append(&t, 0, make_batch(1, -1, 0, 0, Compression::None))
        .await
        .unwrap();
    for _ in 0..200 {
        if stored_watermark(&log, &t, 0).await == 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stored_watermark(&log, &t, 0).await, 7);
    assert_eq!(data_objects(&fx), 2);
}

#[test]
fn a_large_flush_goes_to_the_store_and_the_journal_refers_to_it() {
    let fx = Fixture::new();
    let jopts = journal_opts(&fx, Duration::from_secs(3600));
    let big = make_batch(60_000, -1, 0, 0, Compression::None);
    assert!(big.len() >= crate::flush::DIRECT_BYTES, "{} bytes", big.len());
    let big_key = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let log = fx.open(jopts.clone()).await;
        let cfg = BTreeMap::from([("max.message.bytes".to_string(), (8 << 20).to_string())]);
        let t = log.create_topic("d", Some(2), cfg, false).await.unwrap();
        log.append(&t, 0, make_batch(3, -1, 0, 0, Compression::None))
            .await
            .unwrap();
        log.append(&t, 1, make_batch(2, -1, 0, 0, Compression::None))
            .await
            .unwrap();
        assert_eq!(data_objects(&fx), 0, "small flushes are journaled");
        let a = log.append(&t, 0, big.clone()).await.unwrap();
        assert_eq!(a.base_offset, 3);
        // Acknowledged once its object is in the store and the journal refers to it; not
        // indexed before the next upload, and not collected as an orphan meanwhile.
        assert_eq!(data_objects(&fx), 1);
        assert_eq!(stored_watermark(&log, &t, 0).await, 0);
        assert_eq!(log.collect_orphans(Duration::ZERO).await.unwrap(), 0);
        assert_eq!(data_objects(&fx), 1);
        assert_eq!(read_offsets(&log, &t, 0, 60_003).await, (0..60_003).collect::<Vec<_>>());
        let b = log
            .append(&t, 1, make_batch(4, -1, 0, 0, Compression::None))
            .await
            .unwrap();
        assert_eq!(b.base_offset, 2);
        let dir = fx.dir.path().join("objects/data");
        std::fs::read_dir(dir).unwrap().next().unwrap().unwrap().file_name()
    });
    // After a crash, everything acknowledged is back, in order; the large flush is
    // indexed where it is, not copied.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let log = fx.open(jopts.clone()).await;
        let t = log.topic("d").unwrap();
        assert_eq!(stored_watermark(&log, &t, 0).await, 60_003);
        assert_eq!(stored_watermark(&log, &t, 1).await, 6);
        assert_eq!(data_objects(&fx), 2);
        let rows = log.meta().batches_from(t.id, 0, 3, 1).await.unwrap();
        assert!(rows[0].object_key.ends_with(big_key.to_str().unwrap()), "{rows:?}");
        assert_eq!(read_offsets(&log, &t, 0, 60_003).await, (0..60_003).collect::<Vec<_>>());
        assert_eq!(read_offsets(&log, &t, 1, 6).await, (0..6).collect::<Vec<_>>());
        // Without a crash, the upload indexes a large flush where it is too.
        log.append(&t, 1, make_batch(1, -1, 0, 0, Compression::None))
            .await
            .unwrap();
        log.append(&t, 0, big.clone()).await.unwrap();
        log.barrier().await;
        assert_eq!(
            data_objects(&fx),
            4,
            "one object for the small flush, one for the large"
        );
        assert_eq!(stored_watermark(&log, &t, 0).await, 120_003);
        assert_eq!(stored_watermark(&log, &t, 1).await, 7);
    });
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let log = fx.open(jopts).await;
        let t = log.topic("d").unwrap();
        assert_eq!(data_objects(&fx), 4, "nothing recovered twice");
        assert_eq!(
            read_offsets(&log, &t, 0, 120_003).await,
            (0..120_003).collect::<Vec<_>>()
        );
    });
}

/// The journal keeps a large flush's reference record after the flush is indexed, and
/// compaction may then collect its object. Recovery passes over such a record by the
/// footer it carries, without reading the object: it used to read every referenced
/// object (the whole history of a busy broker, at every start) and refused to start
/// once one was collected.
#[test]
fn recovery_passes_over_indexed_large_flushes_whose_objects_were_compacted_away() {
    let fx = Fixture::new();
    let jopts = LogOptions {
        compaction_min_age: Duration::ZERO,
        // Compact runs of any length: the large flush's too.
        compaction_keep_run_bytes: usize::MAX,
        ..journal_opts(&fx, Duration::from_secs(3600))
    };
    // Timestamps of now, or retention would delete everything.
    let now = sluice_meta::now_ms();
    let big = make_batch(60_000, -1, 0, now, Compression::None);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let log = fx.open(jopts.clone()).await;
        let cfg = BTreeMap::from([("max.message.bytes".to_string(), (8 << 20).to_string())]);
        let t = log.create_topic("d", Some(1), cfg, false).await.unwrap();
        log.append(&t, 0, big.clone()).await.unwrap();
        log.append(&t, 0, make_batch(3, -1, 0, now, Compression::None))
            .await
            .unwrap();
        log.barrier().await;
        assert_eq!(log.compact().await.unwrap().segments, 1);
        log.enforce_retention().await.unwrap();
        let objects: Vec<_> = std::fs::read_dir(fx.dir.path().join("objects/data"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            objects.len() == 1 && objects[0].ends_with(".segment"),
            "the large flush's object is collected: {objects:?}"
        );
    });
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let log = fx.open(jopts.clone()).await;
        let t = log.topic("d").unwrap();
        assert_eq!(stored_watermark(&log, &t, 0).await, 60_003);
        assert_eq!(read_offsets(&log, &t, 0, 60_003).await, (0..60_003).collect::<Vec<_>>());
        // Writing goes on after it.
        let next = log.append(&t, 0, make_batch(1, -1, 0, now, Compression::None));
        assert_eq!(next.await.unwrap().base_offset, 60_003);
    });
}

/// A journal record holding one batch at `base_offset`, as the flusher writes it.
fn journal_record(t: &Topic, partition: i32, base_offset: i64, batch: &Bytes) -> Bytes {
    let info = batch::parse_header(batch, 0).unwrap();
    let mut body = bytes::BytesMut::from(&batch[..]);
    batch::patch_header(&mut body, base_offset, 0);
    let entry = object::FooterEntry {
        topic_id: t.id,
        topic: t.name.clone(),
        partition,
        base_offset,
        last_offset: base_offset + info.last_offset_delta as i64,
        max_timestamp: info.max_timestamp,
        position: 0,
        length: batch.len() as u32,
    };
    object::finish(&mut body, &[entry]);
    body.freeze()
}

/// Reference records of earlier builds name only their object. Recovery reads it, and
/// passes over one whose object is gone: recovery runs before anything could collect
/// an object not yet indexed, so it was indexed, then compacted and collected.
#[test]
fn recovery_reads_earlier_reference_records_and_passes_over_collected_ones() {
    let fx = Fixture::new();
    let jopts = journal_opts(&fx, Duration::from_secs(3600));
    let now = sluice_meta::now_ms();
    let t = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let log = fx.open(jopts.clone()).await;
        let t = log.create_topic("v", Some(1), BTreeMap::new(), false).await.unwrap();
        log.append(&t, 0, make_batch(2, -1, 0, now, Compression::None))
            .await
            .unwrap();
        t
    });
    let reference_v1 = |key: &str| {
        let mut payload = key.as_bytes().to_vec();
        payload.extend_from_slice(&(key.len() as u16).to_be_bytes());
        payload.extend_from_slice(b"SLUICER1");
        Bytes::from(payload)
    };
    let stored = journal_record(&t, 0, 2, &make_batch(3, -1, 0, now, Compression::None));
    let store = fx.store();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(store.put("data/1-0-stored.sobj", stored))
        .unwrap();
    let dir = jopts.journal.clone().unwrap();
    let (mut journal, _) = journal::Journal::open(&dir, journal::SEGMENT_BYTES).unwrap();
    journal.append(&[reference_v1("data/1-0-collected.sobj")]).unwrap();
    journal.append(&[reference_v1("data/1-0-stored.sobj")]).unwrap();
    drop(journal);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let log = fx.open(jopts).await;
        let t = log.topic("v").unwrap();
        assert_eq!(stored_watermark(&log, &t, 0).await, 5);
        assert_eq!(read_offsets(&log, &t, 0, 5).await, (0..5).collect::<Vec<_>>());
        let rows = log.meta().batches_from(t.id, 0, 2, 1).await.unwrap();
        assert_eq!(rows[0].object_key, "data/1-0-stored.sobj", "indexed where it is");
    });
}

#[test]
fn recovery_refuses_journal_records_that_do_not_follow_the_store() {
    let fx = Fixture::new();
    let jopts = journal_opts(&fx, Duration::from_secs(3600));
    let t = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let log = fx.open(jopts.clone()).await;
        let t = log.create_topic("g", Some(1), BTreeMap::new(), false).await.unwrap();
        log.append(&t, 0, make_batch(2, -1, 0, 0, Compression::None))
            .await
            .unwrap();
        t
    });
    let dir = jopts.journal.clone().unwrap();
    let open_error = || {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let meta = MetaStore::open(&fx.meta_url()).await.unwrap();
            format!("{:#}", Log::open(meta, fx.store(), jopts.clone()).await.err().unwrap())
        })
    };
    // Records are written in offset order, each only after the one before: one that
    // starts past the offsets before it means records are missing.
    let batch = make_batch(2, -1, 0, 0, Compression::None);
    let (mut journal, records) = journal::Journal::open(&dir, journal::SEGMENT_BYTES).unwrap();
    assert_eq!(records.len(), 1);
    let skipped = journal.append(&[journal_record(&t, 0, 10, &batch)]).unwrap();
    drop(journal);
    let error = open_error();
    assert!(error.contains("records are missing from the journal"), "{error}");
    // One that overlaps the one before it is refused too.
    std::fs::remove_file(dir.join(format!("{skipped:020}.jnl"))).unwrap();
    let (mut journal, _) = journal::Journal::open(&dir, journal::SEGMENT_BYTES).unwrap();
    journal.append(&[journal_record(&t, 0, 2, &batch)]).unwrap();
    journal.append(&[journal_record(&t, 0, 3, &batch)]).unwrap();
    drop(journal);
    let error = open_error();
    assert!(
        error.contains("does not follow the store: g-0 is at offset 4, the record at 3"),
        "{error}"
    );
}

#[test]
fn recovery_refuses_a_record_past_the_store_after_a_hole_in_the_journal() {
    let fx = Fixture::new();
    let jopts = journal_opts(&fx, Duration::from_secs(3600));
    let t = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let log = fx.open(jopts.clone()).await;
        log.create_topic("h", Some(1), BTreeMap::new(), false).await.unwrap()
    });
    // One record per segment, so that a whole one can go missing (a lost file), unlike
    // a direct flush that never committed, which leaves no hole in the sequence.
    let dir = jopts.journal.clone().unwrap();
    let (mut journal, _) = journal::Journal::open(&dir, 1).unwrap();
    let batch = make_batch(2, -1, 0, 0, Compression::None);
    journal.append(&[journal_record(&t, 0, 0, &batch)]).unwrap();
    let lost = journal.append(&[journal_record(&t, 0, 2, &batch)]).unwrap();
    journal.append(&[journal_record(&t, 0, 4, &batch)]).unwrap();
    drop(journal);
    std::fs::remove_file(dir.join(format!("{lost:020}.jnl"))).unwrap();
    let error = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let meta = MetaStore::open(&fx.meta_url()).await.unwrap();
        Log::open(meta, fx.store(), jopts).await.err().unwrap()
    });
    assert!(format!("{error:#}").contains("missing from the journal"), "{error:#}");
}

#[test]
fn after_a_failed_flush_the_journal_refuses_writes_until_a_restart_recovers_it() {
    let fx = Fixture::new();
    let jopts = journal_opts(&fx, Duration::from_secs(3600));
    let big = make_batch(60_000, -1, 0, 0, Compression::None);
    let data_dir = fx.dir.path().join("objects/data");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let log = fx.open(jopts.clone()).await;
        let cfg = BTreeMap::from([("max.message.bytes".to_string(), (8 << 20).to_string())]);
        let t = log.create_topic("f", Some(1), cfg, false).await.unwrap();
        log.append(&t, 0, make_batch(3, -1, 0, 0, Compression::None))
            .await
            .unwrap();
        assert_eq!(log.write_failure(), None);
        // A file where the store's data directory goes: the large flush's object write fails.
        std::fs::write(&data_dir, b"in the way").unwrap();
        let failed = log.append(&t, 0, big.clone()).await;
        assert!(matches!(failed, Err(LogError::Storage(_))), "{failed:?}");
        let reason = log.write_failure().expect("the failure is reported");
        assert!(reason.contains("data"), "{reason}");
        // Even a small append, which the journal alone could take, is refused now.
        let refused = log.append(&t, 0, make_batch(1, -1, 0, 0, Compression::None)).await;
        assert!(
            matches!(&refused, Err(LogError::Storage(m)) if m.contains("restart the broker")),
            "{refused:?}"
        );
        assert_eq!(t.partition(0).unwrap().offsets().high_watermark, 3);
    });
    // The restart recovers what was acknowledged, and writes go on after it.
    std::fs::remove_file(&data_dir).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let log = fx.open(jopts).await;
        assert_eq!(log.write_failure(), None);
        let t = log.topic("f").unwrap();
        assert_eq!(stored_watermark(&log, &t, 0).await, 3);
        let next = log.append(&t, 0, big).await.unwrap();
        assert_eq!(next.base_offset, 3);
        assert_eq!(read_offsets(&log, &t, 0, 60_003).await, (0..60_003).collect::<Vec<_>>());
    });
}

/// One batch of keyed records (None: no key, or a tombstone), timestamped `ts`.
fn keyed_batch(records: &[(Option<&str>, Option<&str>)], ts: i64, compression: Compression) -> Bytes {
    use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32 - 1,
            timestamp: ts,
            key: k.map(|k| Bytes::from(k.to_string())),
            value: v.map(|v| Bytes::from(v.to_string())),
            headers: Default::default(),
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf.freeze()
}

/// Every record of a partition: (offset, key, value), None for a tombstone.
async fn keyed_records(log: &Log, t: &Topic, p: i32) -> Vec<(i64, String, Option<String>)> {
    let end = t.partition(p).unwrap().offsets().high_watermark;
    let (mut out, mut at) = (vec![], t.partition(p).unwrap().offsets().log_start);
    while at < end {
        let r = log.read(t, p, at, 1 << 20).await.unwrap();
        assert!(!r.batches.is_empty(), "a read at {at} below {end} returned nothing");
        for b in &r.batches {
            let info = crate::batch::parse_header(b, 0).unwrap();
            for rec in crate::batch::decode_records(b).unwrap() {
                if rec.offset >= at && !info.is_control() {
                    let s = |b: Option<Bytes>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
                    out.push((rec.offset, s(rec.key).unwrap(), s(rec.value)));
                }
            }
            let base = i64::from_be_bytes(b[0..8].try_into().unwrap());
            at = at.max(base + info.last_offset_delta as i64 + 1);
        }
    }
    out
}

#[tokio::test]
async fn cleaning_keeps_the_newest_record_per_key_at_its_offset() {
    let fx = Fixture::new();
    let log = fx
        .open(LogOptions {
            tail_cache_bytes: 0,
            ..opts()
        })
        .await;
    let configs = BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.ms".to_string(), "1".to_string()),
    ]);
    let t = log.create_topic("c", Some(1), configs.clone(), false).await.unwrap();
    let ts = sluice_meta::now_ms() - 10_000;
    // Rounds 0-3 write k0..k4 (offsets 5r+i); k1's tombstone at 20; then one more batch.
    for round in 0..4 {
        let values: Vec<String> = (0..5).map(|i| format!("v{round}-{i}")).collect();
        let keys: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
        let recs: Vec<_> = keys
            .iter()
            .zip(&values)
            .map(|(k, v)| (Some(k.as_str()), Some(v.as_str())))
            .collect();
        let codec = if round % 2 == 0 {
            Compression::None
        } else {
            Compression::Zstd
        };
        log.append(&t, 0, keyed_batch(&recs, ts + round, codec)).await.unwrap();
    }
    log.append(&t, 0, keyed_batch(&[(Some("k1"), None)], ts + 10, Compression::None))
        .await
        .unwrap();
    log.append(
        &t,
        0,
        keyed_batch(&[(Some("k2"), Some("last"))], ts + 11, Compression::None),
    )
    .await
    .unwrap();
    // A compacted topic refuses records without keys, and stores nothing of the batch.
    let keyless = keyed_batch(&[(Some("k3"), Some("x")), (None, Some("y"))], ts, Compression::Lz4);
    assert!(matches!(
        log.append(&t, 0, keyless).await,
        Err(LogError::KeylessRecords(indices)) if indices == [1]
    ));
    assert_eq!(keyed_records(&log, &t, 0).await.len(), 22);

    let report = log.clean().await.unwrap();
    assert_eq!((report.partitions, report.records_removed), (1, 16));
    let expected = vec![
        (15, "k0".to_string(), Some("v3-0".to_string())),
        (17, "k2".into(), Some("v3-2".into())),
        (18, "k3".into(), Some("v3-3".into())),
        (19, "k4".into(), Some("v3-4".into())),
        (20, "k1".into(), None),
        // The log's last batch is never cleaned.
        (21, "k2".into(), Some("last".into())),
    ];
    assert_eq!(keyed_records(&log, &t, 0).await, expected);
    assert_eq!(t.partition(0).unwrap().offsets().high_watermark, 22);
    // Nothing is dirty now: a second pass changes nothing.
    assert_eq!(log.clean().await.unwrap().records_removed, 0);
    // The old objects are unreferenced, and collected.
    log.enforce_retention().await.unwrap();

    // Once its batch is delete.retention.ms old, the tombstone goes too; the next append
    // makes the batch at 21 cleanable, which removes the older k2 (k4 at 22 is the last
    // batch: not yet cleanable, so the k4 at 19 stays).
    let mut c = configs.clone();
    c.insert("delete.retention.ms".into(), "1000".into());
    c.insert("min.cleanable.dirty.ratio".into(), "0.1".into());
    log.set_topic_configs("c", c, false).await.unwrap();
    log.append(
        &t,
        0,
        keyed_batch(&[(Some("k4"), Some("newest"))], ts + 12, Compression::Gzip),
    )
    .await
    .unwrap();
    assert_eq!(log.clean().await.unwrap().records_removed, 2);
    let expected = vec![
        (15, "k0".to_string(), Some("v3-0".to_string())),
        (18, "k3".into(), Some("v3-3".into())),
        (19, "k4".into(), Some("v3-4".into())),
        (21, "k2".into(), Some("last".into())),
        (22, "k4".into(), Some("newest".into())),
    ];
    assert_eq!(keyed_records(&log, &t, 0).await, expected);
    drop(log);

    // A restart reads the compacted log from the index; reads inside a gap skip it.
    let log = fx.open(opts()).await;
    let t = log.topic("c").unwrap();
    assert_eq!(keyed_records(&log, &t, 0).await, expected);
    let r = log.read(&t, 0, 16, 1 << 20).await.unwrap();
    let offsets: Vec<i64> = crate::batch::decode_records(&r.batches[0])
        .unwrap()
        .iter()
        .map(|r| r.offset)
        .collect();
    assert_eq!(offsets, vec![15, 18, 19]);
    let r = log.read(&t, 0, 20, 1 << 20).await.unwrap();
    assert_eq!(i64::from_be_bytes(r.batches[0][0..8].try_into().unwrap()), 21);
}

#[tokio::test]
async fn cleaning_in_several_passes_when_the_key_map_is_small() {
    let fx = Fixture::new();
    // Room for about 4 keys: each pass maps one batch of 3.
    let log = fx
        .open(LogOptions {
            tail_cache_bytes: 0,
            compaction_memory: 4 * 64,
            ..opts()
        })
        .await;
    let configs = BTreeMap::from([
        ("cleanup.policy".to_string(), "compact,delete".to_string()),
        ("segment.ms".to_string(), "1".to_string()),
        ("min.cleanable.dirty.ratio".to_string(), "0".to_string()),
    ]);
    let t = log.create_topic("c", Some(1), configs, false).await.unwrap();
    let ts = sluice_meta::now_ms() - 10_000;
    for round in 0..5 {
        let v = format!("r{round}");
        let recs = [
            (Some("a"), Some(v.as_str())),
            (Some("b"), Some(v.as_str())),
            (Some("c"), Some(v.as_str())),
        ];
        log.append(&t, 0, keyed_batch(&recs, ts + round, Compression::Snappy))
            .await
            .unwrap();
    }
    let mut passes = 0;
    while log.clean().await.unwrap().partitions > 0 {
        passes += 1;
        assert!(passes < 10);
    }
    assert!(passes >= 2, "{passes} passes");
    let got: Vec<(i64, String)> = keyed_records(&log, &t, 0)
        .await
        .into_iter()
        .map(|(o, k, v)| (o, format!("{k}={}", v.unwrap())))
        .collect();
    let want: Vec<(i64, String)> = vec![
        (9, "a=r3".into()),
        (10, "b=r3".into()),
        (11, "c=r3".into()),
        (12, "a=r4".into()),
        (13, "b=r4".into()),
        (14, "c=r4".into()),
    ];
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_read_inside_a_cleaned_gap_goes_on_to_the_tail_cache() {
    let fx = Fixture::new();
    let log = fx.open(opts()).await;
    let configs = BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.ms".to_string(), "1".to_string()),
        ("delete.retention.ms".to_string(), "0".to_string()),
    ]);
    let t = log.create_topic("c", Some(1), configs, false).await.unwrap();
    let ts = sluice_meta::now_ms() - 10_000;
    for (k, v) in [("a", Some("1")), ("a", None), ("b", Some("2"))] {
        log.append(&t, 0, keyed_batch(&[(Some(k), v)], ts, Compression::None))
            .await
            .unwrap();
    }
    // The value and its (expired) tombstone go; the last batch is still in the tail cache.
    assert_eq!(log.clean().await.unwrap().records_removed, 2);
    let r = log.read(&t, 0, 0, 1 << 20).await.unwrap();
    assert_eq!(r.batches.len(), 1);
    assert_eq!(i64::from_be_bytes(r.batches[0][0..8].try_into().unwrap()), 2);
    assert_eq!(
        keyed_records(&log, &t, 0).await,
        vec![(2, "b".to_string(), Some("2".to_string()))]
    );
}
