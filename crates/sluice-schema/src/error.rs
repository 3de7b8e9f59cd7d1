//! Errors as Confluent Schema Registry reports them: an HTTP status plus an
//! `error_code` and `message` (the REST layer, `api`, writes them as the body).

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (error code {code})")]
pub struct RegistryError {
    pub status: u16,
    pub code: u32,
    pub message: String,
}

impl RegistryError {
    fn new(status: u16, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn subject_not_found(subject: &str) -> Self {
        Self::new(404, 40401, format!("Subject '{subject}' not found."))
    }
    pub fn version_not_found(version: &str) -> Self {
        Self::new(404, 40402, format!("Version {version} not found."))
    }
    pub fn schema_not_found() -> Self {
        Self::new(404, 40403, "Schema not found")
    }
    pub fn subject_soft_deleted(subject: &str) -> Self {
        Self::new(
            404,
            40404,
            format!("Subject '{subject}' was soft deleted.Set permanent=true to delete permanently"),
        )
    }
    pub fn subject_not_soft_deleted(subject: &str) -> Self {
        Self::new(
            404,
            40405,
            format!("Subject '{subject}' was not deleted first before being permanently deleted"),
        )
    }
    pub fn version_soft_deleted(subject: &str, version: i32) -> Self {
        Self::new(
            404,
            40406,
            format!("Subject '{subject}' Version {version} was soft deleted.Set permanent=true to delete permanently"),
        )
    }
    pub fn version_not_soft_deleted(subject: &str, version: i32) -> Self {
        Self::new(
            404,
            40407,
            format!("Subject '{subject}' Version {version} was not deleted first before being permanently deleted"),
        )
    }
    pub fn subject_compat_not_configured(subject: &str) -> Self {
        Self::new(
            404,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )
    }
    pub fn subject_mode_not_configured(subject: &str) -> Self {
        Self::new(
            404,
            40409,
            format!("Subject '{subject}' does not have subject-level mode configured"),
        )
    }
    pub fn incompatible(messages: &[String]) -> Self {
        Self::new(
            409,
            409,
            format!(
                "Schema being registered is incompatible with an earlier schema for subject; details: [{}]",
                messages.join(", ")
            ),
        )
    }
    pub fn invalid_schema(why: impl std::fmt::Display) -> Self {
        Self::new(422, 42201, format!("Invalid schema: {why}"))
    }
    pub fn invalid_version(version: &str) -> Self {
        Self::new(
            422,
            42202,
            format!(
                "The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
            ),
        )
    }
    pub fn invalid_compatibility_level(level: &str) -> Self {
        Self::new(
            422,
            42203,
            format!(
                "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive; got '{level}'"
            ),
        )
    }
    pub fn invalid_mode(mode: &str) -> Self {
        Self::new(
            422,
            42204,
            format!("Invalid mode. Valid values are READWRITE, READONLY, READONLY_OVERRIDE and IMPORT; got '{mode}'"),
        )
    }
    pub fn operation_not_permitted(why: impl Into<String>) -> Self {
        Self::new(422, 42205, why)
    }
    pub fn reference_exists(subject: &str, version: i32) -> Self {
        Self::new(
            422,
            42206,
            format!("One or more references exist to the schema {{subject={subject},version={version}}}."),
        )
    }
    pub fn not_found() -> Self {
        Self::new(404, 404, "HTTP 404 Not Found")
    }
    /// Confluent's authorization error (RBAC and ACL authorizers answer 403, 40301).
    pub fn forbidden(why: impl Into<String>) -> Self {
        Self::new(403, 40301, why)
    }
    pub fn bad_request(why: impl Into<String>) -> Self {
        Self::new(422, 42200, why)
    }
    pub fn store(e: impl std::fmt::Display) -> Self {
        Self::new(500, 50001, format!("Error in the backend data store - {e}"))
    }
}

impl From<sqlx::Error> for RegistryError {
    fn from(e: sqlx::Error) -> Self {
        Self::store(e)
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
