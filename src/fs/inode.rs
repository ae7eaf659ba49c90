//! The inode table: every file and directory the kernel may refer to. Directory listings are
//! folded in — a directory's children are the inodes whose parent it is, and `listed` says
//! whether that set is complete — so there is one cache of remote metadata, bounded as a whole.
//!
//! Invariants: an inode the kernel holds (`lookups > 0`) or that is open is never evicted;
//! evicting a child clears its parent's `listed` mark; inode numbers are never reused.

use std::collections::{BTreeMap, HashMap};
use std::time::{Instant, SystemTime};

use std::sync::Arc;

use super::attr::{FileKind, Ino, ROOT_INO};
use super::layer::{LocalEntry, LocalKind, MergedEntry};
use crate::hub::{ContentId, EntryKind, RemoteEntry};

/// A directory's known children.
#[derive(Debug, Default)]
pub(crate) struct DirState {
    pub entries: BTreeMap<Box<str>, Ino>,
    /// When the children were last listed completely from the remote.
    pub listed: Option<Instant>,
}

/// One inode.
#[derive(Debug)]
pub(crate) struct Node {
    pub parent: Ino,
    pub name: Box<str>,
    pub kind: FileKind,
    pub size: u64,
    pub mtime: SystemTime,
    /// Remote content of a file.
    pub content: Option<ContentId>,
    /// References the kernel holds (lookup count).
    pub lookups: u64,
    /// Open file or directory handles.
    pub opens: u32,
    /// LRU tick of the last use.
    pub touched: u64,
    /// When the attributes were last confirmed against the remote.
    pub validated: Instant,
    /// The content the kernel's page cache holds for this inode, if any.
    pub cached_content: Option<ContentId>,
    /// Removed from its parent while the kernel still referenced it.
    pub detached: bool,
    pub dir: Option<Box<DirState>>,
    /// The local layer entry this inode shows (its attributes and bytes win over the remote).
    pub local: Option<Arc<LocalEntry>>,
}

/// How a remote entry changed an existing child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Added,
    Changed,
    Same,
}

/// What a fresh listing changed in a directory.
#[derive(Debug, Default)]
pub(crate) struct ListingDiff {
    pub added: Vec<String>,
    pub removed: Vec<(Ino, String)>,
    pub changed: Vec<Ino>,
}

impl ListingDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

pub(crate) struct InodeTable {
    nodes: HashMap<Ino, Node>,
    next_ino: Ino,
    tick: u64,
    /// Soft cap on the number of inodes; unreferenced ones are evicted above it.
    max_nodes: usize,
    default_mtime: SystemTime,
}

impl InodeTable {
    pub fn new(max_nodes: usize, default_mtime: SystemTime) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node {
                parent: ROOT_INO,
                name: "".into(),
                kind: FileKind::Dir,
                size: 0,
                mtime: default_mtime,
                content: None,
                lookups: 1,
                opens: 0,
                touched: 0,
                validated: Instant::now(),
                cached_content: None,
                detached: false,
                dir: Some(Box::default()),
                local: None,
            },
        );
        InodeTable { nodes, next_ino: ROOT_INO + 1, tick: 0, max_nodes: max_nodes.max(16), default_mtime }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn get(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: Ino) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    /// Mark `ino` as just used (for LRU eviction).
    pub fn touch(&mut self, ino: Ino) {
        self.tick += 1;
        let t = self.tick;
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.touched = t;
        }
    }

    /// The path of `ino` relative to the root (`""` for the root).
    pub fn path(&self, ino: Ino) -> Option<String> {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            let n = self.nodes.get(&cur)?;
            if n.detached {
                return None;
            }
            parts.push(&*n.name);
            cur = n.parent;
        }
        parts.reverse();
        Some(parts.join("/"))
    }

    /// The inode at `path`, if every component is cached.
    pub fn resolve(&self, path: &str) -> Option<Ino> {
        let mut cur = ROOT_INO;
        if path.is_empty() {
            return Some(cur);
        }
        for part in path.split('/') {
            cur = self.child(cur, part)?;
        }
        Some(cur)
    }

    pub fn child(&self, parent: Ino, name: &str) -> Option<Ino> {
        self.nodes.get(&parent)?.dir.as_ref()?.entries.get(name).copied()
    }

    /// Insert or update the child described by a remote entry (no local state).
    pub fn upsert_child(&mut self, parent: Ino, entry: &RemoteEntry) -> (Ino, Change) {
        self.upsert_merged(parent, &MergedEntry { remote: entry.clone(), local: None })
    }

    /// Insert or update the child described by `m` (whose last path component is the name).
    /// A local entry wins: the remote side of a locally changed file is not looked at.
    pub fn upsert_merged(&mut self, parent: Ino, m: &MergedEntry) -> (Ino, Change) {
        let entry = &m.remote;
        let name = entry.name();
        let kind = match (&m.local, entry.kind) {
            (Some(l), _) if l.lock().kind == LocalKind::Symlink => FileKind::Symlink,
            (Some(l), _) if l.lock().kind == LocalKind::Special => {
                FileKind::special_from_mode(l.lock().mode as u32).unwrap_or(FileKind::File)
            }
            (_, EntryKind::File) => FileKind::File,
            (_, EntryKind::Dir) => FileKind::Dir,
        };
        let mtime = entry.mtime.unwrap_or(self.default_mtime);
        if let Some(ino) = self.child(parent, name) {
            let node = self.nodes.get_mut(&ino).expect("child index points to a live inode");
            if node.kind == kind {
                node.validated = Instant::now();
                let was_local = node.local.is_some();
                node.local = m.local.clone();
                if kind == FileKind::Dir || m.local.is_some() {
                    return (ino, Change::Same);
                }
                let changed =
                    was_local || node.content != entry.content || node.size != entry.size || node.mtime != mtime;
                if changed {
                    node.content = entry.content.clone();
                    node.size = entry.size;
                    node.mtime = mtime;
                    return (ino, if was_local { Change::Same } else { Change::Changed });
                }
                return (ino, Change::Same);
            }
            // A file became a directory or the reverse: a different object under the same name.
            self.detach_child(parent, name);
        }
        let ino = self.insert_node(parent, name, kind, entry.size, mtime, entry.content.clone(), m.local.clone());
        (ino, Change::Added)
    }

    /// Add a brand-new child inode.
    #[allow(clippy::too_many_arguments)]
    pub fn insert_node(
        &mut self,
        parent: Ino,
        name: &str,
        kind: FileKind,
        size: u64,
        mtime: SystemTime,
        content: Option<ContentId>,
        local: Option<Arc<LocalEntry>>,
    ) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.tick += 1;
        self.nodes.insert(
            ino,
            Node {
                parent,
                name: name.into(),
                kind,
                size,
                mtime,
                content,
                lookups: 0,
                opens: 0,
                touched: self.tick,
                validated: Instant::now(),
                cached_content: None,
                detached: false,
                dir: (kind == FileKind::Dir).then(Box::default),
                local,
            },
        );
        if let Some(d) = self.nodes.get_mut(&parent).and_then(|p| p.dir.as_mut()) {
            d.entries.insert(name.into(), ino);
        }
        ino
    }

    /// Move child `name` of `parent` to `new_name` in `new_parent`, replacing what was there.
    pub fn rename_child(&mut self, parent: Ino, name: &str, new_parent: Ino, new_name: &str) -> Option<Ino> {
        let ino = self.nodes.get_mut(&parent)?.dir.as_mut()?.entries.remove(name)?;
        if let Some(old) = self.child(new_parent, new_name)
            && old != ino
        {
            self.detach_child(new_parent, new_name);
        }
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.parent = new_parent;
            n.name = new_name.into();
        }
        if let Some(d) = self.nodes.get_mut(&new_parent).and_then(|p| p.dir.as_mut()) {
            d.entries.insert(new_name.into(), ino);
        }
        Some(ino)
    }

    /// Materialized descendants of `dir` (depth first), for re-linking after a rename.
    pub fn descendants(&self, dir: Ino) -> Vec<Ino> {
        let mut out = Vec::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            if let Some(ds) = self.nodes.get(&d).and_then(|n| n.dir.as_ref()) {
                for &c in ds.entries.values() {
                    out.push(c);
                    stack.push(c);
                }
            }
        }
        out
    }

    /// Remove `name` from `parent`; the inode lives on (detached) while the kernel holds it.
    pub fn detach_child(&mut self, parent: Ino, name: &str) -> Option<Ino> {
        let ino = self.nodes.get_mut(&parent)?.dir.as_mut()?.entries.remove(name)?;
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.detached = true;
        }
        self.drop_if_unused(ino);
        Some(ino)
    }

    /// Reconcile `dir`'s children with a complete fresh listing.
    pub fn apply_listing(&mut self, dir: Ino, entries: &[MergedEntry]) -> ListingDiff {
        let mut diff = ListingDiff::default();
        let mut seen = std::collections::HashSet::with_capacity(entries.len());
        for m in entries {
            let name = m.remote.name();
            if name.is_empty() || name.len() > 255 {
                continue;
            }
            seen.insert(name);
            let (ino, change) = self.upsert_merged(dir, m);
            match change {
                Change::Added => diff.added.push(name.to_string()),
                Change::Changed => diff.changed.push(ino),
                Change::Same => {}
            }
        }
        let gone: Vec<String> = match self.nodes.get(&dir).and_then(|d| d.dir.as_ref()) {
            Some(d) => d.entries.keys().filter(|k| !seen.contains(&***k)).map(|k| k.to_string()).collect(),
            None => Vec::new(),
        };
        for name in gone {
            if let Some(ino) = self.detach_child(dir, &name) {
                diff.removed.push((ino, name));
            }
        }
        if let Some(d) = self.nodes.get_mut(&dir).and_then(|d| d.dir.as_mut()) {
            d.listed = Some(Instant::now());
        }
        diff
    }

    /// The kernel took a reference (lookup, create, readdirplus entry).
    pub fn add_lookup(&mut self, ino: Ino) {
        self.touch(ino);
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.lookups += 1;
        }
    }

    /// The kernel dropped `n` references.
    pub fn forget(&mut self, ino: Ino, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
        }
        self.drop_if_unused(ino);
    }

    /// Remove a detached inode nobody references any more.
    fn drop_if_unused(&mut self, ino: Ino) {
        let Some(n) = self.nodes.get(&ino) else {
            return;
        };
        if n.detached && n.lookups == 0 && n.opens == 0 {
            let children: Vec<Ino> = n.dir.as_ref().map(|d| d.entries.values().copied().collect()).unwrap_or_default();
            self.nodes.remove(&ino);
            // Children of a vanished directory are unreachable by path; detach them too.
            for c in children {
                if let Some(cn) = self.nodes.get_mut(&c) {
                    cn.detached = true;
                }
                self.drop_if_unused(c);
            }
        }
    }

    /// Directories whose listing is cached, with their paths.
    pub fn listed_dirs(&self) -> Vec<(Ino, String)> {
        self.nodes
            .iter()
            .filter(|(_, n)| !n.detached && n.dir.as_ref().is_some_and(|d| d.listed.is_some()))
            .filter_map(|(&ino, _)| Some((ino, self.path(ino)?)))
            .collect()
    }

    /// Files known by an individual lookup, in directories that are not listed as a whole:
    /// (parent, path of the file).
    pub fn unlisted_files(&self) -> Vec<(Ino, String)> {
        let mut out = Vec::new();
        for (&ino, n) in &self.nodes {
            let Some(d) = n.dir.as_ref() else { continue };
            if n.detached || d.listed.is_some() || d.entries.is_empty() {
                continue;
            }
            let Some(base) = self.path(ino) else { continue };
            for (name, c) in &d.entries {
                if self.nodes.get(c).is_some_and(|cn| cn.kind == FileKind::File) {
                    let path = if base.is_empty() { name.to_string() } else { format!("{base}/{name}") };
                    out.push((ino, path));
                }
            }
        }
        out
    }

    /// Evict least recently used inodes nobody references until the table is under its cap.
    pub fn evict_over_cap(&mut self) -> usize {
        if self.nodes.len() <= self.max_nodes {
            return 0;
        }
        let target = self.max_nodes - self.max_nodes / 10;
        let mut candidates: Vec<(u64, Ino)> = self
            .nodes
            .iter()
            .filter(|(ino, n)| {
                **ino != ROOT_INO
                    && n.lookups == 0
                    && n.opens == 0
                    && n.local.is_none()
                    && n.dir.as_ref().is_none_or(|d| d.entries.is_empty())
            })
            .map(|(ino, n)| (n.touched, *ino))
            .collect();
        candidates.sort_unstable();
        let mut evicted = 0;
        for (_, ino) in candidates {
            if self.nodes.len() <= target {
                break;
            }
            let Some(n) = self.nodes.remove(&ino) else {
                continue;
            };
            if let Some(p) = self.nodes.get_mut(&n.parent)
                && let Some(d) = p.dir.as_mut()
            {
                if d.entries.get(&n.name) == Some(&ino) {
                    d.entries.remove(&n.name);
                }
                d.listed = None;
            }
            evicted += 1;
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64, hash: &str) -> RemoteEntry {
        RemoteEntry {
            path: path.into(),
            kind: EntryKind::File,
            size,
            mtime: None,
            content: Some(ContentId::Xet(hash.into())),
        }
    }

    fn dir(path: &str) -> RemoteEntry {
        RemoteEntry { path: path.into(), kind: EntryKind::Dir, size: 0, mtime: None, content: None }
    }

    impl InodeTable {
        fn apply(&mut self, dir: Ino, entries: &[RemoteEntry]) -> ListingDiff {
            let merged: Vec<MergedEntry> =
                entries.iter().map(|r| MergedEntry { remote: r.clone(), local: None }).collect();
            self.apply_listing(dir, &merged)
        }
    }

    #[test]
    fn listing_diff_reports_added_changed_removed() {
        let mut t = InodeTable::new(1000, SystemTime::UNIX_EPOCH);
        let d = t.apply(ROOT_INO, &[file("a", 1, "h1"), dir("sub")]);
        assert_eq!(d.added.len(), 2);
        let a = t.child(ROOT_INO, "a").unwrap();
        assert_eq!(t.path(a).unwrap(), "a");
        let d = t.apply(ROOT_INO, &[file("a", 2, "h2"), file("b", 1, "h3")]);
        assert_eq!(d.added, vec!["b".to_string()]);
        assert_eq!(d.changed, vec![a]);
        assert_eq!(d.removed.len(), 1);
        assert_eq!(d.removed[0].1, "sub");
        assert!(t.child(ROOT_INO, "sub").is_none());
    }

    #[test]
    fn referenced_inodes_survive_removal_until_forgotten() {
        let mut t = InodeTable::new(1000, SystemTime::UNIX_EPOCH);
        t.apply(ROOT_INO, &[file("a", 1, "h1")]);
        let a = t.child(ROOT_INO, "a").unwrap();
        t.add_lookup(a);
        t.apply(ROOT_INO, &[]);
        assert!(t.get(a).is_some_and(|n| n.detached));
        assert!(t.path(a).is_none());
        t.forget(a, 1);
        assert!(t.get(a).is_none());
    }

    #[test]
    fn file_turned_directory_gets_a_new_inode() {
        let mut t = InodeTable::new(1000, SystemTime::UNIX_EPOCH);
        t.apply(ROOT_INO, &[file("x", 1, "h")]);
        let old = t.child(ROOT_INO, "x").unwrap();
        t.apply(ROOT_INO, &[dir("x")]);
        let new = t.child(ROOT_INO, "x").unwrap();
        assert_ne!(old, new);
        assert_eq!(t.get(new).unwrap().kind, FileKind::Dir);
    }

    #[test]
    fn eviction_keeps_referenced_and_clears_listed_mark() {
        let mut t = InodeTable::new(20, SystemTime::UNIX_EPOCH);
        let entries: Vec<_> = (0..100).map(|i| file(&format!("f{i}"), 1, "h")).collect();
        t.apply(ROOT_INO, &entries);
        let kept = t.child(ROOT_INO, "f99").unwrap();
        t.add_lookup(kept);
        let evicted = t.evict_over_cap();
        assert!(evicted > 0);
        assert!(t.len() <= 20);
        assert!(t.get(kept).is_some());
        assert!(t.get(ROOT_INO).unwrap().dir.as_ref().unwrap().listed.is_none());
    }
}
