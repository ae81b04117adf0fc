#!/bin/bash
# Builds vmlet for benchmarks (release binaries, the guest kernel, the initramfs) and
# runs the release binary BENCH of vmlet-bench (bench/) with ARGS inside the KVM
# entry point, with the environment the integration tests read.
#   scripts/run-release-bench.sh BENCH [ARGS...]
# Used by scripts/bench-pod.sh and scripts/bench-net.sh. VMLET_VMM, when set, names
# another vmlet-vmm binary to run the pods with (a build of another version, for a
# before/after comparison); it must lie where the KVM entry point sees it (the
# repository or the target directory). vmletd stays this build's.
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
export VMLET_KERNEL=$kernel VMLET_TEST_INITRAMFS=$initramfs
export VMLET_VMM=${VMLET_VMM:-$target/release/vmlet-vmm}
export VMLET_VMLETD=${VMLET_VMLETD:-$target/release/vmletd}
echo "vmm=$VMLET_VMM" >&2
# VMLET_BENCH_MEM_MIB: the emulated machine's memory (with-kvm.sh's default otherwise).
scripts/with-kvm.sh ${VMLET_BENCH_MEM_MIB:+--mem "$VMLET_BENCH_MEM_MIB"} --timeout 3000 -- \
    "$target/release/$bench" "$@"
