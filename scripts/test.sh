#!/bin/bash
# Sets up this machine and runs the whole vmlet test suite: formatting, lints,
# unit tests on the host, then the end-to-end tests that boot real guests,
# through scripts/with-kvm.sh (hardware KVM directly, else a QEMU TCG machine).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export CARGO_TERM_COLOR=never
step() { echo "=== $* ($(date +%T))" >&2; }

step "setup"
scripts/setup.sh

step "guest kernel"
kernel=$(scripts/build-guest-kernel.sh | tail -n1)

step "build"
cargo build -j2 --workspace --all-targets

step "format and lints"
cargo fmt --all -- --check
cargo clippy -j2 --workspace --all-targets -- -D warnings

step "dependency checks"
# deny.toml; advisories are left out: their database cannot be fetched offline.
cargo deny --offline check bans licenses sources

step "test initramfs"
initramfs=$(scripts/build-initramfs.sh --with-busybox -o "$repo/target/vmlet-test-initramfs.cpio" | tail -n1)

step "unit tests"
cargo test -j2 --workspace --exclude vmlet-integration-tests

step "end-to-end tests on KVM"
export VMLET_KERNEL=$kernel
export VMLET_TEST_INITRAMFS=$initramfs
export VMLET_VMM=$repo/target/debug/vmlet-vmm
# The test binaries are built here, on the host: building them inside the emulated
# machine costs about 10 minutes. Each test then runs in a machine of its own, so
# the rare death or wedge of the emulated machine's own kernel under nested KVM
# (soft lockups, "stack guard page was hit") costs one test's time, not the
# suite's: with-kvm exits 124 (timeout) or 125 (machine died) and that test runs
# again, at most twice more. A test failure (any other status) is never retried.
cargo test -j2 -p vmlet-integration-tests --lib --bins
mapfile -t e2e_bins < <(cargo test -j2 --offline -p vmlet-integration-tests --tests --no-run \
    --message-format=json | grep '"kind":\["test"\]' | grep -o '"executable":"[^"]*"' | cut -d'"' -f4)
[ "${#e2e_bins[@]}" -gt 0 ] || { echo "no end-to-end test binaries were built" >&2; exit 1; }

run_e2e_test() { # BINARY TEST-NAME
    local attempt status
    for attempt in 1 2 3; do
        status=0
        (cd "$repo/integration-tests" &&
            "$repo/scripts/with-kvm.sh" --timeout 480 -- "$1" --exact "$2" --test-threads=1) || status=$?
        if [ "$status" != 124 ] && [ "$status" != 125 ]; then return "$status"; fi
        echo "=== the KVM machine hung or died (status $status) in attempt $attempt of $2" >&2
    done
    return "$status"
}

failed=()
passed=0
for bin in "${e2e_bins[@]}"; do
    # `--list` names every test, `--list --ignored` the ignored ones: skip those.
    ignored=$(cd integration-tests && "$bin" --list --ignored --format terse | sed -n 's/: test$//p')
    while read -r name; do
        [ -n "$name" ] || continue
        if grep -qxF -- "$name" <<<"$ignored"; then continue; fi
        step "$(basename "$bin" | sed 's/-[0-9a-f]*$//')::$name"
        if run_e2e_test "$bin" "$name"; then
            passed=$((passed + 1))
        else
            failed+=("$(basename "$bin")::$name")
        fi
    done < <(cd integration-tests && "$bin" --list --format terse | sed -n 's/: test$//p')
done
echo "=== end-to-end: $passed passed, ${#failed[@]} failed" >&2
if [ "${#failed[@]}" -gt 0 ]; then
    printf '    failed: %s\n' "${failed[@]}" >&2
    exit 1
fi
[ "$passed" -gt 0 ] || { echo "no end-to-end test ran" >&2; exit 1; }
step "all tests passed"
