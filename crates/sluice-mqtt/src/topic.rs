//! MQTT topic names and filters: validation, wildcard matching and shared
//! subscriptions (`$share/<group>/<filter>`).

/// Whether `name` may be published to: non-empty, no wildcards, no NUL.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['+', '#', '\0']) && name.len() <= 65535
}

/// Whether `filter` is a well-formed filter: `#` only as the last level, `+`
/// and `#` only as whole levels.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return false;
        }
        if level.contains('+') && *level != "+" {
            return false;
        }
    }
    true
}

/// Whether topic `name` matches `filter`. Topics starting with `$` are not
/// matched by filters starting with a wildcard (MQTT-4.7.2-1).
pub fn matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A subscription filter, split into its share group (if any) and the filter itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubFilter {
    pub group: Option<String>,
    pub filter: String,
}

impl SubFilter {
    /// Parses `$share/<group>/<filter>` or a plain filter; `None` if malformed.
    pub fn parse(raw: &str) -> Option<Self> {
        if let Some(rest) = raw.strip_prefix("$share/") {
            let (group, filter) = rest.split_once('/')?;
            if group.is_empty() || group.contains(['+', '#']) || !valid_filter(filter) {
                return None;
            }
            return Some(Self {
                group: Some(group.to_string()),
                filter: filter.to_string(),
            });
        }
        valid_filter(raw).then(|| Self {
            group: None,
            filter: raw.to_string(),
        })
    }

    /// The filter as the client wrote it.
    pub fn raw(&self) -> String {
        match &self.group {
            Some(g) => format!("$share/{g}/{}", self.filter),
            None => self.filter.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_whole_levels() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("+/+", "/x"));
        assert!(!matches("+", "a/b"));
        assert!(!matches("#", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn filters_and_names_are_validated() {
        assert!(valid_filter("a/+/#"));
        assert!(!valid_filter("a/#/b"));
        assert!(!valid_filter("a/b+"));
        assert!(!valid_filter(""));
        assert!(valid_name("a/b"));
        assert!(!valid_name("a/+"));
        assert!(!valid_name(""));
    }

    #[test]
    fn shared_subscriptions_parse() {
        let s = SubFilter::parse("$share/g1/cars/+/cmd").unwrap();
        assert_eq!(s.group.as_deref(), Some("g1"));
        assert_eq!(s.filter, "cars/+/cmd");
        assert_eq!(s.raw(), "$share/g1/cars/+/cmd");
        assert!(SubFilter::parse("$share/g1").is_none());
        assert!(SubFilter::parse("$share//a").is_none());
        assert_eq!(SubFilter::parse("a/#").unwrap().group, None);
    }
}
