//! vmletd end to end: the CRI RuntimeService and ImageService over the daemon's
//! socket, pods as real VMs, images pulled from a registry on loopback.

// Test-only crate: a failed setup step panics with its message, which is the test's
// failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tonic::Code;
use vmlet_integration_tests::cri::{
    busybox_registry, container_config, parse_log, pod_config, sandbox_security, v1, vmletd_binary,
    CriClient, LogEntry, Vmletd,
};
use vmlet_integration_tests::kubelet::{kubelet_container, kubelet_pod_config, KubeletPod};
use vmlet_test_support::{Compression, ImageBuilder, LayerBuilder, TestRegistry};

const WAIT: Duration = Duration::from_secs(120);
/// How soon after a container's process ended in the guest ContainerStatus must say
/// so: "within a few seconds", generous for the emulated TCG machine.
const PROMPT: Duration = Duration::from_secs(10);

/// A registry with busybox pushed, and a daemon that may pull from it.
struct Env {
    registry: TestRegistry,
    image: String,
    daemon: Vmletd,
}

fn env() -> Env {
    let (registry, image) = busybox_registry("busybox:e2e");
    let daemon = Vmletd::start(&["--insecure-registry", registry.addr()]);
    Env {
        registry,
        image,
        daemon,
    }
}

/// A loopback address with a port free now, for a listener to come.
fn free_local_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The body of `GET /metrics` at `addr`.
fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: vmlet\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The value of the sample `series` (name and labels as printed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
}

fn log_of(d: &Vmletd, name: &str) -> Vec<LogEntry> {
    let text = std::fs::read_to_string(d.log_dir().join(name)).unwrap_or_default();
    parse_log(&text)
}

fn lines(entries: &[LogEntry], stream: &str) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.stream == stream)
        .map(|e| e.line.clone())
        .collect()
}

/// Waits until the log `name` has a stdout line `line`.
fn wait_for_line(d: &Vmletd, name: &str, line: &str) {
    let start = std::time::Instant::now();
    while !lines(&log_of(d, name), "stdout").iter().any(|l| l == line) {
        assert!(start.elapsed() < WAIT, "no line {line:?} in {name}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run_container(
    c: &CriClient,
    pod: &str,
    pod_cfg: &v1::PodSandboxConfig,
    cfg: v1::ContainerConfig,
) -> String {
    let id = c.create(pod, cfg, pod_cfg).expect("CreateContainer");
    c.start(&id).expect("StartContainer");
    id
}

fn assert_clean(d: &Vmletd) {
    assert!(d.vmm_pids().is_empty(), "VMMs left: {:?}", d.vmm_pids());
    for dir in [d.state_dir().join("pods"), d.run_dir().join("pods")] {
        let left: Vec<_> = std::fs::read_dir(&dir)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
    }
}

#[test]
fn pod_with_two_containers_full_lifecycle() {
    let env = env();
    let d = &env.daemon;
    let c = d.client();
    let mut rt = c.runtime.clone();
    let v = c
        .block_on(rt.version(v1::VersionRequest::default()))
        .unwrap()
        .into_inner();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("vmlet", "v1")
    );
    let status = c
        .block_on(rt.status(v1::StatusRequest { verbose: false }))
        .unwrap()
        .into_inner();
    let conds = status.status.unwrap().conditions;
    assert!(conds.iter().any(|c| c.r#type == "RuntimeReady" && c.status));

    let image_id = c.pull(&env.image).expect("PullImage");
    assert!(image_id.starts_with("sha256:"));

    let pod_cfg = pod_config("lifecycle", &d.log_dir());
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");
    assert_eq!(pod.len(), 64);
    let ps = c.pod_status(&pod).unwrap();
    assert_eq!(
        ps.status.as_ref().unwrap().state,
        v1::PodSandboxState::SandboxReady as i32
    );
    assert!(ps.info["info"].contains("vmmPid"));

    // Container events, from a second client.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let socket = d.socket.clone();
    let events = std::thread::spawn(move || {
        CriClient::connect(&socket)
            .unwrap()
            .events(3, WAIT, ready_tx)
    });
    ready_rx.recv().expect("subscribed to events");

    // One container that prints to both streams and exits 3.
    let short = run_container(
        &c,
        &pod,
        &pod_cfg,
        container_config(
            "short",
            &env.image,
            "echo hello; echo oops >&2; echo $HOSTNAME; exit 3",
        ),
    );
    let s = c.wait_exited(&short, WAIT);
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"));
    c.wait_log_complete(&short, WAIT);
    assert!(s.started_at > 0 && s.finished_at >= s.started_at);
    assert_eq!(s.image_ref, image_id);
    assert_eq!(
        s.log_path,
        d.log_dir().join("short.log").display().to_string()
    );
    let log = log_of(d, "short.log");
    assert_eq!(lines(&log, "stdout"), ["hello", "lifecycle"]);
    assert_eq!(lines(&log, "stderr"), ["oops"]);
    let events = events.join().unwrap();
    let kinds: Vec<(String, i32)> = events
        .iter()
        .map(|e| (e.container_id.clone(), e.container_event_type))
        .collect();
    assert_eq!(
        kinds,
        [
            (
                short.clone(),
                v1::ContainerEventType::ContainerCreatedEvent as i32
            ),
            (
                short.clone(),
                v1::ContainerEventType::ContainerStartedEvent as i32
            ),
            (
                short.clone(),
                v1::ContainerEventType::ContainerStoppedEvent as i32
            ),
        ]
    );
    assert!(events[2].pod_sandbox_status.is_some());
    // Starting it again makes no sense.
    assert_eq!(
        c.start(&short).unwrap_err().code(),
        Code::FailedPrecondition
    );

    // A second container of the same image (same slot) that handles SIGTERM.
    let long = run_container(
        &c,
        &pod,
        &pod_cfg,
        container_config(
            "long",
            &env.image,
            "trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 0.2; done",
        ),
    );
    wait_for_line(d, "long.log", "ready");
    assert_eq!(
        c.status(&long).unwrap().state,
        v1::ContainerState::ContainerRunning as i32
    );
    let ps = c.pod_status(&pod).unwrap();
    assert_eq!(ps.containers_statuses.len(), 2);
    assert!(
        ps.info["info"].contains("\"users\":2"),
        "{}",
        ps.info["info"]
    );

    // ExecSync: output, exit codes, timeout.
    let r = c
        .exec(
            &long,
            &["sh", "-c", "echo exec-out; echo exec-err >&2; exit 4"],
            30,
        )
        .expect("ExecSync");
    assert_eq!(String::from_utf8_lossy(&r.stdout), "exec-out\n");
    assert_eq!(String::from_utf8_lossy(&r.stderr), "exec-err\n");
    assert_eq!(r.exit_code, 4);
    let e = c.exec(&long, &["sleep", "60"], 1).unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
    assert_eq!(
        c.exec(&short, &["true"], 5).unwrap_err().code(),
        Code::FailedPrecondition
    );

    // Filters.
    let running = c.list(Some(v1::ContainerFilter {
        state: Some(v1::ContainerStateValue {
            state: v1::ContainerState::ContainerRunning as i32,
        }),
        ..Default::default()
    }));
    assert_eq!(
        running.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [long.as_str()]
    );
    let in_pod = c.list(Some(v1::ContainerFilter {
        pod_sandbox_id: pod.clone(),
        ..Default::default()
    }));
    assert_eq!(in_pod.len(), 2);
    let by_label = c.list_pods(Some(v1::PodSandboxFilter {
        label_selector: [("test".to_string(), "lifecycle".to_string())].into(),
        ..Default::default()
    }));
    assert_eq!(by_label.len(), 1);
    let none = c.list_pods(Some(v1::PodSandboxFilter {
        label_selector: [("test".to_string(), "other".to_string())].into(),
        ..Default::default()
    }));
    assert!(none.is_empty());

    // ReopenContainerLog: the old file is renamed away, new output goes to a new file.
    std::fs::rename(d.log_dir().join("long.log"), d.log_dir().join("long.log.1")).unwrap();
    c.reopen_log(&long).expect("ReopenContainerLog");
    assert!(d.log_dir().join("long.log").exists());

    // StopContainer: SIGTERM is handled within the timeout.
    c.stop(&long, 20).expect("StopContainer");
    let s = c.status(&long).unwrap();
    assert_eq!(s.state, v1::ContainerState::ContainerExited as i32);
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    wait_for_line(d, "long.log", "got-term");
    // Stopping again is fine.
    c.stop(&long, 20).expect("StopContainer again");

    // A container that ignores SIGTERM is killed after the timeout.
    let stubborn = run_container(
        &c,
        &pod,
        &pod_cfg,
        container_config(
            "stubborn",
            &env.image,
            "trap '' TERM; echo started; while true; do sleep 0.2; done",
        ),
    );
    wait_for_line(d, "stubborn.log", "started");
    c.stop(&stubborn, 1).expect("StopContainer");
    assert_eq!(c.status(&stubborn).unwrap().exit_code, 137);

    for id in [&short, &long, &stubborn] {
        c.remove(id).expect("RemoveContainer");
        assert_eq!(c.status(id).unwrap_err().code(), Code::NotFound);
    }
    c.remove(&short).expect("RemoveContainer is idempotent");
    c.stop_pod(&pod).expect("StopPodSandbox");
    assert_eq!(
        c.pod_status(&pod).unwrap().status.unwrap().state,
        v1::PodSandboxState::SandboxNotready as i32
    );
    assert!(d.vmm_pids().is_empty(), "the VMM survived StopPodSandbox");
    c.stop_pod(&pod).expect("StopPodSandbox is idempotent");
    c.remove_pod(&pod).expect("RemovePodSandbox");
    c.remove_pod(&pod).expect("RemovePodSandbox is idempotent");
    assert_eq!(c.pod_status(&pod).unwrap_err().code(), Code::NotFound);
    assert_clean(d);
    // Logs stay (kubelet owns them).
    assert!(d.log_dir().join("short.log").exists());
}

/// busybox with an image config that sets everything the merge looks at.
fn configured_image() -> vmlet_test_support::OciImage {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static");
    let mut layer = LayerBuilder::new()
        .dir("bin", 0o755)
        .file("bin/busybox", &busybox, 0o755)
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .dir("tmp", 0o1777);
    for applet in ["sh", "echo", "sleep", "cat", "id", "pwd", "env"] {
        layer = layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    ImageBuilder::new()
        .layer(layer.finish(), Compression::Gzip)
        .config(serde_json::json!({
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo from-cmd $A"],
            "Env": ["PATH=/bin", "A=image", "B=image"],
            "WorkingDir": "/data",
            "User": "1000:1000",
            "StopSignal": "SIGUSR1",
        }))
        .build()
        .expect("build image")
}

#[test]
fn image_config_merges_with_the_request() {
    let env = env();
    let d = &env.daemon;
    let c = d.client();
    let reference = env
        .registry
        .push(&configured_image(), "configured:1")
        .expect("push");
    c.pull(&reference).expect("PullImage");
    c.pull(&env.image).expect("PullImage");
    // As crictl and other clients send it: a long name (100 characters) and no
    // hostname; the pod's hostname is the name cut to 63 characters.
    let name = format!("merge-{}", "x".repeat(94));
    let mut pod_cfg = pod_config(&name, &d.log_dir());
    pod_cfg.hostname.clear();
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");

    let plain = |name: &str| v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(v1::ImageSpec {
            image: reference.clone(),
            ..Default::default()
        }),
        log_path: format!("{name}.log"),
        ..Default::default()
    };
    // The image's Entrypoint + Cmd, Env, WorkingDir and User.
    let a = run_container(&c, &pod, &pod_cfg, plain("defaults"));
    assert_eq!(c.wait_exited(&a, WAIT).exit_code, 0);
    assert_eq!(
        lines(&log_of(d, "defaults.log"), "stdout"),
        ["from-cmd image"]
    );

    // args replace Cmd; envs override and add; working_dir and run_as_user replace.
    let mut cfg = plain("override");
    cfg.args = vec!["echo $A $B $C; pwd; id -u; id -g; hostname; echo $HOSTNAME".into()];
    cfg.envs = vec![
        v1::KeyValue {
            key: "A".into(),
            value: "req".into(),
        },
        v1::KeyValue {
            key: "C".into(),
            value: "new".into(),
        },
    ];
    cfg.working_dir = "/work".into();
    cfg.linux = Some(v1::LinuxContainerConfig {
        security_context: Some(v1::LinuxContainerSecurityContext {
            run_as_user: Some(v1::Int64Value { value: 2000 }),
            run_as_group: Some(v1::Int64Value { value: 3000 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let b = run_container(&c, &pod, &pod_cfg, cfg);
    let s = c.wait_exited(&b, WAIT);
    let out = lines(&log_of(d, "override.log"), "stdout");
    assert_eq!(s.exit_code, 0, "{out:?}");
    assert_eq!(
        out,
        [
            "req image new",
            "/work",
            "2000",
            "3000",
            &name[..63],
            &name[..63]
        ]
    );

    // The image's user and its working directory.
    let mut cfg = plain("user");
    cfg.args = vec!["id -u; id -g; pwd".into()];
    let u = run_container(&c, &pod, &pod_cfg, cfg);
    c.wait_exited(&u, WAIT);
    assert_eq!(
        lines(&log_of(d, "user.log"), "stdout"),
        ["1000", "1000", "/data"]
    );

    // The image's StopSignal (SIGUSR1) is what StopContainer sends first.
    let mut cfg = plain("stopsignal");
    cfg.args = vec![
        "trap 'echo got-usr1; exit 0' USR1; echo ready; while true; do sleep 0.2; done".into(),
    ];
    let st = run_container(&c, &pod, &pod_cfg, cfg);
    wait_for_line(d, "stopsignal.log", "ready");
    c.stop(&st, 20).unwrap();
    assert_eq!(c.status(&st).unwrap().exit_code, 0);
    wait_for_line(d, "stopsignal.log", "got-usr1");

    // A second image goes to a second slot, alongside the first.
    let other = run_container(
        &c,
        &pod,
        &pod_cfg,
        container_config("other-image", &env.image, "echo busybox-here"),
    );
    c.wait_exited(&other, WAIT);
    assert_eq!(
        lines(&log_of(d, "other-image.log"), "stdout"),
        ["busybox-here"]
    );

    c.remove_pod(&pod).expect("RemovePodSandbox");
    assert_clean(d);
}

/// A daemon with two RuntimeClass handlers: "big" (its own size and kernel
/// arguments) and "missing" (a kernel that does not exist).
const HANDLERS: &str = "[network]\nmode = \"none\"\n\
    [runtimes.big]\nvcpus = 2\nmem_mib = 512\nkernel_args = \"quiet vmlet.test=big\"\n\
    [runtimes.missing]\nkernel = \"/nonexistent/vmlinux\"\n";

#[test]
fn bad_requests_get_the_right_codes_and_leave_nothing() {
    let (registry, image) = busybox_registry("busybox:e2e");
    let env = Env {
        daemon: Vmletd::start_with(&["--insecure-registry", registry.addr()], HANDLERS),
        registry,
        image,
    };
    let d = &env.daemon;
    let c = d.client();
    c.pull(&env.image).expect("PullImage");

    let code = |r: Result<String, tonic::Status>| r.unwrap_err().code();
    // Missing metadata.
    let mut no_meta = pod_config("x", &d.log_dir());
    no_meta.metadata = None;
    assert_eq!(code(c.run_pod(no_meta)), Code::InvalidArgument);
    let mut no_uid = pod_config("x", &d.log_dir());
    no_uid.metadata.as_mut().unwrap().uid.clear();
    assert_eq!(code(c.run_pod(no_uid)), Code::InvalidArgument);
    // Invalid resources: negative, and too small for a VM.
    let sized = |mem: i64| {
        let mut p = pod_config("sized", &d.log_dir());
        p.linux = Some(v1::LinuxPodSandboxConfig {
            resources: Some(v1::LinuxContainerResources {
                memory_limit_in_bytes: mem,
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    };
    assert_eq!(code(c.run_pod(sized(-1))), Code::InvalidArgument);
    let e = c.run_pod(sized(1 << 20)).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("MiB"), "{e}");
    // RuntimeClass handlers: one not configured, a name no RuntimeClass can have, and
    // one whose kernel is missing.
    let e = c
        .run_pod_with_handler(pod_config("h", &d.log_dir()), "gvisor")
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(
        e.message().contains("no runtime handler \"gvisor\"")
            && e.message().contains("\"big\", \"missing\""),
        "{e}"
    );
    let e = c
        .run_pod_with_handler(pod_config("h", &d.log_dir()), "Big_One")
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let e = c
        .run_pod_with_handler(pod_config("h", &d.log_dir()), "missing")
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("/nonexistent/vmlinux"), "{e}");
    let names: Vec<String> = c
        .runtime_status()
        .runtime_handlers
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert_eq!(names, ["", "big", "missing"]);
    // Unknown IDs.
    let unknown = "0".repeat(64);
    assert_eq!(c.pod_status(&unknown).unwrap_err().code(), Code::NotFound);
    // Stop and Remove are idempotent: an unknown ID is stopped and removed.
    c.stop_pod(&unknown)
        .expect("stopping an unknown pod succeeds");
    c.remove_pod(&unknown)
        .expect("removing an unknown pod succeeds");
    assert_eq!(c.start(&unknown).unwrap_err().code(), Code::NotFound);
    assert_eq!(c.status(&unknown).unwrap_err().code(), Code::NotFound);
    c.stop(&unknown, 1)
        .expect("stopping an unknown container succeeds");
    c.remove(&unknown)
        .expect("removing an unknown container succeeds");
    assert_eq!(
        c.exec(&unknown, &["true"], 1).unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(c.start("").unwrap_err().code(), Code::InvalidArgument);
    let pod_cfg = pod_config("bad", &d.log_dir());
    assert_eq!(
        code(c.create(
            &unknown,
            container_config("c", &env.image, "true"),
            &pod_cfg
        )),
        Code::NotFound
    );
    assert!(c.list_pods(None).is_empty());

    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");
    // Duplicate pod name.
    assert_eq!(code(c.run_pod(pod_cfg.clone())), Code::AlreadyExists);
    // Unknown image, missing image, duplicate container name.
    let e = c
        .create(
            &pod,
            container_config("c", "no/such:image", "true"),
            &pod_cfg,
        )
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let mut no_image = container_config("c", &env.image, "true");
    no_image.image = None;
    assert_eq!(
        code(c.create(&pod, no_image, &pod_cfg)),
        Code::InvalidArgument
    );
    let mut no_meta = container_config("c", &env.image, "true");
    no_meta.metadata = None;
    assert_eq!(
        code(c.create(&pod, no_meta, &pod_cfg)),
        Code::InvalidArgument
    );
    let id = c
        .create(&pod, container_config("c", &env.image, "true"), &pod_cfg)
        .expect("CreateContainer");
    assert_eq!(
        code(c.create(&pod, container_config("c", &env.image, "true"), &pod_cfg)),
        Code::AlreadyExists
    );
    // A program that does not exist: StartContainer fails, the container has exited.
    let mut missing = container_config("missing", &env.image, "");
    missing.command = vec!["/no/such/program".into()];
    let m = c.create(&pod, missing, &pod_cfg).expect("CreateContainer");
    let err = c.start(&m).unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("/no/such/program"), "{err}");
    assert_eq!(
        c.status(&m).unwrap().state,
        v1::ContainerState::ContainerExited as i32
    );
    // Nothing in a stopped pod.
    c.stop_pod(&pod).expect("StopPodSandbox");
    assert_eq!(c.start(&id).unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(
        code(c.create(&pod, container_config("late", &env.image, "true"), &pod_cfg)),
        Code::FailedPrecondition
    );
    c.remove_pod(&pod).expect("RemovePodSandbox");
    assert!(c.list(None).is_empty());
    assert_clean(d);
    // The name is free again. A pod on handler "big", shaped as a kubelet sends it
    // (a long name, no hostname, the restricted profile's sandbox context), gets a VM
    // with the handler's size and kernel arguments.
    let again = c.run_pod(pod_cfg).expect("RunPodSandbox after removal");
    c.remove_pod(&again).expect("RemovePodSandbox");
    let mut big_cfg = pod_config(&format!("big-{}", "h".repeat(66)), &d.log_dir());
    big_cfg.hostname.clear();
    big_cfg.linux = sandbox_security(v1::LinuxSandboxSecurityContext {
        run_as_user: Some(v1::Int64Value { value: 1000 }),
        run_as_group: Some(v1::Int64Value { value: 1000 }),
        supplemental_groups: vec![1000],
        seccomp: Some(v1::SecurityProfile {
            profile_type: v1::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        }),
        ..Default::default()
    });
    let pod = c
        .run_pod_with_handler(big_cfg, "big")
        .expect("RunPodSandbox, handler big");
    let status = c.pod_status(&pod).unwrap().status.unwrap();
    assert_eq!(status.runtime_handler, "big");
    let listed = c.list_pods(None);
    let listed = listed.iter().find(|p| p.id == pod).expect("the pod listed");
    assert_eq!(listed.runtime_handler, "big");
    let guest = d.in_guest(
        &pod,
        "nproc; grep -o 'vmlet.test=big' /proc/cmdline; \
         awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo",
    );
    let lines: Vec<&str> = guest.lines().collect();
    assert_eq!(lines[..2], ["2", "vmlet.test=big"], "{guest}");
    let mem_mib: u64 = lines[2].parse().unwrap();
    assert!((400..=512).contains(&mem_mib), "{guest}");
    c.remove_pod(&pod).expect("RemovePodSandbox");
    assert_clean(d);
}

#[test]
fn pods_and_logs_survive_kill_9_of_vmletd() {
    let mut env = env();
    let c = env.daemon.client();
    c.pull(&env.image).expect("PullImage");
    let log_dir = env.daemon.log_dir();
    let cfg1 = pod_config("survivor", &log_dir);
    let pod1 = c.run_pod(cfg1.clone()).expect("RunPodSandbox");
    let counter = run_container(
        &c,
        &pod1,
        &cfg1,
        container_config(
            "counter",
            &env.image,
            "i=0; trap 'exit 0' TERM; while true; do echo line-$i; i=$((i+1)); sleep 0.05; done",
        ),
    );
    let cfg2 = pod_config("victim", &log_dir);
    let pod2 = c.run_pod(cfg2.clone()).expect("RunPodSandbox");
    let sleeper = run_container(
        &c,
        &pod2,
        &cfg2,
        container_config(
            "sleeper",
            &env.image,
            "echo up; while true; do sleep 1; done",
        ),
    );
    wait_for_line(&env.daemon, "counter.log", "line-20");
    wait_for_line(&env.daemon, "sleeper.log", "up");
    drop(c);

    let vmms = env.daemon.vmm_pids();
    assert_eq!(vmms.len(), 2);
    env.daemon.signal_and_wait(libc::SIGKILL);
    // The pods run on without the daemon.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(env.daemon.vmm_pids().len(), 2);
    // One VM dies while the daemon is away.
    env.daemon.expect_vmm_death(&pod2);
    let status = c_status_pid(&env.daemon, &pod2);
    // SAFETY: kill(2) on a VMM this test's daemon started.
    unsafe { libc::kill(status as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_secs(1));

    env.daemon.restart();
    let c = env.daemon.client();
    let pods = c.list_pods(None);
    assert_eq!(pods.len(), 2);
    let st = |id: &str| c.pod_status(id).unwrap().status.unwrap().state;
    assert_eq!(st(&pod1), v1::PodSandboxState::SandboxReady as i32);
    assert_eq!(st(&pod2), v1::PodSandboxState::SandboxNotready as i32);
    let s = c.status(&sleeper).unwrap();
    assert_eq!(s.state, v1::ContainerState::ContainerExited as i32);
    assert_eq!(s.reason, "VMExited");
    assert!(!s.message.is_empty());
    assert_eq!(
        c.status(&counter).unwrap().state,
        v1::ContainerState::ContainerRunning as i32
    );

    // Logs resume without loss or duplication.
    let before = lines(&log_of(&env.daemon, "counter.log"), "stdout").len();
    wait_for_line(&env.daemon, "counter.log", &format!("line-{}", before + 20));
    // ExecSync on the re-adopted guest.
    let r = c
        .exec(&counter, &["echo", "still-here"], 30)
        .expect("ExecSync");
    assert_eq!(String::from_utf8_lossy(&r.stdout), "still-here\n");
    c.stop(&counter, 10).expect("StopContainer");
    let out = lines(&log_of(&env.daemon, "counter.log"), "stdout");
    for (i, l) in out.iter().enumerate() {
        assert_eq!(
            l,
            &format!("line-{i}"),
            "log has a gap or a duplicate at {i}"
        );
    }
    assert!(out.len() > before);

    // A clean stop (SIGTERM) leaves the pods running too.
    drop(c);
    let status = env.daemon.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "vmletd exited with {status}");
    assert_eq!(env.daemon.vmm_pids().len(), 1);
    env.daemon.restart();
    let c = env.daemon.client();
    let st = |id: &str| c.pod_status(id).unwrap().status.unwrap().state;
    assert_eq!(st(&pod1), v1::PodSandboxState::SandboxReady as i32);

    // kill -9 of a VMM while the daemon runs: only its pod is affected.
    let pod3_cfg = pod_config("third", &log_dir);
    let pod3 = c.run_pod(pod3_cfg.clone()).expect("RunPodSandbox");
    let w = run_container(
        &c,
        &pod3,
        &pod3_cfg,
        container_config(
            "waiter",
            &env.image,
            "echo up; while true; do sleep 1; done",
        ),
    );
    wait_for_line(&env.daemon, "waiter.log", "up");
    env.daemon.expect_vmm_death(&pod3);
    let pid = c_status_pid(&env.daemon, &pod3);
    // SAFETY: kill(2) on a VMM this test's daemon started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let s = c.wait_exited(&w, WAIT);
    assert_eq!(s.reason, "VMExited");
    assert_eq!(st(&pod1), v1::PodSandboxState::SandboxReady as i32);

    for p in [&pod1, &pod2, &pod3] {
        c.remove_pod(p).expect("RemovePodSandbox");
    }
    assert_clean(&env.daemon);
}

/// A field of /proc/PID/status.
fn proc_status(pid: u32, key: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// The uid a pod's VMM runs as, from its record.
fn jail_uid(d: &Vmletd, pod: &str) -> u32 {
    let text = std::fs::read_to_string(d.state_dir().join("pods").join(pod).join("pod.json"))
        .expect("pod record");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["jail"]["uid"].as_u64().expect("jail uid") as u32
}

/// What the jail of pod `pod` shows of `path` (a host path), through /proc/PID/root.
fn in_jail(d: &Vmletd, pod: &str, path: &std::path::Path) -> std::path::PathBuf {
    let pid = c_status_pid(d, pod);
    std::path::PathBuf::from(format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap())
}

/// Each VMM runs jailed: its own non-root uid, no capabilities, no_new_privs, new
/// mount and PID namespaces whose root holds its own files only (not the host's, not
/// another pod's sockets), and keeps it across a daemon restart; a pod started after
/// the restart gets another uid. Containers (their images reach the VM by drive
/// swaps through the jail) run as before.
#[test]
fn each_vmm_runs_jailed_and_cannot_reach_other_pods() {
    let mut env = env();
    let c = env.daemon.client();
    c.pull(&env.image).expect("PullImage");
    let log_dir = env.daemon.log_dir();
    let cfg_a = pod_config("jailed-a", &log_dir);
    let pod_a = c.run_pod(cfg_a.clone()).expect("RunPodSandbox");
    let pod_b = c
        .run_pod(pod_config("jailed-b", &log_dir))
        .expect("RunPodSandbox");
    let ctr = run_container(
        &c,
        &pod_a,
        &cfg_a,
        container_config("jailed-echo", &env.image, "echo up; sleep 1000"),
    );
    wait_for_line(&env.daemon, "jailed-echo.log", "up");
    let d = &env.daemon;
    let (uid_a, uid_b) = (jail_uid(d, &pod_a), jail_uid(d, &pod_b));
    assert_ne!(uid_a, uid_b);
    for (pod, uid) in [(&pod_a, uid_a), (&pod_b, uid_b)] {
        let pid = c_status_pid(d, pod);
        assert_ne!(uid, 0);
        assert_eq!(
            proc_status(pid, "Uid"),
            format!("{uid}\t{uid}\t{uid}\t{uid}")
        );
        assert_eq!(
            proc_status(pid, "Gid"),
            format!("{uid}\t{uid}\t{uid}\t{uid}")
        );
        for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(proc_status(pid, caps), "0000000000000000", "{caps}");
        }
        assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
        // Its own PID namespace, where it is 1.
        let nspid = proc_status(pid, "NSpid");
        assert_eq!(nspid.split_whitespace().last(), Some("1"), "NSpid {nspid}");
        let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).unwrap();
        assert_ne!(ns(&pid.to_string()), ns("self"));
        // Its root is its jail: its own files and sockets, nothing of the host's.
        let run = d.run_dir().join("pods").join(pod);
        assert!(in_jail(d, pod, &run.join("ctl")).exists());
        assert!(in_jail(d, pod, &run.join("vsock")).exists());
        assert!(in_jail(d, pod, std::path::Path::new("/dev/kvm")).exists());
        for absent in ["/etc/passwd", "/proc/1", "/sys/kernel", "/bin/sh", "/root"] {
            assert!(
                !in_jail(d, pod, std::path::Path::new(absent)).exists(),
                "{absent} in the jail of {pod}"
            );
        }
        assert!(!in_jail(
            d,
            pod,
            &d.state_dir().join("pods").join(pod).join("pod.json")
        )
        .exists());
        // Its sockets are its uid's alone.
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(run.join("ctl")).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (uid, 0o600));
    }
    // Neither pod's jail holds the other's sockets.
    let other = |pod: &str| d.run_dir().join("pods").join(pod);
    assert!(!in_jail(d, &pod_a, &other(&pod_b)).exists());
    assert!(!in_jail(d, &pod_b, &other(&pod_a)).exists());
    assert!(!in_jail(d, &pod_a, &other(&pod_b).join("ctl")).exists());
    drop(c);

    // A restart re-adopts the jailed pods; a new pod gets a uid of its own.
    let status = env.daemon.signal_and_wait(libc::SIGKILL);
    assert!(!status.success());
    env.daemon.restart();
    let c = env.daemon.client();
    let d = &env.daemon;
    assert_eq!(
        c.pod_status(&pod_a).unwrap().status.unwrap().state,
        v1::PodSandboxState::SandboxReady as i32
    );
    let r = c.exec(&ctr, &["echo", "still-here"], 30).expect("ExecSync");
    assert_eq!(String::from_utf8_lossy(&r.stdout), "still-here\n");
    let pod_c = c
        .run_pod(pod_config("jailed-c", &log_dir))
        .expect("RunPodSandbox");
    let uid_c = jail_uid(d, &pod_c);
    assert!(![uid_a, uid_b].contains(&uid_c), "uid {uid_c} given twice");
    for p in [&pod_a, &pod_b, &pod_c] {
        c.remove_pod(p).expect("RemovePodSandbox");
    }
    assert_clean(d);
}

/// Each pod's VMM runs in a host cgroup (v2) below the kubelet's cgroup_parent with
/// the pod's limits: memory.max is the guest's RAM plus the VMM's overhead, cpu.max
/// the pod's CPU limit, pids.max set. RemovePodSandbox removes it, and the parents
/// vmletd made for it. A pod that takes a warm VM gets its processes moved into its
/// own cgroup. RuntimeConfig reports the driver the parent was read as.
#[test]
fn each_pod_gets_a_host_cgroup_with_its_limits() {
    let cg = std::path::Path::new("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(cg.join("cgroup.controllers")).unwrap_or_default();
    assert!(
        ["cpu", "memory", "pids"]
            .iter()
            .all(|c| controllers.split_whitespace().any(|h| h == *c)),
        "the test machine has no cgroup v2 with cpu, memory, pids: {controllers:?}"
    );
    let d = Vmletd::start_with(
        &["--warm-pool", "1"],
        "[network]\nmode = \"none\"\n[cgroups]\ndriver = \"cgroupfs\"\n",
    );
    let c = d.client();
    let mut rt = c.runtime.clone();
    let rc = c
        .block_on(rt.runtime_config(v1::RuntimeConfigRequest {}))
        .unwrap()
        .into_inner();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        v1::CgroupDriver::Cgroupfs as i32
    );
    let mut cfg = pod_config("limited", &d.log_dir());
    cfg.linux = Some(v1::LinuxPodSandboxConfig {
        cgroup_parent: "/kubepods-e2e/burstable/pod-limited".into(),
        resources: Some(v1::LinuxContainerResources {
            cpu_quota: 150_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 256 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = c.run_pod(cfg).expect("RunPodSandbox");
    let text = std::fs::read_to_string(d.state_dir().join("pods").join(&pod).join("pod.json"))
        .expect("pod record");
    let record: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mem_mib = record["mem_mib"].as_u64().unwrap();
    let dir = cg
        .join("kubepods-e2e/burstable/pod-limited")
        .join(format!("vmlet-{pod}"));
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .to_owned()
    };
    let pid = c_status_pid(&d, &pod);
    assert!(
        read("cgroup.procs").lines().any(|l| l == pid.to_string()),
        "VMM {pid} not in {}",
        dir.display()
    );
    let max: u64 = read("memory.max").parse().unwrap();
    assert_eq!(max, (mem_mib + 64) << 20);
    assert_eq!(read("cpu.max"), "150000 100000");
    assert_eq!(read("pids.max"), "512");
    let current: u64 = read("memory.current").parse().unwrap();
    assert!(
        current < max,
        "memory.current {current} >= memory.max {max}"
    );
    let peak = std::fs::read_to_string(dir.join("memory.peak")).unwrap_or_default();
    let stat = read("memory.stat");
    let anon: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("anon "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    vmlet_integration_tests::say(&format!(
        "pod cgroup of a {mem_mib} MiB guest: memory.current {} MiB, memory.peak {} MiB, anon {} MiB",
        current >> 20,
        peak.trim().parse::<u64>().unwrap_or(0) >> 20,
        anon >> 20
    ));
    // PodSandboxStats: the pod's CPU and memory are its host cgroup's (what it costs
    // the node), read between two reads of the cgroup itself.
    let usage_ns = || {
        read("cpu.stat")
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
            * 1000
    };
    let (cpu_before, mem_before) = (usage_ns(), read("memory.current").parse::<u64>().unwrap());
    let stats = c.pod_stats(&pod).expect("PodSandboxStats");
    let (cpu_after, mem_after) = (usage_ns(), read("memory.current").parse::<u64>().unwrap());
    let linux = stats.linux.unwrap();
    let cpu = linux.cpu.unwrap().usage_core_nano_seconds.unwrap().value;
    assert!(
        (cpu_before..=cpu_after).contains(&cpu),
        "pod CPU {cpu} ns is not its host cgroup's ({cpu_before}..={cpu_after})"
    );
    let mem = linux.memory.unwrap();
    let usage = mem.usage_bytes.unwrap().value;
    // memory.current moves by pages while the guest runs.
    let (lo, hi) = (mem_before.min(mem_after), mem_before.max(mem_after));
    assert!(
        usage + (8 << 20) >= lo && usage <= hi + (8 << 20),
        "pod memory {usage} is not its host cgroup's ({mem_before}, {mem_after})"
    );
    let ws = mem.working_set_bytes.unwrap().value;
    assert!(ws <= usage && ws > 0, "working set {ws}, usage {usage}");
    assert!(mem.rss_bytes.unwrap().value > 0);
    assert_eq!(mem.available_bytes.unwrap().value, max - ws);

    // A pod of the default size takes the warm VM: its VMM moves from the warm VM's
    // cgroup (below the default parent) into the pod's own.
    c.wait_warm_pool_full();
    let mut cfg = pod_config("warm-limited", &d.log_dir());
    cfg.linux = Some(v1::LinuxPodSandboxConfig {
        cgroup_parent: "/kubepods-e2e/besteffort/pod-warm".into(),
        ..Default::default()
    });
    let warm = c.run_pod(cfg).expect("RunPodSandbox from the warm pool");
    let warm_dir = cg
        .join("kubepods-e2e/besteffort/pod-warm")
        .join(format!("vmlet-{warm}"));
    let warm_pid = c_status_pid(&d, &warm);
    let procs = std::fs::read_to_string(warm_dir.join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l == warm_pid.to_string()),
        "warm VMM {warm_pid} not in {}: {procs:?}",
        warm_dir.display()
    );
    assert!(!cg.join("vmlet").join(format!("vmlet-{warm}")).exists());
    assert_eq!(
        std::fs::read_to_string(warm_dir.join("cpu.max"))
            .unwrap()
            .trim(),
        "max 100000"
    );

    for p in [&pod, &warm] {
        c.remove_pod(p).expect("RemovePodSandbox");
    }
    assert!(!dir.exists(), "{} left", dir.display());
    assert!(!warm_dir.exists(), "{} left", warm_dir.display());
    assert!(
        !cg.join("kubepods-e2e").exists(),
        "the parents vmletd made are left"
    );
    // A parent that is no cgroup name is refused, and leaves nothing.
    let mut bad = pod_config("bad-parent", &d.log_dir());
    bad.linux = Some(v1::LinuxPodSandboxConfig {
        cgroup_parent: "/kubepods/../../etc".into(),
        ..Default::default()
    });
    let e = c
        .run_pod(bad)
        .expect_err("RunPodSandbox with a bad cgroup_parent");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(c.list_pods(None).is_empty());
}

fn cpu_ns(s: &v1::ContainerStats) -> u64 {
    s.cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map_or(0, |v| v.value)
}

fn ids(stats: &[v1::ContainerStats]) -> Vec<String> {
    let mut ids: Vec<String> = stats
        .iter()
        .map(|s| s.attributes.clone().unwrap_or_default().id)
        .collect();
    ids.sort();
    ids
}

#[test]
fn stats_and_resource_updates() {
    const MIB: u64 = 1 << 20;
    let (registry, image) = busybox_registry("busybox:e2e");
    let metrics = free_local_addr();
    let daemon = Vmletd::start_with(
        &["--insecure-registry", registry.addr()],
        &format!("[network]\nmode = \"none\"\n[metrics]\naddress = \"{metrics}\"\n"),
    );
    let env = Env {
        registry,
        image,
        daemon,
    };
    let d = &env.daemon;
    let c = d.client();
    c.pull(&env.image).expect("PullImage");
    let pod_cfg = pod_config("stats", &d.log_dir());
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");
    let labelled = |name: &str, script: &str| {
        let mut cfg = container_config(name, &env.image, script);
        cfg.labels = [("role".to_string(), name.to_string())].into();
        cfg
    };
    // Holds 24 MiB in a shell variable and burns CPU.
    let burn = run_container(
        &c,
        &pod,
        &pod_cfg,
        labelled(
            "burn",
            "x=$(busybox yes 0123456789abcdef | busybox head -c 25165824); echo held; while :; do :; done",
        ),
    );
    // Idles until /go exists, then allocates 32 MiB.
    let idle = run_container(
        &c,
        &pod,
        &pod_cfg,
        labelled(
            "idle",
            "echo up; while [ ! -e /go ]; do sleep 0.2; done; x=$(busybox yes 0123456789abcdef | busybox head -c 33554432); echo survived; sleep 1000",
        ),
    );
    let done = run_container(&c, &pod, &pod_cfg, labelled("done", "true"));
    wait_for_line(d, "burn.log", "held");
    wait_for_line(d, "idle.log", "up");
    c.wait_exited(&done, WAIT);

    // CPU grows between two samples; the second has a rate.
    let s1 = c.container_stats(&burn).expect("ContainerStats");
    std::thread::sleep(Duration::from_secs(2));
    let s2 = c.container_stats(&burn).expect("ContainerStats");
    assert!(cpu_ns(&s1) > 0, "{s1:?}");
    assert!(cpu_ns(&s2) > cpu_ns(&s1), "{s1:?} then {s2:?}");
    assert!(
        s1.cpu.as_ref().unwrap().usage_nano_cores.is_none(),
        "{s1:?}"
    );
    let rate = s2
        .cpu
        .as_ref()
        .unwrap()
        .usage_nano_cores
        .as_ref()
        .map(|v| v.value);
    assert!(rate.is_some_and(|r| r > 0), "{s2:?}");
    let mem = s2.memory.unwrap_or_default();
    let ws = mem.working_set_bytes.map_or(0, |v| v.value);
    assert!(ws > 16 * MIB, "working set {ws}: {mem:?}");
    assert!(mem.usage_bytes.map_or(0, |v| v.value) >= ws, "{mem:?}");
    let a = s2.attributes.clone().unwrap_or_default();
    assert_eq!(
        (a.id.as_str(), a.labels["role"].as_str()),
        (burn.as_str(), "burn")
    );
    assert_eq!(a.metadata.unwrap_or_default().name, "burn");

    // The writable layer grows with a file written into it.
    let r = c
        .exec(
            &idle,
            &[
                "sh",
                "-c",
                "busybox dd if=/dev/zero of=/blob bs=1048576 count=4",
            ],
            60,
        )
        .expect("ExecSync");
    assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
    let fs = c
        .container_stats(&idle)
        .expect("ContainerStats")
        .writable_layer
        .unwrap_or_default();
    assert!(fs.used_bytes.map_or(0, |v| v.value) >= 4 * MIB, "{fs:?}");
    assert!(fs.inodes_used.map_or(0, |v| v.value) >= 1, "{fs:?}");
    assert_eq!(
        fs.fs_id.unwrap_or_default().mountpoint,
        d.state_dir().display().to_string()
    );

    // ListContainerStats and its filters. The exited container is listed without
    // CPU or memory figures.
    let all = c.list_container_stats(None).expect("ListContainerStats");
    let mut want = vec![burn.clone(), idle.clone(), done.clone()];
    want.sort();
    assert_eq!(ids(&all), want);
    let exited = all
        .iter()
        .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == done))
        .unwrap();
    assert!(
        exited.cpu.is_none() && exited.memory.is_none(),
        "{exited:?}"
    );
    let filtered = |f: v1::ContainerStatsFilter| ids(&c.list_container_stats(Some(f)).unwrap());
    assert_eq!(
        filtered(v1::ContainerStatsFilter {
            id: burn[..12].to_string(),
            ..Default::default()
        }),
        [burn.as_str()]
    );
    assert_eq!(
        filtered(v1::ContainerStatsFilter {
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        }),
        want
    );
    assert_eq!(
        filtered(v1::ContainerStatsFilter {
            label_selector: [("role".to_string(), "idle".to_string())].into(),
            ..Default::default()
        }),
        [idle.as_str()]
    );
    assert!(filtered(v1::ContainerStatsFilter {
        pod_sandbox_id: "f".repeat(64),
        ..Default::default()
    })
    .is_empty());

    // PodSandboxStats: the guest's figures, the containers' tasks and stats.
    let ps = c.pod_stats(&pod).expect("PodSandboxStats");
    assert_eq!(ps.attributes.clone().unwrap_or_default().id, pod);
    let linux = ps.linux.clone().unwrap_or_default();
    let pod_cpu = linux.cpu.unwrap_or_default();
    assert!(
        pod_cpu.usage_core_nano_seconds.map_or(0, |v| v.value) > 0,
        "{ps:?}"
    );
    let pod_mem = linux.memory.unwrap_or_default();
    assert!(
        pod_mem.working_set_bytes.map_or(0, |v| v.value) > 16 * MIB,
        "{ps:?}"
    );
    assert!(pod_mem.available_bytes.map_or(0, |v| v.value) > 0, "{ps:?}");
    let procs = linux.process.unwrap_or_default().process_count;
    assert!(procs.map_or(0, |v| v.value) >= 2, "{ps:?}");
    assert_eq!(ids(&linux.containers), want);
    let pods = |f: Option<v1::PodSandboxStatsFilter>| {
        c.list_pod_stats(f)
            .expect("ListPodSandboxStats")
            .into_iter()
            .map(|s| s.attributes.unwrap_or_default().id)
            .collect::<Vec<_>>()
    };
    assert_eq!(pods(None), [pod.as_str()]);
    let by_label = |v: &str| v1::PodSandboxStatsFilter {
        label_selector: [("test".to_string(), v.to_string())].into(),
        ..Default::default()
    };
    assert_eq!(pods(Some(by_label("stats"))), [pod.as_str()]);
    assert!(pods(Some(by_label("other"))).is_empty());
    assert_eq!(
        pods(Some(v1::PodSandboxStatsFilter {
            id: pod[..8].to_string(),
            ..Default::default()
        })),
        [pod.as_str()]
    );

    // Errors.
    let unknown = "0".repeat(64);
    assert_eq!(
        c.container_stats(&unknown).unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        c.container_stats("").unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(c.pod_stats(&unknown).unwrap_err().code(), Code::NotFound);

    // The metrics endpoint counts what the test did.
    let text = scrape(metrics);
    let pod_labels = format!(r#"pod_id="{pod}",pod_name="stats",pod_namespace="e2e""#);
    let at_least = |series: &str, min: f64| {
        let v = sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
        assert!(v >= min, "{series} is {v}, want at least {min}");
    };
    for (series, want) in [
        (
            r#"vmlet_cri_requests_total{method="RunPodSandbox",code="OK"}"#.to_owned(),
            1.0,
        ),
        (
            r#"vmlet_cri_requests_total{method="PullImage",code="OK"}"#.to_owned(),
            1.0,
        ),
        (
            r#"vmlet_cri_requests_total{method="CreateContainer",code="OK"}"#.to_owned(),
            3.0,
        ),
        (
            r#"vmlet_cri_requests_total{method="ContainerStats",code="NotFound"}"#.to_owned(),
            1.0,
        ),
        (
            r#"vmlet_cri_requests_total{method="ContainerStats",code="InvalidArgument"}"#
                .to_owned(),
            1.0,
        ),
        (
            r#"vmlet_cri_requests_total{method="PodSandboxStats",code="NotFound"}"#.to_owned(),
            1.0,
        ),
        (
            r#"vmlet_cri_request_duration_seconds_count{method="RunPodSandbox"}"#.to_owned(),
            1.0,
        ),
        (r#"vmlet_pods{state="ready"}"#.to_owned(), 1.0),
        (r#"vmlet_pods{state="notready"}"#.to_owned(), 0.0),
        (r#"vmlet_containers{state="running"}"#.to_owned(), 2.0),
        (r#"vmlet_containers{state="exited"}"#.to_owned(), 1.0),
        (r#"vmlet_image_pulls_total{result="ok"}"#.to_owned(), 1.0),
        (r#"vmlet_vm_boots_total{result="failed"}"#.to_owned(), 0.0),
        (format!("vmlet_vmm_up{{{pod_labels}}}"), 1.0),
    ] {
        assert_eq!(sample(&text, &series), Some(want), "{series} in\n{text}");
    }
    let started = sample(&text, r#"vmlet_pod_starts_total{vm="warm"}"#).unwrap_or(0.0)
        + sample(&text, r#"vmlet_pod_starts_total{vm="fresh"}"#).unwrap_or(0.0);
    assert_eq!(started, 1.0, "{text}");
    at_least("vmlet_image_pull_bytes_total", 1e5);
    at_least(r#"vmlet_vm_boots_total{result="ok"}"#, 1.0);
    let mut short = Vec::new();
    // The guest mounted its scratch disk and wrote to it (its journal at least: the
    // 4 MiB file may still sit in the page cache); vmletd reached its agent over
    // vsock; the drivers set up their devices by MMIO.
    for (series, min) in [
        ("vmm_block_read_bytes_total", "drive=\"scratch\"", 4096.0),
        ("vmm_block_write_bytes_total", "drive=\"scratch\"", 4096.0),
        ("vmm_block_write_ops_total", "drive=\"scratch\"", 1.0),
        ("vmm_queue_notifications_total", "device=\"scratch\"", 1.0),
        ("vmm_queue_notifications_total", "device=\"vsock\"", 1.0),
        ("vmm_vsock_connections_total", "from=\"host\"", 1.0),
        ("vmm_exits_total", "kind=\"mmio_write\"", 1.0),
    ]
    .map(|(name, label, min)| (format!("vmlet_{name}{{{pod_labels},{label}}}"), min))
    {
        let v = sample(&text, &series);
        if v.is_none_or(|v| v < min) {
            short.push(format!("{series} is {v:?}, want at least {min}"));
        }
    }
    assert!(short.is_empty(), "{short:#?} in\n{text}");

    let memory = |bytes: i64| v1::LinuxContainerResources {
        memory_limit_in_bytes: bytes,
        ..Default::default()
    };
    assert_eq!(
        c.update_resources(&unknown, memory(64 << 20))
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let e = c.update_resources(&idle, memory(-1)).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let e = c
        .update_resources(
            &idle,
            v1::LinuxContainerResources {
                cpu_quota: 500,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let e = c.update_resources(&done, memory(64 << 20)).unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");

    // A CPU quota lands in cpu.max (and tames the burner for the rest of the test).
    let quota = |q: i64| v1::LinuxContainerResources {
        cpu_quota: q,
        cpu_period: 100_000,
        ..Default::default()
    };
    c.update_resources(&burn, quota(10_000))
        .expect("UpdateContainerResources");
    let cgroup = |id: &str, file: &str| {
        d.in_guest(&pod, &format!("cat /sys/fs/cgroup/containers/{id}/{file}"))
    };
    assert_eq!(cgroup(&burn, "cpu.max"), "10000 100000");

    // Limits that are not set keep their values; ContainerStatus reports them all.
    let mut both = quota(20_000);
    both.memory_limit_in_bytes = 16 << 20;
    c.update_resources(&idle, both)
        .expect("UpdateContainerResources");
    c.update_resources(
        &idle,
        v1::LinuxContainerResources {
            cpu_shares: 512,
            ..Default::default()
        },
    )
    .expect("UpdateContainerResources");
    assert_eq!(cgroup(&idle, "cpu.max"), "20000 100000");
    assert_eq!(cgroup(&idle, "memory.max"), (16u64 << 20).to_string());
    assert_eq!(cgroup(&idle, "cpu.weight"), "20");
    let r = c
        .status(&idle)
        .unwrap()
        .resources
        .and_then(|r| r.linux)
        .unwrap_or_default();
    assert_eq!(
        (
            r.memory_limit_in_bytes,
            r.cpu_quota,
            r.cpu_period,
            r.cpu_shares
        ),
        (16 << 20, 20_000, 100_000, 512)
    );
    // An allocation beyond the new limit gets the container OOM-killed. The CPU quota
    // is lifted first: at 20% of an emulated CPU, filling 16 MiB takes minutes.
    c.update_resources(&idle, quota(400_000))
        .expect("UpdateContainerResources");
    c.exec(&idle, &["sh", "-c", "echo > /go"], 60)
        .expect("ExecSync");
    let (s, answered) = c.first_exited(&idle, WAIT);
    assert_eq!(s.reason, "OOMKilled", "{s:?}");
    c.assert_exit_prompt(&idle, answered, PROMPT);
    assert!(!lines(&log_of(d, "idle.log"), "stdout").contains(&"survived".to_string()));

    // A stopped pod has no VM to measure: its containers are listed bare.
    c.stop_pod(&pod).expect("StopPodSandbox");
    assert_eq!(
        c.pod_stats(&pod).unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert!(pods(None).is_empty());
    let all = c.list_container_stats(None).expect("ListContainerStats");
    assert_eq!(ids(&all), want);
    assert!(all
        .iter()
        .all(|s| s.cpu.is_none() && s.writable_layer.is_none()));
    assert!(c.container_stats(&burn).unwrap().cpu.is_none());
    c.remove_pod(&pod).expect("RemovePodSandbox");
    assert_clean(d);
}

/// The VMM pid of a pod, from its record.
fn c_status_pid(d: &Vmletd, pod: &str) -> u32 {
    d.vmm_pid_of(pod)
}

/// Ends process `pid` by `signal` as a crash would, and waits until it is gone. Rust's
/// standard library handles SIGSEGV to report stack overflows; for a SIGSEGV sent by
/// another process it only restores the default action and carries on, so a second
/// one is what kills, as a real fault (which repeats) does at once.
fn crash(pid: u32, signal: i32) {
    let gone = || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
    };
    for _ in 0..2 {
        // SAFETY: kill(2) on a VMM this test's daemon started.
        unsafe { libc::kill(pid as i32, signal) };
        for _ in 0..50 {
            if gone() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("process {pid} survived two signals {signal}");
}

/// A VMM that dies under a running pod (SIGKILL, SIGSEGV, or while vmletd is down):
/// the pod is NOTREADY at once, its container exited with reason `VMExited` and the
/// VMM's status in the message, one Stopped event is sent, verbose PodSandboxStatus
/// shows the exit and the last lines of vmm.log and console.log, and Stop and Remove
/// leave nothing behind.
#[test]
fn a_pod_whose_vm_died_is_not_ready() {
    // The crashes below are signals sent from outside: a VMM that is the init of its
    // own PID namespace ignores them (only a fault of its own ends it).
    let (registry, image) = busybox_registry("busybox:e2e");
    let daemon = Vmletd::start_with(
        &["--insecure-registry", registry.addr()],
        "[network]\nmode = \"none\"\n[jail]\npid_namespace = false\n",
    );
    let mut env = Env {
        registry,
        image,
        daemon,
    };
    let c = env.daemon.client();
    c.pull(&env.image).expect("PullImage");
    let log_dir = env.daemon.log_dir();
    let mut pods = Vec::new();
    for name in ["killed", "segv", "offline"] {
        let cfg = pod_config(name, &log_dir);
        let pod = c.run_pod(cfg.clone()).expect("RunPodSandbox");
        let ctr = run_container(
            &c,
            &pod,
            &cfg,
            container_config(name, &env.image, "echo up; while true; do sleep 1; done"),
        );
        wait_for_line(&env.daemon, &format!("{name}.log"), "up");
        env.daemon.expect_vmm_death(&pod);
        pods.push((pod, ctr));
    }
    let state = |c: &CriClient, id: &str| c.pod_status(id).unwrap().status.unwrap().state;
    let not_ready = v1::PodSandboxState::SandboxNotready as i32;

    for ((pod, ctr), (signal, name)) in pods
        .iter()
        .zip([(libc::SIGKILL, "SIGKILL"), (libc::SIGSEGV, "SIGSEGV")])
    {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let socket = env.daemon.socket.clone();
        let events = std::thread::spawn(move || {
            CriClient::connect(&socket)
                .unwrap()
                .events(1, WAIT, ready_tx)
        });
        ready_rx.recv().expect("subscribed to events");
        crash(c_status_pid(&env.daemon, pod), signal);
        let s = c.wait_exited(ctr, WAIT);
        assert_eq!((s.reason.as_str(), s.exit_code), ("VMExited", 255), "{s:?}");
        assert!(s.message.contains(name), "{s:?}");
        assert_eq!(state(&c, pod), not_ready);
        let events = events.join().unwrap();
        assert_eq!(
            events
                .iter()
                .map(|e| (e.container_id.as_str(), e.container_event_type))
                .collect::<Vec<_>>(),
            [(
                ctr.as_str(),
                v1::ContainerEventType::ContainerStoppedEvent as i32
            )]
        );
        let info: serde_json::Value =
            serde_json::from_str(&c.pod_status(pod).unwrap().info["info"]).unwrap();
        assert!(
            info["vmExit"].as_str().unwrap_or("").contains(name),
            "{info}"
        );
        // The guest printed its ready line on the console before the kill.
        assert!(
            !info["consoleTail"].as_str().unwrap_or("").is_empty(),
            "{info}"
        );
        assert!(info.get("vmmLogTail").is_some(), "{info}");
    }

    // A VMM that dies while vmletd is down: NOTREADY after the restart.
    let (pod, ctr) = &pods[2];
    let pid = c_status_pid(&env.daemon, pod);
    drop(c);
    env.daemon.signal_and_wait(libc::SIGKILL);
    crash(pid, libc::SIGSEGV);
    env.daemon.restart();
    let c = env.daemon.client();
    assert_eq!(state(&c, pod), not_ready);
    let s = c.status(ctr).unwrap();
    assert_eq!(
        (s.state, s.reason.as_str()),
        (v1::ContainerState::ContainerExited as i32, "VMExited")
    );
    assert_eq!(
        c.list_pods(Some(v1::PodSandboxFilter {
            state: Some(v1::PodSandboxStateValue {
                state: v1::PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        }))
        .len(),
        0
    );

    for (pod, _) in &pods {
        c.stop_pod(pod).expect("StopPodSandbox");
        c.stop_pod(pod).expect("StopPodSandbox again");
        c.remove_pod(pod).expect("RemovePodSandbox");
    }
    assert_clean(&env.daemon);
}

/// An exit reaches ContainerStatus promptly, whatever the log copy is doing, and the
/// log still holds every line: a container that writes about 1 MiB and exits at once,
/// and one OOM-killed with output in flight by the limit it was created with (a limit
/// lowered on a running container: `stats_and_resource_updates`). Status is asked
/// every 100 ms: its first Exited answer comes within `PROMPT` of the moment
/// the process ended in the guest. Each exit is sent once as an event.
#[test]
fn exits_reach_container_status_promptly_with_the_whole_log() {
    let env = env();
    let d = &env.daemon;
    let c = d.client();
    c.pull(&env.image).expect("PullImage");
    let pod_cfg = pod_config("exits", &d.log_dir());
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let socket = d.socket.clone();
    // Created, Started and Stopped of two containers; a seventh would be a second
    // Stopped event. Collected until both exits are recorded and their logs complete,
    // then 3 s more.
    let events = std::thread::spawn(move || {
        CriClient::connect(&socket).unwrap().events_until(
            7,
            Duration::from_secs(240),
            stop_rx,
            ready_tx,
        )
    });
    ready_rx.recv().expect("subscribed to events");

    const LINES: u32 = 150_000; // about 1 MiB of output
    let chatty = run_container(
        &c,
        &pod,
        &pod_cfg,
        container_config("chatty", &env.image, &format!("busybox seq 1 {LINES}")),
    );
    let limited = |bytes: i64| {
        Some(v1::LinuxContainerConfig {
            resources: Some(v1::LinuxContainerResources {
                memory_limit_in_bytes: bytes,
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    let mut oom_cfg = container_config(
        "oom",
        &env.image,
        "busybox seq 1 20000; x=$(busybox yes 0123456789abcdef | busybox head -c 67108864); echo survived",
    );
    oom_cfg.linux = limited(16 << 20);
    let oom = run_container(&c, &pod, &pod_cfg, oom_cfg);

    let mut answered = std::collections::HashMap::new();
    for id in [&chatty, &oom] {
        answered.insert(id.clone(), c.first_exited(id, WAIT).1);
    }

    for (id, reason, exit_code, log, last) in [
        (&chatty, "Completed", 0, "chatty.log", LINES),
        (&oom, "OOMKilled", 137, "oom.log", 20_000),
    ] {
        let s = c.status(id).expect("ContainerStatus");
        assert_eq!(
            (s.reason.as_str(), s.exit_code),
            (reason, exit_code),
            "{s:?}"
        );
        let delay = c.assert_exit_prompt(id, answered[id], PROMPT);
        vmlet_integration_tests::say(&format!(
            "{log}: ContainerStatus said Exited {} ms after the guest's exit",
            delay.as_millis()
        ));
        let info = c.status_info(id).expect("ContainerStatus");
        let seen = info["exitSeenAtNs"].as_i64().unwrap_or(0);
        let recorded = info["finishedAtNs"].as_i64().unwrap_or(0);
        assert!(seen > 0 && recorded >= seen, "{info}");
        // The drain before recording is bounded at 1 s; 5 s leaves room for a
        // loaded machine and still fails a held-back exit.
        assert!(
            recorded - seen < 5_000_000_000,
            "the exit was recorded {} ms after the guest's report reached vmletd: {info}",
            (recorded - seen) / 1_000_000
        );
        c.wait_log_complete(id, WAIT);
        let want: Vec<String> = (1..=last).map(|i| i.to_string()).collect();
        assert_eq!(lines(&log_of(d, log), "stdout"), want, "{log}");
    }
    let _ = stop_tx.send(());
    let events = events.join().unwrap();
    for id in [&chatty, &oom] {
        let stopped = events
            .iter()
            .filter(|e| {
                &e.container_id == id
                    && e.container_event_type
                        == v1::ContainerEventType::ContainerStoppedEvent as i32
            })
            .count();
        assert_eq!(stopped, 1, "Stopped events of {id}: {events:?}");
    }
    c.remove_pod(&pod).expect("RemovePodSandbox");
    assert_clean(d);
}

/// The lines of vmletd's log that say a warm VM failed a pod and was discarded.
fn fallback_lines(d: &Vmletd) -> Vec<String> {
    std::fs::read_to_string(d.log_file())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("a warm VM does not answer") || l.contains("the warm VM failed"))
        .map(str::to_owned)
        .collect()
}

/// The warm pool's VM that does not answer (its VMM stopped with SIGSTOP) does not
/// fail the pod: RunPodSandbox discards it, keeps its console, counts it, and boots a
/// fresh VM. When the fresh boot fails too, the error names both causes and nothing is
/// left behind.
#[test]
fn a_failed_warm_vm_does_not_fail_the_pod() {
    // A copy of vmlet-vmm that the test can break later.
    let bin_dir = tempfile::tempdir().expect("tempdir");
    let vmm = bin_dir.path().join("vmlet-vmm");
    std::fs::copy(vmlet_integration_tests::vmm_binary(), &vmm).expect("copy vmlet-vmm");
    // The harness passes VMLET_VMM to vmletd's --vmm (vmletd itself is found beside
    // it unless VMLET_VMLETD says where). This test runs in a process of its own.
    std::env::set_var("VMLET_VMLETD", vmletd_binary());
    std::env::set_var("VMLET_VMM", &vmm);
    let d = Vmletd::start(&["--warm-pool", "1"]);
    let c = d.client();
    c.wait_warm_pool_full();
    let warm_vm = || {
        let pids = d.vmm_pids();
        assert_eq!(pids.len(), 1, "one warm VM: {pids:?}");
        pids[0]
    };
    let stopped = warm_vm();
    // SAFETY: kill(2) on the warm VM this test's daemon started.
    unsafe { libc::kill(stopped as i32, libc::SIGSTOP) };

    let pod = c
        .run_pod(pod_config("fallback", &d.log_dir()))
        .expect("RunPodSandbox falls back to a fresh boot");
    assert_eq!(
        c.pod_status(&pod).unwrap().status.unwrap().state,
        v1::PodSandboxState::SandboxReady as i32
    );
    assert_ne!(c_status_pid(&d, &pod), stopped);
    assert!(
        !d.vmm_pids().contains(&stopped),
        "the silent warm VM was not killed"
    );
    assert_eq!(c.warm_pool()["failed"], 1);
    assert_eq!(
        fallback_lines(&d).len(),
        1,
        "one fallback logged: {:?}",
        fallback_lines(&d)
    );
    let kept: Vec<_> = std::fs::read_dir(d.state_dir().join("failed-vms"))
        .expect("kept consoles")
        .flatten()
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    c.remove_pod(&pod).expect("RemovePodSandbox");

    // The fresh boot fails too: both causes in the error, nothing left.
    c.wait_warm_pool_full_after_failures(1);
    let stopped = warm_vm();
    // SAFETY: as above.
    unsafe { libc::kill(stopped as i32, libc::SIGSTOP) };
    // Replaced, not rewritten: the stopped warm VM still runs the old file. Every VMM
    // started from here on exits 1.
    d.expect_vmm_exits("exit status 1");
    std::fs::remove_file(&vmm).expect("remove the vmlet-vmm copy");
    // A program that exits 1 and runs in a VMM's jail (which holds no shell).
    std::fs::copy("/bin/false", &vmm).expect("break vmlet-vmm");
    let e = c
        .run_pod(pod_config("no-luck", &d.log_dir()))
        .expect_err("RunPodSandbox with no VM to be had");
    // Both causes: what the stopped warm VM's ping met, and the broken VMM's exit.
    let msg = e.message();
    assert!(
        msg.starts_with("a warm VM failed (the guest agent did not answer within 3s: Health: ")
            && msg.contains("), and so did a fresh boot: the VMM exited"),
        "{e}"
    );
    assert_eq!(c.warm_pool()["failed"], 2);
    let logged = fallback_lines(&d);
    assert_eq!(logged.len(), 2, "one more fallback logged: {logged:?}");
    assert!(
        logged[1].contains("the guest agent did not answer within 3s: Health: "),
        "{logged:?}"
    );
    assert!(c.list_pods(None).is_empty());
    // The pool's refill keeps failing on the broken binary; between its tries the
    // node is clean.
    let start = std::time::Instant::now();
    loop {
        let left: Vec<_> = [d.state_dir().join("pods"), d.run_dir().join("pods")]
            .iter()
            .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
            .map(|e| e.path())
            .collect();
        if d.vmm_pids().is_empty() && left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "left behind: {left:?}, VMMs {:?}",
            d.vmm_pids()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A registry that speaks HTTPS only, with a certificate from an authority of its own:
/// PullImage fails with a certificate error while vmletd does not trust that authority,
/// and succeeds once it does (vmletd verifies registries against OpenSSL's trust store,
/// which `SSL_CERT_FILE` names) or when the registry's `skip_tls_verify` is set.
#[test]
fn pulls_from_a_tls_registry_need_a_trusted_ca_or_skip_tls_verify() {
    let registry = TestRegistry::start_with_tls().expect("start the TLS registry");
    let image = registry
        .push(&vmlet_test_support::busybox_image().unwrap(), "busybox:tls")
        .expect("push busybox");
    let ca = registry.ca_cert().expect("the registry's CA").to_owned();
    let no_network = "[network]\nmode = \"none\"\n";

    let untrusted = Vmletd::start_with_env(&[], no_network, &[]);
    let e = untrusted
        .client()
        .pull(&image)
        .expect_err("a certificate from an unknown authority");
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    assert!(
        e.message()
            .contains(&format!("registry {} unreachable", registry.addr()))
            && e.message().contains("certificate verify failed"),
        "{e}"
    );
    assert!(untrusted.client().list_images().is_empty());
    drop(untrusted);

    let skip = format!(
        "[registries.hosts.\"{}\"]\nskip_tls_verify = true\n{no_network}",
        registry.addr()
    );
    let skipping = Vmletd::start_with(&[], &skip);
    let id = skipping
        .client()
        .pull(&image)
        .expect("PullImage with skip_tls_verify");
    assert!(id.starts_with("sha256:"), "{id}");
    drop(skipping);

    let ca = ca.display().to_string();
    let trusting = Vmletd::start_with_env(&[], no_network, &[("SSL_CERT_FILE", &ca)]);
    let trusted_id = trusting
        .client()
        .pull(&image)
        .expect("PullImage with the authority trusted");
    assert_eq!(trusted_id, id);
}

/// Durations no library can represent are refused before they reach one (a timeout of
/// 400000000000 s made the gRPC client panic, and release builds abort on panic), the
/// daemon lives on, and a pod's files are root's alone.
#[test]
fn huge_timeouts_are_refused_and_pod_files_are_private() {
    use std::os::unix::fs::PermissionsExt;

    let env = env();
    let d = &env.daemon;
    let c = d.client();
    c.pull(&env.image).expect("PullImage");
    let pod_cfg = pod_config("huge", &d.log_dir());
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");
    let id = run_container(
        &c,
        &pod,
        &pod_cfg,
        container_config(
            "c",
            &env.image,
            "echo ready; while true; do sleep 0.2; done",
        ),
    );
    wait_for_line(d, "c.log", "ready");

    for timeout in [400_000_000_000, i64::MAX, -1] {
        let e = c.stop(&id, timeout).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{timeout}: {e}");
        assert!(e.message().contains("timeout"), "{e}");
        let e = c.exec(&id, &["true"], timeout).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{timeout}: {e}");
    }
    // The daemon is alive and the container untouched.
    assert_eq!(
        c.status(&id).expect("ContainerStatus").state,
        v1::ContainerState::ContainerRunning as i32
    );
    let r = c.exec(&id, &["echo", "alive"], 30).expect("ExecSync");
    assert_eq!(String::from_utf8_lossy(&r.stdout), "alive\n");

    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let dir = d.state_dir().join("pods").join(&pod);
    assert_eq!(mode(&d.state_dir().join("pods")), 0o700);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&d.run_dir().join("pods").join(&pod)), 0o700);
    for f in ["scratch.ext4", "console.log", "vmm.log", "pod.json"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }

    c.stop(&id, 0).expect("StopContainer");
    c.remove_pod(&pod).expect("RemovePodSandbox");
    assert_clean(d);
}

/// A guest that does not answer when a restarted vmletd takes its VM over (here its
/// VMM is stopped with SIGSTOP) is not killed and its containers are not exited: they
/// are unknown until it answers again, and then followed as before.
#[test]
fn a_guest_that_does_not_answer_after_a_restart_is_unknown_until_it_does() {
    let mut env = env();
    let c = env.daemon.client();
    c.pull(&env.image).expect("PullImage");
    let cfg = pod_config("frozen", &env.daemon.log_dir());
    let pod = c.run_pod(cfg.clone()).expect("RunPodSandbox");
    let app = run_container(
        &c,
        &pod,
        &cfg,
        container_config("app", &env.image, "echo up; while true; do sleep 0.2; done"),
    );
    wait_for_line(&env.daemon, "app.log", "up");
    drop(c);

    env.daemon.signal_and_wait(libc::SIGKILL);
    let pid = c_status_pid(&env.daemon, &pod);
    // SAFETY: kill(2) on a VMM this test's daemon started.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    env.daemon.restart();
    let c = env.daemon.client();
    assert_eq!(
        c.list_pods(None).len(),
        1,
        "the pod is listed from the start"
    );
    let start = std::time::Instant::now();
    loop {
        let s = c.status(&app).expect("ContainerStatus");
        assert_ne!(
            s.state,
            v1::ContainerState::ContainerExited as i32,
            "marked exited: {s:?}"
        );
        if s.state == v1::ContainerState::ContainerUnknown as i32 {
            break;
        }
        assert!(start.elapsed() < WAIT, "never unknown: {s:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(env.daemon.vmm_pids().contains(&pid), "the VMM was killed");

    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    let start = std::time::Instant::now();
    while c.status(&app).unwrap().state != v1::ContainerState::ContainerRunning as i32 {
        assert!(start.elapsed() < WAIT, "never taken over again");
        std::thread::sleep(Duration::from_millis(500));
    }
    let r = c.exec(&app, &["echo", "back"], 30).expect("ExecSync");
    assert_eq!(String::from_utf8_lossy(&r.stdout), "back\n");
    c.stop(&app, 0).expect("StopContainer");
    c.remove_pod(&pod).expect("RemovePodSandbox");
    assert_clean(&env.daemon);
}

/// A container's log on a file system that fills up: copying pauses (the error shows
/// in verbose ContainerStatus), the container goes on, and once there is room again
/// every line arrives, once, in order.
#[test]
fn a_full_log_disk_pauses_the_copy_which_resumes_without_loss() {
    let env = env();
    let d = &env.daemon;
    let c = d.client();
    c.pull(&env.image).expect("PullImage");
    // The pod's log directory on its own small file system.
    let logs = d.log_dir().join("tiny");
    std::fs::create_dir_all(&logs).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(&logs)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(logs.clone());

    let cfg = pod_config("fills", &logs);
    let pod = c.run_pod(cfg.clone()).expect("RunPodSandbox");
    let id = c
        .create(
            &pod,
            container_config(
                "talker",
                &env.image,
                "i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done; sleep 3600",
            ),
            &cfg,
        )
        .expect("CreateContainer");
    // Fill the file system, then let the container talk.
    let filler = logs.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[b'x'; 4096]).is_ok() {}
    }
    c.start(&id).expect("StartContainer");
    let start = std::time::Instant::now();
    let error = loop {
        let info = c.status_info(&id).expect("ContainerStatus");
        if let Some(e) = info["logError"].as_str() {
            break e.to_owned();
        }
        assert!(start.elapsed() < WAIT, "no logError: {info}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(error.contains("No space left"), "{error}");
    assert_eq!(
        c.status(&id).unwrap().state,
        v1::ContainerState::ContainerRunning as i32
    );

    std::fs::remove_file(&filler).unwrap();
    let start = std::time::Instant::now();
    let text =
        |d: &std::path::Path| std::fs::read_to_string(d.join("talker.log")).unwrap_or_default();
    while !lines(&parse_log(&text(&logs)), "stdout")
        .iter()
        .any(|l| l == "line-2999")
    {
        assert!(start.elapsed() < WAIT, "the copy never resumed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = lines(&parse_log(&text(&logs)), "stdout");
    let want: Vec<String> = (0..3000).map(|i| format!("line-{i}")).collect();
    assert_eq!(out, want, "every line once, in order");
    assert!(c.status_info(&id).unwrap()["logError"].is_null());
    c.stop(&id, 0).expect("StopContainer");
    c.remove_pod(&pod).expect("RemovePodSandbox");
    assert_clean(d);
}

/// A root container writing to the guest's serial console for 10 s leaves the pod's
/// console.log capped: the first bytes (the boot) kept as they were, the last bytes
/// kept, and one line between them saying how many were dropped.
#[test]
fn a_container_flooding_the_console_leaves_a_capped_console_log() {
    // Small caps, so that the emulated machine's slow serial port overflows them.
    const HEAD: usize = 8 << 10;
    const TAIL: usize = 8 << 10;
    const MARKER: &str = " bytes of console output dropped]";
    let (registry, image) = busybox_registry("busybox:e2e");
    let d = &Vmletd::start_with_vm_keys(
        &["--insecure-registry", registry.addr()],
        &format!("console_log_head_bytes = {HEAD}\nconsole_log_tail_bytes = {TAIL}\n"),
    );
    let c = d.client();
    c.pull(&image).expect("PullImage");
    let mut pod_cfg = pod_config("flood", &d.log_dir());
    pod_cfg.linux = sandbox_security(v1::LinuxSandboxSecurityContext {
        privileged: true,
        ..Default::default()
    });
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");
    let console = d.state_dir().join("pods").join(&pod).join("console.log");
    let boot = std::fs::read(&console).expect("console.log");
    assert!(boot.len() < HEAD, "the boot alone filled the head");

    let mut cfg = container_config(
        "flood",
        &image,
        // Shell builtins on one open descriptor: a process per line would be too
        // slow to flood anything on the emulated machine.
        "[ -c /dev/ttyS0 ] || { echo no ttyS0; exit 1; }; \
         exec 3>/dev/ttyS0; echo FLOOD-START >&3; \
         end=$(( $(date +%s) + 10 )); n=0; \
         while [ $(date +%s) -lt $end ]; do \
           i=0; \
           while [ $i -lt 200 ]; do \
             echo \"flood line $n ................................................\" >&3; \
             n=$((n + 1)); i=$((i + 1)); \
           done; \
         done; \
         sleep 2; echo FLOOD-END-$n >&3; echo lines $n; echo flooded; sleep 3600",
    );
    cfg.linux = Some(v1::LinuxContainerConfig {
        security_context: Some(v1::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = run_container(&c, &pod, &pod_cfg, cfg);
    wait_for_line(d, "flood.log", "flooded");
    // The last line reaches the file at the next rewrite (at most a second after it).
    let start = std::time::Instant::now();
    let text = loop {
        let bytes = std::fs::read(&console).expect("console.log");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if text.contains("FLOOD-END-") || start.elapsed() > Duration::from_secs(10) {
            // The head is exactly what it was, plus output up to its cap.
            assert_eq!(&bytes[..boot.len()], &boot[..], "the boot output changed");
            assert!(
                bytes.len() <= HEAD + 63 + TAIL,
                "console.log holds {} bytes",
                bytes.len()
            );
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let tail_start = text.find(MARKER).unwrap_or_else(|| {
        panic!(
            "no dropped-bytes line in {} bytes; container output {:?}; the file ends {:?}",
            text.len(),
            lines(&log_of(d, "flood.log"), "stdout"),
            &text[text.len().saturating_sub(400)..]
        )
    });
    let count: u64 = text[..tail_start]
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("dropped-bytes count");
    assert!(count > 0, "nothing dropped: {count}");
    let tail = &text[tail_start..];
    let end_line = tail
        .lines()
        .find(|l| l.starts_with("FLOOD-END-"))
        .unwrap_or_else(|| {
            panic!(
                "no end line in the tail: {:?}",
                &tail[tail.len().saturating_sub(300)..]
            )
        });
    let lines: u64 = end_line["FLOOD-END-".len()..]
        .trim()
        .parse()
        .expect("line count");
    // Each flood line is about 70 bytes: what was written and what was kept add up.
    assert!(
        lines * 60 > count,
        "{lines} lines written, {count} bytes dropped"
    );
    eprintln!("flood: {lines} lines, {count} bytes dropped");

    // The VM is unharmed.
    let r = c.exec(&id, &["echo", "alive"], 30).expect("ExecSync");
    assert_eq!(String::from_utf8_lossy(&r.stdout), "alive\n");
    c.stop(&id, 0).expect("StopContainer");
    c.remove_pod(&pod).expect("RemovePodSandbox");
    assert_clean(d);
}

/// The templates the daemon has made (directories with their description).
fn made_templates(d: &Vmletd) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(d.state_dir().join("templates"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.retain(|p: &std::path::PathBuf| p.join("template.json").exists());
    dirs
}

/// The argument list of process `pid`.
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// With templates on (as by default), the first pod boots and a template of its
/// shape is made in the background; the pods after it are restored from that
/// template: each a guest of its own (random numbers, boot ID, clock, memory), with
/// its containers, logs and exec working, under a jailed VMM that reads the template
/// read-only, and taken over by a restarted daemon like a booted pod.
#[test]
fn pods_restored_from_one_template_share_no_random_numbers() {
    let (_registry, image) = busybox_registry("busybox:template");
    let mut d = Vmletd::start_with_vm_keys(
        &["--insecure-registry", _registry.addr()],
        "templates = true\n",
    );
    let c = d.client();
    c.pull(&image).expect("PullImage");
    let log_dir = d.log_dir();
    let first_cfg = pod_config("first", &log_dir);
    let first = c.run_pod(first_cfg).expect("RunPodSandbox");
    assert!(
        !cmdline(c_status_pid(&d, &first))
            .iter()
            .any(|a| a.starts_with("--restore")),
        "the first pod of a shape boots"
    );
    let start = std::time::Instant::now();
    while made_templates(&d).is_empty() {
        assert!(start.elapsed() < WAIT * 3, "no template was made");
        std::thread::sleep(Duration::from_millis(500));
    }
    let template = made_templates(&d).remove(0);
    // Root's and read-only: every restored VM maps it.
    for file in ["state", "memory"] {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(template.join(file)).unwrap();
        assert_eq!((meta.uid(), meta.permissions().mode() & 0o777), (0, 0o444));
    }

    // The restored pods are shaped as a kubelet sends them: a Deployment pod's long
    // name and no hostname, the restricted profile's contexts, and the host mounts
    // of /etc/hosts, the termination log, a configMap and the service-account token.
    let kubelet = tempfile::tempdir().unwrap();
    let mut restored = Vec::new();
    for (i, name) in ["restored-a", "restored-b"].into_iter().enumerate() {
        let uid = format!("7c1d2e3f-4a5b-4c6d-8e9f-{i:012}");
        let kpod = KubeletPod::new(kubelet.path(), &uid);
        let cfg = kubelet_pod_config(name, &uid, &log_dir);
        let pod = c.run_pod(cfg.clone()).expect("RunPodSandbox");
        let pid = c_status_pid(&d, &pod);
        let restore = format!("--restore={}", template.display());
        assert!(cmdline(pid).contains(&restore), "{:?}", cmdline(pid));
        // The jailed VMM sees the template read-only.
        let seen = in_jail(&d, &pod, &template.join("memory"));
        assert!(
            std::fs::OpenOptions::new().write(true).open(&seen).is_err(),
            "the template is writable from the jail"
        );
        let mut app = kubelet_container(
            &kpod,
            "app",
            &image,
            "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
             cat /proc/sys/kernel/random/boot_id; date +%s; \
             echo \"$(id -u) $(hostname) $(cat /etc/config/a) $(grep -c x2x4q /etc/hosts)\"; \
             cat /var/run/secrets/kubernetes.io/serviceaccount/token; echo; \
             echo restored > /dev/termination-log; cat /dev/termination-log; sleep 3600",
        );
        app.log_path = "app.log".into();
        let ctr = run_container(&c, &pod, &cfg, app);
        let log = std::path::Path::new(&cfg.log_directory).join("app.log");
        restored.push((pod, ctr, name, log, kpod, cfg));
    }
    let out = |log: &std::path::Path| {
        let start = std::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let l = lines(&parse_log(&text), "stdout");
            if l.len() >= 6 {
                return l;
            }
            assert!(start.elapsed() < WAIT, "{}: {l:?}", log.display());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let (a, b) = (out(&restored[0].3), out(&restored[1].3));
    for (l, (_, _, name, _, _, cfg)) in [&a, &b].into_iter().zip(&restored) {
        // The hostname the kubelet would make of the long name: cut to 63.
        let pod_name = &cfg.metadata.as_ref().unwrap().name;
        assert!(pod_name.len() > 63, "{pod_name}");
        assert_eq!(
            l[3],
            format!("1000 {} 1 1", &pod_name[..63]),
            "{name}: {l:?}"
        );
        assert_eq!(l[4], "eyJhbGciOiJSUzI1NiJ9.e30.sig", "{name}: {l:?}");
        assert_eq!(l[5], "restored", "{name}: {l:?}");
    }
    assert_eq!(a[0].len(), 64, "{a:?}");
    assert_ne!(
        a[0], b[0],
        "two pods from one template drew the same random numbers"
    );
    assert_ne!(a[1], b[1], "two pods from one template share a boot ID");
    // The wall clock is the host's, not the template's.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for clock in [&a[2], &b[2]] {
        let t: i64 = clock.parse().unwrap();
        assert!((now - t).abs() < 120, "guest clock {t}, host {now}");
    }
    // Exec, and a daemon restart takes the restored pods over.
    drop(c);
    d.signal_and_wait(libc::SIGKILL);
    d.restart();
    let c = d.client();
    for (pod, ctr, ..) in &restored {
        let st = c.pod_status(pod).unwrap().status.unwrap().state;
        assert_eq!(st, v1::PodSandboxState::SandboxReady as i32);
        let r = c.exec(ctr, &["echo", "restored"], 30).expect("ExecSync");
        assert_eq!(String::from_utf8_lossy(&r.stdout), "restored\n");
    }
    // The termination message reaches the host file once the container has ended.
    for (_, ctr, name, _, kpod, _) in &restored {
        c.stop(ctr, 5).expect("StopContainer");
        let written = || std::fs::read_to_string(kpod.termination_log("app")).unwrap();
        let start = std::time::Instant::now();
        while written() != "restored\n" {
            assert!(
                start.elapsed() < PROMPT,
                "{name}: termination log {:?}",
                written()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for (pod, ..) in &restored {
        c.stop_pod(pod).expect("StopPodSandbox");
        c.remove_pod(pod).expect("RemovePodSandbox");
    }
    c.stop_pod(&first).expect("StopPodSandbox");
    c.remove_pod(&first).expect("RemovePodSandbox");
    assert_clean(&d);
    assert_eq!(
        made_templates(&d).len(),
        1,
        "the template stays for the next pods"
    );
}
