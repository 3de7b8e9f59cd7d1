//! One SASL authentication on a connection: PLAIN (RFC 4616) or SCRAM, against the
//! user store. PLAIN verifies against the stored SCRAM keys, so one store serves both.

use sluice_meta::MetaStore;

use crate::scram::{AuthFailure, ScramMechanism, ScramServer};

/// The mechanisms offered in SaslHandshake, in Kafka's names.
pub const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// Largest SASL token accepted; Kafka's default sasl.server.max.receive.size is 512 KiB,
/// but no PLAIN or SCRAM message comes near 4 KiB.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// What a step of the exchange gives back.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this challenge and wait for the client's next token.
    Continue(Vec<u8>),
    /// Authenticated as this user; send the final bytes.
    Done { user: String, reply: Vec<u8> },
}

#[derive(Debug)]
enum Exchange {
    Plain { done: bool },
    Scram(ScramServer, ScramMechanism),
}

#[derive(Debug)]
pub struct Sasl {
    exchange: Exchange,
}

impl Sasl {
    /// A new exchange for a mechanism offered in SaslHandshake, or None.
    pub fn new(mechanism: &str) -> Option<Self> {
        let exchange = match mechanism {
            "PLAIN" => Exchange::Plain { done: false },
            other => {
                let m = ScramMechanism::parse(other)?;
                Exchange::Scram(ScramServer::new(m), m)
            }
        };
        Some(Self { exchange })
    }

    /// Handles the client's next token.
    pub async fn step(&mut self, token: &[u8], users: &MetaStore) -> Result<Step, AuthFailure> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthFailure(format!("SASL token of {} bytes is too large", token.len())));
        }
        match &mut self.exchange {
            Exchange::Plain { done } => {
                if std::mem::replace(done, true) {
                    return Err(AuthFailure("unexpected SASL/PLAIN token".into()));
                }
                let user = plain(token, users).await?;
                Ok(Step::Done {
                    user,
                    reply: Vec::new(),
                })
            }
            Exchange::Scram(server, m) => {
                if server.awaits_first() {
                    let user = ScramServer::user_of(token)?;
                    let cred = lookup(users, &user)
                        .await?
                        .into_iter()
                        .find(|c| c.mechanism == m.name());
                    Ok(Step::Continue(server.first(token, cred.as_ref())?))
                } else {
                    let (user, reply) = server.finish(token)?;
                    Ok(Step::Done { user, reply })
                }
            }
        }
    }
}

/// The user a failed token claimed to be, for the audit log.
pub fn claimed_user(mechanism: &str, token: &[u8]) -> Option<String> {
    match mechanism {
        "PLAIN" => parse_plain(token).ok().map(|(_, user, _)| user.to_string()),
        _ => ScramServer::user_of(token).ok(),
    }
}

async fn lookup(users: &MetaStore, user: &str) -> Result<Vec<sluice_meta::ScramRow>, AuthFailure> {
    users.scram_for(user).await.map_err(|e| {
        tracing::warn!(error = %format!("{e:#}"), "reading SCRAM credentials failed");
        AuthFailure("the user store is unavailable".into())
    })
}

/// PLAIN's message: [authzid] NUL authcid NUL passwd. Returns the user.
async fn plain(token: &[u8], users: &MetaStore) -> Result<String, AuthFailure> {
    let (authzid, user, password) = parse_plain(token)?;
    if !authzid.is_empty() && authzid != user {
        return Err(AuthFailure(
            "SASL/PLAIN authorization id must be empty or the user".into(),
        ));
    }
    let creds = lookup(users, user).await?;
    if !ScramMechanism::verify_any(&creds, password) {
        return Err(AuthFailure(
            "Authentication failed: Invalid username or password".into(),
        ));
    }
    Ok(user.to_string())
}

fn parse_plain(token: &[u8]) -> Result<(&str, &str, &str), AuthFailure> {
    let bad = || AuthFailure("invalid SASL/PLAIN message".into());
    let text = std::str::from_utf8(token).map_err(|_| bad())?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(user), Some(password), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if user.is_empty() || password.is_empty() {
        return Err(bad());
    }
    Ok((authzid, user, password))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_messages_have_three_parts() {
        assert_eq!(parse_plain(b"\0alice\0pw").unwrap(), ("", "alice", "pw"));
        assert_eq!(parse_plain(b"alice\0alice\0pw").unwrap(), ("alice", "alice", "pw"));
        for bad in [&b"alice\0pw"[..], b"\0\0pw", b"\0alice\0", b"\0a\0b\0c", b"\xff\0a\0b"] {
            assert!(parse_plain(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_plain_tokens_never_panic(token in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = parse_plain(&token);
        }
    }
}
