#!/bin/bash
# Builds the vmlet guest initramfs: an uncompressed cpio (newc) archive with
#   /init            vmlet-init, built statically (or $VMLET_INIT_BIN if set)
#   /dev/console     char 5,1 (the kernel opens it as init's stdin/stdout/stderr)
#   /dev/null        char 1,3 (std falls back to it if the console cannot be opened)
#   /dev /proc /sys /tmp /run /mnt   empty mount points
# and, with --with-busybox (test images), /bin/busybox from Debian's busybox-static
# with a symlink per applet in /bin and /sbin.
#
# Usage: scripts/build-initramfs.sh [--with-busybox] -o <out.cpio>
# Needs root (mknod). Prints the absolute path of the archive on its last line of stdout.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "build-initramfs: $*" >&2; }
die() { log "$*"; exit 1; }
usage() { die "usage: $0 [--with-busybox] -o <out.cpio>"; }

with_busybox=0
out=
while [ $# -gt 0 ]; do
    case "$1" in
        --with-busybox) with_busybox=1 ;;
        -o) [ $# -ge 2 ] || usage; out=$2; shift ;;
        -o*) out=${1#-o} ;;
        -h|--help) usage ;;
        *) usage ;;
    esac
    shift
done
[ -n "$out" ] || usage
[ "$(id -u)" = 0 ] || die "must run as root (device nodes are created with mknod)"

apt_install() {
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}
command -v cpio >/dev/null || apt_install cpio

# --- vmlet-init ---------------------------------------------------------------
if [ -n "${VMLET_INIT_BIN:-}" ]; then
    init_bin=$VMLET_INIT_BIN
    [ -x "$init_bin" ] || die "VMLET_INIT_BIN=$init_bin is not an executable file"
else
    target=x86_64-unknown-linux-gnu
    log "building vmlet-init (static, $target)"
    # There is no musl target here: a static glibc binary. Passing --target keeps
    # RUSTFLAGS away from build scripts and proc macros.
    (cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --profile init --target "$target" -p vmlet-init ${CARGO_BUILD_JOBS:+-j "$CARGO_BUILD_JOBS"} >&2)
    init_bin=${CARGO_TARGET_DIR:-$repo/target}/$target/init/vmlet-init
fi
if command -v readelf >/dev/null && readelf -lW "$init_bin" | grep -q 'program interpreter'; then
    die "$init_bin is dynamically linked; /init must be static"
fi

stage=$(mktemp -d "${TMPDIR:-/tmp}/vmlet-initramfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage"/{dev,proc,sys,tmp,run,mnt}
chmod 1777 "$stage/tmp"
cp "$init_bin" "$stage/init"
# Symbols are useless in the guest (panic = abort, no backtraces) and cost boot time.
if command -v strip >/dev/null; then strip "$stage/init"; fi
chmod 0755 "$stage/init"
mknod -m 0600 "$stage/dev/console" c 5 1
mknod -m 0666 "$stage/dev/null" c 1 3

# --- busybox (test images) ----------------------------------------------------
if [ "$with_busybox" = 1 ]; then
    if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
        apt_install busybox-static
    fi
    busybox=$(dpkg-query -L busybox-static | grep -E '/bin/busybox$' | head -n1)
    [ -x "$busybox" ] || die "busybox-static installed but no busybox binary found"
    mkdir -p "$stage"/{bin,sbin}
    cp "$busybox" "$stage/bin/busybox"
    chmod 0755 "$stage/bin/busybox"
    # --list-full prints install paths (bin/sh, sbin/ip, usr/bin/env, ...): keep the
    # bin/sbin split, fold usr/ into it.
    n=0
    while IFS= read -r applet; do
        case "$applet" in
            bin/*|usr/bin/*) dir=bin; link=busybox ;;
            sbin/*|usr/sbin/*) dir=sbin; link=../bin/busybox ;;
            *) continue ;;
        esac
        name=${applet##*/}
        if [ -z "$name" ] || [ "$name" = busybox ]; then continue; fi
        [ -e "$stage/$dir/$name" ] || [ -L "$stage/$dir/$name" ] && continue
        ln -s "$link" "$stage/$dir/$name"
        n=$((n + 1))
    done < <("$stage/bin/busybox" --list-full)
    log "added busybox with $n applet links"
fi

# --- archive ------------------------------------------------------------------
# Fixed timestamps and sorted names make the archive depend only on its contents.
find "$stage" -exec touch -h -d @0 {} +
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
(cd "$stage" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible) > "$out.tmp"
mv "$out.tmp" "$out"
log "wrote $(stat -c %s "$out") bytes"
echo "$out"
