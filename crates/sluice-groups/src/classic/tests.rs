//! Group protocol scenarios against a real SQLite metadata store.

use std::time::Duration;

use bytes::Bytes;
use sluice_meta::MetaStore;

use crate::*;

async fn coordinator() -> (tempfile::TempDir, Coordinator) {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator_in(&dir).await;
    (dir, c)
}

async fn coordinator_in(dir: &tempfile::TempDir) -> Coordinator {
    let meta = MetaStore::open(&format!("sqlite://{}/m.db", dir.path().display()))
        .await
        .unwrap();
    let opts = GroupOptions {
        min_session_timeout: Duration::from_millis(100),
        initial_rebalance_delay: Duration::ZERO,
        ..GroupOptions::default()
    };
    let c = Coordinator::start(meta, opts);
    c.load().await.unwrap();
    c
}

fn join(group: &str, member: &str, instance: Option<&str>, protos: &[&str]) -> JoinRequest {
    JoinRequest {
        group_id: group.into(),
        member_id: member.into(),
        instance_id: instance.map(String::from),
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: 300,
        rebalance_timeout_ms: 2000,
        protocol_type: "consumer".into(),
        protocols: protos
            .iter()
            .map(|p| (p.to_string(), Bytes::from(format!("meta-{p}"))))
            .collect(),
        require_known_member_id: true,
    }
}

fn sync(group: &str, gen: i32, member: &str, assignments: Vec<(String, Bytes)>) -> SyncRequest {
    SyncRequest {
        group_id: group.into(),
        generation: gen,
        member_id: member.into(),
        instance_id: None,
        protocol_type: None,
        protocol_name: None,
        assignments,
    }
}

/// KIP-394: first join gets MEMBER_ID_REQUIRED and an id, the second joins.
async fn join_new(c: &Coordinator, group: &str) -> JoinResponse {
    let first = c.join(join(group, "", None, &["range"])).await;
    assert_eq!(first.error, Some(GroupError::MemberIdRequired));
    c.join(join(group, &first.member_id, None, &["range"])).await
}

#[tokio::test]
async fn two_members_rebalance_and_sync() {
    let (_d, c) = coordinator().await;
    let a = join_new(&c, "g").await;
    assert_eq!(
        (a.error, a.generation, a.leader.clone()),
        (None, 1, a.member_id.clone())
    );
    assert_eq!(a.members.len(), 1);
    let s = c
        .sync(sync(
            "g",
            1,
            &a.member_id,
            vec![(a.member_id.clone(), Bytes::from_static(b"p0,p1"))],
        ))
        .await;
    assert_eq!(s.unwrap().2, Bytes::from_static(b"p0,p1"));
    assert_eq!(c.describe("g").unwrap().state, "Stable");

    // A second member triggers a rebalance; the first learns of it by heartbeat and rejoins.
    let c2 = c.clone();
    let b = tokio::spawn(async move { join_new(&c2, "g").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        c.heartbeat("g", 1, &a.member_id, None),
        Err(GroupError::RebalanceInProgress)
    );
    let a2 = c.join(join("g", &a.member_id, None, &["range"])).await;
    let b = b.await.unwrap();
    assert_eq!((a2.generation, b.generation), (2, 2));
    assert_eq!(a2.leader, a.member_id);
    assert_eq!(a2.members.len(), 2);
    assert!(b.members.is_empty());
    assert_eq!(a2.protocol_name.as_deref(), Some("range"));

    // The follower's sync waits for the leader's.
    let c3 = c.clone();
    let bid = b.member_id.clone();
    let follower = tokio::spawn(async move { c3.sync(sync("g", 2, &bid, vec![])).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let assignment = vec![
        (a.member_id.clone(), Bytes::from_static(b"A")),
        (b.member_id.clone(), Bytes::from_static(b"B")),
    ];
    assert_eq!(
        c.sync(sync("g", 2, &a.member_id, assignment)).await.unwrap().2,
        Bytes::from_static(b"A")
    );
    assert_eq!(follower.await.unwrap().unwrap().2, Bytes::from_static(b"B"));
    assert_eq!(c.heartbeat("g", 2, &b.member_id, None), Ok(()));
    assert_eq!(
        c.heartbeat("g", 1, &b.member_id, None),
        Err(GroupError::IllegalGeneration)
    );
    assert_eq!(c.heartbeat("g", 2, "nobody", None), Err(GroupError::UnknownMemberId));
}

#[tokio::test]
async fn leave_and_session_expiry_rebalance() {
    let (_d, c) = coordinator().await;
    let a = join_new(&c, "g").await;
    c.sync(sync("g", 1, &a.member_id, vec![])).await.unwrap();
    let left = c
        .leave(
            "g",
            &[LeaveMember {
                member_id: a.member_id.clone(),
                instance_id: None,
            }],
        )
        .await
        .unwrap();
    assert_eq!(left, vec![Ok(())]);
    let d = c.describe("g").unwrap();
    assert_eq!((d.state, d.members.len(), d.generation), ("Empty", 0, 2));

    let a = join_new(&c, "g").await;
    c.sync(sync("g", a.generation, &a.member_id, vec![])).await.unwrap();
    // No heartbeats: the session (300 ms) lapses and the member is removed.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let d = c.describe("g").unwrap();
    assert_eq!((d.state, d.members.len()), ("Empty", 0));
    assert_eq!(
        c.heartbeat("g", a.generation, &a.member_id, None),
        Err(GroupError::UnknownMemberId)
    );
}

#[tokio::test]
async fn inconsistent_protocols_and_bad_timeouts() {
    let (_d, c) = coordinator().await;
    let a = join_new(&c, "g").await;
    assert!(a.error.is_none());
    let mut other = join("g", "", None, &["roundrobin"]);
    other.require_known_member_id = false;
    assert_eq!(c.join(other).await.error, Some(GroupError::InconsistentGroupProtocol));
    let mut wrong_type = join("g", "", None, &["range"]);
    wrong_type.protocol_type = "connect".into();
    assert_eq!(
        c.join(wrong_type).await.error,
        Some(GroupError::InconsistentGroupProtocol)
    );
    let mut short = join("g", "", None, &["range"]);
    short.session_timeout_ms = 1;
    assert_eq!(c.join(short).await.error, Some(GroupError::InvalidSessionTimeout));
    assert_eq!(
        c.join(join("g", "ghost", None, &["range"])).await.error,
        Some(GroupError::UnknownMemberId)
    );
}

#[tokio::test]
async fn static_member_rejoins_without_rebalance() {
    let (_d, c) = coordinator().await;
    let a = c.join(join("g", "", Some("i-1"), &["range"])).await;
    assert_eq!(a.generation, 1);
    c.sync(sync(
        "g",
        1,
        &a.member_id,
        vec![(a.member_id.clone(), Bytes::from_static(b"X"))],
    ))
    .await
    .unwrap();
    // Restart: same instance id, no member id. Same generation, a new member id.
    let again = c.join(join("g", "", Some("i-1"), &["range"])).await;
    assert_eq!((again.error, again.generation), (None, 1));
    assert_ne!(again.member_id, a.member_id);
    let s = c.sync(sync("g", 1, &again.member_id, vec![])).await.unwrap();
    assert_eq!(s.2, Bytes::from_static(b"X"));
    // The old incarnation is fenced.
    assert_eq!(
        c.heartbeat("g", 1, &a.member_id, Some("i-1")),
        Err(GroupError::FencedInstanceId)
    );
    assert_eq!(c.describe("g").unwrap().generation, 1);
}

#[tokio::test]
async fn offsets_commit_fetch_and_guards() {
    let (_d, c) = coordinator().await;
    let entry = |p: i32, o: i64| OffsetEntry {
        topic: "t".into(),
        partition: p,
        offset: o,
        leader_epoch: -1,
        metadata: Some("m".into()),
    };
    // Simple (generation -1) commits work for a group with no members.
    let simple = CommitRequest {
        group_id: "s".into(),
        generation: -1,
        member_id: String::new(),
        instance_id: None,
        offsets: vec![entry(0, 10)],
    };
    assert_eq!(c.commit(simple).await.unwrap(), vec![Ok(())]);
    assert_eq!(c.fetch_offsets("s").await.unwrap(), vec![entry(0, 10)]);

    let a = join_new(&c, "g").await;
    c.sync(sync("g", 1, &a.member_id, vec![])).await.unwrap();
    let stale = CommitRequest {
        group_id: "g".into(),
        generation: 0,
        member_id: a.member_id.clone(),
        instance_id: None,
        offsets: vec![entry(0, 1)],
    };
    assert_eq!(c.commit(stale).await, Err(GroupError::IllegalGeneration));
    let unknown = CommitRequest {
        group_id: "g".into(),
        generation: 1,
        member_id: "x".into(),
        instance_id: None,
        offsets: vec![entry(0, 1)],
    };
    assert_eq!(c.commit(unknown).await, Err(GroupError::UnknownMemberId));
    let big = OffsetEntry {
        metadata: Some("x".repeat(5000)),
        ..entry(1, 3)
    };
    let ok = CommitRequest {
        group_id: "g".into(),
        generation: 1,
        member_id: a.member_id.clone(),
        instance_id: None,
        offsets: vec![entry(0, 42), big],
    };
    assert_eq!(
        c.commit(ok).await.unwrap(),
        vec![Ok(()), Err(GroupError::OffsetMetadataTooLarge)]
    );
    assert_eq!(c.fetch_offsets("g").await.unwrap(), vec![entry(0, 42)]);

    assert_eq!(c.delete("g").await, Err(GroupError::NonEmptyGroup));
    assert_eq!(c.delete("s").await, Ok(()));
    assert!(c.fetch_offsets("s").await.unwrap().is_empty());
    assert_eq!(c.delete("never").await, Err(GroupError::GroupIdNotFound));
    let listed = c.list().await.unwrap();
    assert_eq!(listed, vec![("g".to_string(), "consumer".to_string(), "Stable")]);
}

#[tokio::test]
async fn stable_group_survives_a_coordinator_restart() {
    let (dir, c) = coordinator().await;
    let a = join_new(&c, "g").await;
    c.sync(sync(
        "g",
        1,
        &a.member_id,
        vec![(a.member_id.clone(), Bytes::from_static(b"A"))],
    ))
    .await
    .unwrap();
    // A new coordinator on the same metadata store: the member carries on in its generation.
    let c2 = coordinator_in(&dir).await;
    assert_eq!(c2.heartbeat("g", 1, &a.member_id, None), Ok(()));
    let s = c2.sync(sync("g", 1, &a.member_id, vec![])).await.unwrap();
    assert_eq!(s.2, Bytes::from_static(b"A"));
    let d = c2.describe("g").unwrap();
    assert_eq!((d.state, d.generation, d.members.len()), ("Stable", 1, 1));
    drop(c);
}
