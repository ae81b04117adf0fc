//! Templates: a snapshot of a guest booted once per VM shape, from which each pod's
//! VM is restored instead of booted (`vm.templates`, a handler's `templates`).
//!
//! A template is made from a warm VM once its guest answers (snapshotted, then
//! resumed as the warm VM it was), or, for a shape without a warm pool, by a VM
//! booted for it in the background after the first pod of that shape booted. It
//! lives in `<state_dir>/templates/<key>/` (`state`, `memory`, `template.json`),
//! owned by root and read-only, since every VM restored from it maps its memory
//! file: a file changed under them would change their memory. The key is a digest
//! of everything the snapshot depends on: the kernel, initramfs and VMM binary (by
//! content), the kernel arguments, the shape (vCPUs, memory) and the device list
//! (image slots, scratch size, network card, balloon). So a new kernel, initramfs
//! or VMM makes new templates; old ones are removed at the next start of vmletd
//! (a removed template's files live on while VMs still map them).
//!
//! A restored guest is told so (`Restored`: fresh entropy, wall clock, boot ID, its
//! block and neighbour caches dropped) before anything else is asked of it. A
//! template that fails to restore is removed (and made again), and the pod boots.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vmlet_vmm_api::control::{SnapshotReply, SNAPSHOT_MEMORY_FILE, SNAPSHOT_STATE_FILE};

use super::error::RuntimeError;
use super::util::{lock, now_ns};

/// The file beside the snapshot that says what the template is.
const META_FILE: &str = "template.json";
/// The digests of the files templates are keyed by, kept across restarts (hashing a
/// kernel and a VMM binary again at each start would delay it).
const DIGESTS_FILE: &str = "digests.json";

/// One entry of [`DIGESTS_FILE`].
#[derive(Clone, Debug, Serialize, Deserialize)]
struct KnownDigest {
    path: PathBuf,
    id: FileId,
    sha256: String,
}

/// What a pod's VM must match to be restored from a template.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(super) struct Shape {
    /// RuntimeClass handler.
    pub handler: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub mem_mib: u64,
    /// Whether the VM has a network card.
    pub network: bool,
}

/// What a template's snapshot depends on beside its shape: the VM's files and
/// devices, as the handler and the settings give them.
#[derive(Clone, Copy, Debug)]
pub(super) struct Inputs<'a> {
    /// The handler's guest kernel.
    pub kernel: &'a Path,
    /// Its initramfs.
    pub initramfs: &'a Path,
    /// The VMM binary.
    pub vmm: &'a Path,
    /// Its kernel arguments.
    pub kernel_args: &'a str,
    /// Image drives per VM.
    pub image_slots: u32,
    /// Scratch disk size.
    pub scratch_mib: u64,
    /// Whether VMs have the free page reporting balloon.
    pub free_page_reporting: bool,
}

/// A template ready to restore from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Template {
    /// Its directory (the VMM's `--restore`).
    pub dir: PathBuf,
    /// The MAC its guest's network card booted with, which a restored pod's guest
    /// still has until ConfigureGuest gives it the pod's.
    pub guest_mac: Option<String>,
}

/// `template.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    shape: Shape,
    guest_mac: Option<String>,
    made_at_ns: i64,
    memory_bytes: u64,
    memory_file_bytes: u64,
    snapshot_ms: u64,
}

/// A file's identity: a new digest is computed when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i64,
}

/// The templates under one state directory.
pub(super) struct Templates {
    root: PathBuf,
    /// SHA-256 of the kernels, initramfs and VMM binaries seen, by path.
    digests: Mutex<HashMap<PathBuf, (FileId, String)>>,
    /// Keys of templates being made.
    making: Mutex<HashSet<String>>,
}

/// Marks a template as being made while it lives.
pub(super) struct Making<'a> {
    templates: &'a Templates,
    key: String,
}

impl Drop for Making<'_> {
    fn drop(&mut self) {
        lock(&self.templates.making).remove(&self.key);
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Template(format!("cannot {op} {}: {source}", path.display()))
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

impl Templates {
    /// The templates in `<state_dir>/templates`.
    pub fn new(state_dir: &Path) -> Self {
        let root = state_dir.join("templates");
        let known: Vec<KnownDigest> = std::fs::read(root.join(DIGESTS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Templates {
            digests: Mutex::new(
                known
                    .into_iter()
                    .map(|k| (k.path, (k.id, k.sha256)))
                    .collect(),
            ),
            root,
            making: Mutex::new(HashSet::new()),
        }
    }

    /// Makes the templates' directory, vmletd's alone (jails reach a template by
    /// their bind only).
    fn ensure_root(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
    }

    /// Writes the digests known to [`DIGESTS_FILE`]; a failure only costs a rehash.
    fn save_digests(&self) {
        let known: Vec<KnownDigest> = lock(&self.digests)
            .iter()
            .map(|(path, (id, sha256))| KnownDigest {
                path: path.clone(),
                id: *id,
                sha256: sha256.clone(),
            })
            .collect();
        let path = self.root.join(DIGESTS_FILE);
        let written = self
            .ensure_root()
            .map_err(|e| e.to_string())
            .and_then(|()| {
                crate::store::replace_json(&path, &known, false).map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            tracing::debug!(
                "templates: cannot keep the file digests in {}: {e}",
                path.display()
            );
        }
    }

    /// The directory holding them.
    #[cfg(test)]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The content digest of `path`, computed once per version of the file.
    fn digest(&self, path: &Path) -> Result<String, RuntimeError> {
        let meta = std::fs::metadata(path).map_err(io("read", path))?;
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        };
        if let Some((seen, digest)) = lock(&self.digests).get(path) {
            if *seen == id {
                return Ok(digest.clone());
            }
        }
        let digest = sha256_file(path).map_err(io("read", path))?;
        lock(&self.digests).insert(path.to_owned(), (id, digest.clone()));
        self.save_digests();
        Ok(digest)
    }

    /// The key of `shape`'s template made with `i`. Reads the kernel, initramfs
    /// and VMM binary once per version of each (the digests are kept across
    /// restarts).
    pub fn key(&self, i: &Inputs<'_>, shape: &Shape) -> Result<String, RuntimeError> {
        let inputs = serde_json::json!({
            "kernel": self.digest(i.kernel)?,
            "initramfs": self.digest(i.initramfs)?,
            "vmm": self.digest(i.vmm)?,
            "kernel_args": i.kernel_args,
            "vcpus": shape.vcpus,
            "mem_mib": shape.mem_mib,
            "network": shape.network,
            "image_slots": i.image_slots,
            "scratch_mib": i.scratch_mib,
            "free_page_reporting": i.free_page_reporting,
        });
        let digest = Sha256::digest(inputs.to_string().as_bytes());
        Ok(hex::encode(&digest[..12]))
    }

    /// The template of `key`, if it is made.
    pub fn find(&self, key: &str) -> Option<Template> {
        let dir = self.root.join(key);
        let meta: Meta = serde_json::from_slice(&std::fs::read(dir.join(META_FILE)).ok()?).ok()?;
        Some(Template {
            dir,
            guest_mac: meta.guest_mac,
        })
    }

    /// Whether `key`'s template is being made.
    pub fn is_making(&self, key: &str) -> bool {
        lock(&self.making).contains(key)
    }

    /// Claims the making of `key`'s template: None if it is made or being made.
    pub fn begin(&self, key: &str) -> Option<Making<'_>> {
        if self.find(key).is_some() || !lock(&self.making).insert(key.to_owned()) {
            return None;
        }
        Some(Making {
            templates: self,
            key: key.to_owned(),
        })
    }

    /// Makes the snapshot a VM wrote into `from` (a directory of its own) the
    /// template of `making`'s key: its files root's and read-only, with what it is
    /// beside them, then renamed into place whole.
    pub fn install(
        &self,
        making: &Making<'_>,
        from: &Path,
        shape: &Shape,
        guest_mac: Option<String>,
        reply: &SnapshotReply,
    ) -> Result<Template, RuntimeError> {
        self.ensure_root().map_err(io("create", &self.root))?;
        let tmp = self
            .root
            .join(format!("{}.tmp-{}", making.key, std::process::id()));
        let result = (|| {
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir(&tmp).map_err(io("create", &tmp))?;
            for file in [SNAPSHOT_STATE_FILE, SNAPSHOT_MEMORY_FILE] {
                let (src, dst) = (from.join(file), tmp.join(file));
                std::fs::rename(&src, &dst).map_err(io("move", &src))?;
                // Owned by root and read-only: jailed VMMs (any uid) read it through
                // their jail's bind; none may change it.
                std::os::unix::fs::chown(&dst, Some(0), Some(0)).map_err(io("chown", &dst))?;
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o444))
                    .map_err(io("set the mode of", &dst))?;
            }
            let meta = Meta {
                shape: shape.clone(),
                guest_mac: guest_mac.clone(),
                made_at_ns: now_ns(),
                memory_bytes: reply.memory_bytes,
                memory_file_bytes: reply.memory_file_bytes,
                snapshot_ms: reply.took_ms,
            };
            let meta_path = tmp.join(META_FILE);
            let text = serde_json::to_vec_pretty(&meta)
                .map_err(|e| RuntimeError::Template(e.to_string()))?;
            std::fs::write(&meta_path, text).map_err(io("write", &meta_path))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
                .map_err(io("set the mode of", &tmp))?;
            let dir = self.root.join(&making.key);
            std::fs::rename(&tmp, &dir).map_err(io("install", &dir))?;
            Ok(Template { dir, guest_mac })
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Removes `key`'s template (one that failed to restore): the next VM of its
    /// shape makes it again. VMs restored from it keep their mappings.
    pub fn discard(&self, key: &str) {
        let dir = self.root.join(key);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::warn!(template = %key, "removed the template"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(template = %key, "cannot remove the template: {e}"),
        }
    }

    /// At start: removes half-made templates, and those whose key is not what
    /// `key_of` gives their shape now (None: templates off, or another kernel,
    /// initramfs or VMM made them). Templates of other shapes that are still
    /// current stay.
    pub fn prune(&self, key_of: impl Fn(&Shape) -> Option<String>) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        let own = format!(".tmp-{}", std::process::id());
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if name == DIGESTS_FILE || name.ends_with(&own) {
                continue;
            }
            let stale = if name.contains(".tmp-") {
                true
            } else {
                match std::fs::read(path.join(META_FILE))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
                {
                    Some(meta) => key_of(&meta.shape).as_deref() != Some(&name),
                    None => true,
                }
            };
            if stale {
                tracing::info!(template = %name, "removing a template that is out of date");
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(template = %name, "cannot remove it: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files of a handler, and the inputs naming them.
    struct Files(tempfile::TempDir);

    impl Files {
        fn new() -> Files {
            let dir = tempfile::tempdir().unwrap();
            for (f, data) in [("vmlinux", "k1"), ("initrd", "i1"), ("vmm", "v1")] {
                std::fs::write(dir.path().join(f), data).unwrap();
            }
            Files(dir)
        }
        fn path(&self, f: &str) -> PathBuf {
            self.0.path().join(f)
        }
    }

    fn inputs<'a>(k: &'a Path, i: &'a Path, v: &'a Path) -> Inputs<'a> {
        Inputs {
            kernel: k,
            initramfs: i,
            vmm: v,
            kernel_args: "quiet",
            image_slots: 4,
            scratch_mib: 16,
            free_page_reporting: true,
        }
    }

    fn shape() -> Shape {
        Shape {
            handler: String::new(),
            vcpus: 1,
            mem_mib: 256,
            network: true,
        }
    }

    fn snapshot_in(dir: &Path) -> PathBuf {
        let from = dir.join("vm-snapshot");
        std::fs::create_dir(&from).unwrap();
        std::fs::write(from.join("state"), "state").unwrap();
        std::fs::write(from.join("memory"), "memory").unwrap();
        from
    }

    fn reply() -> SnapshotReply {
        SnapshotReply {
            memory_bytes: 256 << 20,
            memory_file_bytes: 30 << 20,
            state_bytes: 60_000,
            took_ms: 900,
        }
    }

    #[test]
    fn keys_follow_the_files_and_the_shape() {
        let f = Files::new();
        let (k, i, v) = (f.path("vmlinux"), f.path("initrd"), f.path("vmm"));
        let t = Templates::new(f.0.path());
        let key = t.key(&inputs(&k, &i, &v), &shape()).unwrap();
        assert_eq!(t.key(&inputs(&k, &i, &v), &shape()).unwrap(), key, "stable");
        // Kept for the next start, which need not read the files again.
        let again = Templates::new(f.0.path());
        assert_eq!(lock(&again.digests).len(), 3);
        assert_eq!(again.key(&inputs(&k, &i, &v), &shape()).unwrap(), key);
        let bigger = Shape {
            mem_mib: 512,
            ..shape()
        };
        assert_ne!(t.key(&inputs(&k, &i, &v), &bigger).unwrap(), key);
        let mut other_args = inputs(&k, &i, &v);
        other_args.kernel_args = "";
        assert_ne!(t.key(&other_args, &shape()).unwrap(), key);
        // A new kernel (another file version) makes a new key.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&k, "k2").unwrap();
        assert_ne!(t.key(&inputs(&k, &i, &v), &shape()).unwrap(), key);
        let missing = f.path("nothing");
        assert!(t.key(&inputs(&missing, &i, &v), &shape()).is_err());
    }

    #[test]
    fn an_installed_template_is_found_read_only_and_made_once() {
        let f = Files::new();
        let (k, i, v) = (f.path("vmlinux"), f.path("initrd"), f.path("vmm"));
        let t = Templates::new(f.0.path());
        let key = t.key(&inputs(&k, &i, &v), &shape()).unwrap();
        assert!(t.find(&key).is_none());
        let making = t.begin(&key).unwrap();
        assert!(t.begin(&key).is_none(), "one maker at a time");
        assert!(t.is_making(&key));
        let from = snapshot_in(f.0.path());
        let made = t
            .install(
                &making,
                &from,
                &shape(),
                Some("02:aa:00:00:00:01".into()),
                &reply(),
            )
            .unwrap();
        drop(making);
        assert_eq!(t.find(&key), Some(made.clone()));
        assert!(t.begin(&key).is_none(), "made already");
        let mode = std::fs::metadata(made.dir.join("memory"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o444);
        assert!(!from.join("memory").exists(), "moved, not copied");

        // Half-made ones go at start, and those no longer current.
        std::fs::create_dir(t.root().join("abc.tmp-1")).unwrap();
        let current = |s: &Shape| t.key(&inputs(&k, &i, &v), s).ok();
        t.prune(current);
        assert!(t.find(&key).is_some(), "a current template stays");
        assert!(!t.root().join("abc.tmp-1").exists());
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&i, "i2").unwrap();
        t.prune(|s: &Shape| t.key(&inputs(&k, &i, &v), s).ok());
        assert!(t.find(&key).is_none());

        t.discard("nothing-there");
    }
}
