#!/bin/bash
# Builds the fuzz targets in fuzz/ (cargo fuzz, libFuzzer) and runs each from its seed
# corpus (fuzz/corpus/<target>) for a fixed number of inputs, or for a time.
# New inputs the fuzzer finds go to target/fuzz-corpus/<target>, crashes to
# fuzz/artifacts/<target>; the committed seeds are never changed.
#
# Usage: scripts/fuzz.sh [--runs N | --seconds S] [--jobs J] [TARGET...]
#   --runs N     inputs per target (default 2000)
#   --seconds S  run each target for S seconds instead (a longer session)
#   --jobs J     parallel fuzzing processes per target (default 1)
# cargo fuzz needs nightly flags: on a stable toolchain they are enabled with
# RUSTC_BOOTSTRAP=1 (set here). scripts/setup.sh installs cargo-fuzz.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
log() { echo "fuzz: $*" >&2; }
usage() { log "usage: $0 [--runs N | --seconds S] [--jobs J] [TARGET...]"; exit 2; }

runs=2000
seconds=
jobs=1
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) [ $# -ge 2 ] || usage; runs=$2; shift ;;
        --seconds) [ $# -ge 2 ] || usage; seconds=$2; shift ;;
        --jobs) [ $# -ge 2 ] || usage; jobs=$2; shift ;;
        -h|--help) usage ;;
        -*) usage ;;
        *) targets+=("$1") ;;
    esac
    shift
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "cargo-fuzz is missing: run scripts/setup.sh"
    exit 1
fi
export RUSTC_BOOTSTRAP=1
# The build (about 2 GiB; some 15 minutes from nothing on 2 cores, most of it the
# dependencies) is kept outside the checkout, like the guest kernel's, so later runs
# and other checkouts rebuild only vmlet's own crates (about 3 minutes of CPU). One run at a time uses it: the
# targets' binaries have the same paths for every checkout.
cache=${VMLET_CACHE:-/var/cache/vmlet}
mkdir -p "$cache"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/fuzz-target}
exec 9>"$cache/fuzz.lock"
flock 9
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

# Address sanitizer (the default), release code with debug assertions and overflow checks.
start=$(date +%s)
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2} cargo fuzz build --fuzz-dir fuzz
log "built ${#targets[@]} targets in $(($(date +%s) - start)) s"

limit=(-runs="$runs")
if [ -n "$seconds" ]; then
    limit=(-max_total_time="$seconds")
fi
extra=()
if [ "$jobs" -gt 1 ]; then
    extra=(-jobs="$jobs" -workers="$jobs")
fi
logs=$repo/target/fuzz-logs
mkdir -p "$logs"
for t in "${targets[@]}"; do
    work=$repo/target/fuzz-corpus/$t
    mkdir -p "$work" "fuzz/corpus/$t"
    t0=$(date +%s)
    # The first directory receives new inputs; the seeds are only read.
    if ! cargo fuzz run --fuzz-dir fuzz "$t" "$work" "fuzz/corpus/$t" -- \
        "${limit[@]}" "${extra[@]}" -timeout=30 -rss_limit_mb=2048 -max_len=70000 \
        >"$logs/$t.log" 2>&1; then
        tail -n 60 "$logs/$t.log" >&2
        log "$t FAILED: see $logs/$t.log; a crashing input is saved in fuzz/artifacts/$t"
        exit 1
    fi
    log "$t: $(grep -E '^(#[0-9]+|Done)' "$logs/$t.log" | tail -n 1) ($(($(date +%s) - t0)) s)"
done
log "all ${#targets[@]} targets passed in $(($(date +%s) - start)) s"
