#!/bin/bash
# Sets up this machine, builds vmlet, boots a pod micro-VM with vmlet-vmm (through
# the KVM entry point) with a busybox image built here, runs a container in it
# through vmlet-init and prints the container's output.
#   scripts/demo.sh ['shell command to run in the container']
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
scripts/setup.sh
kernel=$(scripts/build-guest-kernel.sh | tail -n1)
cargo build -j2 -p vmlet-vmm -p vmlet-integration-tests --bins >&2
initramfs=$(scripts/build-initramfs.sh -o "$repo/target/vmlet-initramfs.cpio" | tail -n1)
export VMLET_KERNEL=$kernel VMLET_TEST_INITRAMFS=$initramfs VMLET_VMM=$repo/target/debug/vmlet-vmm
exec scripts/with-kvm.sh --timeout 900 -- "$repo/target/debug/demo" "$@"
