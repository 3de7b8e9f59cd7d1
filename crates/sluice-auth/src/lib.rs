//! Security shared by every listener: listener schemes, TLS acceptors that reload their
//! certificates, client-certificate principals, SASL PLAIN and SCRAM, and the user store's
//! credentials, and the ACL authorizer that the Kafka, MQTT and HTTP front ends share.

pub mod acl;
pub mod http;
pub mod limit;
pub mod listener;
pub mod principal;
pub mod sasl;
pub mod scram;
pub mod tls;

pub use acl::{Acl, AclFilter, Authorizer, Operation, PatternType, Permission, ResourceType};
pub use listener::{parse_kafka_listeners, parse_url, KafkaListener, SecurityProtocol};
pub use principal::PrincipalRules;
pub use sasl::{Sasl, Step};
pub use scram::{AuthFailure, ScramMechanism};
pub use tls::{ClientAuth, Tls, TlsFiles};
