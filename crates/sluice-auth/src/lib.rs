//! Security shared by every listener: listener schemes, TLS acceptors that reload their
//! certificates, client-certificate principals, SASL PLAIN and SCRAM, and the user store's
//! credentials. Authorization (ACLs) builds on the principals named here.

pub mod listener;
pub mod principal;
pub mod sasl;
pub mod scram;
pub mod tls;

pub use listener::{parse_kafka_listeners, parse_url, KafkaListener, SecurityProtocol};
pub use principal::PrincipalRules;
pub use sasl::{Sasl, Step};
pub use scram::{AuthFailure, ScramMechanism};
pub use tls::{ClientAuth, Tls, TlsFiles};
