//! Boot benchmark: boots the same kernel and initramfs with vmlet-vmm and with
//! QEMU's microvm machine, alternating, and reports time from process start to
//! the guest init's first console line, plus the VMM's memory overhead.
//!
//! Usage: boot-bench --kernel K --initramfs I [--runs N] [--vmm PATH] [--qemu PATH]
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

struct Args {
    kernel: PathBuf,
    initramfs: PathBuf,
    runs: usize,
    vmm: PathBuf,
    qemu: String,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut kernel, mut initramfs, mut runs) = (None, None, 20);
    let mut vmm = vmlet_integration_tests::vmm_binary();
    let mut qemu = "qemu-system-x86_64".to_owned();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(val()?)),
            "--initramfs" => initramfs = Some(PathBuf::from(val()?)),
            "--runs" => runs = val()?.parse().map_err(|_| "bad --runs")?,
            "--vmm" => vmm = PathBuf::from(val()?),
            "--qemu" => qemu = val()?,
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(Args {
        kernel: kernel.ok_or("--kernel is required")?,
        initramfs: initramfs.ok_or("--initramfs is required")?,
        runs,
        vmm,
        qemu,
    })
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
    .arg(format!("console=ttyS0 reboot=k panic=1 {CMDLINE}"));
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

fn measure(mut cmd: Command) -> Result<Sample, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child: Child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let pid = child.id();
    let stdout = child.stdout.take().ok_or("no stdout")?;
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
        Err(_) => Err(format!("no {MARKER:?} within {TIMEOUT:?}")),
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

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("boot-bench: {e}");
            std::process::exit(2);
        }
    };
    let (mut ours, mut qemu, mut ours_mem, mut qemu_mem) = (vec![], vec![], vec![], vec![]);
    let mut failures = std::collections::BTreeMap::new();
    for i in 0..args.runs {
        for (name, cmd) in [
            ("vmlet-vmm", vmlet_cmd(&args)),
            ("qemu-microvm", qemu_cmd(&args)),
        ] {
            match measure(cmd) {
                Ok(s) => {
                    println!(
                        "run {i:2} {name:12} boot_to_init_ms={:.1} overhead_rss_kib={}",
                        s.boot_ms,
                        s.overhead_kib.map_or("?".into(), |k| k.to_string())
                    );
                    let (times, mem) = if name == "vmlet-vmm" {
                        (&mut ours, &mut ours_mem)
                    } else {
                        (&mut qemu, &mut qemu_mem)
                    };
                    times.push(s.boot_ms);
                    if let Some(k) = s.overhead_kib {
                        mem.push(k as f64);
                    }
                }
                Err(e) => {
                    // Counted and reported, not fatal: nested guests in the emulated
                    // TCG machine occasionally crash early, QEMU's as well as ours.
                    eprintln!("boot-bench: {name} run {i}: {e}");
                    *failures.entry(name).or_insert(0) += 1;
                }
            }
        }
    }
    if ours.is_empty() || qemu.is_empty() {
        eprintln!("boot-bench: no successful boots to report");
        std::process::exit(1);
    }
    for (name, n) in &failures {
        println!("failed_boots_{}={n}", name.replace('-', "_"));
    }
    let ours_p50 = median(&mut ours);
    let qemu_p50 = median(&mut qemu);
    println!("qemu_microvm_boot_to_init_ms_p50={qemu_p50:.0}");
    if !qemu_mem.is_empty() {
        println!("qemu_microvm_overhead_rss_kib={:.0}", median(&mut qemu_mem));
    }
    println!("boot_to_init_ms_p50={ours_p50:.0}");
    println!("boot_vs_qemu_microvm={:.2}", ours_p50 / qemu_p50);
    if !ours_mem.is_empty() {
        println!("vmm_overhead_rss_kib={:.0}", median(&mut ours_mem));
    }
}
