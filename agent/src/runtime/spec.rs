//! A container's process from the image config merged with the CRI request, as
//! containerd merges them:
//! - `command` replaces the image's Entrypoint, and then the image's Cmd is dropped;
//!   `args` replaces the image's Cmd;
//! - the request's environment overrides the image's by name, new names are added
//!   after it; `PATH` gets the usual default when neither sets it; `HOSTNAME` is set;
//! - `working_dir` replaces the image's WorkingDir ("/" when neither has one);
//! - `run_as_user` / `run_as_group` replace the image's `User` (`uid[:gid]`).

use vmlet_cri::runtime::{ContainerConfig, ResourcesConfig};
use vmlet_proto::agent as pb;

use crate::images::ImageConfig;
use crate::store::ProcessRecord;

/// PATH when neither image nor request sets one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a request cannot be turned into a process.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// Neither the image nor the request names a program.
    #[error("no command: the image has no Entrypoint or Cmd and the request sets neither command nor args")]
    NoCommand,
    /// A user or group that is not numeric (user names need the image's /etc/passwd,
    /// which is read in the guest, not here).
    #[error(
        "user {0:?} is not numeric; vmlet needs a numeric uid[:gid] (run_as_user / run_as_group)"
    )]
    UserName(String),
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
}

fn id(what: &'static str, value: i64) -> Result<u32, SpecError> {
    u32::try_from(value).map_err(|_| SpecError::IdRange { what, value })
}

fn numeric(what: &'static str, s: &str) -> Result<u32, SpecError> {
    if s == "root" {
        return Ok(0);
    }
    s.parse::<u32>()
        .map_err(|_| SpecError::UserName(s.to_owned()))
        .and_then(|v| id(what, i64::from(v)))
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

    let (image_uid, image_gid) = match image.user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image.user.as_str(), None),
    };
    if !req.user.username.is_empty() && req.user.uid.is_none() {
        numeric("uid", &req.user.username)?;
    }
    let uid = match (req.user.uid, req.user.username.as_str()) {
        (Some(u), _) => id("uid", u)?,
        (None, name) if !name.is_empty() => numeric("uid", name)?,
        _ if image_uid.is_empty() => 0,
        _ => numeric("uid", image_uid)?,
    };
    let gid = match req.user.gid {
        Some(g) => id("gid", g)?,
        // An explicit user from the request does not inherit the image's group.
        None if req.user.uid.is_some() => 0,
        None => match image_gid {
            Some(g) if !g.is_empty() => numeric("gid", g)?,
            _ => 0,
        },
    };
    let additional_gids = req
        .user
        .supplemental_groups
        .iter()
        .map(|&g| id("supplemental group", g))
        .collect::<Result<_, _>>()?;

    Ok(Process {
        args,
        record: ProcessRecord {
            env,
            cwd,
            uid,
            gid,
            additional_gids,
            stop_signal: parse_signal(&image.stop_signal)?,
        },
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
        assert!(matches!(
            merge(&req, &named, ""),
            Err(SpecError::UserName(_))
        ));
        let mut neg = req.clone();
        neg.user.uid = Some(-1);
        assert!(matches!(
            merge(&neg, &bare, ""),
            Err(SpecError::IdRange { .. })
        ));
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
