//! Principals from client certificates: the subject as an RFC 2253 distinguished name
//! (most specific first, as Java's X500Principal prints it), mapped by Kafka's
//! `ssl.principal.mapping.rules`: `DEFAULT`, or `RULE:pattern/replacement/[LU]`, tried in order.

use anyhow::{bail, Context, Result};
use regex::Regex;
use x509_parser::prelude::*;

#[derive(Debug, Clone)]
enum Rule {
    Default,
    Replace {
        pattern: Regex,
        replacement: String,
        case: Option<char>,
    },
}

/// Parsed `ssl.principal.mapping.rules`.
#[derive(Debug, Clone)]
pub struct PrincipalRules(Vec<Rule>);

impl Default for PrincipalRules {
    fn default() -> Self {
        Self(vec![Rule::Default])
    }
}

/// Reads up to an unescaped '/', returning (text with `\/` unescaped, rest after the '/').
fn until_slash(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, '/')) => out.push('/'),
                Some((_, other)) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            },
            '/' => return Some((out, &s[i + 1..])),
            c => out.push(c),
        }
    }
    None
}

impl PrincipalRules {
    pub fn parse(spec: &str) -> Result<Self> {
        let mut rules = Vec::new();
        let mut rest = spec.trim();
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("DEFAULT") {
                rules.push(Rule::Default);
                rest = r;
            } else if let Some(r) = rest.strip_prefix("RULE:") {
                let (pattern, r) = until_slash(r).with_context(|| format!("rule without replacement in {spec:?}"))?;
                let (replacement, r) = until_slash(r).with_context(|| format!("rule not closed by '/' in {spec:?}"))?;
                let (case, r) = match r.chars().next() {
                    Some(c @ ('L' | 'U')) => (Some(c), &r[1..]),
                    _ => (None, r),
                };
                let pattern = Regex::new(&format!("^(?:{pattern})$"))
                    .with_context(|| format!("invalid pattern in principal rule {pattern:?}"))?;
                rules.push(Rule::Replace {
                    pattern,
                    replacement,
                    case,
                });
                rest = r;
            } else {
                bail!(
                    "invalid ssl.principal.mapping.rules {spec:?}: expected DEFAULT or RULE:pattern/replacement/[LU]"
                );
            }
            rest = rest.trim_start();
            match rest.strip_prefix(',') {
                Some(r) => rest = r.trim_start(),
                None if rest.is_empty() => {}
                None => bail!("invalid ssl.principal.mapping.rules {spec:?}: rules are separated by commas"),
            }
        }
        if rules.is_empty() {
            rules.push(Rule::Default);
        }
        Ok(Self(rules))
    }

    /// The principal name for a distinguished name; the DN itself if no rule matches.
    pub fn map(&self, dn: &str) -> String {
        for rule in &self.0 {
            match rule {
                Rule::Default => return dn.to_string(),
                Rule::Replace {
                    pattern,
                    replacement,
                    case,
                } => {
                    if pattern.is_match(dn) {
                        let name = pattern.replace(dn, replacement.as_str()).into_owned();
                        return match case {
                            Some('L') => name.to_lowercase(),
                            Some('U') => name.to_uppercase(),
                            _ => name,
                        };
                    }
                }
            }
        }
        dn.to_string()
    }
}

/// The subject of a DER certificate as an RFC 2253 string, e.g. `CN=alice,O=acme,C=US`.
pub fn subject_dn(der: &[u8]) -> Result<String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| anyhow::anyhow!("invalid client certificate: {e}"))?;
    let mut rdns = Vec::new();
    for rdn in cert.subject().iter() {
        let attrs: Vec<String> = rdn
            .iter()
            .map(|a| {
                let oid = a.attr_type();
                let key = match oid.to_id_string().as_str() {
                    "2.5.4.3" => "CN".to_string(),
                    "2.5.4.6" => "C".into(),
                    "2.5.4.7" => "L".into(),
                    "2.5.4.8" => "ST".into(),
                    "2.5.4.9" => "STREET".into(),
                    "2.5.4.10" => "O".into(),
                    "2.5.4.11" => "OU".into(),
                    "0.9.2342.19200300.100.1.25" => "DC".into(),
                    "0.9.2342.19200300.100.1.1" => "UID".into(),
                    other => other.to_string(),
                };
                let value = a.as_str().map(escape).unwrap_or_default();
                format!("{key}={value}")
            })
            .collect();
        rdns.push(attrs.join("+"));
    }
    rdns.reverse();
    Ok(rdns.join(","))
}

/// RFC 2253 escaping of an attribute value.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == v.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_map_as_kafka_documents() {
        let rules = PrincipalRules::parse(
            "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/, RULE:^CN=(.*?),OU=(.*?),O=.*$/$1@$2/L, DEFAULT",
        )
        .unwrap();
        assert_eq!(rules.map("CN=kafka-svc,OU=ServiceUsers,O=Unknown"), "kafka-svc");
        assert_eq!(rules.map("CN=Adam,OU=Admin,O=Acme"), "adam@admin");
        assert_eq!(rules.map("CN=x"), "CN=x");
        let upper = PrincipalRules::parse("RULE:^CN=([^,]*).*$/$1/U").unwrap();
        assert_eq!(upper.map("CN=alice,O=acme"), "ALICE");
        assert_eq!(PrincipalRules::default().map("CN=a,O=b"), "CN=a,O=b");
        let slash = PrincipalRules::parse(r"RULE:^CN=(.*)$/svc\/$1/").unwrap();
        assert_eq!(slash.map("CN=a"), "svc/a");
    }

    #[test]
    fn bad_rules_are_refused() {
        for bad in [
            "RULE:^CN=(.*)$",
            "RULE:^CN=(.*)$/$1",
            "NOPE",
            "RULE:(/x/ DEFAULT",
            "DEFAULT DEFAULT",
        ] {
            assert!(PrincipalRules::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_are_escaped() {
        assert_eq!(escape("a,b"), r"a\,b");
        assert_eq!(escape(" x "), r"\ x\ ");
        assert_eq!(escape("#1"), r"\#1");
    }
}
