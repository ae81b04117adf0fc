//! Boot benchmark: boots the same kernel and initramfs with vmlet-vmm and with
//! QEMU's microvm machine, alternating (the order of each pair reversed from the
//! last), and reports time from process start to the guest init's first console
//! line, plus the VMM's memory overhead. Boots that fail or time out are counted
//! and printed for each VMM (`failed_boots_*=`, `timed_out_boots_*=`), never left
//! out silently.
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
//! Memory overhead = the VMM's peak RSS (`VmHWM`) minus the resident part of the
//! guest-memory mapping (`Rss` of that mapping in /proc/PID/smaps), both read once
//! init has started: what the VMM itself costs beyond the guest pages it touched.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MARKER: &str = "vmlet-init: started";
const MEM_MIB: u64 = 128;
const CMDLINE: &str = "quiet";
const TIMEOUT: Duration = Duration::from_secs(120);
/// What vmlet-vmm always puts on the guest's command line (a copy of
/// `vmlet_vmm::builder::BASE_CMDLINE`; a test below keeps them equal).
const VMLET_BASE_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 8250.nr_uarts=1 tsc=reliable no_timer_check";
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

fn vmlet_cmd(a: &Args) -> Command {
    let mut c = Command::new(&a.vmm);
    c.arg("--kernel")
        .arg(&a.kernel)
        .arg("--initramfs")
        .arg(&a.initramfs)
        .args([
            "--mem-mib",
            &MEM_MIB.to_string(),
            "--vcpus",
            "1",
            "--no-rng",
        ])
        .args(["--cmdline", CMDLINE, "--serial", "stdout"]);
    c
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

struct Sample {
    boot_ms: f64,
    overhead_kib: Option<u64>,
}

/// Why a boot produced no sample.
enum Failure {
    /// The VMM could not start, or exited (closed its console) before the marker.
    Failed(String),
    /// No marker within `TIMEOUT`.
    TimedOut,
}

fn measure(mut cmd: Command) -> Result<Sample, Failure> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child: Child = cmd
        .spawn()
        .map_err(|e| Failure::Failed(format!("spawn: {e}")))?;
    let pid = child.id();
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Failure::Failed("no stdout".into()));
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(MARKER) {
                let _ = tx.send(start.elapsed());
                break;
            }
        }
    });
    let result = match rx.recv_timeout(TIMEOUT) {
        Ok(elapsed) => {
            // Let init settle so the guest's boot-time pages are all counted.
            std::thread::sleep(Duration::from_millis(300));
            let overhead = match (status_kib(pid, "VmHWM:"), guest_rss_kib(pid)) {
                (Some(hwm), Some(guest)) => Some(hwm.saturating_sub(guest)),
                _ => None,
            };
            Ok(Sample {
                boot_ms: elapsed.as_secs_f64() * 1000.0,
                overhead_kib: overhead,
            })
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(Failure::TimedOut),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            // The console closed without the marker: the VMM exited.
            let status = child
                .wait()
                .map_or_else(|e| e.to_string(), |s| s.to_string());
            Err(Failure::Failed(format!(
                "exited before {MARKER:?}: {status}"
            )))
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    result
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

/// One VMM's results.
#[derive(Default)]
struct Side {
    times: Vec<f64>,
    mem: Vec<f64>,
    failed: usize,
    timed_out: usize,
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("boot-bench: {e}");
            std::process::exit(2);
        }
    };
    println!("vmlet_vmm_cmdline=\"{VMLET_BASE_CMDLINE} {CMDLINE}\"");
    println!("qemu_microvm_cmdline=\"{}\"", qemu_cmdline(&args));
    let names = ["vmlet-vmm", "qemu-microvm"];
    let mut sides = [Side::default(), Side::default()];
    for i in 0..args.runs {
        // Each pair in the other order than the last: neither VMM always boots first.
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let name = names[which];
            let cmd = if which == 0 {
                vmlet_cmd(&args)
            } else {
                qemu_cmd(&args)
            };
            let side = &mut sides[which];
            match measure(cmd) {
                Ok(s) => {
                    println!(
                        "run {i:2} {name:12} boot_to_init_ms={:.1} overhead_rss_kib={}",
                        s.boot_ms,
                        s.overhead_kib.map_or("?".into(), |k| k.to_string())
                    );
                    side.times.push(s.boot_ms);
                    if let Some(k) = s.overhead_kib {
                        side.mem.push(k as f64);
                    }
                }
                // Counted and reported, not fatal, and not in the medians.
                Err(Failure::Failed(e)) => {
                    println!("run {i:2} {name:12} failed: {e}");
                    side.failed += 1;
                }
                Err(Failure::TimedOut) => {
                    println!("run {i:2} {name:12} timed out: no {MARKER:?} within {TIMEOUT:?}");
                    side.timed_out += 1;
                }
            }
        }
    }
    for (name, side) in names.iter().zip(&sides) {
        let key = name.replace('-', "_");
        println!("boots_{key}={}", args.runs);
        println!("failed_boots_{key}={}", side.failed);
        println!("timed_out_boots_{key}={}", side.timed_out);
    }
    let [ours, qemu] = &mut sides;
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
