#!/bin/bash
# Soak tests at full size, through the KVM entry point (scripts/with-kvm.sh): 200 pod
# create/delete cycles with a container each (nothing left, vmletd's RSS within 10%),
# 10 kill -9 restarts of vmletd with 10 pods running (every pod and log line kept),
# and 30 concurrent RunPodSandbox calls. scripts/test.sh runs the same tests smaller.
# Prints each test's figures.
#   scripts/soak.sh [--cycles N] [--restarts N] [--pods N] [--burst N] [TEST...]
# TEST: a test name of integration-tests/tests/soak.rs (default: all of them).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

cycles=200 restarts=10 pods=10 burst=30
tests=()
while (($#)); do
    case $1 in
        --cycles) cycles=${2:?}; shift 2 ;;
        --restarts) restarts=${2:?}; shift 2 ;;
        --pods) pods=${2:?}; shift 2 ;;
        --burst) burst=${2:?}; shift 2 ;;
        -h | --help) sed -n '2,8p' "$0"; exit 0 ;;
        -*) echo "soak.sh: unknown option $1" >&2; exit 2 ;;
        *) tests+=("$1"); shift ;;
    esac
done

scripts/setup.sh
kernel=$(scripts/build-guest-kernel.sh | tail -n1)
initramfs=$(scripts/build-initramfs.sh --with-busybox -o "$repo/target/vmlet-test-initramfs.cpio" | tail -n1)
cargo build -j2 --workspace
bin=$(cargo test -j2 --offline -p vmlet-integration-tests --test soak --no-run \
    --message-format=json | grep '"kind":\["test"\]' | grep -o '"executable":"[^"]*"' | cut -d'"' -f4)
[ -x "$bin" ] || { echo "soak.sh: the soak test binary was not built" >&2; exit 1; }
# The run takes about an hour: it runs copies, which a rebuild meanwhile cannot change.
run=$(mktemp -d "$repo/target/soak.XXXXXX")
trap 'rm -rf "$run"' EXIT
cp target/debug/vmletd target/debug/vmlet-vmm "$bin" "$initramfs" "$run/"
bin=$run/$(basename "$bin")
initramfs=$run/$(basename "$initramfs")
if [ "${#tests[@]}" = 0 ]; then
    mapfile -t tests < <(cd integration-tests && "$bin" --list --format terse | sed -n 's/: test$//p')
fi

export VMLET_KERNEL=$kernel VMLET_TEST_INITRAMFS=$initramfs VMLET_VMM=$run/vmlet-vmm
export VMLET_SOAK_CYCLES=$cycles VMLET_SOAK_RESTARTS=$restarts VMLET_SOAK_PODS=$pods VMLET_SOAK_BURST=$burst
echo "soak: $(date -u +%FT%TZ) $(uname -n) $(nproc) cores; cycles=$cycles restarts=$restarts pods=$pods burst=$burst"
status=0
for t in "${tests[@]}"; do
    echo "=== $t ($(date +%T))"
    (cd integration-tests &&
        "$repo/scripts/with-kvm.sh" --timeout 5400 -- "$bin" --exact "$t" --test-threads=1) ||
        status=1
done
exit "$status"
