//! Applies image layers (uncompressed tar streams) in order onto a root directory,
//! following the OCI image layer spec: `.wh.<name>` deletes `<name>` from lower layers,
//! `.wh..wh..opq` empties a directory of everything lower layers put there.
//!
//! Entries are extracted by hand rather than with `tar::Entry::unpack_in` because the
//! layer is untrusted: every path is checked component by component, never followed
//! through a symlink, and owners, modes, xattrs, device nodes and hard links are applied
//! exactly. A path that would land outside the root is an error, not a skip: such a layer
//! is malicious or broken and the image must not be used.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{AtFlags, AT_FDCWD};
use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, Gid, Uid};
use tar::{Archive, EntryType};

use super::limits::{count, ImageLimits, LimitExceeded, TarGuard};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// How an entry tried to leave the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// The path is absolute.
    AbsolutePath,
    /// The path has a `..` component.
    ParentDir,
    /// A directory on the path is a symlink (writing through it could land anywhere).
    SymlinkTraversal,
    /// A hard link's target is absolute, has `..`, or is reached through a symlink.
    HardLinkTarget,
}

/// Errors while applying a layer.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry's path (or link target) escapes the root.
    #[error("layer entry {path:?} escapes the root ({kind:?})")]
    PathEscape {
        /// The entry path as written in the layer.
        path: PathBuf,
        /// How it escapes.
        kind: Escape,
    },
    /// The tar stream is malformed (or failed verification underneath).
    #[error("reading layer: {0}")]
    Tar(#[source] io::Error),
    /// The image is larger than the configured limits allow.
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
    /// A file operation failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path in the root.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// An entry kind an image layer cannot hold (or that makes no sense where it is).
    #[error("layer entry {path:?}: {reason}")]
    Invalid {
        /// The entry path.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
}

impl UnpackError {
    /// A read error of the layer stream: a limit the guard hit, or a broken stream.
    fn tar(e: io::Error) -> UnpackError {
        match LimitExceeded::from_io(&e) {
            Some(limit) => UnpackError::Limit(limit),
            None => UnpackError::Tar(e),
        }
    }

    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> UnpackError + 'a {
        move |source| UnpackError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    fn io_nix<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> UnpackError + 'a {
        move |e| UnpackError::Io {
            op,
            path: path.to_path_buf(),
            source: io::Error::from(e),
        }
    }
}

/// Turns an entry path into its normal components, rejecting escapes. `./` and empty
/// components are dropped; the empty result is the root itself.
fn clean_path(raw: &Path, link: bool) -> Result<PathBuf, UnpackError> {
    let escape = |kind| UnpackError::PathEscape {
        path: raw.to_path_buf(),
        kind,
    };
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(escape(if link {
                    Escape::HardLinkTarget
                } else {
                    Escape::AbsolutePath
                }))
            }
            Component::ParentDir => {
                return Err(escape(if link {
                    Escape::HardLinkTarget
                } else {
                    Escape::ParentDir
                }))
            }
        }
    }
    Ok(out)
}

/// Applies layers onto one root; between layers it remembers only what counts against
/// the image's [`ImageLimits`].
pub struct Unpacker {
    root: PathBuf,
    limits: ImageLimits,
    /// Tar stream bytes, entries and created inodes of the image so far.
    bytes: Cell<u64>,
    entries: Cell<u64>,
    inodes: Cell<u64>,
}

/// Per-layer bookkeeping.
#[derive(Default)]
struct LayerState {
    /// Paths this layer wrote: an opaque marker must not delete them.
    written: HashSet<PathBuf>,
    /// Directory mtimes to restore once their children are in place.
    dir_times: Vec<(PathBuf, TimeSpec)>,
}

impl Unpacker {
    /// Unpacks into `root`, which must exist and is trusted (created by us), within
    /// `limits` for all layers applied.
    pub fn new(root: &Path, limits: ImageLimits) -> Self {
        Self {
            root: root.to_path_buf(),
            limits,
            bytes: Cell::new(0),
            entries: Cell::new(0),
            inodes: Cell::new(0),
        }
    }

    /// Applies one uncompressed layer.
    pub fn apply<R: Read>(&self, layer: R) -> Result<(), UnpackError> {
        let mut archive = Archive::new(TarGuard::new(layer, &self.limits, &self.bytes));
        let mut state = LayerState::default();
        for entry in archive.entries().map_err(UnpackError::tar)? {
            let mut entry = entry.map_err(UnpackError::tar)?;
            count(
                &self.entries,
                1,
                self.limits.max_entries,
                "max_entries",
                "the image's tar entry count",
            )?;
            self.apply_entry(&mut entry, &mut state)?;
        }
        for (path, mtime) in state.dir_times.iter().rev() {
            // Best effort: a directory's own mtime is cosmetic.
            let _ = utimensat(
                AT_FDCWD,
                path,
                mtime,
                mtime,
                UtimensatFlags::NoFollowSymlink,
            );
        }
        Ok(())
    }

    /// Checks every ancestor of `rel` inside the root: missing ones are created as
    /// directories, symlinks are refused. Returns the absolute path of `rel`.
    fn prepare_parents(
        &self,
        raw: &Path,
        rel: &Path,
        kind: Escape,
    ) -> Result<PathBuf, UnpackError> {
        self.check_parents(raw, rel, kind, true)
            .map(|p| p.unwrap_or_else(|| self.root.join(rel)))
    }

    /// Walks the ancestors of `rel`, refusing symlinks. Missing ones are created when
    /// `create` is set; otherwise the walk stops there and returns `None` (nothing below
    /// can exist).
    fn check_parents(
        &self,
        raw: &Path,
        rel: &Path,
        kind: Escape,
        create: bool,
    ) -> Result<Option<PathBuf>, UnpackError> {
        let mut cur = self.root.clone();
        let mut comps = rel.components().peekable();
        while let Some(c) = comps.next() {
            cur.push(c);
            if comps.peek().is_none() {
                break;
            }
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(UnpackError::PathEscape {
                        path: raw.to_path_buf(),
                        kind,
                    })
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(UnpackError::Invalid {
                        path: raw.to_path_buf(),
                        reason: format!(
                            "{:?} is not a directory",
                            cur.strip_prefix(&self.root).unwrap_or(&cur)
                        ),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&cur).map_err(UnpackError::io("mkdir", &cur))?;
                    fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                        .map_err(UnpackError::io("chmod", &cur))?;
                }
                Err(e) => return Err(UnpackError::io("stat", &cur)(e)),
            }
        }
        Ok(Some(cur))
    }

    /// Applies one entry: a whiteout, or the file, directory, link or node it makes
    /// (replacing what lower layers had at its path).
    fn apply_entry<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        state: &mut LayerState,
    ) -> Result<(), UnpackError> {
        let raw = PathBuf::from(OsStr::from_bytes(&entry.path_bytes()));
        let rel = clean_path(&raw, false)?;
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            // PAX global headers (git archive writes one) carry no file.
            return Ok(());
        }

        let Some(name) = rel.file_name().map(|n| n.to_owned()) else {
            // The root itself (`./`): take its metadata, nothing else.
            if kind.is_dir() {
                self.set_metadata(entry, &self.root, true)?;
            }
            return Ok(());
        };
        if let Some(target) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            return self.apply_whiteout(&raw, &rel, name.as_bytes(), target, state);
        }

        let dest = self.prepare_parents(&raw, &rel, Escape::SymlinkTraversal)?;
        let existing = fs::symlink_metadata(&dest).ok();
        // With its ancestors: an opaque marker later in this layer must keep them.
        for a in rel.ancestors() {
            if !state.written.insert(a.to_path_buf()) {
                break;
            }
        }
        let existing = existing.as_ref();
        if kind != EntryType::Link {
            count(
                &self.inodes,
                1,
                self.limits.max_inodes,
                "max_inodes",
                "the image's file count",
            )?;
        }
        match kind {
            EntryType::Directory => self.make_dir(entry, dest, existing, state),
            EntryType::Regular | EntryType::Continuous => self.make_file(entry, &dest, existing),
            EntryType::Symlink => self.make_symlink(entry, &raw, &dest, existing),
            EntryType::Link => self.make_hard_link(entry, raw, &dest, existing),
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.make_node(entry, kind, &dest, existing)
            }
            other => Err(UnpackError::Invalid {
                path: raw,
                reason: format!("unsupported entry type {other:?}"),
            }),
        }
    }

    /// A whiteout entry `name` (`.wh.<target>`, or the opaque marker) at `rel`: deletes
    /// `target` of lower layers, or empties the directory of what they put there.
    fn apply_whiteout(
        &self,
        raw: &Path,
        rel: &Path,
        name: &[u8],
        target: &[u8],
        state: &LayerState,
    ) -> Result<(), UnpackError> {
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let Some(path) = self.check_parents(raw, rel, Escape::SymlinkTraversal, false)? else {
            // The directory does not exist: nothing to delete.
            return Ok(());
        };
        let parent = path.parent().unwrap_or(&self.root).to_path_buf();
        if name == OPAQUE_WHITEOUT.as_bytes() {
            return self.make_opaque(&parent, parent_rel, state);
        }
        if target.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // Other `.wh..wh.` names are aufs metadata with no meaning here.
            return Ok(());
        }
        if target.is_empty() || target == b"." || target == b".." {
            return Err(UnpackError::Invalid {
                path: raw.to_path_buf(),
                reason: "whiteout of nothing".into(),
            });
        }
        remove_any(&parent.join(OsStr::from_bytes(target)))
    }

    /// A directory at `dest`, keeping a directory that is already there (and what it
    /// holds); its mtime is restored once its children are in place.
    fn make_dir<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        dest: PathBuf,
        existing: Option<&fs::Metadata>,
        state: &mut LayerState,
    ) -> Result<(), UnpackError> {
        // symlink_metadata: a symlink to a directory is not a directory here.
        if !existing.is_some_and(|m| m.is_dir()) {
            if existing.is_some() {
                remove_any(&dest)?;
            }
            fs::create_dir(&dest).map_err(UnpackError::io("mkdir", &dest))?;
        }
        self.set_metadata(entry, &dest, false)?;
        if let Ok(mtime) = entry.header().mtime() {
            state.dir_times.push((dest, TimeSpec::new(mtime as i64, 0)));
        }
        Ok(())
    }

    /// A regular file at `dest` with the entry's content.
    fn make_file<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        dest: &Path,
        existing: Option<&fs::Metadata>,
    ) -> Result<(), UnpackError> {
        if existing.is_some() {
            remove_any(dest)?;
        }
        // O_EXCL|O_NOFOLLOW: never write through something that appeared here.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(dest)
            .map_err(UnpackError::io("create", dest))?;
        io::copy(entry, &mut file).map_err(UnpackError::tar)?;
        drop(file);
        self.set_metadata(entry, dest, false)
    }

    /// A symlink at `dest`; its target is stored as written.
    fn make_symlink<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        raw: &Path,
        dest: &Path,
        existing: Option<&fs::Metadata>,
    ) -> Result<(), UnpackError> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| UnpackError::Invalid {
                path: raw.to_path_buf(),
                reason: "symlink without target".into(),
            })?
            .into_owned();
        if existing.is_some() {
            remove_any(dest)?;
        }
        // The target is stored, never followed by us, so it may point anywhere.
        symlink(OsStr::from_bytes(&target), dest).map_err(UnpackError::io("symlink", dest))?;
        self.set_metadata(entry, dest, false)
    }

    /// A hard link at `dest` to an earlier entry inside the root (never a directory,
    /// never reached through a symlink).
    fn make_hard_link<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        raw: PathBuf,
        dest: &Path,
        existing: Option<&fs::Metadata>,
    ) -> Result<(), UnpackError> {
        let target_raw = entry
            .link_name_bytes()
            .map(|t| PathBuf::from(OsStr::from_bytes(&t)))
            .ok_or_else(|| UnpackError::Invalid {
                path: raw.clone(),
                reason: "hard link without target".into(),
            })?;
        let target_rel = clean_path(&target_raw, true).map_err(|_| UnpackError::PathEscape {
            path: raw.clone(),
            kind: Escape::HardLinkTarget,
        })?;
        if target_rel.as_os_str().is_empty() {
            return Err(UnpackError::PathEscape {
                path: raw,
                kind: Escape::HardLinkTarget,
            });
        }
        let target = self.prepare_parents(&raw, &target_rel, Escape::HardLinkTarget)?;
        let tm =
            fs::symlink_metadata(&target).map_err(UnpackError::io("stat link target", &target))?;
        if tm.is_dir() {
            return Err(UnpackError::Invalid {
                path: raw,
                reason: "hard link to a directory".into(),
            });
        }
        if target == dest {
            return Ok(());
        }
        if existing.is_some() {
            remove_any(dest)?;
        }
        // linkat without AT_SYMLINK_FOLLOW: a link to a symlink links the symlink
        // itself, never what it points to.
        fs::hard_link(&target, dest).map_err(UnpackError::io("link", dest))
    }

    /// A character or block device or a FIFO (`kind`) at `dest`.
    fn make_node<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        kind: EntryType,
        dest: &Path,
        existing: Option<&fs::Metadata>,
    ) -> Result<(), UnpackError> {
        if existing.is_some() {
            remove_any(dest)?;
        }
        let h = entry.header();
        let sflag = match kind {
            EntryType::Char => SFlag::S_IFCHR,
            EntryType::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFIFO,
        };
        let (major, minor) = (
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
        );
        mknod(
            dest,
            sflag,
            Mode::from_bits_truncate(0o600),
            makedev(major.into(), minor.into()),
        )
        .map_err(UnpackError::io_nix("mknod", dest))?;
        self.set_metadata(entry, dest, false)
    }

    /// Deletes what lower layers put in `dir`, keeping what this layer wrote.
    fn make_opaque(
        &self,
        dir: &Path,
        dir_rel: &Path,
        state: &LayerState,
    ) -> Result<(), UnpackError> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(UnpackError::io("list", dir)(e)),
        };
        for e in entries {
            let e = e.map_err(UnpackError::io("list", dir))?;
            if !state.written.contains(&dir_rel.join(e.file_name())) {
                remove_any(&e.path())?;
            }
        }
        Ok(())
    }

    /// Owner, mode, xattrs and mtime of a freshly written path (never following it).
    fn set_metadata<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
        is_root: bool,
    ) -> Result<(), UnpackError> {
        let h = entry.header();
        let uid = h.uid().map_err(UnpackError::Tar)?;
        let gid = h.gid().map_err(UnpackError::Tar)?;
        let mode = h.mode().map_err(UnpackError::Tar)?;
        let mtime = h.mtime().unwrap_or(0);
        let is_link = h.entry_type() == EntryType::Symlink;
        fchownat(
            AT_FDCWD,
            path,
            Some(Uid::from_raw(uid as u32)),
            Some(Gid::from_raw(gid as u32)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(UnpackError::io_nix("chown", path))?;
        if !is_link {
            // After chown, which clears set-id bits.
            fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(UnpackError::io("chmod", path))?;
        }
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts {
                let ext = ext.map_err(UnpackError::Tar)?;
                let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                    continue;
                };
                set_xattr(path, name, ext.value_bytes(), is_link)?;
            }
        }
        if !is_root {
            let t = TimeSpec::new(mtime as i64, 0);
            // Best effort: times are not worth failing an image over.
            let _ = utimensat(AT_FDCWD, path, &t, &t, UtimensatFlags::NoFollowSymlink);
        }
        Ok(())
    }
}

/// Sets one extended attribute without following symlinks.
fn set_xattr(path: &Path, name: &[u8], value: &[u8], is_link: bool) -> Result<(), UnpackError> {
    let cpath =
        std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| UnpackError::Invalid {
            path: path.to_path_buf(),
            reason: "NUL in path".into(),
        })?;
    let cname = std::ffi::CString::new(name).map_err(|_| UnpackError::Invalid {
        path: path.to_path_buf(),
        reason: "NUL in xattr name".into(),
    })?;
    // SAFETY: both strings are valid NUL-terminated C strings that outlive the call, and
    // `value` is a valid slice whose pointer and length are passed together.
    let rc = unsafe {
        libc::lsetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        // The kernel refuses user.* xattrs on symlinks; images carry them anyway.
        if is_link && err.raw_os_error() == Some(libc::EPERM) {
            return Ok(());
        }
        return Err(UnpackError::Io {
            op: "setxattr",
            path: path.to_path_buf(),
            source: err,
        });
    }
    Ok(())
}

/// Removes whatever is at `path` (file, symlink, device or whole directory tree),
/// never following a symlink. Absent is fine.
fn remove_any(path: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(UnpackError::io("remove", path)),
        Ok(_) => fs::remove_file(path).map_err(UnpackError::io("remove", path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(UnpackError::io("stat", path)(e)),
    }
}
