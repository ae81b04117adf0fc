#!/bin/bash
# Sets up this machine, builds vmlet, boots a micro-VM with vmlet-vmm (through the
# KVM entry point), runs a command in the guest and prints its output.
#   scripts/demo.sh ['shell command to run in the guest']
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
scripts/setup.sh
kernel=$(scripts/build-guest-kernel.sh | tail -n1)
cargo build -j2 -p vmlet-vmm -p vmlet-integration-tests --bins >&2
initramfs=$(scripts/build-initramfs.sh --with-busybox -o "$repo/target/vmlet-test-initramfs.cpio" | tail -n1)
export VMLET_KERNEL=$kernel VMLET_TEST_INITRAMFS=$initramfs VMLET_VMM=$repo/target/debug/vmlet-vmm
exec scripts/with-kvm.sh --timeout 900 -- "$repo/target/debug/demo" "$@"
