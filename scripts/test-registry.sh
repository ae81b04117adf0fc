#!/bin/bash
# A throw-away local OCI registry (Debian's docker-registry) for tests and demos.
#
#   scripts/test-registry.sh start DIR         start on a free loopback port; prints host:port
#   scripts/test-registry.sh push-busybox DIR  push a one-layer busybox image (busybox-static);
#                                              prints the reference host:port/busybox:latest
#   scripts/test-registry.sh stop DIR          kill the registry and delete DIR
#
# DIR holds the config, storage, log, pid and address. Pull over plain HTTP.
# Rust tests use the same fixture from the vmlet-test-support crate (test-support/).
set -euo pipefail

usage() { echo "usage: $0 start|push-busybox|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$2

start() {
    mkdir -p "$dir/storage"
    dir=$(cd "$dir" && pwd)
    local port
    # A random high port nothing answers on.
    while :; do
        port=$((20000 + RANDOM % 40000))
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
    done
    cat >"$dir/config.yml" <<CONF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
CONF
    docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
    echo $! >"$dir/pid"
    echo "127.0.0.1:$port" >"$dir/addr"
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            cat "$dir/addr"
            return 0
        fi
        kill -0 "$(cat "$dir/pid")" 2>/dev/null || break
        sleep 0.1
    done
    echo "test-registry: registry did not start:" >&2
    cat "$dir/registry.log" >&2
    exit 1
}

# Writes blob $1 (a file) into the layout $2 and prints "<digest> <size>".
put_blob() {
    local hex size
    hex=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(stat -c %s "$1")
    cp "$1" "$2/blobs/sha256/$hex"
    echo "sha256:$hex $size"
}

push_busybox() {
    local addr work root layout
    addr=$(cat "$dir/addr")
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    root=$work/root
    layout=$work/layout
    mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root" "$layout/blobs/sha256"
    chmod 1777 "$root/tmp"
    chmod 700 "$root/root"
    cp /bin/busybox "$root/bin/busybox"
    for applet in sh ls cat echo sleep true false env ps mount; do
        ln -s busybox "$root/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1700000000 \
        -C "$root" -cf "$work/layer.tar" bin etc tmp root
    local diff_id
    diff_id=sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
    gzip -n "$work/layer.tar"
    read -r layer_digest layer_size < <(put_blob "$work/layer.tar.gz" "$layout")
    printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
        "$diff_id" >"$work/config.json"
    read -r config_digest config_size < <(put_blob "$work/config.json" "$layout")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}]}' \
        "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$work/manifest.json"
    read -r manifest_digest manifest_size < <(put_blob "$work/manifest.json" "$layout")
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
        "$manifest_digest" "$manifest_size" >"$layout/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
    skopeo --insecure-policy copy --quiet --dest-tls-verify=false \
        "oci:$layout:latest" "docker://$addr/busybox:latest" >&2
    echo "$addr/busybox:latest"
}

stop() {
    if [ -f "$dir/pid" ]; then
        kill "$(cat "$dir/pid")" 2>/dev/null || true
    fi
    rm -rf "$dir"
}

case "$cmd" in
    start) start ;;
    push-busybox) push_busybox ;;
    stop) stop ;;
    *) usage ;;
esac
