#!/bin/bash
# Image pull benchmark: vmlet's pull + flatten (erofs) of a Debian image from a local
# registry, against containerd's pull + unpack of the same image from the same registry
# in the same run (when Debian's containerd is installed).
#
# The Debian root (debootstrap, minbase) is built once and cached under
# /var/cache/vmlet/bench, keyed by suite, variant and mirror.
# Prints pull_ms_p50=<n> and pull_vs_containerd=<ratio> last (vmlet / containerd; <= 1.0
# is the target), with vmlet's default configuration (scratch root on disk, under the
# state directory); before them the same figures with the scratch root on tmpfs.
#
#   scripts/bench-pull.sh [RUNS]      (default 5; run as root)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-5}
suite=bookworm
variant=minbase
mirror=${VMLET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=/var/cache/vmlet/bench
key=$(printf '%s %s %s' "$suite" "$variant" "$mirror" | sha256sum | cut -c1-16)
rootfs_tar=$cache/debian-$suite-$variant-$key.tar

log() { echo "bench-pull: $*" >&2; }

if [ ! -f "$rootfs_tar" ]; then
    log "building the Debian root with debootstrap (cached in $cache)"
    mkdir -p "$cache"
    tmp_root=$(mktemp -d "$cache/.debootstrap-XXXXXX")
    debootstrap --variant="$variant" "$suite" "$tmp_root" "$mirror" >&2
    tar --sort=name --numeric-owner --xattrs -C "$tmp_root" -cf "$rootfs_tar.tmp" .
    mv "$rootfs_tar.tmp" "$rootfs_tar"
    rm -rf "$tmp_root"
fi

work=$(mktemp -d /var/tmp/vmlet-bench-XXXXXX)
ctrd_pid=
shm_scratch=
cleanup() {
    [ -n "$ctrd_pid" ] && kill "$ctrd_pid" 2>/dev/null && wait "$ctrd_pid" 2>/dev/null
    "$repo/scripts/test-registry.sh" stop "$work/registry" >/dev/null 2>&1 || true
    [ -n "${shm_scratch:-}" ] && rm -rf "$shm_scratch"
    umount -R "$work/ctrd-root" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

addr=$("$repo/scripts/test-registry.sh" start "$work/registry")

# One gzip layer, OCI layout, pushed with skopeo.
layout=$work/layout
mkdir -p "$layout/blobs/sha256"
diff_id=sha256:$(sha256sum "$rootfs_tar" | cut -d' ' -f1)
gzip -1 -n -c "$rootfs_tar" >"$work/layer.tar.gz"
put_blob() {
    local hex
    hex=$(sha256sum "$1" | cut -d' ' -f1)
    cp "$1" "$layout/blobs/sha256/$hex"
    echo "sha256:$hex $(stat -c %s "$1")"
}
read -r layer_digest layer_size < <(put_blob "$work/layer.tar.gz")
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["bash"]},"rootfs":{"type":"layers","diff_ids":["%s"]}}' "$diff_id" >"$work/config.json"
read -r config_digest config_size < <(put_blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}]}' \
    "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$work/manifest.json"
read -r manifest_digest manifest_size < <(put_blob "$work/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
    "$manifest_digest" "$manifest_size" >"$layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
skopeo --insecure-policy copy --quiet --dest-tls-verify=false "oci:$layout:latest" "docker://$addr/debian:bench" >&2
ref=$addr/debian:bench
log "image $ref: layer $layer_size bytes compressed"

# Release build without LTO: the benchmark measures the pull, not the link time.
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
cargo build -q -j2 --release -p vmlet-bench --bin pull-bench >&2
target=${CARGO_TARGET_DIR:-$repo/target}
pull_bin=$target/release/pull-bench

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

have_containerd=1
if ! command -v containerd >/dev/null || ! command -v ctr >/dev/null; then
    log "containerd not installed: no comparison"
    have_containerd=0
fi

# Arguments: extra options (a scratch directory).
vmlet_pull() {
    local state=$work/vmlet
    "$pull_bin" "$@" "$state" "$ref" "$addr"
    rm -rf "$state"
}
shm_scratch=$(mktemp -d /dev/shm/vmlet-bench-XXXXXX)

# containerd with its own root, started fresh for each pull (cold content store), the
# default overlayfs snapshotter: pull = fetch + unpack.
containerd_pull() {
    local root=$work/ctrd-root start end
    mkdir -p "$root"
    containerd --root "$root/lib" --state "$root/run" --address "$root/ctrd.sock" \
        --config /dev/null >"$work/containerd.log" 2>&1 &
    ctrd_pid=$!
    for _ in $(seq 100); do [ -S "$root/ctrd.sock" ] && break; sleep 0.1; done
    start=$(date +%s%N)
    ctr --address "$root/ctrd.sock" -n bench image pull --plain-http "$ref" >/dev/null
    end=$(date +%s%N)
    echo $(( (end - start) / 1000000 ))
    kill "$ctrd_pid"
    wait "$ctrd_pid" 2>/dev/null || true
    ctrd_pid=
    umount -R "$root" 2>/dev/null || true
    rm -rf "$root"
}

# Alternating runs, each after a sync, so that load from other work on the machine and
# write-back of the previous run fall on both sides alike.
vmlet_ms=()
vmlet_shm_ms=()
ctrd_ms=()
for _ in $(seq "$runs"); do
    sync
    vmlet_ms+=("$(vmlet_pull)")
    sync
    vmlet_shm_ms+=("$(vmlet_pull --scratch "$shm_scratch")")
    if [ "$have_containerd" = 1 ]; then
        sync
        ctrd_ms+=("$(containerd_pull)")
    fi
done
vmlet_p50=$(printf '%s\n' "${vmlet_ms[@]}" | median)
vmlet_shm_p50=$(printf '%s\n' "${vmlet_shm_ms[@]}" | median)
log "vmlet pull+flatten ms (scratch root on disk, the default): ${vmlet_ms[*]}"
log "vmlet pull+flatten ms (scratch root on tmpfs): ${vmlet_shm_ms[*]}"
echo "pull_tmpfs_scratch_ms_p50=$vmlet_shm_p50"
if [ "$have_containerd" = 0 ]; then
    echo "pull_ms_p50=$vmlet_p50"
    exit 0
fi
ctrd_p50=$(printf '%s\n' "${ctrd_ms[@]}" | median)
log "containerd pull+unpack ms: ${ctrd_ms[*]}"
echo "containerd_pull_ms_p50=$ctrd_p50"
awk -v a="$vmlet_shm_p50" -v b="$ctrd_p50" 'BEGIN { printf "pull_tmpfs_scratch_vs_containerd=%.2f\n", a / b }'
echo "pull_ms_p50=$vmlet_p50"
awk -v a="$vmlet_p50" -v b="$ctrd_p50" 'BEGIN { printf "pull_vs_containerd=%.2f\n", a / b }'
