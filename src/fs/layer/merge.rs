//! Merging a remote directory listing with the local layer: local entries shadow remote ones,
//! whiteouts hide them, and local-only entries are added.

use std::collections::HashSet;
use std::sync::Arc;

use super::{Layer, LocalEntry, LocalKind};
use crate::hub::{EntryKind, RemoteEntry};

/// One entry of the merged view of a directory.
#[derive(Debug, Clone)]
pub(crate) struct MergedEntry {
    pub remote: RemoteEntry,
    pub local: Option<Arc<LocalEntry>>,
}

/// The merged children of directory `dir` given its remote children (paths relative to the
/// root). `hidden` means the whole remote directory is shadowed (opaque, or under a whiteout).
pub(crate) fn merge_listing(layer: &Layer, dir: &str, remote: Vec<RemoteEntry>, hidden: bool) -> Vec<MergedEntry> {
    let mut out = Vec::with_capacity(remote.len());
    let mut seen = HashSet::new();
    if !hidden {
        for r in remote {
            match layer.get(&r.path) {
                Some(local) => {
                    if let Some(m) = local_entry(&r.path, &local) {
                        seen.insert(r.path.clone());
                        out.push(m);
                    } else {
                        // A whiteout: the name stays hidden.
                        seen.insert(r.path.clone());
                    }
                }
                None => {
                    seen.insert(r.path.clone());
                    out.push(MergedEntry { remote: r, local: None });
                }
            }
        }
    }
    for (name, e) in layer.children(dir) {
        let path = if dir.is_empty() { name } else { format!("{dir}/{name}") };
        if seen.contains(&path) {
            continue;
        }
        match e {
            Some(e) => out.extend(local_entry(&path, &e)),
            None => out.push(implicit_dir(path)),
        }
    }
    out
}

/// A directory that exists only because layer entries lie below it.
pub(crate) fn implicit_dir(path: String) -> MergedEntry {
    MergedEntry { remote: RemoteEntry { path, kind: EntryKind::Dir, size: 0, mtime: None, content: None }, local: None }
}

/// The merged entry a layer entry shows as (`None` for a whiteout).
pub(crate) fn local_entry(path: &str, e: &Arc<LocalEntry>) -> Option<MergedEntry> {
    let st = e.lock();
    let kind = match st.kind {
        LocalKind::Whiteout => return None,
        LocalKind::Dir => EntryKind::Dir,
        LocalKind::File | LocalKind::Symlink | LocalKind::Special => EntryKind::File,
    };
    let remote =
        RemoteEntry { path: path.to_string(), kind, size: st.size, mtime: Some(st.mtime), content: st.content.clone() };
    Some(MergedEntry { remote, local: Some(e.clone()) })
}
