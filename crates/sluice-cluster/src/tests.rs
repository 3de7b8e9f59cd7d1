//! Two brokers in one process sharing a SQLite store and a local object store:
//! leadership spreads when the second joins, and a graceful leave hands every
//! partition and group shard over with nothing acknowledged lost.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use sluice_log::{DataStore, LogOptions};

use super::*;

fn batch(value: &str) -> Bytes {
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: 0,
        timestamp: 1,
        key: None,
        value: Some(Bytes::from(value.to_string())),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    let opts = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &[record], &opts).unwrap();
    buf.freeze()
}

struct Node {
    log: Log,
    cluster: Cluster,
}

async fn node(dir: &std::path::Path, id: i32) -> Node {
    let meta = MetaStore::open(&format!("sqlite://{}/meta.db", dir.display()))
        .await
        .unwrap();
    let store = DataStore::open(&format!("file://{}/objects", dir.display())).unwrap();
    let log = Log::open(
        meta.clone(),
        store,
        LogOptions {
            node_id: id,
            ..LogOptions::default()
        },
    )
    .await
    .unwrap();
    let groups = Coordinator::start(meta.clone(), Default::default());
    let opts = ClusterOptions {
        node_id: id,
        port: 9000 + id,
        lease: Duration::from_millis(600),
        poll_interval: Duration::from_millis(30),
        handoff_timeout: Duration::from_secs(2),
        drain_timeout: Duration::from_secs(10),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(meta, log.clone(), groups, opts).await.unwrap();
    Node { log, cluster }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..300 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn led(n: &Node) -> usize {
    n.log.led_partitions().len()
}

async fn values(log: &Log, topic: &str, partition: i32) -> Vec<String> {
    let t = log.topic(topic).unwrap();
    let r = log.read(&t, partition, 0, 1 << 20).await.unwrap();
    let mut out = vec![];
    for b in r.batches {
        let mut buf = b.clone();
        for set in RecordBatchDecoder::decode_all(&mut buf).unwrap() {
            out.extend(
                set.records
                    .into_iter()
                    .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap()),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_spread_to_a_new_broker_and_come_back_on_leave() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), 1).await;
    let t = a.log.create_topic("t", Some(4), BTreeMap::new(), false).await.unwrap();
    assert_eq!(led(&a), 4, "a lone broker leads every new partition");
    for p in 0..4 {
        a.log.append(&t, p, batch(&format!("a{p}"))).await.unwrap();
    }

    let b = node(dir.path(), 2).await;
    wait_for("an even split", || led(&a) == 2 && led(&b) == 2).await;
    let shards = |n: &Node| n.cluster.inner.groups.owned_shards().unwrap().len() as i32;
    wait_for("group shards split", || {
        shards(&a) + shards(&b) == GROUP_SHARDS_FOR_TEST && shards(&b) > 0
    })
    .await;

    // Each partition keeps its data and takes appends on whichever broker leads it now.
    for p in 0..4 {
        let (owner, other) = if b.log.topic("t").unwrap().partition(p).unwrap().is_led() {
            (&b, &a)
        } else {
            (&a, &b)
        };
        let t = owner.log.topic("t").unwrap();
        let other_t = other.log.topic("t").unwrap();
        assert_eq!(
            other.log.append(&other_t, p, batch("x")).await,
            Err(sluice_log::LogError::NotLeader)
        );
        let appended = owner.log.append(&t, p, batch(&format!("b{p}"))).await.unwrap();
        assert_eq!(appended.base_offset, 1);
        assert_eq!(values(&owner.log, "t", p).await, vec![format!("a{p}"), format!("b{p}")]);
    }
    let view = a.cluster.view();
    assert_eq!(view.brokers.iter().filter(|b| b.alive).count(), 2);

    // A graceful leave hands everything to the broker that stays.
    a.cluster.shutdown().await.unwrap();
    wait_for("b leads all", || led(&b) == 4).await;
    assert_eq!(led(&a), 0);
    for p in 0..4 {
        let t = b.log.topic("t").unwrap();
        assert_eq!(b.log.append(&t, p, batch("c")).await.unwrap().base_offset, 2);
        assert_eq!(
            values(&b.log, "t", p).await,
            vec![format!("a{p}"), format!("b{p}"), "c".into()]
        );
    }
    // The leaver gave up the controller lease; the next round makes b controller.
    let mut status = b.cluster.status().await.unwrap();
    for _ in 0..100 {
        if status.controller == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = b.cluster.status().await.unwrap();
    }
    assert_eq!(status.controller, Some(2));
    assert_eq!(status.brokers.iter().map(|b| b.node_id).collect::<Vec<_>>(), vec![2]);
    assert_eq!(status.brokers[0].partitions, 4);
}

const GROUP_SHARDS_FOR_TEST: i32 = sluice_meta::GROUP_SHARDS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stops_renewing_is_replaced_and_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), 1).await;
    let t = a.log.create_topic("f", Some(2), BTreeMap::new(), false).await.unwrap();
    a.log.append(&t, 0, batch("one")).await.unwrap();
    let b = node(dir.path(), 2).await;
    wait_for("an even split", || led(&a) == 1 && led(&b) == 1).await;
    // Freeze a's lease as if the process were paused: its row expires, b takes over.
    a.cluster.inner.stopping.store(true, Ordering::Relaxed);
    wait_for("b leads both", || led(&b) == 2).await;
    let (ta, tb) = (a.log.topic("f").unwrap(), b.log.topic("f").unwrap());
    // Whatever a still believes, the store fences its epoch: nothing it writes counts.
    let late = a.log.append(&ta, 0, batch("late")).await;
    let late1 = a.log.append(&ta, 1, batch("late")).await;
    assert!(late.is_err() && late1.is_err(), "{late:?} {late1:?}");
    b.log.append(&tb, 0, batch("two")).await.unwrap();
    assert_eq!(values(&b.log, "f", 0).await, vec!["one".to_string(), "two".into()]);
}
