#!/bin/bash
# Pod start benchmark through vmletd's CRI: N runs of RunPodSandbox + CreateContainer +
# StartContainer of a busybox container until its first log line, then teardown, all
# inside the KVM entry point (registry, daemon and client too), on a CNI bridge network;
# where containerd + runc are installed, the same sequence through containerd's CRI in
# the same run, alternating. Prints per-run lines, then pod_start_ms_p50=,
# pod_start_ms_p99=, containerd_pod_start_ms_p50=, containerd_pod_start_ms_p99= and
# pod_start_vs_containerd=, and idle_pod_host_rss_kib= (an idle pod's VMM RSS) last.
#   scripts/bench-pod.sh [--runs N] [--no-containerd]
set -euo pipefail

exec "$(dirname "$0")/run-release-bench.sh" pod-bench "$@"
