//! KIP-848 reconciliation scenarios.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sluice_meta::MetaStore;
use uuid::Uuid;

use super::*;
use crate::{Coordinator, GroupOptions};

async fn coordinator() -> (tempfile::TempDir, Coordinator) {
    let dir = tempfile::tempdir().unwrap();
    let meta = MetaStore::open(&format!("sqlite://{}/m.db", dir.path().display()))
        .await
        .unwrap();
    let opts = GroupOptions {
        consumer_session_timeout: Duration::from_millis(400),
        ..GroupOptions::default()
    };
    (dir, Coordinator::start(meta, opts))
}

fn topics(n: i32) -> (Uuid, TopicInfo) {
    let id = Uuid::from_u128(7);
    (
        id,
        BTreeMap::from([
            ("t".to_string(), (id, n)),
            ("other".to_string(), (Uuid::from_u128(8), 3)),
        ]),
    )
}

fn hb(member: &str, epoch: i32, owned: Option<Partitions>) -> HeartbeatRequest {
    HeartbeatRequest {
        group_id: "g".into(),
        member_id: member.into(),
        member_epoch: epoch,
        instance_id: None,
        rack_id: None,
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
        rebalance_timeout_ms: 30000,
        subscribed_topic_names: if epoch == 0 { Some(vec!["t".into()]) } else { None },
        subscribed_topic_regex: None,
        server_assignor: None,
        owned,
    }
}

#[tokio::test]
async fn two_members_share_after_revocation() {
    let (_d, c) = coordinator().await;
    let (id, all) = topics(6);
    let a = c
        .consumer_heartbeat(hb("a", 0, Some(Partitions::new())), &all)
        .await
        .unwrap();
    assert_eq!(a.member_epoch, 1);
    let a_owned = a.assignment.clone().unwrap();
    assert_eq!(a_owned[&id], (0..6).collect::<BTreeSet<_>>());

    // b joins: the target splits 3/3, but b gets nothing until a revokes.
    let b = c
        .consumer_heartbeat(hb("b", 0, Some(Partitions::new())), &all)
        .await
        .unwrap();
    assert_eq!(b.member_epoch, 2);
    assert_eq!(count(&b.assignment.clone().unwrap()), 0);
    // a is told to keep only its half, still at epoch 1.
    let a2 = c.consumer_heartbeat(hb("a", 1, None), &all).await.unwrap();
    assert_eq!(a2.member_epoch, 1);
    let keep = a2.assignment.clone().unwrap();
    assert_eq!(count(&keep), 3);
    // a reports the revocation done: it advances to epoch 2.
    let a3 = c
        .consumer_heartbeat(hb("a", 1, Some(keep.clone())), &all)
        .await
        .unwrap();
    assert_eq!(a3.member_epoch, 2);
    // b now receives the released half, disjoint from a's.
    let b2 = c.consumer_heartbeat(hb("b", 2, None), &all).await.unwrap();
    let b_owned = b2.assignment.unwrap();
    assert_eq!(count(&b_owned), 3);
    assert!(b_owned[&id].is_disjoint(&keep[&id]));
    let d = c.describe_consumer_group("g").unwrap();
    assert_eq!((d.state, d.group_epoch, d.members.len()), ("Stable", 2, 2));
}

#[tokio::test]
async fn fencing_leaving_and_expiry() {
    let (_d, c) = coordinator().await;
    let (_, all) = topics(4);
    c.consumer_heartbeat(hb("a", 0, Some(Partitions::new())), &all)
        .await
        .unwrap();
    assert_eq!(
        c.consumer_heartbeat(hb("a", 5, None), &all).await,
        Err(HeartbeatError::FencedMemberEpoch)
    );
    assert_eq!(
        c.consumer_heartbeat(hb("zz", 3, None), &all).await,
        Err(HeartbeatError::UnknownMemberId)
    );
    let mut bad = hb("q", 0, Some(Partitions::new()));
    bad.server_assignor = Some("sticky-magic".into());
    assert_eq!(
        c.consumer_heartbeat(bad, &all).await,
        Err(HeartbeatError::UnsupportedAssignor)
    );

    c.consumer_heartbeat(hb("b", 0, Some(Partitions::new())), &all)
        .await
        .unwrap();
    let left = c.consumer_heartbeat(hb("b", -1, None), &all).await.unwrap();
    assert_eq!(left.member_epoch, -1);
    assert_eq!(c.describe_consumer_group("g").unwrap().members.len(), 1);
    // a stops heartbeating: after the session timeout the group is empty.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let d = c.describe_consumer_group("g").unwrap();
    assert_eq!((d.state, d.members.len()), ("Empty", 0));
}

#[tokio::test]
async fn range_assignor_and_new_partitions() {
    let (_d, c) = coordinator().await;
    let (id, all) = topics(4);
    let mut first = hb("a", 0, Some(Partitions::new()));
    first.server_assignor = Some("range".into());
    let a = c.consumer_heartbeat(first, &all).await.unwrap();
    assert_eq!(a.assignment.unwrap()[&id].len(), 4);
    // The topic grows: the next heartbeat bumps the epoch and hands out the new partitions.
    let (_, grown) = topics(6);
    let a2 = c.consumer_heartbeat(hb("a", 1, None), &grown).await.unwrap();
    assert_eq!(a2.member_epoch, 2);
    assert_eq!(a2.assignment.unwrap()[&id], (0..6).collect::<BTreeSet<_>>());
    assert_eq!(c.describe_consumer_group("g").unwrap().assignor, "range");
}
