//! A container's spec, checked: the protocol's [`ContainerSpec`] turned into values the
//! rest of the module can use without further validation. Every check that input can
//! fail is here, so a bad request is refused before anything is mounted or forked.

use std::ffi::CString;
use std::path::{Component, Path, PathBuf};

use nix::sys::resource::Resource;
use vmlet_proto::agent;

use super::caps::{self, CapSets};
use super::seccomp::{Filter, SeccompError};
use super::user::{UserRequest, MAX_GROUPS};

/// The `PATH` a process gets when its environment has none (containerd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Longest container or exec ID.
const MAX_ID: usize = 128;
/// Longest user or group name (the kernel's `LOGIN_NAME_MAX`).
const MAX_USER_NAME: usize = 256;
/// Most masked or read-only paths.
const MAX_PATHS: usize = 1024;
/// Longest path (`PATH_MAX`).
const MAX_PATH: usize = 4096;

/// A request field that is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A required field is empty.
    #[error("{0} is required")]
    Missing(&'static str),
    /// An ID has characters or a length that are not allowed.
    #[error(
        "invalid {what} {id:?}: use 1 to {max} of [A-Za-z0-9_.-], starting with a letter or digit"
    )]
    BadId {
        /// Which ID.
        what: &'static str,
        /// The ID.
        id: String,
        /// Its longest allowed length.
        max: usize,
    },
    /// A string contains a NUL byte.
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    /// A path is not absolute, or a relative path escapes.
    #[error("{what} {path:?} must be {expected}")]
    BadPath {
        /// Which field.
        what: &'static str,
        /// The path.
        path: String,
        /// What it should be.
        expected: &'static str,
    },
    /// An environment entry is not `KEY=value`.
    #[error("environment entry {0:?} is not KEY=value")]
    BadEnv(String),
    /// An unknown rlimit name.
    #[error("unknown rlimit {0:?}")]
    BadRlimit(String),
    /// An rlimit whose soft value is above its hard value.
    #[error("rlimit {0}: soft limit above hard limit")]
    RlimitOrder(String),
    /// An unknown capability name.
    #[error(transparent)]
    Caps(#[from] caps::CapsError),
    /// A seccomp filter that cannot be used.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// A user or group name that cannot be in `/etc/passwd` or `/etc/group`.
    #[error("{what} {name:?}: at most {MAX_USER_NAME} bytes, without ':', newlines or NUL")]
    BadUserName {
        /// Which name.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A list with too many entries.
    #[error("{what}: {count} entries (at most {max})")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// Its length.
        count: usize,
        /// Its longest allowed length.
        max: usize,
    },
    /// An unsupported image file system.
    #[error("image file system {0:?} is not supported (use erofs or ext4)")]
    BadFstype(String),
    /// A resource value out of range.
    #[error("{what} {value} is out of range ({range})")]
    Range {
        /// Which resource.
        what: &'static str,
        /// The value.
        value: u64,
        /// The allowed range.
        range: &'static str,
    },
    /// User namespace mappings the kernel would refuse.
    #[error("user namespace mapping: {0}")]
    BadIdMapping(String),
    /// A mount option that is not understood.
    #[error("mount on {destination}: {reason}")]
    BadMount {
        /// The mount's destination.
        destination: String,
        /// What is wrong.
        reason: String,
    },
}

/// Checks a name: 1 to `max` of `[A-Za-z0-9_.-]`, starting with a letter or digit.
fn check_name(what: &'static str, name: &str, max: usize) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadId {
            what,
            id: name.to_owned(),
            max,
        })
    }
}

/// Checks a container or exec ID.
pub fn check_id(what: &'static str, id: &str) -> Result<(), SpecError> {
    check_name(what, id, MAX_ID)
}

/// The file system of an image drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fstype {
    /// erofs (what vmletd builds).
    Erofs,
    /// ext4.
    Ext4,
}

impl Fstype {
    /// The name mount(2) takes.
    pub fn name(self) -> &'static str {
        match self {
            Fstype::Erofs => "erofs",
            Fstype::Ext4 => "ext4",
        }
    }
}

/// Where a container's root file system comes from.
#[derive(Debug, Clone)]
pub struct RootfsSpec {
    /// virtio-blk serial of the image drive.
    pub image_serial: String,
    /// Its file system.
    pub image_fstype: Fstype,
    /// Directory inside the image that is the root, relative ("" for the image's root).
    pub image_subdir: PathBuf,
    /// virtio-blk serial of the pod's scratch disk; `None` for tmpfs.
    pub scratch_serial: Option<String>,
    /// A read-only root: made read-only once the container's mounts are in place (its
    /// writable layer then only holds their mount points).
    pub readonly: bool,
}

/// An rlimit to set.
#[derive(Debug, Clone, Copy)]
pub struct Rlimit {
    /// Which.
    pub resource: Resource,
    /// Soft value.
    pub soft: u64,
    /// Hard value.
    pub hard: u64,
}

/// A process to run, checked.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// argv.
    pub args: Vec<CString>,
    /// envp, `KEY=value`.
    pub env: Vec<CString>,
    /// The directories `args[0]` is looked up in.
    pub path: Vec<PathBuf>,
    /// Working directory (absolute).
    pub cwd: PathBuf,
    /// The user, resolved by the process inside the container.
    pub user: UserRequest,
    /// Whether it gets a terminal.
    pub terminal: bool,
    /// Initial window size (rows, cols).
    pub size: (u16, u16),
    /// Whether stdin stays open for writes.
    pub open_stdin: bool,
    /// rlimits.
    pub rlimits: Vec<Rlimit>,
    /// `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privileges: bool,
    /// Capability sets; `None`: containerd's default for the resolved uid.
    pub caps: Option<CapSets>,
    /// oom_score_adj, if set (0 otherwise).
    pub oom_score_adj: Option<i32>,
    /// Seccomp filter.
    pub seccomp: Option<Filter>,
}

/// One mount, checked.
#[derive(Debug, Clone)]
pub struct MountSpec {
    /// Absolute path in the container.
    pub destination: PathBuf,
    /// File system type; "bind" for bind mounts.
    pub fstype: String,
    /// Source: an absolute guest path for binds.
    pub source: String,
    /// mount(2) flags.
    pub flags: nix::mount::MsFlags,
    /// Whether a bind mount is recursive.
    pub recursive: bool,
    /// Read-only all the way down, submounts too (`rro`: `mount_setattr` with
    /// `AT_RECURSIVE`).
    pub recursive_readonly: bool,
    /// Propagation (`MS_PRIVATE`, `MS_SLAVE`, ... with `MS_REC`), applied after mounting.
    pub propagation: nix::mount::MsFlags,
    /// File-system data options.
    pub data: Option<String>,
    /// For binds: the path below `source` to bind (resolved inside it).
    pub subpath: Option<PathBuf>,
}

impl MountSpec {
    /// Whether this is a bind mount.
    pub fn is_bind(&self) -> bool {
        self.flags.contains(nix::mount::MsFlags::MS_BIND)
    }
}

/// cgroup v2 limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// cpu.weight, if set.
    pub cpu_weight: Option<u64>,
    /// cpu.max (quota, period), if a quota is set.
    pub cpu_max: Option<(u64, u64)>,
    /// memory.max, if set.
    pub memory_max: Option<u64>,
    /// pids.max, if set.
    pub pids_max: Option<u64>,
}

/// A whole container, checked.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Container ID.
    pub id: String,
    /// Root file system.
    pub rootfs: RootfsSpec,
    /// Main process.
    pub process: ProcessSpec,
    /// Extra mounts.
    pub mounts: Vec<MountSpec>,
    /// Limits.
    pub resources: Resources,
    /// Join the pod's PID namespace.
    pub share_pod_pid_namespace: bool,
    /// Join this container's PID namespace instead ("" for none).
    pub target_pid_namespace: String,
    /// Every guest device, `/sys` writable, no device filter.
    pub privileged: bool,
    /// Paths hidden in the container (absolute, normalized).
    pub masked_paths: Vec<PathBuf>,
    /// Paths made read-only in the container (absolute, normalized).
    pub readonly_paths: Vec<PathBuf>,
    /// The container's user namespace, if it has its own.
    pub userns: Option<UserNs>,
}

/// Most ranges in one id mapping (vmletd sends at most 64; the kernel takes 340).
const MAX_ID_MAPPINGS: usize = 64;

/// `length` ids from `inside` in a user namespace are `outside`.. in the guest's
/// initial one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// First id inside.
    pub inside: u32,
    /// First id outside.
    pub outside: u32,
    /// How many.
    pub length: u32,
}

/// A user namespace's mappings, checked: both lists non-empty, no range empty, past
/// the id space or overlapping another of its list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNs {
    /// uid ranges.
    pub uids: Vec<IdMap>,
    /// gid ranges.
    pub gids: Vec<IdMap>,
}

fn map_text(maps: &[IdMap]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.inside, m.outside, m.length))
        .collect()
}

fn map_id(maps: &[IdMap], id: u32) -> Option<u32> {
    maps.iter()
        .find(|m| id >= m.inside && id - m.inside < m.length)
        .map(|m| m.outside + (id - m.inside))
}

impl UserNs {
    /// The text of `/proc/PID/uid_map`.
    pub fn uid_map(&self) -> String {
        map_text(&self.uids)
    }

    /// The text of `/proc/PID/gid_map`.
    pub fn gid_map(&self) -> String {
        map_text(&self.gids)
    }

    /// uid `id` inside, seen outside (`None`: unmapped).
    pub fn host_uid(&self, id: u32) -> Option<u32> {
        map_id(&self.uids, id)
    }

    /// gid `id` inside, seen outside (`None`: unmapped).
    pub fn host_gid(&self, id: u32) -> Option<u32> {
        map_id(&self.gids, id)
    }
}

fn id_maps(what: &str, list: Vec<agent::IdMapping>) -> Result<Vec<IdMap>, SpecError> {
    let bad = |why: String| Err(SpecError::BadIdMapping(format!("{what}: {why}")));
    if list.is_empty() || list.len() > MAX_ID_MAPPINGS {
        return bad(format!("{} ranges, not 1 to {MAX_ID_MAPPINGS}", list.len()));
    }
    let mut maps: Vec<IdMap> = Vec::with_capacity(list.len());
    for m in list {
        let map = IdMap {
            inside: m.container_id,
            outside: m.host_id,
            length: m.length,
        };
        let end = |start: u32| u64::from(start) + u64::from(m.length);
        // u32::MAX is the kernel's "no id".
        if m.length == 0
            || end(m.container_id) > u64::from(u32::MAX)
            || end(m.host_id) > u64::from(u32::MAX)
        {
            return bad(format!("{map:?} is empty or ends past the last id"));
        }
        let overlap = |a: u32, b: u32, len_b: u32| {
            let (a, b) = (u64::from(a), u64::from(b));
            a < b + u64::from(len_b) && b < a + u64::from(m.length)
        };
        if let Some(o) = maps.iter().find(|o| {
            overlap(map.inside, o.inside, o.length) || overlap(map.outside, o.outside, o.length)
        }) {
            return bad(format!("{map:?} overlaps {o:?}"));
        }
        maps.push(map);
    }
    Ok(maps)
}

/// Both lists empty: no user namespace of its own.
fn user_namespace(
    uids: Vec<agent::IdMapping>,
    gids: Vec<agent::IdMapping>,
) -> Result<Option<UserNs>, SpecError> {
    if uids.is_empty() && gids.is_empty() {
        return Ok(None);
    }
    Ok(Some(UserNs {
        uids: id_maps("uid", uids)?,
        gids: id_maps("gid", gids)?,
    }))
}

impl Spec {
    /// Checks a create request.
    pub fn from_proto(spec: agent::ContainerSpec) -> Result<Spec, SpecError> {
        check_id("container ID", &spec.container_id)?;
        if !spec.target_pid_namespace.is_empty() {
            check_id("target container ID", &spec.target_pid_namespace)?;
        }
        let rootfs = spec.rootfs.ok_or(SpecError::Missing("rootfs"))?;
        let process = spec.process.ok_or(SpecError::Missing("process"))?;
        Ok(Spec {
            rootfs: rootfs_spec(rootfs)?,
            process: process_spec(process, None)?,
            mounts: spec
                .mounts
                .into_iter()
                .map(mount_spec)
                .collect::<Result<_, _>>()?,
            resources: resources(spec.resources.unwrap_or_default())?,
            share_pod_pid_namespace: spec.share_pod_pid_namespace,
            target_pid_namespace: spec.target_pid_namespace,
            privileged: spec.privileged,
            masked_paths: container_paths("masked path", &spec.masked_paths)?,
            readonly_paths: container_paths("read-only path", &spec.readonly_paths)?,
            userns: user_namespace(spec.uid_mappings, spec.gid_mappings)?,
            id: spec.container_id,
        })
    }
}

fn check_serial(what: &'static str, serial: &str) -> Result<(), SpecError> {
    // virtio-blk serials are at most 20 bytes.
    check_name(what, serial, 20)
}

fn rootfs_spec(r: agent::Rootfs) -> Result<RootfsSpec, SpecError> {
    check_serial("image drive serial", &r.image_serial)?;
    let image_fstype = match r.image_fstype.as_str() {
        "erofs" | "" => Fstype::Erofs,
        "ext4" => Fstype::Ext4,
        other => return Err(SpecError::BadFstype(other.to_owned())),
    };
    let image_subdir = relative_path("image_subdir", &r.image_subdir)?;
    let scratch_serial = if r.scratch_serial.is_empty() {
        None
    } else {
        check_serial("scratch drive serial", &r.scratch_serial)?;
        Some(r.scratch_serial)
    };
    Ok(RootfsSpec {
        image_serial: r.image_serial,
        image_fstype,
        image_subdir,
        scratch_serial,
        readonly: r.readonly,
    })
}

/// A relative path with no `..`, no root and no NUL.
pub fn relative_path(what: &'static str, p: &str) -> Result<PathBuf, SpecError> {
    if p.contains('\0') {
        return Err(SpecError::Nul(what));
    }
    let path = Path::new(p);
    let ok = path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok {
        Ok(path.components().collect())
    } else {
        Err(SpecError::BadPath {
            what,
            path: p.to_owned(),
            expected: "relative, without ..",
        })
    }
}

/// An absolute path with no NUL, normalized (`.`, `..` resolved lexically at the root).
pub fn absolute_path(what: &'static str, p: &str) -> Result<PathBuf, SpecError> {
    if p.contains('\0') {
        return Err(SpecError::Nul(what));
    }
    if !p.starts_with('/') {
        return Err(SpecError::BadPath {
            what,
            path: p.to_owned(),
            expected: "absolute",
        });
    }
    let mut out = PathBuf::from("/");
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Absolute paths inside the container without `..` (masked and read-only paths).
fn container_paths(what: &'static str, paths: &[String]) -> Result<Vec<PathBuf>, SpecError> {
    if paths.len() > MAX_PATHS {
        return Err(SpecError::TooMany {
            what,
            count: paths.len(),
            max: MAX_PATHS,
        });
    }
    paths
        .iter()
        .map(|p| {
            if p.contains('\0') {
                return Err(SpecError::Nul(what));
            }
            let path = Path::new(p);
            let ok = p.starts_with('/')
                && p.len() <= MAX_PATH
                && !path.components().any(|c| c == Component::ParentDir);
            if !ok {
                return Err(SpecError::BadPath {
                    what,
                    path: p.clone(),
                    expected: "absolute, without ..",
                });
            }
            Ok(path.components().collect())
        })
        .collect()
}

fn user_name(what: &'static str, name: String) -> Result<Option<String>, SpecError> {
    if name.is_empty() {
        return Ok(None);
    }
    if name.len() > MAX_USER_NAME || name.contains([':', '\n', '\0']) {
        return Err(SpecError::BadUserName { what, name });
    }
    Ok(Some(name))
}

fn id(what: &'static str, value: u32) -> Result<u32, SpecError> {
    // (uid_t)-1 means "unchanged" to setresuid: the process would stay root.
    if value == u32::MAX {
        return Err(SpecError::Range {
            what,
            value: value.into(),
            range: "0..4294967294",
        });
    }
    Ok(value)
}

/// Checks a user.
fn user_request(u: agent::User) -> Result<UserRequest, SpecError> {
    if u.additional_gids.len() > MAX_GROUPS {
        return Err(SpecError::TooMany {
            what: "additional_gids",
            count: u.additional_gids.len(),
            max: MAX_GROUPS,
        });
    }
    Ok(UserRequest {
        uid: id("uid", u.uid)?,
        gid: id("gid", u.gid)?,
        additional_gids: u
            .additional_gids
            .into_iter()
            .map(|g| id("additional gid", g))
            .collect::<Result<_, _>>()?,
        username: user_name("username", u.username)?,
        groupname: user_name("groupname", u.groupname)?,
        // A gid other than 0 is a given one even from a sender that predates gid_set.
        gid_set: u.gid_set || u.gid != 0,
        image_groups: u.image_groups,
        non_root: u.non_root,
    })
}

fn cstring(what: &'static str, s: String) -> Result<CString, SpecError> {
    CString::new(s).map_err(|_| SpecError::Nul(what))
}

/// Checks a process. `inherit` gives the defaults of an exec: the container's process.
pub fn process_spec(
    p: agent::Process,
    inherit: Option<&ProcessSpec>,
) -> Result<ProcessSpec, SpecError> {
    if p.args.is_empty() || p.args[0].is_empty() {
        return Err(SpecError::Missing("process.args"));
    }
    let args = p
        .args
        .into_iter()
        .map(|a| cstring("process.args", a))
        .collect::<Result<Vec<_>, _>>()?;
    let env_given = !p.env.is_empty();
    let mut has_path = false;
    let mut env = Vec::with_capacity(p.env.len() + 1);
    for e in p.env {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => {
                has_path |= k == "PATH";
            }
            _ => return Err(SpecError::BadEnv(e)),
        }
        env.push(cstring("process.env", e)?);
    }
    let inherits_env = env.is_empty() && inherit.is_some();
    if !has_path && !inherits_env {
        env.push(cstring("process.env", format!("PATH={DEFAULT_PATH}"))?);
    }
    let path = env
        .iter()
        .find_map(|e| e.to_str().ok()?.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    if !env_given {
        if let Some(i) = inherit {
            env = i.env.clone();
        }
    }
    let cwd = match (p.cwd.is_empty(), inherit) {
        (false, _) => absolute_path("process.cwd", &p.cwd)?,
        (true, Some(i)) => i.cwd.clone(),
        (true, None) => PathBuf::from("/"),
    };
    let user = match (p.user, inherit) {
        (Some(u), _) => user_request(u)?,
        (None, Some(i)) => i.user.clone(),
        (None, None) => UserRequest::default(),
    };
    let size = p.terminal_size.unwrap_or_default();
    let rlimits = if p.rlimits.is_empty() {
        inherit.map(|i| i.rlimits.clone()).unwrap_or_default()
    } else {
        p.rlimits
            .into_iter()
            .map(rlimit)
            .collect::<Result<_, _>>()?
    };
    let caps = match (p.capabilities, inherit) {
        (Some(c), _) => Some(CapSets::from_proto(&c)?),
        (None, Some(i)) => i.caps.clone(),
        (None, None) => None,
    };
    // An exec without a filter of its own runs under its container's, as with runc.
    let seccomp = match Filter::parse(&p.seccomp_filter)? {
        Some(f) => Some(f),
        None => inherit.and_then(|i| i.seccomp.clone()),
    };
    Ok(ProcessSpec {
        args,
        env,
        path,
        cwd,
        user,
        terminal: p.terminal,
        size: (clamp_u16(size.rows), clamp_u16(size.cols)),
        open_stdin: p.open_stdin,
        rlimits,
        no_new_privileges: p.no_new_privileges || inherit.is_some_and(|i| i.no_new_privileges),
        caps,
        oom_score_adj: (p.oom_score_adj != 0).then_some(p.oom_score_adj),
        seccomp,
    })
}

fn clamp_u16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

fn rlimit(r: agent::Rlimit) -> Result<Rlimit, SpecError> {
    let name = r.r#type.to_ascii_uppercase();
    let short = name.strip_prefix("RLIMIT_").unwrap_or(&name);
    let resource = match short {
        "AS" => Resource::RLIMIT_AS,
        "CORE" => Resource::RLIMIT_CORE,
        "CPU" => Resource::RLIMIT_CPU,
        "DATA" => Resource::RLIMIT_DATA,
        "FSIZE" => Resource::RLIMIT_FSIZE,
        "LOCKS" => Resource::RLIMIT_LOCKS,
        "MEMLOCK" => Resource::RLIMIT_MEMLOCK,
        "MSGQUEUE" => Resource::RLIMIT_MSGQUEUE,
        "NICE" => Resource::RLIMIT_NICE,
        "NOFILE" => Resource::RLIMIT_NOFILE,
        "NPROC" => Resource::RLIMIT_NPROC,
        "RSS" => Resource::RLIMIT_RSS,
        "RTPRIO" => Resource::RLIMIT_RTPRIO,
        "RTTIME" => Resource::RLIMIT_RTTIME,
        "SIGPENDING" => Resource::RLIMIT_SIGPENDING,
        "STACK" => Resource::RLIMIT_STACK,
        _ => return Err(SpecError::BadRlimit(r.r#type)),
    };
    if r.soft > r.hard {
        return Err(SpecError::RlimitOrder(r.r#type));
    }
    Ok(Rlimit {
        resource,
        soft: r.soft,
        hard: r.hard,
    })
}

fn mount_spec(m: agent::Mount) -> Result<MountSpec, SpecError> {
    use nix::mount::MsFlags;
    let destination = absolute_path("mount destination", &m.destination)?;
    if destination == Path::new("/") {
        return Err(SpecError::BadPath {
            what: "mount destination",
            path: m.destination,
            expected: "below /",
        });
    }
    let bad = |reason: String| SpecError::BadMount {
        destination: m.destination.clone(),
        reason,
    };
    if m.source.contains('\0') || m.r#type.contains('\0') {
        return Err(SpecError::Nul("mount"));
    }
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut recursive = false;
    let mut recursive_readonly = false;
    let mut data = Vec::new();
    let mut is_bind = m.r#type == "bind";
    for opt in &m.options {
        match opt.as_str() {
            "bind" => is_bind = true,
            "rbind" => {
                is_bind = true;
                recursive = true;
            }
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rro" => {
                flags |= MsFlags::MS_RDONLY;
                recursive_readonly = true;
            }
            "rw" => flags -= MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "suid" | "dev" | "exec" | "atime" | "defaults" => {}
            "private" => propagation = MsFlags::MS_PRIVATE,
            "rprivate" => propagation = MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            "slave" => propagation = MsFlags::MS_SLAVE,
            "rslave" => propagation = MsFlags::MS_SLAVE | MsFlags::MS_REC,
            "shared" | "rshared" => {
                return Err(bad(format!(
                    "propagation {opt:?} is not supported in a pod VM"
                )))
            }
            other if other.contains('=') || !other.is_empty() => {
                if other.contains(',') {
                    return Err(bad(format!("option {other:?} contains a comma")));
                }
                data.push(other.to_owned());
            }
            _ => {}
        }
    }
    let subpath = if m.subpath.is_empty() {
        None
    } else if !is_bind {
        return Err(bad("a subpath needs a bind mount".into()));
    } else if m.subpath.starts_with('/') || m.subpath.contains('\0') {
        return Err(bad(format!(
            "subpath {:?} must be a relative path",
            m.subpath
        )));
    } else {
        Some(PathBuf::from(&m.subpath))
    };
    if is_bind {
        if !m.source.starts_with('/') {
            return Err(bad(format!(
                "bind source {:?} must be an absolute guest path",
                m.source
            )));
        }
        if !data.is_empty() {
            return Err(bad(format!("unknown bind options {data:?}")));
        }
        flags |= MsFlags::MS_BIND;
    } else if m.r#type.is_empty() {
        return Err(bad("type is required".into()));
    }
    Ok(MountSpec {
        destination,
        fstype: if is_bind { "bind".into() } else { m.r#type },
        source: m.source,
        flags,
        recursive,
        recursive_readonly,
        propagation,
        data: (!data.is_empty()).then(|| data.join(",")),
        subpath,
    })
}

/// Checks cgroup limits (of a create or an update request).
pub fn resources(r: agent::Resources) -> Result<Resources, SpecError> {
    let weight = match r.cpu_weight {
        0 => None,
        w @ 1..=10_000 => Some(w),
        w => {
            return Err(SpecError::Range {
                what: "cpu_weight",
                value: w,
                range: "1..10000",
            })
        }
    };
    let period = if r.cpu_period_us == 0 {
        100_000
    } else {
        r.cpu_period_us
    };
    if !(1_000..=1_000_000).contains(&period) {
        return Err(SpecError::Range {
            what: "cpu_period_us",
            value: period,
            range: "1000..1000000",
        });
    }
    let cpu_max = match r.cpu_quota_us {
        0 => None,
        q if q >= 1_000 => Some((q, period)),
        q => {
            return Err(SpecError::Range {
                what: "cpu_quota_us",
                value: q,
                range: "at least 1000",
            })
        }
    };
    let memory_max = match r.memory_limit_bytes {
        0 => None,
        m if m >= 1 << 20 => Some(m),
        m => {
            return Err(SpecError::Range {
                what: "memory_limit_bytes",
                value: m,
                range: "at least 1 MiB",
            })
        }
    };
    Ok(Resources {
        cpu_weight: weight,
        cpu_max,
        memory_max,
        pids_max: (r.pids_limit != 0).then_some(r.pids_limit),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(args: &[&str]) -> agent::Process {
        agent::Process {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn spec() -> agent::ContainerSpec {
        agent::ContainerSpec {
            container_id: "c1".into(),
            rootfs: Some(agent::Rootfs {
                image_serial: "img0".into(),
                ..Default::default()
            }),
            process: Some(process(&["/bin/true"])),
            ..Default::default()
        }
    }

    #[test]
    fn ids() {
        for ok in ["a", "0abc", "a.b-c_d", &"x".repeat(128)] {
            check_id("id", ok).unwrap();
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "ä", &"x".repeat(129), "../x"] {
            let e = check_id("id", bad).unwrap_err();
            assert!(
                matches!(&e, SpecError::BadId { what: "id", id, max: MAX_ID } if id == bad),
                "{bad:?}: {e:?}"
            );
        }
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let s = Spec::from_proto(spec()).unwrap();
        assert_eq!(s.process.cwd, Path::new("/"));
        assert!(s
            .process
            .env
            .iter()
            .any(|e| e.to_str().unwrap().starts_with("PATH=/usr/local/sbin")));
        assert_eq!(s.rootfs.image_fstype, Fstype::Erofs);
        assert!(s.rootfs.scratch_serial.is_none());
        assert_eq!(s.resources, Resources::default());
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut s = spec();
        s.process = Some(process(&[]));
        assert!(matches!(
            Spec::from_proto(s),
            Err(SpecError::Missing("process.args"))
        ));
        let mut s = spec();
        s.process.as_mut().unwrap().env = vec!["NOEQUALS".into()];
        assert!(matches!(Spec::from_proto(s), Err(SpecError::BadEnv(_))));
        let mut s = spec();
        s.process.as_mut().unwrap().args = vec!["a\0b".into()];
        assert!(matches!(Spec::from_proto(s), Err(SpecError::Nul(_))));
        let mut s = spec();
        s.process.as_mut().unwrap().cwd = "relative".into();
        assert!(matches!(
            Spec::from_proto(s),
            Err(SpecError::BadPath { .. })
        ));
        let mut s = spec();
        s.rootfs.as_mut().unwrap().image_subdir = "../etc".into();
        assert!(matches!(
            Spec::from_proto(s),
            Err(SpecError::BadPath { .. })
        ));
        let mut s = spec();
        s.rootfs.as_mut().unwrap().image_fstype = "xfs".into();
        assert!(matches!(Spec::from_proto(s), Err(SpecError::BadFstype(_))));
        let mut s = spec();
        s.resources = Some(agent::Resources {
            cpu_weight: 20_000,
            ..Default::default()
        });
        assert!(matches!(Spec::from_proto(s), Err(SpecError::Range { .. })));
        let mut s = spec();
        s.process.as_mut().unwrap().rlimits = vec![agent::Rlimit {
            r#type: "RLIMIT_BOGUS".into(),
            soft: 1,
            hard: 1,
        }];
        assert!(matches!(Spec::from_proto(s), Err(SpecError::BadRlimit(_))));
        let mut s = spec();
        s.mounts = vec![agent::Mount {
            destination: "/data".into(),
            r#type: "bind".into(),
            source: "relative".into(),
            options: vec![],
            subpath: String::new(),
        }];
        assert!(matches!(
            Spec::from_proto(s),
            Err(SpecError::BadMount { .. })
        ));
        // A subpath is relative, and only for binds.
        for (kind, sub) in [("bind", "/etc"), ("tmpfs", "a")] {
            let mut s = spec();
            s.mounts = vec![agent::Mount {
                destination: "/data".into(),
                r#type: kind.into(),
                source: "/run/vmlet/shared/vol".into(),
                options: vec![],
                subpath: sub.into(),
            }];
            assert!(matches!(
                Spec::from_proto(s),
                Err(SpecError::BadMount { .. })
            ));
        }
        let mut s = spec();
        s.container_id = "../../etc".into();
        assert!(matches!(Spec::from_proto(s), Err(SpecError::BadId { .. })));
    }

    #[test]
    fn mounts_and_limits_parse() {
        let mut s = spec();
        s.mounts = vec![
            agent::Mount {
                destination: "/data/../data2".into(),
                r#type: "bind".into(),
                source: "/run/vmlet/shared/vol".into(),
                options: vec!["rbind".into(), "ro".into(), "rprivate".into()],
                subpath: "a/b".into(),
            },
            agent::Mount {
                destination: "/scratch".into(),
                r#type: "tmpfs".into(),
                source: "tmpfs".into(),
                options: vec!["size=1m".into(), "mode=1777".into(), "nosuid".into()],
                subpath: String::new(),
            },
        ];
        s.resources = Some(agent::Resources {
            cpu_weight: 100,
            cpu_quota_us: 50_000,
            cpu_period_us: 0,
            memory_limit_bytes: 64 << 20,
            pids_limit: 32,
        });
        let s = Spec::from_proto(s).unwrap();
        assert_eq!(s.mounts[0].destination, Path::new("/data2"));
        assert!(s.mounts[0].is_bind() && s.mounts[0].recursive);
        assert_eq!(s.mounts[0].subpath.as_deref(), Some(Path::new("a/b")));
        assert_eq!(s.mounts[1].subpath, None);
        assert_eq!(s.mounts[1].data.as_deref(), Some("size=1m,mode=1777"));
        assert_eq!(s.resources.cpu_max, Some((50_000, 100_000)));
        assert_eq!(s.resources.memory_max, Some(64 << 20));
        assert_eq!(s.resources.pids_max, Some(32));
    }

    #[test]
    fn security_fields_are_checked() {
        let mut s = spec();
        s.privileged = true;
        s.masked_paths = vec!["/proc/kcore".into(), "/sys//firmware/./".into()];
        s.readonly_paths = vec!["/proc/sys".into()];
        let s = Spec::from_proto(s).unwrap();
        assert!(s.privileged);
        assert_eq!(
            s.masked_paths,
            [Path::new("/proc/kcore"), Path::new("/sys/firmware")]
        );
        assert_eq!(s.readonly_paths, [Path::new("/proc/sys")]);

        for bad in ["proc/kcore", "/proc/../etc/passwd", "", "/a\0b"] {
            let mut s = spec();
            s.masked_paths = vec![bad.into()];
            assert!(
                matches!(
                    Spec::from_proto(s),
                    Err(SpecError::BadPath { .. } | SpecError::Nul(_))
                ),
                "{bad:?}"
            );
        }
        let mut s = spec();
        s.readonly_paths = vec!["/x".into(); MAX_PATHS + 1];
        assert!(matches!(
            Spec::from_proto(s),
            Err(SpecError::TooMany { .. })
        ));

        let user = |u: agent::User| {
            let mut s = spec();
            s.process.as_mut().unwrap().user = Some(u);
            Spec::from_proto(s)
        };
        for name in ["a:b", "a\nb", &"x".repeat(257)] {
            let e = user(agent::User {
                username: name.into(),
                ..Default::default()
            });
            assert!(matches!(e, Err(SpecError::BadUserName { .. })), "{name:?}");
        }
        let e = user(agent::User {
            uid: u32::MAX,
            ..Default::default()
        });
        assert!(matches!(e, Err(SpecError::Range { what: "uid", .. })));
        let s = user(agent::User {
            uid: 7,
            username: "www-data".into(),
            groupname: "web".into(),
            image_groups: true,
            non_root: true,
            ..Default::default()
        })
        .unwrap();
        let u = &s.process.user;
        assert_eq!(u.username.as_deref(), Some("www-data"));
        assert_eq!(u.groupname.as_deref(), Some("web"));
        assert!(u.image_groups && u.non_root && !u.gid_set);
        let s = user(agent::User {
            gid: 5,
            ..Default::default()
        })
        .unwrap();
        assert!(s.process.user.gid_set);

        let mut s = spec();
        s.process.as_mut().unwrap().seccomp_filter = vec![0; 7];
        assert!(matches!(Spec::from_proto(s), Err(SpecError::Seccomp(_))));
    }

    #[test]
    fn user_namespace_mappings() {
        let m = |container_id, host_id, length| agent::IdMapping {
            container_id,
            host_id,
            length,
        };
        let with = |uids: Vec<agent::IdMapping>, gids: Vec<agent::IdMapping>| {
            let mut s = spec();
            s.uid_mappings = uids;
            s.gid_mappings = gids;
            Spec::from_proto(s)
        };
        assert_eq!(with(vec![], vec![]).unwrap().userns, None);
        let ns = with(
            vec![m(0, 65536, 65536)],
            vec![m(0, 65536, 1000), m(1000, 200_000, 10)],
        )
        .unwrap()
        .userns
        .unwrap();
        assert_eq!(ns.uid_map(), "0 65536 65536\n");
        assert_eq!(ns.gid_map(), "0 65536 1000\n1000 200000 10\n");
        assert_eq!(ns.host_uid(0), Some(65536));
        assert_eq!(ns.host_uid(65535), Some(131_071));
        assert_eq!(ns.host_uid(65536), None);
        assert_eq!(ns.host_gid(1009), Some(200_009));
        for (uids, gids) in [
            (vec![m(0, 65536, 65536)], vec![]),
            (vec![m(0, 65536, 0)], vec![m(0, 65536, 1)]),
            (vec![m(0, u32::MAX, 1)], vec![m(0, 65536, 1)]),
            (vec![m(0, 1, 10), m(5, 100, 10)], vec![m(0, 65536, 1)]),
            (vec![m(0, 1, 10), m(50, 5, 10)], vec![m(0, 65536, 1)]),
            (vec![m(0, 1, 1); 65], vec![m(0, 65536, 1)]),
        ] {
            let e = with(uids.clone(), gids).unwrap_err();
            assert!(matches!(e, SpecError::BadIdMapping(_)), "{uids:?}: {e}");
        }
    }

    #[test]
    fn execs_inherit_the_user_and_the_filter() {
        let mut s = spec();
        let p = s.process.as_mut().unwrap();
        p.seccomp_filter = vec![6, 0, 0, 0, 0, 0, 0xff, 0x7f];
        p.user = Some(agent::User {
            uid: 1000,
            gid: 1000,
            gid_set: true,
            ..Default::default()
        });
        let main = Spec::from_proto(s).unwrap().process;
        let exec = process_spec(process(&["/bin/ls"]), Some(&main)).unwrap();
        assert_eq!(exec.user, main.user);
        assert_eq!(exec.seccomp.map(|f| f.len()), Some(1));
        assert!(exec.caps.is_none());
        let mut own = process(&["/bin/ls"]);
        own.seccomp_filter = vec![0; 16];
        own.user = Some(agent::User::default());
        let exec = process_spec(own, Some(&main)).unwrap();
        assert_eq!(exec.seccomp.map(|f| f.len()), Some(2));
        assert_eq!(exec.user.uid, 0);
    }
}
