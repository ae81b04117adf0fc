#!/bin/bash
# Builds the vmlet guest kernel (an uncompressed vmlinux with a PVH entry) from
# Debian's linux-source-6.1 and guest-images/kernel/microvm.config, and caches it
# under $VMLET_CACHE/kernel/<hash of config + source version>/vmlinux.
# Prints the path of the vmlinux on its last line of stdout.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${VMLET_CACHE:-/var/cache/vmlet}
fragment=$repo/guest-images/kernel/microvm.config

log() { echo "build-guest-kernel: $*" >&2; }

if ! dpkg-query -W -f='${Status}' linux-source-6.1 2>/dev/null | grep -q 'ok installed'; then
    log "installing linux-source-6.1 and build dependencies"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        linux-source-6.1 bc bison flex libelf-dev libssl-dev make gcc xz-utils >&2
fi
tarball=$(ls /usr/src/linux-source-6.1.tar.xz)
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( (cat "$fragment"; echo "$src_version"; gcc -dumpfullversion) | sha256sum | cut -c1-16)
out=$cache/kernel/$key
if [ -s "$out/vmlinux" ]; then
    log "cached: $out/vmlinux"
    echo "$out/vmlinux"
    exit 0
fi

start=$(date +%s)
work=$cache/kernel-build/$key
rm -rf "$work"
mkdir -p "$work"
log "unpacking $tarball"
tar -C "$work" -xf "$tarball"
ksrc=$work/linux-source-6.1
make -C "$ksrc" -s allnoconfig KCONFIG_ALLCONFIG="$fragment" >&2

# Kconfig silently drops options whose dependencies are unmet: check them all.
missing=0
while IFS= read -r line; do
    case "$line" in CONFIG_*=*) ;; *) continue ;; esac
    if ! grep -qx "$line" "$ksrc/.config"; then
        log "option did not survive allnoconfig: $line"
        missing=1
    fi
done < "$fragment"
[ "$missing" = 0 ] || { log "fix the dependencies in $fragment"; exit 1; }

log "building vmlinux with $(nproc) jobs"
make -C "$ksrc" -s -j"$(nproc)" vmlinux >&2
mkdir -p "$out"
cp "$ksrc/vmlinux" "$out/vmlinux.tmp"
cp "$ksrc/.config" "$out/config"
mv "$out/vmlinux.tmp" "$out/vmlinux"
rm -rf "$work"
log "built in $(( $(date +%s) - start )) s: $out/vmlinux"
echo "$out/vmlinux"
