#!/bin/bash
# Image pull benchmark: vmlet's pull + flatten (erofs) of a Debian image from a local
# registry, against containerd's pull + unpack of the same image from the same registry
# in the same run (when Debian's containerd is installed).
#
# The Debian root (debootstrap, minbase) is built once and cached under
# /var/cache/vmlet/bench, keyed by suite, variant and mirror.
# Prints pull_ms_p50=<n> and pull_vs_containerd=<ratio> last (vmlet / containerd; <= 1.0
# is the target), with vmlet's default configuration (state directory and scratch root
# on disk) against containerd with its root on the same disk; before them the same
# figures with both on tmpfs (/dev/shm): vmlet's state directory and scratch root,
# containerd's root.
#
# Both are timed the same way, around the whole command (vmlet's pull example, ctr's
# image pull against a containerd started beforehand), and run alternately, the order
# of each round reversed from the last. A pull that fails aborts the benchmark.
#
#   scripts/bench-pull.sh [RUNS]      (default 5; run as root)
set -euo pipefail
# Command substitutions fail with the commands in them.
shopt -s inherit_errexit

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
shm_work=
cleanup() {
    if [ -n "$ctrd_pid" ]; then kill "$ctrd_pid" 2>/dev/null && wait "$ctrd_pid" 2>/dev/null; fi
    "$repo/scripts/test-registry.sh" stop "$work/registry" >/dev/null 2>&1 || true
    local dir
    for dir in "$work" "$shm_work"; do
        if [ -n "$dir" ]; then
            umount -R "$dir/ctrd-root" 2>/dev/null || true
            rm -rf "$dir"
        fi
    done
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
die() { log "error: $*"; exit 1; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

have_containerd=1
if ! command -v containerd >/dev/null || ! command -v ctr >/dev/null; then
    log "containerd not installed: no comparison"
    have_containerd=0
fi

# The tmpfs row's folder: vmlet's state and scratch and containerd's root all on
# /dev/shm, as the disk row has them all under $work.
shm_work=$(mktemp -d /dev/shm/vmlet-bench-XXXXXX)

# vmlet's pull + flatten into a fresh state directory under BASE (its scratch root
# inside, as by default); prints the milliseconds around the whole command.
vmlet_pull() { # BASE
    local state=$1/vmlet start end
    start=$(now_ms)
    "$pull_bin" "$state" "$ref" "$addr" >/dev/null || die "vmlet's pull failed"
    end=$(now_ms)
    rm -rf "$state"
    echo $((end - start))
}

# Runs in the command substitution of measure: the EXIT trap does not, so a failed
# pull stops its containerd itself.
stop_containerd() { # ROOT
    kill "$ctrd_pid" 2>/dev/null || true
    wait "$ctrd_pid" 2>/dev/null || true
    ctrd_pid=
    umount -R "$1" 2>/dev/null || true
    rm -rf "$1"
}

# containerd with its own root under BASE, started fresh for each pull (cold content
# store), the default overlayfs snapshotter: pull = fetch + unpack. Prints the
# milliseconds around the whole ctr command.
containerd_pull() { # BASE
    local root=$1/ctrd-root start end i
    mkdir -p "$root"
    containerd --root "$root/lib" --state "$root/run" --address "$root/ctrd.sock" \
        --config /dev/null >"$work/containerd.log" 2>&1 &
    ctrd_pid=$!
    for i in $(seq 100); do
        [ -S "$root/ctrd.sock" ] && break
        if [ "$i" = 100 ]; then
            stop_containerd "$root"
            die "containerd did not start: $(tail -n 3 "$work/containerd.log")"
        fi
        sleep 0.1
    done
    start=$(now_ms)
    if ! ctr --address "$root/ctrd.sock" -n bench image pull --plain-http "$ref" >/dev/null; then
        stop_containerd "$root"
        die "containerd's pull failed: $(tail -n 3 "$work/containerd.log")"
    fi
    end=$(now_ms)
    stop_containerd "$root"
    echo $((end - start))
}

# One timed pull; its milliseconds are appended to the array named by the first
# argument. Each run after a sync, so write-back of the previous run falls on both
# sides alike.
measure() { # ARRAY COMMAND BASE
    local -n into=$1
    local ms
    sync
    ms=$("$2" "$3")
    [[ $ms =~ ^[0-9]+$ ]] || die "$2 $3 printed '$ms', not milliseconds"
    into+=("$ms")
}

# Rounds of alternating runs (disk and tmpfs rows, each runtime), the order of each
# round reversed from the one before, so that neither side always runs first.
vmlet_ms=()
vmlet_shm_ms=()
ctrd_ms=()
ctrd_shm_ms=()
for round in $(seq "$runs"); do
    order=(vmlet ctrd)
    if ((round % 2 == 0)); then order=(ctrd vmlet); fi
    for side in "${order[@]}"; do
        if [ "$side" = vmlet ]; then
            measure vmlet_ms vmlet_pull "$work"
            measure vmlet_shm_ms vmlet_pull "$shm_work"
        elif [ "$have_containerd" = 1 ]; then
            measure ctrd_ms containerd_pull "$work"
            measure ctrd_shm_ms containerd_pull "$shm_work"
        fi
    done
done
vmlet_p50=$(printf '%s\n' "${vmlet_ms[@]}" | median)
vmlet_shm_p50=$(printf '%s\n' "${vmlet_shm_ms[@]}" | median)
log "vmlet pull+flatten ms (state and scratch on disk, the default): ${vmlet_ms[*]}"
log "vmlet pull+flatten ms (state and scratch on tmpfs): ${vmlet_shm_ms[*]}"
echo "pull_tmpfs_ms_p50=$vmlet_shm_p50"
if [ "$have_containerd" = 0 ]; then
    echo "pull_ms_p50=$vmlet_p50"
    exit 0
fi
ctrd_p50=$(printf '%s\n' "${ctrd_ms[@]}" | median)
ctrd_shm_p50=$(printf '%s\n' "${ctrd_shm_ms[@]}" | median)
log "containerd pull+unpack ms (root on disk): ${ctrd_ms[*]}"
log "containerd pull+unpack ms (root on tmpfs): ${ctrd_shm_ms[*]}"
echo "containerd_pull_tmpfs_ms_p50=$ctrd_shm_p50"
awk -v a="$vmlet_shm_p50" -v b="$ctrd_shm_p50" 'BEGIN { printf "pull_tmpfs_vs_containerd_tmpfs=%.2f\n", a / b }'
echo "containerd_pull_ms_p50=$ctrd_p50"
echo "pull_ms_p50=$vmlet_p50"
awk -v a="$vmlet_p50" -v b="$ctrd_p50" 'BEGIN { printf "pull_vs_containerd=%.2f\n", a / b }'
