#!/bin/bash
# Pod start benchmark through vmletd's CRI: N runs of RunPodSandbox + CreateContainer +
# StartContainer of a busybox container until its first log line, then teardown, all
# inside the KVM entry point (registry, daemon and client too), on a CNI bridge network;
# where containerd + runc are installed, the same sequence through containerd's CRI in
# the same run, alternating. Prints per-run lines, then pod_start_ms_p50=,
# pod_start_ms_p99=, containerd_pod_start_ms_p50=, containerd_pod_start_ms_p99= and
# pod_start_vs_containerd=, and idle_pod_host_rss_kib= (an idle pod's VMM RSS) last.
#   scripts/bench-pod.sh [--runs N] [--no-containerd]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

scripts/setup.sh
kernel=$(scripts/build-guest-kernel.sh | tail -n1)
target=${CARGO_TARGET_DIR:-$repo/target}
cargo build -j2 --release -p vmlet-vmm -p vmlet-agent -p vmlet-integration-tests --bins >&2
initramfs=$(scripts/build-initramfs.sh -o "$target/vmlet-initramfs.cpio" | tail -n1)
export VMLET_KERNEL=$kernel VMLET_TEST_INITRAMFS=$initramfs VMLET_VMM=$target/release/vmlet-vmm
scripts/with-kvm.sh --timeout 3000 -- "$target/release/pod-bench" "$@"
