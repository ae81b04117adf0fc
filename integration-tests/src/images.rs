//! Test images: a busybox root file system (Debian's busybox-static) as an erofs
//! image, and empty ext4 scratch disks.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian's busybox-static installs busybox.
const BUSYBOX: &str = "/bin/busybox";

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds a busybox root file system under `dir` and packs it into `dir/busybox.erofs`.
/// It has every applet in /bin, /etc/passwd and /etc/group with root, `app`
/// (1000:1000, also in group `extra` 2000) and `www-data` (33:33, also in group `web`
/// 3000), and empty /tmp, /proc, /sys, /dev, /etc, /root, /home/app.
pub fn busybox_erofs(dir: &Path) -> PathBuf {
    let stage = dir.join("busybox-root");
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev", "root",
        "home/app", "var/run",
    ] {
        std::fs::create_dir_all(stage.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, stage.join("bin/busybox"))
        .unwrap_or_else(|e| panic!("{BUSYBOX}: {e} (install busybox-static)"));
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", stage.join("bin").join(applet));
        }
    }
    std::fs::write(
        stage.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n\
         www-data:x:33:33:www-data:/var/www:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        stage.join("etc/group"),
        "root:x:0:\napp:x:1000:\nextra:x:2000:app\nwww-data:x:33:\nweb:x:3000:www-data\n",
    )
    .unwrap();
    std::fs::write(stage.join("etc/image-marker"), "from the image\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(stage.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let image = dir.join("busybox.erofs");
    run(Command::new("mkfs.erofs").arg(&image).arg(&stage));
    image
}

/// Makes an empty, sparse ext4 disk of `mib` MiB at `path`.
pub fn scratch_disk(path: &Path, mib: u64) -> PathBuf {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(path));
    path.to_owned()
}

/// A container spec whose root is the erofs image drive `image` with its writable
/// layer on the scratch drive `scratch`, running `args`.
pub fn container_spec(
    id: &str,
    image: &str,
    scratch: &str,
    args: &[&str],
) -> vmlet_proto::agent::ContainerSpec {
    use vmlet_proto::agent as pb;
    pb::ContainerSpec {
        container_id: id.into(),
        rootfs: Some(pb::Rootfs {
            image_serial: image.into(),
            image_fstype: "erofs".into(),
            scratch_serial: scratch.into(),
            ..Default::default()
        }),
        process: Some(pb::Process {
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}
