//! Errors returned by the broker, named after the Kafka error code.

use std::fmt;

use kafka_protocol::error::{ParseResponseErrorCode, ResponseError};

/// An error code returned by the broker, with the operation it answered.
///
/// It is carried inside `anyhow::Error`; use `err.downcast_ref::<KafkaError>()`
/// to look at the code (for example to treat `TopicAlreadyExists` as success).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaError {
    /// What the client was doing, e.g. `create topic "orders"`.
    pub context: String,
    /// The error the broker returned.
    pub error: ResponseError,
    /// The broker's free-text message, if it sent one.
    pub message: Option<String>,
}

impl KafkaError {
    /// The numeric Kafka error code.
    pub fn code(&self) -> i16 {
        self.error.code()
    }

    /// Whether Kafka defines this error as retriable.
    pub fn is_retriable(&self) -> bool {
        self.error.is_retriable()
    }
}

impl fmt::Display for KafkaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ({}, error code {})",
            self.context,
            screaming_snake(&self.error),
            self.error,
            self.error.code()
        )?;
        if let Some(m) = self.message.as_deref().filter(|m| !m.is_empty()) {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

impl std::error::Error for KafkaError {}

/// `TopicAlreadyExists` -> `TOPIC_ALREADY_EXISTS`, the spelling used by the Java
/// client and the Kafka protocol guide.
fn screaming_snake(e: &ResponseError) -> String {
    let name = e.to_string();
    if let ResponseError::Unknown(_) = e {
        return "UNKNOWN".to_string();
    }
    let mut out = String::with_capacity(name.len() + 8);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Turn a Kafka error code into `Err(KafkaError)` (wrapped in anyhow), or `Ok(())` for 0.
pub fn check(code: i16, message: Option<&str>, context: impl FnOnce() -> String) -> anyhow::Result<()> {
    match code.err() {
        None => Ok(()),
        Some(error) => Err(KafkaError {
            context: context(),
            error,
            message: message.map(str::to_string),
        }
        .into()),
    }
}

/// The `ResponseError` inside an anyhow error, if it came from the broker.
pub fn response_error(err: &anyhow::Error) -> Option<ResponseError> {
    err.downcast_ref::<KafkaError>().map(|e| e.error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kafka_error() {
        let err = check(36, Some("Topic 'x' already exists."), || "create topic \"x\"".into()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("TOPIC_ALREADY_EXISTS"), "{text}");
        assert!(text.contains("TopicAlreadyExists"), "{text}");
        assert!(text.contains("36"), "{text}");
        assert!(text.contains("already exists."), "{text}");
        assert_eq!(response_error(&err), Some(ResponseError::TopicAlreadyExists));
        assert!(check(0, None, || unreachable!()).is_ok());
    }

    #[test]
    fn unknown_codes_are_still_reported() {
        let err = check(9999, None, || "op".into()).unwrap_err();
        assert!(err.to_string().contains("9999"), "{err}");
    }
}
