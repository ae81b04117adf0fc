#!/bin/bash
# Pod network benchmark through vmletd on a CNI bridge network, inside the KVM entry
# point: TCP throughput from the host into a pod's VM against the same transfer into a
# plain network namespace over a veth pair (same run), and the network's share of
# RunPodSandbox. Prints per-round lines, then net_gbps=, veth_gbps=, net_vs_veth=,
# pod_network_ms_p50=, run_pod_ms_p50= and pod_network_share=.
#   scripts/bench-net.sh [--pods N] [--mib M] [--rounds R]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

scripts/setup.sh
kernel=$(scripts/build-guest-kernel.sh | tail -n1)
target=${CARGO_TARGET_DIR:-$repo/target}
cargo build -j2 --release -p vmlet-vmm -p vmlet-agent -p vmlet-integration-tests --bins >&2
initramfs=$(scripts/build-initramfs.sh -o "$target/vmlet-initramfs.cpio" | tail -n1)
export VMLET_KERNEL=$kernel VMLET_TEST_INITRAMFS=$initramfs VMLET_VMM=$target/release/vmlet-vmm
scripts/with-kvm.sh --timeout 3000 -- "$target/release/net-bench" "$@"
