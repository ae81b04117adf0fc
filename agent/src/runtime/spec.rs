//! A container's process from the image config merged with the CRI request, as
//! containerd merges them:
//! - `command` replaces the image's Entrypoint, and then the image's Cmd is dropped;
//!   `args` replaces the image's Cmd;
//! - the request's environment overrides the image's by name, new names are added
//!   after it; `PATH` gets the usual default when neither sets it; `HOSTNAME` is set;
//! - `working_dir` replaces the image's WorkingDir ("/" when neither has one);
//! - `run_as_username` / `run_as_user` / `run_as_group` replace the image's `User`
//!   (`user[:group]`); names are resolved in the guest ([`guest_user`]).

use vmlet_cri::runtime::{ContainerConfig, ResourcesConfig};
use vmlet_proto::agent as pb;

use crate::images::ImageConfig;
use crate::store::ProcessRecord;

/// Longest user or group name passed to the guest.
const MAX_NAME_LEN: usize = 256;

/// PATH when neither image nor request sets one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a request cannot be turned into a process.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// Neither the image nor the request names a program.
    #[error("no command: the image has no Entrypoint or Cmd and the request sets neither command nor args")]
    NoCommand,
    /// A user or group name that cannot be one.
    #[error("user or group name {0:?} is not valid (at most 256 bytes, no '/', NUL or newline)")]
    BadName(String),
    /// A negative or too large uid or gid.
    #[error("{what} {value} is out of range")]
    IdRange {
        /// uid, gid or group.
        what: &'static str,
        /// The value.
        value: i64,
    },
    /// The image's StopSignal is not a signal.
    #[error("the image's StopSignal {0:?} is not a known signal")]
    StopSignal(String),
}

/// The merged process: program, environment, directory, identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Program and arguments.
    pub args: Vec<String>,
    /// What ExecSync and the record need again.
    pub record: ProcessRecord,
    /// The user for the guest to resolve (names and groups come from the image's
    /// /etc/passwd and /etc/group, which the guest reads).
    pub user: pb::User,
}

fn id(what: &'static str, value: i64) -> Result<u32, SpecError> {
    u32::try_from(value).map_err(|_| SpecError::IdRange { what, value })
}

/// One side of a user string: a number, or a name for the guest to look up.
enum Id {
    Number(u32),
    Name(String),
}

fn user_part(what: &'static str, s: &str) -> Result<Id, SpecError> {
    match s.parse::<i64>() {
        Ok(v) => id(what, v).map(Id::Number),
        Err(_) if s.len() > MAX_NAME_LEN || s.contains(['/', '\0', '\n']) => {
            Err(SpecError::BadName(s.to_owned()))
        }
        Err(_) => Ok(Id::Name(s.to_owned())),
    }
}

/// The user a container runs as, as containerd picks it: `run_as_username`, else
/// `run_as_user`, else the image's `User` ("user[:group]", names or numbers);
/// `run_as_group` replaces the group. Without a group the user's primary group
/// from the image's /etc/passwd is used (0 when it has none); unless the policy is
/// Strict, the groups /etc/group lists the user in are added.
pub fn guest_user(req: &ContainerConfig, image_user: &str) -> Result<pb::User, SpecError> {
    let (image_u, image_g) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let (user, group) = if !req.user.username.is_empty() {
        (user_part("uid", &req.user.username)?, None)
    } else if let Some(u) = req.user.uid {
        (Id::Number(id("uid", u)?), None)
    } else if image_u.is_empty() {
        (
            Id::Number(0),
            image_g
                .filter(|g| !g.is_empty())
                .map(|g| user_part("gid", g))
                .transpose()?,
        )
    } else {
        (
            user_part("uid", image_u)?,
            image_g
                .filter(|g| !g.is_empty())
                .map(|g| user_part("gid", g))
                .transpose()?,
        )
    };
    let group = match req.user.gid {
        Some(g) => Some(Id::Number(id("gid", g)?)),
        None => group,
    };
    let mut u = pb::User {
        additional_gids: req
            .user
            .supplemental_groups
            .iter()
            .map(|&g| id("supplemental group", g))
            .collect::<Result<_, _>>()?,
        image_groups: !req.security.strict_supplemental_groups,
        ..Default::default()
    };
    match user {
        Id::Number(n) => u.uid = n,
        Id::Name(n) => u.username = n,
    }
    match group {
        Some(Id::Number(n)) => {
            u.gid = n;
            u.gid_set = true;
        }
        Some(Id::Name(n)) => {
            u.groupname = n;
            u.gid_set = true;
        }
        None => {}
    }
    Ok(u)
}

/// Parses a signal as images write it: `SIGTERM`, `TERM`, `15`.
pub fn parse_signal(s: &str) -> Result<u32, SpecError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(libc::SIGTERM as u32);
    }
    if let Ok(n) = s.parse::<u32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32 as u32)
        .map_err(|_| SpecError::StopSignal(s.to_owned()))
}

/// Merges `image` and `req` into the container's process.
pub fn merge(
    req: &ContainerConfig,
    image: &ImageConfig,
    hostname: &str,
) -> Result<Process, SpecError> {
    let (entrypoint, cmd) = if !req.command.is_empty() {
        (req.command.clone(), req.args.clone())
    } else if !req.args.is_empty() {
        (image.entrypoint.clone(), req.args.clone())
    } else {
        (image.entrypoint.clone(), image.cmd.clone())
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() || args[0].is_empty() {
        return Err(SpecError::NoCommand);
    }

    let mut env: Vec<String> = Vec::new();
    let mut set = |key: &str, entry: String| {
        let prefix = format!("{key}=");
        match env
            .iter_mut()
            .find(|e| e.starts_with(&prefix) || e.as_str() == key)
        {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
    };
    for e in &image.env {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        set(key, e.clone());
    }
    for (k, v) in &req.envs {
        set(k, format!("{k}={v}"));
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if !hostname.is_empty() && !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={hostname}"));
    }

    let cwd = if !req.working_dir.is_empty() {
        req.working_dir.clone()
    } else if !image.working_dir.is_empty() {
        image.working_dir.clone()
    } else {
        "/".to_owned()
    };

    let user = guest_user(req, &image.user)?;
    Ok(Process {
        args,
        record: ProcessRecord {
            env,
            cwd,
            // Until the guest reports what it resolved.
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.additional_gids.clone(),
            stop_signal: parse_signal(&image.stop_signal)?,
            ..Default::default()
        },
        user,
    })
}

/// The guest's cgroup limits from the CRI ones (0 = unset in both).
pub fn guest_resources(r: &ResourcesConfig) -> pb::Resources {
    pb::Resources {
        cpu_weight: cpu_weight(r.cpu_shares),
        cpu_quota_us: r.cpu_quota.max(0) as u64,
        cpu_period_us: r.cpu_period.max(0) as u64,
        memory_limit_bytes: r.memory_limit_bytes.max(0) as u64,
        pids_limit: 0,
    }
}

/// cgroup v2 cpu.weight from CRI cpu shares, as runc converts them.
pub fn cpu_weight(shares: i64) -> u64 {
    if shares <= 0 {
        return 0;
    }
    let shares = shares.clamp(2, 262_144) as u64;
    1 + ((shares - 2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
            env: vec!["PATH=/bin".into(), "A=image".into(), "B=image".into()],
            working_dir: "/app".into(),
            user: "1000:1001".into(),
            stop_signal: "SIGQUIT".into(),
            ..Default::default()
        }
    }

    #[test]
    fn merges_like_containerd() {
        let mut req = ContainerConfig::default();
        let p = merge(&req, &image(), "h").unwrap();
        assert_eq!(p.args, ["/entry", "default"]);
        assert_eq!(
            p.record.env,
            ["PATH=/bin", "A=image", "B=image", "HOSTNAME=h"]
        );
        assert_eq!((p.record.uid, p.record.gid), (1000, 1001));
        assert_eq!(p.record.cwd, "/app");
        assert_eq!(p.record.stop_signal, libc::SIGQUIT as u32);

        req.args = vec!["x".into()];
        assert_eq!(merge(&req, &image(), "").unwrap().args, ["/entry", "x"]);
        req.command = vec!["/cmd".into()];
        req.args.clear();
        assert_eq!(merge(&req, &image(), "").unwrap().args, ["/cmd"]);

        req.envs = vec![("A".into(), "req".into()), ("C".into(), "new".into())];
        req.working_dir = "/w".into();
        req.user.uid = Some(5);
        let p = merge(&req, &image(), "").unwrap();
        assert_eq!(p.record.env, ["PATH=/bin", "A=req", "B=image", "C=new"]);
        assert_eq!(
            (p.record.uid, p.record.gid, p.record.cwd.as_str()),
            (5, 0, "/w")
        );
    }

    #[test]
    fn defaults_and_errors() {
        let bare = ImageConfig::default();
        assert_eq!(
            merge(&ContainerConfig::default(), &bare, ""),
            Err(SpecError::NoCommand)
        );
        let req = ContainerConfig {
            args: vec!["sh".into()],
            ..Default::default()
        };
        let p = merge(&req, &bare, "").unwrap();
        assert!(p.record.env[0].starts_with("PATH=/usr/local/sbin"));
        assert_eq!((p.record.uid, p.record.cwd.as_str()), (0, "/"));
        assert_eq!(p.record.stop_signal, libc::SIGTERM as u32);
        let named = ImageConfig {
            user: "nobody".into(),
            ..bare.clone()
        };
        let u = merge(&req, &named, "").unwrap().user;
        assert_eq!(
            (u.username.as_str(), u.gid_set, u.image_groups),
            ("nobody", false, true)
        );
        let bad = ImageConfig {
            user: "a/b".into(),
            ..bare.clone()
        };
        assert!(matches!(merge(&req, &bad, ""), Err(SpecError::BadName(_))));
        let mut neg = req.clone();
        neg.user.uid = Some(-1);
        assert!(matches!(
            merge(&neg, &bare, ""),
            Err(SpecError::IdRange { .. })
        ));
    }

    #[test]
    fn users_as_containerd_picks_them() {
        let user = |image: &str, f: &dyn Fn(&mut ContainerConfig)| {
            let mut req = ContainerConfig::default();
            f(&mut req);
            guest_user(&req, image).unwrap()
        };
        let u = user("www-data:1004", &|_| {});
        assert_eq!(
            (u.username.as_str(), u.gid, u.gid_set),
            ("www-data", 1004, true)
        );
        let u = user("1000:staff", &|_| {});
        assert_eq!(
            (u.uid, u.groupname.as_str(), u.gid_set),
            (1000, "staff", true)
        );
        // run_as_user replaces the image's user and group.
        let u = user("www-data:1004", &|r| r.user.uid = Some(7));
        assert_eq!((u.uid, u.username.as_str(), u.gid_set), (7, "", false));
        // run_as_username wins over run_as_user; run_as_group sets the group.
        let u = user("", &|r| {
            r.user.uid = Some(7);
            r.user.username = "app".into();
            r.user.gid = Some(9);
            r.user.supplemental_groups = vec![100];
        });
        assert_eq!(
            (u.username.as_str(), u.gid, u.gid_set, u.additional_gids),
            ("app", 9, true, vec![100])
        );
        // run_as_group alone keeps the image's user.
        let u = user("www-data", &|r| r.user.gid = Some(3));
        assert_eq!((u.username.as_str(), u.gid), ("www-data", 3));
        let u = user("", &|r| r.security.strict_supplemental_groups = true);
        assert_eq!((u.uid, u.image_groups), (0, false));
    }

    #[test]
    fn signals_and_weights() {
        assert_eq!(parse_signal("TERM").unwrap(), 15);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("sigint").unwrap(), 2);
        assert!(parse_signal("SIGNOPE").is_err());
        assert_eq!(cpu_weight(0), 0);
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(262_144), 10_000);
    }
}
