#!/bin/bash
# Pod start benchmark through vmletd's CRI: N runs of RunPodSandbox + CreateContainer +
# StartContainer of a busybox container until its first log line, then teardown, all
# inside the KVM entry point (registry, daemon and client too), on a CNI bridge network;
# where containerd + runc are installed, the same sequence through containerd's CRI in
# the same run, alternating (each pair in the other order than the last). vmletd runs
# with its default warm pool of one pre-booted VM (--warm-pool N to change it); then the
# same runs without one (cold_*), again alternating with containerd. Failed runs are
# counted (failed_runs_*=), not fatal. Prints per-run lines, then pod_start_ms_p50=,
# pod_start_ms_p99=, containerd_pod_start_ms_p50=, containerd_pod_start_ms_p99=,
# pod_start_vs_containerd=, cold_pod_start_ms_p50=, cold_pod_start_ms_p99=,
# cold_pod_start_vs_containerd=, then idle_pod_host_cost_kib= and
# containerd_idle_pod_host_cost_kib= (the drop in the host's MemAvailable per idle pod,
# over --idle-pods N idle pods of each runtime, default 5) and idle_pod_host_rss_kib=
# (an idle pod's VMM RSS) with its private (_anon_) and page-cache (_file_) parts last.
# With --volumes it measures volumes instead: pods whose container has a kubelet's
# volume set (hosts, termination log, token, one configMap) next to plain pods, both
# from the warm pool (volumes_pod_start_vs_plain=); pods with one hostPath through
# virtio-fs next to plain cold starts (hostpath_pod_start_vs_cold=); an idle such pod's
# VMM and virtiofsd RSS (shared_idle_pod_*_rss_kib=); and a 256 MiB sequential read
# through virtio-fs next to the same read on the host (virtiofs_read_vs_host=).
#   scripts/bench-pod.sh [--runs N] [--warm-pool N] [--idle-pods N] [--no-containerd]
# With --security it measures container start in one pod (CreateContainer +
# StartContainer until the first log line), RuntimeDefault seccomp next to Unconfined,
# alternating (seccomp_adds_ms_p50=).
# With --streaming it measures `kubectl exec` round trips (`echo hello`, start to exit
# status, through a fake API server as kubelet proxies them) next to containerd + runc,
# alternating (exec_vs_containerd=), and `kubectl port-forward` throughput of 64 MiB
# transfers next to direct connections to the pod's IP (port_forward_vs_direct=).
# With --jail it measures what the VMM's jail and host cgroup add to a cold pod start:
# a daemon with both next to one with neither, alternating (jail_adds_ms_p50=).
# With --templates it measures pods restored from templates, as vmletd starts them by
# default (no warm pool): one pod of each shape boots and its template is made, then
# pods of the default size and of a 512 MiB memory limit, each alternating with
# containerd (template_pod_start_vs_containerd=, template_big_pod_start_vs_containerd=);
# then density: idle pods restored next to idle pods booted (*_idle_pod_host_cost_kib=,
# *_idle_pod_private_kib=, *_pods_per_gib=).
#   scripts/bench-pod.sh --templates [--runs N] [--idle-pods N] [--no-containerd]
#   scripts/bench-pod.sh --templates --density-only [--idle-pods N]  (density alone;
#   VMLET_BENCH_MEM_MIB gives the emulated machine more memory for more pods)
#   scripts/bench-pod.sh --volumes [--runs N]
#   scripts/bench-pod.sh --jail [--runs N]
#   scripts/bench-pod.sh --security [--runs N]
#   scripts/bench-pod.sh --streaming [--runs N] [--no-containerd] [--no-exec] [--mib N]
set -euo pipefail

exec "$(dirname "$0")/run-release-bench.sh" pod-bench "$@"
