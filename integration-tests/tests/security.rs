//! The container security context inside a real guest, checked from inside the
//! containers with busybox: capabilities, the cgroup device filter, privileged
//! containers, masked and read-only paths, seccomp, user names and groups from the
//! image, and the pod-wide PID and IPC namespaces. vmlet-init is driven directly over
//! the agent protocol, as vmletd drives it.

// Test-only crate: a failed setup step panics with its message, which is the test's
// failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tonic::Code;
use vmlet_integration_tests::agent::Output;
use vmlet_integration_tests::{drive, images, Guest, GuestAgent, GuestConfig};
use vmlet_proto::agent as pb;

const WAIT: Duration = Duration::from_secs(120);
const IMAGE: &str = "img0";
const SCRATCH: &str = "scratch";

/// Every capability (what vmletd sends a privileged container).
const ALL_CAPS: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A booted guest with the busybox image (its own /etc/passwd and /etc/group, see
/// `images::busybox_erofs`) and a scratch disk.
struct Pod {
    guest: Guest,
    agent: GuestAgent,
    _images: tempfile::TempDir,
}

fn pod() -> Pod {
    let dir = tempfile::tempdir().unwrap();
    let image = images::busybox_erofs(dir.path());
    let scratch = images::scratch_disk(&dir.path().join("scratch.ext4"), 64);
    let guest = Guest::boot(GuestConfig {
        mem_mib: 512,
        drives: vec![drive(IMAGE, &image, true), drive(SCRATCH, &scratch, false)],
        ..Default::default()
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

fn user(f: impl FnOnce(&mut pb::User)) -> Option<pb::User> {
    let mut u = pb::User::default();
    f(&mut u);
    Some(u)
}

impl Pod {
    /// Creates, starts and waits for a container; returns its exit code and output.
    fn run_spec(&self, s: pb::ContainerSpec) -> (i32, Output) {
        let id = s.container_id.clone();
        self.agent
            .create(s)
            .unwrap_or_else(|e| panic!("create {id}: {e}"));
        self.agent
            .start(&id)
            .unwrap_or_else(|e| panic!("start {id}: {e}"));
        let out = self.agent.output(&id, "", WAIT);
        let status = self.agent.wait(&id, "", WAIT).expect("WaitProcess");
        (status.exit_code, out)
    }

    /// Runs `script` in a new container; returns its stdout (stderr on failure).
    fn run(&self, id: &str, p: pb::Process) -> String {
        let (code, out) = self.run_spec(spec(id, p));
        assert_eq!(code, 0, "{id}: {}{}", out.out(), out.err());
        out.out()
    }

    /// Runs an exec process in a running container to its end.
    fn exec(&self, id: &str, exec_id: &str, p: pb::Process) -> (i32, Output) {
        self.agent
            .exec(id, exec_id, p)
            .unwrap_or_else(|e| panic!("exec {exec_id}: {e}"));
        let out = self.agent.output(id, exec_id, WAIT);
        let status = self.agent.wait(id, exec_id, WAIT).expect("WaitProcess");
        (status.exit_code, out)
    }

    fn shutdown(mut self) {
        self.agent.shutdown().expect("Shutdown");
        let status = self.guest.wait(Duration::from_secs(60));
        assert_eq!(status.code(), Some(0));
    }
}

/// The mount options (`/proc/self/mountinfo`'s sixth field) of each mount point.
const MOUNT_OPTIONS: &str = "awk '{print $5, $6}' /proc/self/mountinfo";

fn options_of<'a>(mountinfo: &'a str, point: &str) -> Vec<&'a str> {
    mountinfo
        .lines()
        .filter_map(|l| l.split_once(' '))
        .rfind(|(p, _)| *p == point)
        .map(|(_, o)| o.split(',').collect())
        .unwrap_or_else(|| panic!("no mount on {point}: {mountinfo}"))
}

#[test]
fn capabilities_devices_and_privileged_containers() {
    let pod = pod();
    // The image drive's numbers, from the guest's read-only /sys.
    let node =
        "mm=$(cat /sys/block/vda/dev); mknod /dev/disk b ${mm%:*} ${mm#*:} && echo mknod-ok; \
                head -c 512 /dev/disk 2>/dev/null | wc -c; head -c 1 /dev/null && echo null-ok; \
                echo x > /dev/full 2>/dev/null || echo full-refuses";
    let caps = "grep -E '^(CapEff|CapBnd)' /proc/self/status | tr -s '\\t' ' '";

    // containerd's default capabilities: mknod works, but the device filter lets only
    // the standard devices open.
    let out = pod.run("default", process(&format!("{caps}; {node}; ls /dev")));
    assert!(
        out.starts_with(
            "CapEff: 00000000a80425fb\nCapBnd: 00000000a80425fb\nmknod-ok\n0\nnull-ok\nfull-refuses\n"
        ),
        "{out}"
    );
    let listed: Vec<&str> = out.lines().skip(6).collect();
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm",
    ] {
        assert!(listed.contains(&dev), "/dev lacks {dev}: {listed:?}");
    }
    assert!(!listed.contains(&"vda"), "{listed:?}");

    // Every capability dropped: no mknod at all.
    let mut p = process(&format!("{caps}; {node}"));
    p.capabilities = Some(pb::Capabilities::default());
    let out = pod.run("dropped", p);
    assert_eq!(
        out, "CapEff: 0000000000000000\nCapBnd: 0000000000000000\n0\nnull-ok\nfull-refuses\n",
        "mknod must fail without CAP_MKNOD"
    );

    // /sys read-only; /dev, /dev/pts, /dev/shm, /dev/mqueue with runc's flags.
    let out = pod.run(
        "mounts",
        process(&format!(
            "{MOUNT_OPTIONS}; f=/sys/block/vda/queue/read_ahead_kb; cat $f > $f 2>/dev/null || echo sys-ro"
        )),
    );
    let want = [
        ("/sys", &["ro", "nosuid", "nodev", "noexec"][..]),
        ("/dev", &["nosuid"]),
        ("/dev/pts", &["nosuid", "noexec"]),
        ("/dev/shm", &["nosuid", "nodev", "noexec"]),
        ("/dev/mqueue", &["nosuid", "nodev", "noexec"]),
        ("/proc", &["nosuid", "nodev", "noexec"]),
    ];
    for (point, flags) in want {
        let have = options_of(&out, point);
        for f in flags {
            assert!(have.contains(f), "{point}: {have:?} lacks {f}");
        }
    }
    assert!(!options_of(&out, "/dev").contains(&"nodev"));
    assert!(out.ends_with("sys-ro\n"), "{out}");

    // Privileged: every guest device (the drives open), /sys writable, no filter.
    let mut p = process(&format!(
        "{node}; ls /dev/vda /dev/vdb; head -c 512 /dev/vda | wc -c; \
         f=/sys/block/vda/queue/read_ahead_kb; cat $f > $f && echo sys-rw; {MOUNT_OPTIONS}"
    ));
    p.capabilities = Some(pb::Capabilities {
        bounding: ALL_CAPS.map(String::from).to_vec(),
        effective: ALL_CAPS.map(String::from).to_vec(),
        permitted: ALL_CAPS.map(String::from).to_vec(),
        ..Default::default()
    });
    let mut s = spec("privileged", p);
    s.privileged = true;
    let (code, out) = pod.run_spec(s);
    assert_eq!(code, 0, "{}", out.err());
    let text = out.out();
    assert!(
        text.starts_with("mknod-ok\n512\nnull-ok\nfull-refuses\n/dev/vda\n/dev/vdb\n512\nsys-rw\n"),
        "{text}"
    );
    assert!(options_of(&text, "/sys").contains(&"rw"), "{text}");
    pod.shutdown();
}

#[test]
fn masked_and_readonly_paths() {
    let pod = pod();
    let script = "wc -c < /proc/timer_list; ls -A /sys/firmware | wc -l; \
                  touch /sys/firmware/x 2>/dev/null || echo firmware-ro; \
                  cat /proc/sys/kernel/hostname > /proc/sys/kernel/hostname 2>/dev/null \
                  && echo sysctl-rw || echo sysctl-ro; test -e /proc/kcore || echo no-kcore";
    // Without paths: /proc/timer_list has text and /proc/sys takes writes (the guest
    // kernel has no /proc/kcore).
    let out = pod.run("plain", process(script));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].parse::<u64>().unwrap() > 0, "{out}");
    assert!(out.contains("sysctl-rw\n"), "{out}");

    // containerd's defaults, with /sys/firmware masked too (a directory that exists).
    let mut s = spec("masked", process(&format!("{script}; {MOUNT_OPTIONS}")));
    s.masked_paths = [
        "/proc/acpi",
        "/proc/asound",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
    ]
    .map(String::from)
    .to_vec();
    s.readonly_paths = [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ]
    .map(String::from)
    .to_vec();
    let (code, out) = pod.run_spec(s);
    assert_eq!(code, 0, "{}", out.err());
    let text = out.out();
    assert!(
        text.starts_with("0\n0\nfirmware-ro\nsysctl-ro\nno-kcore\n"),
        "{text}"
    );
    assert!(options_of(&text, "/proc/sys").contains(&"ro"), "{text}");
    assert!(options_of(&text, "/sys/firmware").contains(&"ro"), "{text}");

    // Relative or `..` paths are refused.
    for bad in ["proc/kcore", "/proc/../etc"] {
        let mut s = spec("bad", process("true"));
        s.masked_paths = vec![bad.into()];
        let err = pod.agent.create(s).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err}");
    }
    pod.shutdown();
}

/// x86_64 seccomp filter: mkdir and mkdirat fail with EPERM, everything else runs.
fn deny_mkdir() -> Vec<u8> {
    const LD_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET: u16 = 0x06; // BPF_RET | BPF_K
    const ALLOW: u32 = 0x7fff_0000;
    const ERRNO_EPERM: u32 = 0x0005_0000 | 1;
    let program: [(u16, u8, u8, u32); 8] = [
        (LD_ABS, 0, 0, 4),        // arch
        (JEQ, 1, 0, 0xc000_003e), // AUDIT_ARCH_X86_64
        (RET, 0, 0, ALLOW),
        (LD_ABS, 0, 0, 0), // syscall number
        (JEQ, 1, 0, 83),   // mkdir
        (JEQ, 0, 1, 258),  // mkdirat
        (RET, 0, 0, ERRNO_EPERM),
        (RET, 0, 0, ALLOW),
    ];
    program
        .iter()
        .flat_map(|&(code, jt, jf, k)| {
            let mut b = code.to_le_bytes().to_vec();
            b.extend([jt, jf]);
            b.extend(k.to_le_bytes());
            b
        })
        .collect()
}

#[test]
fn seccomp_filters_with_and_without_no_new_privileges() {
    let pod = pod();
    let script = "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\\t' ' '; \
                  mkdir /tmp/d 2>&1 | grep -o 'Operation not permitted'; \
                  touch /tmp/f && ls /tmp/f";
    let mut p = process(script);
    p.seccomp_filter = deny_mkdir();
    p.no_new_privileges = true;
    let out = pod.run("nnp", p);
    assert_eq!(
        out,
        "NoNewPrivs: 1\nSeccomp: 2\nOperation not permitted\n/tmp/f\n"
    );

    // Without no_new_privs, for a user without capabilities: installed while the
    // process still held CAP_SYS_ADMIN.
    let mut p = process(&format!("{script}; sleep 1000"));
    p.seccomp_filter = deny_mkdir();
    p.user = user(|u| {
        u.uid = 1000;
        u.gid = 1000;
        u.gid_set = true;
    });
    pod.agent.create(spec("privs", p)).unwrap();
    pod.agent.start("privs").unwrap();
    let out = pod
        .agent
        .read_until("privs", "", pb::Stream::Stdout, WAIT, |d| {
            String::from_utf8_lossy(d).contains("/tmp/f")
        });
    assert_eq!(
        String::from_utf8_lossy(&out),
        "NoNewPrivs: 0\nSeccomp: 2\nOperation not permitted\n/tmp/f\n"
    );
    // An exec runs under the container's filter, or under its own.
    let (code, out) = pod.exec("privs", "e1", process("mkdir /tmp/e || exit 9"));
    assert_eq!(code, 9, "{}", out.err());
    let mut own = process("mkdir /tmp/e2 && echo made; rmdir /tmp/e2 && echo removed");
    own.seccomp_filter = {
        // Deny rmdir (84) and unlinkat (263) instead.
        let mut f = deny_mkdir();
        f[4 * 8 + 4..4 * 8 + 8].copy_from_slice(&84u32.to_le_bytes());
        f[5 * 8 + 4..5 * 8 + 8].copy_from_slice(&263u32.to_le_bytes());
        f
    };
    let (_, out) = pod.exec("privs", "e2", own);
    assert!(out.out().starts_with("made\n"), "{out:?}");
    assert!(!out.out().contains("removed"), "{out:?}");
    pod.agent.signal("privs", "", 9).unwrap();

    // A filter that is not whole instructions is refused.
    let mut p = process("true");
    p.seccomp_filter = vec![0; 12];
    let err = pod.agent.create(spec("bad", p)).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    pod.shutdown();
}

#[test]
fn users_and_groups_from_the_image() {
    let pod = pod();
    let ids = "id -u; id -g; grep ^Groups: /proc/self/status | cut -f2 | tr -s ' ' | sed 's/ $//'";
    let create = |id: &str, u: Option<pb::User>, script: &str| {
        let mut p = process(script);
        p.user = u;
        pod.agent.create_container(spec(id, p))
    };
    let run = |id: &str, u: Option<pb::User>| {
        let r = create(id, u, ids).unwrap_or_else(|e| panic!("{id}: {e}"));
        pod.agent.start(id).unwrap();
        let out = pod.agent.output(id, "", WAIT).out();
        let got = r.user.expect("resolved user");
        (out, (got.uid, got.gid, got.additional_gids))
    };

    // A name: uid and primary group from /etc/passwd.
    let (out, got) = run("name", user(|u| u.username = "www-data".into()));
    assert_eq!(out, "33\n33\n33\n");
    assert_eq!(got, (33, 33, vec![33]));
    // With the image's groups (Merge) on top of the requested ones.
    let (out, got) = run(
        "merge",
        user(|u| {
            u.username = "www-data".into();
            u.additional_gids = vec![5000];
            u.image_groups = true;
        }),
    );
    assert_eq!(out, "33\n33\n33 3000 5000\n");
    assert_eq!(got, (33, 33, vec![33, 5000, 3000]));
    // A group name.
    let (out, _) = run(
        "groupname",
        user(|u| {
            u.username = "www-data".into();
            u.groupname = "web".into();
        }),
    );
    assert_eq!(out, "33\n3000\n3000\n");
    // A numeric uid: its passwd entry's group, unless a gid is given; none if unknown.
    let (out, _) = run("uid", user(|u| u.uid = 1000));
    assert_eq!(out, "1000\n1000\n1000\n");
    let (out, _) = run(
        "gid",
        user(|u| {
            u.uid = 1000;
            u.gid = 1234;
            u.gid_set = true;
        }),
    );
    assert_eq!(out, "1000\n1234\n1234\n");
    let (out, _) = run("unknown", user(|u| u.uid = 4242));
    assert_eq!(out, "4242\n0\n0\n");

    // run_as_non_root: refused for root, by name or number, and an unknown name.
    for (id, u) in [
        (
            "root-name",
            user(|u| {
                u.username = "root".into();
                u.non_root = true;
            }),
        ),
        ("root-uid", user(|u| u.non_root = true)),
        ("no-user", user(|u| u.username = "nobody-here".into())),
    ] {
        let err = create(id, u, "true").unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{id}: {err}");
        assert!(
            err.message().contains("non-root") || err.message().contains("nobody-here"),
            "{id}: {err}"
        );
    }
    let (out, _) = run(
        "non-root",
        user(|u| {
            u.username = "www-data".into();
            u.non_root = true;
        }),
    );
    assert_eq!(out, "33\n33\n33\n");

    // Execs: the container's user by default, or a name of their own.
    create(
        "execs",
        user(|u| u.username = "www-data".into()),
        "sleep 1000",
    )
    .unwrap();
    pod.agent.start("execs").unwrap();
    let (_, out) = pod.exec("execs", "same", process(ids));
    assert_eq!(out.out(), "33\n33\n33\n");
    let mut p = process(ids);
    p.user = user(|u| {
        u.username = "app".into();
        u.image_groups = true;
    });
    let (_, out) = pod.exec("execs", "app", p);
    assert_eq!(out.out(), "1000\n1000\n1000 2000\n");
    pod.agent.signal("execs", "", 9).unwrap();
    pod.shutdown();
}

#[test]
fn pod_pid_and_ipc_namespaces() {
    let pod = pod();
    let ns = "readlink /proc/self/ns/pid; readlink /proc/self/ns/ipc";
    let mut first = spec("first", process(&format!("{ns}; echo $$; exec sleep 1000")));
    first.share_pod_pid_namespace = true;
    pod.agent.create(first).unwrap();
    pod.agent.start("first").unwrap();
    let out = pod
        .agent
        .read_until("first", "", pb::Stream::Stdout, WAIT, |d| {
            String::from_utf8_lossy(d).lines().count() >= 3
        });
    let first_out = String::from_utf8_lossy(&out).into_owned();
    let first_lines: Vec<&str> = first_out.lines().collect();
    assert_ne!(
        first_lines[2], "1",
        "the first container is not PID 1: {first_out}"
    );

    // A second sharing container sees the namespace's holder as PID 1 and the first
    // container's process; both share the pod's IPC namespace.
    let mut second = spec(
        "second",
        process(&format!(
            "{ns}; cat /proc/1/comm; pidof sleep >/dev/null && echo sees-sleep"
        )),
    );
    second.share_pod_pid_namespace = true;
    let (code, out) = pod.run_spec(second);
    assert_eq!(code, 0, "{}", out.err());
    let text = out.out();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..2], &first_lines[..2], "{text} vs {first_out}");
    assert_eq!(&lines[2..], ["init", "sees-sleep"], "{text}");

    // A container of its own PID namespace is its own PID 1, still in the pod's IPC.
    let (code, out) = pod.run_spec(spec("own", process(&format!("{ns}; echo $$"))));
    assert_eq!(code, 0, "{}", out.err());
    let text = out.out();
    let lines: Vec<&str> = text.lines().collect();
    assert_ne!(lines[0], first_lines[0]);
    assert_eq!(lines[1], first_lines[1]);
    assert_eq!(lines[2], "1");
    pod.agent.signal("first", "", 9).unwrap();
    pod.shutdown();
}
