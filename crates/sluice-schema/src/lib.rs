//! The schema registry: Confluent's REST API (Avro, Protobuf, JSON Schema,
//! references, compatibility levels, configs and modes) stored in the metadata
//! store, and the validation the broker applies to records of topics that ask
//! for it.

pub mod api;
pub mod cli;
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

/// Serves the registry's REST API until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener, registry: Registry) -> anyhow::Result<()> {
    axum::serve(listener, api::router(registry)).await?;
    Ok(())
}
