#!/bin/bash
# Boot benchmark: the same kernel and initramfs booted 20 times with vmlet-vmm
# and 20 times with QEMU's microvm machine, alternating (each pair in the other order
# than the last), with the same guest command line (vmlet-vmm's; --qemu-cmdline plain
# gives QEMU only its usual one), through the KVM entry point; in the same run, 20
# vmlet-vmm restores from a snapshot of one booted guest of the same shape, each among
# a pair of cold boots (VMM start to the guest agent answering Health, next to the
# vmlet-vmm cold boots' time to the same answer, and the idle VMMs' private memory);
# then, in one booted guest, 30 container starts (create call to the container's first
# output line) and vmlet-init's own RSS. Prints per-run lines, the count of failed and
# timed-out boots and restores, then machine-readable summary lines last.
#   scripts/bench-boot.sh [--runs N] [--qemu-cmdline same|plain]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
runs=20
qemu_cmdline=same
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=${2:?--runs needs a value}; shift 2 ;;
        --qemu-cmdline) qemu_cmdline=${2:?--qemu-cmdline needs a value}; shift 2 ;;
        *) echo "usage: $0 [--runs N] [--qemu-cmdline same|plain]" >&2; exit 2 ;;
    esac
done

scripts/setup.sh
kernel=$(scripts/build-guest-kernel.sh | tail -n1)
cargo build -j2 --release -p vmlet-vmm -p vmlet-bench --bins >&2
initramfs=$(scripts/build-initramfs.sh -o "$repo/target/vmlet-initramfs.cpio" | tail -n1)
echo "kernel=$kernel initramfs=$initramfs ($(stat -c %s "$initramfs") bytes)" >&2
scripts/with-kvm.sh --timeout 3000 -- \
    "$repo/target/release/boot-bench" --runs "$runs" --qemu-cmdline "$qemu_cmdline" \
    --kernel "$kernel" --initramfs "$initramfs" --vmm "$repo/target/release/vmlet-vmm"
scripts/with-kvm.sh --timeout 3000 -- \
    "$repo/target/release/container-bench" --runs 30 \
    --kernel "$kernel" --initramfs "$initramfs" --vmm "$repo/target/release/vmlet-vmm"
