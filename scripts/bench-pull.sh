#!/bin/bash
# Image pull benchmark: vmlet's pull + flatten (erofs) of a Debian image from a local
# registry, against containerd's pull + unpack of the same image from the same registry
# in the same run (when Debian's containerd is installed).
#
# The Debian root (debootstrap, minbase) is built once and cached under
# /var/cache/vmlet/bench, keyed by suite, variant and mirror.
# Prints pull_ms_p50=<n> and pull_vs_containerd=<ratio> (vmlet / containerd; <= 1.0 is
# the target).
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
cleanup() {
    [ -n "$ctrd_pid" ] && kill "$ctrd_pid" 2>/dev/null && wait "$ctrd_pid" 2>/dev/null
    "$repo/scripts/test-registry.sh" stop "$work/registry" >/dev/null 2>&1 || true
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
cargo build -q -j2 --release -p vmlet-agent --example pull >&2
target=${CARGO_TARGET_DIR:-$repo/target}
pull_bin=$target/release/examples/pull

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

vmlet_ms=()
for i in $(seq "$runs"); do
    state=$work/vmlet-$i
    sync
    vmlet_ms+=("$("$pull_bin" "$state" "$ref" "$addr")")
    rm -rf "$state"
done
vmlet_p50=$(printf '%s\n' "${vmlet_ms[@]}" | median)
log "vmlet pull+flatten ms: ${vmlet_ms[*]}"
echo "pull_ms_p50=$vmlet_p50"

if ! command -v containerd >/dev/null || ! command -v ctr >/dev/null; then
    log "containerd not installed: no comparison"
    exit 0
fi
ctrd_ms=()
for i in $(seq "$runs"); do
    root=$work/ctrd-root
    mkdir -p "$root"
    containerd --root "$root/lib" --state "$root/run" --address "$root/ctrd.sock" \
        --config /dev/null >"$work/containerd.log" 2>&1 &
    ctrd_pid=$!
    for _ in $(seq 100); do [ -S "$root/ctrd.sock" ] && break; sleep 0.1; done
    sync
    start=$(date +%s%N)
    ctr --address "$root/ctrd.sock" -n bench image pull --plain-http "$ref" >/dev/null
    end=$(date +%s%N)
    ctrd_ms+=($(( (end - start) / 1000000 )))
    kill "$ctrd_pid"; wait "$ctrd_pid" 2>/dev/null || true
    ctrd_pid=
    umount -R "$root" 2>/dev/null || true
    rm -rf "$root"
done
ctrd_p50=$(printf '%s\n' "${ctrd_ms[@]}" | median)
log "containerd pull+unpack ms: ${ctrd_ms[*]}"
echo "containerd_pull_ms_p50=$ctrd_p50"
awk -v a="$vmlet_p50" -v b="$ctrd_p50" 'BEGIN { printf "pull_vs_containerd=%.2f\n", a / b }'
