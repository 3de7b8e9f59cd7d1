use std::collections::BTreeMap;

use super::*;
use crate::dialect::ROWS_PER_STATEMENT;

/// A fresh store: SQLite in a temp dir, or a fresh database on the
/// PostgreSQL server at `SLUICE_TEST_POSTGRES` (e.g. postgres://postgres@127.0.0.1:5432).
pub(crate) async fn store() -> (tempfile::TempDir, MetaStore) {
    let dir = tempfile::tempdir().unwrap();
    let url = match std::env::var("SLUICE_TEST_POSTGRES") {
        Ok(server) => {
            let admin = MetaStore::open(&format!("{server}/postgres")).await.unwrap();
            let db = format!("t{}", Uuid::new_v4().simple());
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(admin.pool())
                .await
                .unwrap();
            format!("{server}/{db}")
        }
        Err(_) => format!("sqlite://{}/meta.db", dir.path().display()),
    };
    let m = MetaStore::open(&url).await.unwrap();
    (dir, m)
}

fn batch(t: Uuid, p: i32, base: i64, last: i64, key: &str) -> BatchRow {
    BatchRow {
        topic_id: t,
        partition: p,
        base_offset: base,
        last_offset: last,
        max_timestamp: 1000 + base,
        object_key: key.into(),
        position: 0,
        length: 100,
    }
}

/// Producer 42's state (epoch 3, no batches yet) in partition `p`.
fn producer(t: Uuid, p: i32) -> ProducerStateRow {
    ProducerStateRow {
        topic_id: t,
        partition: p,
        producer_id: 42,
        epoch: 3,
        recent: vec![],
        txn_first_offset: -1,
    }
}

/// A flush of `batches`, all in partition `p` and in object `key`, that moves the
/// partition's high watermark to `high_watermark` under leader epoch 0.
fn partition_commit(t: Uuid, p: i32, key: &str, batches: Vec<BatchRow>, high_watermark: i64) -> FlushCommit {
    FlushCommit {
        objects: vec![(key.into(), batches.iter().map(|b| i64::from(b.length)).sum())],
        batches,
        watermarks: vec![WatermarkUpdate {
            topic_id: t,
            partition: p,
            high_watermark,
            leader_epoch: 0,
        }],
        producers: vec![],
        aborted: vec![],
    }
}

#[tokio::test]
async fn batches_from_finds_the_batch_holding_an_offset_wherever_it_falls() {
    let (_d, m) = store().await;
    let t = m.create_topic("b", 1, &BTreeMap::new(), &[]).await.unwrap().unwrap();
    // Batches [10..19], [20..29], a gap (records removed by retention or never there), [40..49].
    let batches = vec![
        batch(t.id, 0, 10, 19, "o"),
        batch(t.id, 0, 20, 29, "o"),
        batch(t.id, 0, 40, 49, "o"),
    ];
    let commit = partition_commit(t.id, 0, "o", batches, 50);
    m.commit_flush(&commit).await.unwrap();
    let bases = |offset: i64, limit: i64| {
        let m = m.clone();
        async move {
            let rows = m.batches_from(t.id, 0, offset, limit).await.unwrap();
            rows.iter().map(|r| r.base_offset).collect::<Vec<_>>()
        }
    };
    assert_eq!(bases(0, 10).await, [10, 20, 40], "before the first batch");
    assert_eq!(bases(10, 10).await, [10, 20, 40], "at a batch's first offset");
    assert_eq!(bases(25, 10).await, [20, 40], "inside a batch");
    assert_eq!(bases(29, 1).await, [20], "at a batch's last offset");
    assert_eq!(bases(33, 10).await, [40], "in a gap");
    assert_eq!(bases(49, 10).await, [40]);
    assert!(bases(50, 10).await.is_empty(), "past the end");
}

#[tokio::test]
async fn topic_lifecycle_and_index() {
    let (_d, m) = store().await;
    let t = m.create_topic("a", 2, &BTreeMap::new(), &[7]).await.unwrap().unwrap();
    assert!(m.create_topic("a", 1, &BTreeMap::new(), &[]).await.unwrap().is_none());
    let commit = FlushCommit {
        objects: vec![("o1".into(), 200)],
        batches: vec![batch(t.id, 0, 0, 9, "o1"), batch(t.id, 1, 0, 4, "o1")],
        watermarks: vec![
            WatermarkUpdate {
                topic_id: t.id,
                partition: 0,
                high_watermark: 10,
                leader_epoch: 0,
            },
            WatermarkUpdate {
                topic_id: t.id,
                partition: 1,
                high_watermark: 5,
                leader_epoch: 7,
            },
        ],
        producers: [0, 1].map(|p| producer(t.id, p)).to_vec(),
        aborted: vec![],
    };
    // Partition 1 is fenced by its epoch: its batch must not be indexed.
    assert_eq!(m.commit_flush(&commit).await.unwrap(), vec![true, false]);
    assert_eq!(m.batches_from(t.id, 0, 5, 10).await.unwrap().len(), 1);
    assert!(m.batches_from(t.id, 1, 0, 10).await.unwrap().is_empty());
    let producers = m.load_producer_states().await.unwrap();
    assert_eq!(
        producers.iter().map(|p| p.partition).collect::<Vec<_>>(),
        [0],
        "fenced producer state"
    );
    let parts = m.list_partitions().await.unwrap();
    let p0 = parts.iter().find(|p| p.partition == 0).unwrap();
    assert_eq!((p0.high_watermark, p0.leader), (10, 7));
    assert_eq!(m.get_partition(t.id, 1).await.unwrap().unwrap().high_watermark, 0);

    m.advance_log_start(t.id, 0, 10).await.unwrap();
    assert!(m.batches_from(t.id, 0, 0, 10).await.unwrap().is_empty());
    assert_eq!(
        m.unreferenced_objects(now_ms() + 1).await.unwrap(),
        vec!["o1".to_string()]
    );

    m.add_partitions(t.id, 4, &[]).await.unwrap();
    assert_eq!(m.list_partitions().await.unwrap().len(), 4);
    assert!(m.delete_topic(t.id).await.unwrap());
    assert!(m.list_topics().await.unwrap().is_empty());
    assert!(m.list_partitions().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_commit_leaves_nothing_and_the_next_one_lands() {
    let (_d, m) = store().await;
    let t = m.create_topic("a", 1, &BTreeMap::new(), &[1]).await.unwrap().unwrap();
    let first = partition_commit(t.id, 0, "o1", vec![batch(t.id, 0, 0, 4, "o1")], 5);
    assert_eq!(m.commit_flush(&first).await.unwrap(), [true]);
    // The second batch repeats an indexed offset: the whole commit must fail, after
    // its object row was inserted in the same transaction.
    let clash = partition_commit(
        t.id,
        0,
        "o2",
        vec![batch(t.id, 0, 5, 9, "o2"), batch(t.id, 0, 0, 4, "o2")],
        10,
    );
    assert!(m.commit_flush(&clash).await.is_err());
    assert_eq!(m.get_partition(t.id, 0).await.unwrap().unwrap().high_watermark, 5);
    assert_eq!(m.batches_from(t.id, 0, 0, 10).await.unwrap().len(), 1);
    // A row left from the failed transaction would make this insert of o2 fail, or
    // a transaction left open would swallow the writes below.
    let retry = partition_commit(t.id, 0, "o2", vec![batch(t.id, 0, 5, 9, "o2")], 10);
    assert_eq!(m.commit_flush(&retry).await.unwrap(), [true]);
    m.set_topic_configs(t.id, &BTreeMap::from([("retention.ms".to_string(), "5".to_string())]))
        .await
        .unwrap();
    // Reads use other connections, so they see only what was committed.
    assert_eq!(m.get_partition(t.id, 0).await.unwrap().unwrap().high_watermark, 10);
    assert_eq!(m.batches_from(t.id, 0, 0, 10).await.unwrap().len(), 2);
    assert_eq!(m.list_topics().await.unwrap()[0].configs["retention.ms"], "5");
}

#[tokio::test]
async fn a_flush_over_more_partitions_than_one_statement_holds_commits_whole() {
    let (_d, m) = store().await;
    let n = ROWS_PER_STATEMENT as i32 * 2 + 7;
    let t = m
        .create_topic("wide", n, &BTreeMap::new(), &[1])
        .await
        .unwrap()
        .unwrap();
    let commit = FlushCommit {
        objects: vec![("o1".into(), 100 * n as i64)],
        batches: (0..n).map(|p| batch(t.id, p, 0, p as i64, "o1")).collect(),
        watermarks: (0..n)
            .map(|p| WatermarkUpdate {
                topic_id: t.id,
                partition: p,
                high_watermark: p as i64 + 1,
                leader_epoch: 0,
            })
            .collect(),
        producers: (0..n).map(|p| producer(t.id, p)).collect(),
        aborted: vec![],
    };
    assert_eq!(m.commit_flush(&commit).await.unwrap(), vec![true; n as usize]);
    let parts = m.list_partitions().await.unwrap();
    assert!(parts.iter().all(|p| p.high_watermark == p.partition as i64 + 1));
    assert_eq!(
        m.batches_from(t.id, n - 1, 0, 10).await.unwrap()[0].last_offset,
        n as i64 - 1
    );
    assert_eq!(m.load_producer_states().await.unwrap().len(), n as usize);
    // Committing the same watermarks again is allowed (never backwards); a lower one is not applied.
    let mut again = commit.clone();
    again.objects = vec![("o2".into(), 1)];
    again.batches.clear();
    again.watermarks[5].high_watermark = 1;
    let applied = m.commit_flush(&again).await.unwrap();
    assert_eq!(applied.iter().filter(|a| !**a).count(), 1);
    assert!(!applied[5]);
}

/// Every kind of write at once, as a busy broker does: all land, and none waits
/// forever (on SQLite they share one writer connection; a write that held it
/// while asking for another would hang here).
#[tokio::test]
async fn concurrent_writes_of_every_kind_all_land() {
    let (_d, m) = store().await;
    let t = m
        .create_topic("busy", 4, &BTreeMap::new(), &[0])
        .await
        .unwrap()
        .unwrap();
    const N: i64 = 40;
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..4 {
        let m = m.clone();
        tasks.spawn(async move {
            for i in 0..N {
                let key = format!("o-{p}-{i}");
                let commit = partition_commit(t.id, p, &key, vec![batch(t.id, p, i, i, &key)], i + 1);
                assert_eq!(m.commit_flush(&commit).await.unwrap(), vec![true]);
            }
        });
    }
    let offsets = m.clone();
    tasks.spawn(async move {
        for i in 0..N {
            let o = CommittedOffset {
                topic: "busy".into(),
                partition: 0,
                offset: i,
                leader_epoch: 0,
                metadata: None,
                commit_ms: now_ms(),
            };
            offsets.commit_offsets("g", &[o]).await.unwrap();
        }
    });
    let leases = m.clone();
    tasks.spawn(async move {
        for _ in 0..N {
            assert!(leases.acquire_lease("busy-lease", 7, 10_000).await.unwrap().is_some());
        }
    });
    let configs = m.clone();
    tasks.spawn(async move {
        for i in 0..N {
            let c = BTreeMap::from([("retention.ms".to_string(), i.to_string())]);
            configs.set_topic_configs(t.id, &c).await.unwrap();
        }
    });
    tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    })
    .await
    .expect("concurrent writes finished");
    for p in m.list_topic_partitions(t.id).await.unwrap() {
        assert_eq!(p.high_watermark, N, "partition {}", p.partition);
        let rows = m.batches_from(t.id, p.partition, 0, 100).await.unwrap();
        let offsets: Vec<i64> = rows.iter().map(|r| r.base_offset).collect();
        assert_eq!(offsets, (0..N).collect::<Vec<_>>());
    }
    assert_eq!(m.fetch_offsets("g").await.unwrap()[0].offset, N - 1);
    assert_eq!(m.get_lease("busy-lease").await.unwrap().unwrap().holder, 7);
    let topic = m
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .find(|x| x.id == t.id)
        .unwrap();
    assert_eq!(topic.configs.get("retention.ms").map(String::as_str), Some("39"));
}

#[tokio::test]
async fn size_retention_drops_the_oldest_batches_while_the_newer_ones_still_meet_the_limit() {
    let (_d, m) = store().await;
    let t = m.create_topic("s", 1, &BTreeMap::new(), &[]).await.unwrap().unwrap();
    // Four batches of 10 offsets, oldest first: 100, 50, 100 and 10 bytes.
    let batches: Vec<BatchRow> = [100, 50, 100, 10]
        .iter()
        .enumerate()
        .map(|(i, len)| BatchRow {
            length: *len,
            ..batch(t.id, 0, i as i64 * 10, i as i64 * 10 + 9, "o")
        })
        .collect();
    m.commit_flush(&partition_commit(t.id, 0, "o", batches, 40))
        .await
        .unwrap();
    let start = |limit: i64| {
        let m = m.clone();
        async move { m.size_retention_start(t.id, 0, limit).await.unwrap() }
    };
    // Newer bytes after each batch: 160, 110, 10, none.
    assert_eq!(start(110).await, Some(20));
    assert_eq!(start(111).await, Some(10));
    assert_eq!(start(160).await, Some(10));
    assert_eq!(start(161).await, None);
    assert_eq!(start(0).await, Some(30), "the newest batch always stays");
    assert_eq!(m.size_retention_start(t.id, 1, 0).await.unwrap(), None);
}

#[tokio::test]
async fn group_offsets_round_trip_and_expire() {
    let (_d, m) = store().await;
    let o = |p: i32, off: i64, ms: i64| CommittedOffset {
        topic: "t".into(),
        partition: p,
        offset: off,
        leader_epoch: -1,
        metadata: Some("m".into()),
        commit_ms: ms,
    };
    m.commit_offsets("g", &[o(0, 5, 100), o(1, 7, 100)]).await.unwrap();
    m.commit_offsets("g", &[o(0, 6, 200)]).await.unwrap();
    assert_eq!(m.fetch_offsets("g").await.unwrap(), vec![o(0, 6, 200), o(1, 7, 100)]);
    // The group has members (not empty): nothing expires.
    m.upsert_group(&GroupRow {
        group_id: "g".into(),
        protocol_type: "consumer".into(),
        generation: 1,
        empty_since_ms: None,
        members: None,
    })
    .await
    .unwrap();
    assert!(m.expire_offsets(1000).await.unwrap().is_empty());
    m.upsert_group(&GroupRow {
        group_id: "g".into(),
        protocol_type: "consumer".into(),
        generation: 2,
        empty_since_ms: Some(150),
        members: None,
    })
    .await
    .unwrap();
    assert_eq!(m.expire_offsets(1000).await.unwrap(), vec!["g".to_string()]);
    assert!(m.fetch_offsets("g").await.unwrap().is_empty());
    assert_eq!(m.list_groups().await.unwrap().len(), 1);
    assert!(m.delete_group("g").await.unwrap());
    assert!(m.list_groups().await.unwrap().is_empty());
}

#[tokio::test]
async fn producer_ids_are_unique_and_state_round_trips() {
    let (_d, m) = store().await;
    let a = m.next_producer_id().await.unwrap();
    let b = m.next_producer_id().await.unwrap();
    assert_ne!(a, b);
    let t = m.create_topic("p", 1, &BTreeMap::new(), &[]).await.unwrap().unwrap();
    let state = ProducerStateRow {
        topic_id: t.id,
        partition: 0,
        producer_id: a,
        epoch: 3,
        recent: vec![SeqEntry {
            first_seq: 0,
            last_seq: 4,
            base_offset: 0,
            last_offset: 4,
        }],
        txn_first_offset: -1,
    };
    let commit = FlushCommit {
        objects: vec![("o".into(), 1)],
        batches: vec![],
        watermarks: vec![WatermarkUpdate {
            topic_id: t.id,
            partition: 0,
            high_watermark: 5,
            leader_epoch: 0,
        }],
        producers: vec![state.clone()],
        aborted: vec![],
    };
    m.commit_flush(&commit).await.unwrap();
    assert_eq!(m.load_producer_states().await.unwrap(), vec![state]);
    assert!(!m.cluster_id().await.unwrap().is_empty());
    assert_eq!(m.cluster_id().await.unwrap(), m.cluster_id().await.unwrap());
}
