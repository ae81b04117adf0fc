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
cargo fmt --all --manifest-path fuzz/Cargo.toml -- --check
cargo clippy -j2 --workspace --all-targets -- -D warnings

step "dependency checks"
# deny.toml; advisories are left out: their database cannot be fetched offline.
cargo deny --offline check bans licenses sources

step "shellcheck"
shellcheck scripts/*.sh .ci/run

step "module graph"
# No circles in any crate's module import graph (lower modules never reach up).
python3 scripts/check-module-cycles.py

step "test initramfs"
initramfs=$(scripts/build-initramfs.sh --with-busybox -o "$repo/target/vmlet-test-initramfs.cpio" | tail -n1)

step "unit tests"
unit_log=$repo/target/unit-tests.log
cargo test -j2 --workspace --exclude vmlet-integration-tests 2>&1 | tee "$unit_log"
cargo test -j2 -p vmlet-integration-tests --lib --bins 2>&1 | tee -a "$unit_log"
# Ignored unit tests are shown, not hidden in the counts.
if grep -q ' \.\.\. ignored' "$unit_log"; then
    echo "=== ignored unit tests:" >&2
    grep ' \.\.\. ignored' "$unit_log" | sed 's/^test /    /' >&2
fi

step "fuzzing"
# Every fuzz target from its seeds for a fixed number of inputs (scripts/fuzz.sh).
scripts/fuzz.sh --runs "${VMLET_FUZZ_RUNS:-2000}"

step "end-to-end tests on KVM"
export VMLET_KERNEL=$kernel
export VMLET_TEST_INITRAMFS=$initramfs
export VMLET_VMM=$repo/target/debug/vmlet-vmm

# Every end-to-end test runs in a machine of its own (scripts/with-kvm.sh): directly on
# hardware KVM, else in a QEMU TCG machine. The test binaries are built here, on the
# host: building them inside the emulated machine costs about 10 minutes.
#
# Machine limit: E2E_LIMIT seconds, longer than any single wait in a test (the CRI
# client's call deadline and the harness's boot and warm-VM waits are at most 300 s,
# vmletd's boot timeout in the tests 300 s), so a vmletd or VMM that hangs fails that
# wait with its own message instead of looking like a hung machine. A test that needs
# longer in all, or waits longer once, gets its own limit in e2e_limits, keyed
# "<test file>::<test name>".
readonly E2E_LIMIT=480
declare -A e2e_limits=(
    # Runs harness::pods_from_the_warm_pool_stay_ready a second time, with crashes.
    [harness::a_vmm_crash_in_one_boot_of_three_fails_the_test]=900
    # Many pods, one after another or all at once.
    [soak::pod_cycles_leave_nothing_behind_and_vmletd_memory_flat]=900
    [soak::repeated_kill_9_of_vmletd_loses_no_pod_and_no_log_line]=900
    [soak::a_burst_of_concurrent_run_pod_sandbox_calls_all_succeed]=900
)
# Retries: none on hardware KVM. In the TCG machine a test runs again (at most
# E2E_ATTEMPTS times in all) only when with-kvm names the machine itself as the cause
# (its kernel panicked, locked up or hit a stack guard page, or the machine was lost:
# see with-kvm.sh --fault-file). A test's own failure, a VMM that exits non-zero or is
# killed, a nested guest's panic, or a test that hangs in a machine that still runs
# are failures. Every retry is printed with its cause and counted.
readonly E2E_ATTEMPTS=3
# Nested guest triple faults (with-kvm.sh's NESTED_TRIPLE_FAULT) are retried like the
# machine's own failures, but more than this many in one run fail the suite: then
# they are too frequent to be the emulation's noise. Seen: none in a run of the 73
# tests on an idle machine, three in one on a loaded one (each in a test with two or
# more VMs running at once), none on hardware KVM.
readonly E2E_TRIPLE_FAULTS=4
triple_faults=0
# End-to-end tests that may be #[ignore]d, keyed "<test file>::<test name>", each with
# the reason. Any other ignored test fails the suite.
declare -A e2e_allowed_ignored=()

e2e_logs=$repo/target/e2e-logs
rm -rf "$e2e_logs"
mkdir -p "$e2e_logs"

mapfile -t e2e_bins < <(cargo test -j2 --offline -p vmlet-integration-tests --tests --no-run \
    --message-format=json | grep '"kind":\["test"\]' | grep -o '"executable":"[^"]*"' | cut -d'"' -f4)
e2e_sources=(integration-tests/tests/*.rs)
if [ "${#e2e_bins[@]}" != "${#e2e_sources[@]}" ]; then
    echo "built ${#e2e_bins[@]} end-to-end test binaries for ${#e2e_sources[@]} files in integration-tests/tests" >&2
    exit 1
fi

e2e_started=$SECONDS
passed=0
failed=()
retried=0
retries=()
listed=0
problems=()
declare -A ignored_ids=()

# Why the last run_e2e_test failed, in one line for the summary: the CI log may keep
# only the end of the output.
fail_reason=
# "SECONDS ID" of every test (all attempts), for the slowest in the summary.
durations=()

run_e2e_test() { # BINARY ID TEST-NAME; 0 when it passed
    local bin=$1 id=$2 name=$3 limit attempt status base cause
    fail_reason=
    limit=${e2e_limits[$id]:-$E2E_LIMIT}
    for ((attempt = 1; attempt <= E2E_ATTEMPTS; attempt++)); do
        base=$e2e_logs/$id.$attempt
        set +e
        # The harness's own deadline (integration-tests/src/watchdog.rs), counted from
        # the test's first guest or vmletd: below the limit, which also covers the
        # machine's boot, so a test that stalls names its step and shows its logs.
        (cd "$repo/integration-tests" &&
            VMLET_E2E_DEADLINE=$((limit - 120)) "$repo/scripts/with-kvm.sh" --timeout "$limit" --console "$base.console" \
                --fault-file "$base.fault" -- "$bin" --exact "$name" --test-threads=1) |
            tee "$base.out"
        status=${PIPESTATUS[0]}
        set -e
        if [ "$status" = 0 ]; then
            # `--exact` that matches nothing passes too: the test must have run.
            if grep -q '^test result: ok\. 1 passed; 0 failed' "$base.out"; then
                return 0
            fi
            fail_reason="exit status 0 but the test did not run (no '1 passed')"
            echo "=== $id: $fail_reason" >&2
            return 1
        fi
        cause=$(head -n1 "$base.fault" 2>/dev/null || true)
        if [ -z "$cause" ]; then
            # The panic's place and the first line of its message.
            # The panic's place and message, or the harness's deadline line.
            fail_reason=$(grep -m1 -A1 -e ' panicked at ' -e '^=== test deadline' "$base.out" |
                tr '\n' ' ' | cut -c1-400 || true)
            fail_reason="status $status${fail_reason:+: $fail_reason} (console: $base.console)"
            echo "=== $id failed: $fail_reason" >&2
            return 1
        fi
        if ((attempt == E2E_ATTEMPTS)); then
            fail_reason="the emulated machine failed in all $E2E_ATTEMPTS attempts, last: $cause"
            echo "=== $id: $fail_reason" >&2
            return 1
        fi
        if [[ $cause == "nested guest triple fault:"* ]]; then
            triple_faults=$((triple_faults + 1))
            if ((triple_faults > E2E_TRIPLE_FAULTS)); then
                problems+=("more than $E2E_TRIPLE_FAULTS nested guest triple faults in one run: too many to be the emulation's")
            fi
        fi
        retried=$((retried + 1))
        retries+=("$id (attempt $attempt): $cause")
        echo "=== retrying $id: attempt $attempt of $E2E_ATTEMPTS ended by the emulated machine, not the test: $cause (console: $base.console)" >&2
    done
    return 1
}

for bin in "${e2e_bins[@]}"; do
    stem=$(basename "$bin" | sed 's/-[0-9a-f]*$//')
    # `--list` names every test, `--list --ignored` the ignored ones.
    all=$(cd integration-tests && "$bin" --list --format terse) ||
        { echo "$stem: listing its tests failed" >&2; exit 1; }
    ignored=$(cd integration-tests && "$bin" --list --ignored --format terse) ||
        { echo "$stem: listing its ignored tests failed" >&2; exit 1; }
    mapfile -t names < <(sed -n 's/: test$//p' <<<"$all")
    [ "${#names[@]}" -gt 0 ] || problems+=("$stem lists no tests")
    for name in "${names[@]}"; do
        id=$stem::$name
        listed=$((listed + 1))
        if grep -qxF -- "$name: test" <<<"$ignored"; then
            ignored_ids[$id]=1
            if [ -n "${e2e_allowed_ignored[$id]:-}" ]; then
                echo "=== ignored: $id (allowed: ${e2e_allowed_ignored[$id]})" >&2
            else
                echo "=== ignored: $id (not allowed: every end-to-end test must run)" >&2
                problems+=("$id is ignored")
            fi
            continue
        fi
        step "$id"
        started=$SECONDS
        if run_e2e_test "$bin" "$id" "$name"; then
            passed=$((passed + 1))
        else
            failed+=("$id: $fail_reason")
        fi
        durations+=("$((SECONDS - started)) $id")
    done
done
ran=$((passed + ${#failed[@]}))
allowed=0
for id in "${!e2e_allowed_ignored[@]}"; do
    if [ -n "${ignored_ids[$id]:-}" ]; then
        allowed=$((allowed + 1))
    else
        problems+=("e2e_allowed_ignored names $id, which is not an ignored test")
    fi
done
if [ "$ran" != $((listed - allowed)) ]; then
    problems+=("$ran end-to-end tests ran of $listed listed ($allowed allowed to be ignored)")
fi

echo "=== end-to-end tests ($listed listed, $(((SECONDS - e2e_started) / 60)) min):" >&2
echo "$passed passed, ${#failed[@]} failed, $retried retried" >&2
echo "    slowest:" >&2
printf '%s\n' "${durations[@]}" | sort -rn | head -n 8 | sed 's/^\([0-9]*\) /      \1 s  /' >&2
if [ "${#retries[@]}" -gt 0 ]; then printf '    retried: %s\n' "${retries[@]}" >&2; fi
if [ "${#failed[@]}" -gt 0 ]; then printf '    failed: %s\n' "${failed[@]}" >&2; fi
if [ "${#problems[@]}" -gt 0 ]; then printf '    suite: %s\n' "${problems[@]}" >&2; fi
if [ "${#failed[@]}" -gt 0 ] || [ "${#problems[@]}" -gt 0 ]; then exit 1; fi
[ "$passed" -gt 0 ] || { echo "no end-to-end test ran" >&2; exit 1; }
step "all tests passed in $((SECONDS / 60)) min"
