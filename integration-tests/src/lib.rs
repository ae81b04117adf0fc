//! Test harness: boots `vmlet-vmm` guests on real KVM and talks to them.
//!
//! Inputs come from the environment (set by `scripts/test.sh`):
//! `VMLET_KERNEL` (guest vmlinux), `VMLET_TEST_INITRAMFS` (vmlet-init plus
//! busybox), `VMLET_VMM` (the vmlet-vmm binary; defaults to the workspace's
//! debug build), and only to prove that crashes fail the suite,
//! `VMLET_TEST_VMM_FAULT` (see [`fault`]). Guest-booting tests need KVM that can run a standard kernel;
//! they fail loudly where there is none (run them through `scripts/with-kvm.sh`).

// Test-only crate: a harness step that fails panics with its message, and that panic
// is the test's failure (the workspace denies unwrap and expect in product code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod agent;
pub mod cri;
pub mod fault;
pub mod images;
pub mod kubectl;
pub mod kubelet;
pub mod net;
pub mod watchdog;
#[cfg(test)]
mod with_kvm_tests;

pub use agent::GuestAgent;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
pub use vmlet_vmm_api::config::{DriveConfig, FsConfig, NetConfig};
use vmlet_vmm_api::config::{SerialOutput, VmConfig, VsockConfig};
use vmlet_vmm_api::control::{ProtocolError, Request, Response};

/// How long a guest may take to boot. Generous: inside a TCG machine a boot
/// takes seconds and these machines are shared.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Guest agent vsock port.
pub const AGENT_PORT: u32 = 1024;

fn env_path(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(p) => PathBuf::from(p),
        None => panic!("{name} is not set: run the tests through scripts/test.sh"),
    }
}

/// Panics unless `/dev/kvm` can boot a standard guest kernel here.
pub fn require_kvm() {
    let hw =
        Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists();
    assert!(
        hw && Path::new("/dev/kvm").exists(),
        "no hardware-virtualized KVM here (kvm_intel/kvm_amd not loaded): run through scripts/with-kvm.sh"
    );
}

/// The vmlet-vmm binary to start: `VMLET_VMM`, else the workspace's debug build; or
/// the fault injector's wrapper around it when `VMLET_TEST_VMM_FAULT` is set (see
/// [`fault`]).
pub fn vmm_binary() -> PathBuf {
    fault::wrap(real_vmm_binary())
}

/// The vmlet-vmm binary itself: `VMLET_VMM`, else the workspace's debug build.
pub fn real_vmm_binary() -> PathBuf {
    std::env::var_os("VMLET_VMM")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/vmlet-vmm"))
}

/// Guest kernel.
pub fn kernel() -> PathBuf {
    env_path("VMLET_KERNEL")
}

/// Test initramfs (vmlet-init and busybox).
pub fn initramfs() -> PathBuf {
    env_path("VMLET_TEST_INITRAMFS")
}

/// How to boot a guest: what differs between the tests' VMs. The harness adds the
/// kernel, initramfs, serial console, vsock and control socket, and starts the VMM
/// with the flags `vmlet-vmm-api` prints for the whole configuration.
#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// vCPUs.
    pub vcpus: u8,
    /// Memory in MiB.
    pub mem_mib: u64,
    /// Block devices, in guest order.
    pub drives: Vec<DriveConfig>,
    /// Network cards.
    pub net: Vec<NetConfig>,
    /// A virtio-balloon with free page reporting.
    pub free_page_reporting: bool,
    /// virtio-fs devices (their backends must be listening).
    pub fs: Vec<FsConfig>,
    /// Guest RAM in a shared memfd even without virtio-fs devices.
    pub shared_memory: bool,
    /// Run the VMM in this network namespace.
    pub netns: Option<String>,
    /// Restore from the snapshot in this directory instead of booting.
    pub restore: Option<PathBuf>,
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            vcpus: 1,
            mem_mib: 256,
            drives: Vec::new(),
            net: Vec::new(),
            free_page_reporting: false,
            fs: Vec::new(),
            shared_memory: false,
            netns: None,
            restore: None,
        }
    }
}

/// A drive `id` backed by `path`.
pub fn drive(id: &str, path: &Path, read_only: bool) -> DriveConfig {
    DriveConfig {
        id: id.to_owned(),
        path: path.to_owned(),
        read_only,
    }
}

/// A network card on `tap` with guest MAC `mac`.
pub fn net(tap: &str, mac: &str) -> NetConfig {
    NetConfig {
        tap: tap.to_owned(),
        mac: Some(mac.to_owned()),
        no_offloads: false,
    }
}

impl GuestConfig {
    /// The command that starts the VMM, in the configured network namespace.
    fn vmm_command(&self) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(vmm_binary());
                c
            }
            None => Command::new(vmm_binary()),
        }
    }

    /// The VMM's whole launch configuration, with the serial console, vsock and control
    /// socket at these paths.
    fn vm_config(&self, serial: &Path, vsock: &Path, control: &Path) -> VmConfig {
        VmConfig {
            initramfs: Some(initramfs()),
            vcpus: self.vcpus,
            mem_mib: self.mem_mib,
            drives: self.drives.clone(),
            net: self.net.clone(),
            vsock: Some(VsockConfig {
                cid: 3,
                uds_path: vsock.to_owned(),
            }),
            free_page_reporting: self.free_page_reporting,
            fs: self.fs.clone(),
            shared_memory: self.shared_memory,
            serial: SerialOutput::File(serial.to_owned()),
            control_socket: Some(control.to_owned()),
            restore: self.restore.clone(),
            ..VmConfig::new(kernel())
        }
    }
}

/// A running guest. Killed on drop; a VMM that exited with a failure (or any VMM when
/// the test panics) has the tails of its own log and its serial console printed then,
/// and a failed exit the test never looked at ([`Guest::wait`]) fails the test.
pub struct Guest {
    child: Child,
    /// The test took the VMM's exit status ([`Guest::wait`]).
    observed: bool,
    /// Scratch directory holding the sockets and the logs.
    pub dir: tempfile::TempDir,
    /// Serial console log.
    pub serial: PathBuf,
    /// The VMM's stdout and stderr.
    pub vmm_log: PathBuf,
    /// Hybrid vsock socket.
    pub vsock: PathBuf,
    /// Shows the logs if the test passes its deadline.
    _watched: watchdog::Watched,
    /// Control socket.
    pub control: PathBuf,
}

impl Guest {
    /// Boots a guest and waits until vmlet-init is ready; panics if it is not.
    ///
    /// There is no second attempt, in the emulated TCG machine either: a VMM that
    /// exits or a guest that panics before init is ready fails the test. (A failure
    /// of the emulated machine itself is recognised, and the test run again, by
    /// `scripts/test.sh` and `scripts/with-kvm.sh`.)
    pub fn boot(cfg: GuestConfig) -> Guest {
        require_kvm();
        match Self::try_boot(&cfg) {
            Ok(g) => g,
            Err(e) => panic!("guest did not boot: {e}"),
        }
    }

    fn try_boot(cfg: &GuestConfig) -> Result<Guest, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let serial = dir.path().join("serial.log");
        let vmm_log = dir.path().join("vmm.log");
        let vsock = dir.path().join("vsock.sock");
        let control = dir.path().join("control.sock");
        let mut cmd = cfg.vmm_command();
        let args = cfg
            .vm_config(&serial, &vsock, &control)
            .to_args()
            .map_err(|e| format!("the VMM's flags: {e}"))?;
        cmd.args(args);
        let log = std::fs::File::create(&vmm_log).expect("create vmm.log");
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the vmm.log handle"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn vmlet-vmm");
        let _watched = watchdog::watch(
            format!("guest (VMM pid {})", child.id()),
            vec![serial.clone(), vmm_log.clone()],
        );
        let mut guest = Guest {
            child,
            observed: false,
            _watched,
            dir,
            serial,
            vmm_log,
            vsock,
            control,
        };
        if cfg.restore.is_some() {
            // A restored guest prints nothing: it was ready when it was saved.
            watchdog::step("restoring a guest: waiting for its agent to answer");
            guest.wait_for_agent(BOOT_TIMEOUT)?;
        } else {
            watchdog::step("booting a guest: waiting for 'vmlet-init: ready' on its console");
            guest.wait_for(|log| log.contains("vmlet-init: ready"), BOOT_TIMEOUT)?;
        }
        Ok(guest)
    }

    /// Restores a guest from the snapshot in `cfg.restore` and waits until its
    /// agent answers; panics if it does not.
    pub fn restore(cfg: GuestConfig) -> Guest {
        require_kvm();
        assert!(cfg.restore.is_some(), "Guest::restore without a snapshot");
        match Self::try_boot(&cfg) {
            Ok(g) => g,
            Err(e) => panic!("guest was not restored: {e}"),
        }
    }

    /// Starts a VMM with `cfg` without waiting for the guest, and waits for the
    /// VMM's exit (for configurations it must refuse): its status and log.
    pub fn refused(cfg: GuestConfig) -> (ExitStatus, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = cfg.vm_config(
            &dir.path().join("serial.log"),
            &dir.path().join("vsock.sock"),
            &dir.path().join("control.sock"),
        );
        let mut cmd = cfg.vmm_command();
        let out = cmd
            .args(config.to_args().expect("the VMM's flags"))
            .stdin(Stdio::null())
            .output()
            .expect("run vmlet-vmm");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status, text)
    }

    /// Waits until the guest agent answers Health.
    fn wait_for_agent(&mut self, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "the VMM exited with {status} before the agent answered; its log:\n{}",
                    tail(&self.vmm_log, 20)
                ));
            }
            let last = match GuestAgent::connect(&self.vsock)
                .and_then(|a| a.health().map_err(|e| e.to_string()))
            {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if start.elapsed() > timeout {
                return Err(format!(
                    "the agent did not answer within {timeout:?}: {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The VMM's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The serial log so far.
    pub fn serial_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits until the serial console log satisfies `done`.
    pub fn wait_for(
        &mut self,
        done: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let log = self.serial_log();
            if done(&log) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "vmlet-vmm exited ({status}) early; its log:\n{}\nserial:\n{log}",
                    tail(&self.vmm_log, 40)
                ));
            }
            if start.elapsed() > timeout {
                return Err(format!("timed out after {timeout:?}; serial:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Opens a hybrid-vsock stream to guest `port`.
    pub fn connect(&self, port: u32) -> std::io::Result<UnixStream> {
        let mut s = UnixStream::connect(&self.vsock)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.write_all(format!("CONNECT {port}\n").as_bytes())?;
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while b[0] != b'\n' {
            if s.read(&mut b)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("vsock port {port}: closed before OK"),
                ));
            }
            line.push(b[0]);
        }
        let line = String::from_utf8_lossy(&line);
        if !line.starts_with("OK ") {
            return Err(std::io::Error::other(format!(
                "vsock CONNECT answered {line:?}"
            )));
        }
        Ok(s)
    }

    /// Sends `CONNECT <port>` without waiting for the answer.
    pub fn connect_nowait(&self, port: u32) -> UnixStream {
        let mut s = UnixStream::connect(&self.vsock).expect("connect to the vsock socket");
        s.write_all(format!("CONNECT {port}\n").as_bytes())
            .expect("send CONNECT");
        s
    }

    /// A client for the guest agent's gRPC services.
    pub fn agent(&self) -> GuestAgent {
        GuestAgent::connect(&self.vsock).unwrap_or_else(|e| {
            panic!(
                "connect to the guest agent: {e}; serial:\n{}",
                self.serial_log()
            )
        })
    }

    /// Runs a command in the guest and returns (status, stdout, stderr).
    pub fn run(&self, script: &str) -> (i64, String, String) {
        let r = self.agent().run(script);
        (
            i64::from(r.exit_code),
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        )
    }

    /// Runs a command in the guest that must succeed; returns its stdout.
    pub fn run_ok(&self, script: &str) -> String {
        let (status, out, err) = self.run(script);
        assert_eq!(
            status, 0,
            "{script:?} failed: stdout {out:?} stderr {err:?}"
        );
        out
    }

    /// Sends one control-socket request as `vmlet-vmm-api` encodes it, and decodes the
    /// reply: a refusal is `Err(ProtocolError::Refused)`.
    pub fn request(&self, request: &Request) -> Result<Response, ProtocolError> {
        let line = self.control_line(&request.encode()?);
        Response::decode(request, line.as_bytes())
    }

    /// Sends one raw control-socket request, for tests of the wire format itself
    /// (unknown commands, versions); everything else goes through [`Guest::request`].
    pub fn control(&self, req: Value) -> Value {
        let line = self.control_line(&req.to_string());
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad response {line:?}: {e}"))
    }

    /// Sends one request line and returns the reply line.
    fn control_line(&self, line: &str) -> String {
        let s = UnixStream::connect(&self.control).expect("connect to the control socket");
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        JsonLines::new(s).exchange(line)
    }

    /// Waits for the VMM to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for vmlet-vmm") {
                self.observed = true;
                return status;
            }
            if start.elapsed() > timeout {
                panic!(
                    "vmlet-vmm still running after {timeout:?}; serial:\n{}",
                    self.serial_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` to the VMM process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let r = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Whether the VMM process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let exited = self.child.try_wait().ok().flatten();
        // An exit the test waited for is its to judge.
        let failed = exited.is_some_and(|s| !s.success()) && !self.observed;
        if failed || std::thread::panicking() {
            let state = exited.map_or("still running".to_owned(), |s| format!("exited: {s}"));
            say(&format!("--- vmlet-vmm pid {} {state}", self.child.id()));
            print_tail("vmm.log", &self.vmm_log, 40);
            print_tail("serial console", &self.serial, 60);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(status) = exited.filter(|_| failed && !std::thread::panicking()) {
            panic!(
                "vmlet-vmm pid {} exited ({status}) while the test did not expect it (its \
                 logs are printed above)",
                self.child.id()
            );
        }
    }
}

/// The last `n` lines of a text file, or why there are none.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// Writes `text` and a newline straight to stderr: unlike `eprintln!`, not captured by
/// the test harness, so it shows for tests that pass (and for tests that hang).
pub fn say(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.write_all(b"\n");
}

/// Prints the last `n` lines of a log file on stderr under a header naming it.
pub fn print_tail(what: &str, path: &Path, n: usize) {
    say(&format!(
        "--- {what} ({}), last {n} lines ---",
        path.display()
    ));
    say(&tail(path, n));
}

/// Newline-delimited JSON client (the VMM's control socket speaks it).
pub struct JsonLines {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl JsonLines {
    /// Wraps a connected stream.
    pub fn new(stream: UnixStream) -> JsonLines {
        let writer = stream.try_clone().expect("clone stream");
        JsonLines {
            reader: BufReader::new(stream),
            writer,
        }
    }

    /// Sends one line (the newline is added) and reads one line back.
    pub fn exchange(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .expect("send request");
        let mut resp = String::new();
        self.reader.read_line(&mut resp).expect("read response");
        resp
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a failure is reproducible.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs the VMM with `args` and returns (status, stderr).
pub fn vmm_output(args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = Command::new(vmm_binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run vmlet-vmm");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a shell command on the host that must succeed.
pub fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// A network namespace, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    /// Creates `vmlet-<tag>-<pid>` with `lo` up.
    pub fn new(tag: &str) -> Netns {
        let ns = Netns(format!("vmlet-{tag}-{}", std::process::id()));
        sh(&format!(
            "ip netns add {n} && ip -n {n} link set lo up",
            n = ns.0
        ));
        ns
    }
}

impl Netns {
    /// Runs `f` on a thread inside this namespace (sockets it opens live there).
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = Path::new("/run/netns").join(&self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                // SAFETY: setns on a namespace file we hold open; it moves only this
                // thread, which ends with `f`.
                let r = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET)
                };
                assert_eq!(
                    r,
                    0,
                    "setns {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
