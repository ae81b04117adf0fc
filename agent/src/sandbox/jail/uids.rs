//! The uid of each pod's VMM, from the configured range. A claim is a symbolic link
//! `<dir>/<uid>` to the pod's state directory, made with `symlink` (which fails if
//! the name exists): it is persisted, so a restarted vmletd never hands out a uid a
//! live pod holds, and it needs no release step that could be missed: once the pod's
//! directory is gone (its VMM is gone before that), the claim is stale and the uid
//! free again. The gid is the same number.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::super::error::SandboxError;

/// The uid range and its claims.
#[derive(Debug)]
pub struct UidPool {
    dir: PathBuf,
    first: u32,
    count: u32,
    /// Offset of the next uid to try: round robin, so that a freed uid is not reused
    /// at once. The lock also serialises claims (a stale claim is replaced in two
    /// steps).
    next: Mutex<u32>,
}

impl UidPool {
    /// Claims under `dir` on the `count` uids from `first`.
    pub fn new(dir: PathBuf, first: u32, count: u32) -> Self {
        UidPool {
            dir,
            first,
            count: count.max(1),
            next: Mutex::new(0),
        }
    }

    fn io(&self, op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError {
        let path = path.to_owned();
        move |source| SandboxError::Io { op, path, source }
    }

    fn ensure_dir(&self) -> Result<(), SandboxError> {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
        {
            Ok(()) => Ok(()),
            Err(e) => Err(self.io("create", &self.dir)(e)),
        }
    }

    /// A free uid, claimed for the pod whose state directory is `owner`.
    pub fn claim(&self, owner: &Path) -> Result<u32, SandboxError> {
        self.ensure_dir()?;
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..self.count {
            let offset = (*next + i) % self.count;
            let uid = self.first + offset;
            let link = self.dir.join(uid.to_string());
            if self.try_claim(&link, owner)? {
                *next = (offset + 1) % self.count;
                return Ok(uid);
            }
        }
        Err(SandboxError::NoFreeUid {
            first: self.first,
            count: self.count,
        })
    }

    /// Claims `link` for `owner` if it is free or stale.
    fn try_claim(&self, link: &Path, owner: &Path) -> Result<bool, SandboxError> {
        match std::os::unix::fs::symlink(owner, link) {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(self.io("claim", link)(e)),
        }
        if !stale(link) {
            return Ok(false);
        }
        std::fs::remove_file(link).map_err(self.io("remove", link))?;
        std::os::unix::fs::symlink(owner, link).map_err(self.io("claim", link))?;
        Ok(true)
    }

    /// Re-asserts the claim of a recovered pod (`owner`) on `uid`, in case its claim
    /// was lost. A claim by another live pod is an error: two VMMs share the uid.
    pub fn adopt(&self, uid: u32, owner: &Path) -> Result<(), SandboxError> {
        self.ensure_dir()?;
        let _serialised = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let link = self.dir.join(uid.to_string());
        match std::fs::read_link(&link) {
            Ok(target) if target == owner => Ok(()),
            Ok(target) if target.is_dir() => Err(SandboxError::UidTaken {
                uid,
                holder: target,
            }),
            _ => {
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(owner, &link).map_err(self.io("claim", &link))
            }
        }
    }
}

/// A claim whose pod directory is gone (an unreadable one is kept: better a uid
/// unused than one shared).
fn stale(link: &Path) -> bool {
    match std::fs::read_link(link) {
        Ok(target) => matches!(
            std::fs::symlink_metadata(&target),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound
        ),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_distinct_round_robin_and_freed_with_the_pod() {
        let dir = tempfile::tempdir().unwrap();
        let pods: Vec<PathBuf> = (0..4).map(|i| dir.path().join(format!("pod{i}"))).collect();
        for p in &pods {
            std::fs::create_dir(p).unwrap();
        }
        let pool = UidPool::new(dir.path().join("uids"), 5000, 3);
        let a = pool.claim(&pods[0]).unwrap();
        let b = pool.claim(&pods[1]).unwrap();
        let c = pool.claim(&pods[2]).unwrap();
        assert_eq!((a, b, c), (5000, 5001, 5002));
        let e = pool.claim(&pods[3]).unwrap_err();
        assert!(e.to_string().contains("5000..5003"), "{e}");
        // Pod 1 is removed: its uid is free, and the claim now names pod 3.
        std::fs::remove_dir(&pods[1]).unwrap();
        assert_eq!(pool.claim(&pods[3]).unwrap(), 5001);
        assert_eq!(
            std::fs::read_link(dir.path().join("uids/5001")).unwrap(),
            pods[3]
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("uids"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_restarted_pool_keeps_live_claims() {
        let dir = tempfile::tempdir().unwrap();
        let (p0, p1) = (dir.path().join("p0"), dir.path().join("p1"));
        std::fs::create_dir(&p0).unwrap();
        std::fs::create_dir(&p1).unwrap();
        let uids = dir.path().join("uids");
        let first = UidPool::new(uids.clone(), 7, 2).claim(&p0).unwrap();
        // A new daemon starts at the beginning of the range again.
        let second = UidPool::new(uids.clone(), 7, 2).claim(&p1).unwrap();
        assert_ne!(first, second);
        let pool = UidPool::new(uids.clone(), 7, 2);
        pool.adopt(first, &p0).unwrap();
        // A lost claim is made again; one held by another live pod is refused.
        std::fs::remove_file(uids.join(first.to_string())).unwrap();
        pool.adopt(first, &p0).unwrap();
        assert_eq!(
            std::fs::read_link(uids.join(first.to_string())).unwrap(),
            p0
        );
        assert!(matches!(
            pool.adopt(second, &p0),
            Err(SandboxError::UidTaken { .. })
        ));
    }
}
