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
    # 256 MiB each way and 32 MiB each way through emulated nested virtio-net.
    [vmm::network_transfers_each_way_arrive_intact_with_and_without_offloads]=900
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
# End-to-end tests that may be #[ignore]d, keyed "<test file>::<test name>", each with
# the reason. Any other ignored test fails the suite.
declare -A e2e_allowed_ignored=()
# NESTED_TRIPLE_FAULT and the machine modes, from with-kvm.sh (sourced, it only
# defines).
# shellcheck disable=SC1091
source "$repo/scripts/with-kvm.sh"
e2e_mode=$("$repo/scripts/with-kvm.sh" --print-mode)
# TCG machines run side by side, each with its own test binary: one uses about one
# of the host's cores on average (a nested guest's vCPU and the daemon; its second
# vCPU idles most of the time). On hardware KVM the tests run on the host itself,
# where test binaries could meet in host-wide state: one at a time.
if [ "$e2e_mode" = tcg ]; then
    e2e_jobs=${VMLET_E2E_JOBS:-2}
else
    e2e_jobs=1
fi

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
triple_faults=0
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
# failed, or failed in the machine E2E_ATTEMPTS times. Runs beside other binaries'
# machines: what it finds goes to $e2e_logs/STEM.results, one tab-separated line each
# (pass ID, fail ID REASON, retry ID CAUSE, triple ID, duration ID SECONDS, machine
# ID DIR, problem ID TEXT), and what it prints is a line per test (with the end of
# the output of one that failed), not the machines' whole output (kept in their
# folders).
run_e2e_binary() { # BINARY STEM NAME...
    local bin=$1 stem=$2
    shift 2
    local pending=("$@") next name id limit total dir status cause specs st secs inflight place n=0
    local results=$e2e_logs/$stem.results
    local -A attempts=()
    record() { printf '%s\t%s\t%s\n' "$1" "$2" "${3:-}" >>"$results"; }
    fail_test() { # ID REASON OUTPUT-FILE
        record fail "$1" "$2"
        echo "=== $1 failed: $2" >&2
        if [ -s "${3:-}" ]; then tail -n 60 "$3" | sed 's/^/    /' >&2; fi
    }
    : >"$results"
    while [ "${#pending[@]}" -gt 0 ]; do
        n=$((n + 1))
        dir=$e2e_logs/$stem.$n
        mkdir -p "$dir"
        record machine "$stem" "$dir"
        specs=()
        total=$E2E_BOOT_LIMIT
        for name in "${pending[@]}"; do
            limit=${e2e_limits[$stem::$name]:-$E2E_LIMIT}
            specs+=("$name=$limit")
            total=$((total + limit + 15))
        done
        step "machine $stem.$n: ${#pending[@]} test(s)"
        set +e
        (cd "$repo/integration-tests" &&
            "$repo/scripts/with-kvm.sh" --timeout "$total" --console "$dir/console" \
                --fault-file "$dir/fault" -- "$repo/scripts/e2e-batch.sh" "$dir" "$bin" "$stem" "${specs[@]}") \
            >"$dir/machine.log" 2>&1
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
                record duration "$id" "$secs"
                attempts[$name]=$((attempts[$name] + 1))
                if [ "$st" = 0 ]; then
                    # `--exact` that matches nothing passes too: the test must have run.
                    if grep -q '^test result: ok\. 1 passed; 0 failed' "$dir/$name.out"; then
                        record pass "$id"
                        echo "=== $id passed ($secs s)" >&2
                    else
                        fail_test "$id" "exit status 0 but the test did not run (no '1 passed')" "$dir/$name.out"
                    fi
                    continue
                fi
                inflight=1
                cause=
                if [ "$e2e_mode" = tcg ]; then
                    cause=$(grep -a -m1 -E "$NESTED_TRIPLE_FAULT" "$dir/$name.out" | tr -d '\r' | cut -c1-200 || true)
                fi
                if [ -n "$cause" ] && ((attempts[$name] < E2E_ATTEMPTS)); then
                    record triple "$id"
                    record retry "$id" "attempt ${attempts[$name]}: nested guest triple fault: $cause"
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
                fail_test "$id" "$cause${place:+: $place} (output: $dir/$name.out, console: $dir/console)" "$dir/$name.out"
            elif [ "$inflight" = 0 ]; then
                inflight=1
                attempts[$name]=$((attempts[$name] + 1))
                cause=$(head -n1 "$dir/fault" 2>/dev/null || true)
                if [ -z "$cause" ]; then
                    place=$(failure_place "$dir/$name.out")
                    fail_test "$id" "the machine ended (with-kvm status $status) with no fault of its own named${place:+: $place} (log: $dir/machine.log, console: $dir/console)" "$dir/machine.log"
                elif ((attempts[$name] >= E2E_ATTEMPTS)); then
                    fail_test "$id" "the emulated machine failed in all $E2E_ATTEMPTS attempts, last: $cause (console: $dir/console)"
                else
                    record retry "$id" "attempt ${attempts[$name]}: $cause"
                    echo "=== retrying $id: attempt ${attempts[$name]} of $E2E_ATTEMPTS ended by the emulated machine, not the test: $cause (console: $dir/console)" >&2
                    next+=("$name")
                fi
            else
                # Not started in this machine.
                next+=("$name")
            fi
        done
        if [ "$status" = 0 ] && [ "${#next[@]}" -gt 0 ]; then
            record problem "$stem" "a machine ended well but left ${#next[@]} test(s) unrun (log: $dir/machine.log)"
            return
        fi
        pending=("${next[@]}")
    done
}

# Every binary's tests to run, and its weight (the sum of its tests' limits): the
# heaviest start first, so that the side-by-side machines end close together.
declare -A e2e_bin_of=() e2e_tests_of=() e2e_weight=()
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
    weight=0
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
        weight=$((weight + ${e2e_limits[$id]:-$E2E_LIMIT}))
    done
    if [ "${#to_run[@]}" -gt 0 ]; then
        e2e_bin_of[$stem]=$bin
        e2e_tests_of[$stem]=$(printf '%s\n' "${to_run[@]}")
        e2e_weight[$stem]=$weight
    fi
done

step "end-to-end tests: ${#e2e_bin_of[@]} binaries, $e2e_jobs machine(s) at a time"
running=0
while read -r _ stem; do
    if ((running >= e2e_jobs)); then
        wait -n || true
        running=$((running - 1))
    fi
    mapfile -t names <<<"${e2e_tests_of[$stem]}"
    run_e2e_binary "${e2e_bin_of[$stem]}" "$stem" "${names[@]}" &
    running=$((running + 1))
done < <(for stem in "${!e2e_weight[@]}"; do echo "${e2e_weight[$stem]} $stem"; done | sort -rn)
wait

for results in "$e2e_logs"/*.results; do
    [ -e "$results" ] || continue
    while IFS=$'\t' read -r kind id text; do
        case $kind in
            pass) passed=$((passed + 1)) ;;
            fail) failed+=("$id: $text") ;;
            retry) retried=$((retried + 1)); retries+=("$id ($text)") ;;
            triple) triple_faults=$((triple_faults + 1)) ;;
            duration) durations+=("$text $id") ;;
            machine) machines=$((machines + 1)) ;;
            problem) problems+=("$id: $text") ;;
        esac
    done <"$results"
done
if ((triple_faults > E2E_TRIPLE_FAULTS)); then
    problems+=("$triple_faults nested guest triple faults in one run, more than $E2E_TRIPLE_FAULTS: too many to be the emulation's")
fi
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
