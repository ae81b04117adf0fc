#!/usr/bin/env bash
# with-kvm.sh [options] -- COMMAND [ARGS...]
#
# Runs COMMAND where /dev/kvm can boot an ordinary Linux guest and exits with its
# exit status.
#
# * On a host with hardware virtualization (kvm_intel or kvm_amd loaded) COMMAND
#   simply runs here.
# * Otherwise (e.g. on machines whose /dev/kvm is PVM, which only boots PVM guest
#   kernels) COMMAND runs inside a QEMU TCG machine with emulated AMD-V, where
#   kvm_amd gives a real nested /dev/kvm. That machine boots Debian's
#   linux-image-cloud-amd64 kernel with a small busybox initramfs, sees the host's
#   root file system read-only (virtiofs) under a tmpfs overlay, and sees the
#   repository (and $CARGO_TARGET_DIR) writable at the same paths, so binaries
#   built on the host run there as they are and results land on the host.
#
# Exit status: COMMAND's; 124 on --timeout; 125 when with-kvm itself fails (one
# "with-kvm: ..." line on stderr says why). See usage() for the options.
#
# A TCG machine can fail on its own account: its kernel (the emulated L1 machine's,
# not a nested guest's) panics, locks up or hits a stack guard page, or the machine
# is lost (QEMU dies, or the machine stops answering). with-kvm tells those apart
# from the command's own failures by the machine's console (kept with --console) and
# a heartbeat the machine writes to it, and names the cause in --fault-file: only
# such a failure may be run again by a caller. A command's failure, a nested VMM's
# exit or a nested guest's panic never are.
set -euo pipefail

readonly PROG=with-kvm
# Bump when the prepared artifacts change in a way the cache key cannot see.
readonly RECIPE_VERSION=1
readonly KERNEL_META_PACKAGE=${VMLET_WITH_KVM_KERNEL:-linux-image-cloud-amd64}
# Loaded (with their dependencies) by the initramfs, in this order. Anything else
# autoloads later through modprobe from the full module tree.
readonly GUEST_MODULES=(virtio_pci virtio_console virtio_rng fuse virtiofs overlay
                        irqbypass kvm kvm_amd tun)
# Folders of the guest's root that get their own tmpfs: an overlayfs upper dir
# (containerd, vmletd, tests) cannot live on the overlay root itself.
readonly DEFAULT_TMPFS=(/tmp /var/tmp /run /var/lib/vmlet /var/lib/containerd)
# Exit codes of the wrapper itself (as timeout(1) and env(1) use them).
readonly EXIT_TIMEOUT=124 EXIT_FAILURE=125
# The TCG machine's stage 2 writes a heartbeat line to its console this often; a
# machine whose console shows no new heartbeat for LOST_AFTER seconds is lost (and is stopped
# then: watch_heartbeat).
readonly HEARTBEAT_SECS=10 LOST_AFTER=120
# Console lines of the machine's own kernel that mean the emulation failed.
readonly EMULATION_FAULTS='Kernel panic - not syncing|soft lockup - CPU#|stack guard page was hit'
# A soft lockup names the task that held the CPU ("soft lockup - CPU#1 stuck for 22s!
# [vcpu0:123]"). When that task is ours (vmlet-vmm's main thread, its vCPU threads
# vcpuN, vmletd and its tokio worker threads, vmlet-init), the lockup may be our bug
# (a vCPU spinning in KVM_RUN, a daemon stuck in the kernel): then the run is no
# emulation fault and is never retried, whatever else the console shows, unless the
# whole machine stopped (its heartbeat did: see emulation_fault).
readonly OUR_TASKS='vmlet-vmm|vcpu[0-9]+|vmletd|tokio-runtime-w|vmlet-init'
readonly OUR_SOFT_LOCKUP="soft lockup - CPU#[0-9]+ stuck for [0-9]+s! \\[($OUR_TASKS):[0-9]+\\]"
# A nested guest that triple-faults with no reset request ends its VMM with status 1
# ("guest crash: KVM exit SHUTDOWN without a reset request"). In this emulated
# machine it happens now and then, under load, to guests that boot and run normally
# in every other attempt (at boot, while idle, while powering off), and the vCPU's
# registers are already those of a reset (KVM's SVM code re-initializes the vCPU
# on a shutdown: rip=0xfff0, cr0=0x10), so nothing more can be learnt from it. A
# failed command whose output shows exactly that state is recorded as the
# emulation's fault (scripts/test.sh retries it, counts it apart and fails the
# suite past a small number of them); on hardware KVM it is never looked for.
readonly NESTED_TRIPLE_FAULT='guest crash: KVM exit SHUTDOWN without a reset request \(triple fault\); registers: rip=0xfff0 rsp=0x0 rflags=0x2 cr0=0x10 cr2=0x0 cr3=0x0 cr4=0x0 efer=0x0'

usage() {
    cat <<EOF
usage: $0 [options] [--] COMMAND [ARGS...]

Runs COMMAND where /dev/kvm boots a standard Linux guest: directly on hosts with
hardware virtualization, else inside a QEMU TCG machine with nested KVM.

options (TCG machine only, except --timeout):
  --mem MIB        guest memory (default 4096)
  --cpus N         guest vCPUs (default 2)
  --timeout SECS   kill the machine (or COMMAND) and fail after SECS (default: none)
  --tcg            use the TCG machine even on a host with hardware KVM
                   (same as VMLET_WITH_KVM=tcg; VMLET_WITH_KVM=host forbids it)
  --print-mode     print where COMMAND would run, "host" or "tcg", and exit
  --share DIR      also share DIR writable at the same path (repeatable)
  --tmpfs DIR      also give DIR its own tmpfs inside (repeatable)
  --debug          show the guest's kernel console on stderr
  --console FILE   keep the machine's console (its kernel's log) in FILE
  --fault-file FILE
                   when the run failed because of the TCG machine itself (its
                   kernel panicked, locked up, hit a stack guard page, or the
                   machine was lost), write the cause as one line to FILE; FILE
                   is emptied first and stays empty otherwise (always, on
                   hardware KVM)

environment: VMLET_CACHE (default /var/cache/vmlet) holds the prepared kernel
and initramfs under with-kvm/<key>; VMLET_WITH_KVM=auto|tcg|host;
VMLET_WITH_KVM_KERNEL the machine's kernel meta-package (default
linux-image-cloud-amd64).
exit status: COMMAND's; $EXIT_TIMEOUT on timeout; $EXIT_FAILURE if with-kvm itself fails.
EOF
}

fail() {
    echo "$PROG: error: $*" >&2
    exit "$EXIT_FAILURE"
}

debug() {
    if [[ $opt_debug == 1 ]]; then echo "$PROG: $*" >&2; fi
    return 0
}

# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

opt_mem=4096
opt_cpus=2
opt_timeout=0
opt_mode=${VMLET_WITH_KVM:-auto}
opt_debug=${VMLET_WITH_KVM_DEBUG:-0}
opt_shares=()
opt_tmpfs=()
opt_console=
opt_fault_file=
opt_print_mode=0
command_argv=()

parse_args() {
    while (($#)); do
        case $1 in
            --mem) opt_mem=${2:?--mem needs a value}; shift 2 ;;
            --mem=*) opt_mem=${1#*=}; shift ;;
            --cpus) opt_cpus=${2:?--cpus needs a value}; shift 2 ;;
            --cpus=*) opt_cpus=${1#*=}; shift ;;
            --timeout) opt_timeout=${2:?--timeout needs a value}; shift 2 ;;
            --timeout=*) opt_timeout=${1#*=}; shift ;;
            --share) opt_shares+=("${2:?--share needs a value}"); shift 2 ;;
            --share=*) opt_shares+=("${1#*=}"); shift ;;
            --tmpfs) opt_tmpfs+=("${2:?--tmpfs needs a value}"); shift 2 ;;
            --tmpfs=*) opt_tmpfs+=("${1#*=}"); shift ;;
            --console) opt_console=${2:?--console needs a value}; shift 2 ;;
            --console=*) opt_console=${1#*=}; shift ;;
            --fault-file) opt_fault_file=${2:?--fault-file needs a value}; shift 2 ;;
            --fault-file=*) opt_fault_file=${1#*=}; shift ;;
            --tcg) opt_mode=tcg; shift ;;
            --print-mode) opt_print_mode=1; shift ;;
            --debug) opt_debug=1; shift ;;
            -h | --help) usage; exit 0 ;;
            --) shift; break ;;
            -*) usage >&2; fail "unknown option $1" ;;
            *) break ;;
        esac
    done
    (($#)) || ((opt_print_mode)) || { usage >&2; fail "no command given"; }
    command_argv=("$@")
    [[ $opt_mem =~ ^[0-9]+$ && $opt_mem -ge 256 ]] || fail "--mem wants MiB >= 256, got '$opt_mem'"
    [[ $opt_cpus =~ ^[0-9]+$ && $opt_cpus -ge 1 ]] || fail "--cpus wants a count >= 1, got '$opt_cpus'"
    [[ $opt_timeout =~ ^[0-9]+$ ]] || fail "--timeout wants whole seconds, got '$opt_timeout'"
    case $opt_mode in auto | tcg | host) ;; *) fail "VMLET_WITH_KVM must be auto, tcg or host, not '$opt_mode'" ;; esac
    if [[ -n $opt_fault_file ]]; then
        : >"$opt_fault_file" || fail "cannot write the fault file $opt_fault_file"
    fi
    if [[ -n $opt_console ]]; then
        : >"$opt_console" || fail "cannot write the console file $opt_console"
    fi
}

# ---------------------------------------------------------------------------
# Hardware path
# ---------------------------------------------------------------------------

# True when /dev/kvm is backed by VT-x/AMD-V. PVM's kvm_pvm does not count: it
# cannot boot a standard guest kernel.
hardware_kvm() {
    [[ -c /dev/kvm && -r /dev/kvm && -w /dev/kvm ]] &&
        [[ -d /sys/module/kvm_intel || -d /sys/module/kvm_amd ]]
}

run_direct() {
    debug "hardware KVM: running the command directly"
    if ((opt_timeout == 0)); then
        exec "${command_argv[@]}"
    fi
    local rc=0 start=$SECONDS
    timeout --kill-after=10 "$opt_timeout" "${command_argv[@]}" || rc=$?
    # 124/137 from the command itself are not a timeout.
    if ((rc == 124 || rc == 137)) && ((SECONDS - start >= opt_timeout)); then
        echo "$PROG: error: timeout: the command did not finish within ${opt_timeout}s" >&2
        exit "$EXIT_TIMEOUT"
    fi
    exit "$rc"
}

# ---------------------------------------------------------------------------
# TCG path: tools
# ---------------------------------------------------------------------------

qemu_bin=
virtiofsd_bin=
virtiofsd_flavour=   # "c" (QEMU <= 7.2's C virtiofsd) or "rust" (the virtiofsd package)

find_tcg_tools() {
    qemu_bin=$(command -v qemu-system-x86_64 || true)
    [[ -n $qemu_bin ]] ||
        fail "no hardware KVM here and qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"
    # vhost-user sockets, the namespace sandbox of virtiofsd and writing as any
    # uid into the shared repository all need root.
    ((EUID == 0)) || fail "the TCG machine needs root (virtiofsd), run as root"
    local candidate
    for candidate in "${VMLET_VIRTIOFSD:-}" /usr/lib/qemu/virtiofsd /usr/libexec/virtiofsd \
        /usr/lib/virtiofsd "$(command -v virtiofsd || true)"; do
        if [[ -n $candidate && -x $candidate ]]; then virtiofsd_bin=$candidate; break; fi
    done
    [[ -n $virtiofsd_bin ]] ||
        fail "no virtiofsd found (Debian 12: qemu-system-common; later: the virtiofsd package)"
    if "$virtiofsd_bin" --help 2>&1 | grep -q -- '--shared-dir'; then
        virtiofsd_flavour=rust
    else
        virtiofsd_flavour=c
    fi
}

# ---------------------------------------------------------------------------
# TCG path: the cached kernel, modules and initramfs
# ---------------------------------------------------------------------------

kernel_pkg=
kernel_pkg_version=
busybox_version=
cache_dir=

# Asks apt which concrete kernel package the meta package points at. Only looks
# at the local package lists; refreshes them once if they do not know it.
resolve_packages() {
    local attempt
    for attempt in 1 2; do
        kernel_pkg=$(apt-cache show --no-all-versions "$KERNEL_META_PACKAGE" 2>/dev/null |
            sed -n 's/^Depends:.*\b\(linux-image-[0-9][^ ,]*-cloud-amd64\).*/\1/p' | head -n1 || true)
        if [[ -n $kernel_pkg ]]; then
            kernel_pkg_version=$(apt-cache show --no-all-versions "$kernel_pkg" 2>/dev/null |
                sed -n 's/^Version: //p' | head -n1 || true)
        fi
        [[ -n $kernel_pkg && -n $kernel_pkg_version ]] && break
        ((attempt == 1)) || break
        debug "apt knows no $KERNEL_META_PACKAGE: running apt-get update once"
        apt-get update -qq >/dev/null 2>&1 || true
    done
    [[ -n $kernel_pkg && -n $kernel_pkg_version ]] ||
        fail "kernel package not found: apt knows no $KERNEL_META_PACKAGE (or what it depends on)"
    # Prefer the installed busybox-static; else the candidate is downloaded.
    busybox_version=$(dpkg-query -W -f='${db:Status-Abbrev}${Version}' busybox-static 2>/dev/null |
        sed -n 's/^ii *//p' || true)
    if [[ -z $busybox_version ]]; then
        busybox_version=$(apt-cache show --no-all-versions busybox-static 2>/dev/null |
            sed -n 's/^Version: //p' | head -n1 || true)
        [[ -n $busybox_version ]] || fail "package busybox-static not found by apt"
    fi
}

# The cache key covers every input of the prepared files: the package versions
# and the recipe (the functions below that build and boot the initramfs).
cache_key() {
    {
        echo "recipe $RECIPE_VERSION kernel $kernel_pkg=$kernel_pkg_version busybox $busybox_version"
        echo "modules ${GUEST_MODULES[*]}"
        declare -f build_cache guest_stage1 guest_stage2
    } | sha256sum | cut -c1-16
}

prepare_cache() {
    resolve_packages
    local base=${VMLET_CACHE:-/var/cache/vmlet}/with-kvm key
    key=$(cache_key)
    cache_dir=$base/$key
    if [[ -f $cache_dir/ready ]]; then
        debug "cached: $cache_dir"
        return
    fi
    mkdir -p "$base" || fail "cannot create the cache folder $base"
    # Concurrent runs: one prepares, the others wait for it and use its result.
    local lock_fd
    exec {lock_fd}>"$base/.lock"
    flock "$lock_fd"
    if [[ ! -f $cache_dir/ready ]]; then
        echo "$PROG: preparing $kernel_pkg $kernel_pkg_version and the initramfs in $cache_dir (once)" >&2
        local work=$base/.build-$key
        rm -rf "$work"
        mkdir -p "$work"
        build_cache "$work"
        touch "$work/ready"
        rm -rf "$cache_dir"
        mv "$work" "$cache_dir"
    fi
    exec {lock_fd}>&-
}

# Downloads and unpacks the kernel package, runs depmod, and packs the initramfs
# (static busybox, the boot modules, the two guest init stages) into $1.
build_cache() {
    local out=$1 dl=$1/download log=$1/prepare.log
    if ! command -v depmod >/dev/null || ! command -v modprobe >/dev/null; then
        fail "depmod/modprobe missing (apt-get install kmod)"
    fi
    mkdir -p "$dl"
    # apt-get download runs unsandboxed as root; its warning about that is noise.
    (cd "$dl" && apt-get download "$kernel_pkg=$kernel_pkg_version") >"$log" 2>&1 ||
        fail "kernel package download failed: apt-get download $kernel_pkg=$kernel_pkg_version (see $log)"
    dpkg -x "$dl/${kernel_pkg}_"*.deb "$dl/kernel" || fail "dpkg -x of $kernel_pkg failed"

    local kver
    kver=$(ls "$dl/kernel/lib/modules")
    [[ -n $kver && $(wc -w <<<"$kver") == 1 ]] || fail "unexpected module tree in $kernel_pkg"
    echo "$kver" >"$out/kver"
    cp "$dl/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"
    # The full module tree stays on the host: the guest bind-mounts it from the
    # shared root at /lib/modules/$kver so modprobe and autoloading work there.
    mkdir -p "$out/modules/lib"
    mv "$dl/kernel/lib/modules" "$out/modules/lib/"
    depmod -b "$out/modules" "$kver" || fail "depmod failed for $kver"

    local busybox=/bin/busybox
    if ! dpkg-query -W -f='${db:Status-Abbrev}' busybox-static 2>/dev/null | grep -q '^ii'; then
        (cd "$dl" && apt-get download "busybox-static=$busybox_version") >>"$log" 2>&1 ||
            fail "busybox-static download failed (see $log)"
        dpkg -x "$dl"/busybox-static_*.deb "$dl/busybox"
        busybox=$dl/busybox/bin/busybox
    fi
    cp "$busybox" "$out/busybox"

    local tree=$out/initramfs
    mkdir -p "$tree"/{bin,dev,proc,sys,mnt,newroot,etc/vmlet,lib/vmlet-modules,vmlet}
    cp "$busybox" "$tree/bin/busybox"
    mknod -m 600 "$tree/dev/console" c 5 1
    guest_stage1 >"$tree/init"
    guest_stage2 >"$tree/etc/vmlet/stage2"
    chmod 755 "$tree/init" "$tree/etc/vmlet/stage2"
    # modprobe --show-depends lists "insmod FILE" in load order, dependencies first.
    local module deps verb file seen=" "
    for module in "${GUEST_MODULES[@]}"; do
        deps=$(modprobe -d "$out/modules" -S "$kver" --show-depends "$module" 2>>"$log") ||
            fail "kernel module $module not found in $kernel_pkg"
        while read -r verb file _; do
            [[ $verb == insmod && $seen != *" $file "* ]] || continue
            seen+="$file "
            cp "$file" "$tree/lib/vmlet-modules/"
            basename "$file" >>"$tree/etc/vmlet/modules"
        done <<<"$deps"
    done
    (cd "$tree" && find . | "$busybox" cpio -o -H newc 2>/dev/null) >"$out/initramfs.cpio" ||
        fail "packing the initramfs failed"
    rm -rf "$dl" "$tree"
}

# ---------------------------------------------------------------------------
# Guest side. Both stages run under busybox sh; they are written out by
# build_cache and so are part of the cache key.
# ---------------------------------------------------------------------------

# Stage 1: PID 1 in the initramfs. Loads the boot modules, builds the root (host
# root read-only via virtiofs + tmpfs overlay, writable shares, tmpfs folders,
# the module tree) and switch_roots into it.
guest_stage1() {
    cat <<'STAGE1'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/null >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys

# Anything that goes wrong ends the machine: the host then reports that no exit
# status came back and shows the tail of this console.
fail() { echo "with-kvm guest: $*"; poweroff -f; sleep 10; }

. /vmlet/config || fail "no run configuration"

while read -r ko; do
    insmod "/lib/vmlet-modules/$ko" || fail "insmod $ko failed"
done </etc/vmlet/modules

# virtio-serial ports appear asynchronously after the driver is loaded.
port_dev() {
    i=0
    while [ $i -lt 100 ]; do
        for p in /sys/class/virtio-ports/*; do
            if [ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && [ -c "/dev/${p##*/}" ]; then
                echo "/dev/${p##*/}"
                return 0
            fi
        done
        sleep 0.05
        i=$((i + 1))
    done
    return 1
}
out_port=$(port_dev vmlet.stdout) || fail "no stdout port"
err_port=$(port_dev vmlet.stderr) || fail "no stderr port"
status_port=$(port_dev vmlet.status) || fail "no status port"

mkdir -p /mnt/lower /mnt/rw
mount -t virtiofs -o ro vmlet-root /mnt/lower || fail "cannot mount the host root (virtiofs)"
mount -t tmpfs -o mode=0755 vmlet-rw /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work,index=off,metacopy=off \
    vmlet-root /newroot || fail "cannot mount the overlay root"

# Own tmpfs for folders that hold overlayfs upper dirs or runtime state.
while read -r dir; do
    mode=0755
    case $dir in /tmp | /var/tmp) mode=1777 ;; esac
    mkdir -p "/newroot$dir" && mount -t tmpfs -o "mode=$mode" tmpfs "/newroot$dir" ||
        fail "cannot mount a tmpfs at $dir"
done </vmlet/tmpfs

# Writable shares, parents before children (the host sorted them).
while read -r tag dir; do
    mkdir -p "/newroot$dir" && mount -t virtiofs "$tag" "/newroot$dir" ||
        fail "cannot mount the writable share $dir"
done </vmlet/shares

# The guest kernel's modules at the standard place, so the shared root's
# modprobe (and the kernel's autoloading through it) finds them.
mkdir -p "/newroot/lib/modules/$KVER" &&
    mount --bind "/mnt/lower$MODULES_DIR/lib/modules/$KVER" "/newroot/lib/modules/$KVER" ||
    fail "cannot bind the module tree $MODULES_DIR"

mkdir -p /newroot/run/vmlet
cp /bin/busybox /etc/vmlet/stage2 /vmlet/run.sh /newroot/run/vmlet/
cat >/newroot/run/vmlet/env <<EOF
out_port=$out_port
err_port=$err_port
status_port=$status_port
EOF
cat /vmlet/config >>/newroot/run/vmlet/env
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
# switch_root (not a chroot in a child): PID 1's root is shared with kernel
# threads, so the kernel's modprobe helper runs in the new root too, and
# pivot_root works there for container runtimes.
exec switch_root /newroot /run/vmlet/busybox sh /run/vmlet/stage2
fail "switch_root failed"
STAGE1
}

# Stage 2: PID 1 in the new root. Finishes the system mounts, runs the command
# with its output relayed to the host, reports the exit status, powers off.
guest_stage2() {
    cat <<'STAGE2'
#!/run/vmlet/busybox sh
/run/vmlet/busybox mkdir -p /run/vmlet/bin
/run/vmlet/busybox --install -s /run/vmlet/bin
export PATH=/run/vmlet/bin
. /run/vmlet/env

mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
done
# Like a systemd host: mounts propagate unless a runtime asks otherwise.
mount --make-rshared /
hostname with-kvm
ip link set lo up
if [ -x /sbin/modprobe ]; then
    echo /sbin/modprobe >/proc/sys/kernel/modprobe
fi
modprobe tun 2>/dev/null
ulimit -Hn 524288 && ulimit -Sn 65536

# A heartbeat on the console: the host tells a lost machine (silent console) from a
# command that hangs in a machine that still runs.
(
    while :; do
        echo "with-kvm heartbeat $(cut -d' ' -f1 /proc/uptime)"
        sleep "$HEARTBEAT_SECS"
    done
) </dev/null >/dev/console 2>&1 &

# The command writes into FIFOs that busybox cat relays to the virtio ports: a
# port can be open only once, and commands do reopen /dev/stdout or /dev/stderr.
mkfifo /run/vmlet/stdout /run/vmlet/stderr
cat /run/vmlet/stdout >"$out_port" &
relay_out=$!
cat /run/vmlet/stderr >"$err_port" &
relay_err=$!
"$RUN_SHELL" /run/vmlet/run.sh </dev/null >/run/vmlet/stdout 2>/run/vmlet/stderr &
command_pid=$!
# As PID 1 this shell's wait also reaps orphans the command leaves behind.
wait "$command_pid"
rc=$?

# The relays end when every writer is gone. Background processes of the command
# may keep the FIFOs open: stop relaying once no output moved for half a second,
# or after five seconds at most (a daemon that keeps logging).
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
last='' idle=0 waited=0
while alive "$relay_out" || alive "$relay_err"; do
    now=$(cat "/proc/$relay_out/io" "/proc/$relay_err/io" 2>/dev/null | grep '^wchar')
    if [ "$now" = "$last" ]; then
        idle=$((idle + 1))
    else
        idle=0 last=$now
    fi
    [ $idle -ge 5 ] || [ $waited -ge 50 ] && break
    waited=$((waited + 1))
    sleep 0.1
done
kill "$relay_out" "$relay_err" 2>/dev/null
sync
echo "$rc" >"$status_port"
poweroff -f
STAGE2
}

# ---------------------------------------------------------------------------
# TCG path: one run
# ---------------------------------------------------------------------------

run_dir=
child_pids=()

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local pid
    for pid in "${child_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${child_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $run_dir ]]; then
        if [[ -n $opt_console && -f $run_dir/console.log ]]; then
            cp "$run_dir/console.log" "$opt_console" || true
        fi
        rm -rf "$run_dir"
    fi
}

# Names the TCG machine's own failure, if its console shows one, and records it in
# --fault-file: the first panic, soft lockup or stack guard page of the machine's
# kernel, or, after a timeout, no new heartbeat line for LOST_AFTER seconds (the
# heartbeat stopped: the machine was lost, not the command hung). Returns 1 if there
# is none, and, in a machine that still beats, whenever a soft lockup names one of
# vmlet's own tasks (OUR_TASKS).
emulation_fault() { # CONSOLE TIMED-OUT
    local console=$1 timed_out=$2 cause="" silent ours first
    first=$(grep -a -m1 -E "$EMULATION_FAULTS" "$console" 2>/dev/null | tr -d '\r' | cut -c1-200 || true)
    if [[ $timed_out == 1 ]]; then
        silent=$(($(date +%s) - $(last_beat "$console")))
        if ((silent >= LOST_AFTER)); then
            # No CPU ran the heartbeat's user space: whatever one task does, a
            # machine with a second CPU keeps beating, so this is the machine's
            # (seen: one CPU stops taking interrupts while it runs a nested guest,
            # and the other waits for it). A failure of ours that does this again
            # fails every attempt.
            cause="lost machine: no heartbeat (one every ${HEARTBEAT_SECS}s) on its console for the last ${silent}s${first:+; its kernel: $first}"
        fi
    fi
    if [[ -z $cause ]]; then
        ours=$(grep -a -m1 -E "$OUR_SOFT_LOCKUP" "$console" 2>/dev/null | tr -d '\r' | cut -c1-200 || true)
        if [[ -n $ours ]]; then
            echo "$PROG: the machine's kernel saw a soft lockup in one of vmlet's tasks (not counted as the emulation's fault): $ours" >&2
            return 1
        fi
        if [[ -n $first ]]; then cause="the machine's kernel: $first"; fi
    fi
    [[ -n $cause ]] || return 1
    echo "$PROG: error: the TCG machine itself failed ($cause)" >&2
    if [[ -n $opt_fault_file ]]; then echo "$cause" >"$opt_fault_file"; fi
    return 0
}

# When CONSOLE last showed a new heartbeat line (seconds since the epoch): the
# mtime of CONSOLE.beat, which watch_heartbeat touches on each, else (no watcher)
# the console's own.
last_beat() { # CONSOLE
    stat -c %Y "$1.beat" 2>/dev/null || stat -c %Y "$1" 2>/dev/null || echo 0
}

# Stops the machine of qemu (or of timeout(1) running it) PID when its console shows
# no new heartbeat line for LOST_AFTER seconds before the command reported its
# status: the machine is lost. Only heartbeat lines count: a machine whose CPUs are
# all stuck in its kernel still prints (a soft lockup repeats every ~25 s), but its
# heartbeat, written from user space, stops. It is stopped then, not at the end of
# --timeout, and RUN-DIR/lost says why it ended.
watch_heartbeat() { # PID RUN-DIR
    local pid=$1 dir=$2 beats seen=-1
    touch "$dir/console.log.beat"
    while kill -0 "$pid" 2>/dev/null; do
        sleep "$HEARTBEAT_SECS"
        [[ -s $dir/status ]] && return 0
        beats=$(grep -ac 'with-kvm heartbeat' "$dir/console.log" 2>/dev/null || true)
        if [[ $beats != "$seen" ]]; then
            seen=$beats
            touch "$dir/console.log.beat"
        elif (($(date +%s) - $(last_beat "$dir/console.log") >= LOST_AFTER)); then
            : >"$dir/lost"
            pkill -KILL -P "$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            return 0
        fi
    done
}

# Records a nested guest's triple fault (NESTED_TRIPLE_FAULT) in the output of a
# command that failed, as the emulation's fault, in --fault-file.
nested_triple_fault() { # RUN-DIR
    local line
    line=$(cat "$1/stdout" "$1/stderr" 2>/dev/null | grep -a -m1 -E "$NESTED_TRIPLE_FAULT" | tr -d '\r' | cut -c1-200 || true)
    [[ -n $line ]] || return 0
    echo "$PROG: the nested guest triple-faulted in the emulated machine: $line" >&2
    if [[ -n $opt_fault_file ]]; then echo "nested guest triple fault: $line" >"$opt_fault_file"; fi
}

# The per-run part of the initramfs: the command as a script for the shared
# root's bash, the shares, the tmpfs folders and where the module tree is.
write_run_config() {
    local spec=$run_dir/initramfs/vmlet
    mkdir -p "$spec"

    # A sane, small environment: PATH, HOME, TERM and the project's variables.
    local env_args=("PATH=$PATH" "HOME=${HOME:-/root}" "VMLET_IN_WITH_KVM=tcg")
    if [[ -n ${TERM:-} ]]; then env_args+=("TERM=$TERM"); fi
    local name
    while read -r name; do
        if [[ $name =~ ^(VMLET_|RUST_|CARGO_) && $name != VMLET_IN_WITH_KVM ]]; then
            env_args+=("$name=${!name}")
        fi
    done < <(compgen -e)
    {
        # The guest's PID 1 is busybox: look env (and the command) up in the
        # host's PATH, never among busybox applets.
        echo "PATH=$(printf '%q' "$PATH")"
        echo "cd -- $(printf '%q' "$PWD") || exit $EXIT_FAILURE"
        printf 'exec env -i'
        printf ' %q' "${env_args[@]}" "${command_argv[@]}"
        echo
    } >"$spec/run.sh"

    {
        echo "KVER=$(cat "$cache_dir/kver")"
        echo "MODULES_DIR=$(printf '%q' "$cache_dir/modules")"
        echo "RUN_SHELL=$(printf '%q' "$BASH")"
        echo "HEARTBEAT_SECS=$HEARTBEAT_SECS"
    } >"$spec/config"
    printf '%s\n' "${DEFAULT_TMPFS[@]}" "${opt_tmpfs[@]}" >"$spec/tmpfs"
    : >"$spec/shares"
    local i=0 dir
    for dir in "${rw_shares[@]}"; do
        printf 'vmlet-rw%d %s\n' "$i" "$dir" >>"$spec/shares"
        i=$((i + 1))
    done

    # The kernel unpacks concatenated cpio archives one after the other.
    (cd "$run_dir/initramfs" && find . | "$cache_dir/busybox" cpio -o -H newc 2>/dev/null) \
        >"$run_dir/run.cpio"
    cat "$cache_dir/initramfs.cpio" "$run_dir/run.cpio" >"$run_dir/initrd"
}

rw_shares=()

# The repository (git toplevel of the working directory, else the working
# directory), $CARGO_TARGET_DIR and --share folders, each once, sorted so that a
# parent is mounted before anything inside it.
collect_shares() {
    local repo dirs=() dir
    repo=$(git rev-parse --show-toplevel 2>/dev/null || pwd)
    dirs+=("$repo")
    if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
        mkdir -p "$CARGO_TARGET_DIR"
        dirs+=("$(cd "$CARGO_TARGET_DIR" && pwd)")
    fi
    for dir in "${opt_shares[@]}"; do
        [[ -d $dir ]] || fail "--share $dir: no such folder"
        dirs+=("$(cd "$dir" && pwd)")
    done
    local sorted covered share
    mapfile -t sorted < <(printf '%s\n' "${dirs[@]}" | LC_ALL=C sort -u)
    for dir in "${sorted[@]}"; do
        [[ $dir != / ]] || fail "refusing to share / writable (run from inside the repository)"
        [[ $dir != *$'\n'* ]] || fail "cannot share a path with a newline: $dir"
        covered=0
        for share in "${rw_shares[@]}"; do
            if [[ $dir == "$share"/* ]]; then covered=1; fi
        done
        if ((covered == 0)); then rw_shares+=("$dir"); fi
    done
}

# Starts one virtiofsd for DIR on SOCKET and waits until it listens.
start_virtiofsd() {
    local dir=$1 socket=$2 cache=$3 log=$4 args sandbox=namespace
    # The namespace sandbox pivot_roots into DIR, which fails (EBUSY) for "/";
    # a chroot to "/" isolates nothing less there.
    [[ $dir != / ]] || sandbox=chroot
    if [[ $virtiofsd_flavour == c ]]; then
        args=(--socket-path="$socket" -o source="$dir" -o cache="$cache" -o sandbox="$sandbox")
        # Root lacks CAP_SYS_RESOURCE on some machines: keep the fd limit
        # (run_tcg raised it to the hard limit) instead of failing to raise it.
        args+=(--rlimit-nofile=0)
    else
        [[ $cache == none ]] && cache=never
        args=(--socket-path="$socket" --shared-dir="$dir" --cache="$cache" --sandbox="$sandbox"
              --rlimit-nofile=0)
    fi
    "$virtiofsd_bin" "${args[@]}" >"$log" 2>&1 &
    local pid=$!
    child_pids+=("$pid")
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -S $socket ]] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    fail "virtiofsd for $dir did not start: $(tail -n 3 "$log" | tr '\n' ' ')"
}

run_tcg() {
    find_tcg_tools
    prepare_cache
    collect_shares

    run_dir=$(mktemp -d "${TMPDIR:-/tmp}/with-kvm.XXXXXX")
    trap cleanup EXIT
    # QEMU's option syntax would need commas doubled; vhost-user sockets need
    # short paths.
    [[ $run_dir != *,* ]] || fail "TMPDIR must not contain a comma: $run_dir"
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
    write_run_config

    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    # shellcheck disable=SC2054 # QEMU options are comma-separated
    local qemu_args=(
        -name with-kvm -M q35 -accel tcg,thread=multi -cpu max
        -smp "$opt_cpus" -m "${opt_mem}M"
        # vhost-user-fs needs the guest RAM as shared memory.
        -object "memory-backend-memfd,id=mem,size=${opt_mem}M,share=on" -numa node,memdev=mem
        -nodefaults -no-user-config -display none -no-reboot
        -kernel "$cache_dir/vmlinuz" -initrd "$run_dir/initrd"
        -serial "file:$run_dir/console.log"
        -device virtio-rng-pci
        -device virtio-serial-pci,id=vser
    )
    local append="console=ttyS0 panic=-1 rdinit=/init mitigations=off tsc=reliable"
    [[ $opt_debug == 1 ]] || append+=" quiet"
    qemu_args+=(-append "$append")
    # Output and status go to regular files (writes to them never block or get
    # deferred in QEMU, so nothing is lost at power-off); tail(1) streams them.
    local port
    : >"$run_dir/console.log"
    for port in stdout stderr status; do
        : >"$run_dir/$port"
        qemu_args+=(-chardev "file,id=$port,path=$run_dir/$port"
                    -device "virtserialport,bus=vser.0,chardev=$port,name=vmlet.$port")
    done

    # Host root read-only (the guest mounts it ro and overlays it; the host's
    # files do not change under a test, so the guest may cache them), writable
    # shares with the default coherent cache.
    start_virtiofsd / "$run_dir/fs-root.sock" always "$run_dir/virtiofsd-root.log"
    qemu_args+=(-chardev "socket,id=fsroot,path=$run_dir/fs-root.sock"
                -device "vhost-user-fs-pci,chardev=fsroot,tag=vmlet-root")
    local i
    for i in "${!rw_shares[@]}"; do
        start_virtiofsd "${rw_shares[$i]}" "$run_dir/fs-rw$i.sock" auto "$run_dir/virtiofsd-rw$i.log"
        qemu_args+=(-chardev "socket,id=fsrw$i,path=$run_dir/fs-rw$i.sock"
                    -device "vhost-user-fs-pci,chardev=fsrw$i,tag=vmlet-rw$i")
    done

    local start=$SECONDS qemu_pid qemu_rc=0
    if ((opt_timeout > 0)); then
        timeout --kill-after=10 "$opt_timeout" "$qemu_bin" "${qemu_args[@]}" \
            </dev/null >"$run_dir/qemu.log" 2>&1 &
    else
        "$qemu_bin" "${qemu_args[@]}" </dev/null >"$run_dir/qemu.log" 2>&1 &
    fi
    qemu_pid=$!
    child_pids+=("$qemu_pid")
    debug "qemu pid $qemu_pid, run folder $run_dir"

    local tail_out tail_err tail_con=
    tail -c +1 -s 0.2 --pid="$qemu_pid" -f "$run_dir/stdout" &
    tail_out=$!
    tail -c +1 -s 0.2 --pid="$qemu_pid" -f "$run_dir/stderr" >&2 &
    tail_err=$!
    child_pids+=("$tail_out" "$tail_err")
    if [[ $opt_debug == 1 ]]; then
        tail -c +1 -s 0.2 --pid="$qemu_pid" -f "$run_dir/console.log" >&2 &
        tail_con=$!
        child_pids+=("$tail_con")
    fi

    # Its own stdio: a sleep it leaves behind must not hold the caller's pipe open.
    watch_heartbeat "$qemu_pid" "$run_dir" </dev/null >/dev/null 2>&1 &
    local watchdog=$!
    child_pids+=("$watchdog")

    wait "$qemu_pid" || qemu_rc=$?
    kill "$watchdog" 2>/dev/null || true
    wait "$tail_out" "$tail_err" $tail_con || true
    debug "machine ran $((SECONDS - start))s, qemu exit $qemu_rc"

    if [[ -f $run_dir/lost ]]; then
        echo "$PROG: error: the TCG machine stopped answering (no heartbeat for ${LOST_AFTER}s): killed after $((SECONDS - start))s" >&2
        emulation_fault "$run_dir/console.log" 1 || true
        echo "    console tail:" >&2
        { grep -av '^with-kvm heartbeat' "$run_dir/console.log" || true; } | tail -n 15 | sed 's/^/    /' >&2
        exit "$EXIT_FAILURE"
    fi

    local status
    status=$(head -c 64 "$run_dir/status" | tr -d '\r\n')
    if ((opt_timeout > 0 && (qemu_rc == 124 || qemu_rc == 137))); then
        echo "$PROG: error: timeout: the command did not finish within ${opt_timeout}s (TCG machine killed)" >&2
        if ! emulation_fault "$run_dir/console.log" 1; then
            echo "    the machine kept running (its heartbeat went on): the command hung" >&2
        fi
        echo "    console tail:" >&2
        { grep -av '^with-kvm heartbeat' "$run_dir/console.log" || true; } | tail -n 15 | sed 's/^/    /' >&2
        exit "$EXIT_TIMEOUT"
    fi
    # The command's status, when it reported one, is the result: a failure of the
    # machine after that does not change it.
    if [[ $status =~ ^[0-9]+$ ]]; then
        if ((status != 0)); then nested_triple_fault "$run_dir"; fi
        exit "$status"
    fi
    if ! emulation_fault "$run_dir/console.log" 0 && ((qemu_rc != 0)) && [[ -s $run_dir/console.log ]]; then
        # QEMU itself died (not killed by the timeout) after the machine had booted:
        # the machine is lost. (A QEMU that never started a machine is with-kvm's
        # own failure.)
        local cause="lost machine: qemu exited with status $qemu_rc"
        echo "$PROG: error: the TCG machine itself failed ($cause)" >&2
        if [[ -n $opt_fault_file ]]; then echo "$cause" >"$opt_fault_file"; fi
    fi
    if ((qemu_rc != 0)); then
        echo "$PROG: error: qemu failed (exit $qemu_rc): $(tail -n 5 "$run_dir/qemu.log" | tr '\n' ' ')" >&2
        local log
        for log in "$run_dir"/virtiofsd-*.log; do
            if [[ -s $log ]]; then echo "    ${log##*/}: $(tail -n 2 "$log" | tr '\n' ' ')" >&2; fi
        done
        echo "    console tail:" >&2
    else
        echo "$PROG: error: the TCG machine stopped without reporting the command's exit status; console tail:" >&2
    fi
    { grep -av '^with-kvm heartbeat' "$run_dir/console.log" || true; } | tail -n 15 | sed 's/^/    /' >&2
    exit "$EXIT_FAILURE"
}

main() {
    parse_args "$@"
    if ((opt_print_mode)); then
        case $opt_mode in
            host) hardware_kvm || fail "VMLET_WITH_KVM=host but no hardware KVM (kvm_intel/kvm_amd and /dev/kvm)"; echo host ;;
            auto) if hardware_kvm; then echo host; else echo tcg; fi ;;
            tcg) echo tcg ;;
        esac
        exit 0
    fi
    case $opt_mode in
        host)
            hardware_kvm || fail "VMLET_WITH_KVM=host but no hardware KVM (kvm_intel/kvm_amd and /dev/kvm)"
            run_direct
            ;;
        auto)
            if hardware_kvm; then run_direct; fi
            ;;
    esac
    run_tcg
}

# Sourced (by the harness's tests of emulation_fault), it only defines its functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
