//! Read-only buckets whose entries are computed, not stored, so that listing a bucket of a
//! million files costs nothing up front.
//!
//! Entry `n` (0-based) is `d{n / 1000}/f{n}`, both zero-padded so that numeric order is
//! key order; every directory holds at most 1000 files and every file has the same small
//! content, uploaded once at start.

use std::borrow::Cow;
use std::ops::Bound;

use super::listing::KeySpace;
use super::store::BucketFile;

/// Files per synthetic directory.
pub const FILES_PER_DIR: u64 = 1000;

/// Content of every synthetic file.
pub const CONTENT: &[u8] = b"hf-csi synthetic file\n";

#[derive(Debug, Clone)]
pub struct SyntheticBucket {
    pub id: String,
    pub count: u64,
    pub private: bool,
    pub created_ms: u64,
    xet_hash: String,
    dir_width: usize,
    file_width: usize,
}

impl SyntheticBucket {
    /// A bucket of `count` files whose content is stored under `xet_hash`.
    pub fn new(id: &str, count: u64, private: bool, created_ms: u64, xet_hash: String) -> Self {
        let digits = |n: u64| n.max(1).ilog10() as usize + 1;
        Self {
            id: id.to_string(),
            count,
            private,
            created_ms,
            xet_hash,
            dir_width: digits(count.saturating_sub(1) / FILES_PER_DIR).max(4),
            file_width: digits(count.saturating_sub(1)).max(6),
        }
    }

    pub fn key(&self, n: u64) -> String {
        format!("d{:0dw$}/f{:0fw$}", n / FILES_PER_DIR, n, dw = self.dir_width, fw = self.file_width)
    }

    pub fn total_size(&self) -> u64 {
        self.count * CONTENT.len() as u64
    }

    fn entry(&self) -> BucketFile {
        BucketFile {
            xet_hash: self.xet_hash.clone(),
            size: CONTENT.len() as u64,
            mtime_ms: self.created_ms,
            uploaded_ms: self.created_ms,
            content_type: None,
        }
    }

    /// The smallest index whose key is `>= s` (or `> s` if `strict`); `count` if none.
    fn lower_bound(&self, s: &str, strict: bool) -> u64 {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let k = self.key(mid);
            let before = if strict { k.as_str() <= s } else { k.as_str() < s };
            if before {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

impl KeySpace for SyntheticBucket {
    type Value = BucketFile;

    fn iter_from<'a>(&'a self, from: Bound<&str>) -> Box<dyn Iterator<Item = (Cow<'a, str>, BucketFile)> + 'a> {
        let start = match from {
            Bound::Included(s) => self.lower_bound(s, false),
            Bound::Excluded(s) => self.lower_bound(s, true),
            Bound::Unbounded => 0,
        };
        Box::new((start..self.count).map(move |n| (Cow::Owned(self.key(n)), self.entry())))
    }

    fn key_before(&self, key: &str) -> Option<String> {
        let n = self.lower_bound(key, false);
        (n > 0).then(|| self.key(n - 1))
    }

    fn get(&self, key: &str) -> Option<BucketFile> {
        let n = self.lower_bound(key, false);
        (n < self.count && self.key(n) == key).then(|| self.entry())
    }
}

#[cfg(test)]
mod tests {
    use super::super::listing::{Cursor, Item, Scope, lookup, page};
    use super::*;

    #[test]
    fn keys_sort_numerically_and_paginate() {
        let b = SyntheticBucket::new("s/b", 2500, false, 0, "h".into());
        assert_eq!(b.key(0), "d0000/f000000");
        assert_eq!(b.key(2499), "d0002/f002499");
        let (root, next) = page(&b, &Scope::root(), false, None, 10);
        assert_eq!(
            root,
            vec![
                Item::Dir { path: "d0000".into() },
                Item::Dir { path: "d0001".into() },
                Item::Dir { path: "d0002".into() }
            ]
        );
        assert!(next.is_none());
        let mut cursor: Option<Cursor> = None;
        let mut seen = 0;
        loop {
            let (items, next) = page(&b, &Scope::dir("d0002"), false, cursor.as_ref(), 120);
            seen += items.len();
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, 500);
        assert!(matches!(lookup(&b, "d0001/f001999"), Some(Item::File { .. })));
        assert!(matches!(lookup(&b, "d0001"), Some(Item::Dir { .. })));
        assert_eq!(lookup(&b, "d0001/f002000"), None);
        assert_eq!(lookup(&b, "d0003"), None);
    }

    #[test]
    fn a_million_entries_need_no_materialization() {
        let b = SyntheticBucket::new("s/m", 1_000_000, false, 0, "h".into());
        assert_eq!(b.key(999_999), "d0999/f999999");
        let (items, next) = page(&b, &Scope::dir("d0500"), true, None, 3);
        assert_eq!(items.len(), 3);
        assert!(next.is_some());
        assert_eq!(b.key_before("d0500/f500000").as_deref(), Some("d0499/f499999"));
    }
}
