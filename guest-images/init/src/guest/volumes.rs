//! Pod volumes under [`VOLUMES_DIR`]: trees the host copies in (configMaps, secrets,
//! tokens, `/etc/hosts`, termination logs) and empty directories (emptyDir), which
//! containers bind-mount by name.
//!
//! A copied tree is applied in the order that keeps a kubelet-style atomic update
//! atomic here too: new directories and files first (each file renamed into place),
//! then symlinks (each swapped by rename), then whatever is gone, deepest first. The
//! kubelet's `..data` → `..<timestamp>` swap thus stays one rename.
//!
//! Containers may write into a volume they mount read-write, so nothing here follows a
//! symlink: every directory is opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` from the volume's root and every change is made relative to
//! that descriptor.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, renameat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fchmod, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use vmlet_proto::agent::{volume_entry::Kind, VolumeEntry};

/// Where pod volumes live.
pub const VOLUMES_DIR: &str = "/run/vmlet/volumes";
/// Where each virtio-fs file system is mounted, by tag.
pub const SHARED_FS_DIR: &str = "/run/vmlet/sharedfs";
/// Most entries in one copied volume.
pub const MAX_ENTRIES: usize = 16_384;
/// Most bytes [`read_tail`] returns.
pub const MAX_READ: u32 = 1 << 20;
/// Longest path inside a volume.
const MAX_PATH: usize = 4096;

/// A volume request that failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// No such volume.
    #[error("volume {0:?} does not exist")]
    NotFound(String),
    /// The volume exists already.
    #[error("volume {0} exists already")]
    Exists(String),
    /// A system call failed.
    #[error("volume {name:?}: {what}: {source}")]
    Sys {
        /// The volume.
        name: String,
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What backs a volume that is a mount, by name.
#[derive(Debug, Clone)]
enum Backing {
    /// A directory on the scratch disk: removed with the volume.
    Scratch(PathBuf),
    /// An entry of a virtio-fs file system: the host's, never deleted from here.
    Shared,
    /// A mounted image drive, by serial: released when the volume goes.
    Image(String),
}

/// The volumes that are mounts, with what backs them.
static BACKINGS: Mutex<Option<HashMap<String, Backing>>> = Mutex::new(None);

fn sys<E: Into<std::io::Error>>(
    name: &str,
    what: impl Into<String>,
) -> impl FnOnce(E) -> VolumeError {
    let (name, what) = (name.to_owned(), what.into());
    move |e| VolumeError::Sys {
        name,
        what,
        source: e.into(),
    }
}

/// Checks a volume name: `[a-z0-9-]`, 1 to 64 bytes.
pub fn check_name(name: &str) -> Result<(), VolumeError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(VolumeError::Invalid(format!(
            "volume name {name:?} must be 1 to 64 of [a-z0-9-]"
        )))
    }
}

/// The guest path of volume `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(VOLUMES_DIR).join(name)
}

/// Checks one entry's path: relative, "/"-separated, no empty, "." or ".." parts.
fn check_path(p: &str) -> Result<(), VolumeError> {
    let bad = |why: &str| VolumeError::Invalid(format!("entry path {p:?} {why}"));
    if p.is_empty() {
        return Ok(());
    }
    if p.len() > MAX_PATH || p.contains('\0') {
        return Err(bad("is too long or contains NUL"));
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(bad(
            "must be relative, without empty, \".\" or \"..\" parts",
        ));
    }
    Ok(())
}

/// Checks a copied tree: the root first, every parent a directory listed before its
/// children, no path twice. Returns whether the root is a directory.
fn check_entries(entries: &[VolumeEntry]) -> Result<bool, VolumeError> {
    if entries.len() > MAX_ENTRIES {
        return Err(VolumeError::Invalid(format!(
            "{} entries; a volume holds at most {MAX_ENTRIES}",
            entries.len()
        )));
    }
    let root = match entries.first() {
        Some(e) if e.path.is_empty() => e.kind(),
        _ => {
            return Err(VolumeError::Invalid(
                "the first entry must be the volume's root (path \"\")".into(),
            ))
        }
    };
    match root {
        Kind::Directory => {}
        Kind::File if entries.len() == 1 => return Ok(false),
        _ => {
            return Err(VolumeError::Invalid(
                "the root must be a directory, or a file alone".into(),
            ))
        }
    }
    let mut dirs: HashSet<&str> = HashSet::from([""]);
    let mut seen: HashSet<&str> = HashSet::new();
    for e in &entries[1..] {
        check_path(&e.path)?;
        if e.path.is_empty() || !seen.insert(&e.path) {
            return Err(VolumeError::Invalid(format!(
                "entry path {:?} is given twice",
                e.path
            )));
        }
        let parent = e.path.rsplit_once('/').map_or("", |(p, _)| p);
        if !dirs.contains(parent) {
            return Err(VolumeError::Invalid(format!(
                "entry {:?} comes before its directory",
                e.path
            )));
        }
        match e.kind() {
            Kind::Directory => {
                dirs.insert(&e.path);
            }
            Kind::Symlink if e.target.is_empty() || e.target.contains('\0') => {
                return Err(VolumeError::Invalid(format!(
                    "symlink {:?} has an empty or NUL target",
                    e.path
                )))
            }
            _ => {}
        }
    }
    Ok(true)
}

/// Opens directory `rel` under `root` without following any symlink or leaving it.
fn open_dir(root: &OwnedFd, rel: &str) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let rel = if rel.is_empty() { "." } else { rel };
    openat2(root, rel, how)
}

fn open_abs_dir(p: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(
        p,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
}

fn lstat_at(dir: &OwnedFd, name: &str) -> nix::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn kind_of(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

fn perm(mode: u32) -> Mode {
    Mode::from_bits_truncate((mode & 0o7777) as libc::mode_t)
}

/// Removes `name` in `dir`, a whole tree if it is a directory.
fn remove_at(dir: &OwnedFd, name: &str) -> nix::Result<()> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if kind_of(&st) != SFlag::S_IFDIR {
        return unlinkat(dir, name, UnlinkatFlags::NoRemoveDir);
    }
    let sub = openat(
        dir,
        name,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )?;
    for child in list(&sub)? {
        remove_at(&sub, &child)?;
    }
    unlinkat(dir, name, UnlinkatFlags::RemoveDir)
}

/// The names in a directory, without "." and "..".
fn list(dir: &OwnedFd) -> nix::Result<Vec<String>> {
    // A description of its own: reading moves the offset.
    let own = openat(
        dir,
        ".",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut d = nix::dir::Dir::from_fd(own)?;
    let mut names = Vec::new();
    for e in d.iter() {
        let name = e?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(String::from_utf8_lossy(&name).into_owned());
        }
    }
    Ok(names)
}

/// Writes a file's content, mode and owner through `f`.
fn fill(f: &mut std::fs::File, e: &VolumeEntry) -> std::io::Result<()> {
    f.write_all(&e.data)?;
    fchmod(f.as_fd(), perm(e.mode))?;
    fchown(
        f.as_fd(),
        Some(Uid::from_raw(e.uid)),
        Some(Gid::from_raw(e.gid)),
    )?;
    Ok(())
}

/// Whether `name` in `dir` already is the file `e` describes.
fn same_file(dir: &OwnedFd, name: &str, st: &FileStat, e: &VolumeEntry) -> bool {
    if kind_of(st) != SFlag::S_IFREG
        || st.st_size as u64 != e.data.len() as u64
        || st.st_mode & 0o7777 != e.mode & 0o7777
        || st.st_uid != e.uid
        || st.st_gid != e.gid
    {
        return false;
    }
    let Ok(fd) = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    ) else {
        return false;
    };
    let mut have = Vec::with_capacity(e.data.len());
    std::fs::File::from(fd).read_to_end(&mut have).is_ok() && have == e.data
}

/// Splits an entry path into its directory and last part.
fn split(p: &str) -> (&str, &str) {
    p.rsplit_once('/').unwrap_or(("", p))
}

const TMP_PREFIX: &str = ".vmlet-tmp.";

/// Puts the file `e` at `name` in `dir` by writing a temporary file and renaming it.
fn put_file(dir: &OwnedFd, name: &str, e: &VolumeEntry) -> nix::Result<()> {
    if let Some(st) = lstat_at(dir, name)? {
        if same_file(dir, name, &st, e) {
            return Ok(());
        }
        if kind_of(&st) == SFlag::S_IFDIR {
            remove_at(dir, name)?;
        }
    }
    let tmp = format!("{TMP_PREFIX}{name}");
    remove_at(dir, &tmp)?;
    let fd = openat(
        dir,
        tmp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(0o600),
    )?;
    let mut f = std::fs::File::from(fd);
    if let Err(err) = fill(&mut f, e) {
        let _ = unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        return Err(Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO)));
    }
    renameat(dir, tmp.as_str(), dir, name)
}

/// Puts the symlink `e` at `name` in `dir`, swapped in by rename.
fn put_symlink(dir: &OwnedFd, name: &str, e: &VolumeEntry) -> nix::Result<()> {
    if let Some(st) = lstat_at(dir, name)? {
        if kind_of(&st) == SFlag::S_IFLNK
            && nix::fcntl::readlinkat(dir, name)?.as_bytes() == e.target.as_bytes()
            && (st.st_uid, st.st_gid) == (e.uid, e.gid)
        {
            return Ok(());
        }
        if kind_of(&st) == SFlag::S_IFDIR {
            remove_at(dir, name)?;
        }
    }
    let tmp = format!("{TMP_PREFIX}{name}");
    remove_at(dir, &tmp)?;
    symlinkat(e.target.as_str(), dir, tmp.as_str())?;
    fchownat(
        dir,
        tmp.as_str(),
        Some(Uid::from_raw(e.uid)),
        Some(Gid::from_raw(e.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    renameat(dir, tmp.as_str(), dir, name)
}

/// Makes `name` in `dir` the directory `e` (replacing anything else there).
fn put_dir(dir: &OwnedFd, name: &str, e: &VolumeEntry) -> nix::Result<()> {
    match lstat_at(dir, name)? {
        Some(st) if kind_of(&st) == SFlag::S_IFDIR => {}
        Some(_) => {
            remove_at(dir, name)?;
            mkdirat(dir, name, Mode::from_bits_truncate(0o700))?;
        }
        None => mkdirat(dir, name, Mode::from_bits_truncate(0o700))?,
    }
    let sub = openat(
        dir,
        name,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )?;
    set_owner_mode(&sub, e)
}

fn set_owner_mode(fd: &OwnedFd, e: &VolumeEntry) -> nix::Result<()> {
    fchown(fd, Some(Uid::from_raw(e.uid)), Some(Gid::from_raw(e.gid)))?;
    fchmod(fd, perm(e.mode))
}

/// Removes what is under `dir` (at `prefix`) but not in `wanted`, deepest first.
fn prune(dir: &OwnedFd, prefix: &str, wanted: &HashMap<&str, Kind>) -> nix::Result<()> {
    for name in list(dir)? {
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        match wanted.get(rel.as_str()) {
            None => remove_at(dir, &name)?,
            Some(Kind::Directory) => {
                let sub = openat(
                    dir,
                    name.as_str(),
                    OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                    Mode::empty(),
                )?;
                prune(&sub, &rel, wanted)?;
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Applies a checked directory tree to the directory `root`.
fn apply_tree(vol: &str, root: &OwnedFd, entries: &[VolumeEntry]) -> Result<(), VolumeError> {
    set_owner_mode(root, &entries[0]).map_err(sys(vol, "set the root's owner and mode"))?;
    // Directories and files, parents first; then symlinks; then what is gone.
    for pass in [false, true] {
        for e in &entries[1..] {
            let is_link = e.kind() == Kind::Symlink;
            if is_link != pass {
                continue;
            }
            let (parent, name) = split(&e.path);
            let dir = open_dir(root, parent).map_err(sys(vol, format!("open {parent:?}")))?;
            let done = match e.kind() {
                Kind::Directory => put_dir(&dir, name, e),
                Kind::File => put_file(&dir, name, e),
                Kind::Symlink => put_symlink(&dir, name, e),
            };
            done.map_err(sys(vol, format!("write {:?}", e.path)))?;
        }
    }
    let wanted: HashMap<&str, Kind> = entries[1..]
        .iter()
        .map(|e| (e.path.as_str(), e.kind()))
        .collect();
    prune(root, "", &wanted).map_err(sys(vol, "remove what is gone"))
}

fn volumes_dir(vol: &str) -> Result<OwnedFd, VolumeError> {
    let dir = Path::new(VOLUMES_DIR);
    std::fs::create_dir_all(dir).map_err(sys(vol, format!("create {VOLUMES_DIR}")))?;
    open_abs_dir(dir).map_err(sys(vol, format!("open {VOLUMES_DIR}")))
}

/// Makes volume `name` hold exactly `entries` (see the module docs).
pub fn sync(name: &str, entries: &[VolumeEntry]) -> Result<(), VolumeError> {
    check_name(name)?;
    let is_dir = check_entries(entries)?;
    let parent = volumes_dir(name)?;
    let existing = lstat_at(&parent, name).map_err(sys(name, "stat"))?;
    let Some(st) = existing else {
        return create(name, &parent, entries, is_dir);
    };
    match (kind_of(&st), is_dir) {
        (SFlag::S_IFDIR, true) => {
            let root = openat(
                &parent,
                name,
                OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                Mode::empty(),
            )
            .map_err(sys(name, "open"))?;
            apply_tree(name, &root, entries)
        }
        (SFlag::S_IFREG, false) => rewrite_file(name, &parent, &st, &entries[0]),
        _ => Err(VolumeError::Invalid(format!(
            "volume {name:?} exists as another kind (file or directory)"
        ))),
    }
}

/// A new volume: built under a temporary name and renamed into place whole.
fn create(
    name: &str,
    parent: &OwnedFd,
    entries: &[VolumeEntry],
    is_dir: bool,
) -> Result<(), VolumeError> {
    let tmp = format!("{TMP_PREFIX}{name}");
    remove_at(parent, &tmp).map_err(sys(name, "remove a stale temporary copy"))?;
    let built = if is_dir {
        put_dir(parent, &tmp, &entries[0])
            .map_err(sys(name, "create"))
            .and_then(|()| {
                let root = openat(
                    parent,
                    tmp.as_str(),
                    OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                    Mode::empty(),
                )
                .map_err(sys(name, "open"))?;
                apply_tree(name, &root, entries)
            })
    } else {
        put_file(parent, &tmp, &entries[0]).map_err(sys(name, "write"))
    };
    let done = built.and_then(|()| {
        renameat(parent, tmp.as_str(), parent, name).map_err(sys(name, "rename into place"))
    });
    if done.is_err() {
        let _ = remove_at(parent, &tmp);
    }
    done
}

/// Rewrites a file volume's file in place: bind mounts of it keep its inode.
fn rewrite_file(
    name: &str,
    parent: &OwnedFd,
    st: &FileStat,
    e: &VolumeEntry,
) -> Result<(), VolumeError> {
    if same_file(parent, name, st, e) {
        return Ok(());
    }
    let fd = openat(
        parent,
        name,
        OFlag::O_WRONLY | OFlag::O_TRUNC | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(sys(name, "open"))?;
    fill(&mut std::fs::File::from(fd), e).map_err(sys(name, "write"))
}

/// Where a prepared volume lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium<'a> {
    /// A directory under this scratch disk mount.
    Disk(&'a Path),
    /// A tmpfs of at most this many bytes (0: the tmpfs default).
    Memory(u64),
    /// The entry of the volume's name in the virtio-fs file system with this tag.
    Shared(&'a str),
    /// This mounted image (its mount point, its drive's serial), read-only.
    Image(&'a Path, &'a str),
}

/// Mounts virtio-fs file system `tag` (once) and returns where.
fn shared_fs(name: &str, tag: &str) -> Result<PathBuf, VolumeError> {
    let ok = !tag.is_empty()
        && tag.len() <= 36
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(VolumeError::Invalid(format!(
            "file system tag {tag:?} must be 1 to 36 of [A-Za-z0-9_-]"
        )));
    }
    let dir = Path::new(SHARED_FS_DIR).join(tag);
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .map_err(sys(name, "read /proc/self/mounts"))?
        .lines()
        .any(|l| l.split(' ').nth(1) == dir.to_str());
    if !mounted {
        std::fs::create_dir_all(&dir).map_err(sys(name, format!("create {}", dir.display())))?;
        mount(
            Some(tag),
            &dir,
            Some("virtiofs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(sys(
            name,
            format!("mount the virtio-fs file system {tag:?}"),
        ))?;
    }
    Ok(dir)
}

/// Makes the empty volume `name` unless it exists. Mode 0777 as the kubelet makes an
/// emptyDir: any user of the pod may write there.
pub fn prepare(name: &str, medium: Medium<'_>) -> Result<(), VolumeError> {
    check_name(name)?;
    let parent = volumes_dir(name)?;
    if let Some(st) = lstat_at(&parent, name).map_err(sys(name, "stat"))? {
        if kind_of(&st) == SFlag::S_IFDIR || matches!(medium, Medium::Shared(_)) {
            if let Medium::Image(_, serial) = medium {
                // Counted once per volume: the caller releases this extra use.
                return Err(VolumeError::Exists(format!("{name} ({serial})")));
            }
            return Ok(());
        }
        return Err(VolumeError::Invalid(format!(
            "volume {name:?} exists and is not a directory"
        )));
    }
    let target = path(name);
    if let Medium::Shared(tag) = medium {
        return prepare_shared(name, tag, &target);
    }
    if let Medium::Image(source, serial) = medium {
        return prepare_image(name, source, serial, &target);
    }
    let mk = |p: &Path| -> Result<(), VolumeError> {
        std::fs::create_dir_all(p).map_err(sys(name, format!("create {}", p.display())))?;
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .map_err(sys(name, format!("chmod {}", p.display())))
    };
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let result = match medium {
        Medium::Disk(scratch) => {
            let backing = scratch.join("volumes").join(name);
            mk(&backing)?;
            mk(&target)?;
            let bound = mount(
                Some(&backing),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(sys(name, "bind the scratch directory"));
            if bound.is_ok() {
                lock_backings()
                    .get_or_insert_with(HashMap::new)
                    .insert(name.to_owned(), Backing::Scratch(backing));
            } else {
                let _ = std::fs::remove_dir(&backing);
            }
            bound
        }
        Medium::Shared(_) | Medium::Image(..) => Ok(()),
        Medium::Memory(size) => {
            mk(&target)?;
            let data = if size == 0 {
                "mode=1777".to_owned()
            } else {
                format!("mode=1777,size={size}")
            };
            mount(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                flags,
                Some(data.as_str()),
            )
            .map_err(sys(name, "mount a tmpfs"))
        }
    };
    if result.is_err() {
        let _ = std::fs::remove_dir(&target);
    }
    result
}

/// Binds entry `name` of virtio-fs file system `tag` at `target` (a file or a
/// directory, as the entry is).
fn prepare_shared(name: &str, tag: &str, target: &Path) -> Result<(), VolumeError> {
    let source = shared_fs(name, tag)?.join(name);
    let md = std::fs::symlink_metadata(&source)
        .map_err(sys(name, format!("stat {}", source.display())))?;
    if md.is_dir() {
        std::fs::create_dir(target).map_err(sys(name, "create the mount point"))?;
    } else if md.is_file() {
        std::fs::File::create(target).map_err(sys(name, "create the mount point"))?;
    } else {
        return Err(VolumeError::Invalid(format!(
            "shared entry {name:?} is neither a file nor a directory"
        )));
    }
    let bound = mount(
        Some(&source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(name, "bind the shared entry"));
    match bound {
        Ok(()) => {
            lock_backings()
                .get_or_insert_with(HashMap::new)
                .insert(name.to_owned(), Backing::Shared);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir(target).or_else(|_| std::fs::remove_file(target));
            Err(e)
        }
    }
}

/// Binds the mounted image at `source` read-only at `target`.
fn prepare_image(
    name: &str,
    source: &Path,
    serial: &str,
    target: &Path,
) -> Result<(), VolumeError> {
    std::fs::create_dir(target).map_err(sys(name, "create the mount point"))?;
    let bound = mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .and_then(|()| {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
    })
    .map_err(sys(name, "bind the image"));
    match bound {
        Ok(()) => {
            lock_backings()
                .get_or_insert_with(HashMap::new)
                .insert(name.to_owned(), Backing::Image(serial.to_owned()));
            Ok(())
        }
        Err(e) => {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(target);
            Err(e)
        }
    }
}

fn lock_backings() -> std::sync::MutexGuard<'static, Option<HashMap<String, Backing>>> {
    BACKINGS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The last `max` bytes (at most [`MAX_READ`]) of file volume `name`, and whether
/// there were more.
pub fn read_tail(name: &str, max: u32) -> Result<(Vec<u8>, bool), VolumeError> {
    check_name(name)?;
    let max = u64::from(max.min(MAX_READ));
    let parent = volumes_dir(name)?;
    let fd = match openat(
        &parent,
        name,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Err(VolumeError::NotFound(name.to_owned())),
        Err(e) => return Err(sys(name, "open")(e)),
    };
    let mut f = std::fs::File::from(fd);
    let md = f.metadata().map_err(sys(name, "stat"))?;
    if !md.is_file() {
        return Err(VolumeError::Invalid(format!(
            "volume {name:?} is not a file"
        )));
    }
    let start = md.len().saturating_sub(max);
    f.seek(SeekFrom::Start(start)).map_err(sys(name, "seek"))?;
    let mut data = Vec::new();
    f.take(max)
        .read_to_end(&mut data)
        .map_err(sys(name, "read"))?;
    Ok((data, start > 0))
}

/// Unmounts (if mounted) and deletes volume `name`; an unknown one is fine. Returns
/// the serial of the image drive the volume held, which the caller releases.
pub fn remove(name: &str) -> Result<Option<String>, VolumeError> {
    check_name(name)?;
    let target = path(name);
    match umount2(&target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(sys(name, "unmount")(e)),
    }
    let parent = volumes_dir(name)?;
    let backing = lock_backings().as_mut().and_then(|b| b.remove(name));
    if let Some(Backing::Shared | Backing::Image(_)) = &backing {
        // Only the mount point: what was below it is the host's, or the image's.
        let image = match backing {
            Some(Backing::Image(serial)) => Some(serial),
            _ => None,
        };
        return match unlinkat(&parent, name, UnlinkatFlags::RemoveDir)
            .or_else(|_| unlinkat(&parent, name, UnlinkatFlags::NoRemoveDir))
        {
            Ok(()) | Err(Errno::ENOENT) => Ok(image),
            Err(e) => Err(sys(name, "delete the mount point")(e)),
        };
    }
    remove_at(&parent, name).map_err(sys(name, "delete"))?;
    if let Some(Backing::Scratch(b)) = backing {
        if let Some(dir) = b.parent() {
            let fd = open_abs_dir(dir).map_err(sys(name, "open the scratch volumes"))?;
            let leaf = b.file_name().unwrap_or(OsStr::new(name)).to_string_lossy();
            remove_at(&fd, &leaf).map_err(sys(name, "delete the scratch directory"))?;
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind) -> VolumeEntry {
        VolumeEntry {
            path: path.into(),
            kind: kind as i32,
            mode: if kind == Kind::Directory {
                0o755
            } else {
                0o644
            },
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            ..Default::default()
        }
    }

    fn file(path: &str, data: &str) -> VolumeEntry {
        VolumeEntry {
            data: data.as_bytes().to_vec(),
            ..entry(path, Kind::File)
        }
    }

    fn link(path: &str, target: &str) -> VolumeEntry {
        VolumeEntry {
            target: target.into(),
            ..entry(path, Kind::Symlink)
        }
    }

    /// The kubelet's atomic-writer layout at version `ts` with `keys`.
    fn configmap(ts: &str, keys: &[(&str, &str)]) -> Vec<VolumeEntry> {
        let mut v = vec![entry("", Kind::Directory), entry(ts, Kind::Directory)];
        for (k, val) in keys {
            v.push(file(&format!("{ts}/{k}"), val));
        }
        v.push(link("..data", ts));
        for (k, _) in keys {
            v.push(link(k, &format!("..data/{k}")));
        }
        v
    }

    fn apply_in(dir: &Path, entries: &[VolumeEntry]) -> Result<(), VolumeError> {
        check_entries(entries)?;
        let root = open_abs_dir(dir).unwrap();
        apply_tree("t", &root, entries)
    }

    #[test]
    fn names_and_paths_are_checked() {
        assert!(check_name("abc-09").is_ok());
        for bad in ["", "A", "a/b", "..", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for bad in ["/a", "a//b", "a/../b", "./a", "a/"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_path("..data/key").is_ok());
    }

    #[test]
    fn trees_are_checked() {
        let root = entry("", Kind::Directory);
        assert!(check_entries(&[]).is_err());
        assert!(check_entries(&[file("a", "")]).is_err());
        assert!(check_entries(&[root.clone(), file("d/a", "")]).is_err());
        assert!(check_entries(&[root.clone(), file("a", ""), file("a", "")]).is_err());
        assert!(check_entries(&[root.clone(), link("a", "")]).is_err());
        assert!(check_entries(&[file("", "x"), file("a", "")]).is_err());
        assert!(!check_entries(&[file("", "x")]).unwrap());
        let ok = [root, entry("d", Kind::Directory), file("d/a", "1")];
        assert!(check_entries(&ok).unwrap());
    }

    #[test]
    fn a_configmap_update_swaps_data_and_removes_the_old_version() {
        let tmp = tempfile::tempdir().unwrap();
        let v1 = configmap("..2026_01_01_00_00_00.1", &[("a", "one"), ("b", "two")]);
        apply_in(tmp.path(), &v1).unwrap();
        let read = |k: &str| std::fs::read_to_string(tmp.path().join(k)).unwrap();
        assert_eq!((read("a"), read("b")), ("one".into(), "two".into()));

        let v2 = configmap("..2026_01_01_00_01_00.2", &[("a", "uno")]);
        apply_in(tmp.path(), &v2).unwrap();
        assert_eq!(read("a"), "uno");
        assert!(!tmp.path().join("b").exists());
        assert!(!tmp.path().join("..2026_01_01_00_00_00.1").exists());
        let data = std::fs::read_link(tmp.path().join("..data")).unwrap();
        assert_eq!(data, Path::new("..2026_01_01_00_01_00.2"));
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with(TMP_PREFIX)),
            "{names:?}"
        );
    }

    #[test]
    fn the_swap_is_the_only_visible_step() {
        // Before the `..data` rename, the old version is complete; after, the new one.
        let tmp = tempfile::tempdir().unwrap();
        let v1 = configmap("..v1", &[("a", "one")]);
        apply_in(tmp.path(), &v1).unwrap();
        let inode = |p: &str| {
            std::os::unix::fs::MetadataExt::ino(
                &std::fs::symlink_metadata(tmp.path().join(p)).unwrap(),
            )
        };
        let link_before = inode("a");
        let v2 = configmap("..v2", &[("a", "two")]);
        apply_in(tmp.path(), &v2).unwrap();
        // The key's own symlink was never replaced: only `..data` moved.
        assert_eq!(inode("a"), link_before);
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("a")).unwrap(),
            "two"
        );
    }

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::os::unix::fs::symlink(outside.path(), root.join("d")).unwrap();
        let tree = [
            entry("", Kind::Directory),
            entry("d", Kind::Directory),
            file("d/x", "data"),
        ];
        apply_in(root, &tree).unwrap();
        assert!(std::fs::symlink_metadata(root.join("d")).unwrap().is_dir());
        assert_eq!(std::fs::read_to_string(root.join("d/x")).unwrap(), "data");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn kinds_change_and_modes_apply() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let mut f = file("x", "1");
        f.mode = 0o600;
        apply_in(root, &[entry("", Kind::Directory), f]).unwrap();
        let md = std::fs::metadata(root.join("x")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777,
            0o600
        );
        let tree = [
            entry("", Kind::Directory),
            entry("x", Kind::Directory),
            file("x/y", "2"),
        ];
        apply_in(root, &tree).unwrap();
        assert_eq!(std::fs::read_to_string(root.join("x/y")).unwrap(), "2");
        apply_in(root, &[entry("", Kind::Directory), link("x", "elsewhere")]).unwrap();
        assert_eq!(
            std::fs::read_link(root.join("x")).unwrap(),
            Path::new("elsewhere")
        );
    }

    #[test]
    fn a_file_volume_is_rewritten_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = open_abs_dir(tmp.path()).unwrap();
        create("f", &parent, &[file("", "one")], false).unwrap();
        let p = tmp.path().join("f");
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        let st = lstat_at(&parent, "f").unwrap().unwrap();
        rewrite_file("f", &parent, &st, &file("", "two, longer")).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two, longer");
        let ino2 = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        assert_eq!(ino, ino2);
    }
}
