//! vmlet-vmm end to end: real guests on real KVM.

// Test-only crate: a failed setup step panics with its message, which is the test's
// failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use vmlet_integration_tests::agent::{req, CALL_TIMEOUT};
use vmlet_integration_tests::{
    drive, net, pattern, sh, tail, FsConfig, Guest, GuestConfig, NetConfig, Netns,
};
use vmlet_proto::agent as pb;
use vmlet_vmm_api::control::{
    NetCounters, ProtocolError, Request, Response, StatusReply, SwapDriveReply, VmState,
    PROTOCOL_VERSION,
};

const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The VMM's status, through the typed protocol.
fn status(guest: &Guest) -> StatusReply {
    match guest.request(&Request::Status) {
        Ok(Response::Status(s)) => s,
        other => panic!("status: {other:?}"),
    }
}

fn poweroff(mut guest: Guest) {
    guest.agent().shutdown().expect("Shutdown");
    let status = guest.wait(EXIT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "guest poweroff must end the VMM with 0"
    );
}

#[test]
fn boots_with_one_vcpu_and_powers_off_cleanly() {
    let guest = Guest::boot(GuestConfig::default());
    let log = guest.serial_log();
    assert!(
        log.contains("vmlet-init: started"),
        "init marker missing:\n{log}"
    );
    assert_eq!(guest.run_ok("grep -c ^processor /proc/cpuinfo").trim(), "1");
    let h = guest.agent().health().expect("Health");
    assert_eq!(h.protocol, "v1");
    // Entropy comes from virtio-rng.
    let rng = guest.run_ok("cat /sys/class/misc/hw_random/rng_current");
    assert!(rng.contains("virtio"), "rng_current: {rng}");
    guest.run_ok("head -c 64 /dev/hwrng | wc -c | grep -qx 64");
    poweroff(guest);
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn freed_guest_memory_goes_back_to_the_host() {
    freed_memory_goes_back(false);
}

/// The same with guest RAM in a shared memfd (as virtio-fs needs), where the VMM
/// punches the reported blocks out of the memfd instead of MADV_DONTNEED.
#[test]
fn freed_shared_guest_memory_goes_back_to_the_host() {
    freed_memory_goes_back(true);
}

fn freed_memory_goes_back(shared_memory: bool) {
    let guest = Guest::boot(GuestConfig {
        free_page_reporting: true,
        shared_memory,
        ..Default::default()
    });
    if shared_memory {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", guest.pid())).unwrap();
        assert!(
            maps.contains("/memfd:vmlet-guest-ram"),
            "guest RAM is not the memfd:\n{maps}"
        );
    }
    let bound = guest.run_ok("ls /sys/bus/virtio/drivers/virtio_balloon/");
    assert!(
        bound.contains("virtio"),
        "virtio_balloon drives nothing: {bound}"
    );
    // 96 MiB of files in the guest's tmpfs, resident on the host; then freed.
    guest.run_ok("dd if=/dev/zero of=/tmp/fill bs=1M count=96 2>/dev/null");
    let full = rss_kib(guest.pid());
    assert!(full > 96 * 1024, "RSS {full} KiB after writing 96 MiB");
    guest.run_ok("rm /tmp/fill");
    // The guest reports the freed blocks a few seconds later.
    let start = std::time::Instant::now();
    loop {
        let now = rss_kib(guest.pid());
        if now + 64 * 1024 < full {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "RSS still {now} KiB, {full} KiB with the file"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The guest can use the memory again.
    guest.run_ok("dd if=/dev/zero of=/tmp/fill bs=1M count=96 2>/dev/null && rm /tmp/fill");
    poweroff(guest);
}

/// A running `virtiofsd` (Debian's, from qemu-system-common) sharing `source`.
struct Virtiofsd {
    child: std::process::Child,
    socket: std::path::PathBuf,
}

impl Virtiofsd {
    const BINARY: &str = "/usr/lib/qemu/virtiofsd";

    fn start(source: &Path, socket: &Path, log: &Path) -> Virtiofsd {
        let log = std::fs::File::create(log).unwrap();
        // chroot sandboxing: the namespace mode needs unprivileged user namespaces
        // setups that the test machines need not have.
        let child = Command::new(Self::BINARY)
            .arg(format!("--socket-path={}", socket.display()))
            .args(["-o", &format!("source={}", source.display())])
            .args(["-o", "cache=auto", "-o", "sandbox=chroot"])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", Self::BINARY));
        let start = std::time::Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "virtiofsd did not create {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Virtiofsd {
            child,
            socket: socket.to_owned(),
        }
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn virtio_fs_shares_a_host_directory_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("from-host"), "written on the host\n").unwrap();
    let backend = Virtiofsd::start(
        &shared,
        &dir.path().join("fs.sock"),
        &dir.path().join("virtiofsd.log"),
    );
    let guest = Guest::boot(GuestConfig {
        fs: vec![FsConfig::new("hostdir", &backend.socket)],
        free_page_reporting: true,
        ..Default::default()
    });
    let bound = guest.run_ok("ls /sys/bus/virtio/drivers/virtiofs/");
    assert!(bound.contains("virtio"), "virtiofs drives nothing: {bound}");
    guest.run_ok("mkdir -p /mnt/host && mount -t virtiofs hostdir /mnt/host");
    assert_eq!(
        guest.run_ok("cat /mnt/host/from-host"),
        "written on the host\n"
    );
    // 4 MiB through the request queue, both ways.
    guest.run_ok(
        "echo -n written-in-the-guest > /mnt/host/from-guest && \
         dd if=/dev/urandom of=/mnt/host/big bs=1M count=4 2>/dev/null && sync",
    );
    assert_eq!(
        std::fs::read_to_string(shared.join("from-guest")).unwrap(),
        "written-in-the-guest"
    );
    let big = std::fs::read(shared.join("big")).unwrap();
    assert_eq!(big.len(), 4 << 20);
    let guest_sum = guest.run_ok("md5sum < /mnt/host/big");
    let host_sum = Command::new("md5sum")
        .stdin(std::fs::File::open(shared.join("big")).unwrap())
        .output()
        .unwrap();
    assert_eq!(
        guest_sum.split_whitespace().next(),
        String::from_utf8_lossy(&host_sum.stdout)
            .split_whitespace()
            .next()
    );
    // A file the host changes reads back new in a fresh mount.
    guest.run_ok("umount /mnt/host");
    std::fs::write(shared.join("from-host"), "changed\n").unwrap();
    guest.run_ok("mount -t virtiofs hostdir /mnt/host");
    assert_eq!(guest.run_ok("cat /mnt/host/from-host"), "changed\n");
    guest.run_ok("umount /mnt/host");
    // A driver reset stops the vrings in the backend; the next probe starts them
    // again and the share works as before.
    guest.run_ok(
        "cd /sys/bus/virtio/drivers/virtiofs && d=$(basename $(readlink -f virtio*)) && \
         echo $d > unbind && echo $d > bind",
    );
    guest.run_ok("mount -t virtiofs hostdir /mnt/host");
    assert_eq!(
        guest.run_ok("cat /mnt/host/from-guest"),
        "written-in-the-guest"
    );
    guest.run_ok("umount /mnt/host");
    poweroff(guest);
}

/// A backend that dies under a mounted share stops the device, not the VM.
#[test]
fn virtio_fs_backend_exit_leaves_the_vm_running() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let mut backend = Virtiofsd::start(
        &shared,
        &dir.path().join("fs.sock"),
        &dir.path().join("virtiofsd.log"),
    );
    let guest = Guest::boot(GuestConfig {
        fs: vec![FsConfig::new("hostdir", &backend.socket)],
        ..Default::default()
    });
    guest.run_ok("mkdir -p /mnt/host && mount -t virtiofs hostdir /mnt/host && ls /mnt/host");
    backend.child.kill().unwrap();
    backend.child.wait().unwrap();
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&guest.vmm_log)
        .unwrap()
        .contains("connection to the vhost-user backend is closed")
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the VMM did not notice the backend's exit"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The guest and the VMM go on.
    assert_eq!(guest.run_ok("echo alive").trim(), "alive");
    assert_eq!(status(&guest).state, VmState::Running);
    // No poweroff: its sync would wait forever on the mount whose backend is gone.
    drop(guest);
}

#[test]
fn boots_with_two_vcpus_and_sees_both() {
    let guest = Guest::boot(GuestConfig {
        vcpus: 2,
        ..Default::default()
    });
    assert_eq!(guest.run_ok("grep -c ^processor /proc/cpuinfo").trim(), "2");
    assert_eq!(
        guest.run_ok("cat /sys/devices/system/cpu/online").trim(),
        "0-1"
    );
    poweroff(guest);
}

/// `fstrim` in the guest gives a file system's freed blocks back to the host: the
/// drive file shrinks on disk (virtio-blk DISCARD punches holes in it); a read-only
/// drive offers no discard at all.
#[test]
fn fstrim_in_the_guest_frees_the_drive_files_blocks() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.img");
    let ro = dir.path().join("ro.img");
    sh(&format!(
        "truncate -s 96M {i} && mkfs.ext4 -q -F -E nodiscard {i} && truncate -s 1M {r}",
        i = img.display(),
        r = ro.display()
    ));
    let on_disk = || std::fs::metadata(&img).unwrap().blocks() * 512;
    let guest = Guest::boot(GuestConfig {
        drives: vec![drive("data", &img, false), drive("image", &ro, true)],
        ..Default::default()
    });
    assert_ne!(
        guest
            .run_ok("cat /sys/block/vda/queue/discard_max_bytes")
            .trim(),
        "0"
    );
    assert_eq!(
        guest
            .run_ok("cat /sys/block/vdb/queue/discard_max_bytes")
            .trim(),
        "0"
    );
    guest.run_ok(
        "mkdir -p /mnt && mount -t ext4 -o nodiscard /dev/vda /mnt && \
         head -c 50331648 /dev/urandom > /mnt/f && sync",
    );
    let full = on_disk();
    assert!(
        full >= 48 << 20,
        "{full} bytes on disk after writing 48 MiB"
    );
    guest.run_ok("rm /mnt/f && sync && fstrim /mnt");
    let trimmed = on_disk();
    assert!(
        trimmed + (40 << 20) <= full,
        "{trimmed} bytes on disk after fstrim, {full} before"
    );
    // What stays is the file system, intact.
    guest.run_ok("echo kept > /mnt/k && umount /mnt && mount -t ext4 /dev/vda /mnt && grep -q kept /mnt/k && umount /mnt");
    poweroff(guest);
}

#[test]
fn block_devices_read_write_and_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let rw = dir.path().join("rw.img");
    let ro = dir.path().join("ro.img");
    let content = pattern(1 << 20, 7);
    std::fs::write(&rw, &content).unwrap();
    std::fs::write(&ro, pattern(64 << 10, 9)).unwrap();
    let guest = Guest::boot(GuestConfig {
        drives: vec![drive("data", &rw, false), drive("image", &ro, true)],
        ..Default::default()
    });
    // vda is `data`: the guest reads back what the host wrote.
    assert_eq!(guest.run_ok("cat /sys/block/vda/size").trim(), "2048");
    let sum = guest.run_ok("dd if=/dev/vda bs=4096 count=16 2>/dev/null | md5sum");
    let host = Command::new("sh")
        .arg("-c")
        .arg(format!("head -c 65536 {} | md5sum", rw.display()))
        .output()
        .unwrap();
    assert_eq!(
        sum.split_whitespace().next(),
        String::from_utf8_lossy(&host.stdout)
            .split_whitespace()
            .next()
    );
    // The guest writes at 512 KiB and flushes; the host sees it.
    guest.run_ok(
        "echo -n vmlet-block-write | dd of=/dev/vda bs=512 seek=1024 conv=fsync 2>/dev/null",
    );
    let mut got = [0u8; 17];
    std::fs::File::open(&rw)
        .unwrap()
        .read_exact_at(&mut got, 512 * 1024)
        .unwrap();
    assert_eq!(&got, b"vmlet-block-write");
    // vdb is read-only: the kernel refuses writes and the file is untouched.
    assert_eq!(guest.run_ok("cat /sys/block/vdb/ro").trim(), "1");
    let (status, _, _) = guest.run("echo x | dd of=/dev/vdb bs=512 count=1 conv=fsync 2>/dev/null");
    assert_ne!(status, 0);
    assert_eq!(std::fs::read(&ro).unwrap(), pattern(64 << 10, 9));
    poweroff(guest);
}

#[test]
fn swapped_drive_shows_new_size_and_content() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    std::fs::write(&a, vec![b'A'; 4096]).unwrap();
    let mut bcontent = vec![b'B'; 12288];
    bcontent[..9].copy_from_slice(b"second-fs");
    std::fs::write(&b, &bcontent).unwrap();
    let guest = Guest::boot(GuestConfig {
        drives: vec![drive("slot0", &a, true)],
        ..Default::default()
    });
    assert_eq!(guest.run_ok("cat /sys/block/vda/size").trim(), "8");
    assert_eq!(guest.run_ok("head -c 4 /dev/vda"), "AAAA");
    let swap = |id: &str, path: &Path| {
        guest.request(&Request::SwapDrive {
            id: id.into(),
            path: path.into(),
        })
    };
    let r = swap("slot0", &b).expect("swap_drive");
    assert_eq!(r, Response::SwapDrive(SwapDriveReply { sectors: 24 }));
    // The config-change interrupt makes the guest re-read the capacity.
    let mut size = String::new();
    for _ in 0..100 {
        size = guest.run_ok("cat /sys/block/vda/size").trim().to_owned();
        if size == "24" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(size, "24");
    // Drop the page cache of the old content, then read the new file.
    assert_eq!(
        guest.run_ok("echo 3 > /proc/sys/vm/drop_caches; head -c 9 /dev/vda"),
        "second-fs"
    );
    let drives = status(&guest).drives;
    assert_eq!((drives[0].id.as_str(), &drives[0].path), ("slot0", &b));
    // Errors name the problem and leave the drive alone.
    match swap("nope", &b) {
        Err(ProtocolError::Refused(e)) => assert!(e.contains("nope"), "{e}"),
        other => panic!("swap of an unknown drive: {other:?}"),
    }
    match swap("slot0", Path::new("/nonexistent")) {
        Err(ProtocolError::Refused(e)) => assert!(e.contains("/nonexistent"), "{e}"),
        other => panic!("swap to a missing file: {other:?}"),
    }
    assert_eq!(guest.run_ok("cat /sys/block/vda/size").trim(), "24");
    poweroff(guest);
}

#[test]
fn vsock_round_trips_one_mib_both_ways() {
    let guest = Guest::boot(GuestConfig::default());
    let data = pattern(1 << 20, 42);

    // Host-initiated: the guest echoes a 1 MiB payload over its agent connection.
    let agent = guest.agent();
    let mut diag = agent.diag.clone();
    let back = agent
        .call(
            CALL_TIMEOUT,
            diag.echo(req(
                pb::EchoRequest {
                    payload: data.clone(),
                },
                CALL_TIMEOUT,
            )),
        )
        .expect("Echo")
        .payload;
    assert_eq!(back.len(), data.len());
    assert!(back == data, "host-initiated echo corrupted data");

    // Guest-initiated: the guest connects to host port 5000 (<uds>_5000).
    let listener = UnixListener::bind(format!("{}_5000", guest.vsock.display())).unwrap();
    let mut diag = agent.diag.clone();
    let ask = std::thread::spawn(move || {
        agent
            .call(
                CALL_TIMEOUT,
                diag.connect_echo(req(pb::ConnectEchoRequest { port: 5000 }, CALL_TIMEOUT)),
            )
            .map(|r| r.bytes)
    });
    let (conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let sent = data.clone();
    let w = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    let mut reader = conn;
    reader.read_to_end(&mut back).unwrap();
    w.join().unwrap();
    assert!(
        back == data,
        "guest-initiated echo corrupted data ({} bytes back)",
        back.len()
    );
    assert_eq!(ask.join().unwrap().expect("ConnectEcho"), 1 << 20);

    // A port nobody listens on is refused, and the device keeps working.
    let refused = guest
        .connect(4321)
        .expect_err("nobody listens on port 4321");
    assert_eq!(
        (refused.kind(), refused.to_string()),
        (
            std::io::ErrorKind::ConnectionRefused,
            "vsock port 4321: closed before OK".to_owned()
        )
    );
    guest.run_ok("true");
    poweroff(guest);
}

#[test]
fn network_on_a_tap_in_a_netns_answers_ping() {
    let ns = Netns::new("test");
    sh(&format!(
        "ip -n {n} tuntap add vmtap0 mode tap && \
         ip -n {n} addr add 10.77.0.1/24 dev vmtap0 && ip -n {n} link set vmtap0 up",
        n = ns.0
    ));
    let guest = Guest::boot(GuestConfig {
        net: vec![net("vmtap0", "02:00:00:77:00:02")],
        netns: Some(ns.0.clone()),
        ..Default::default()
    });
    let mac = guest.run_ok("cat /sys/class/net/eth0/address");
    assert_eq!(mac.trim(), "02:00:00:77:00:02");
    guest.run_ok("ip addr add 10.77.0.2/24 dev eth0 && ip link set eth0 up");
    guest.run_ok("ping -c 3 -W 10 10.77.0.1");
    sh(&format!("ip netns exec {} ping -c 3 -W 10 10.77.0.2", ns.0));
    poweroff(guest);
}

/// The guest's network card's counters.
fn net_counters(guest: &Guest) -> NetCounters {
    match guest.request(&Request::Counters) {
        Ok(Response::Counters(c)) => c.net.get("net0").copied().expect("net0 counters"),
        other => panic!("counters: {other:?}"),
    }
}

/// Polls `cat path` in the guest until it prints something (the end of a background
/// job that writes it whole with `mv`).
fn guest_file(guest: &Guest, path: &str, what: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let out = guest.run_ok(&format!("cat {path} 2>/dev/null; true"));
        if !out.trim().is_empty() {
            return out;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "{what} did not finish: {}",
            guest.run_ok("cat /tmp/*.err 2>/dev/null; true")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// SHA-256 of `data`, in hex.
fn sha256_hex(data: impl AsRef<[u8]>) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Large TCP transfers each way between a tap's namespace and the guest, every byte
/// checked: with the offloads the guest takes by default (checksums and TCP
/// segmentation both ways: segments larger than the MTU cross the card, counted in
/// its frames), and on a card that offers none (`no-offloads`: the guest negotiates
/// none, plain frames only). Merged receive buffers and event-index notifications are
/// on in both.
#[test]
fn network_transfers_each_way_arrive_intact_with_and_without_offloads() {
    use std::net::{Shutdown, TcpListener, TcpStream};
    const MIB: usize = 1 << 20;
    // Longest a transfer may make no progress.
    const STALL: Duration = Duration::from_secs(120);
    let ns = Netns::new("offl");
    sh(&format!(
        "ip -n {n} tuntap add vmtap0 mode tap && \
         ip -n {n} addr add 10.78.0.1/24 dev vmtap0 && ip -n {n} link set vmtap0 up",
        n = ns.0
    ));
    let mut data = vec![0u8; 256 * MIB];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut data))
        .unwrap();
    for (offloads, mib) in [(true, 256), (false, 32)] {
        let guest = Guest::boot(GuestConfig {
            net: vec![NetConfig {
                no_offloads: !offloads,
                ..net("vmtap0", "02:00:00:78:00:02")
            }],
            netns: Some(ns.0.clone()),
            ..Default::default()
        });
        // Feature bits as the guest driver accepted them, bit 0 first.
        let features = guest.run_ok("cat /sys/class/net/eth0/device/features");
        let bit = |b: usize| features.as_bytes().get(b) == Some(&b'1');
        // CSUM, GUEST_CSUM, GUEST_TSO4, HOST_TSO4; MRG_RXBUF; EVENT_IDX.
        for b in [0, 1, 7, 11] {
            assert_eq!(bit(b), offloads, "feature bit {b} in {features}");
        }
        assert!(bit(15) && bit(29), "MRG_RXBUF and EVENT_IDX in {features}");
        guest.run_ok("ip addr add 10.78.0.2/24 dev eth0 && ip link set eth0 up");
        let sent = &data[..mib * MIB];

        // Into the guest. Its nc half-closes at once (stdin is empty): the sender
        // goes on regardless, as TCP allows.
        guest.run_ok(
            "(nc -l -p 5001 </dev/null | sha256sum > /tmp/in.part && mv /tmp/in.part /tmp/in.sum) \
             >/dev/null 2>/tmp/in.err &",
        );
        let before = net_counters(&guest);
        ns.run_in(|| {
            let start = std::time::Instant::now();
            let mut s = loop {
                match TcpStream::connect("10.78.0.2:5001") {
                    Ok(s) => break s,
                    Err(e) => {
                        assert!(start.elapsed() < Duration::from_secs(60), "connect: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            };
            // A guest that dies mid-transfer fails the test instead of hanging it.
            s.set_write_timeout(Some(STALL)).unwrap();
            s.write_all(sent).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
        });
        let got = guest_file(&guest, "/tmp/in.sum", "the guest's receive");
        assert_eq!(
            got.split_whitespace().next(),
            Some(sha256_hex(sent).as_str())
        );
        let after = net_counters(&guest);
        let frame = (after.rx_bytes - before.rx_bytes) / (after.rx_packets - before.rx_packets);
        assert!(
            (frame > 1514) == offloads,
            "mean frame into the guest {frame} bytes (offloads: {offloads})"
        );

        // Out of the guest: random bytes, summed on both sides.
        let listener = ns.run_in(|| TcpListener::bind("10.78.0.1:5002").unwrap());
        let before = net_counters(&guest);
        guest.run_ok(&format!(
            "mkfifo /tmp/p && \
             (sha256sum < /tmp/p > /tmp/out.part && mv /tmp/out.part /tmp/out.sum) \
               </dev/null >/dev/null 2>/tmp/sum.err & \
             (head -c {} /dev/urandom | tee /tmp/p | nc 10.78.0.1 5002) \
               </dev/null >/dev/null 2>/tmp/out.err &",
            mib * MIB
        ));
        listener.set_nonblocking(true).unwrap();
        let start = std::time::Instant::now();
        let mut conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(start.elapsed() < STALL, "the guest never connected");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(STALL)).unwrap();
        let mut received = Vec::with_capacity(mib * MIB);
        conn.read_to_end(&mut received).unwrap();
        drop(conn);
        let sum = guest_file(&guest, "/tmp/out.sum", "the guest's send");
        assert_eq!(received.len(), mib * MIB);
        assert_eq!(
            sum.split_whitespace().next(),
            Some(sha256_hex(&received).as_str())
        );
        let after = net_counters(&guest);
        let frame = (after.tx_bytes - before.tx_bytes) / (after.tx_packets - before.tx_packets);
        assert!(
            (frame > 1514) == offloads,
            "mean frame out of the guest {frame} bytes (offloads: {offloads})"
        );
        assert_eq!((after.tx_dropped, after.rx_dropped), (0, 0));
        poweroff(guest);
    }
}

#[test]
fn control_socket_pause_resume_and_graceful_shutdown() {
    let mut guest = Guest::boot(GuestConfig::default());
    let s = status(&guest);
    assert_eq!(
        (s.version, s.state, s.vcpus, s.mem_mib),
        (PROTOCOL_VERSION, VmState::Running, 1, 256),
        "{s:?}"
    );
    assert_eq!(
        guest.request(&Request::Pause).expect("pause"),
        Response::Done
    );
    assert_eq!(status(&guest).state, VmState::Paused);
    // While paused the guest does not answer; after resume it does.
    let mut agent_stream = guest.connect_nowait(vmlet_integration_tests::AGENT_PORT);
    agent_stream
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut b = [0u8; 1];
    let silent = agent_stream
        .read(&mut b)
        .expect_err("a paused guest answered");
    // SO_RCVTIMEO ran out (EAGAIN).
    assert_eq!(silent.kind(), std::io::ErrorKind::WouldBlock, "{silent}");
    assert_eq!(
        guest.request(&Request::Resume).expect("resume"),
        Response::Done
    );
    assert_eq!(guest.run_ok("echo alive").trim(), "alive");
    // The wire format itself, as a client other than vmlet-vmm-api would write it: an
    // unknown command, a request with and without a version, another version.
    let bad = guest.control(json!({"cmd": "explode"}));
    assert_eq!(bad["ok"], false);
    // The protocol is versioned: status reports it, another version is refused.
    let versioned = guest.control(json!({"version": PROTOCOL_VERSION, "cmd": "status"}));
    assert_eq!(versioned["ok"], true, "{versioned}");
    assert_eq!(versioned["version"], 1, "{versioned}");
    let other = guest.control(json!({"version": 99, "cmd": "status"}));
    assert_eq!(other["ok"], false, "{other}");
    assert!(
        other["error"]
            .as_str()
            .is_some_and(|e| e.contains("version 99 is not supported")),
        "{other}"
    );
    let unversioned = guest.control(json!({"cmd": "status"}));
    assert_eq!(unversioned["state"], "running", "{unversioned}");
    let shutdown = Request::Shutdown {
        timeout_ms: Some(30_000),
    };
    assert_eq!(guest.request(&shutdown).expect("shutdown"), Response::Done);
    let status = guest.wait(EXIT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "graceful shutdown: guest powered off itself"
    );
    assert!(!guest.control.exists(), "control socket removed on exit");
}

#[test]
fn shutdown_of_an_unresponsive_guest_is_forced_after_the_timeout() {
    let mut guest = Guest::boot(GuestConfig::default());
    // 1 ms is far less than a vsock round trip to the guest: the VMM must stop it.
    let r = guest.request(&Request::Shutdown {
        timeout_ms: Some(1),
    });
    assert_eq!(r.expect("shutdown"), Response::Done);
    let status = guest.wait(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(2), "forced stop exits with 2");
}

#[test]
fn sigterm_stops_the_vm_and_removes_its_sockets() {
    let mut guest = Guest::boot(GuestConfig::default());
    assert!(guest.control.exists() && guest.vsock.exists());
    guest.signal(libc::SIGTERM);
    let status = guest.wait(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(!guest.control.exists(), "control socket left behind");
    assert!(!guest.vsock.exists(), "vsock socket left behind");
}

#[test]
fn a_guest_reboot_ends_the_vmm_with_status_0() {
    let mut guest = Guest::boot(GuestConfig::default());
    // In the background, so that the agent answers before the guest resets.
    guest.run_ok("(sleep 1; reboot -f) </dev/null >/dev/null 2>&1 &");
    let status = guest.wait(EXIT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "a guest reboot must end the VMM with 0; vmm.log:\n{}",
        tail(&guest.vmm_log, 20)
    );
    // A reset, not a power-off.
    let serial = guest.serial_log();
    assert!(
        serial.contains("reboot: Restarting system"),
        "no restart on the console:\n{serial}"
    );
}

/// The last non-empty line of a file.
fn last_line(path: &std::path::Path) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned();
    text.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_owned()
}

#[test]
fn a_forbidden_syscall_ends_the_vmm_with_sigsys_and_names_it() {
    let mut guest = Guest::boot(GuestConfig::default());
    // gdb makes the VMM thread (the process's main thread, which serves the event loop
    // under the VMM filter) call getppid(2), which that filter does not allow. gdb
    // passes the SIGSYS on to the VMM's own handler.
    let gdb = Command::new("gdb")
        .args(["-nx", "-batch", "-p", &guest.pid().to_string()])
        .args(["-ex", "handle SIGSYS nostop noprint pass"])
        .args(["-ex", &format!("call (long)syscall({})", libc::SYS_getppid)])
        .output()
        .expect("run gdb (scripts/setup.sh installs it)");
    let status = guest.wait(EXIT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(159),
        "{status}; gdb: {}{}",
        String::from_utf8_lossy(&gdb.stdout),
        String::from_utf8_lossy(&gdb.stderr)
    );
    assert_eq!(
        last_line(&guest.vmm_log),
        format!(
            "vmlet-vmm: error: seccomp: forbidden syscall {} (getppid) on the VMM thread \
             (exit status 159)",
            libc::SYS_getppid
        )
    );
}

/// A guest on tap `tap` (made in `ns` with host address 10.78.`n`.1/24) and its
/// own copy of the data drive.
fn snapshot_guest(ns: &Netns, dir: &Path, n: u8, restore: Option<&Path>) -> GuestConfig {
    let tap = format!("vmtap{n}");
    sh(&format!(
        "ip -n {ns} tuntap add {tap} mode tap && \
         ip -n {ns} addr add 10.78.{n}.1/24 dev {tap} && ip -n {ns} link set {tap} up",
        ns = ns.0
    ));
    let data = dir.join(format!("data{n}.img"));
    std::fs::write(&data, pattern(1 << 20, 5)).unwrap();
    GuestConfig {
        vcpus: 2,
        drives: vec![drive("data", &data, false)],
        net: vec![net(&tap, "02:00:00:78:00:02")],
        netns: Some(ns.0.clone()),
        free_page_reporting: true,
        restore: restore.map(Path::to_owned),
        ..Default::default()
    }
}

/// Counts the guest kernel's reseeds on a VM generation change (Linux's
/// `add_vmfork_randomness`, driven by the `vmgenid` driver).
const RESEEDS: &str = "dmesg | grep -c 'crng reseeded due to virtual machine fork' || true";

#[test]
fn a_snapshot_restores_twice_into_independent_guests_whose_devices_work() {
    let ns = Netns::new("snap");
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snapshot");
    std::fs::create_dir(&snap).unwrap();

    let template = Guest::boot(snapshot_guest(&ns, dir.path(), 0, None));
    template.run_ok("echo template > /run/marker");
    // The VM generation ID's driver and its event device are bound (ACPI), and a
    // booted guest has had no generation change.
    template.run_ok("ls /sys/bus/acpi/drivers/vmgenid/ | grep -q :");
    template.run_ok("grep -q ACPI:Ged /proc/interrupts");
    let acpi = template.run_ok("dmesg | grep -i -e acpi -e vmgen -e ged");
    eprintln!("the guest kernel on ACPI:\n{acpi}");
    assert!(!acpi.to_lowercase().contains("error"), "{acpi}");
    assert_eq!(template.run_ok(RESEEDS).trim(), "0");
    let reply = match template.request(&Request::Snapshot { dir: snap.clone() }) {
        Ok(Response::Snapshot(r)) => r,
        other => panic!("snapshot: {other:?}"),
    };
    assert_eq!(reply.memory_bytes, 256 << 20);
    assert!(
        reply.memory_file_bytes < reply.memory_bytes,
        "the memory file is sparse: {reply:?}"
    );
    assert_eq!(status(&template).state, VmState::Paused, "it stays paused");
    for file in ["state", "memory"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(snap.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    // Never over a snapshot that restored VMs may map.
    match template.request(&Request::Snapshot { dir: snap.clone() }) {
        Err(ProtocolError::Refused(e)) => assert!(e.contains("exists"), "{e}"),
        other => panic!("a second snapshot into the same directory: {other:?}"),
    }
    drop(template);

    // One restored guest at a time: two nested guests of two vCPUs each are more than
    // the emulated machine runs reliably (two pods restored side by side, one vCPU
    // each, are in the CRI tests).
    for n in [1u8, 2] {
        let g = Guest::restore(snapshot_guest(&ns, dir.path(), n, Some(&snap)));
        assert_eq!(status(&g).state, VmState::Running);
        assert_eq!(status(&g).vcpus, 2);
        // vsock: every call here is a new connection to the restored agent. The
        // template's memory, untouched by the guest restored before.
        assert_eq!(g.run_ok("cat /run/marker"), "template\n");
        // A new generation ID reached the guest before anything ran in it: its
        // kernel reseeded its RNG on the generation event.
        assert_eq!(g.run_ok(RESEEDS).trim(), "1");
        g.run_ok(&format!("echo restored-{n} > /run/marker"));
        assert_eq!(g.run_ok("cat /run/marker"), format!("restored-{n}\n"));
        assert_eq!(g.run_ok("grep -c ^processor /proc/cpuinfo").trim(), "2");
        // Both vCPUs run (the second one too was restored).
        g.run_ok("taskset -c 1 true || (nproc; false)");
        // Block: the restored device reads and writes its own backing file.
        g.run_ok(&format!(
            "echo -n restored-{n} | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null"
        ));
        let mut got = [0u8; 10];
        std::fs::File::open(dir.path().join(format!("data{n}.img")))
            .unwrap()
            .read_exact_at(&mut got, 4096)
            .unwrap();
        assert_eq!(&got, format!("restored-{n}").as_bytes());
        // Net: the restored card on its own tap.
        g.run_ok(&format!(
            "ip addr add 10.78.{n}.2/24 dev eth0 && ip link set eth0 up && ping -c 3 -W 10 10.78.{n}.1"
        ));
        // Time goes on (the clock runs after restore).
        g.run_ok("sleep 1");
        poweroff(g);
    }
}

#[test]
fn damaged_or_mismatched_snapshots_are_refused_by_name() {
    let ns = Netns::new("snapbad");
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snapshot");
    std::fs::create_dir(&snap).unwrap();
    let template = Guest::boot(snapshot_guest(&ns, dir.path(), 0, None));
    match template.request(&Request::Snapshot { dir: snap.clone() }) {
        Ok(Response::Snapshot(_)) => {}
        other => panic!("snapshot: {other:?}"),
    }
    drop(template);
    let refused = |cfg: GuestConfig, want: &str| {
        let (status, log) = Guest::refused(cfg);
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(log.contains(want), "wanted {want:?} in:\n{log}");
    };

    // Another VM shape, another device list.
    let mut cfg = snapshot_guest(&ns, dir.path(), 1, Some(&snap));
    cfg.mem_mib = 512;
    refused(cfg.clone(), "taken with 256 MiB of memory, this VM has 512");
    cfg.mem_mib = 256;
    cfg.free_page_reporting = false;
    refused(cfg.clone(), "it holds the devices [drive data, net0, vsock, rng, balloon], this VM is configured with [drive data, net0, vsock, rng]");
    cfg.free_page_reporting = true;

    // A truncated memory file.
    let copy = |name: &str| {
        let to = dir.path().join(name);
        std::fs::create_dir(&to).unwrap();
        for f in ["state", "memory"] {
            sh(&format!(
                "cp --sparse=always {} {}",
                snap.join(f).display(),
                to.join(f).display()
            ));
        }
        to
    };
    let short = copy("short");
    sh(&format!(
        "truncate -s 100M {}",
        short.join("memory").display()
    ));
    cfg.restore = Some(short);
    refused(cfg.clone(), "truncated or not this snapshot's");

    // A corrupted state file.
    let bad = copy("bad");
    let mut state = std::fs::read(bad.join("state")).unwrap();
    let at = state.len() - 50;
    state[at] ^= 0x01;
    std::fs::write(bad.join("state"), state).unwrap();
    cfg.restore = Some(bad);
    refused(cfg.clone(), "corrupted");

    // A missing snapshot.
    cfg.restore = Some(dir.path().join("nothing"));
    refused(cfg, "cannot restore from");
}
