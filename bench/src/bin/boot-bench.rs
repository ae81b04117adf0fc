//! Boot benchmark: boots the same kernel and initramfs with vmlet-vmm and with
//! QEMU's microvm machine, alternating (the order of each pair reversed from the
//! last), and reports time from process start to the guest init's first console
//! line, plus the VMM's memory overhead. In the same run it restores vmlet-vmm
//! guests from a snapshot of one booted guest of the same shape, each restore
//! placed among the pair of cold boots at a rotating position (first, between,
//! last), and reports time from process start to the guest agent answering Health,
//! next to the vmlet-vmm cold boots' time to the same answer. Boots and restores
//! that fail or time out are counted and printed (`failed_boots_*=`,
//! `timed_out_boots_*=`, `failed_restores=`, `timed_out_restores=`), never left out
//! silently.
//!
//! Usage: boot-bench --kernel K --initramfs I [--runs N] [--vmm PATH] [--qemu PATH]
//!                   [--qemu-cmdline same|plain]
//!
//! The guest kernel command line is the same for both by default (`same`): QEMU gets
//! every parameter vmlet-vmm always adds (`BASE_CMDLINE` of vmm/src/builder.rs) plus
//! the benchmark's own. `plain` gives QEMU only `console=ttyS0 reboot=k panic=1` and
//! the benchmark's own, as QEMU's users would, to measure what vmlet's parameters
//! are worth.
//!
//! vmlet-vmm's guests (cold boots, the snapshotted one and the restores) have one
//! vCPU, `MEM_MIB` of memory and one device, vsock, which is how the benchmark
//! reaches their agent (a restore needs the device list of its snapshot). QEMU's
//! guest has no device: the benchmark cannot reach its agent, so QEMU's figure is to
//! init's first console line only.
//!
//! Memory overhead = the VMM's peak RSS (`VmHWM`) minus the resident part of the
//! guest-memory mapping (`Rss` of that mapping in /proc/PID/smaps), both read once
//! init has started: what the VMM itself costs beyond the guest pages it touched.
//! Idle private memory = `Private_Clean` + `Private_Dirty` of /proc/PID/smaps_rollup
//! of a vmlet-vmm whose agent answered `IDLE` ago (the dirty part alone too: pages
//! of a file that only this process maps count as private clean, though a second VM
//! mapping the same file would share them).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmlet_proto::agent::{self as pb, agent_client::AgentClient};
use vmlet_vmm_api::config::{SerialOutput, VmConfig, VsockConfig};
use vmlet_vmm_api::control::{Request, Response, SnapshotReply};

const MARKER: &str = "vmlet-init: started";
const MEM_MIB: u64 = 128;
const CMDLINE: &str = "quiet";
const TIMEOUT: Duration = Duration::from_secs(120);
/// How long after init's first console line the VMM's overhead is read.
const SETTLE: Duration = Duration::from_millis(300);
/// How long after its agent first answered a VMM counts as idle (its private memory
/// is read then, and the template is snapshotted then).
const IDLE: Duration = Duration::from_secs(1);
/// Pause between two attempts to reach the agent.
const POLL: Duration = Duration::from_millis(10);
/// Limit of one attempt to reach the agent (connect + Health).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Limit of the control socket's snapshot (the VM is paused and its memory written).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Boots of the guest to snapshot before restores are given up (nested guests
/// sometimes die early in an emulated machine).
const TEMPLATE_ATTEMPTS: usize = 3;
/// The guest's vsock CID.
const GUEST_CID: u64 = 3;
/// What vmlet-vmm always puts on the guest's command line (a copy of
/// `vmlet_vmm::builder::BASE_CMDLINE`; a test below keeps them equal).
const VMLET_BASE_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 8250.nr_uarts=1 tsc=reliable no_timer_check acpi=noirq pci=off";
/// What QEMU's users pass at least.
const PLAIN_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

struct Args {
    kernel: PathBuf,
    initramfs: PathBuf,
    runs: usize,
    vmm: PathBuf,
    qemu: String,
    /// QEMU gets vmlet-vmm's base command line too.
    same_cmdline: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut kernel, mut initramfs, mut runs) = (None, None, 20);
    let mut vmm = vmlet_integration_tests::vmm_binary();
    let mut qemu = "qemu-system-x86_64".to_owned();
    let mut same_cmdline = true;
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(val()?)),
            "--initramfs" => initramfs = Some(PathBuf::from(val()?)),
            "--runs" => runs = val()?.parse().map_err(|_| "bad --runs")?,
            "--vmm" => vmm = PathBuf::from(val()?),
            "--qemu" => qemu = val()?,
            "--qemu-cmdline" => {
                same_cmdline = match val()?.as_str() {
                    "same" => true,
                    "plain" => false,
                    v => return Err(format!("--qemu-cmdline wants same or plain, not {v}")),
                }
            }
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(Args {
        kernel: kernel.ok_or("--kernel is required")?,
        initramfs: initramfs.ok_or("--initramfs is required")?,
        runs,
        vmm,
        qemu,
        same_cmdline,
    })
}

/// The command line QEMU's guest gets: what vmlet-vmm's guest gets (its base plus
/// `CMDLINE`), or QEMU's plain one plus `CMDLINE`.
fn qemu_cmdline(a: &Args) -> String {
    let base = if a.same_cmdline {
        VMLET_BASE_CMDLINE
    } else {
        PLAIN_CMDLINE
    };
    format!("{base} {CMDLINE}")
}

/// Every vmlet-vmm guest of the benchmark: one vCPU, `MEM_MIB`, no rng, vsock on
/// `vsock` as its only device, the console on stdout. The snapshotted guest adds a
/// control socket, the restores the snapshot: neither changes the device list.
fn vmlet_config(a: &Args, vsock: &Path) -> VmConfig {
    VmConfig {
        initramfs: Some(a.initramfs.clone()),
        cmdline: CMDLINE.to_owned(),
        vcpus: 1,
        mem_mib: MEM_MIB,
        vsock: Some(VsockConfig {
            cid: GUEST_CID,
            uds_path: vsock.to_owned(),
        }),
        rng: false,
        serial: SerialOutput::Stdout,
        ..VmConfig::new(a.kernel.clone())
    }
}

fn vmlet_cmd(a: &Args, cfg: &VmConfig) -> Result<Command, String> {
    let mut c = Command::new(&a.vmm);
    c.args(cfg.to_args().map_err(|e| format!("the VMM's flags: {e}"))?);
    // For the VMM's "VM built/restored ... started in" line (`Sample::built`).
    c.env("VMLET_LOG", "vmlet_vmm::builder=info");
    Ok(c)
}

fn qemu_cmd(a: &Args) -> Command {
    let mut c = Command::new(&a.qemu);
    c.args([
        "-M",
        "microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on,rtc=off",
        "-enable-kvm",
        "-cpu",
        "host",
        "-smp",
        "1",
        "-m",
        &MEM_MIB.to_string(),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
    ])
    .arg(&a.kernel)
    .arg("-initrd")
    .arg(&a.initramfs)
    .arg("-append")
    .arg(qemu_cmdline(a));
    c
}
/// Resident KiB of guest memory: the run of adjacent mappings that together
/// span exactly `MEM_MIB` MiB (vmlet-vmm maps kernel and initramfs pages into its
/// guest memory, which splits that mapping; QEMU's is a single one).
fn guest_rss_kib(pid: u32) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut vmas: Vec<(u64, u64, u64)> = Vec::new(); // start, end, rss
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((s, e)) = first.split_once('-') {
            if let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) {
                vmas.push((s, e, 0));
                continue;
            }
        }
        if line.starts_with("Rss:") {
            let kib = line.split_whitespace().nth(1)?.parse().ok()?;
            vmas.last_mut()?.2 = kib;
        }
    }
    let target = MEM_MIB << 20;
    for i in 0..vmas.len() {
        let (start, mut end, mut rss) = vmas[i];
        let mut j = i + 1;
        while end - start < target && j < vmas.len() && vmas[j].0 == end {
            end = vmas[j].1;
            rss += vmas[j].2;
            j += 1;
        }
        if end - start == target {
            return Some(rss);
        }
    }
    None
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `Private_Clean` and `Private_Dirty` of /proc/PID/smaps_rollup, KiB.
#[derive(Clone, Copy)]
struct Private {
    clean: u64,
    dirty: u64,
}

fn private_kib(pid: u32) -> Option<Private> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |key: &str| -> Option<u64> {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(Private {
        clean: field("Private_Clean:")?,
        dirty: field("Private_Dirty:")?,
    })
}

/// What a run waits for.
#[derive(Clone, Copy)]
enum Ready<'a> {
    /// Init's first console line (QEMU's guest: the benchmark cannot reach its agent).
    Init,
    /// Init's first console line, then the agent answering Health through the
    /// hybrid-vsock socket at this path (a vmlet-vmm cold boot).
    InitThenAgent(&'a Path),
    /// The agent answering Health (a restored guest prints nothing: it had booted).
    Agent(&'a Path),
}

impl Ready<'_> {
    fn init(self) -> bool {
        matches!(self, Ready::Init | Ready::InitThenAgent(_))
    }

    fn vsock(self) -> Option<PathBuf> {
        match self {
            Ready::Init => None,
            Ready::InitThenAgent(p) | Ready::Agent(p) => Some(p.to_owned()),
        }
    }
}

#[derive(Default)]
struct Sample {
    /// Process start to init's first console line.
    init: Option<Duration>,
    /// Process start to the agent answering Health.
    ready: Option<Duration>,
    /// Process start to the VMM's log line saying the VM is built (or restored) and
    /// its vCPUs started.
    built: Option<Duration>,
    /// How long the VMM says the build (or restore) took, as it prints it.
    build_took: Option<String>,
    /// Process start to the hybrid-vsock socket's appearance, and the attempts to
    /// reach the agent.
    socket: Option<Duration>,
    attempts: u32,
    overhead_kib: Option<u64>,
    /// Read `IDLE` after the agent answered.
    idle_private: Option<Private>,
}

/// Why a boot or restore produced no sample.
enum Failure {
    /// The VMM could not start, or exited (closed its console) before it was ready.
    Failed(String),
    /// Not ready within `TIMEOUT`: what was waited for.
    TimedOut(String),
}

/// A VMM process, killed and reaped when dropped.
struct Vmm {
    child: Child,
    start: Instant,
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vmm {
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }
}

/// `e` and its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// One attempt to reach the guest agent: connect through the hybrid-vsock socket
/// and call Health.
async fn health(vsock: &Path) -> Result<(), String> {
    let channel = vmlet_proto::hybrid::channel(vsock, vmlet_proto::AGENT_PORT, CALL_TIMEOUT)
        .await
        .map_err(|e| chain(&e))?;
    let mut agent = AgentClient::new(channel);
    match tokio::time::timeout(CALL_TIMEOUT, agent.health(pb::HealthRequest {})).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(chain(&status)),
        Err(_) => Err(format!("no Health answer within {CALL_TIMEOUT:?}")),
    }
}

/// Tries to reach the agent every `POLL` until it answers Health (the time since
/// the VMM started), the VMM exits, or `TIMEOUT` since the VMM started has passed.
fn wait_for_agent(
    rt: &tokio::runtime::Runtime,
    vmm: &mut Vmm,
    vsock: &Path,
    sample: &mut Sample,
) -> Result<Duration, Failure> {
    let mut last = String::from("no attempt");
    loop {
        if sample.socket.is_none() && vsock.exists() {
            sample.socket = Some(vmm.start.elapsed());
        }
        if let Some(status) = vmm.exited() {
            return Err(Failure::Failed(format!(
                "exited before the agent answered: {status} (last attempt: {last})"
            )));
        }
        if vmm.start.elapsed() > TIMEOUT {
            return Err(Failure::TimedOut(format!(
                "the agent did not answer within {TIMEOUT:?} (last attempt: {last})"
            )));
        }
        if sample.socket.is_some() {
            sample.attempts += 1;
        }
        match rt.block_on(health(vsock)) {
            Ok(()) => return Ok(vmm.start.elapsed()),
            Err(e) => last = e,
        }
        std::thread::sleep(POLL);
    }
}

/// Starts `cmd` and waits until its guest is `ready`; the VMM still runs.
fn start(
    rt: &tokio::runtime::Runtime,
    mut cmd: Command,
    ready: Ready,
) -> Result<(Vmm, Sample), Failure> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let child: Child = cmd
        .spawn()
        .map_err(|e| Failure::Failed(format!("spawn: {e}")))?;
    let mut vmm = Vmm { child, start };
    let Some(stdout) = vmm.child.stdout.take() else {
        return Err(Failure::Failed("no stdout".into()));
    };
    let built = Arc::new(Mutex::new(None));
    if let Some(stderr) = vmm.child.stderr.take() {
        let built = built.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some((_, took)) = line.split_once(" started in ") {
                    *built.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((start.elapsed(), took.trim().to_owned()));
                }
            }
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = false;
        // Read to the end: a console nobody reads would fail the VMM's writes.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !seen && line.contains(MARKER) {
                seen = true;
                let _ = tx.send(start.elapsed());
            }
        }
    });
    let mut sample = Sample::default();
    if ready.init() {
        match rx.recv_timeout(TIMEOUT) {
            Ok(elapsed) => sample.init = Some(elapsed),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err(Failure::TimedOut(format!(
                    "no {MARKER:?} within {TIMEOUT:?}"
                )))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                // The console closed without the marker: the VMM exited.
                let status = vmm
                    .child
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| s.to_string());
                return Err(Failure::Failed(format!(
                    "exited before {MARKER:?}: {status}"
                )));
            }
        }
    }
    if let Some(vsock) = ready.vsock() {
        sample.ready = Some(wait_for_agent(rt, &mut vmm, &vsock, &mut sample)?);
    }
    let built = built.lock().unwrap_or_else(|e| e.into_inner()).take();
    (sample.built, sample.build_took) = built.unzip();
    Ok((vmm, sample))
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Starts `cmd`, waits until its guest is `ready`, reads the VMM's memory figures
/// (the overhead `SETTLE` after init's first line, or after the agent's answer for
/// a restore; the private memory `IDLE` after the agent's answer) and ends it.
fn measure(rt: &tokio::runtime::Runtime, cmd: Command, ready: Ready) -> Result<Sample, Failure> {
    let (vmm, mut sample) = start(rt, cmd, ready)?;
    let pid = vmm.child.id();
    // Let the guest settle so its boot-time pages are all counted.
    let settled_from = sample.init.or(sample.ready).unwrap_or_default();
    sleep_until(vmm.start + settled_from + SETTLE);
    sample.overhead_kib = match (status_kib(pid, "VmHWM:"), guest_rss_kib(pid)) {
        (Some(hwm), Some(guest)) => Some(hwm.saturating_sub(guest)),
        _ => None,
    };
    if let Some(ready) = sample.ready {
        sleep_until(vmm.start + ready + IDLE);
        sample.idle_private = private_kib(pid);
    }
    Ok(sample)
}

/// Sends one control-socket request and reads its reply.
fn control(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, String> {
    let line = request.encode().map_err(|e| e.to_string())?;
    let mut s = UnixStream::connect(socket).map_err(|e| format!("{socket:?}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut reply = String::new();
    BufReader::new(s)
        .read_line(&mut reply)
        .map_err(|e| format!("read the reply: {e}"))?;
    Response::decode(request, reply.trim_end().as_bytes()).map_err(|e| e.to_string())
}

/// Boots the guest to snapshot (`vmlet_config` with a control socket) in `dir`,
/// waits until its agent answers and it idled `IDLE`, snapshots it into
/// `dir/snapshot` and ends it. Returns the snapshot's directory and the VMM's reply.
fn snapshot(
    a: &Args,
    rt: &tokio::runtime::Runtime,
    dir: &Path,
) -> Result<(PathBuf, SnapshotReply), String> {
    let vsock = dir.join("vsock.sock");
    let mut cfg = vmlet_config(a, &vsock);
    let socket = dir.join("control.sock");
    cfg.control_socket = Some(socket.clone());
    let (vmm, sample) = match start(rt, vmlet_cmd(a, &cfg)?, Ready::InitThenAgent(&vsock)) {
        Ok(started) => started,
        Err(Failure::Failed(e) | Failure::TimedOut(e)) => return Err(e),
    };
    sleep_until(vmm.start + sample.ready.unwrap_or_default() + IDLE);
    let snap = dir.join("snapshot");
    std::fs::create_dir(&snap).map_err(|e| format!("{snap:?}: {e}"))?;
    let request = Request::Snapshot { dir: snap.clone() };
    match control(&socket, &request, SNAPSHOT_TIMEOUT)? {
        Response::Snapshot(reply) => Ok((snap, reply)),
        other => Err(format!("the snapshot's reply: {other:?}")),
    }
    // The VMM (paused by the snapshot) ends with `vmm`.
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `p` quantile (0..=1) of a non-empty `v`: the sample at that rank, rounded.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// One kind of run's results.
#[derive(Default)]
struct Side {
    /// Process start to init's first console line.
    times: Vec<f64>,
    /// Process start to the agent answering Health.
    ready: Vec<f64>,
    mem: Vec<f64>,
    private: Vec<f64>,
    private_dirty: Vec<f64>,
    failed: usize,
    timed_out: usize,
}

impl Side {
    fn add(&mut self, s: &Sample) {
        if let Some(t) = s.init {
            self.times.push(millis(t));
        }
        if let Some(t) = s.ready {
            self.ready.push(millis(t));
        }
        if let Some(k) = s.overhead_kib {
            self.mem.push(k as f64);
        }
        if let Some(p) = s.idle_private {
            self.private.push((p.clean + p.dirty) as f64);
            self.private_dirty.push(p.dirty as f64);
        }
    }
}

/// The per-run line's figures.
fn figures(s: &Sample) -> String {
    let kib = |k: Option<u64>| k.map_or("?".into(), |k| k.to_string());
    let mut line = String::new();
    if let Some(t) = s.init {
        line.push_str(&format!(" boot_to_init_ms={:.1}", millis(t)));
    }
    if let Some(t) = s.ready {
        let key = if s.init.is_some() {
            "boot_to_ready_ms"
        } else {
            "restore_to_ready_ms"
        };
        line.push_str(&format!(" {key}={:.1}", millis(t)));
    }
    let ms = |t: Option<Duration>| t.map_or("?".into(), |t| format!("{:.1}", millis(t)));
    if s.ready.is_some() {
        // Where the time went: the VMM's own start and build, then the guest.
        line.push_str(&format!(
            " socket_ms={} built_ms={} build_took={} agent_attempts={}",
            ms(s.socket),
            ms(s.built),
            s.build_took.as_deref().unwrap_or("?"),
            s.attempts
        ));
    }
    line.push_str(&format!(" overhead_rss_kib={}", kib(s.overhead_kib)));
    if s.ready.is_some() {
        line.push_str(&format!(
            " idle_private_kib={} idle_private_dirty_kib={}",
            kib(s.idle_private.map(|p| p.clean + p.dirty)),
            kib(s.idle_private.map(|p| p.dirty)),
        ));
    }
    line
}

const VMLET: usize = 0;
const QEMU: usize = 1;
const RESTORE: usize = 2;

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("boot-bench: {e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("boot-bench: a tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("boot-bench: a temporary directory: {e}");
            std::process::exit(1);
        }
    };
    println!("vmlet_vmm_cmdline=\"{VMLET_BASE_CMDLINE} {CMDLINE}\"");
    println!("qemu_microvm_cmdline=\"{}\"", qemu_cmdline(&args));
    println!(
        "ready=\"the guest agent answers Health over vsock (boot_to_ready: vmlet-vmm cold \
         boots; restore_to_ready: restores); boot_to_init: init's first console line (QEMU \
         microvm's guest has no vsock: restore_vs_qemu_cold_boot divides by its boot_to_init)\""
    );

    // The snapshot every restore starts from.
    let mut snapshot_taken = None;
    for attempt in 1..=TEMPLATE_ATTEMPTS {
        let at = dir.path().join(format!("template{attempt}"));
        let taken = std::fs::create_dir(&at)
            .map_err(|e| format!("{at:?}: {e}"))
            .and_then(|()| snapshot(&args, &rt, &at));
        match taken {
            Ok((snap, reply)) => {
                println!(
                    "snapshot took_ms={} memory_bytes={} memory_file_bytes={} state_bytes={}",
                    reply.took_ms, reply.memory_bytes, reply.memory_file_bytes, reply.state_bytes
                );
                snapshot_taken = Some((snap, reply));
                break;
            }
            Err(e) => println!("snapshot attempt {attempt} failed: {e}"),
        }
    }

    let names = ["vmlet-vmm", "qemu-microvm", "restore"];
    let mut sides = [Side::default(), Side::default(), Side::default()];
    for i in 0..args.runs {
        // Each pair in the other order than the last: neither VMM always boots first;
        // the restore goes first, between or last in turn.
        let mut order = if i % 2 == 0 {
            vec![VMLET, QEMU]
        } else {
            vec![QEMU, VMLET]
        };
        if snapshot_taken.is_some() {
            order.insert((i / 2) % 3, RESTORE);
        }
        for which in order {
            let name = names[which];
            let run_dir = dir.path().join(format!("run{i}-{which}"));
            let vsock = run_dir.join("vsock.sock");
            let prepared = match which {
                QEMU => Ok((qemu_cmd(&args), Ready::Init)),
                _ => std::fs::create_dir(&run_dir)
                    .map_err(|e| format!("{run_dir:?}: {e}"))
                    .and_then(|()| {
                        let mut cfg = vmlet_config(&args, &vsock);
                        if which == RESTORE {
                            cfg.restore = snapshot_taken.as_ref().map(|(snap, _)| snap.clone());
                            Ok((vmlet_cmd(&args, &cfg)?, Ready::Agent(&vsock)))
                        } else {
                            Ok((vmlet_cmd(&args, &cfg)?, Ready::InitThenAgent(&vsock)))
                        }
                    }),
            };
            let side = &mut sides[which];
            let result = prepared
                .map_err(Failure::Failed)
                .and_then(|(cmd, ready)| measure(&rt, cmd, ready));
            match result {
                Ok(s) => {
                    println!("run {i:2} {name:12}{}", figures(&s));
                    side.add(&s);
                }
                // Counted and reported, not fatal, and not in the medians.
                Err(Failure::Failed(e)) => {
                    println!("run {i:2} {name:12} failed: {e}");
                    side.failed += 1;
                }
                Err(Failure::TimedOut(e)) => {
                    println!("run {i:2} {name:12} timed out: {e}");
                    side.timed_out += 1;
                }
            }
            let _ = std::fs::remove_dir_all(&run_dir);
        }
    }
    for (name, side) in names[..2].iter().zip(&sides) {
        let key = name.replace('-', "_");
        println!("boots_{key}={}", args.runs);
        println!("failed_boots_{key}={}", side.failed);
        println!("timed_out_boots_{key}={}", side.timed_out);
    }
    let restores = if snapshot_taken.is_some() {
        args.runs
    } else {
        0
    };
    println!("restores={restores}");
    println!("failed_restores={}", sides[RESTORE].failed);
    println!("timed_out_restores={}", sides[RESTORE].timed_out);
    let [ours, qemu, restored] = &mut sides;
    if ours.times.is_empty() || qemu.times.is_empty() {
        eprintln!("boot-bench: no successful boots to report for one of the VMMs");
        std::process::exit(1);
    }
    let ours_p50 = median(&mut ours.times);
    let qemu_p50 = median(&mut qemu.times);
    println!("qemu_microvm_boot_to_init_ms_p50={qemu_p50:.0}");
    if !qemu.mem.is_empty() {
        println!("qemu_microvm_overhead_rss_kib={:.0}", median(&mut qemu.mem));
    }
    println!("boot_to_init_ms_p50={ours_p50:.0}");
    println!("boot_vs_qemu_microvm={:.2}", ours_p50 / qemu_p50);
    if !ours.mem.is_empty() {
        println!("vmm_overhead_rss_kib={:.0}", median(&mut ours.mem));
    }
    let ready_p50 = (!ours.ready.is_empty()).then(|| median(&mut ours.ready));
    if let Some(p50) = ready_p50 {
        println!("boot_to_ready_ms_p50={p50:.0}");
        println!(
            "boot_to_ready_ms_p90={:.0}",
            percentile(&mut ours.ready, 0.9)
        );
    }
    if !ours.private.is_empty() {
        println!("boot_idle_private_kib={:.0}", median(&mut ours.private));
        println!(
            "boot_idle_private_dirty_kib={:.0}",
            median(&mut ours.private_dirty)
        );
    }
    let Some((_, reply)) = &snapshot_taken else {
        eprintln!("boot-bench: no snapshot, so no restores to report");
        std::process::exit(1);
    };
    println!("snapshot_took_ms={}", reply.took_ms);
    println!("snapshot_memory_bytes={}", reply.memory_bytes);
    println!("snapshot_memory_file_bytes={}", reply.memory_file_bytes);
    println!("snapshot_state_bytes={}", reply.state_bytes);
    if restored.ready.is_empty() {
        eprintln!("boot-bench: no successful restores to report");
        std::process::exit(1);
    }
    let restore_p50 = median(&mut restored.ready);
    println!("restore_to_ready_ms_p50={restore_p50:.0}");
    println!(
        "restore_to_ready_ms_p90={:.0}",
        percentile(&mut restored.ready, 0.9)
    );
    if let Some(p50) = ready_p50 {
        println!("restore_vs_cold_boot={:.3}", restore_p50 / p50);
    }
    println!("restore_vs_qemu_cold_boot={:.3}", restore_p50 / qemu_p50);
    if !restored.mem.is_empty() {
        println!("restore_overhead_rss_kib={:.0}", median(&mut restored.mem));
    }
    if !restored.private.is_empty() {
        println!(
            "restore_idle_private_kib={:.0}",
            median(&mut restored.private)
        );
        println!(
            "restore_idle_private_dirty_kib={:.0}",
            median(&mut restored.private_dirty)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_command_line_is_vmlet_vmms() {
        let builder = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../vmm/src/builder.rs"
        ));
        let quoted = format!("\"{VMLET_BASE_CMDLINE}\"");
        assert!(
            builder.contains(&quoted),
            "vmm/src/builder.rs no longer has BASE_CMDLINE = {quoted}: update boot-bench"
        );
    }
}
