//! Authentication hook: who may connect. The built-in authenticators are the configured
//! `mqtt.users` list and the Kafka listeners' SCRAM users in the metadata store.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sluice_auth::ScramMechanism;
use sluice_meta::{MetaStore, ScramRow};

/// What a CONNECT carries for authentication.
pub struct Credentials<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
}

/// Decides whether a client may connect, and what it may subscribe to.
/// Implement this to plug in another user database; [`StaticUsers`] is the
/// built-in one.
pub trait Authenticator: Send + Sync {
    fn authenticate(&self, creds: &Credentials<'_>) -> bool;

    /// Whether `client_id` may subscribe to `filter` (as written, `$share/` included).
    fn may_subscribe(&self, _client_id: &str, _username: Option<&str>, _filter: &str) -> bool {
        true
    }
}

/// A fixed `user:password` list from the config.
pub struct StaticUsers {
    users: HashMap<String, String>,
    allow_anonymous: bool,
    deny_subscribe: Vec<String>,
}

impl StaticUsers {
    /// Parses `user:password` entries; an entry without `:` is an error.
    pub fn new(entries: &[String], allow_anonymous: bool) -> anyhow::Result<Self> {
        let mut users = HashMap::new();
        for e in entries {
            let (u, p) = e
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("mqtt.users entry {e:?} is not user:password"))?;
            users.insert(u.to_string(), p.to_string());
        }
        Ok(Self {
            users,
            allow_anonymous,
            deny_subscribe: Vec::new(),
        })
    }

    /// Topic filters nobody may subscribe to.
    pub fn deny_subscribe(mut self, filters: &[String]) -> Self {
        self.deny_subscribe = filters.to_vec();
        self
    }
}

impl Authenticator for StaticUsers {
    fn authenticate(&self, creds: &Credentials<'_>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        match creds.username {
            None => self.allow_anonymous && creds.password.is_none(),
            Some(u) => match (self.users.get(u), creds.password) {
                (Some(want), Some(got)) => want.as_bytes() == got,
                _ => false,
            },
        }
    }

    fn may_subscribe(&self, _client_id: &str, _username: Option<&str>, filter: &str) -> bool {
        !self.deny_subscribe.iter().any(|d| d == filter)
    }
}

/// The Kafka listeners' SCRAM users, checked before the configured authenticator: a
/// username with a stored credential must give its password (verified as SASL/PLAIN is,
/// against the salted keys). Other usernames and anonymous clients are the inner
/// authenticator's to decide, except that a gateway with no `mqtt.users` and
/// `mqtt.allow-anonymous = false` admits stored users only.
pub struct StoreUsers {
    inner: Arc<dyn Authenticator>,
    users: Arc<RwLock<HashMap<String, Vec<ScramRow>>>>,
    stored_only: bool,
}

/// How often the stored users are re-read: a new or deleted user takes effect within it.
pub const STORE_REFRESH: Duration = Duration::from_secs(1);

impl StoreUsers {
    /// Wraps `inner`, reading the users from `meta` now and every [`STORE_REFRESH`].
    pub async fn start(meta: MetaStore, inner: Arc<dyn Authenticator>, stored_only: bool) -> anyhow::Result<Self> {
        let users = Arc::new(RwLock::new(load(&meta).await?));
        let weak = Arc::downgrade(&users);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(STORE_REFRESH).await;
                let Some(users) = weak.upgrade() else { return };
                match load(&meta).await {
                    Ok(fresh) => *users.write().unwrap() = fresh,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "reading users for MQTT failed; keeping the last ones")
                    }
                }
            }
        });
        Ok(Self {
            inner,
            users,
            stored_only,
        })
    }
}

async fn load(meta: &MetaStore) -> anyhow::Result<HashMap<String, Vec<ScramRow>>> {
    let mut by_user: HashMap<String, Vec<ScramRow>> = HashMap::new();
    for row in meta.list_scram().await? {
        by_user.entry(row.user.clone()).or_default().push(row);
    }
    Ok(by_user)
}

impl Authenticator for StoreUsers {
    fn authenticate(&self, creds: &Credentials<'_>) -> bool {
        let stored = creds.username.and_then(|u| self.users.read().unwrap().get(u).cloned());
        match (stored, creds.password) {
            (Some(rows), Some(password)) => {
                let Ok(password) = std::str::from_utf8(password) else {
                    return false;
                };
                ScramMechanism::verify_any(&rows, password)
            }
            (Some(_), None) => false,
            (None, _) if self.stored_only => false,
            (None, _) => self.inner.authenticate(creds),
        }
    }

    fn may_subscribe(&self, client_id: &str, username: Option<&str>, filter: &str) -> bool {
        self.inner.may_subscribe(client_id, username, filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds<'a>(u: Option<&'a str>, p: Option<&'a [u8]>) -> Credentials<'a> {
        Credentials {
            client_id: "c",
            username: u,
            password: p,
        }
    }

    #[test]
    fn static_users_check_passwords() {
        let a = StaticUsers::new(&["car:secret".into()], false).unwrap();
        assert!(a.authenticate(&creds(Some("car"), Some(b"secret"))));
        assert!(!a.authenticate(&creds(Some("car"), Some(b"wrong"))));
        assert!(!a.authenticate(&creds(Some("bus"), Some(b"secret"))));
        assert!(!a.authenticate(&creds(None, None)));
        let open = StaticUsers::new(&[], false).unwrap();
        assert!(open.authenticate(&creds(None, None)));
        assert!(StaticUsers::new(&["nocolon".into()], true).is_err());
        let deny = open.deny_subscribe(&["secret/#".into()]);
        assert!(!deny.may_subscribe("c", None, "secret/#"));
        assert!(deny.may_subscribe("c", None, "public/#"));
    }
}
