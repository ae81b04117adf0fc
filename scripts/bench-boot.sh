#!/bin/bash
# Boot benchmark: the same kernel and initramfs booted 20 times with vmlet-vmm
# and 20 times with QEMU's microvm machine, alternating, through the KVM entry
# point; then, in one booted guest, 30 container starts (create call to the
# container's first output line) and vmlet-init's own RSS. Prints per-run
# lines, then machine-readable summary lines last.
#   scripts/bench-boot.sh [--runs N]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
runs=20
[ "${1:-}" = "--runs" ] && runs=$2

scripts/setup.sh
kernel=$(scripts/build-guest-kernel.sh | tail -n1)
cargo build -j2 --release -p vmlet-vmm -p vmlet-bench --bins >&2
initramfs=$(scripts/build-initramfs.sh -o "$repo/target/vmlet-initramfs.cpio" | tail -n1)
echo "kernel=$kernel initramfs=$initramfs ($(stat -c %s "$initramfs") bytes)" >&2
scripts/with-kvm.sh --timeout 3000 -- \
    "$repo/target/release/boot-bench" --runs "$runs" \
    --kernel "$kernel" --initramfs "$initramfs" --vmm "$repo/target/release/vmlet-vmm"
scripts/with-kvm.sh --timeout 3000 -- \
    "$repo/target/release/container-bench" --runs 30 \
    --kernel "$kernel" --initramfs "$initramfs" --vmm "$repo/target/release/vmlet-vmm"
