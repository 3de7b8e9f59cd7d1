//! Authentication hook: who may connect.

use std::collections::HashMap;

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
