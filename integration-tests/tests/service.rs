//! vmlet as a node installs and runs it: `scripts/install.sh` into a scratch root, and
//! vmletd as a systemd service under a real systemd (PID 1 of its own PID and mount
//! namespaces, so nothing of the machine's is touched) with the installed unit: READY
//! after start, pods that outlive `systemctl restart` and `stop`, then uninstall.

// Test-only crate: a failed setup step panics with its message, which is the test's
// failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmlet_integration_tests::cri::{
    busybox_registry, container_config, pod_config, v1, vmletd_binary, CriClient,
};
use vmlet_integration_tests::{initramfs, kernel, require_kvm, tail, watchdog};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Runs `scripts/install.sh` with `args`; returns its stderr (what it says it did).
fn install(args: &[&str]) -> String {
    let out = Command::new(format!("{REPO}/scripts/install.sh"))
        .args(args)
        .output()
        .expect("run install.sh");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "install.sh {args:?}: {err}");
    err
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// systemd as PID 1 of new PID and mount namespaces, with a private /run holding the
/// units: the installed vmletd.service and a drop-in that starts the installed vmletd
/// from the scratch root.
struct Systemd {
    unshare: Child,
    pid: u32,
    /// vmletd's stdout and stderr.
    log: PathBuf,
}

impl Systemd {
    fn boot(units: &Path, prefix: &Path, log: &Path) -> Systemd {
        let dropin = units.join("vmletd.service.d");
        std::fs::create_dir_all(&dropin).unwrap();
        std::fs::write(
            units.join("vmlet-test.target"),
            "[Unit]\nDescription=test\n",
        )
        .unwrap();
        std::fs::copy(
            prefix.join("etc/systemd/system/vmletd.service"),
            units.join("vmletd.service"),
        )
        .unwrap();
        let bin = prefix.join("usr/local/bin/vmletd");
        let config = prefix.join("etc/vmlet/config.toml");
        // Besides the paths: no sysinit.target, whose units (tmp.mount, tmpfiles,
        // udev) would set up the machine again as if this systemd were its init.
        std::os::unix::fs::symlink("/dev/null", units.join("tmp.mount")).unwrap();
        std::fs::write(
            dropin.join("paths.conf"),
            format!(
                "[Unit]\nDefaultDependencies=no\n\
                 [Service]\nExecStart=\nExecStart={} --config {}\n\
                 StandardOutput=append:{log}\nStandardError=append:{log}\n",
                bin.display(),
                config.display(),
                log = log.display()
            ),
        )
        .unwrap();
        let script = format!(
            "mount -t proc proc /proc && \
             mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p /run/systemd && \
             cp -r {} /run/systemd/system && export container=vmlet-test && \
             exec /lib/systemd/systemd --system --unit=vmlet-test.target \
             --log-target=console",
            units.display()
        );
        let out = std::fs::File::create(units.with_file_name("systemd.log")).unwrap();
        let unshare = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start systemd in its own namespaces");
        let start = Instant::now();
        let pid = loop {
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.id()))
                    .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next() {
                break pid.parse().unwrap();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "systemd did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let sd = Systemd {
            unshare,
            pid,
            log: log.to_owned(),
        };
        let start = Instant::now();
        loop {
            let state = sd.try_systemctl(&["is-system-running"]).0;
            if state.trim() == "running" {
                break sd;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "systemd is not running: {state}; its log:\n{}",
                tail(&units.with_file_name("systemd.log"), 60)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `systemctl ARGS` in systemd's namespaces: (stdout, success).
    fn try_systemctl(&self, args: &[&str]) -> (String, bool) {
        watchdog::step(format!("systemctl {}", args.join(" ")));
        let out = Command::new("timeout")
            .args([
                "300",
                "nsenter",
                "-t",
                &self.pid.to_string(),
                "-m",
                "-p",
                "systemctl",
            ])
            .args(args)
            .output()
            .expect("run systemctl");
        (
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
            out.status.success(),
        )
    }

    fn systemctl(&self, args: &[&str]) -> String {
        let (out, ok) = self.try_systemctl(args);
        if !ok {
            let status = self.try_systemctl(&["status", "--no-pager", "-l", "vmletd.service"]);
            panic!(
                "systemctl {args:?}: {out}\n{}\nvmletd's output:\n{}",
                status.0,
                tail(&self.log, 40)
            );
        }
        out
    }

    /// `systemctl show -p NAME --value` of vmletd.service.
    fn show(&self, property: &str) -> String {
        self.systemctl(&["show", "-p", property, "--value", "vmletd.service"])
            .trim()
            .to_owned()
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        // Ends the PID namespace: systemd and everything it started, pods included.
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

impl Systemd {
    /// Whether process `pid` of systemd's PID namespace (as vmletd records pids) runs:
    /// seen through that namespace's own /proc.
    fn alive(&self, pid: u32) -> bool {
        let proc = format!("/proc/{}/root/proc/{pid}", self.pid);
        Path::new(&proc).exists()
            && !std::fs::read_to_string(format!("{proc}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    }
}

fn vmm_pid(state: &Path, pod: &str) -> u32 {
    let text = std::fs::read_to_string(state.join("pods").join(pod).join("pod.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["vmm_pid"].as_u64().expect("vmm_pid") as u32
}

#[test]
fn installed_vmletd_runs_under_systemd_and_its_pods_outlive_restarts() {
    require_kvm();
    let root = tempfile::Builder::new()
        .prefix("svc")
        .tempdir_in("/tmp")
        .unwrap();
    let prefix = root.path().join("root");
    let bin_dir = vmletd_binary().parent().unwrap().to_owned();
    let (kernel, initramfs) = (kernel(), initramfs());
    let args = [
        "--prefix",
        prefix.to_str().unwrap(),
        "--bin-dir",
        bin_dir.to_str().unwrap(),
        "--kernel",
        kernel.to_str().unwrap(),
        "--initramfs",
        initramfs.to_str().unwrap(),
    ];
    install(&args);
    let at = |p: &str| prefix.join(p);
    for (file, want) in [
        ("usr/local/bin/vmletd", 0o755),
        ("usr/local/bin/vmlet-vmm", 0o755),
        ("usr/lib/vmlet/vmlinux", 0o644),
        ("usr/lib/vmlet/initramfs.cpio", 0o644),
        ("etc/systemd/system/vmletd.service", 0o644),
        ("etc/cni/net.d/10-vmlet.conflist", 0o644),
        ("etc/vmlet/config.toml", 0o600),
    ] {
        assert_eq!(mode(&at(file)), want, "{file}");
    }
    let version = Command::new(at("usr/local/bin/vmletd"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("(git "),
        "{version:?}"
    );

    // The node's own configuration; a second install keeps it. Without host cgroups
    // for the pods, their VMMs stay in vmletd.service's cgroup: only the unit's
    // KillMode keeps them alive through a restart.
    let (registry, image) = busybox_registry("busybox:svc");
    let state = root.path().join("state");
    let socket = root.path().join("cri.sock");
    let config = format!(
        "socket = \"{}\"\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\nkernel = \"{}\"\n\
         initramfs = \"{}\"\nvmm = \"{}\"\n[network]\nmode = \"none\"\n\
         [vm]\nwarm_pool = 0\nboot_timeout_secs = 300\nmax_concurrent_boots = 1\n\
         [cgroups]\nenabled = false\n\
         [registries.hosts.\"{}\"]\nplain_http = true\n",
        socket.display(),
        state.display(),
        root.path().join("run").display(),
        at("usr/lib/vmlet/vmlinux").display(),
        at("usr/lib/vmlet/initramfs.cpio").display(),
        at("usr/local/bin/vmlet-vmm").display(),
        registry.addr(),
    );
    std::fs::write(at("etc/vmlet/config.toml"), &config).unwrap();
    let said = install(&args);
    assert!(said.contains("kept"), "{said}");
    assert_eq!(
        std::fs::read_to_string(at("etc/vmlet/config.toml")).unwrap(),
        config
    );

    let log = root.path().join("vmletd.log");
    let _watched = watchdog::watch("vmletd under systemd", vec![log.clone()]);
    let sd = Systemd::boot(&root.path().join("units"), &prefix, &log);
    // Type=notify: start returns once vmletd said READY=1.
    sd.systemctl(&["start", "vmletd.service"]);
    assert_eq!(
        (sd.show("ActiveState"), sd.show("SubState"), sd.show("Type")),
        ("active".into(), "running".into(), "notify".into()),
        "vmletd.log:\n{}",
        tail(&log, 40)
    );
    assert_eq!(sd.show("KillMode"), "process");
    assert_eq!(sd.show("StatusText"), "serving the CRI");
    let first = sd.show("MainPID");

    let c = CriClient::connect(&socket).expect("connect to vmletd's socket");
    c.pull(&image).expect("PullImage");
    let log_dir = root.path().join("logs");
    let pod_cfg = pod_config("svc", &log_dir);
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");
    let ctr = c
        .create(
            &pod,
            container_config("main", &image, "exec sleep 1000"),
            &pod_cfg,
        )
        .expect("CreateContainer");
    c.start(&ctr).expect("StartContainer");
    let vmm = vmm_pid(&state, &pod);
    assert!(
        sd.alive(vmm) && !sd.alive(1 << 23),
        "pids are read in systemd's namespace"
    );
    drop(c);

    // A restart signals vmletd alone: the VMM runs on, the new vmletd adopts it and is
    // READY only then.
    sd.systemctl(&["restart", "vmletd.service"]);
    let second = sd.show("MainPID");
    assert_ne!(first, second);
    assert!(sd.alive(vmm), "the pod's VMM died with the restart");
    let c = CriClient::connect(&socket).expect("connect after the restart");
    let status = c.pod_status(&pod).unwrap().status.unwrap();
    assert_eq!(
        status.state,
        v1::PodSandboxState::SandboxReady as i32,
        "vmletd's output:\n{}\nthe VMM's log:\n{}\nconsole:\n{}\n{}",
        tail(&log, 40),
        tail(&state.join("pods").join(&pod).join("vmm.log"), 20),
        tail(&state.join("pods").join(&pod).join("console.log"), 20),
        sd.try_systemctl(&["status", "--no-pager", "-l", "vmletd.service"])
            .0,
    );
    assert_eq!(
        c.status(&ctr).unwrap().state,
        v1::ContainerState::ContainerRunning as i32
    );
    let r = c.exec(&ctr, &["echo", "still here"], 60).expect("ExecSync");
    assert_eq!(String::from_utf8_lossy(&r.stdout), "still here\n");
    assert_eq!(vmm_pid(&state, &pod), vmm);
    drop(c);

    // A stop too; the next start finds the pod again.
    sd.systemctl(&["stop", "vmletd.service"]);
    assert_eq!(sd.show("ActiveState"), "inactive");
    assert!(sd.alive(vmm), "the pod's VMM died with the stop");
    sd.systemctl(&["start", "vmletd.service"]);
    let c = CriClient::connect(&socket).expect("connect after the start");
    assert_eq!(
        c.status(&ctr).unwrap().state,
        v1::ContainerState::ContainerRunning as i32
    );
    c.stop_pod(&pod).expect("StopPodSandbox");
    c.remove_pod(&pod).expect("RemovePodSandbox");
    let start = Instant::now();
    while sd.alive(vmm) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the VMM outlived its pod"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(c);
    sd.systemctl(&["stop", "vmletd.service"]);
    drop(sd);

    // Uninstall removes what install wrote, but the changed configuration.
    let said = install(&["--prefix", prefix.to_str().unwrap(), "--uninstall"]);
    assert!(said.contains("etc/vmlet/config.toml: changed"), "{said}");
    let left: Vec<PathBuf> = walk(&prefix).into_iter().filter(|p| p.is_file()).collect();
    assert_eq!(left, [at("etc/vmlet/config.toml")]);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
