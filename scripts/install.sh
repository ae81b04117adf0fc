#!/bin/bash
# Installs vmlet on a node (as root): vmletd and vmlet-vmm in /usr/local/bin, the guest
# kernel and initramfs in /usr/lib/vmlet, the default /etc/vmlet/config.toml (never over
# an existing one), the systemd unit vmletd.service, and the default pod network in
# /etc/cni/net.d where the node has none. Idempotent: a second run updates the programs
# and the guest and keeps the configuration. Then: systemctl enable --now vmletd.
#
# Usage: scripts/install.sh [--prefix DIR] [--bin-dir DIR] [--kernel FILE]
#                           [--initramfs FILE] [--uninstall]
#   --prefix DIR      install below DIR instead of / (a package's staging root, a test)
#   --bin-dir DIR     take vmletd and vmlet-vmm from DIR instead of a release build
#   --kernel FILE     the guest kernel (default: scripts/build-guest-kernel.sh's)
#   --initramfs FILE  the guest initramfs (default: scripts/build-initramfs.sh's)
#   --uninstall       remove what an install put there, and nothing else: files it
#                     did not write, and files changed since (an edited config), stay
#
# Building needs what scripts/setup.sh installs; running pods needs KVM, the CNI
# plugins (containernetworking-plugins), iproute2 and iptables, and virtiofsd
# (qemu-system-common) for shared file systems (see docs/kubelet.md).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
prog=install.sh
die() { echo "$prog: $*" >&2; exit 1; }
say() { echo "$prog: $*" >&2; }

prefix=/
bin_dir=
kernel=
initramfs=
uninstall=0
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) prefix=${2:?--prefix needs a directory}; shift ;;
        --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift ;;
        --kernel) kernel=${2:?--kernel needs a file}; shift ;;
        --initramfs) initramfs=${2:?--initramfs needs a file}; shift ;;
        --uninstall) uninstall=1 ;;
        -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || [ "$prefix" != / ] || die "run as root (or with --prefix)"
prefix=${prefix%/}

# Where each file goes, below the prefix.
bin=/usr/local/bin
lib=/usr/lib/vmlet
etc=/etc/vmlet
unit=/etc/systemd/system/vmletd.service
cni=/etc/cni/net.d
doc=/usr/share/doc/vmlet
# One line per installed file: its sha256 and its path (below the prefix), so that
# --uninstall removes exactly those files that are still as installed.
manifest=$lib/installed-files

sha() { sha256sum "$1" | cut -d' ' -f1; }

# install_file MODE SOURCE DEST: copies (atomically: a running vmletd keeps its
# binary) and records it.
install_file() {
    local mode=$1 src=$2 dest=$prefix$3
    mkdir -p "$(dirname "$dest")"
    install -m "$mode" "$src" "$dest.new"
    mv -f "$dest.new" "$dest"
    echo "$(sha "$dest") $3" >>"$prefix$manifest.new"
}

# keep_or_install MODE SOURCE DEST: as install_file, unless DEST exists (then it is
# the operator's, or from an earlier install whose record is carried over).
keep_or_install() {
    local mode=$1 src=$2 dest=$3
    if [ -e "$prefix$dest" ]; then
        awk -v p="$dest" '$2 == p' "$prefix$manifest" 2>/dev/null >>"$prefix$manifest.new" || true
        say "kept $prefix$dest (it exists)"
        return
    fi
    install_file "$mode" "$src" "$dest"
    say "installed $prefix$dest"
}

if ((uninstall)); then
    [ -f "$prefix$manifest" ] || die "nothing to uninstall: no $prefix$manifest"
    if [ "$prefix" = "" ] && [ -d /run/systemd/system ] &&
        systemctl is-active --quiet vmletd.service 2>/dev/null; then
        die "vmletd.service is running: stop it first (systemctl disable --now vmletd); its pods keep running until removed"
    fi
    if [ "$prefix" = "" ] && [ -d /run/systemd/system ]; then
        systemctl disable vmletd.service 2>/dev/null || true
    fi
    while read -r sum path; do
        [ -n "$path" ] || continue
        if [ ! -e "$prefix$path" ]; then
            continue
        elif [ "$(sha "$prefix$path")" = "$sum" ]; then
            rm -f "$prefix$path"
        else
            say "kept $prefix$path: changed since it was installed"
        fi
    done <"$prefix$manifest"
    rm -f "$prefix$manifest"
    for dir in "$lib" "$etc" "$doc"; do
        rmdir "$prefix$dir" 2>/dev/null || true
    done
    if [ "$prefix" = "" ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
    say "uninstalled (pods' state in /var/lib/vmlet stays)"
    exit 0
fi

if [ -z "$bin_dir" ]; then
    say "building vmletd and vmlet-vmm (release)"
    (cd "$repo" && cargo build --release --locked -p vmlet-agent -p vmlet-vmm --bins)
    bin_dir=$repo/target/release
fi
for b in vmletd vmlet-vmm; do
    [ -x "$bin_dir/$b" ] || die "no $b in $bin_dir"
done
if [ -z "$kernel" ]; then
    kernel=$("$repo/scripts/build-guest-kernel.sh" | tail -n1)
fi
if [ -z "$initramfs" ]; then
    initramfs=$repo/target/vmlet-initramfs.cpio
    "$repo/scripts/build-initramfs.sh" -o "$initramfs" >&2
fi
[ -f "$kernel" ] || die "no guest kernel $kernel"
[ -f "$initramfs" ] || die "no guest initramfs $initramfs"

mkdir -p "$prefix$lib"
: >"$prefix$manifest.new"
install_file 0755 "$bin_dir/vmletd" "$bin/vmletd"
install_file 0755 "$bin_dir/vmlet-vmm" "$bin/vmlet-vmm"
install_file 0644 "$kernel" "$lib/vmlinux"
install_file 0644 "$initramfs" "$lib/initramfs.cpio"
install_file 0644 "$repo/packaging/systemd/vmletd.service" "$unit"
install_file 0644 "$repo/docs/kubelet.md" "$doc/kubelet.md"
say "installed vmletd, vmlet-vmm, the guest and $prefix$unit"
# The configuration may name registry credentials: root's alone.
mkdir -p "$prefix$etc"
chmod 0755 "$prefix$etc"
keep_or_install 0600 "$repo/packaging/config.toml" "$etc/config.toml"
# The default pod network only where the node has none (the lexically first file
# there is the pod network, for vmletd as for every CRI runtime).
if [ -e "$prefix$cni/10-vmlet.conflist" ] ||
    ! ls "$prefix$cni"/*.conflist "$prefix$cni"/*.conf "$prefix$cni"/*.json >/dev/null 2>&1; then
    keep_or_install 0644 "$repo/packaging/cni/10-vmlet.conflist" "$cni/10-vmlet.conflist"
else
    say "kept the node's pod network in $prefix$cni"
fi
mv -f "$prefix$manifest.new" "$prefix$manifest"

if [ "$prefix" = "" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    say "next: systemctl enable --now vmletd (and point the kubelet at unix:///run/vmlet/vmlet.sock: $doc/kubelet.md)"
fi
