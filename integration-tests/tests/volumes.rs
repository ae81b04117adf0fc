//! Kubelet volumes end to end: a pod whose containers carry the mounts a kubelet
//! gives them (etc-hosts, termination log, configMap, secret, projected token,
//! emptyDirs on disk and in memory), laid out on the host as the kubelet lays them out.

// Test-only crate: a failed setup step panics with its message, which is the test's
// failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tonic::Code;
use vmlet_integration_tests::cri::{
    busybox_registry, container_config, parse_log, pod_config, v1, Vmletd,
};
use vmlet_integration_tests::kubelet::{kubelet_container, kubelet_mounts, mount, KubeletPod};

const WAIT: Duration = Duration::from_secs(120);
/// How soon a configMap update must show in the guest: "within a few seconds",
/// generous for the emulated machine.
const UPDATE: Duration = Duration::from_secs(20);
const POD_UID: &str = "2d7c5a3e-61f4-4b9e-8c1d-5e6f7a8b9c0d";

/// A tmpfs mounted on the host for a test, unmounted when dropped.
struct Submount(PathBuf);

impl Submount {
    fn tmpfs(at: &Path) -> Submount {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "vmlet-e2e-submount"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs on {}", at.display());
        Submount(at.to_owned())
    }
}

impl Drop for Submount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn stdout(d: &Vmletd, name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(d.log_dir().join(format!("{name}.log"))).unwrap_or_default();
    parse_log(&text)
        .into_iter()
        .filter(|e| e.stream == "stdout")
        .map(|e| e.line)
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "never: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn kubelet_volumes_reach_the_containers() {
    let (registry, image) = busybox_registry("busybox:volumes");
    let mut d = Vmletd::start_with(
        &["--insecure-registry", registry.addr()],
        "[network]\nmode = \"none\"\n[volumes]\nmax_copy_bytes = 65536\n",
    );
    let kubelet = tempfile::tempdir().unwrap();
    let kpod = KubeletPod::new(kubelet.path(), POD_UID);
    let c = d.client();
    c.pull(&image).expect("PullImage");
    let pod_cfg = pod_config("web-5d8f7c6b9-x2x4q", &d.log_dir());
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");

    // The app reads every volume, fails to write the read-only ones, shares a file
    // through the emptyDir, leaves a termination message and exits 1.
    let app_script = r#"
        cat /etc/config/a /etc/config/b; echo
        cat /etc/creds/password; echo
        cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo
        grep -c web-5d8f7c6b9-x2x4q /etc/hosts
        touch /etc/config/new 2>&1 | grep -o 'Read-only file system'
        echo from-app > /shared/note && mkdir /shared/sub 2>/dev/null; echo via-subpath > /shared/sub/x && echo shared-written
        grep ' /mem ' /proc/mounts | cut -d' ' -f3
        echo in-memory > /mem/m && cat /mem/m
        id -u; id -g; id -G
        echo 'bye from app' > /dev/termination-log
        exit 1
    "#;
    let app = c
        .create(
            &pod,
            kubelet_container(&kpod, "app", &image, app_script),
            &pod_cfg,
        )
        .expect("CreateContainer with a kubelet's mounts");
    c.start(&app).expect("StartContainer");
    let s = c.wait_exited(&app, WAIT);
    let out = stdout(&d, "app");
    assert_eq!(s.exit_code, 1, "{out:?}");
    assert_eq!(
        out,
        [
            "11",
            "s3cret",
            "default",
            "1",
            "Read-only file system",
            "shared-written",
            "tmpfs",
            "in-memory",
            "1000",
            "3000",
            "3000 2000"
        ]
    );
    // The kubelet reads the message from the host file once it sees the exit.
    assert_eq!(
        std::fs::read_to_string(kpod.termination_log("app")).unwrap(),
        "bye from app\n"
    );
    // ContainerStatus reports the mounts as requested, and the identity.
    assert_eq!(s.mounts, kubelet_mounts(&kpod, "app"));
    let user = s.user.unwrap().linux.unwrap();
    assert_eq!(
        (user.uid, user.gid, user.supplemental_groups),
        (1000, 3000, vec![3000, 2000])
    );
    let info = c.status_info(&app).unwrap();
    let classes: Vec<String> = info["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["class"].to_string())
        .collect();
    assert_eq!(classes.len(), 7, "{info}");

    // A second container sees what the first left in the emptyDir, and follows the
    // configMap: every read through `..data` sees one whole version.
    let watch_script = r#"
        cat /shared/note
        cat /sub/x
        while true; do
            # One version's directory, both keys read from it; a line only when the
            # directory was not removed meanwhile (an old version goes after the swap).
            (cd /etc/config/..data 2>/dev/null || exit
             a=$(cat a 2>/dev/null); b=$(cat b 2>/dev/null)
             [ -f a ] && [ -f b ] && echo "v=$a$b")
            sleep 0.1
        done
    "#;
    let side = c
        .create(
            &pod,
            kubelet_container(&kpod, "sidecar", &image, watch_script),
            &pod_cfg,
        )
        .expect("CreateContainer");
    c.start(&side).expect("StartContainer");
    wait_for("the sidecar reads the configMap", WAIT, || {
        stdout(&d, "sidecar").iter().any(|l| l == "v=11")
    });
    assert_eq!(stdout(&d, "sidecar")[..2], ["from-app", "via-subpath"]);
    kpod.atomic(
        "kubernetes.io~configmap/config",
        "..2026_12_05_10_05_00.2",
        &[("a", "2"), ("b", "2")],
        0o644,
    );
    wait_for("the configMap update reaches the guest", UPDATE, || {
        stdout(&d, "sidecar").iter().any(|l| l == "v=22")
    });

    // vmletd is killed; an update made while it is down arrives once it is back.
    drop(c);
    d.signal_and_wait(libc::SIGKILL);
    kpod.atomic(
        "kubernetes.io~configmap/config",
        "..2026_12_05_10_10_00.3",
        &[("a", "3"), ("b", "3")],
        0o644,
    );
    d.restart();
    let c = d.client();
    wait_for(
        "the update made while vmletd was down",
        UPDATE + WAIT,
        || stdout(&d, "sidecar").iter().any(|l| l == "v=33"),
    );
    // And sync goes on after the restart.
    kpod.atomic(
        "kubernetes.io~configmap/config",
        "..2026_12_05_10_15_00.4",
        &[("a", "4"), ("b", "4")],
        0o644,
    );
    wait_for("an update after the restart", UPDATE, || {
        stdout(&d, "sidecar").iter().any(|l| l == "v=44")
    });
    let seen: Vec<String> = stdout(&d, "sidecar")
        .into_iter()
        .filter(|l| l.starts_with("v="))
        .collect();
    for l in &seen {
        assert!(
            ["v=11", "v=22", "v=33", "v=44"].contains(&l.as_str()),
            "a read saw a mixed or partial version: {l:?} in {seen:?}"
        );
    }

    // Bad mounts: each refused by name, nothing left in the guest.
    let volumes_before = d.in_guest(&pod, "ls /run/vmlet/volumes | sort");
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("s.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let big = kpod.volume("kubernetes.io~configmap/big");
    kpod.atomic(
        "kubernetes.io~configmap/big",
        "..2026_12_05_10_00_00.1",
        &[("blob", &"x".repeat(70_000))],
        0o644,
    );
    let cases: Vec<(v1::Mount, &str)> = vec![
        (
            mount(kpod.volume("kubernetes.io~secret/missing"), "/m", true),
            "does not exist",
        ),
        (
            mount(
                kpod.volume("kubernetes.io~configmap/config"),
                "/proc/x",
                true,
            ),
            "/proc",
        ),
        (mount(PathBuf::from("/dev/null"), "/n", true), "device node"),
        (mount(sock.clone(), "/s", false), "socket"),
        (mount(big, "/big", true), "max_copy_bytes"),
        (
            mount(
                kpod.volume("kubernetes.io~configmap/config"),
                "relative/path",
                true,
            ),
            "absolute",
        ),
    ];
    for (i, (bad, says)) in cases.into_iter().enumerate() {
        let name = format!("bad-{i}");
        let mut cfg = kubelet_container(&kpod, &name, &image, "true");
        cfg.mounts = kubelet_mounts(&kpod, "app");
        cfg.mounts.push(bad.clone());
        let e = c.create(&pod, cfg, &pod_cfg).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
        assert!(
            e.message().contains(&bad.container_path) && e.message().contains(says),
            "{bad:?}: {}",
            e.message()
        );
    }
    assert_eq!(
        d.in_guest(&pod, "ls /run/vmlet/volumes | sort"),
        volumes_before
    );
    assert_eq!(c.list(None).len(), 2);

    c.remove_pod(&pod).expect("RemovePodSandbox");
}

/// Mount points at or below `dir` on the host.
fn host_mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect()
}

fn virtiofsd_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmd)
                .contains("virtiofsd")
                .then_some(pid)
        })
        .collect()
}

#[test]
fn host_paths_are_shared_live_through_virtio_fs() {
    let (registry, image) = busybox_registry("busybox:hostpath");
    let mut d = Vmletd::start(&["--insecure-registry", registry.addr()]);
    let c = d.client();
    c.pull(&image).expect("PullImage");
    let host = tempfile::tempdir().unwrap();
    let (ro, rw) = (host.path().join("ro"), host.path().join("rw"));
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("config"), "from-the-host").unwrap();
    std::fs::write(host.path().join("single"), "one-file").unwrap();
    // The files a non-root container writes in a hostPath are its to make.
    std::fs::set_permissions(&rw, std::fs::Permissions::from_mode(0o777)).unwrap();
    // A host submount below the writable hostPath: a recursively read-only mount of
    // the same path must not let a container write in it.
    let sub = rw.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let _submount = Submount::tmpfs(&sub);
    std::fs::write(sub.join("inner"), "in-a-submount").unwrap();

    // Without the annotation the pod has no shared file system: refused, saying how.
    let plain_cfg = pod_config("no-share", &d.log_dir());
    let plain = c.run_pod(plain_cfg.clone()).expect("RunPodSandbox");
    let mut cfg = container_config("refused", &image, "true");
    cfg.mounts = vec![mount(rw.clone(), "/data", false)];
    let e = c.create(&plain, cfg, &plain_cfg).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("io.vmlet.shared-fs") && e.message().contains("/data"),
        "{}",
        e.message()
    );
    c.remove_pod(&plain).expect("RemovePodSandbox");

    let mut pod_cfg = pod_config("hostpath", &d.log_dir());
    pod_cfg
        .annotations
        .insert("io.vmlet.shared-fs".into(), "true".into());
    let pod = c
        .run_pod(pod_cfg.clone())
        .expect("RunPodSandbox with a shared file system");
    assert_eq!(virtiofsd_pids().len(), 1, "one virtiofsd for the pod");
    let script = r#"
        cat /data-ro/config; echo
        cat /single; echo
        touch /data-ro/x 2>&1 | grep -o 'Read-only file system'
        cat /data-rro/sub/inner; echo
        touch /data-rro/sub/x 2>&1 | grep -o 'Read-only file system'
        echo from-the-guest > /data/note
        i=0; while [ ! -f /data/reply ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
        cat /data/reply; echo
        while true; do sleep 1; done
    "#;
    let mut cfg = container_config("shared", &image, script);
    cfg.mounts = vec![
        mount(ro.clone(), "/data-ro", true),
        mount(rw.clone(), "/data", false),
        mount(host.path().join("single"), "/single", true),
        v1::Mount {
            recursive_read_only: true,
            ..mount(rw.clone(), "/data-rro", true)
        },
    ];
    let id = c
        .create(&pod, cfg.clone(), &pod_cfg)
        .expect("CreateContainer");
    c.start(&id).expect("StartContainer");
    wait_for("the guest's write reaches the host", WAIT, || {
        std::fs::read_to_string(rw.join("note")).is_ok_and(|s| s == "from-the-guest\n")
    });
    std::fs::write(rw.join("reply"), "from-the-host-again").unwrap();
    wait_for("the host's write reaches the guest", WAIT, || {
        stdout(&d, "shared").len() >= 6
    });
    assert_eq!(
        stdout(&d, "shared"),
        [
            "from-the-host",
            "one-file",
            "Read-only file system",
            "in-a-submount",
            "Read-only file system",
            "from-the-host-again"
        ]
    );
    assert!(!sub.join("x").exists());
    let info = c.status_info(&id).unwrap();
    assert!(
        info["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["class"] == "shared"),
        "{info}"
    );

    // vmletd is killed and comes back: the share still works.
    drop(c);
    d.signal_and_wait(libc::SIGKILL);
    d.restart();
    let c = d.client();
    std::fs::write(rw.join("later"), "after-restart").unwrap();
    let r = c.exec(&id, &["cat", "/data/later"], 60).expect("ExecSync");
    assert_eq!(String::from_utf8_lossy(&r.stdout), "after-restart");

    // Removal ends virtiofsd and unbinds everything; the host's data stays, and so
    // does the host's own mount below a shared path.
    c.remove_pod(&pod).expect("RemovePodSandbox");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(&*sub.to_string_lossy())),
        "the host's submount {} went with the pod",
        sub.display()
    );
    assert!(
        virtiofsd_pids().is_empty(),
        "virtiofsd left: {:?}",
        virtiofsd_pids()
    );
    assert!(
        host_mounts_under(&d.state_dir()).is_empty(),
        "{:?}",
        host_mounts_under(&d.state_dir())
    );
    assert_eq!(
        std::fs::read_to_string(ro.join("config")).unwrap(),
        "from-the-host"
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("note")).unwrap(),
        "from-the-guest\n"
    );
}

#[test]
fn image_volumes_mount_read_only_from_image_slots() {
    use vmlet_test_support::{Compression, ImageBuilder, LayerBuilder};
    let (registry, image) = busybox_registry("busybox:imagevol");
    let d = Vmletd::start(&["--insecure-registry", registry.addr()]);
    let c = d.client();
    c.pull(&image).expect("PullImage");
    // An image that only carries data (no program), as image volumes often are.
    let layer = LayerBuilder::new()
        .dir("models", 0o755)
        .file("models/weights", b"w1", 0o644)
        .finish();
    let data = ImageBuilder::new()
        .layer(layer, Compression::Gzip)
        .config(serde_json::json!({}))
        .build()
        .expect("build image");
    let reference = registry.push(&data, "data:1").expect("push");
    c.pull(&reference).expect("PullImage");

    let pod_cfg = pod_config("image-volume", &d.log_dir());
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");
    let volume = v1::Mount {
        container_path: "/models".into(),
        image: Some(v1::ImageSpec {
            image: reference.clone(),
            ..Default::default()
        }),
        readonly: true,
        ..Default::default()
    };
    let script =
        "cat /models/models/weights; echo; touch /models/x 2>&1 | grep -o 'Read-only file system'";
    let mut ids = Vec::new();
    for name in ["reader-a", "reader-b"] {
        let mut cfg = container_config(name, &image, script);
        cfg.mounts = vec![volume.clone()];
        let id = c
            .create(&pod, cfg, &pod_cfg)
            .expect("CreateContainer with an image volume");
        c.start(&id).expect("StartContainer");
        assert_eq!(c.wait_exited(&id, WAIT).exit_code, 0);
        assert_eq!(stdout(&d, name), ["w1", "Read-only file system"]);
        let s = c.status(&id).unwrap();
        assert_eq!(s.mounts[0].image.as_ref().unwrap().image, reference);
        ids.push(id);
    }
    // Both containers share one guest volume; it goes with the last of them.
    let listed = d.in_guest(&pod, "ls /run/vmlet/volumes");
    assert_eq!(
        listed.lines().filter(|l| l.starts_with("image-")).count(),
        1,
        "{listed}"
    );
    for id in &ids {
        c.remove(id).expect("RemoveContainer");
    }
    let listed = d.in_guest(&pod, "ls /run/vmlet/volumes");
    assert!(!listed.contains("image-"), "{listed}");
    // A writable image volume is refused by name.
    let mut cfg = container_config("writer", &image, "true");
    cfg.mounts = vec![v1::Mount {
        readonly: false,
        ..volume.clone()
    }];
    let e = c.create(&pod, cfg, &pod_cfg).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("/models") && e.message().contains("read-only"),
        "{}",
        e.message()
    );
    c.remove_pod(&pod).expect("RemovePodSandbox");
}
