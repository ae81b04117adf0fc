#!/bin/bash
# Pod network benchmark through vmletd on a CNI bridge network, inside the KVM entry
# point: TCP throughput from the host into a pod's VM against the same transfer into a
# plain network namespace over a veth pair (same run), and the network's share of
# RunPodSandbox. Prints per-round lines, then net_gbps=, veth_gbps=, net_vs_veth=,
# pod_network_ms_p50=, run_pod_ms_p50= and pod_network_share=.
#   scripts/bench-net.sh [--pods N] [--mib M] [--rounds R]
set -euo pipefail

exec "$(dirname "$0")/run-release-bench.sh" net-bench "$@"
