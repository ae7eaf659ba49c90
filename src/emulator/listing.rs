//! Paginated tree listings over any sorted key space (bucket maps, repo trees, synthetic
//! buckets), with directories derived from `/` in keys.
//!
//! Keys that share a directory prefix are contiguous in sorted order, so a listing is one
//! forward scan: a directory is emitted at its first key and the scan then jumps past it
//! (to `dir + "0"`, `'0'` being the byte after `'/'`). A page ends with an opaque cursor
//! naming where the next scan resumes, so no page depends on server-side session state.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Bound;

use super::error::{EmulatorError, Result};

/// A sorted set of file keys with values.
pub trait KeySpace {
    type Value: Clone;

    /// Entries in ascending key order starting at `from`.
    fn iter_from<'a>(&'a self, from: Bound<&str>) -> Box<dyn Iterator<Item = (Cow<'a, str>, Self::Value)> + 'a>;

    /// The largest key strictly below `key`.
    fn key_before(&self, key: &str) -> Option<String>;

    /// The value stored at exactly `key`.
    fn get(&self, key: &str) -> Option<Self::Value>;
}

impl<V: Clone> KeySpace for BTreeMap<String, V> {
    type Value = V;

    fn iter_from<'a>(&'a self, from: Bound<&str>) -> Box<dyn Iterator<Item = (Cow<'a, str>, V)> + 'a> {
        Box::new(self.range::<str, _>((from, Bound::Unbounded)).map(|(k, v)| (Cow::Borrowed(k.as_str()), v.clone())))
    }

    fn key_before(&self, key: &str) -> Option<String> {
        self.range::<str, _>((Bound::Unbounded, Bound::Excluded(key))).next_back().map(|(k, _)| k.clone())
    }

    fn get(&self, key: &str) -> Option<V> {
        BTreeMap::get(self, key).cloned()
    }
}

/// One listed entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Item<V> {
    File { path: String, value: V },
    Dir { path: String },
}

/// Which keys a listing covers and how they group into directories.
#[derive(Debug, Clone)]
pub struct Scope {
    /// Keys must start with this.
    scan_prefix: String,
    /// The listed directory, if any: keys under `dir/` are grouped relative to it.
    dir: Option<String>,
    /// Length of the grouping base for keys not under `dir/` (raw-prefix matches).
    fallback_base: usize,
}

impl Scope {
    /// The whole key space.
    pub fn root() -> Self {
        Self { scan_prefix: String::new(), dir: None, fallback_base: 0 }
    }

    /// Exactly the contents of directory `dir` (repo semantics).
    pub fn dir(dir: &str) -> Self {
        Self { scan_prefix: format!("{dir}/"), dir: Some(dir.to_string()), fallback_base: dir.len() + 1 }
    }

    /// Every key starting with the raw string `prefix` (bucket semantics): `a/1` also matches
    /// `a/10`, which is then grouped as a sibling of `a/1` in its parent directory.
    pub fn raw_prefix(prefix: &str) -> Self {
        let fallback_base = prefix.rfind('/').map_or(0, |i| i + 1);
        Self { scan_prefix: prefix.to_string(), dir: Some(prefix.to_string()), fallback_base }
    }

    /// Length of the directory base (trailing `/` included) that `key` is listed relative to.
    fn base_len(&self, key: &str) -> usize {
        match &self.dir {
            Some(d) if key.len() > d.len() && key.starts_with(d.as_str()) && key.as_bytes()[d.len()] == b'/' => {
                d.len() + 1
            }
            _ => self.fallback_base,
        }
    }

    fn contains(&self, key: &str) -> bool {
        key.starts_with(self.scan_prefix.as_str())
    }
}

/// Where the next page resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// At the first key strictly after this one.
    After(String),
    /// At the first key at or after this one.
    From(String),
    /// At this key, skipping the first `skip` entries it produces (recursive listings).
    Within { key: String, skip: usize },
}

impl Cursor {
    pub fn encode(&self) -> String {
        match self {
            Cursor::After(k) => format!("a:{k}"),
            Cursor::From(k) => format!("f:{k}"),
            Cursor::Within { key, skip } => format!("w{skip}:{key}"),
        }
    }

    pub fn decode(s: &str) -> Result<Self> {
        let bad = || EmulatorError::BadRequest(format!("invalid cursor {s:?}"));
        let (tag, key) = s.split_once(':').ok_or_else(bad)?;
        match tag {
            "a" => Ok(Cursor::After(key.to_string())),
            "f" => Ok(Cursor::From(key.to_string())),
            _ => {
                let skip = tag.strip_prefix('w').and_then(|n| n.parse().ok()).ok_or_else(bad)?;
                Ok(Cursor::Within { key: key.to_string(), skip })
            }
        }
    }
}

/// One page of a listing and the cursor of the next page (if any entries remain).
pub fn page<S: KeySpace>(
    space: &S,
    scope: &Scope,
    recursive: bool,
    cursor: Option<&Cursor>,
    limit: usize,
) -> (Vec<Item<S::Value>>, Option<Cursor>) {
    if recursive { page_recursive(space, scope, cursor, limit) } else { page_flat(space, scope, cursor, limit) }
}

fn page_flat<S: KeySpace>(
    space: &S,
    scope: &Scope,
    cursor: Option<&Cursor>,
    limit: usize,
) -> (Vec<Item<S::Value>>, Option<Cursor>) {
    let mut resume = match cursor {
        None => Cursor::From(scope.scan_prefix.clone()),
        Some(Cursor::Within { key, .. }) => Cursor::From(key.clone()),
        Some(c) => c.clone(),
    };
    let mut out = Vec::new();
    while out.len() < limit {
        let next = first_key(space, &resume);
        let Some((key, value)) = next.filter(|(k, _)| scope.contains(k)) else {
            return (out, None);
        };
        let base = scope.base_len(&key);
        match key[base..].find('/') {
            Some(i) => {
                let dir = key[..base + i].to_string();
                resume = Cursor::From(format!("{dir}0"));
                out.push(Item::Dir { path: dir });
            }
            None => {
                resume = Cursor::After(key.clone());
                out.push(Item::File { path: key, value });
            }
        }
    }
    let more = first_key(space, &resume).is_some_and(|(k, _)| scope.contains(&k));
    (out, more.then_some(resume))
}

fn page_recursive<S: KeySpace>(
    space: &S,
    scope: &Scope,
    cursor: Option<&Cursor>,
    limit: usize,
) -> (Vec<Item<S::Value>>, Option<Cursor>) {
    let (mut resume, mut prev, mut skip) = match cursor {
        None => (Cursor::From(scope.scan_prefix.clone()), None, 0),
        Some(Cursor::After(k)) => (Cursor::After(k.clone()), Some(k.clone()), 0),
        Some(Cursor::From(k)) => (Cursor::From(k.clone()), space.key_before(k), 0),
        Some(Cursor::Within { key, skip }) => (Cursor::From(key.clone()), space.key_before(key), *skip),
    };
    // The predecessor only suppresses directories it lies in if it was listed too.
    prev = prev.filter(|p| scope.contains(p));
    let mut out = Vec::new();
    loop {
        let Some((key, value)) = first_key(space, &resume).filter(|(k, _)| scope.contains(k)) else {
            return (out, None);
        };
        let base = scope.base_len(&key);
        let mut items: Vec<Item<S::Value>> = key
            .match_indices('/')
            .map(|(j, _)| j)
            .filter(|&j| j >= base)
            .map(|j| &key[..j])
            .filter(|d| {
                !prev.as_deref().is_some_and(|p| p.len() > d.len() && p.starts_with(d) && p.as_bytes()[d.len()] == b'/')
            })
            .map(|d| Item::Dir { path: d.to_string() })
            .collect();
        items.push(Item::File { path: key.clone(), value });
        let total = items.len();
        for (i, item) in items.into_iter().enumerate().skip(skip) {
            if out.len() == limit {
                return (out, Some(Cursor::Within { key, skip: i }));
            }
            out.push(item);
        }
        debug_assert!(total > 0);
        skip = 0;
        resume = Cursor::After(key.clone());
        prev = Some(key);
        if out.len() == limit {
            let more = first_key(space, &resume).is_some_and(|(k, _)| scope.contains(&k));
            return (out, more.then_some(resume));
        }
    }
}

/// Query parameters shared by paginated listings.
#[derive(Debug, Clone)]
pub struct ListParams {
    pub recursive: bool,
    /// Entries per page: the client's `limit`, capped by the server page size.
    pub limit: usize,
    pub cursor: Option<Cursor>,
}

impl ListParams {
    /// Parses `recursive`, `limit` and `cursor`; other parameters are ignored.
    pub fn parse(query: &std::collections::HashMap<String, String>, page_size: usize) -> Result<Self> {
        let recursive = match query.get("recursive").map(String::as_str) {
            None | Some("false") | Some("0") | Some("") => false,
            Some("true") | Some("1") => true,
            Some(other) => {
                return Err(EmulatorError::BadRequest(format!("recursive must be true or false, got {other:?}")));
            }
        };
        let limit = match query.get("limit") {
            None => page_size,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if n >= 1 => n.min(page_size),
                _ => {
                    return Err(EmulatorError::BadRequest(format!("limit must be a positive integer, got {l:?}")));
                }
            },
        };
        let cursor = query.get("cursor").map(|c| Cursor::decode(c)).transpose()?;
        Ok(Self { recursive, limit, cursor })
    }

    /// The `Link` header value pointing at the page that starts at `next`.
    pub fn next_link(&self, url_without_query: &str, next: &Cursor) -> String {
        format!(
            "<{url_without_query}?recursive={}&limit={}&cursor={}>; rel=\"next\"",
            self.recursive,
            self.limit,
            super::paths::encode_component(&next.encode())
        )
    }
}

fn first_key<S: KeySpace>(space: &S, at: &Cursor) -> Option<(String, S::Value)> {
    let bound = match at {
        Cursor::After(k) => Bound::Excluded(k.as_str()),
        Cursor::From(k) | Cursor::Within { key: k, .. } => Bound::Included(k.as_str()),
    };
    space.iter_from(bound).next().map(|(k, v)| (k.into_owned(), v))
}

/// What a single path is: a file, an implicit directory (some key lies under it), or absent.
pub fn lookup<S: KeySpace>(space: &S, path: &str) -> Option<Item<S::Value>> {
    if let Some(value) = space.get(path) {
        return Some(Item::File { path: path.to_string(), value });
    }
    let under = format!("{path}/");
    let (k, _) = space.iter_from(Bound::Included(under.as_str())).next()?;
    k.starts_with(under.as_str()).then(|| Item::Dir { path: path.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(keys: &[&str]) -> BTreeMap<String, u32> {
        keys.iter().enumerate().map(|(i, k)| (k.to_string(), i as u32)).collect()
    }

    fn names<V>(items: &[Item<V>]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                Item::File { path, .. } => path.clone(),
                Item::Dir { path } => format!("{path}/"),
            })
            .collect()
    }

    fn all_pages(s: &BTreeMap<String, u32>, scope: &Scope, recursive: bool, limit: usize) -> (Vec<String>, usize) {
        let (mut out, mut cursor, mut pages) = (Vec::new(), None, 0);
        loop {
            let (items, next) = page(s, scope, recursive, cursor.as_ref(), limit);
            pages += 1;
            out.extend(names(&items));
            match next {
                Some(c) => cursor = Some(Cursor::decode(&c.encode()).unwrap()),
                None => return (out, pages),
            }
        }
    }

    const KEYS: &[&str] = &["a/1", "a/1/x", "a/1/y/z", "a/10", "a/10/q", "a/1-b", "b", "c/d/e/f"];

    #[test]
    fn flat_listing_groups_directories_at_any_page_size() {
        let s = space(KEYS);
        for limit in 1..6 {
            let (root, _) = all_pages(&s, &Scope::root(), false, limit);
            assert_eq!(root, vec!["a/", "b", "c/"], "limit {limit}");
            let (a1, _) = all_pages(&s, &Scope::dir("a/1"), false, limit);
            assert_eq!(a1, vec!["a/1/x", "a/1/y/"], "limit {limit}");
        }
    }

    #[test]
    fn raw_prefix_also_matches_siblings() {
        let s = space(KEYS);
        let (flat, _) = all_pages(&s, &Scope::raw_prefix("a/1"), false, 2);
        assert_eq!(flat, vec!["a/1", "a/1-b", "a/1/x", "a/1/y/", "a/10", "a/10/"]);
        let (rec, _) = all_pages(&s, &Scope::raw_prefix("a/1"), true, 2);
        assert_eq!(rec, vec!["a/1", "a/1-b", "a/1/x", "a/1/y/", "a/1/y/z", "a/10", "a/10/", "a/10/q"]);
    }

    #[test]
    fn recursive_listing_is_stable_across_page_sizes() {
        let s = space(KEYS);
        let (expected, _) = all_pages(&s, &Scope::root(), true, 100);
        assert_eq!(
            expected,
            vec![
                "a/", "a/1", "a/1-b", "a/1/", "a/1/x", "a/1/y/", "a/1/y/z", "a/10", "a/10/", "a/10/q", "b", "c/",
                "c/d/", "c/d/e/", "c/d/e/f"
            ]
        );
        for limit in 1..8 {
            let (got, pages) = all_pages(&s, &Scope::root(), true, limit);
            assert_eq!(got, expected, "limit {limit}");
            assert_eq!(pages, expected.len().div_ceil(limit), "no empty trailing page at limit {limit}");
        }
    }

    #[test]
    fn lookup_distinguishes_files_dirs_and_misses() {
        let s = space(KEYS);
        assert!(matches!(lookup(&s, "a/1"), Some(Item::File { .. })));
        assert!(matches!(lookup(&s, "a/1/y"), Some(Item::Dir { .. })));
        assert!(matches!(lookup(&s, "c/d"), Some(Item::Dir { .. })));
        assert_eq!(lookup(&s, "a/1/q"), None);
        assert_eq!(lookup(&s, "c/d/e/f/g"), None);
    }

    #[test]
    fn cursor_round_trip_and_garbage() {
        for c in [Cursor::After("a/b".into()), Cursor::From("x:y".into()), Cursor::Within { key: "k".into(), skip: 3 }]
        {
            assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        }
        assert!(Cursor::decode("zz").is_err());
        assert!(Cursor::decode("wx:k").is_err());
    }
}
