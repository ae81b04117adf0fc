#!/bin/bash
# Pod block benchmark through vmletd, inside the KVM entry point: sequential and 4 KiB
# random reads and writes on a pod's writable layer (its virtio-blk scratch disk)
# against the same on a host file next to the pods' disks (same run), and the vCPU
# exits and virtio-blk notifications each MiB costs. Prints per-round lines, then
# blk_*=, host_*=, blk_*_vs_host=, exits_per_mib_*= and blk_notifications_per_mib_*=.
#   scripts/bench-blk.sh [--mib M] [--count N] [--rounds R]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
target=x86_64-unknown-linux-gnu
# Static, as vmlet-init is: the guest image holds no C library.
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build -j2 --profile init --target "$target" -p vmlet-blk-probe >&2)
export VMLET_BLK_PROBE=${CARGO_TARGET_DIR:-$repo/target}/$target/init/vmlet-blk-probe
exec "$repo/scripts/run-release-bench.sh" blk-bench "$@"
