//! A small async Kafka client built on the `kafka-protocol` crate, used by the
//! `sluice topic|produce|consume|group` commands, `sluice bench` and the MQTT
//! gateway's forwarding.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use sluice_client::{Acks, Client, ProduceRecord, EARLIEST_TIMESTAMP};
//! let mut client = Client::connect("127.0.0.1:9092").await?;
//! client.create_topics("events", Some(3), None, &[]).await?;
//! client
//!     .produce("events", 0, &[ProduceRecord::new("hello").with_key("k")], Acks::All)
//!     .await?;
//! let start = client.list_offsets("events", 0, EARLIEST_TIMESTAMP).await?;
//! let got = client
//!     .fetch("events", 0, start, std::time::Duration::from_millis(500), 1 << 20)
//!     .await?;
//! assert_eq!(got.records[0].value.as_deref(), Some(&b"hello"[..]));
//! # Ok(()) }
//! ```

mod client;
mod conn;
pub mod error;
pub mod partitioner;
pub mod records;

#[cfg(test)]
mod mock_tests;

pub use client::{
    decode_consumer_assignment, decode_consumer_subscription, Acks, AlterConfigOp, BrokerInfo, Client, ClientConfig,
    ClusterMetadata, CommittedOffset, ConfigEntry, ConfigSource, CreatedTopic, FetchedPartition, GroupDescription,
    GroupMember, IsolationLevel, ListedGroup, PartitionInfo, ProducerIdentity, TopicInfo, EARLIEST_LOCAL_TIMESTAMP,
    EARLIEST_TIMESTAMP, GROUP_NOT_EMPTY, LATEST_TIMESTAMP,
};
pub use conn::Connection;
pub use error::KafkaError;
pub use kafka_protocol::records::Compression;
pub use partitioner::{murmur2, partition_for_key};
pub use records::{ConsumedRecord, ProduceRecord};
