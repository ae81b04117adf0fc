//! Pod network benchmark through vmletd on a CNI bridge network:
//!
//! - TCP throughput from the host into a pod (through the bridge, the pod's veth, the
//!   tc redirect, the tap and the VMM's virtio-net) against the same transfer into a
//!   plain network namespace over a veth pair, in the same run, each received by
//!   busybox `nc` into /dev/null: `net_gbps=`, `veth_gbps=`, `net_vs_veth=`;
//! - the other way, busybox `nc` in the pod (or the namespace) sending zeros to the
//!   host: `net_out_gbps=`, `veth_out_gbps=`, `net_out_vs_veth_out=`;
//! - what each MiB cost the pod's VMM in each direction, from its counters: vCPU
//!   exits (`exits_per_mib_in=`, `_out=`) and virtio-net queue notifications
//!   (`net_notifications_per_mib_in=`, `_out=`), with the mean frame size each way;
//! - the network's part of RunPodSandbox (namespace + CNI ADD + tap, as vmletd
//!   reports it in the pod's verbose status): `pod_network_ms_p50=`,
//!   `run_pod_ms_p50=`, `pod_network_share=`.
//!
//! Used by `scripts/bench-net.sh` (environment as for the integration tests).
//!
//! Usage: net-bench [--pods N] [--mib M] [--rounds R]

// Test-only crate (a benchmark or demo tool): a failed step panics with its message,
// which is the tool's error report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmlet_bench::{arg, counters, median};
use vmlet_integration_tests::cri::{busybox_registry, container_config, pod_config};
use vmlet_integration_tests::net::{Net, GATEWAY};
use vmlet_vmm_api::control::CountersReply;

const PORT: u16 = 5001;
/// Where the host receives what pods and the namespace send.
const OUT_PORT: u16 = 5002;
const VETH_NS: &str = "vmlet-bench-veth";
const VETH_HOST: &str = "10.78.0.1";
const VETH_PEER: &str = "10.78.0.2";

fn sh(script: &str) {
    let ok = Command::new("sh").args(["-c", script]).status().unwrap();
    assert!(ok.success(), "{script}");
}

/// Sends `mib` MiB to `addr` and waits until the receiver closed: Gbit/s.
fn send(addr: &str, mib: usize) -> f64 {
    let start = Instant::now();
    let mut s = loop {
        match TcpStream::connect((addr, PORT)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(120), "{addr}: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    for _ in 0..mib {
        s.write_all(&buf).unwrap();
    }
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    (mib as f64 * 8.0 * 1024.0 * 1024.0) / start.elapsed().as_secs_f64() / 1e9
}

/// Receives one connection on `listener` to its end while `send` runs the sender:
/// Gbit/s from the connection's accept to its end.
fn receive(listener: &TcpListener, mib: usize, send: impl FnOnce() + Send) -> f64 {
    std::thread::scope(|s| {
        let sender = s.spawn(send);
        let (mut conn, _) = listener.accept().unwrap();
        let start = Instant::now();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0usize;
        loop {
            match conn.read(&mut buf).unwrap() {
                0 => break,
                n => got += n,
            }
        }
        let secs = start.elapsed().as_secs_f64();
        drop(conn);
        sender.join().unwrap();
        assert_eq!(got, mib << 20, "bytes received");
        (mib as f64 * 8.0 * 1024.0 * 1024.0) / secs / 1e9
    })
}

/// What a transfer of `mib` MiB cost the VMM: (exits, net notifications) per MiB,
/// and the mean frame size (bytes) in the direction of the transfer.
fn cost(
    before: &CountersReply,
    after: &CountersReply,
    mib: usize,
    inbound: bool,
) -> (f64, f64, f64) {
    let exits = |c: &CountersReply| c.exits.values().sum::<u64>();
    let net = |c: &CountersReply| c.net.get("net0").copied().unwrap_or_default();
    let (b, a) = (net(before), net(after));
    let (bytes, frames) = if inbound {
        (a.rx_bytes - b.rx_bytes, a.rx_packets - b.rx_packets)
    } else {
        (a.tx_bytes - b.tx_bytes, a.tx_packets - b.tx_packets)
    };
    let mib = mib as f64;
    let kinds: Vec<String> = after
        .exits
        .iter()
        .map(|(k, n)| (k, n - before.exits.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k}={:.0}", n as f64 / mib))
        .collect();
    println!(
        "  exits per MiB {}: {}",
        if inbound { "in" } else { "out" },
        kinds.join(" ")
    );
    (
        (exits(after) - exits(before)) as f64 / mib,
        (a.queue_notifications - b.queue_notifications) as f64 / mib,
        bytes as f64 / frames.max(1) as f64,
    )
}

/// A network namespace on a veth pair with the host: the baseline.
struct Veth {
    receiver: Option<Child>,
}

impl Veth {
    fn new() -> Veth {
        sh(&format!(
            "ip netns add {VETH_NS} && ip link add vb-host type veth peer name vb-peer && \
             ip link set vb-peer netns {VETH_NS} && ip addr add {VETH_HOST}/24 dev vb-host && \
             ip link set vb-host up && ip -n {VETH_NS} addr add {VETH_PEER}/24 dev vb-peer && \
             ip -n {VETH_NS} link set vb-peer up && ip -n {VETH_NS} link set lo up"
        ));
        Veth { receiver: None }
    }

    /// One transfer into `nc` in the namespace.
    fn round(&mut self, mib: usize) -> f64 {
        let nc = Command::new("ip")
            .args(["netns", "exec", VETH_NS, "busybox", "nc", "-l", "-p"])
            .arg(PORT.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.receiver = Some(nc);
        let gbps = send(VETH_PEER, mib);
        if let Some(mut nc) = self.receiver.take() {
            nc.wait().unwrap();
        }
        gbps
    }

    /// One transfer from `nc` in the namespace to `listener`.
    fn round_out(&mut self, listener: &TcpListener, mib: usize) -> f64 {
        receive(listener, mib, || {
            let script = format!(
                "head -c {} /dev/zero | busybox nc {VETH_HOST} {OUT_PORT}",
                mib << 20
            );
            let ok = Command::new("ip")
                .args(["netns", "exec", VETH_NS, "busybox", "sh", "-c", &script])
                .stdin(Stdio::null())
                .status()
                .unwrap();
            assert!(ok.success(), "{script}");
        })
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        if let Some(mut nc) = self.receiver.take() {
            let _ = nc.kill();
            let _ = nc.wait();
        }
        let _ = Command::new("ip").args(["link", "del", "vb-host"]).status();
        let _ = Command::new("ip").args(["netns", "del", VETH_NS]).status();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pods = arg(&args, "--pods", 5).max(1);
    let mib = arg(&args, "--mib", 64).max(1);
    let rounds = arg(&args, "--rounds", 3).max(1);

    let (registry, image) = busybox_registry("busybox:bench");
    let net = Net::new(None);
    let d = net.daemon(&registry, &image);
    let c = d.client();

    // The network's share of RunPodSandbox; the last pod stays for the transfer.
    let (mut run_ms, mut net_ms) = (Vec::new(), Vec::new());
    let mut pod = String::new();
    for i in 0..pods {
        if !pod.is_empty() {
            c.stop_pod(&pod).expect("StopPodSandbox");
            c.remove_pod(&pod).expect("RemovePodSandbox");
        }
        let start = Instant::now();
        pod = c
            .run_pod(pod_config(&format!("bench-{i}"), &d.log_dir()))
            .expect("RunPodSandbox");
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        let info = c.pod_status(&pod).expect("PodSandboxStatus").info;
        let verbose: serde_json::Value =
            serde_json::from_str(info.get("info").map_or("{}", String::as_str)).unwrap();
        let attach = verbose["networkAttachMs"]
            .as_f64()
            .expect("networkAttachMs");
        println!("pod {i}: run_pod_ms={ms:.1} pod_network_ms={attach:.1}");
        run_ms.push(ms);
        net_ms.push(attach);
    }
    let (run_p50, net_p50) = (median(run_ms), median(net_ms));

    let pod_cfg = pod_config(&format!("bench-{}", pods - 1), &d.log_dir());
    let ip = c.pod_ip(&pod);
    let sink = format!("while true; do nc -l -p {PORT} </dev/null >/dev/null; done");
    let id = c
        .create(&pod, container_config("sink", &image, &sink), &pod_cfg)
        .expect("CreateContainer");
    c.start(&id).expect("StartContainer");

    let mut veth = Veth::new();
    let listener = TcpListener::bind(("0.0.0.0", OUT_PORT)).unwrap();
    let control = d.run_dir().join("pods").join(&pod).join("ctl");
    let (mut pod_gbps, mut veth_gbps) = (Vec::new(), Vec::new());
    let (mut out_gbps, mut veth_out_gbps) = (Vec::new(), Vec::new());
    let (mut cost_in, mut cost_out) = (Vec::new(), Vec::new());
    let outbound = format!("head -c {} /dev/zero | nc {GATEWAY} {OUT_PORT}", mib << 20);
    for r in 0..rounds {
        let before = counters(&control);
        let p = send(&ip, mib);
        let middle = counters(&control);
        let o = receive(&listener, mib, || {
            let r = c
                .exec(&id, &["sh", "-c", &outbound], 600)
                .expect("ExecSync");
            assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
        });
        let after = counters(&control);
        let v = veth.round(mib);
        let vo = veth.round_out(&listener, mib);
        let (ci, co) = (
            cost(&before, &middle, mib, true),
            cost(&middle, &after, mib, false),
        );
        println!(
            "round {r}: pod_gbps={p:.3} veth_gbps={v:.3} pod_out_gbps={o:.3} veth_out_gbps={vo:.3} \
             in: exits/MiB={:.0} notifications/MiB={:.0} frame={:.0} B; \
             out: exits/MiB={:.0} notifications/MiB={:.0} frame={:.0} B",
            ci.0, ci.1, ci.2, co.0, co.1, co.2
        );
        pod_gbps.push(p);
        veth_gbps.push(v);
        out_gbps.push(o);
        veth_out_gbps.push(vo);
        cost_in.push(ci);
        cost_out.push(co);
    }
    let (p, v) = (median(pod_gbps), median(veth_gbps));
    let (o, vo) = (median(out_gbps), median(veth_out_gbps));
    let pick =
        |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| median(v.iter().map(f).collect());
    c.stop_pod(&pod).expect("StopPodSandbox");
    c.remove_pod(&pod).expect("RemovePodSandbox");

    println!("run_pod_ms_p50={run_p50:.1}");
    println!("pod_network_ms_p50={net_p50:.1}");
    println!("pod_network_share={:.3}", net_p50 / run_p50);
    println!("veth_gbps={v:.3}");
    println!("net_gbps={p:.3}");
    println!("net_vs_veth={:.3}", p / v);
    println!("veth_out_gbps={vo:.3}");
    println!("net_out_gbps={o:.3}");
    println!("net_out_vs_veth_out={:.3}", o / vo);
    println!("exits_per_mib_in={:.0}", pick(&cost_in, |c| c.0));
    println!("exits_per_mib_out={:.0}", pick(&cost_out, |c| c.0));
    println!(
        "net_notifications_per_mib_in={:.0}",
        pick(&cost_in, |c| c.1)
    );
    println!(
        "net_notifications_per_mib_out={:.0}",
        pick(&cost_out, |c| c.1)
    );
    println!("mean_frame_bytes_in={:.0}", pick(&cost_in, |c| c.2));
    println!("mean_frame_bytes_out={:.0}", pick(&cost_out, |c| c.2));
}
