//! Build script of the vmletd and vmlet-vmm crates: puts the git revision they are
//! built from into `VMLET_GIT_REVISION` for `--version` ("unknown" outside a git
//! checkout, as in a source tarball).

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    let revision = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=VMLET_GIT_REVISION={revision}");
    // Built again when HEAD moves: a commit, a checkout. A worktree has its own HEAD
    // but keeps the branches in the common directory.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let common = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
            .unwrap_or_else(|| dir.clone());
        let mut watched = vec![
            Path::new(&dir).join("HEAD"),
            Path::new(&common).join("packed-refs"),
        ];
        watched.extend(git(&["symbolic-ref", "-q", "HEAD"]).map(|r| Path::new(&common).join(r)));
        for path in watched {
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    } else {
        println!("cargo:rerun-if-changed=build.rs");
    }
}
