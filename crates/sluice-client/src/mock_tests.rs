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
        other => panic!("unexpected request {other:?}"),
    }
}

async fn start_broker(reject_v4: bool) -> (String, Shared) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let state: Shared = Arc::new(Mutex::new(State {
        reject_api_versions_v4: reject_v4,
        addr: addr.clone(),
        ..State::default()
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
