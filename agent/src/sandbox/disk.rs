//! A pod's disks: the sparse ext4 scratch disk for the containers' writable layers and
//! the tiny placeholder that backs image slots not in use.

use std::path::Path;

use super::error::SandboxError;

/// Size of the placeholder: one sector would do; a page keeps every reader happy.
const PLACEHOLDER_BYTES: u64 = 4096;

/// Makes a sparse file of `mib` MiB at `path` with an empty ext4 file system.
pub async fn make_scratch(path: &Path, mib: u64) -> Result<(), SandboxError> {
    let io = |op| {
        move |source| SandboxError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    let f = std::fs::File::create(path).map_err(io("create"))?;
    f.set_len(mib << 20).map_err(io("size"))?;
    drop(f);
    let out = tokio::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(path)
        .output()
        .await
        .map_err(io("run mkfs.ext4 for"))?;
    if !out.status.success() {
        return Err(SandboxError::Mkfs {
            path: path.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Makes the placeholder file.
pub fn make_placeholder(path: &Path) -> Result<(), SandboxError> {
    let f = std::fs::File::create(path).map_err(|source| SandboxError::Io {
        op: "create",
        path: path.to_owned(),
        source,
    })?;
    f.set_len(PLACEHOLDER_BYTES)
        .map_err(|source| SandboxError::Io {
            op: "size",
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scratch_is_sparse_ext4() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.ext4");
        make_scratch(&p, 64).await.unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.len(), 64 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(m.blocks() * 512 < m.len(), "not sparse");
        make_placeholder(&dir.path().join("e")).unwrap();
    }
}
