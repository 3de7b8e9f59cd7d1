//! The schema registry: Confluent's REST API (Avro, Protobuf, JSON Schema,
//! references, compatibility levels, configs and modes) stored in the metadata
//! store, and the validation the broker applies to records of topics that ask
//! for it.

pub mod access;
pub mod api;
pub mod bench;
pub mod enforce;
pub mod error;
pub mod formats;
pub mod registry;
pub mod store;

#[cfg(test)]
mod tests;

pub use enforce::{Enforcer, Policy, Rejection};
pub use error::RegistryError;
pub use registry::Registry;

/// The registry's REST API; with an authorizer, writes need ALTER ([`access`]).
pub fn router(registry: Registry, authorizer: Option<std::sync::Arc<sluice_auth::Authorizer>>) -> axum::Router {
    let router = api::router(registry);
    match authorizer {
        Some(a) => access::protect(router, a),
        None => router,
    }
}
