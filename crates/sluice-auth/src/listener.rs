//! Listener addresses with schemes: `PLAINTEXT://`, `SSL://`, `SASL_PLAINTEXT://` and
//! `SASL_SSL://` for Kafka (the scheme is also the listener's name, as in Kafka's default
//! listener map), and `plain://`/`tls://` pairs such as `mqtt://`/`mqtts://` elsewhere.

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Self::Plaintext,
            "SSL" => Self::Ssl,
            "SASL_PLAINTEXT" => Self::SaslPlaintext,
            "SASL_SSL" => Self::SaslSsl,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }

    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// One Kafka listener: its protocol and `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaListener {
    pub protocol: SecurityProtocol,
    pub address: String,
}

impl KafkaListener {
    pub fn url(&self) -> String {
        format!("{}://{}", self.protocol.name(), self.address)
    }
}

/// Parses `--kafka-listen` or `--advertise`: a comma-separated list of
/// `[PROTOCOL://]host:port`; a bare address is PLAINTEXT. Protocols may not repeat.
pub fn parse_kafka_listeners(spec: &str) -> Result<Vec<KafkaListener>> {
    let mut out: Vec<KafkaListener> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (protocol, address) = match part.split_once("://") {
            Some((scheme, addr)) => (
                SecurityProtocol::parse(scheme).with_context(|| {
                    format!("unknown listener protocol {scheme:?} (PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL)")
                })?,
                addr,
            ),
            None => (SecurityProtocol::Plaintext, part),
        };
        check_address(address)?;
        if out.iter().any(|l| l.protocol == protocol) {
            bail!("listener protocol {} given twice in {spec:?}", protocol.name());
        }
        out.push(KafkaListener {
            protocol,
            address: address.to_string(),
        });
    }
    if out.is_empty() {
        bail!("no listener in {spec:?}");
    }
    Ok(out)
}

/// Parses an address that may carry `plain_scheme://` or `tls_scheme://`: (TLS?, host:port).
pub fn parse_url(spec: &str, plain_scheme: &str, tls_scheme: &str) -> Result<(bool, String)> {
    let (tls, address) = match spec.split_once("://") {
        Some((s, addr)) if s.eq_ignore_ascii_case(plain_scheme) => (false, addr),
        Some((s, addr)) if s.eq_ignore_ascii_case(tls_scheme) => (true, addr),
        Some((s, _)) => bail!("unknown scheme {s:?} in {spec:?} ({plain_scheme}:// or {tls_scheme}://)"),
        None => (false, spec),
    };
    check_address(address)?;
    Ok((tls, address.to_string()))
}

fn check_address(address: &str) -> Result<()> {
    reachable(address).map(drop)
}

/// (host, port) of an address that clients can reach: a wildcard host becomes 127.0.0.1.
pub fn reachable(address: &str) -> Result<(String, i32)> {
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("address {address:?} is not HOST:PORT"))?;
    let port: u16 = port.parse().with_context(|| format!("bad port in {address:?}"))?;
    let host = match host.trim_matches(['[', ']']) {
        "0.0.0.0" | "::" | "" => "127.0.0.1",
        h => h,
    };
    Ok((host.to_string(), i32::from(port)))
}

/// The endpoint of listener `name` in a broker's listener list (`PROTOCOL://host:port,...`).
pub fn endpoint_of(listeners: &str, name: &str) -> Option<(String, i32)> {
    listeners.split(',').find_map(|l| {
        let (scheme, addr) = l.split_once("://")?;
        if !scheme.eq_ignore_ascii_case(name) {
            return None;
        }
        reachable(addr).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_parse_with_and_without_schemes() {
        let ls = parse_kafka_listeners("127.0.0.1:9092, SASL_SSL://0.0.0.0:9093,ssl://h:9094").unwrap();
        let got: Vec<String> = ls.iter().map(KafkaListener::url).collect();
        assert_eq!(
            got,
            ["PLAINTEXT://127.0.0.1:9092", "SASL_SSL://0.0.0.0:9093", "SSL://h:9094"]
        );
        assert!(parse_kafka_listeners("PLAINTEXT://a:1,b:2").is_err(), "PLAINTEXT twice");
        assert!(parse_kafka_listeners("KERBEROS://a:1").is_err());
        assert!(parse_kafka_listeners("SSL://a").is_err());
        assert!(parse_kafka_listeners("").is_err());
    }

    #[test]
    fn urls_take_their_pair_of_schemes() {
        assert_eq!(
            parse_url("mqtts://0.0.0.0:8883", "mqtt", "mqtts").unwrap(),
            (true, "0.0.0.0:8883".into())
        );
        assert_eq!(parse_url("h:1883", "mqtt", "mqtts").unwrap(), (false, "h:1883".into()));
        assert!(parse_url("https://h:1", "mqtt", "mqtts").is_err());
    }

    #[test]
    fn endpoints_are_found_by_listener_name() {
        let l = "PLAINTEXT://0.0.0.0:9092,SASL_SSL://broker.example:9093";
        assert_eq!(endpoint_of(l, "SASL_SSL"), Some(("broker.example".into(), 9093)));
        assert_eq!(endpoint_of(l, "PLAINTEXT"), Some(("127.0.0.1".into(), 9092)));
        assert_eq!(endpoint_of(l, "SSL"), None);
        assert_eq!(endpoint_of("", "PLAINTEXT"), None);
    }
}
