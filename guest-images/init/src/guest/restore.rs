//! `Restored`: makes a guest restored from a template VM's snapshot an individual of
//! its own before any container runs in it.
//!
//! Every guest restored from one snapshot starts with the template's kernel RNG
//! state, its wall clock from snapshot time, the block devices' page cache, the
//! neighbour tables and the boot ID. [`restore`] replaces each, in this order:
//!
//! 1. the CRNG: the host's bytes go into the entropy pool (`RNDADDENTROPY`), then the
//!    CRNG is reseeded from it at once (`RNDRESEEDCRNG`) rather than at its next
//!    scheduled reseed;
//! 2. `CLOCK_REALTIME`, from the host's;
//! 3. the page cache of every virtio-blk device (`BLKFLSBUF`): the template's kernel
//!    read its own disks at boot, and a restored pod's fresh, differently formatted
//!    scratch disk must not be mounted through the template's cached superblock;
//! 4. the neighbour (ARP/NDP) tables, so that nothing is sent to addresses the
//!    template had learnt (failures are logged only: a stale entry ages out);
//! 5. the boot ID that containers see: the kernel's cannot be changed, so a file
//!    holding the new one is bound over `/proc/sys/kernel/random/boot_id` in every
//!    container created afterwards ([`boot_id_file`]).
//!
//! Each call redoes every step, so the host may retry one whose answer it lost.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::sys::ioctl::ioctl_num_type;
use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};

use super::netconf;
use crate::console;
use crate::container::boot_id_file;

/// Fewest bytes of entropy taken: 256 bits, what the kernel's CRNG needs to count as
/// seeded (`RNDRESEEDCRNG` refuses to run before).
pub const MIN_ENTROPY: usize = 32;
/// Most bytes of entropy taken.
pub const MAX_ENTROPY: usize = 512;
/// Length of a hyphenated UUID.
const UUID_LEN: usize = 36;

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`, the two ints of `struct rand_pool_info`
/// that precede its bytes.
const RNDADDENTROPY: ioctl_num_type =
    nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[libc::c_int; 2]>());
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: ioctl_num_type = nix::request_code_none!(b'R', 0x07);
/// `BLKFLSBUF`: `_IO(0x12, 97)`.
const BLKFLSBUF: ioctl_num_type = nix::request_code_none!(0x12, 97);

mod ioctl {
    use super::{BLKFLSBUF, RNDADDENTROPY, RNDRESEEDCRNG};

    nix::ioctl_write_ptr_bad!(
        /// Adds a `struct rand_pool_info` (header and bytes) to the entropy pool.
        rnd_add_entropy,
        RNDADDENTROPY,
        u8
    );
    nix::ioctl_none_bad!(
        /// Reseeds the CRNG from the entropy pool now.
        rnd_reseed_crng,
        RNDRESEEDCRNG
    );
    nix::ioctl_none_bad!(
        /// Writes back and drops a block device's cached pages.
        blk_flsbuf,
        BLKFLSBUF
    );
}

/// A `Restored` request that failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A step failed.
    #[error("{step}: {source}")]
    Sys {
        /// The step, and what it was doing.
        step: String,
        /// Why.
        source: io::Error,
    },
}

fn sys(step: impl Into<String>) -> impl FnOnce(io::Error) -> RestoreError {
    let step = step.into();
    move |source| RestoreError::Sys { step, source }
}

/// A checked `Restored` request.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// The `struct rand_pool_info` to add, header and bytes.
    pool_info: Vec<u8>,
    /// The new wall clock, if any.
    realtime: Option<TimeSpec>,
    /// The new boot ID, if any.
    boot_id: Option<String>,
}

/// What [`restore`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Block devices whose cached pages were dropped.
    pub block_devices_flushed: u32,
    /// Neighbour entries deleted.
    pub neighbours_flushed: u32,
}

/// Checks a request: `entropy` of [`MIN_ENTROPY`] to [`MAX_ENTROPY`] bytes,
/// `realtime_ns` not negative (0: leave the clock), `boot_id` a lowercase hyphenated
/// UUID or empty (leave it).
pub fn check(entropy: &[u8], realtime_ns: i64, boot_id: &str) -> Result<Plan, RestoreError> {
    let pool_info = rand_pool_info(entropy)?;
    let realtime = match realtime_ns {
        0 => None,
        ns if ns < 0 => {
            return Err(RestoreError::Invalid(format!(
                "realtime_ns {ns} is before the Unix epoch"
            )))
        }
        ns => Some(timespec(ns)?),
    };
    let boot_id = match boot_id {
        "" => None,
        id if is_uuid(id) => Some(id.to_owned()),
        id => {
            return Err(RestoreError::Invalid(format!(
                "boot_id {id:?} is not a lowercase hyphenated UUID \
                 (like 6f0f3f5e-1c2d-4b7a-9e8f-0a1b2c3d4e5f)"
            )))
        }
    };
    Ok(Plan {
        pool_info,
        realtime,
        boot_id,
    })
}

/// The argument of `RNDADDENTROPY`: `struct rand_pool_info { int entropy_count; int
/// buf_size; __u32 buf[]; }` in native byte order, with every byte credited as 8 bits
/// of entropy (the host's getrandom is as good a source as the guest can have).
pub fn rand_pool_info(entropy: &[u8]) -> Result<Vec<u8>, RestoreError> {
    if !(MIN_ENTROPY..=MAX_ENTROPY).contains(&entropy.len()) {
        return Err(RestoreError::Invalid(format!(
            "entropy must be {MIN_ENTROPY} to {MAX_ENTROPY} bytes, not {}",
            entropy.len()
        )));
    }
    // At most MAX_ENTROPY bytes: neither count can overflow an int.
    let (Ok(bytes), Ok(bits)) = (
        libc::c_int::try_from(entropy.len()),
        libc::c_int::try_from(entropy.len().saturating_mul(8)),
    ) else {
        return Err(RestoreError::Invalid("entropy is too long".into()));
    };
    let mut info = Vec::with_capacity(2 * std::mem::size_of::<libc::c_int>() + entropy.len());
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&bytes.to_ne_bytes());
    info.extend_from_slice(entropy);
    Ok(info)
}

/// `ns` nanoseconds since the epoch (not negative) as a timespec.
fn timespec(ns: i64) -> Result<TimeSpec, RestoreError> {
    let out_of_range = || {
        RestoreError::Invalid(format!(
            "realtime_ns {ns} is out of the guest clock's range"
        ))
    };
    let secs = libc::time_t::try_from(ns / 1_000_000_000).map_err(|_| out_of_range())?;
    let nanos = libc::c_long::try_from(ns % 1_000_000_000).map_err(|_| out_of_range())?;
    Ok(TimeSpec::new(secs, nanos))
}

/// Whether `s` is a UUID as the kernel writes boot IDs: 36 characters, lowercase hex
/// digits in groups of 8-4-4-4-12 separated by hyphens.
pub fn is_uuid(s: &str) -> bool {
    s.len() == UUID_LEN
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// Carries out a checked request (see the module's documentation). Must run inside a
/// tokio runtime (the neighbour flush speaks rtnetlink on it).
pub async fn restore(plan: &Plan) -> Result<Outcome, RestoreError> {
    reseed(&plan.pool_info)?;
    if let Some(t) = plan.realtime {
        clock_settime(ClockId::CLOCK_REALTIME, t)
            .map_err(|e| sys("set the wall clock (clock_settime CLOCK_REALTIME)")(e.into()))?;
    }
    let block_devices_flushed = flush_block_devices(Path::new("/sys/block"), Path::new("/dev"))?;
    let neighbours_flushed = flush_neighbours().await;
    if let Some(id) = &plan.boot_id {
        write_boot_id(&boot_id_file(), id)?;
    }
    Ok(Outcome {
        block_devices_flushed,
        neighbours_flushed,
    })
}

/// Adds `pool_info` to the entropy pool and reseeds the CRNG from it.
fn reseed(pool_info: &[u8]) -> Result<(), RestoreError> {
    const STEP: &str = "reseed the kernel's random number generator";
    let urandom = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/urandom")
        .map_err(sys(format!("{STEP}: open /dev/urandom")))?;
    // SAFETY: `pool_info` is a whole `struct rand_pool_info` (its header's buf_size
    // is the number of bytes after the header, see `rand_pool_info`) that outlives
    // the call; the kernel only reads it.
    unsafe { ioctl::rnd_add_entropy(urandom.as_raw_fd(), pool_info.as_ptr()) }
        .map_err(|e| sys(format!("{STEP}: RNDADDENTROPY"))(e.into()))?;
    // SAFETY: the ioctl takes no argument.
    unsafe { ioctl::rnd_reseed_crng(urandom.as_raw_fd()) }
        .map_err(|e| sys(format!("{STEP}: RNDRESEEDCRNG"))(e.into()))?;
    Ok(())
}

/// A block device to flush: its name and device number.
#[derive(Debug, PartialEq, Eq)]
struct BlockDevice {
    name: String,
    rdev: u64,
}

/// Whether `name` is a virtio-blk disk's (`vda`, `vdb`, ..., `vdaa`).
fn is_virtio_disk(name: &str) -> bool {
    name.strip_prefix("vd")
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase()))
}

/// Parses a sysfs `dev` file ("254:16\n").
fn parse_dev(text: &str) -> Option<u64> {
    let (major, minor) = text.trim_end().split_once(':')?;
    Some(nix::sys::stat::makedev(
        major.parse().ok()?,
        minor.parse().ok()?,
    ))
}

/// The virtio-blk disks under `sys_block` (sysfs's `/sys/block`) and their
/// partitions, sorted by name.
fn virtio_block_devices(sys_block: &Path) -> Result<Vec<BlockDevice>, RestoreError> {
    let step = || {
        format!(
            "drop the block devices' cached pages: list {}",
            sys_block.display()
        )
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(sys_block).map_err(sys(step()))? {
        let entry = entry.map_err(sys(step()))?;
        let Some(disk) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !is_virtio_disk(&disk) {
            continue;
        }
        let dir = entry.path();
        let read_dev = |dir: &Path, name: &str| {
            let path = dir.join("dev");
            let text = std::fs::read_to_string(&path).map_err(sys(format!(
                "drop the block devices' cached pages: read {}",
                path.display()
            )))?;
            let rdev = parse_dev(&text).ok_or_else(|| RestoreError::Sys {
                step: format!("drop the block devices' cached pages: {}", path.display()),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{text:?} is not MAJOR:MINOR"),
                ),
            })?;
            Ok::<_, RestoreError>(BlockDevice {
                name: name.to_owned(),
                rdev,
            })
        };
        found.push(read_dev(&dir, &disk)?);
        // Partitions have page caches of their own.
        for sub in std::fs::read_dir(&dir).map_err(sys(step()))?.flatten() {
            let Some(name) = sub.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with(&disk) && sub.path().join("partition").exists() {
                found.push(read_dev(&sub.path(), &name)?);
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Drops the cached pages of every virtio-blk device (`BLKFLSBUF`, which writes back
/// dirty ones first), opening each as `dev`/NAME after checking that it is the block
/// device sysfs names. Tries them all, and fails with the first failure; returns how
/// many were flushed.
fn flush_block_devices(sys_block: &Path, dev: &Path) -> Result<u32, RestoreError> {
    let mut flushed = 0u32;
    let mut first_error = None;
    for d in virtio_block_devices(sys_block)? {
        let path = dev.join(&d.name);
        match flush_block_device(&path, d.rdev) {
            Ok(()) => flushed = flushed.saturating_add(1),
            Err(source) => {
                let e = RestoreError::Sys {
                    step: format!("drop the cached pages of {} (BLKFLSBUF)", path.display()),
                    source,
                };
                console::error(format_args!("Restored: {e}"));
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(flushed),
    }
}

fn flush_block_device(path: &Path, rdev: u64) -> io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    let md = f.metadata()?;
    if !md.file_type().is_block_device() || md.rdev() != rdev {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not block device {}:{}",
                nix::sys::stat::major(rdev),
                nix::sys::stat::minor(rdev)
            ),
        ));
    }
    // SAFETY: the ioctl takes no argument; `f` is open for the call.
    unsafe { ioctl::blk_flsbuf(f.as_raw_fd()) }?;
    Ok(())
}

/// Flushes the neighbour tables; logs what failed. Returns how many entries went.
async fn flush_neighbours() -> u32 {
    match netconf::flush_neighbours().await {
        Ok(done) => {
            if let Some(first) = done.failed.first() {
                console::error(format_args!(
                    "Restored: {} neighbour entries were not flushed, the first: {first}",
                    done.failed.len()
                ));
            }
            done.deleted
        }
        Err(e) => {
            console::error(format_args!(
                "Restored: cannot flush the neighbour tables: {e}"
            ));
            0
        }
    }
}

/// Records `id` in `dest` (with a newline, as the kernel's file has one), mode 0444,
/// replacing the file atomically: a container created meanwhile binds either the
/// old one or the new one, whole.
fn write_boot_id(dest: &Path, id: &str) -> Result<(), RestoreError> {
    let step = || format!("record the boot ID in {}", dest.display());
    let parent = dest.parent().unwrap_or(Path::new("/"));
    let tmp = parent.join(".boot_id.tmp");
    std::fs::create_dir_all(parent).map_err(sys(step()))?;
    // A temporary file a failed call left: it is read-only, so remove it first.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(sys(step())(e)),
        _ => {}
    }
    let write = || -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(format!("{id}\n").as_bytes())?;
        f.set_permissions(std::fs::Permissions::from_mode(0o444))?;
        drop(f);
        std::fs::rename(&tmp, dest)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        sys(step())(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "6f0f3f5e-1c2d-4b7a-9e8f-0a1b2c3d4e5f";

    fn invalid(r: Result<Plan, RestoreError>) -> String {
        match r {
            Err(RestoreError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // From <linux/random.h> and <linux/fs.h> on x86_64 and arm64.
        assert_eq!(RNDADDENTROPY, 0x4008_5203);
        assert_eq!(RNDRESEEDCRNG, 0x5207);
        assert_eq!(BLKFLSBUF, 0x1261);
    }

    #[test]
    fn entropy_length_is_bounded() {
        for n in [MIN_ENTROPY, 64, MAX_ENTROPY] {
            check(&vec![7; n], 0, "").unwrap();
        }
        for n in [0, 1, MIN_ENTROPY - 1, MAX_ENTROPY + 1, 1 << 20] {
            let m = invalid(check(&vec![7; n], 0, ""));
            assert_eq!(m, format!("entropy must be 32 to 512 bytes, not {n}"));
        }
    }

    #[test]
    fn rand_pool_info_is_bits_then_size_then_bytes() {
        let entropy: Vec<u8> = (0..64).collect();
        let info = rand_pool_info(&entropy).unwrap();
        assert_eq!(info.len(), 8 + 64);
        assert_eq!(info[0..4], 512i32.to_ne_bytes());
        assert_eq!(info[4..8], 64i32.to_ne_bytes());
        assert_eq!(info[8..], entropy[..]);
        let info = rand_pool_info(&[0xff; MAX_ENTROPY]).unwrap();
        assert_eq!(info[0..4], 4096i32.to_ne_bytes());
        assert_eq!(info[4..8], 512i32.to_ne_bytes());
    }

    #[test]
    fn time_must_not_be_negative() {
        assert_eq!(check(&[1; 32], 0, "").unwrap().realtime, None);
        let t = check(&[1; 32], 1_700_000_000_123_456_789, "")
            .unwrap()
            .realtime
            .unwrap();
        assert_eq!((t.tv_sec(), t.tv_nsec()), (1_700_000_000, 123_456_789));
        let t = check(&[1; 32], i64::MAX, "").unwrap().realtime.unwrap();
        assert_eq!(t.tv_nsec(), 854_775_807);
        for ns in [-1, i64::MIN] {
            let m = invalid(check(&[1; 32], ns, ""));
            assert!(m.contains("before the Unix epoch"), "{m}");
        }
    }

    #[test]
    fn boot_id_must_be_a_lowercase_hyphenated_uuid() {
        assert_eq!(check(&[1; 32], 0, "").unwrap().boot_id, None);
        assert_eq!(check(&[1; 32], 0, ID).unwrap().boot_id.as_deref(), Some(ID));
        for bad in [
            "6F0F3F5E-1C2D-4B7A-9E8F-0A1B2C3D4E5F",
            "6f0f3f5e1c2d4b7a9e8f0a1b2c3d4e5f",
            "{6f0f3f5e-1c2d-4b7a-9e8f-0a1b2c3d4e5f}",
            "6f0f3f5e-1c2d-4b7a-9e8f-0a1b2c3d4e5",
            "6f0f3f5e-1c2d-4b7a-9e8f-0a1b2c3d4e5f0",
            "6f0f3f5e-1c2d-4b7a-9e8f-0a1b2c3d4e5g",
            "6f0f3f5e-1c2d-4b7a-9e8f0-a1b2c3d4e5f",
            "6f0f3f5e-1c2d-4b7a-9e8f-0a1b2c3d4e5\n",
            "6f0f3f5e-1c2d-4b7a-9e8f-0a1b2c3d4é",
            "------------------------------------",
        ] {
            let m = invalid(check(&[1; 32], 0, bad));
            assert!(m.starts_with(&format!("boot_id {bad:?}")), "{m}");
        }
        assert!(is_uuid("00000000-0000-0000-0000-000000000000"));
    }

    #[test]
    fn virtio_disks_are_vd_and_letters() {
        for good in ["vda", "vdb", "vdz", "vdaa"] {
            assert!(is_virtio_disk(good), "{good}");
        }
        for bad in ["vd", "vda1", "sda", "loop0", "nvme0n1", "xvda", "vdA"] {
            assert!(!is_virtio_disk(bad), "{bad}");
        }
        assert_eq!(
            parse_dev("254:16\n"),
            Some(nix::sys::stat::makedev(254, 16))
        );
        for bad in ["", "254", "254:", "a:1", "254:16:1"] {
            assert_eq!(parse_dev(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn block_devices_are_found_with_their_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let sys_block = dir.path();
        let dev = |path: &str, text: &str| {
            let p = sys_block.join(path);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("dev"), text).unwrap();
        };
        dev("vdb", "254:16\n");
        dev("vda", "254:0\n");
        dev("vda/vda1", "254:1\n");
        std::fs::write(sys_block.join("vda/vda1/partition"), "1\n").unwrap();
        // Not a partition: no `partition` file.
        dev("vda/vdaq", "1:2\n");
        dev("loop0", "7:0\n");
        let found = virtio_block_devices(sys_block).unwrap();
        let names: Vec<_> = found.iter().map(|d| (d.name.as_str(), d.rdev)).collect();
        let mk = nix::sys::stat::makedev;
        assert_eq!(
            names,
            [
                ("vda", mk(254, 0)),
                ("vda1", mk(254, 1)),
                ("vdb", mk(254, 16))
            ]
        );

        // A node that is not the device sysfs names is not flushed.
        std::fs::write(sys_block.join("vdb/dev"), "what\n").unwrap();
        let e = virtio_block_devices(sys_block).unwrap_err();
        assert!(e.to_string().contains("is not MAJOR:MINOR"), "{e}");
    }

    #[test]
    fn a_missing_or_wrong_node_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let sys_block = dir.path().join("block");
        let devdir = dir.path().join("dev");
        std::fs::create_dir_all(sys_block.join("vdc")).unwrap();
        std::fs::create_dir_all(&devdir).unwrap();
        std::fs::write(sys_block.join("vdc/dev"), "254:32\n").unwrap();
        let e = flush_block_devices(&sys_block, &devdir).unwrap_err();
        assert!(e.to_string().contains("/vdc (BLKFLSBUF)"), "{e}");
        // A regular file in its place is refused before any ioctl.
        std::fs::write(devdir.join("vdc"), "").unwrap();
        let e = flush_block_devices(&sys_block, &devdir).unwrap_err();
        assert!(e.to_string().contains("not block device 254:32"), "{e}");
        // No virtio disks: nothing to do.
        std::fs::remove_dir_all(sys_block.join("vdc")).unwrap();
        assert_eq!(flush_block_devices(&sys_block, &devdir).unwrap(), 0);
    }

    #[test]
    fn boot_id_is_recorded_read_only_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/boot_id");
        write_boot_id(&path, ID).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{ID}\n"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o444);
        // A second call replaces it, even over a temporary file a failed one left.
        let tmp = dir.path().join("run/.boot_id.tmp");
        std::fs::write(&tmp, "junk").unwrap();
        let other = "00000000-0000-4000-8000-000000000000";
        write_boot_id(&path, other).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{other}\n")
        );
        assert!(!tmp.exists());
    }
}
