//! Pod block benchmark through vmletd: the static `vmlet-blk-probe` runs in a pod's
//! container on its writable layer (the pod's scratch disk, virtio-blk), each request
//! bypassing the guest's page cache, and on the host on a file next to the pods' disks
//! (buffered, as the VMM's own I/O is), in the same run:
//!
//! - sequential write and read of `--mib` MiB in 1 MiB requests: `blk_seq_write_mib_s=`,
//!   `host_seq_write_mib_s=`, `blk_seq_write_vs_host=`, and the same for `seq_read`;
//! - `--count` random 4 KiB reads and writes: `blk_rand_read_iops=`,
//!   `host_rand_read_iops=`, `blk_rand_read_vs_host=`, and the same for `rand_write`;
//! - what each MiB cost the pod's VMM, from its counters: vCPU exits
//!   (`exits_per_mib_seq_write=`, ...) and virtio-blk queue notifications
//!   (`blk_notifications_per_mib_...=`), less what a probe run that does nothing costs.
//!
//! Used by `scripts/bench-blk.sh` (environment as for the integration tests, and
//! `VMLET_BLK_PROBE`: the static probe).
//!
//! Usage: blk-bench [--mib M] [--count N] [--rounds R]

// Test-only crate (a benchmark or demo tool): a failed step panics with its message,
// which is the tool's error report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::json;
use vmlet_bench::{arg, counters, median};
use vmlet_integration_tests::cri::{container_config, pod_config};
use vmlet_integration_tests::net::Net;
use vmlet_test_support::{busybox_image_with_programs, TestRegistry};
use vmlet_vmm_api::control::CountersReply;

const PROBE: &str = "/bin/vmlet-blk-probe";
const PHASES: [&str; 4] = ["seq_write", "seq_read", "rand_read", "rand_write"];

/// (vCPU exits, virtio-blk notifications) between two readings.
fn delta(before: &CountersReply, after: &CountersReply) -> (f64, f64) {
    let exits = |c: &CountersReply| c.exits.values().sum::<u64>();
    let kicks = |c: &CountersReply| c.block.values().map(|b| b.queue_notifications).sum::<u64>();
    (
        (exits(after) - exits(before)) as f64,
        (kicks(after) - kicks(before)) as f64,
    )
}

/// The `key=value` figure a probe run printed.
fn figure(out: &str, key: &str) -> f64 {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {out:?}"))
}

/// The figure each phase is measured by.
fn key(phase: &str) -> String {
    match phase {
        "seq_write" | "seq_read" => format!("{phase}_mib_s"),
        _ => format!("{phase}_iops"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib = arg(&args, "--mib", 128).max(1);
    let count = arg(&args, "--count", 4096).max(1);
    let rounds = arg(&args, "--rounds", 3).max(1);
    let probe_path = std::env::var("VMLET_BLK_PROBE").expect("VMLET_BLK_PROBE: the static probe");
    let probe = std::fs::read(&probe_path).expect("reading the probe");

    let registry = TestRegistry::start().expect("start the registry");
    let image = registry
        .push(
            &busybox_image_with_programs(
                json!({"Cmd": ["/bin/sleep", "2147483647"]}),
                &[("bin/vmlet-blk-probe", &probe)],
            )
            .expect("the probe's image"),
            "blk-probe:bench",
        )
        .expect("pushing the probe's image");
    let net = Net::new(None);
    let d = net.daemon(&registry, &image);
    let c = d.client();
    let pod_cfg = pod_config("blk-bench", &d.log_dir());
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");
    let id = c
        .create(
            &pod,
            container_config("probe", &image, "exec sleep 2147483647"),
            &pod_cfg,
        )
        .expect("CreateContainer");
    c.start(&id).expect("StartContainer");
    let control = d.run_dir().join("pods").join(&pod).join("ctl");
    let (m, n) = (mib.to_string(), count.to_string());
    // One probe phase in the pod: its output and what it cost the VMM.
    let in_pod = |phase: &str| {
        let before = counters(&control);
        let r = c
            .exec(
                &id,
                &[PROBE, "/root/blk.dat", &m, &n, phase, "--direct"],
                1800,
            )
            .expect("ExecSync");
        let after = counters(&control);
        let out = String::from_utf8_lossy(&r.stdout).to_string();
        assert_eq!(
            r.exit_code,
            0,
            "{phase}: {out} {}",
            String::from_utf8_lossy(&r.stderr)
        );
        (out, delta(&before, &after))
    };
    let host_file = d.state_dir().join("blk-bench.dat");
    let on_host = |phase: &str| {
        let out = Command::new(&probe_path)
            .args([host_file.to_str().unwrap(), &m, &n, phase])
            .output()
            .expect("running the probe on the host");
        assert!(out.status.success(), "host {phase}: {out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };

    // What a probe run that does nothing costs (the exec itself), subtracted below.
    let idle: Vec<(f64, f64)> = (0..3).map(|_| in_pod("none").1).collect();
    let idle = (
        median(idle.iter().map(|c| c.0).collect()),
        median(idle.iter().map(|c| c.1).collect()),
    );
    println!(
        "probe run without I/O: exits={:.0} blk_notifications={:.0}",
        idle.0, idle.1
    );

    let mut pod_figs: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut host_figs: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut exits: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut kicks: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in 0..rounds {
        for phase in PHASES {
            let (out, (e, k)) = in_pod(phase);
            let host = on_host(phase);
            let moved = if phase.starts_with("seq") {
                mib as f64
            } else {
                (count * 4096) as f64 / f64::from(1 << 20)
            };
            let (p, h) = (figure(&out, &key(phase)), figure(&host, &key(phase)));
            let (e, k) = ((e - idle.0).max(0.0) / moved, (k - idle.1).max(0.0) / moved);
            println!(
                "round {r} {phase}: pod {p:.1} host {h:.1} ({}) exits/MiB={e:.0} \
                 notifications/MiB={k:.0}",
                key(phase)
            );
            pod_figs.entry(phase).or_default().push(p);
            host_figs.entry(phase).or_default().push(h);
            exits.entry(phase).or_default().push(e);
            kicks.entry(phase).or_default().push(k);
        }
    }
    let _ = std::fs::remove_file(&host_file);
    for phase in PHASES {
        let k = key(phase);
        let p = median(pod_figs.remove(phase).unwrap_or_default());
        let h = median(host_figs.remove(phase).unwrap_or_default());
        println!("blk_{k}={p:.1}");
        println!("host_{k}={h:.1}");
        println!("blk_{phase}_vs_host={:.3}", p / h);
        println!(
            "exits_per_mib_{phase}={:.0}",
            median(exits.remove(phase).unwrap_or_default())
        );
        println!(
            "blk_notifications_per_mib_{phase}={:.0}",
            median(kicks.remove(phase).unwrap_or_default())
        );
    }
    c.stop_pod(&pod).expect("StopPodSandbox");
    c.remove_pod(&pod).expect("RemovePodSandbox");
}
