//! Helpers for the image tests: a manager for a fixture registry, and erofs mounts.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;
use vmlet_agent::images::{
    ImageLimits, ImageManager, ImageManagerConfig, RegistriesConfig, RegistryHost,
};

/// An image manager in a temporary state directory that talks plain HTTP to `hosts`.
pub async fn manager(state: &Path, hosts: &[&str]) -> ImageManager {
    manager_with_limits(state, hosts, ImageLimits::default()).await
}

/// [`manager`] with these image limits.
pub async fn manager_with_limits(
    state: &Path,
    hosts: &[&str],
    limits: ImageLimits,
) -> ImageManager {
    let mut map = HashMap::new();
    for h in hosts {
        map.insert(
            h.to_string(),
            RegistryHost {
                plain_http: true,
                ..Default::default()
            },
        );
    }
    ImageManager::open(ImageManagerConfig {
        state_dir: state.to_path_buf(),
        registries: RegistriesConfig { hosts: map },
        scratch_dir: None,
        limits,
    })
    .await
    .expect("open image manager")
}

/// Files under `dir`, relative, sorted (for "nothing left behind" checks).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Asserts the state directory holds no blobs, block images or scratch files.
pub fn assert_empty_state(state: &Path) {
    for sub in ["content/blobs", "content/ingest", "erofs", "tmp"] {
        let left = files_under(&state.join(sub));
        assert!(left.is_empty(), "{sub} not empty: {left:?}");
    }
}

/// An erofs image mounted read-only on a temporary directory; unmounted on drop.
pub struct Mounted {
    dir: TempDir,
}

impl Mounted {
    /// Mounts `image` (the host kernel here supports erofs; the test fails otherwise).
    pub fn new(image: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(image)
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t erofs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
