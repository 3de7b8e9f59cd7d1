//! The client against a minimal in-process broker built from the same
//! `kafka-protocol` messages (decoding requests, encoding responses): checks
//! framing, header versions, version negotiation (including the ApiVersions
//! UNSUPPORTED_VERSION fallback), leader routing, produce and fetch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    api_versions_response::ApiVersion,
    fetch_response::{FetchableTopicResponse, PartitionData},
    list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse},
    metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic},
    produce_response::{PartitionProduceResponse, TopicProduceResponse},
    ApiKey, ApiVersionsResponse, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Decodable, Encodable, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::{Acks, Client, ProduceRecord, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};

const TOPIC_ID: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);

#[derive(Default)]
struct State {
    /// Reject ApiVersions v4 the way a Kafka 3.x broker does.
    reject_api_versions_v4: bool,
    /// Versions requested, by API key.
    seen: Vec<(i16, i16, i16)>, // (api key, version, header version in use)
    /// Stored batches per partition, with the broker-assigned base offset.
    log: HashMap<i32, Vec<(i64, Bytes)>>,
    next_offset: HashMap<i32, i64>,
    addr: String,
    /// Advertise the group APIs only in their pre-flexible versions
    /// (FindCoordinator v3, OffsetFetch v7, ...).
    old_group_apis: bool,
    /// Answer this many group requests with NOT_COORDINATOR first.
    not_coordinator: u32,
    /// Whether group "g" has active members (admin commits are refused).
    group_has_members: bool,
    /// Committed offsets of group "g".
    commits: std::collections::BTreeMap<(String, i32), i64>,
}

type Shared = Arc<Mutex<State>>;

fn resp<M: Encodable>(key: ApiKey, version: i16, correlation_id: i32, msg: &M) -> Vec<u8> {
    let mut b = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut b, key.response_header_version(version))
        .unwrap();
    msg.encode(&mut b, version).unwrap();
    b.to_vec()
}

fn handle(state: &Shared, header: RequestHeader, mut body: Bytes) -> Option<Vec<u8>> {
    let key = ApiKey::try_from(header.request_api_key).unwrap();
    let v = header.request_api_version;
    let cid = header.correlation_id;
    let mut st = state.lock().unwrap();
    st.seen.push((header.request_api_key, v, key.request_header_version(v)));
    match key {
        ApiKey::ApiVersions => {
            let keys = vec![
                (ApiKey::ApiVersions, 0, 3),
                (ApiKey::Metadata, 0, 12),
                (ApiKey::Produce, 3, 11),
                (ApiKey::Fetch, 4, 12),
                (ApiKey::ListOffsets, 1, 8),
            ]
            .into_iter()
            .chain(group_api_versions(st.old_group_apis))
            .map(|(k, min, max)| {
                ApiVersion::default()
                    .with_api_key(k as i16)
                    .with_min_version(min)
                    .with_max_version(max)
            })
            .collect();
            if v == 4 && st.reject_api_versions_v4 {
                let r = ApiVersionsResponse::default()
                    .with_error_code(35)
                    .with_api_keys(vec![ApiVersion::default()
                        .with_api_key(ApiKey::ApiVersions as i16)
                        .with_min_version(0)
                        .with_max_version(3)]);
                return Some(resp(key, 0, cid, &r));
            }
            Some(resp(key, v, cid, &ApiVersionsResponse::default().with_api_keys(keys)))
        }
        ApiKey::Metadata => {
            let req = MetadataRequest::decode(&mut body, v).unwrap();
            assert!(!req.allow_auto_topic_creation, "the client never auto-creates");
            let (host, port) = st.addr.rsplit_once(':').unwrap();
            let mut topics = Vec::new();
            for t in req.topics.unwrap_or_default() {
                let name = t.name.unwrap();
                let mut mt = MetadataResponseTopic::default()
                    .with_name(Some(name.clone()))
                    .with_topic_id(TOPIC_ID);
                if name.as_str() == "t" {
                    mt.partitions = (0..2)
                        .map(|p| {
                            MetadataResponsePartition::default()
                                .with_partition_index(p)
                                .with_leader_id(BrokerId(7))
                                .with_replica_nodes(vec![BrokerId(7)])
                                .with_isr_nodes(vec![BrokerId(7)])
                        })
                        .collect();
                } else {
                    mt.error_code = 3;
                }
                topics.push(mt);
            }
            let r = MetadataResponse::default()
                .with_brokers(vec![MetadataResponseBroker::default()
                    .with_node_id(BrokerId(7))
                    .with_host(StrBytes::from_string(host.to_string()))
                    .with_port(port.parse().unwrap())])
                .with_controller_id(BrokerId(7))
                .with_topics(topics);
            Some(resp(key, v, cid, &r))
        }
        ApiKey::Produce => {
            let req = ProduceRequest::decode(&mut body, v).unwrap();
            let mut out = Vec::new();
            for td in &req.topic_data {
                assert_eq!(td.name.as_str(), "t");
                let mut parts = Vec::new();
                for pd in &td.partition_data {
                    let data = pd.records.clone().unwrap();
                    let infos = RecordBatchDecoder::decode_batch_info(&mut data.clone()).unwrap();
                    assert_eq!(infos.len(), 1, "exactly one batch per partition");
                    let base = *st.next_offset.get(&pd.index).unwrap_or(&0);
                    let mut stored = BytesMut::from(&data[..]);
                    stored[0..8].copy_from_slice(&base.to_be_bytes());
                    st.log.entry(pd.index).or_default().push((base, stored.freeze()));
                    st.next_offset.insert(pd.index, base + i64::from(infos[0].record_count));
                    parts.push(
                        PartitionProduceResponse::default()
                            .with_index(pd.index)
                            .with_base_offset(base),
                    );
                }
                out.push(
                    TopicProduceResponse::default()
                        .with_name(td.name.clone())
                        .with_partition_responses(parts),
                );
            }
            if req.acks == 0 {
                return None;
            }
            Some(resp(key, v, cid, &ProduceResponse::default().with_responses(out)))
        }
        ApiKey::Fetch => {
            let req = FetchRequest::decode(&mut body, v).unwrap();
            let mut topics = Vec::new();
            for ft in &req.topics {
                let mut parts = Vec::new();
                for fp in &ft.partitions {
                    // Whole batches, starting with the one holding fetch_offset.
                    let mut data = BytesMut::new();
                    let log = st.log.get(&fp.partition).cloned().unwrap_or_default();
                    for (i, (_, b)) in log.iter().enumerate() {
                        let next = log.get(i + 1).map_or(i64::MAX, |(n, _)| *n);
                        if next > fp.fetch_offset {
                            data.extend_from_slice(b);
                        }
                    }
                    let hw = *st.next_offset.get(&fp.partition).unwrap_or(&0);
                    parts.push(
                        PartitionData::default()
                            .with_partition_index(fp.partition)
                            .with_high_watermark(hw)
                            .with_last_stable_offset(hw)
                            .with_records(Some(data.freeze())),
                    );
                }
                topics.push(
                    FetchableTopicResponse::default()
                        .with_topic(ft.topic.clone())
                        .with_partitions(parts),
                );
            }
            Some(resp(key, v, cid, &FetchResponse::default().with_responses(topics)))
        }
        ApiKey::ListOffsets => {
            let req = ListOffsetsRequest::decode(&mut body, v).unwrap();
            assert_eq!(*req.replica_id, -1, "consumers send replica id -1");
            let topics = req
                .topics
                .iter()
                .map(|t| {
                    ListOffsetsTopicResponse::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    let off = match p.timestamp {
                                        EARLIEST_TIMESTAMP => 0,
                                        _ => *st.next_offset.get(&p.partition_index).unwrap_or(&0),
                                    };
                                    ListOffsetsPartitionResponse::default()
                                        .with_partition_index(p.partition_index)
                                        .with_offset(off)
                                })
                                .collect(),
                        )
                })
                .collect();
            Some(resp(key, v, cid, &ListOffsetsResponse::default().with_topics(topics)))
        }
        other => match handle_group(&mut st, other, v, body) {
            Some(r) => Some(r.finish(key, v, cid)),
            None => panic!("unexpected request {other:?}"),
        },
    }
}

async fn start_broker(reject_v4: bool) -> (String, Shared) {
    start_broker_with(State {
        reject_api_versions_v4: reject_v4,
        ..State::default()
    })
    .await
}

async fn start_broker_with(state: State) -> (String, Shared) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let state: Shared = Arc::new(Mutex::new(State {
        addr: addr.clone(),
        ..state
    }));
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let st = st.clone();
            tokio::spawn(async move {
                loop {
                    let Ok(len) = sock.read_i32().await else {
                        return;
                    };
                    let mut buf = vec![0u8; len as usize];
                    sock.read_exact(&mut buf).await.unwrap();
                    let mut body = Bytes::from(buf);
                    let header = decode_request_header_from_buffer(&mut body).unwrap();
                    if let Some(r) = handle(&st, header, body) {
                        sock.write_all(&(r.len() as i32).to_be_bytes()).await.unwrap();
                        sock.write_all(&r).await.unwrap();
                    }
                }
            });
        }
    });
    (addr, state)
}

#[tokio::test]
async fn negotiates_down_from_api_versions_v4() {
    let (addr, state) = start_broker(true).await;
    let mut client = Client::connect(&addr).await.unwrap();
    let conn = client.bootstrap_conn().await.unwrap();
    assert_eq!(conn.version::<MetadataRequest>().unwrap(), 12);
    assert_eq!(conn.version::<ProduceRequest>().unwrap(), 11);
    assert_eq!(conn.version_capped::<ProduceRequest>(9).unwrap(), 9);
    assert!(conn.version::<kafka_protocol::messages::CreateTopicsRequest>().is_err());
    let seen = state.lock().unwrap().seen.clone();
    assert_eq!(seen[0], (ApiKey::ApiVersions as i16, 4, 2));
    assert_eq!(seen[1], (ApiKey::ApiVersions as i16, 3, 2));
}

#[tokio::test]
async fn produce_fetch_round_trip_through_the_leader() {
    let (addr, state) = start_broker(false).await;
    let mut client = Client::connect(&addr).await.unwrap();
    let t = client.topic("t").await.unwrap();
    assert_eq!(t.num_partitions(), 2);
    assert_eq!(t.topic_id, TOPIC_ID);
    let err = client.topic("nope").await.unwrap_err();
    assert!(err.to_string().contains("UNKNOWN_TOPIC_OR_PARTITION"), "{err}");

    let batch1: Vec<ProduceRecord> = (0..5)
        .map(|i| {
            ProduceRecord::new(format!("v{i}"))
                .with_key(format!("k{i}"))
                .with_header("h", "x")
        })
        .collect();
    let batch2: Vec<ProduceRecord> = (5..8).map(|i| ProduceRecord::new(format!("v{i}"))).collect();
    assert_eq!(client.produce("t", 1, &batch1, Acks::All).await.unwrap(), 0);
    assert_eq!(client.produce("t", 1, &batch2, Acks::Leader).await.unwrap(), 5);
    assert_eq!(client.produce("t", 0, &batch2, Acks::None).await.unwrap(), -1);

    assert_eq!(client.list_offsets("t", 1, EARLIEST_TIMESTAMP).await.unwrap(), 0);
    assert_eq!(client.list_offsets("t", 1, LATEST_TIMESTAMP).await.unwrap(), 8);

    // Offset 3 is inside the first batch: records before it are skipped.
    let f = client
        .fetch("t", 1, 3, Duration::from_millis(10), 1 << 20)
        .await
        .unwrap();
    let got: Vec<(i64, String)> = f
        .records
        .iter()
        .map(|r| (r.offset, String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()))
        .collect();
    assert_eq!(got, (3..8).map(|i| (i, format!("v{i}"))).collect::<Vec<_>>());
    assert_eq!(f.next_offset, 8);
    assert_eq!(f.high_watermark, 8);
    assert_eq!(f.records[0].key.as_deref(), Some(&b"k3"[..]));
    assert_eq!(
        f.records[0].headers,
        vec![("h".to_string(), Some(Bytes::from_static(b"x")))]
    );

    // The acks=0 batch arrived even though no answer was awaited.
    let f0 = client
        .fetch("t", 0, 0, Duration::from_millis(10), 1 << 20)
        .await
        .unwrap();
    assert_eq!(f0.records.len(), 3);

    let st = state.lock().unwrap();
    // Data requests went to the leader's connection (a second connection,
    // with its own ApiVersions handshake), with the header versions the
    // negotiated API versions call for.
    let api_versions = st.seen.iter().filter(|s| s.0 == ApiKey::ApiVersions as i16).count();
    assert_eq!(api_versions, 2);
    assert!(st.seen.contains(&(ApiKey::Produce as i16, 11, 2)));
    assert!(st.seen.contains(&(ApiKey::Fetch as i16, 12, 2)));
    assert!(st.seen.contains(&(ApiKey::ListOffsets as i16, 8, 2)));
}

// ------------------------------------------------------------------ groups

fn group_api_versions(old: bool) -> Vec<(ApiKey, i16, i16)> {
    if old {
        vec![
            (ApiKey::FindCoordinator, 0, 3),
            (ApiKey::OffsetCommit, 2, 7),
            (ApiKey::OffsetFetch, 1, 7),
            (ApiKey::DescribeGroups, 0, 4),
            (ApiKey::ListGroups, 0, 3),
            (ApiKey::DeleteGroups, 0, 1),
            (ApiKey::OffsetDelete, 0, 0),
        ]
    } else {
        vec![
            (ApiKey::FindCoordinator, 0, 6),
            (ApiKey::OffsetCommit, 2, 9),
            (ApiKey::OffsetFetch, 1, 9),
            (ApiKey::DescribeGroups, 0, 5),
            (ApiKey::ListGroups, 0, 5),
            (ApiKey::DeleteGroups, 0, 2),
            (ApiKey::OffsetDelete, 0, 0),
        ]
    }
}

/// An encoded response body, waiting for its header.
struct Body(Box<dyn FnOnce(ApiKey, i16, i32) -> Vec<u8>>);

impl Body {
    fn of<M: Encodable + 'static>(m: M) -> Self {
        Body(Box::new(move |key, v, cid| resp(key, v, cid, &m)))
    }

    fn finish(self, key: ApiKey, v: i16, cid: i32) -> Vec<u8> {
        (self.0)(key, v, cid)
    }
}

const NOT_COORDINATOR: i16 = 16;

fn handle_group(st: &mut State, key: ApiKey, v: i16, mut body: Bytes) -> Option<Body> {
    use kafka_protocol::messages::{
        delete_groups_response::DeletableGroupResult,
        describe_groups_response::{DescribedGroup, DescribedGroupMember},
        find_coordinator_response::Coordinator,
        list_groups_response::ListedGroup,
        offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic},
        offset_fetch_response::{
            OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
            OffsetFetchResponseTopic, OffsetFetchResponseTopics,
        },
        DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
        FindCoordinatorRequest, FindCoordinatorResponse, GroupId, ListGroupsRequest, ListGroupsResponse,
        OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
        OffsetFetchResponse, TopicName,
    };
    let s = |x: &str| StrBytes::from_string(x.to_string());
    let mut not_coordinator = || {
        if st.not_coordinator > 0 {
            st.not_coordinator -= 1;
            NOT_COORDINATOR
        } else {
            0
        }
    };
    Some(match key {
        ApiKey::FindCoordinator => {
            let req = FindCoordinatorRequest::decode(&mut body, v).unwrap();
            let (host, port) = st.addr.rsplit_once(':').unwrap();
            let port: i32 = port.parse().unwrap();
            if v >= 4 {
                assert_eq!(req.coordinator_keys.len(), 1);
                Body::of(
                    FindCoordinatorResponse::default().with_coordinators(vec![Coordinator::default()
                        .with_key(req.coordinator_keys[0].clone())
                        .with_node_id(BrokerId(7))
                        .with_host(s(host))
                        .with_port(port)]),
                )
            } else {
                assert!(!req.key.is_empty());
                Body::of(
                    FindCoordinatorResponse::default()
                        .with_node_id(BrokerId(7))
                        .with_host(s(host))
                        .with_port(port),
                )
            }
        }
        ApiKey::OffsetCommit => {
            let req = OffsetCommitRequest::decode(&mut body, v).unwrap();
            assert_eq!(req.group_id.as_str(), "g");
            assert_eq!(
                req.generation_id_or_member_epoch, -1,
                "admin commits carry no generation"
            );
            assert_eq!(req.member_id.as_str(), "", "admin commits carry no member id");
            let nc = not_coordinator();
            let topics = req
                .topics
                .iter()
                .map(|t| {
                    let parts = t
                        .partitions
                        .iter()
                        .map(|p| {
                            let code = if nc != 0 {
                                nc
                            } else if st.group_has_members {
                                25 // UNKNOWN_MEMBER_ID
                            } else {
                                st.commits
                                    .insert((t.name.to_string(), p.partition_index), p.committed_offset);
                                0
                            };
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect();
                    OffsetCommitResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(parts)
                })
                .collect();
            Body::of(OffsetCommitResponse::default().with_topics(topics))
        }
        ApiKey::OffsetFetch => {
            let req = OffsetFetchRequest::decode(&mut body, v).unwrap();
            let nc = not_coordinator();
            let wanted: Option<Vec<(String, Vec<i32>)>> = if v >= 8 {
                assert_eq!(req.groups.len(), 1);
                assert_eq!(req.groups[0].group_id.as_str(), "g");
                req.groups[0].topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
                        .collect()
                })
            } else {
                assert_eq!(req.group_id.as_str(), "g");
                req.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
                        .collect()
                })
            };
            let rows: Vec<(String, i32, i64)> = match wanted {
                None => st.commits.iter().map(|((t, p), o)| (t.clone(), *p, *o)).collect(),
                Some(w) => w
                    .into_iter()
                    .flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p)))
                    .map(|(t, p)| {
                        let o = st.commits.get(&(t.clone(), p)).copied().unwrap_or(-1);
                        (t, p, o)
                    })
                    .collect(),
            };
            // Newest first, to check that the client sorts.
            let mut topics: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
            topics.sort();
            topics.dedup();
            topics.reverse();
            if v >= 8 {
                let ts = topics
                    .iter()
                    .map(|t| {
                        OffsetFetchResponseTopics::default()
                            .with_name(TopicName(s(t)))
                            .with_partitions(
                                rows.iter()
                                    .filter(|r| &r.0 == t)
                                    .map(|r| {
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(r.1)
                                            .with_committed_offset(r.2)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                Body::of(
                    OffsetFetchResponse::default().with_groups(vec![OffsetFetchResponseGroup::default()
                        .with_group_id(GroupId(s("g")))
                        .with_error_code(nc)
                        .with_topics(if nc == 0 { ts } else { vec![] })]),
                )
            } else {
                let ts = topics
                    .iter()
                    .map(|t| {
                        OffsetFetchResponseTopic::default()
                            .with_name(TopicName(s(t)))
                            .with_partitions(
                                rows.iter()
                                    .filter(|r| &r.0 == t)
                                    .map(|r| {
                                        OffsetFetchResponsePartition::default()
                                            .with_partition_index(r.1)
                                            .with_committed_offset(r.2)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                Body::of(
                    OffsetFetchResponse::default()
                        .with_error_code(nc)
                        .with_topics(if nc == 0 { ts } else { vec![] }),
                )
            }
        }
        ApiKey::OffsetDelete => {
            let req = OffsetDeleteRequest::decode(&mut body, v).unwrap();
            for t in &req.topics {
                for p in &t.partitions {
                    st.commits.remove(&(t.name.to_string(), p.partition_index));
                }
            }
            Body::of(OffsetDeleteResponse::default())
        }
        ApiKey::DescribeGroups => {
            let req = DescribeGroupsRequest::decode(&mut body, v).unwrap();
            let nc = not_coordinator();
            let groups = req
                .groups
                .iter()
                .map(|g| {
                    let base = DescribedGroup::default().with_group_id(g.clone()).with_error_code(nc);
                    if g.as_str() != "g" || nc != 0 {
                        return base.with_group_state(s("Dead"));
                    }
                    // Version 1 assignment: one topic "t", partitions [1, 0]; null user data.
                    let mut a = BytesMut::new();
                    a.extend_from_slice(&1i16.to_be_bytes());
                    a.extend_from_slice(&1i32.to_be_bytes());
                    a.extend_from_slice(&1i16.to_be_bytes());
                    a.extend_from_slice(b"t");
                    a.extend_from_slice(&2i32.to_be_bytes());
                    a.extend_from_slice(&1i32.to_be_bytes());
                    a.extend_from_slice(&0i32.to_be_bytes());
                    a.extend_from_slice(&(-1i32).to_be_bytes());
                    base.with_group_state(s("Stable"))
                        .with_protocol_type(s("consumer"))
                        .with_protocol_data(s("range"))
                        .with_members(vec![DescribedGroupMember::default()
                            .with_member_id(s("m-1"))
                            .with_client_id(s("c"))
                            .with_client_host(s("/127.0.0.1"))
                            .with_member_assignment(a.freeze())])
                })
                .collect();
            Body::of(DescribeGroupsResponse::default().with_groups(groups))
        }
        ApiKey::ListGroups => {
            let req = ListGroupsRequest::decode(&mut body, v).unwrap();
            if v < 4 {
                assert!(req.states_filter.is_empty());
            }
            let groups = [("g", "Stable"), ("idle", "Empty")]
                .into_iter()
                .filter(|(_, state)| {
                    req.states_filter.is_empty() || req.states_filter.iter().any(|f| f.as_str() == *state)
                })
                .map(|(id, state)| {
                    let g = ListedGroup::default()
                        .with_group_id(GroupId(s(id)))
                        .with_protocol_type(s("consumer"));
                    if v >= 4 {
                        g.with_group_state(s(state))
                    } else {
                        g
                    }
                })
                .collect();
            Body::of(ListGroupsResponse::default().with_groups(groups))
        }
        ApiKey::DeleteGroups => {
            let req = DeleteGroupsRequest::decode(&mut body, v).unwrap();
            let results = req
                .groups_names
                .iter()
                .map(|g| {
                    let code = match g.as_str() {
                        "g" => 68,   // NON_EMPTY_GROUP
                        "idle" => 0, // deleted
                        _ => 69,     // GROUP_ID_NOT_FOUND
                    };
                    DeletableGroupResult::default()
                        .with_group_id(g.clone())
                        .with_error_code(code)
                })
                .collect();
            Body::of(DeleteGroupsResponse::default().with_results(results))
        }
        _ => return None,
    })
}

fn tp(t: &str, p: i32, o: i64) -> (String, i32, i64) {
    (t.to_string(), p, o)
}

async fn group_round_trip(old: bool) {
    let (addr, state) = start_broker_with(State {
        old_group_apis: old,
        not_coordinator: 1,
        ..State::default()
    })
    .await;
    let mut client = Client::connect(&addr).await.unwrap();
    let coord = client.find_coordinator("g").await.unwrap();
    assert_eq!(coord.node_id, 7);
    assert_eq!(coord.addr(), addr);

    // The first commit meets NOT_COORDINATOR and is retried after a new lookup.
    client
        .offset_commit("g", &[tp("u", 0, 5), tp("t", 1, 7), tp("t", 0, 3)])
        .await
        .unwrap();
    let all = client.offset_fetch("g", None).await.unwrap();
    let got: Vec<(String, i32, Option<i64>)> = all.iter().map(|c| (c.topic.clone(), c.partition, c.offset)).collect();
    assert_eq!(
        got,
        vec![
            ("t".to_string(), 0, Some(3)),
            ("t".to_string(), 1, Some(7)),
            ("u".to_string(), 0, Some(5))
        ]
    );
    let some = client
        .offset_fetch("g", Some(&[("t".to_string(), vec![1, 5])]))
        .await
        .unwrap();
    assert_eq!(some.iter().map(|c| c.offset).collect::<Vec<_>>(), vec![Some(7), None]);

    client.offset_delete("g", &[("u".to_string(), vec![0])]).await.unwrap();
    assert_eq!(client.offset_fetch("g", None).await.unwrap().len(), 2);

    let d = client.describe_groups(&["g", "nope"]).await.unwrap();
    assert_eq!(d[0].state, "Stable");
    assert_eq!(d[0].protocol, "range");
    assert_eq!(d[0].members[0].member_id, "m-1");
    assert_eq!(
        d[0].members[0].assigned_partitions,
        Some(vec![("t".to_string(), vec![0, 1])])
    );
    assert!(!d[0].is_inactive());
    assert!(!d[1].exists());

    let listed = client.list_groups(&[]).await.unwrap();
    assert_eq!(
        listed.iter().map(|g| g.group_id.as_str()).collect::<Vec<_>>(),
        ["g", "idle"]
    );
    if old {
        assert_eq!(listed[0].state, None);
        let err = client.list_groups(&["Empty".to_string()]).await.unwrap_err();
        assert!(err.to_string().contains("cannot filter by state"), "{err}");
    } else {
        assert_eq!(listed[0].state.as_deref(), Some("Stable"));
        let empty = client.list_groups(&["Empty".to_string()]).await.unwrap();
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0].group_id, "idle");
    }

    let res = client.delete_groups(&["g", "idle", "nope"]).await.unwrap();
    assert_eq!(res[0].0, "g");
    assert_eq!(
        crate::error::response_error(res[0].1.as_ref().unwrap_err()),
        Some(kafka_protocol::error::ResponseError::NonEmptyGroup)
    );
    assert!(res[1].1.is_ok());
    assert_eq!(
        crate::error::response_error(res[2].1.as_ref().unwrap_err()),
        Some(kafka_protocol::error::ResponseError::GroupIdNotFound)
    );

    // With members, the admin commit is refused with a clear message.
    state.lock().unwrap().group_has_members = true;
    let err = client.offset_commit("g", &[tp("t", 0, 0)]).await.unwrap_err();
    assert!(format!("{err:#}").contains(crate::GROUP_NOT_EMPTY), "{err:#}");
    assert!(format!("{err:#}").contains("UNKNOWN_MEMBER_ID"), "{err:#}");
    assert_eq!(
        crate::error::response_error(&err),
        Some(kafka_protocol::error::ResponseError::UnknownMemberId)
    );

    let st = state.lock().unwrap();
    let find = st
        .seen
        .iter()
        .filter(|s| s.0 == ApiKey::FindCoordinator as i16)
        .collect::<Vec<_>>();
    // "g" twice (again after NOT_COORDINATOR), then "nope" and "idle" once each.
    assert_eq!(find.len(), 4);
    let (fc_version, of_version) = if old { (3, 7) } else { (6, 9) };
    assert!(find.iter().all(|s| s.1 == fc_version));
    assert!(st
        .seen
        .iter()
        .any(|s| s.0 == ApiKey::OffsetFetch as i16 && s.1 == of_version));
}

#[tokio::test]
async fn group_admin_round_trip() {
    group_round_trip(false).await;
}

#[tokio::test]
async fn group_admin_round_trip_with_old_api_versions() {
    group_round_trip(true).await;
}
