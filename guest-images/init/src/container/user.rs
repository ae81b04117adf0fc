//! Who a container process runs as: the request's user and group names looked up in
//! the container's own `/etc/passwd` and `/etc/group`, the groups of the image added,
//! `run_as_non_root` enforced.
//!
//! The files are read inside the container (after `pivot_root`, or after joining a
//! running container's mount namespace), so symlinks in the image resolve inside it
//! and volumes mounted over `/etc/passwd` count, as with runc. Their content is the
//! image's and hostile: each is read with a size cap, and lines that do not parse are
//! skipped, as libcontainer's user package tolerates them. Unlike that package, a line
//! whose uid or gid is not a number is skipped instead of read as 0 (root).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Largest `/etc/passwd` or `/etc/group` read.
pub const MAX_FILE: u64 = 4 << 20;
/// Most supplementary groups (the kernel's `NGROUPS_MAX`).
pub const MAX_GROUPS: usize = 65_536;
/// The id that `setresuid`/`setresgid` read as "leave unchanged": never a valid id.
const UNCHANGED: u32 = u32::MAX;

/// Resolving a process's user failed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is larger than [`MAX_FILE`].
    #[error("{0} is larger than {MAX_FILE} bytes")]
    TooLarge(PathBuf),
    /// A file is not a regular file.
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    /// The user name is not in `/etc/passwd`.
    #[error("no user {0:?} in the container's /etc/passwd")]
    NoUser(String),
    /// The group name is not in `/etc/group`.
    #[error("no group {0:?} in the container's /etc/group")]
    NoGroup(String),
    /// The process would run as root but must not.
    #[error("the container must run as non-root but its user{} is uid 0", named(.0))]
    Root(Option<String>),
    /// More supplementary groups than the kernel takes.
    #[error("{0} supplementary groups (at most {MAX_GROUPS})")]
    TooManyGroups(usize),
}

fn named(name: &Option<String>) -> String {
    name.as_ref().map(|n| format!(" {n:?}")).unwrap_or_default()
}

/// What the request says about the user (checked by `spec`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRequest {
    /// uid, unless `username` is set.
    pub uid: u32,
    /// gid, if `gid_set` and no `groupname`.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// A name to look up in `/etc/passwd`.
    pub username: Option<String>,
    /// A name to look up in `/etc/group`.
    pub groupname: Option<String>,
    /// `gid` (or `groupname`) was given; else the passwd entry's primary group.
    pub gid_set: bool,
    /// Add the groups `/etc/group` lists the user in.
    pub image_groups: bool,
    /// Refuse uid 0.
    pub non_root: bool,
}

impl UserRequest {
    /// A request for exactly `id` (nothing to look up): what an exec inherits from
    /// its container.
    pub fn exact(id: &Identity) -> UserRequest {
        UserRequest {
            uid: id.uid,
            gid: id.gid,
            additional_gids: id.groups.clone(),
            gid_set: true,
            ..UserRequest::default()
        }
    }

    fn needs_passwd(&self) -> bool {
        self.username.is_some() || (!self.gid_set && self.groupname.is_none()) || self.image_groups
    }

    fn needs_group(&self) -> bool {
        self.groupname.is_some() || self.image_groups
    }
}

/// What a process really runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary groups (`setgroups`), the primary gid first.
    pub groups: Vec<u32>,
}

/// One `/etc/passwd` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwd {
    /// Login name.
    pub name: String,
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
}

/// One `/etc/group` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// gid.
    pub gid: u32,
    /// Member user names.
    pub members: Vec<String>,
}

fn id(field: &str) -> Option<u32> {
    field.trim().parse::<u32>().ok().filter(|&v| v != UNCHANGED)
}

/// The lines of a colon-separated file worth parsing: trimmed, non-empty.
fn lines(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.split(':').collect())
}

/// Parses `/etc/passwd` (`name:password:uid:gid:gecos:home:shell`), skipping lines
/// without a name or with a uid or gid that is not a number.
pub fn parse_passwd(text: &str) -> Vec<Passwd> {
    lines(text)
        .filter_map(|f| {
            let name = *f.first()?;
            Some(Passwd {
                name: (!name.is_empty()).then(|| name.to_owned())?,
                uid: id(f.get(2)?)?,
                gid: id(f.get(3)?)?,
            })
        })
        .collect()
}

/// Parses `/etc/group` (`name:password:gid:member,member`), skipping lines without a
/// name or with a gid that is not a number.
pub fn parse_group(text: &str) -> Vec<Group> {
    lines(text)
        .filter_map(|f| {
            let name = *f.first()?;
            Some(Group {
                name: (!name.is_empty()).then(|| name.to_owned())?,
                gid: id(f.get(2)?)?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves `req` against the parsed files (`None`: the file does not exist).
pub fn resolve_with(
    req: &UserRequest,
    passwd: Option<&[Passwd]>,
    groups: Option<&[Group]>,
) -> Result<Identity, UserError> {
    let passwd = passwd.unwrap_or_default();
    let groups = groups.unwrap_or_default();
    let entry = match &req.username {
        Some(name) => Some(
            passwd
                .iter()
                .find(|p| &p.name == name)
                .ok_or_else(|| UserError::NoUser(name.clone()))?,
        ),
        None => passwd.iter().find(|p| p.uid == req.uid),
    };
    let uid = entry.map_or(req.uid, |p| p.uid);
    let gid = match &req.groupname {
        Some(name) => {
            groups
                .iter()
                .find(|g| &g.name == name)
                .ok_or_else(|| UserError::NoGroup(name.clone()))?
                .gid
        }
        None if req.gid_set => req.gid,
        None => entry.map_or(0, |p| p.gid),
    };
    if req.non_root && uid == 0 {
        return Err(UserError::Root(req.username.clone()));
    }
    // containerd puts the primary group first among the supplementary ones.
    let mut all = vec![gid];
    all.extend(&req.additional_gids);
    if let (true, Some(p)) = (req.image_groups, entry) {
        all.extend(
            groups
                .iter()
                .filter(|g| g.members.iter().any(|m| m == &p.name))
                .map(|g| g.gid),
        );
    }
    let mut seen = std::collections::HashSet::new();
    all.retain(|g| seen.insert(*g));
    if all.len() > MAX_GROUPS {
        return Err(UserError::TooManyGroups(all.len()));
    }
    Ok(Identity {
        uid,
        gid,
        groups: all,
    })
}

/// Reads a file of at most [`MAX_FILE`] bytes; `None` when it does not exist. A
/// FIFO or device is refused without being opened or blocked on.
pub fn read_capped(path: &Path) -> Result<Option<String>, UserError> {
    let err = |source| UserError::Read {
        path: path.to_owned(),
        source,
    };
    // Checked before opening too: opening a device can have effects of its own.
    match std::fs::metadata(path) {
        Ok(md) if !md.is_file() => return Err(UserError::NotAFile(path.to_owned())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    if !file.metadata().map_err(err)?.is_file() {
        return Err(UserError::NotAFile(path.to_owned()));
    }
    let mut data = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut data)
        .map_err(err)?;
    if data.len() as u64 > MAX_FILE {
        return Err(UserError::TooLarge(path.to_owned()));
    }
    Ok(Some(String::from_utf8_lossy(&data).into_owned()))
}

/// Resolves `req` with the `passwd` and `group` files of the current root (only
/// those the request needs are read).
pub fn resolve(req: &UserRequest, etc: &Path) -> Result<Identity, UserError> {
    let passwd = if req.needs_passwd() {
        read_capped(&etc.join("passwd"))?.map(|t| parse_passwd(&t))
    } else {
        None
    };
    let groups = if req.needs_group() {
        read_capped(&etc.join("group"))?.map(|t| parse_group(&t))
    } else {
        None
    };
    resolve_with(req, passwd.as_deref(), groups.as_deref())
}

impl Identity {
    /// The identity as the child reports it to vmlet-init: uid, gid, the number of
    /// groups and the groups, each a little-endian u32.
    pub fn encode(&self) -> Vec<u8> {
        let count = u32::try_from(self.groups.len()).unwrap_or(u32::MAX);
        [self.uid, self.gid, count]
            .into_iter()
            .chain(self.groups.iter().copied())
            .flat_map(u32::to_le_bytes)
            .collect()
    }

    /// Reads the 12-byte header of [`Self::encode`]: uid, gid and the number of groups
    /// (`None` when more than [`MAX_GROUPS`]).
    pub fn decode_header(header: [u8; 12]) -> Option<(Identity, usize)> {
        let word = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&header[i * 4..i * 4 + 4]);
            u32::from_le_bytes(b)
        };
        let count = usize::try_from(word(2)).ok().filter(|&n| n <= MAX_GROUPS)?;
        Some((
            Identity {
                uid: word(0),
                gid: word(1),
                groups: Vec::with_capacity(count),
            },
            count,
        ))
    }

    /// Adds the groups that follow the header (4 bytes each).
    pub fn decode_groups(&mut self, bytes: &[u8]) {
        self.groups.extend(bytes.chunks_exact(4).map(|c| {
            let mut b = [0u8; 4];
            b.copy_from_slice(c);
            u32::from_le_bytes(b)
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        \n\
        # a comment line is a user named '# a comment line', harmless\n\
        broken\n\
        baduid:x:abc:1:\n\
        huge:x:4294967295:1:\n\
        www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n\
        app:x:1000:1000\n\
        dup:x:1000:5\n\
        nogroup-user:x:2000:2000:::\n";
    const GROUP: &str = "root:x:0:\n\
        www-data:x:33:\n\
        web:x:3000:www-data, app\n\
        bad:x:notanumber:www-data\n\
        short\n\
        logs:x:3001:app,www-data\n\
        admins:x:3002:\n";

    fn req() -> UserRequest {
        UserRequest::default()
    }

    fn resolve_text(r: &UserRequest) -> Result<Identity, UserError> {
        let p = parse_passwd(PASSWD);
        let g = parse_group(GROUP);
        resolve_with(r, Some(&p), Some(&g))
    }

    #[test]
    fn passwd_parses_and_skips_malformed_lines() {
        let p = parse_passwd(PASSWD);
        let names: Vec<_> = p.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["root", "www-data", "app", "dup", "nogroup-user"],
            "{p:?}"
        );
        assert_eq!(
            p[1],
            Passwd {
                name: "www-data".into(),
                uid: 33,
                gid: 33
            }
        );
        assert!(parse_passwd("").is_empty());
        assert!(parse_passwd(":x:0:0\n::::").is_empty());
    }

    #[test]
    fn group_parses_members() {
        let g = parse_group(GROUP);
        let names: Vec<_> = g.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["root", "www-data", "web", "logs", "admins"]);
        assert_eq!(g[2].members, ["www-data", "app"]);
        assert!(g[4].members.is_empty());
    }

    #[test]
    fn names_resolve() {
        let mut r = req();
        r.username = Some("www-data".into());
        let id = resolve_text(&r).unwrap();
        assert_eq!((id.uid, id.gid, id.groups.as_slice()), (33, 33, &[33][..]));

        r.groupname = Some("web".into());
        let id = resolve_text(&r).unwrap();
        assert_eq!((id.uid, id.gid), (33, 3000));

        // A given gid wins over the passwd entry's.
        let mut r = req();
        r.username = Some("www-data".into());
        r.gid = 7;
        r.gid_set = true;
        assert_eq!(resolve_text(&r).unwrap().gid, 7);
    }

    #[test]
    fn numeric_uid_gets_its_primary_group() {
        let mut r = req();
        r.uid = 1000;
        // The first entry with the uid counts.
        assert_eq!(resolve_text(&r).unwrap().gid, 1000);
        r.uid = 4242;
        let id = resolve_text(&r).unwrap();
        assert_eq!((id.uid, id.gid), (4242, 0));
        // No passwd at all.
        let id = resolve_with(&r, None, None).unwrap();
        assert_eq!((id.uid, id.gid, id.groups.as_slice()), (4242, 0, &[0][..]));
    }

    #[test]
    fn image_groups_merge_with_the_requested_ones() {
        let mut r = req();
        r.username = Some("www-data".into());
        r.additional_gids = vec![5000, 3000];
        assert_eq!(resolve_text(&r).unwrap().groups, [33, 5000, 3000]);
        r.image_groups = true;
        assert_eq!(resolve_text(&r).unwrap().groups, [33, 5000, 3000, 3001]);
        // By uid too, through the passwd entry's name.
        let mut r = req();
        r.uid = 1000;
        r.image_groups = true;
        assert_eq!(resolve_text(&r).unwrap().groups, [1000, 3000, 3001]);
        // A uid without a name has no image groups.
        r.uid = 4242;
        assert_eq!(resolve_text(&r).unwrap().groups, [0]);
    }

    #[test]
    fn unknown_names_and_root_are_refused() {
        let mut r = req();
        r.username = Some("nobody-here".into());
        assert!(matches!(resolve_text(&r), Err(UserError::NoUser(n)) if n == "nobody-here"));
        assert!(matches!(
            resolve_with(&r, None, None),
            Err(UserError::NoUser(_))
        ));
        let mut r = req();
        r.groupname = Some("nope".into());
        assert!(matches!(resolve_text(&r), Err(UserError::NoGroup(_))));

        let mut r = req();
        r.non_root = true;
        assert!(matches!(resolve_text(&r), Err(UserError::Root(None))));
        r.username = Some("root".into());
        let e = resolve_text(&r).unwrap_err();
        assert!(e.to_string().contains("\"root\" is uid 0"), "{e}");
        r.username = Some("www-data".into());
        assert_eq!(resolve_text(&r).unwrap().uid, 33);
    }

    #[test]
    fn only_needed_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        // Neither file exists: a fully numeric request needs none.
        let mut r = req();
        r.uid = 5;
        r.gid = 6;
        r.gid_set = true;
        let id = resolve(&r, dir.path()).unwrap();
        assert_eq!((id.uid, id.gid), (5, 6));
        // A directory where passwd should be is an error only when it is needed.
        std::fs::create_dir(dir.path().join("passwd")).unwrap();
        assert!(resolve(&r, dir.path()).is_ok());
        r.gid_set = false;
        assert!(matches!(
            resolve(&r, dir.path()),
            Err(UserError::NotAFile(_))
        ));
    }

    #[test]
    fn files_are_read_with_a_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        assert!(read_capped(&path).unwrap().is_none());
        std::fs::write(&path, PASSWD).unwrap();
        assert_eq!(read_capped(&path).unwrap().as_deref(), Some(PASSWD));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_FILE + 1).unwrap();
        assert!(matches!(read_capped(&path), Err(UserError::TooLarge(_))));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(read_capped(&fifo), Err(UserError::NotAFile(_))));
    }

    #[test]
    fn identities_round_trip() {
        let id = Identity {
            uid: 33,
            gid: 44,
            groups: vec![44, 1, 70000],
        };
        let bytes = id.encode();
        let mut header = [0u8; 12];
        header.copy_from_slice(&bytes[..12]);
        let (mut back, n) = Identity::decode_header(header).unwrap();
        assert_eq!(n, 3);
        back.decode_groups(&bytes[12..]);
        assert_eq!(back, id);
        let mut huge = [0u8; 12];
        huge[8..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Identity::decode_header(huge).is_none());
    }
}
