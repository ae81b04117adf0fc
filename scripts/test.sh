#!/bin/bash
# Sets up this machine and runs the whole vmlet test suite: formatting, lints,
# unit tests on the host, then the end-to-end tests that boot real guests,
# through scripts/with-kvm.sh (hardware KVM directly, else a QEMU TCG machine).
#
# usage: scripts/test.sh [--e2e-only [FILTER]]
#   --e2e-only  set up and build, then only the end-to-end tests: those whose
#               "<test file>::<test name>" matches the extended regex FILTER, or all
set -euo pipefail

e2e_only=0 e2e_filter=
if [ "${1:-}" = --e2e-only ]; then
    e2e_only=1
    e2e_filter=${2:-}
elif [ $# -gt 0 ]; then
    echo "usage: $0 [--e2e-only [FILTER]]" >&2
    exit 2
fi

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

if [ "$e2e_only" = 0 ]; then
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
fi

step "test initramfs"
initramfs=$(scripts/build-initramfs.sh --with-busybox -o "$repo/target/vmlet-test-initramfs.cpio" | tail -n1)

if [ "$e2e_only" = 0 ]; then
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
fi

step "end-to-end tests on KVM"
export VMLET_KERNEL=$kernel
export VMLET_TEST_INITRAMFS=$initramfs
export VMLET_VMM=$repo/target/debug/vmlet-vmm

# The end-to-end tests of each test binary run in one machine (scripts/with-kvm.sh:
# directly on hardware KVM, else a QEMU TCG machine), one after another, each in a
# process of its own (scripts/e2e-batch.sh); a machine's boot costs some 10 s in the
# TCG machine, paid once per binary instead of once per test. A test that fails ends
# its machine: the tests after it run in a new one, so a failure never leaves state
# behind for the next test. The test binaries are built here, on the host: building
# them inside the emulated machine costs about 10 minutes.
#
# Test limit: E2E_LIMIT seconds, longer than any single wait in a test (the CRI
# client's call deadline and the harness's boot and warm-VM waits are at most 300 s,
# vmletd's boot timeout in the tests 300 s), so a vmletd or VMM that hangs fails that
# wait with its own message instead of looking like a hung machine. A test that needs
# longer in all, or waits longer once, gets its own limit in e2e_limits, keyed
# "<test file>::<test name>". A machine's limit is the sum of its tests' limits and
# its boot's.
readonly E2E_LIMIT=480 E2E_BOOT_LIMIT=120
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
# see with-kvm.sh --fault-file) while that test ran. A test's own failure, a VMM that
# exits non-zero or is killed, a nested guest's panic, or a test that hangs in a
# machine that still runs are failures. Every retry is printed with its cause and
# counted.
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
# NESTED_TRIPLE_FAULT and the machine modes, from with-kvm.sh (sourced, it only
# defines).
# shellcheck disable=SC1091
source "$repo/scripts/with-kvm.sh"
e2e_mode=$("$repo/scripts/with-kvm.sh" --print-mode)

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
machines=0
problems=()
declare -A ignored_ids=()
# "SECONDS ID" of every test (all attempts), for the slowest in the summary.
durations=()

# The first failure's place: the panic's place and message, or the harness's
# deadline line, from a test's output.
failure_place() { # OUTPUT-FILE
    grep -a -m1 -A1 -e ' panicked at ' -e '^=== test deadline' "$1" 2>/dev/null |
        tr '\n' ' ' | cut -c1-400 || true
}

# Runs the tests NAMES of BINARY, one machine after another, until each passed,
# failed, or failed in the machine E2E_ATTEMPTS times.
run_e2e_binary() { # BINARY STEM NAME...
    local bin=$1 stem=$2
    shift 2
    local pending=("$@") next name id limit total dir status cause specs st secs inflight place
    local -A attempts=()
    while [ "${#pending[@]}" -gt 0 ]; do
        machines=$((machines + 1))
        dir=$e2e_logs/$stem.$machines
        mkdir -p "$dir"
        specs=()
        total=$E2E_BOOT_LIMIT
        for name in "${pending[@]}"; do
            limit=${e2e_limits[$stem::$name]:-$E2E_LIMIT}
            specs+=("$name=$limit")
            total=$((total + limit + 15))
        done
        step "machine $machines: ${#pending[@]} test(s) of $stem"
        set +e
        (cd "$repo/integration-tests" &&
            "$repo/scripts/with-kvm.sh" --timeout "$total" --console "$dir/console" \
                --fault-file "$dir/fault" -- "$repo/scripts/e2e-batch.sh" "$dir" "$bin" "$stem" "${specs[@]}")
        status=$?
        set -e
        next=()
        # The first test with no status was running when the machine ended, unless
        # a test before it failed (and so ended the machine).
        inflight=0
        [ "$status" != 0 ] || inflight=1
        for name in "${pending[@]}"; do
            id=$stem::$name
            attempts[$name]=${attempts[$name]:-0}
            if [ -s "$dir/$name.status" ]; then
                read -r st secs <"$dir/$name.status"
                durations+=("$secs $id")
                attempts[$name]=$((attempts[$name] + 1))
                if [ "$st" = 0 ]; then
                    # `--exact` that matches nothing passes too: the test must have run.
                    if grep -q '^test result: ok\. 1 passed; 0 failed' "$dir/$name.out"; then
                        passed=$((passed + 1))
                    else
                        failed+=("$id: exit status 0 but the test did not run (no '1 passed')")
                    fi
                    continue
                fi
                cause=
                if [ "$e2e_mode" = tcg ]; then
                    cause=$(grep -a -m1 -E "$NESTED_TRIPLE_FAULT" "$dir/$name.out" | tr -d '\r' | cut -c1-200 || true)
                fi
                if [ -n "$cause" ] && ((attempts[$name] < E2E_ATTEMPTS)); then
                    triple_faults=$((triple_faults + 1))
                    if ((triple_faults > E2E_TRIPLE_FAULTS)); then
                        problems+=("more than $E2E_TRIPLE_FAULTS nested guest triple faults in one run: too many to be the emulation's")
                    fi
                    retried=$((retried + 1))
                    retries+=("$id (attempt ${attempts[$name]}): nested guest triple fault: $cause")
                    echo "=== retrying $id: attempt ${attempts[$name]} of $E2E_ATTEMPTS ended by a nested guest's triple fault in the emulated machine: $cause" >&2
                    next+=("$name")
                    continue
                fi
                if [ "$st" = 124 ] || [ "$st" = 137 ]; then
                    cause="killed at its limit of ${e2e_limits[$id]:-$E2E_LIMIT} s"
                else
                    cause="status $st"
                fi
                place=$(failure_place "$dir/$name.out")
                failed+=("$id: $cause${place:+: $place} (output: $dir/$name.out, console: $dir/console)")
                echo "=== $id failed: $cause${place:+: $place}" >&2
                inflight=1
            elif [ "$inflight" = 0 ]; then
                # It ran when the machine ended without its status.
                inflight=1
                attempts[$name]=$((attempts[$name] + 1))
                cause=$(head -n1 "$dir/fault" 2>/dev/null || true)
                if [ -z "$cause" ]; then
                    place=$(failure_place "$dir/$name.out")
                    failed+=("$id: the machine ended (with-kvm status $status) with no fault of its own named${place:+: $place} (console: $dir/console)")
                    echo "=== $id failed: the machine ended (with-kvm status $status)" >&2
                elif ((attempts[$name] >= E2E_ATTEMPTS)); then
                    failed+=("$id: the emulated machine failed in all $E2E_ATTEMPTS attempts, last: $cause")
                    echo "=== $id: the emulated machine failed in all $E2E_ATTEMPTS attempts, last: $cause" >&2
                else
                    retried=$((retried + 1))
                    retries+=("$id (attempt ${attempts[$name]}): $cause")
                    echo "=== retrying $id: attempt ${attempts[$name]} of $E2E_ATTEMPTS ended by the emulated machine, not the test: $cause (console: $dir/console)" >&2
                    next+=("$name")
                fi
            else
                # Not started in this machine.
                next+=("$name")
            fi
        done
        if [ "$status" = 0 ] && [ "${#next[@]}" -gt 0 ]; then
            problems+=("a machine for $stem ended well but left ${#next[@]} test(s) unrun (console: $dir/console)")
            return
        fi
        pending=("${next[@]}")
    done
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
    to_run=()
    for name in "${names[@]}"; do
        id=$stem::$name
        if [ -n "$e2e_filter" ] && ! [[ $id =~ $e2e_filter ]]; then continue; fi
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
        to_run+=("$name")
    done
    if [ "${#to_run[@]}" -gt 0 ]; then run_e2e_binary "$bin" "$stem" "${to_run[@]}"; fi
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

echo "=== end-to-end tests ($listed listed, $machines machines, $(((SECONDS - e2e_started) / 60)) min):" >&2
echo "$passed passed, ${#failed[@]} failed, $retried retried" >&2
echo "    slowest:" >&2
printf '%s\n' "${durations[@]}" | sort -rn | head -n 8 | sed 's/^\([0-9]*\) /      \1 s  /' >&2
if [ "${#retries[@]}" -gt 0 ]; then printf '    retried: %s\n' "${retries[@]}" >&2; fi
if [ "${#failed[@]}" -gt 0 ]; then printf '    failed: %s\n' "${failed[@]}" >&2; fi
if [ "${#problems[@]}" -gt 0 ]; then printf '    suite: %s\n' "${problems[@]}" >&2; fi
if [ "${#failed[@]}" -gt 0 ] || [ "${#problems[@]}" -gt 0 ]; then exit 1; fi
[ "$passed" -gt 0 ] || { echo "no end-to-end test ran" >&2; exit 1; }
step "all tests passed in $((SECONDS / 60)) min"
