//! MQTT topic names and filters: validation, wildcard matching and shared
//! subscriptions (`$share/<group>/<filter>`), and the tree of filters routing looks
//! topics up in.

use std::collections::HashMap;

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

/// Topic filters, each with a value, kept as a tree of their levels. The filters matching a
/// topic are found by walking the topic's levels (and the `+` and `#` branches), so routing
/// a publish costs in proportion to its levels, not to the number of filters.
#[derive(Debug)]
pub struct FilterTree<V> {
    root: Node<V>,
}

#[derive(Debug)]
struct Node<V> {
    children: HashMap<String, Node<V>>,
    /// The filter ending at this node, and its value.
    value: Option<(String, V)>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            value: None,
        }
    }
}

impl<V> Default for FilterTree<V> {
    fn default() -> Self {
        Self { root: Node::default() }
    }
}

impl<V> FilterTree<V> {
    /// The value of `filter`, inserted with `make` if the filter is new.
    pub fn get_or_insert_with(&mut self, filter: &str, make: impl FnOnce() -> V) -> &mut V {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.to_string()).or_default();
        }
        &mut node.value.get_or_insert_with(|| (filter.to_string(), make())).1
    }

    pub fn get(&self, filter: &str) -> Option<&V> {
        let mut node = &self.root;
        for level in filter.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref().map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, filter: &str) -> Option<&mut V> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.get_mut(level)?;
        }
        node.value.as_mut().map(|(_, v)| v)
    }

    /// Removes `filter` and the branches it leaves empty.
    pub fn remove(&mut self, filter: &str) -> Option<V> {
        let levels: Vec<&str> = filter.split('/').collect();
        remove_at(&mut self.root, &levels)
    }

    /// Every filter with its value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        let mut stack = vec![&self.root];
        std::iter::from_fn(move || {
            while let Some(node) = stack.pop() {
                stack.extend(node.children.values());
                if let Some((f, v)) = &node.value {
                    return Some((f.as_str(), v));
                }
            }
            None
        })
    }

    /// Calls `f` with each filter matching topic `name`, and its value.
    pub fn for_each_match<'a>(&'a self, name: &str, mut f: impl FnMut(&'a str, &'a V)) {
        if self.root.children.is_empty() {
            return;
        }
        let levels: Vec<&str> = name.split('/').collect();
        walk(&self.root, &levels, 0, name.starts_with('$'), &mut f);
    }

    /// Whether any filter matches topic `name`.
    pub fn any_match(&self, name: &str) -> bool {
        let mut any = false;
        self.for_each_match(name, |_, _| any = true);
        any
    }
}

/// Visits the filters under `node` matching `levels[i..]`. Wildcards at the first level do
/// not match topics starting with `$` (MQTT-4.7.2-1).
fn walk<'a, V>(node: &'a Node<V>, levels: &[&str], i: usize, dollar: bool, f: &mut impl FnMut(&'a str, &'a V)) {
    let wildcards = i > 0 || !dollar;
    if wildcards {
        // `#` matches the rest, including no level at all ("a/#" matches "a").
        if let Some((k, v)) = node.children.get("#").and_then(|n| n.value.as_ref()) {
            f(k, v);
        }
    }
    let Some(level) = levels.get(i) else {
        if let Some((k, v)) = &node.value {
            f(k, v);
        }
        return;
    };
    if let Some(child) = node.children.get(*level) {
        walk(child, levels, i + 1, dollar, f);
    }
    if wildcards {
        if let Some(child) = node.children.get("+") {
            walk(child, levels, i + 1, dollar, f);
        }
    }
}

fn remove_at<V>(node: &mut Node<V>, levels: &[&str]) -> Option<V> {
    let Some((first, rest)) = levels.split_first() else {
        return node.value.take().map(|(_, v)| v);
    };
    let child = node.children.get_mut(*first)?;
    let removed = remove_at(child, rest);
    if child.value.is_none() && child.children.is_empty() {
        node.children.remove(*first);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every filter and topic of up to three levels over a small alphabet: the tree finds
    /// exactly the filters `matches` accepts, also after half of them are removed, and
    /// removing the rest leaves it empty.
    #[test]
    fn the_filter_tree_agrees_with_matches() {
        // Every sequence of one to three levels over `alphabet`.
        fn words(alphabet: &[&str]) -> Vec<String> {
            let mut level: Vec<String> = alphabet.iter().map(|a| a.to_string()).collect();
            let mut out = level.clone();
            for _ in 1..3 {
                level = level
                    .iter()
                    .flat_map(|w| alphabet.iter().map(move |a| format!("{w}/{a}")))
                    .collect();
                out.extend(level.iter().cloned());
            }
            out
        }
        let filters: Vec<String> = words(&["a", "b", "", "$s", "+", "#"])
            .into_iter()
            .filter(|f| valid_filter(f))
            .collect();
        let topics: Vec<String> = words(&["a", "b", "", "$s"])
            .into_iter()
            .filter(|t| valid_name(t))
            .collect();
        assert!(
            filters.len() > 100 && topics.len() > 50,
            "{} {}",
            filters.len(),
            topics.len()
        );
        let mut tree = FilterTree::default();
        for f in &filters {
            *tree.get_or_insert_with(f, || 0) += 1;
        }
        let check = |tree: &FilterTree<i32>, live: &[&String]| {
            for t in &topics {
                let mut got = Vec::new();
                tree.for_each_match(t, |f, v| {
                    assert_eq!(*v, 1);
                    got.push(f.to_string());
                });
                got.sort();
                let mut want: Vec<String> = live.iter().filter(|f| matches(f, t)).map(|f| f.to_string()).collect();
                want.sort();
                assert_eq!(got, want, "topic {t:?}");
                assert_eq!(tree.any_match(t), !want.is_empty());
            }
            let mut all: Vec<&str> = tree.iter().map(|(f, _)| f).collect();
            all.sort();
            let mut want: Vec<&str> = live.iter().map(|f| f.as_str()).collect();
            want.sort();
            assert_eq!(all, want);
        };
        check(&tree, &filters.iter().collect::<Vec<_>>());
        let (gone, kept): (Vec<&String>, Vec<&String>) = filters.iter().partition(|f| f.len() % 2 == 0);
        assert!(!gone.is_empty() && !kept.is_empty());
        for f in &gone {
            assert_eq!(tree.remove(f), Some(1));
            assert_eq!(tree.remove(f), None);
        }
        check(&tree, &kept);
        for f in &kept {
            assert_eq!(tree.get_mut(f), Some(&mut 1));
            tree.remove(f);
        }
        assert!(tree.root.children.is_empty());
    }

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
