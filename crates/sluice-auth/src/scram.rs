//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677), as Kafka uses them (KIP-84):
//! deriving the stored credential from a password, and the server's side of the exchange.

use std::num::NonZeroU32;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use sluice_meta::ScramRow;

/// Kafka's bounds on SCRAM iterations (ScramMechanism.minIterations, and the largest
/// AlterUserScramCredentials accepts).
pub const MIN_ITERATIONS: u32 = 4096;
pub const MAX_ITERATIONS: u32 = 16384;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramMechanism {
    Sha256,
    Sha512,
}

impl ScramMechanism {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "SCRAM-SHA-256" => Some(Self::Sha256),
            "SCRAM-SHA-512" => Some(Self::Sha512),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "SCRAM-SHA-256",
            Self::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism's number in KIP-554's DescribeUserScramCredentials (ScramMechanism.type).
    pub fn kafka_type(self) -> i8 {
        match self {
            Self::Sha256 => 1,
            Self::Sha512 => 2,
        }
    }

    pub fn from_kafka_type(t: i8) -> Option<Self> {
        match t {
            1 => Some(Self::Sha256),
            2 => Some(Self::Sha512),
            _ => None,
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            Self::Sha256 => hmac::HMAC_SHA256,
            Self::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Self::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Self::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha256 => &digest::SHA256,
            Self::Sha512 => &digest::SHA512,
        }
    }

    fn len(self) -> usize {
        self.digest().output_len()
    }

    /// Hi(password, salt, i) of RFC 5802: the salted password.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0; self.len()];
        let n = NonZeroU32::new(iterations.max(1)).expect("at least one iteration");
        pbkdf2::derive(self.pbkdf2(), n, salt, password, &mut out);
        out
    }

    fn sign(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(self.hmac(), key), data).as_ref().to_vec()
    }

    /// StoredKey and ServerKey from a salted password.
    pub fn keys(self, salted: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let client_key = self.sign(salted, b"Client Key");
        let stored = digest::digest(self.digest(), &client_key).as_ref().to_vec();
        (stored, self.sign(salted, b"Server Key"))
    }

    /// The stored credential for `user` from a salted password (what KIP-554 clients send).
    pub fn credential_from_salted(self, user: &str, salt: &[u8], salted: &[u8], iterations: u32) -> ScramRow {
        let (stored, server) = self.keys(salted);
        ScramRow {
            user: user.to_string(),
            mechanism: self.name().to_string(),
            salt: B64.encode(salt),
            stored_key: B64.encode(stored),
            server_key: B64.encode(server),
            iterations: iterations as i32,
        }
    }

    /// A new stored credential for `user` with a random salt.
    pub fn credential(self, user: &str, password: &str, iterations: u32) -> ScramRow {
        let salt = random_bytes(32);
        let salted = self.salted_password(password.as_bytes(), &salt, iterations);
        self.credential_from_salted(user, &salt, &salted, iterations)
    }

    /// Whether `password` is the one any of a user's credentials was made from (PLAIN,
    /// MQTT and HTTP Basic logins).
    pub fn verify_any(rows: &[ScramRow], password: &str) -> bool {
        rows.iter()
            .any(|r| Self::parse(&r.mechanism).is_some_and(|m| m.verify_password(r, password)))
    }

    /// Whether `password` is the one `row` was made from (for PLAIN).
    pub fn verify_password(self, row: &ScramRow, password: &str) -> bool {
        let (Ok(salt), Ok(stored)) = (B64.decode(&row.salt), B64.decode(&row.stored_key)) else {
            return false;
        };
        let salted = self.salted_password(password.as_bytes(), &salt, row.iterations.max(1) as u32);
        let (candidate, _) = self.keys(&salted);
        constant_time_eq(&candidate, &stored)
    }
}

pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = vec![0; n];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .expect("the system random source works");
    out
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why an exchange failed. The text goes to the client as SaslAuthenticate's error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure(pub String);

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The server's side of one SCRAM exchange: client-first, then client-final.
#[derive(Debug)]
pub struct ScramServer {
    mechanism: ScramMechanism,
    state: State,
}

#[derive(Debug)]
enum State {
    Initial,
    /// After server-first: what client-final is checked against.
    SentFirst {
        user: String,
        nonce: String,
        gs2_header: String,
        /// client-first-message-bare "," server-first-message
        auth_prefix: String,
        stored_key: Vec<u8>,
        server_key: Vec<u8>,
    },
    Done,
}

/// The client-first message's parts: (gs2 header, client-first-bare, user, client nonce).
fn parse_client_first(msg: &str) -> Option<(String, String, String, String)> {
    // gs2-header: cbind-flag "," [authzid] ","
    let (flag, rest) = msg.split_once(',')?;
    if !matches!(flag, "n" | "y") {
        return None; // channel binding ("p=") is not offered
    }
    let (authzid, bare) = rest.split_once(',')?;
    let gs2_header = format!("{flag},{authzid},");
    let mut attrs = bare.split(',');
    let user = attrs.next()?.strip_prefix("n=")?;
    let nonce = attrs.next()?.strip_prefix("r=")?;
    if nonce.is_empty() || !nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') {
        return None;
    }
    let user = decode_saslname(user)?;
    if let Some(z) = authzid.strip_prefix("a=") {
        // Kafka allows an authorization id only when it names the authenticated user.
        if decode_saslname(z)? != user {
            return None;
        }
    } else if !authzid.is_empty() {
        return None;
    }
    Some((gs2_header, bare.to_string(), user, nonce.to_string()))
}

/// saslname of RFC 5802: "=2C" is ",", "=3D" is "=", and any other "=" is invalid.
fn decode_saslname(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "2C" => ',',
            "3D" => '=',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    (!out.is_empty()).then_some(out)
}

impl ScramServer {
    pub fn new(mechanism: ScramMechanism) -> Self {
        Self {
            mechanism,
            state: State::Initial,
        }
    }

    /// Whether the next message is client-first.
    pub fn awaits_first(&self) -> bool {
        matches!(self.state, State::Initial)
    }

    fn invalid(&self) -> AuthFailure {
        AuthFailure(format!(
            "Authentication failed during authentication due to invalid credentials with SASL mechanism {}",
            self.mechanism.name()
        ))
    }

    /// The user named in a client-first message, to look the credential up by.
    pub fn user_of(msg: &[u8]) -> Result<String, AuthFailure> {
        let msg = std::str::from_utf8(msg).map_err(|_| AuthFailure("SCRAM message is not UTF-8".into()))?;
        parse_client_first(msg)
            .map(|(_, _, user, _)| user)
            .ok_or_else(|| AuthFailure("invalid SCRAM client-first message".into()))
    }

    /// Answers client-first with server-first, given the user's credential (None when the
    /// user or this mechanism's credential is unknown).
    pub fn first(&mut self, msg: &[u8], credential: Option<&ScramRow>) -> Result<Vec<u8>, AuthFailure> {
        if !matches!(self.state, State::Initial) {
            return Err(AuthFailure("unexpected SCRAM client-first message".into()));
        }
        self.state = State::Done;
        let msg = std::str::from_utf8(msg).map_err(|_| AuthFailure("SCRAM message is not UTF-8".into()))?;
        let (gs2_header, bare, user, client_nonce) =
            parse_client_first(msg).ok_or_else(|| AuthFailure("invalid SCRAM client-first message".into()))?;
        let cred = credential
            .filter(|c| c.user == user && c.mechanism == self.mechanism.name())
            .ok_or_else(|| self.invalid())?;
        let decode = |s: &str| B64.decode(s).map_err(|_| self.invalid());
        let (salt, stored_key, server_key) = (
            decode(&cred.salt)?,
            decode(&cred.stored_key)?,
            decode(&cred.server_key)?,
        );
        let nonce = format!("{client_nonce}{}", B64.encode(random_bytes(18)));
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&salt), cred.iterations);
        self.state = State::SentFirst {
            user,
            nonce,
            gs2_header,
            auth_prefix: format!("{bare},{server_first}"),
            stored_key,
            server_key,
        };
        Ok(server_first.into_bytes())
    }

    /// Checks client-final's proof; on success, the user and the server-final message.
    pub fn finish(&mut self, msg: &[u8]) -> Result<(String, Vec<u8>), AuthFailure> {
        let State::SentFirst {
            user,
            nonce,
            gs2_header,
            auth_prefix,
            stored_key,
            server_key,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(AuthFailure("unexpected SCRAM client-final message".into()));
        };
        let msg = std::str::from_utf8(msg).map_err(|_| AuthFailure("SCRAM message is not UTF-8".into()))?;
        let bad = || AuthFailure("invalid SCRAM client-final message".into());
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or_else(bad)?;
        let mut attrs = without_proof.split(',');
        let binding = attrs.next().and_then(|a| a.strip_prefix("c=")).ok_or_else(bad)?;
        let got_nonce = attrs.next().and_then(|a| a.strip_prefix("r=")).ok_or_else(bad)?;
        if B64.decode(binding).ok().as_deref() != Some(gs2_header.as_bytes()) || got_nonce != nonce {
            return Err(bad());
        }
        let proof = B64.decode(proof).map_err(|_| bad())?;
        let m = self.mechanism;
        if proof.len() != m.len() {
            return Err(self.invalid());
        }
        let auth_message = format!("{auth_prefix},{without_proof}");
        let signature = m.sign(&stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        let candidate = digest::digest(m.digest(), &client_key);
        if !constant_time_eq(candidate.as_ref(), &stored_key) {
            return Err(self.invalid());
        }
        let server_signature = m.sign(&server_key, auth_message.as_bytes());
        Ok((user, format!("v={}", B64.encode(server_signature)).into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A client per RFC 5802, written from the RFC's formulas.
    fn client_final(
        m: ScramMechanism,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
    ) -> (String, Vec<u8>) {
        let mut salt = None;
        let mut iterations = 0;
        let mut nonce = "";
        for a in server_first.split(',') {
            match a.split_at(2) {
                ("r=", v) => nonce = v,
                ("s=", v) => salt = Some(B64.decode(v).unwrap()),
                ("i=", v) => iterations = v.parse().unwrap(),
                _ => {}
            }
        }
        let salted = m.salted_password(password.as_bytes(), &salt.unwrap(), iterations);
        let client_key = m.sign(&salted, b"Client Key");
        let stored = digest::digest(m.digest(), &client_key);
        let without_proof = format!("c={},r={nonce}", B64.encode("n,,"));
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let sig = m.sign(stored.as_ref(), auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let server_sig = m.sign(&m.sign(&salted, b"Server Key"), auth.as_bytes());
        (format!("{without_proof},p={}", B64.encode(proof)), server_sig)
    }

    fn exchange(m: ScramMechanism, stored_password: &str, password: &str) -> Result<String, AuthFailure> {
        let cred = m.credential("al=ice,", stored_password, 4096);
        let bare = "n=al=3Dice=2C,r=fyko+d2lbbFgONRv9qkxdawL";
        let first = format!("n,,{bare}");
        assert_eq!(ScramServer::user_of(first.as_bytes()).unwrap(), "al=ice,");
        let mut server = ScramServer::new(m);
        let server_first = String::from_utf8(server.first(first.as_bytes(), Some(&cred))?).unwrap();
        assert!(server_first.starts_with("r=fyko+d2lbbFgONRv9qkxdawL"));
        let (fin, expected_sig) = client_final(m, password, bare, &server_first);
        let (user, server_final) = server.finish(fin.as_bytes())?;
        assert_eq!(
            String::from_utf8(server_final).unwrap(),
            format!("v={}", B64.encode(expected_sig))
        );
        Ok(user)
    }

    #[test]
    fn the_right_password_authenticates_and_a_wrong_one_does_not() {
        for m in [ScramMechanism::Sha256, ScramMechanism::Sha512] {
            assert_eq!(exchange(m, "pencil", "pencil").unwrap(), "al=ice,");
            let err = exchange(m, "pencil", "pen").unwrap_err();
            assert!(err.0.contains("invalid credentials"), "{err}");
        }
    }

    #[test]
    fn the_rfc_7677_example_derives_the_same_proof() {
        // RFC 7677 section 3: user "user", password "pencil".
        let m = ScramMechanism::Sha256;
        let bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (fin, _) = client_final(m, "pencil", bare, server_first);
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
    }

    #[test]
    fn plain_passwords_verify_against_the_stored_keys() {
        let m = ScramMechanism::Sha512;
        let cred = m.credential("bob", "s3cret", 4096);
        assert!(m.verify_password(&cred, "s3cret"));
        assert!(!m.verify_password(&cred, "s3cre"));
        assert_ne!(
            cred.stored_key,
            m.credential("bob", "s3cret", 4096).stored_key,
            "salts differ"
        );
    }

    #[test]
    fn an_unknown_user_or_replayed_message_fails() {
        let mut server = ScramServer::new(ScramMechanism::Sha256);
        assert!(server.first(b"n,,n=nobody,r=abc", None).is_err());
        assert!(server.finish(b"c=biws,r=abc,p=AAAA").is_err());
        let mut server = ScramServer::new(ScramMechanism::Sha256);
        let other = ScramMechanism::Sha512.credential("u", "p", 4096);
        assert!(
            server.first(b"n,,n=u,r=abc", Some(&other)).is_err(),
            "credential of another mechanism"
        );
        assert!(
            ScramServer::user_of(b"n,a=other,n=u,r=abc").is_err(),
            "authzid of another user"
        );
        assert!(
            ScramServer::user_of(b"p=tls-unique,,n=u,r=abc").is_err(),
            "channel binding"
        );
        assert!(ScramServer::user_of(b"n,,n=u=2X,r=abc").is_err(), "bad saslname escape");
    }

    proptest! {
        #[test]
        fn arbitrary_messages_never_panic(first in proptest::collection::vec(any::<u8>(), 0..200),
                                          fin in proptest::collection::vec(any::<u8>(), 0..200)) {
            let cred = ScramMechanism::Sha256.credential("u", "p", 1);
            let _ = ScramServer::user_of(&first);
            let mut server = ScramServer::new(ScramMechanism::Sha256);
            let _ = server.first(&first, Some(&cred));
            let _ = server.finish(&fin);
        }

        #[test]
        fn structured_client_first_messages_never_panic(user in "[a-z=,2CD3]{0,12}", nonce in "[ -~]{0,12}",
                                                       fin in "[ -~]{0,60}") {
            let cred = ScramMechanism::Sha256.credential("u", "p", 1);
            let mut server = ScramServer::new(ScramMechanism::Sha256);
            let _ = server.first(format!("n,,n={user},r={nonce}").as_bytes(), Some(&cred));
            let _ = server.finish(fin.as_bytes());
        }
    }
}
