#!/bin/bash
# Builds vmlet for benchmarks (release binaries, the guest kernel, the initramfs) and
# runs the release binary BENCH of vmlet-bench (bench/) with ARGS inside the KVM
# entry point, with the environment the integration tests read.
#   scripts/run-release-bench.sh BENCH [ARGS...]
# Used by scripts/bench-pod.sh and scripts/bench-net.sh.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bench=${1:?usage: $0 BENCH [ARGS...]}
shift

scripts/setup.sh
kernel=$(scripts/build-guest-kernel.sh | tail -n1)
target=${CARGO_TARGET_DIR:-$repo/target}
cargo build -j2 --release -p vmlet-vmm -p vmlet-agent -p vmlet-bench --bins >&2
initramfs=$(scripts/build-initramfs.sh -o "$target/vmlet-initramfs.cpio" | tail -n1)
export VMLET_KERNEL=$kernel VMLET_TEST_INITRAMFS=$initramfs VMLET_VMM=$target/release/vmlet-vmm
scripts/with-kvm.sh --timeout 3000 -- "$target/release/$bench" "$@"
