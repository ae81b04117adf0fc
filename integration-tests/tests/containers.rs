//! Containers inside a real guest: vmlet-init's container supervisor end to end, through
//! the VMM and the gRPC protocol, with a busybox image on a virtio-blk drive and the
//! writable layers on an ext4 scratch disk.

// Test-only crate: a failed setup step panics with its message, which is the test's
// failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tonic::Code;
use vmlet_integration_tests::agent::{req, Output, CALL_TIMEOUT};
use vmlet_integration_tests::{drive, images, net, sh, Guest, GuestAgent, GuestConfig, Netns};
use vmlet_proto::agent as pb;

const WAIT: Duration = Duration::from_secs(120);
const IMAGE: &str = "img0";
const SCRATCH: &str = "scratch";

/// A booted guest with the busybox image and a scratch disk attached.
struct Pod {
    guest: Guest,
    agent: GuestAgent,
    _images: tempfile::TempDir,
}

fn pod() -> Pod {
    pod_with(GuestConfig::default())
}

/// A pod VM: `cfg` with the image and scratch drives added.
fn pod_with(cfg: GuestConfig) -> Pod {
    let dir = tempfile::tempdir().unwrap();
    let image = images::busybox_erofs(dir.path());
    let scratch = images::scratch_disk(&dir.path().join("scratch.ext4"), 64);
    let guest = Guest::boot(GuestConfig {
        mem_mib: 512,
        drives: vec![drive(IMAGE, &image, true), drive(SCRATCH, &scratch, false)],
        ..cfg
    });
    let agent = guest.agent();
    Pod {
        guest,
        agent,
        _images: dir,
    }
}

fn process(script: &str) -> pb::Process {
    pb::Process {
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

fn spec(id: &str, process: pb::Process) -> pb::ContainerSpec {
    pb::ContainerSpec {
        container_id: id.into(),
        rootfs: Some(pb::Rootfs {
            image_serial: IMAGE.into(),
            image_fstype: "erofs".into(),
            scratch_serial: SCRATCH.into(),
            ..Default::default()
        }),
        process: Some(process),
        ..Default::default()
    }
}

impl Pod {
    /// Creates and starts a container running `script`.
    fn run(&self, id: &str, p: pb::Process) {
        self.agent
            .create(spec(id, p))
            .unwrap_or_else(|e| panic!("create {id}: {e}"));
        self.agent
            .start(id)
            .unwrap_or_else(|e| panic!("start {id}: {e}"));
    }

    /// Runs `script` in a new container to completion; returns its status and output.
    fn run_to_end(&self, id: &str, p: pb::Process) -> (pb::ProcessStatus, Output) {
        self.run(id, p);
        let out = self.agent.output(id, "", WAIT);
        let status = self.agent.wait(id, "", WAIT).expect("WaitProcess");
        (status, out)
    }

    fn shutdown(mut self) {
        self.agent.shutdown().expect("Shutdown");
        let status = self.guest.wait(Duration::from_secs(60));
        assert_eq!(status.code(), Some(0));
    }
}

#[test]
fn echo_exit_codes_and_process_settings() {
    let pod = pod();
    let (status, out) = pod.run_to_end("echo", process("echo hello; echo oops >&2"));
    assert_eq!(out.out(), "hello\n");
    assert_eq!(out.err(), "oops\n");
    assert_eq!(status.exit_code, 0);
    assert_eq!(status.reason, "Completed");
    assert_eq!(status.state, pb::ProcessState::Exited as i32);
    assert!(
        status.started_at_ns >= status.created_at_ns
            && status.finished_at_ns >= status.started_at_ns
    );

    let (status, _) = pod.run_to_end("exit7", process("exit 7"));
    assert_eq!((status.exit_code, status.reason.as_str()), (7, "Error"));

    // env, cwd (created if missing), user and groups.
    let mut p = process("echo $GREETING; pwd; id -u; id -g; id -G");
    p.env = vec!["GREETING=hi there".into()];
    p.cwd = "/work/dir".into();
    p.user = Some(pb::User {
        uid: 1000,
        gid: 1000,
        additional_gids: vec![2000],
        ..Default::default()
    });
    let (status, out) = pod.run_to_end("settings", p);
    assert_eq!(status.exit_code, 0, "{}", out.err());
    assert_eq!(out.out(), "hi there\n/work/dir\n1000\n1000\n1000 2000\n");

    // A program that does not exist fails at start with a clear message.
    pod.agent
        .create(spec(
            "missing",
            pb::Process {
                args: vec!["/no/such/program".into()],
                ..Default::default()
            },
        ))
        .unwrap();
    let err = pod.agent.start("missing").unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("/no/such/program"), "{err}");
    let status = pod.agent.wait("missing", "", WAIT).unwrap();
    assert_eq!(status.reason, "StartError");

    // The container sees its own PID namespace and the standard mounts.
    let (status, out) = pod.run_to_end(
        "ns",
        process("echo $$; test -c /dev/null && test -d /dev/pts && test -d /proc/self && cat /etc/image-marker"),
    );
    assert_eq!(status.exit_code, 0, "{}", out.err());
    assert_eq!(out.out(), "1\nfrom the image\n");
    pod.shutdown();
}

#[test]
fn stdin_pipes_and_terminals() {
    let pod = pod();
    // stdin through a pipe.
    let mut p = process("cat; echo end");
    p.open_stdin = true;
    pod.run("cat", p);
    pod.agent.write_stdin("cat", "", b"line1\n").unwrap();
    pod.agent.write_stdin("cat", "", b"line2\n").unwrap();
    pod.agent.close_stdin("cat", "").unwrap();
    let out = pod.agent.output("cat", "", WAIT);
    assert_eq!(out.out(), "line1\nline2\nend\n");
    assert_eq!(pod.agent.wait("cat", "", WAIT).unwrap().exit_code, 0);
    // Once closed, stdin stays closed.
    let err = pod.agent.write_stdin("cat", "", b"late").unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");

    // A terminal with a window size that changes.
    let mut p = process("stty size; read x; stty size; echo got:$x; tty");
    p.terminal = true;
    p.open_stdin = true;
    p.terminal_size = Some(pb::TerminalSize { rows: 24, cols: 80 });
    pod.run("tty", p);
    let first = pod
        .agent
        .read_until("tty", "", pb::Stream::Stdout, WAIT, |d| {
            String::from_utf8_lossy(d).contains("24 80")
        });
    assert!(String::from_utf8_lossy(&first).contains("24 80"));
    let mut c = pod.agent.agent.clone();
    pod.agent
        .call(
            CALL_TIMEOUT,
            c.resize_tty(req(
                pb::ResizeTtyRequest {
                    container_id: "tty".into(),
                    exec_id: String::new(),
                    size: Some(pb::TerminalSize {
                        rows: 40,
                        cols: 100,
                    }),
                },
                CALL_TIMEOUT,
            )),
        )
        .expect("ResizeTty");
    pod.agent.write_stdin("tty", "", b"hello\n").unwrap();
    let out = pod.agent.output("tty", "", WAIT);
    let text = out.out();
    assert!(text.contains("40 100"), "{text:?}");
    assert!(text.contains("got:hello"), "{text:?}");
    assert!(text.contains("/dev/pts/0"), "{text:?}");
    assert!(out.stderr.is_empty(), "a terminal has one stream");
    assert_eq!(pod.agent.wait("tty", "", WAIT).unwrap().exit_code, 0);

    // Resizing a process without a terminal is refused.
    let mut c = pod.agent.agent.clone();
    let err = pod
        .agent
        .call(
            CALL_TIMEOUT,
            c.resize_tty(req(
                pb::ResizeTtyRequest {
                    container_id: "cat".into(),
                    exec_id: String::new(),
                    size: Some(pb::TerminalSize { rows: 1, cols: 1 }),
                },
                CALL_TIMEOUT,
            )),
        )
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    pod.shutdown();
}

#[test]
fn containers_share_the_network_but_not_their_files() {
    let pod = pod();
    pod.run(
        "server",
        process("echo mine > /tmp/server-only; nc -l -p 8080"),
    );
    let (status, out) = pod.run_to_end(
        "client",
        process(
            "test ! -e /tmp/server-only && echo isolated; \
             i=0; until echo hello-from-client | nc 127.0.0.1 8080; do \
               i=$((i+1)); [ $i -gt 300 ] && exit 1; sleep 0.2; done",
        ),
    );
    assert_eq!(status.exit_code, 0, "{}", out.err());
    assert_eq!(out.out(), "isolated\n");
    let got = pod.agent.output("server", "", WAIT);
    assert_eq!(got.out(), "hello-from-client\n");
    assert_eq!(pod.agent.wait("server", "", WAIT).unwrap().exit_code, 0);
    pod.shutdown();
}

#[test]
fn limits_contain_memory_hogs_and_fork_bombs() {
    let pod = pod();
    let mut s = spec(
        "hog",
        process("dd if=/dev/zero of=/dev/null bs=96M count=1; echo survived"),
    );
    s.resources = Some(pb::Resources {
        memory_limit_bytes: 32 << 20,
        ..Default::default()
    });
    pod.agent.create(s).unwrap();
    pod.agent.start("hog").unwrap();
    let status = pod.agent.wait("hog", "", WAIT).unwrap();
    assert_eq!(status.reason, "OOMKilled", "{status:?}");
    assert_eq!(status.exit_code, 137, "{status:?}");

    // A process storm stops at the pids limit; init keeps answering.
    let mut s = spec("storm", process("echo ready; exec sleep 1000"));
    s.resources = Some(pb::Resources {
        pids_limit: 16,
        ..Default::default()
    });
    pod.agent.create(s).unwrap();
    pod.agent.start("storm").unwrap();
    pod.agent
        .read_until("storm", "", pb::Stream::Stdout, WAIT, |d| {
            d.ends_with(b"ready\n")
        });
    pod.agent
        .exec(
            "storm",
            "bomb",
            // The sleepers must not hold the exec's output pipes open.
            process(
                "i=0; while [ $i -lt 100 ]; do sleep 1000 </dev/null >/dev/null 2>&1 & i=$((i+1)); done; echo unreachable",
            ),
        )
        .unwrap();
    let out = pod.agent.output("storm", "bomb", WAIT);
    let status = pod.agent.wait("storm", "bomb", WAIT).unwrap();
    assert_ne!(status.exit_code, 0, "{out:?}");
    assert!(!out.out().contains("unreachable"), "{out:?}");
    assert!(out.err().contains("fork"), "{out:?}");
    let mut c = pod.agent.agent.clone();
    let stats = pod
        .agent
        .call(
            CALL_TIMEOUT,
            c.stats(req(
                pb::StatsRequest {
                    container_ids: vec!["storm".into()],
                },
                CALL_TIMEOUT,
            )),
        )
        .expect("Stats");
    let storm = &stats.containers[0];
    assert!(storm.pids > 8 && storm.pids <= 16, "{storm:?}");
    assert!(storm.memory_usage_bytes > 0, "{storm:?}");
    let guest = stats.guest.unwrap_or_default();
    assert!(guest.memory_total_bytes > 256 << 20, "{guest:?}");
    assert!(pod.agent.health().is_ok());
    pod.agent.remove("storm", true).unwrap();
    pod.agent.remove("hog", false).unwrap();
    assert_eq!(pod.agent.health().unwrap().containers, 0);
    pod.shutdown();
}

#[test]
fn exec_joins_a_running_container() {
    let pod = pod();
    pod.run(
        "main",
        process("echo data > /tmp/state; echo started; exec sleep 1000"),
    );
    let started = pod
        .agent
        .read_until("main", "", pb::Stream::Stdout, WAIT, |d| {
            String::from_utf8_lossy(d).contains("started")
        });
    assert_eq!(String::from_utf8_lossy(&started), "started\n");
    // The file is written; poll through exec until the main process is `sleep`.
    let mut p = process(
        "cat /tmp/state; cat /proc/1/cmdline | tr '\\0' ' '; echo; cat /proc/self/cgroup; exit 3",
    );
    p.args = p.args.clone();
    let mut out = Output::default();
    for attempt in 0..50 {
        let id = format!("e{attempt}");
        pod.agent.exec("main", &id, p.clone()).unwrap();
        out = pod.agent.output("main", &id, WAIT);
        let status = pod.agent.wait("main", &id, WAIT).unwrap();
        assert_eq!(status.exit_code, 3, "{}", out.err());
        if out.out().starts_with("data\nsleep 1000 \n") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = out.out();
    assert!(text.starts_with("data\nsleep 1000 \n"), "{text:?}");
    assert!(text.contains("0::/containers/main"), "{text:?}");

    // With a terminal and stdin.
    let mut p = process("tty; read line; echo got:$line");
    p.terminal = true;
    p.open_stdin = true;
    pod.agent.exec("main", "tty", p).unwrap();
    pod.agent.write_stdin("main", "tty", b"abc\n").unwrap();
    let out = pod.agent.output("main", "tty", WAIT).out();
    assert!(
        out.contains("/dev/pts/") && out.contains("got:abc"),
        "{out:?}"
    );
    assert_eq!(pod.agent.wait("main", "tty", WAIT).unwrap().exit_code, 0);

    // Exec IDs are unique while the process is known; the container must run.
    pod.agent
        .exec("main", "long", process("sleep 1000"))
        .unwrap();
    let err = pod.agent.exec("main", "long", process("true")).unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    pod.agent.signal("main", "", 9).unwrap();
    let status = pod.agent.wait("main", "", WAIT).unwrap();
    assert_eq!((status.exit_code, status.signal), (137, 9));
    let err = pod
        .agent
        .exec("main", "after", process("true"))
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    pod.agent.remove("main", false).unwrap();
    pod.shutdown();
}

#[test]
fn signals_stop_containers() {
    let pod = pod();
    // PID 1 of its namespace: SIGTERM only works if the program handles it.
    pod.run(
        "trap",
        process("trap 'echo term; exit 3' TERM; echo ready; while true; do sleep 0.1; done"),
    );
    pod.agent
        .read_until("trap", "", pb::Stream::Stdout, WAIT, |d| {
            d.ends_with(b"ready\n")
        });
    pod.agent.signal("trap", "", 15).unwrap();
    let status = pod.agent.wait("trap", "", WAIT).unwrap();
    assert_eq!(status.exit_code, 3);
    assert!(pod.agent.output("trap", "", WAIT).out().ends_with("term\n"));

    // In the pod's shared PID namespace the default action applies.
    let mut s = spec("shared", process("exec sleep 1000"));
    s.share_pod_pid_namespace = true;
    pod.agent.create(s).unwrap();
    pod.agent.start("shared").unwrap();
    pod.agent.signal("shared", "", 15).unwrap();
    let status = pod.agent.wait("shared", "", WAIT).unwrap();
    assert_eq!((status.exit_code, status.signal), (143, 15));

    // SIGKILL always works; a signal to an exited process is refused.
    pod.run("kill", process("exec sleep 1000"));
    let err = pod
        .agent
        .wait("kill", "", Duration::from_secs(3))
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    pod.agent.signal("kill", "", 9).unwrap();
    let status = pod.agent.wait("kill", "", WAIT).unwrap();
    assert_eq!(
        (status.exit_code, status.signal, status.reason.as_str()),
        (137, 9, "Error")
    );
    let err = pod.agent.signal("kill", "", 9).unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    pod.shutdown();
}

#[test]
fn writes_stay_in_the_container_and_vanish_with_it() {
    let pod = pod();
    let (status, out) = pod.run_to_end(
        "writer",
        process("echo new > /newfile && echo changed > /etc/image-marker && rm /bin/true && dd if=/dev/zero of=/big bs=1M count=4 2>/dev/null && sync"),
    );
    assert_eq!(status.exit_code, 0, "{}", out.err());
    let mut c = pod.agent.agent.clone();
    let stats = pod
        .agent
        .call(
            CALL_TIMEOUT,
            c.stats(req(pb::StatsRequest::default(), CALL_TIMEOUT)),
        )
        .unwrap();
    let w = stats
        .containers
        .iter()
        .find(|c| c.container_id == "writer")
        .unwrap();
    assert!(w.writable_layer_bytes >= 4 << 20, "{w:?}");
    assert!(w.writable_layer_inodes >= 3, "{w:?}");
    let layers = format!("/run/vmlet/scratch/{SCRATCH}/layers");
    assert!(pod
        .agent
        .run(&format!("ls {layers}"))
        .stdout
        .starts_with(b"writer"));

    // A running container is not removed without force.
    pod.run("reader", process("cat /etc/image-marker; test -e /newfile && echo present || echo absent; test -e /bin/true && echo has-true; exec sleep 1000"));
    let err = pod.agent.remove("reader", false).unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    let out = pod
        .agent
        .read_until("reader", "", pb::Stream::Stdout, WAIT, |d| {
            d.ends_with(b"has-true\n")
        });
    assert_eq!(
        String::from_utf8_lossy(&out),
        "from the image\nabsent\nhas-true\n"
    );

    pod.agent.remove("writer", false).unwrap();
    pod.agent.remove("reader", true).unwrap();
    let left = pod.agent.run(&format!(
        "ls {layers}; ls /sys/fs/cgroup/containers | grep -v '^cgroup\\|^cpu\\|^memory\\|^pids\\|^io'; grep -c /run/vmlet/containers /proc/mounts"
    ));
    assert_eq!(
        String::from_utf8_lossy(&left.stdout),
        "0\n",
        "leftovers: {left:?}"
    );
    let err = pod.agent.remove("writer", false).unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    pod.shutdown();
}

#[test]
fn guest_configuration_reaches_containers() {
    let pod = pod();
    let mut c = pod.agent.agent.clone();
    pod.agent
        .call(
            CALL_TIMEOUT,
            c.configure_guest(req(
                pb::ConfigureGuestRequest {
                    hostname: "pod-a".into(),
                    dns: Some(pb::Dns {
                        servers: vec!["10.96.0.10".into()],
                        searches: vec!["default.svc.cluster.local".into()],
                        options: vec!["ndots:5".into()],
                    }),
                    sysctls: [(
                        "net.ipv4.ip_unprivileged_port_start".to_owned(),
                        "0".to_owned(),
                    )]
                    .into(),
                    ..Default::default()
                },
                CALL_TIMEOUT,
            )),
        )
        .expect("ConfigureGuest");
    let mut w = pod.agent.agent.clone();
    pod.agent
        .call(
            CALL_TIMEOUT,
            w.write_file(req(
                pb::WriteFileRequest {
                    path: "volumes/v1/hello.txt".into(),
                    data: b"copied volume\n".to_vec(),
                    mode: 0o640,
                    ..Default::default()
                },
                CALL_TIMEOUT,
            )),
        )
        .expect("WriteFile");
    let mut s = spec(
        "cfg",
        process("hostname; cat /etc/hostname /etc/resolv.conf /data/hello.txt; cat /proc/sys/net/ipv4/ip_unprivileged_port_start; touch /data/x 2>/dev/null || echo read-only"),
    );
    s.mounts = vec![pb::Mount {
        destination: "/data".into(),
        r#type: "bind".into(),
        source: "/run/vmlet/shared/volumes/v1".into(),
        options: vec!["rbind".into(), "ro".into()],
        subpath: String::new(),
    }];
    pod.agent.create(s).unwrap();
    pod.agent.start("cfg").unwrap();
    let out = pod.agent.output("cfg", "", WAIT);
    assert_eq!(
        out.out(),
        "pod-a\npod-a\nnameserver 10.96.0.10\nsearch default.svc.cluster.local\noptions ndots:5\ncopied volume\n0\nread-only\n",
        "stderr: {}",
        out.err()
    );
    pod.shutdown();
}

#[test]
fn bad_requests_get_errors_and_init_stays_healthy() {
    let pod = pod();
    let a = &pod.agent;
    let code = |r: Result<u32, tonic::Status>| r.map(drop).unwrap_err().code();
    assert_eq!(
        code(a.create(spec("", process("true")))),
        Code::InvalidArgument
    );
    assert_eq!(
        code(a.create(spec("../../etc", process("true")))),
        Code::InvalidArgument
    );
    let mut s = spec("norootfs", process("true"));
    s.rootfs = None;
    assert_eq!(code(a.create(s)), Code::InvalidArgument);
    let mut s = spec("noargs", process("true"));
    s.process = Some(pb::Process::default());
    assert_eq!(code(a.create(s)), Code::InvalidArgument);
    let mut s = spec("badenv", process("true"));
    s.process.as_mut().unwrap().env = vec!["NOEQUALS".into()];
    assert_eq!(code(a.create(s)), Code::InvalidArgument);
    let mut s = spec("badcap", process("true"));
    s.process.as_mut().unwrap().capabilities = Some(pb::Capabilities {
        bounding: vec!["CAP_FLY".into()],
        ..Default::default()
    });
    assert_eq!(code(a.create(s)), Code::InvalidArgument);
    let mut s = spec("noimage", process("true"));
    s.rootfs.as_mut().unwrap().image_serial = "nosuchdrive".into();
    assert_eq!(code(a.create(s)), Code::NotFound);
    let mut s = spec("badmount", process("true"));
    s.mounts = vec![pb::Mount {
        destination: "/data".into(),
        r#type: "bind".into(),
        source: "/nonexistent/dir".into(),
        options: vec![],
        subpath: String::new(),
    }];
    let err = a.create(s).unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("/nonexistent/dir"), "{err}");

    a.create(spec("dup", process("true"))).unwrap();
    assert_eq!(
        code(a.create(spec("dup", process("true")))),
        Code::AlreadyExists
    );
    assert_eq!(a.start("nope").unwrap_err().code(), Code::NotFound);
    a.start("dup").unwrap();
    assert_eq!(a.start("dup").unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(
        a.signal("dup", "", 999).unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        a.signal("dup", "nope", 9).unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        a.wait("nope", "", CALL_TIMEOUT).unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        a.read("dup", "", pb::Stream::Unspecified, 0, CALL_TIMEOUT)
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let mut c = a.agent.clone();
    for path in ["../escape", "/etc/passwd", ""] {
        let err = a
            .call(
                CALL_TIMEOUT,
                c.write_file(req(
                    pb::WriteFileRequest {
                        path: path.into(),
                        data: b"x".to_vec(),
                        ..Default::default()
                    },
                    CALL_TIMEOUT,
                )),
            )
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{path}: {err}");
    }
    let bad_guest = [
        pb::ConfigureGuestRequest {
            hostname: "bad host!".into(),
            ..Default::default()
        },
        pb::ConfigureGuestRequest {
            sysctls: [("kernel.panic".to_owned(), "1".to_owned())].into(),
            ..Default::default()
        },
        pb::ConfigureGuestRequest {
            interfaces: vec![pb::Interface {
                mac: "not-a-mac".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
    ];
    for r in bad_guest {
        let err = a
            .call(CALL_TIMEOUT, c.configure_guest(req(r, CALL_TIMEOUT)))
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    }
    let err = a
        .call(
            CALL_TIMEOUT,
            c.configure_guest(req(
                pb::ConfigureGuestRequest {
                    interfaces: vec![pb::Interface {
                        mac: "02:00:00:00:00:99".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                CALL_TIMEOUT,
            )),
        )
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");

    // Nothing of the failed creates is left, and the guest still works.
    let h = a.health().unwrap();
    assert_eq!(h.containers, 1);
    let left = a.run("ls /sys/fs/cgroup/containers | grep -c -v '^cgroup\\|^cpu\\|^memory\\|^pids\\|^io'; ls /run/vmlet/containers");
    assert_eq!(
        String::from_utf8_lossy(&left.stdout),
        "1\ndup\n",
        "{left:?}"
    );
    let (status, out) = pod.run_to_end("after", process("echo still fine"));
    assert_eq!((status.exit_code, out.out().as_str()), (0, "still fine\n"));
    pod.shutdown();
}

#[test]
fn capabilities_rlimits_and_privileges() {
    let pod = pod();
    let caps = "grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status | tr -s '\\t' ' '";
    // containerd's default set, for root and (bounding only) for other users.
    let (_, out) = pod.run_to_end("root", process(caps));
    assert_eq!(
        out.out(),
        "CapEff: 00000000a80425fb\nCapBnd: 00000000a80425fb\nNoNewPrivs: 0\n"
    );
    let mut p = process(caps);
    p.user = Some(pb::User {
        uid: 1000,
        gid: 1000,
        additional_gids: vec![],
        ..Default::default()
    });
    p.no_new_privileges = true;
    let (_, out) = pod.run_to_end("user", p);
    assert_eq!(
        out.out(),
        "CapEff: 0000000000000000\nCapBnd: 00000000a80425fb\nNoNewPrivs: 1\n"
    );
    // Explicit sets and rlimits.
    let mut p = process(&format!("{caps}; ulimit -n; ulimit -Hn"));
    p.capabilities = Some(pb::Capabilities {
        bounding: vec!["CAP_CHOWN".into(), "CAP_NET_ADMIN".into()],
        effective: vec!["CAP_CHOWN".into(), "CAP_NET_ADMIN".into()],
        permitted: vec!["CAP_CHOWN".into(), "CAP_NET_ADMIN".into()],
        ..Default::default()
    });
    p.rlimits = vec![pb::Rlimit {
        r#type: "RLIMIT_NOFILE".into(),
        soft: 123,
        hard: 456,
    }];
    let (status, out) = pod.run_to_end("explicit", p);
    assert_eq!(status.exit_code, 0, "{}", out.err());
    assert_eq!(
        out.out(),
        "CapEff: 0000000000001001\nCapBnd: 0000000000001001\nNoNewPrivs: 0\n123\n456\n"
    );
    // A read-only root file system.
    let mut s = spec(
        "ro",
        process("touch /x 2>/dev/null || echo read-only; cat /etc/image-marker"),
    );
    s.rootfs.as_mut().unwrap().readonly = true;
    pod.agent.create(s).unwrap();
    pod.agent.start("ro").unwrap();
    assert_eq!(
        pod.agent.output("ro", "", WAIT).out(),
        "read-only\nfrom the image\n"
    );
    pod.shutdown();
}

#[test]
fn guest_network_is_configured_by_mac() {
    let ns = Netns::new("ctest");
    sh(&format!(
        "ip -n {n} tuntap add vmtap1 mode tap && ip -n {n} addr add 10.79.0.1/24 dev vmtap1 && \
         ip -n {n} addr add fd79::1/64 dev vmtap1 nodad && ip -n {n} link set vmtap1 up",
        n = ns.0
    ));
    let pod = pod_with(GuestConfig {
        net: vec![net("vmtap1", "02:00:00:79:00:02")],
        netns: Some(ns.0.clone()),
        ..Default::default()
    });
    let mut c = pod.agent.agent.clone();
    let configure = pb::ConfigureGuestRequest {
        interfaces: vec![pb::Interface {
            mac: "02:00:00:79:00:02".into(),
            // The pod's MAC, as when the VM booted before CNI ADD told it.
            new_mac: "02:00:00:79:00:22".into(),
            name: "pod0".into(),
            addresses: vec!["10.79.0.2/24".into(), "fd79::2/64".into()],
            mtu: 1400,
        }],
        routes: vec![pb::Route {
            destination: "0.0.0.0/0".into(),
            gateway: "10.79.0.1".into(),
            interface_mac: String::new(),
        }],
        ..Default::default()
    };
    pod.agent
        .call(
            CALL_TIMEOUT,
            c.configure_guest(req(configure.clone(), CALL_TIMEOUT)),
        )
        .expect("ConfigureGuest");
    // Configuring twice is harmless.
    pod.agent
        .call(
            CALL_TIMEOUT,
            c.configure_guest(req(configure, CALL_TIMEOUT)),
        )
        .expect("ConfigureGuest again");
    sh(&format!(
        "ip netns exec {} ping -c 2 -W 10 10.79.0.2 >/dev/null",
        ns.0
    ));
    sh(&format!(
        "ip netns exec {} ping -6 -c 2 -W 10 fd79::2 >/dev/null",
        ns.0
    ));
    // Containers share the configured network.
    let (status, out) = pod.run_to_end(
        "net",
        process("cat /sys/class/net/pod0/mtu; ip route | grep ^default; ping -c 1 -W 10 10.79.0.1 >/dev/null && echo reached; cat /sys/class/net/pod0/address"),
    );
    assert_eq!(status.exit_code, 0, "{}", out.err());
    let text = out.out();
    assert!(
        text.starts_with("1400\ndefault via 10.79.0.1 dev pod0"),
        "{text:?}"
    );
    assert!(text.ends_with("reached\n02:00:00:79:00:22\n"), "{text:?}");
    pod.shutdown();
}
