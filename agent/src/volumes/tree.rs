//! Reading a host file or directory tree into the entries a guest volume is made of,
//! bounded, and fingerprinting it cheaply to see when it changed.
//!
//! Only the root is followed if it is a symlink; below it symlinks are copied as
//! symlinks (the kubelet's `..data` layout depends on that) and never followed.

use std::hash::{Hash, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use vmlet_proto::agent::{volume_entry::Kind, VolumeEntry};

/// Deepest tree copied.
const MAX_DEPTH: usize = 32;

/// Why a tree could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A file system call failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// More than the caller allows.
    #[error("more than {0}")]
    TooBig(String),
    /// Something that cannot be copied.
    #[error("{path} is {what}, which cannot be copied into a pod")]
    Special {
        /// Where.
        path: String,
        /// Its kind.
        what: &'static str,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Bytes and entries in a tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    /// File bytes.
    pub bytes: u64,
    /// Files, directories and symlinks, the root included.
    pub entries: usize,
}

/// Walks the tree at `root`, calling `visit(relative path, metadata)` parents first,
/// names sorted; at most `max_entries` entries.
fn walk(
    root: &Path,
    max_entries: usize,
    visit: &mut dyn FnMut(&str, &Path, &std::fs::Metadata) -> Result<(), TreeError>,
) -> Result<(), TreeError> {
    let md = std::fs::metadata(root).map_err(io(root))?;
    let mut count = 0;
    walk_at(root, "", &md, 0, max_entries, &mut count, visit)
}

fn walk_at(
    path: &Path,
    rel: &str,
    md: &std::fs::Metadata,
    depth: usize,
    max_entries: usize,
    count: &mut usize,
    visit: &mut dyn FnMut(&str, &Path, &std::fs::Metadata) -> Result<(), TreeError>,
) -> Result<(), TreeError> {
    *count += 1;
    if *count > max_entries {
        return Err(TreeError::TooBig(format!("{max_entries} entries")));
    }
    visit(rel, path, md)?;
    if !md.is_dir() {
        return Ok(());
    }
    if depth >= MAX_DEPTH {
        return Err(TreeError::TooBig(format!("{MAX_DEPTH} levels")));
    }
    let mut names: Vec<_> = std::fs::read_dir(path)
        .map_err(io(path))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io(path))?;
    names.sort();
    for name in names {
        let child = path.join(&name);
        let cmd = std::fs::symlink_metadata(&child).map_err(io(&child))?;
        let name = name.to_string_lossy();
        let crel = if rel.is_empty() {
            name.into_owned()
        } else {
            format!("{rel}/{name}")
        };
        walk_at(&child, &crel, &cmd, depth + 1, max_entries, count, visit)?;
    }
    Ok(())
}

fn special(path: &Path, md: &std::fs::Metadata) -> Result<(), TreeError> {
    let ft = md.file_type();
    if ft.is_file() || ft.is_dir() || ft.is_symlink() {
        return Ok(());
    }
    Err(TreeError::Special {
        path: path.display().to_string(),
        what: "a device, socket or FIFO",
    })
}

/// Bytes and entries of the tree at `root`.
pub fn measure(root: &Path, max_entries: usize) -> Result<Size, TreeError> {
    let mut size = Size::default();
    walk(root, max_entries, &mut |_, path, md| {
        special(path, md)?;
        size.entries += 1;
        if md.is_file() {
            size.bytes += md.len();
        }
        Ok(())
    })?;
    Ok(size)
}

/// The entries of the tree at `root`, at most `max_bytes` of file content.
pub fn read(
    root: &Path,
    max_bytes: u64,
    max_entries: usize,
) -> Result<Vec<VolumeEntry>, TreeError> {
    let mut entries = Vec::new();
    let mut bytes = 0u64;
    walk(root, max_entries, &mut |rel, path, md| {
        special(path, md)?;
        let mut e = VolumeEntry {
            path: rel.to_owned(),
            mode: md.permissions().mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            ..Default::default()
        };
        if md.is_dir() {
            e.set_kind(Kind::Directory);
        } else if md.file_type().is_symlink() {
            e.set_kind(Kind::Symlink);
            let target = std::fs::read_link(path).map_err(io(path))?;
            e.target = String::from_utf8_lossy(target.as_os_str().as_bytes()).into_owned();
        } else {
            e.set_kind(Kind::File);
            bytes += md.len();
            if bytes > max_bytes {
                return Err(TreeError::TooBig(format!("{max_bytes} bytes")));
            }
            // Read no more than the bound, whatever the file grew to since.
            let f = std::fs::File::open(path).map_err(io(path))?;
            let mut data = Vec::with_capacity(md.len() as usize);
            use std::io::Read;
            f.take(md.len()).read_to_end(&mut data).map_err(io(path))?;
            e.data = data;
        }
        entries.push(e);
        Ok(())
    })?;
    Ok(entries)
}

/// A hash of the tree's shape and metadata (not its content): changes when a file
/// is written, replaced, added or removed, or a symlink is swapped.
pub fn fingerprint(root: &Path, max_entries: usize) -> Result<u64, TreeError> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    walk(root, max_entries, &mut |rel, path, md| {
        (rel, md.ino(), md.len(), md.mtime(), md.mtime_nsec()).hash(&mut h);
        (md.mode(), md.uid(), md.gid(), md.ctime(), md.ctime_nsec()).hash(&mut h);
        if md.file_type().is_symlink() {
            std::fs::read_link(path).map_err(io(path))?.hash(&mut h);
        }
        Ok(())
    })?;
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_read_parents_first_with_symlinks_kept() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir(r.join("..v1")).unwrap();
        std::fs::write(r.join("..v1/k"), "value").unwrap();
        std::os::unix::fs::symlink("..v1", r.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/k", r.join("k")).unwrap();
        let e = read(r, 1 << 20, 100).unwrap();
        let paths: Vec<_> = e.iter().map(|e| (e.path.as_str(), e.kind())).collect();
        assert_eq!(
            paths,
            [
                ("", Kind::Directory),
                ("..data", Kind::Symlink),
                ("..v1", Kind::Directory),
                ("..v1/k", Kind::File),
                ("k", Kind::Symlink),
            ]
        );
        assert_eq!(e[3].data, b"value");
        assert_eq!(e[1].target, "..v1");
        assert_eq!(
            measure(r, 100).unwrap(),
            Size {
                bytes: 5,
                entries: 5
            }
        );
    }

    #[test]
    fn bounds_hold() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "12345").unwrap();
        std::fs::write(d.path().join("b"), "1").unwrap();
        assert!(matches!(read(d.path(), 5, 100), Err(TreeError::TooBig(_))));
        assert!(matches!(read(d.path(), 100, 2), Err(TreeError::TooBig(_))));
        assert_eq!(read(d.path(), 6, 3).unwrap().len(), 3);
    }

    #[test]
    fn a_single_file_is_one_entry() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("hosts");
        std::fs::write(&f, "127.0.0.1 localhost\n").unwrap();
        let e = read(&f, 1 << 20, 10).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].path.as_str(), e[0].kind()), ("", Kind::File));
    }

    #[test]
    fn the_fingerprint_follows_an_atomic_swap() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir(r.join("..v1")).unwrap();
        std::os::unix::fs::symlink("..v1", r.join("..data")).unwrap();
        let before = fingerprint(r, 100).unwrap();
        assert_eq!(before, fingerprint(r, 100).unwrap());
        std::fs::create_dir(r.join("..v2")).unwrap();
        std::os::unix::fs::symlink("..v2", r.join("..data_tmp")).unwrap();
        std::fs::rename(r.join("..data_tmp"), r.join("..data")).unwrap();
        std::fs::remove_dir(r.join("..v1")).unwrap();
        assert_ne!(before, fingerprint(r, 100).unwrap());
    }

    #[test]
    fn special_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let _l = std::os::unix::net::UnixListener::bind(d.path().join("s")).unwrap();
        assert!(matches!(
            read(d.path(), 100, 10),
            Err(TreeError::Special { .. })
        ));
    }
}
