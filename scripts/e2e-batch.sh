#!/bin/bash
# Runs end-to-end tests of one test binary one after another inside one machine
# (scripts/test.sh starts it through scripts/with-kvm.sh): each test in a process of
# its own, under its own limit and harness deadline, its output in RESULTS/NAME.out
# and "STATUS SECONDS" in RESULTS/NAME.status. It stops at the first test that fails:
# what that test left behind must not decide the next one's result, so test.sh runs
# the rest in a new machine.
#
# usage: e2e-batch.sh RESULTS-DIR BINARY ID-PREFIX NAME=LIMIT...
set -uo pipefail

results=$1 bin=$2 stem=$3
shift 3

# Marks in the machine's console (only in the TCG machine: on hardware KVM this is
# the host's kernel log) show which test ran when the machine's kernel complained.
mark() {
    if [[ ${VMLET_IN_WITH_KVM:-} == tcg ]]; then
        echo "<3>vmlet-e2e: $*" >/dev/kmsg 2>/dev/null || true
    fi
}

for spec in "$@"; do
    name=${spec%=*}
    limit=${spec##*=}
    id=$stem::$name
    echo "=== $id ($(date +%T))" >&2
    mark "$id started"
    started=$SECONDS
    # The harness's own deadline (integration-tests/src/watchdog.rs), counted from
    # the test's first guest or vmletd, ends a stalled test with the step it waits in
    # and its logs, well before `timeout` kills it.
    VMLET_E2E_DEADLINE=$((limit - 120)) timeout --kill-after=10 "$limit" \
        "$bin" --exact "$name" --test-threads=1 2>&1 | tee "$results/$name.out"
    status=${PIPESTATUS[0]}
    echo "$status $((SECONDS - started))" >"$results/$name.status"
    mark "$id ended with status $status"
    if [[ $status != 0 ]]; then exit "$status"; fi
done
