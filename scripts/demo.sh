#!/bin/bash
# Sets up this machine, builds vmlet, and through the KVM entry point: starts vmletd,
# pushes a locally built busybox image to a registry on loopback, pulls it through the
# CRI, runs a pod (a micro-VM) whose container prints a line, shows the line from the
# container's CRI log, and removes the pod.
#   scripts/demo.sh ['line for the container to print']
# scripts/demo.sh --vm ['shell command']   boots one pod micro-VM directly and runs
# the command in a container through vmlet-init (no daemon, no registry).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
scripts/setup.sh
kernel=$(scripts/build-guest-kernel.sh | tail -n1)
target=${CARGO_TARGET_DIR:-$repo/target}
cargo build -j2 -p vmlet-vmm -p vmlet-agent -p vmlet-integration-tests --bins >&2
initramfs=$(scripts/build-initramfs.sh --with-busybox -o "$target/vmlet-test-initramfs.cpio" | tail -n1)
export VMLET_KERNEL=$kernel VMLET_TEST_INITRAMFS=$initramfs VMLET_VMM=$target/debug/vmlet-vmm
if [ "${1:-}" = "--vm" ]; then
    shift
    exec scripts/with-kvm.sh --timeout 900 -- "$target/debug/demo" "$@"
fi
exec scripts/with-kvm.sh --timeout 900 -- "$target/debug/pod-demo" "$@"
