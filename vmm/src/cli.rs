//! Command-line interface: flags and/or a JSON config file, then build, run,
//! and exit with the VM's status. The flag names and value syntax come from
//! `vmlet-vmm-api`, which also prints them for the programs that start the VMM.
//!
//! Exit status: 0 the guest powered off or reset; 1 error; 2 the guest did not
//! power off within the graceful-shutdown timeout and was stopped; 101 a panic;
//! 128 + N when signal N (SIGTERM, SIGINT) stopped it; 159 a seccomp violation.
//! Every non-zero exit ends with one line on stderr that says why:
//! `vmlet-vmm: error: REASON (exit status N)` (`vmlet_vmm_api::exit`), and with
//! `--exit-record FILE` the same line (for status 0 too) is written to FILE as the
//! VMM's last act.

use crate::config::{
    DriveConfig, FsConfig, NetConfig, SerialLogLimits, SerialOutput, VmConfig, VsockConfig,
};
use clap::Parser;
use std::path::PathBuf;
use vmlet_vmm_api::config::flag;
use vmlet_vmm_api::exit::{ExitRecord, PANIC_EXIT};

/// Flags. Anything given here overrides the `--config` file.
#[derive(Parser, Debug)]
#[command(
    name = "vmlet-vmm",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("VMLET_GIT_REVISION"), ")"),
    about = "vmlet's micro-VM monitor: one KVM guest per process"
)]
pub struct Args {
    /// JSON configuration file (see `VmConfig`).
    #[arg(long = flag::CONFIG)]
    pub config: Option<PathBuf>,
    /// Uncompressed ELF vmlinux with a PVH entry.
    #[arg(long = flag::KERNEL)]
    pub kernel: Option<PathBuf>,
    /// initramfs (cpio).
    #[arg(long = flag::INITRAMFS)]
    pub initramfs: Option<PathBuf>,
    /// Extra kernel command line.
    #[arg(long = flag::CMDLINE)]
    pub cmdline: Option<String>,
    /// vCPUs.
    #[arg(long = flag::VCPUS)]
    pub vcpus: Option<u8>,
    /// Guest memory in MiB.
    #[arg(long = flag::MEM_MIB)]
    pub mem_mib: Option<u64>,
    /// A drive: `id=ID,path=FILE[,ro]` (repeatable).
    #[arg(long = flag::DRIVE, value_parser = DriveConfig::from_flag)]
    pub drives: Vec<DriveConfig>,
    /// A network card: `tap=NAME[,mac=aa:bb:cc:dd:ee:ff]` (repeatable).
    #[arg(long = flag::NET, value_parser = NetConfig::from_flag)]
    pub net: Vec<NetConfig>,
    /// vsock: `cid=N,uds=PATH`.
    #[arg(long = flag::VSOCK, value_parser = VsockConfig::from_flag)]
    pub vsock: Option<VsockConfig>,
    /// A virtio-fs device on a vhost-user backend:
    /// `tag=TAG,socket=PATH[,num_request_queues=N][,queue_size=N]` (repeatable).
    /// Puts guest RAM in shared memory.
    #[arg(long = flag::FS, value_parser = FsConfig::from_flag)]
    pub fs: Vec<FsConfig>,
    /// Back guest RAM with a shared memfd even without virtio-fs devices.
    #[arg(long = flag::SHARED_MEMORY)]
    pub shared_memory: bool,
    /// Do not offer a virtio-rng device.
    #[arg(long = flag::NO_RNG)]
    pub no_rng: bool,
    /// Offer a virtio-balloon that takes back the memory the guest frees.
    #[arg(long = flag::FREE_PAGE_REPORTING)]
    pub free_page_reporting: bool,
    /// Back guest RAM with transparent huge pages (faster page walks, but each page
    /// the guest touches costs the host 2 MiB).
    #[arg(long = flag::HUGE_PAGES)]
    pub huge_pages: bool,
    /// Serial console: `stdout`, `off` or a file path.
    #[arg(long = flag::SERIAL)]
    pub serial: Option<String>,
    /// What a serial log file keeps: `head=BYTES,tail=BYTES` (1 MiB each by
    /// default).
    #[arg(long = flag::SERIAL_LOG, value_parser = SerialLogLimits::from_flag)]
    pub serial_log: Option<SerialLogLimits>,
    /// Control socket path.
    #[arg(long = flag::CONTROL_SOCKET)]
    pub control_socket: Option<PathBuf>,
    /// Where to write the exit record (the last line) as the VMM's last act.
    #[arg(long = flag::EXIT_RECORD)]
    pub exit_record: Option<PathBuf>,
    /// Do not install seccomp filters (debugging only).
    #[arg(long = flag::NO_SECCOMP)]
    pub no_seccomp: bool,
    /// Restore the VM from the snapshot in this directory instead of booting; the
    /// vCPUs, memory and devices must be those it was taken with.
    #[arg(long = flag::RESTORE)]
    pub restore: Option<PathBuf>,
}

/// Merges the config file and the flags.
pub fn resolve(args: Args) -> Result<VmConfig, String> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
            serde_json::from_str::<VmConfig>(&text)
                .map_err(|e| format!("invalid config {}: {e}", path.display()))?
        }
        None => VmConfig::new(
            args.kernel
                .clone()
                .ok_or("no kernel given: use --kernel or --config")?,
        ),
    };
    if let Some(k) = args.kernel {
        config.kernel = k;
    }
    if let Some(i) = args.initramfs {
        config.initramfs = Some(i);
    }
    if let Some(c) = args.cmdline {
        config.cmdline = c;
    }
    if let Some(v) = args.vcpus {
        config.vcpus = v;
    }
    if let Some(m) = args.mem_mib {
        config.mem_mib = m;
    }
    config.drives.extend(args.drives);
    config.net.extend(args.net);
    if args.vsock.is_some() {
        config.vsock = args.vsock;
    }
    config.fs.extend(args.fs);
    if args.shared_memory {
        config.shared_memory = true;
    }
    if args.no_rng {
        config.rng = false;
    }
    if args.free_page_reporting {
        config.free_page_reporting = true;
    }
    if args.huge_pages {
        config.huge_pages = true;
    }
    if let Some(s) = args.serial {
        config.serial = SerialOutput::from_flag(&s);
    }
    if let Some(l) = args.serial_log {
        config.serial_log = l;
    }
    if args.control_socket.is_some() {
        config.control_socket = args.control_socket;
    }
    if args.exit_record.is_some() {
        config.exit_record = args.exit_record;
    }
    if args.no_seccomp {
        config.seccomp = false;
    }
    if args.restore.is_some() {
        config.restore = args.restore;
    }
    Ok(config)
}

/// The last line of a non-zero exit: `vmlet-vmm: error: REASON (exit status N)`.
pub fn exit_line(code: i32, reason: &dyn std::fmt::Display) -> String {
    ExitRecord {
        code,
        reason: reason.to_string(),
    }
    .line()
}

/// Ends with `code`: the line of [`exit_line`] as the process's last on stderr (for a
/// non-zero status) and as the exit record; returns `code`.
fn end(code: i32, reason: &dyn std::fmt::Display) -> i32 {
    let line = exit_line(code, reason);
    if code != 0 {
        eprintln!("{line}");
    }
    crate::exit_record::write(line.as_bytes());
    code
}

/// What a panic says: the thread, where, and the message.
fn panic_reason(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    let place = info.location().map_or("an unknown place".to_owned(), |l| {
        format!("{}:{}:{}", l.file(), l.line(), l.column())
    });
    let thread = std::thread::current();
    format!(
        "panic in thread '{}' at {place}: {message}",
        thread.name().unwrap_or("unnamed")
    )
}

/// Makes a panic on any thread end the VMM at once with [`PANIC_EXIT`], after the
/// usual last line (and exit record) naming the thread, place and message: a release
/// build does not unwind, and a vCPU thread that died alone would leave a hung VM.
/// `exit_group` is allowed by every thread's seccomp filter (the signals `abort`
/// sends itself are not).
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        end(PANIC_EXIT, &panic_reason(info));
        // SAFETY: ends the process at once, as panic=abort would, without running
        // destructors that other threads' state may not allow.
        unsafe { libc::_exit(PANIC_EXIT) };
    }));
}

/// Runs the VMM; returns the process exit status.
pub fn main() -> i32 {
    install_panic_hook();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VMLET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(crate::log_cap::stderr)
        .init();
    let args = Args::parse();
    let config = match resolve(args) {
        Ok(c) => c,
        Err(e) => return end(1, &e),
    };
    if let Some(path) = &config.exit_record {
        if let Err(e) = crate::exit_record::open(path) {
            return end(
                1,
                &format!("cannot open the exit record {}: {e}", path.display()),
            );
        }
    }
    match crate::runner::run(&config) {
        Ok(end_of_run) => end(end_of_run.code(), &end_of_run),
        Err(e) => end(1, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `args` (without the program name) as vmlet-vmm's command line.
    fn parse(args: &[String]) -> VmConfig {
        let argv = std::iter::once("vmlet-vmm".to_owned()).chain(args.iter().cloned());
        resolve(Args::try_parse_from(argv).unwrap()).unwrap()
    }

    /// Every field set away from its default, so that a flag the printer forgets
    /// or the parser misreads shows.
    fn everything() -> VmConfig {
        VmConfig {
            initramfs: Some("/i.cpio".into()),
            cmdline: "-quiet console=hvc0".into(),
            vcpus: 3,
            mem_mib: 512,
            drives: vec![
                DriveConfig {
                    id: "scratch".into(),
                    path: "/pod/scratch.ext4".into(),
                    read_only: false,
                },
                DriveConfig {
                    id: "slot0".into(),
                    path: "-odd name=x.img".into(),
                    read_only: true,
                },
            ],
            net: vec![
                NetConfig {
                    tap: "tap0".into(),
                    mac: Some("02:00:00:00:00:02".into()),
                    no_offloads: false,
                },
                NetConfig {
                    tap: "tap1".into(),
                    mac: None,
                    no_offloads: true,
                },
            ],
            vsock: Some(VsockConfig {
                cid: 7,
                uds_path: "/run/pod/vsock".into(),
            }),
            fs: vec![
                FsConfig::new("vol0", "/run/pod/fs0.sock"),
                FsConfig {
                    num_request_queues: 4,
                    queue_size: 256,
                    ..FsConfig::new("a-volume-tag", "/run/pod/fs1.sock")
                },
            ],
            rng: false,
            free_page_reporting: true,
            huge_pages: true,
            shared_memory: true,
            serial: SerialOutput::File("/pod/console.log".into()),
            serial_log: SerialLogLimits {
                head_bytes: 4096,
                tail_bytes: 8192,
            },
            control_socket: Some("/run/pod/ctl".into()),
            exit_record: Some("/pod/vmm-exit".into()),
            seccomp: false,
            ..VmConfig::new("/k/vmlinux".into())
        }
    }

    #[test]
    fn generated_argv_parses_back_into_the_same_config() {
        let c = everything();
        assert_eq!(parse(&c.to_args().unwrap()), c);
        for serial in [SerialOutput::Stdout, SerialOutput::Off] {
            let c = VmConfig {
                serial,
                ..VmConfig::new("k".into())
            };
            assert_eq!(parse(&c.to_args().unwrap()), c);
        }
    }

    #[test]
    fn generated_config_file_reads_back_into_the_same_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        let c = everything();
        std::fs::write(&path, c.to_json().unwrap()).unwrap();
        assert_eq!(
            parse(&["--config".to_owned(), path.display().to_string()]),
            c
        );
    }

    #[test]
    fn documented_flags_parse() {
        let args: Vec<String> =
            "--kernel vmlinux --initramfs initramfs.cpio --vcpus 2 --mem-mib 256 \
            --drive id=rootfs,path=image.erofs,ro --drive id=scratch,path=scratch.ext4 \
            --net tap=tap0,mac=02:00:00:00:00:02 --vsock cid=3,uds=/run/vm1/vsock.sock \
            --control-socket /run/vm1/control.sock --serial /run/vm1/console.log"
                .split_whitespace()
                .map(str::to_owned)
                .collect();
        let c = parse(&args);
        assert_eq!(c.drives.len(), 2);
        assert!(c.drives[0].read_only && !c.drives[1].read_only);
        assert_eq!(c.vsock.as_ref().map(|v| v.cid), Some(3));
        assert_eq!(parse(&c.to_args().unwrap()), c);
        for (flag, value, why) in [
            (
                "--drive",
                "id=a,path=/b,bogus=1",
                "unknown drive option \"bogus\" (use id=,path=,ro)",
            ),
            ("--vsock", "cid=x,uds=/a", "bad vsock cid \"x\""),
        ] {
            let e = Args::try_parse_from(["vmlet-vmm", flag, value]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{e}");
            assert!(e.to_string().contains(why), "{why:?} not in {e}");
        }
    }

    #[test]
    fn exit_lines() {
        assert_eq!(
            exit_line(1, &"no kernel given"),
            "vmlet-vmm: error: no kernel given (exit status 1)"
        );
        // The form the programs that start the VMM read.
        let record = ExitRecord::parse(&exit_line(159, &"seccomp: x")).unwrap();
        assert_eq!((record.code, record.reason.as_str()), (159, "seccomp: x"));
    }

    #[test]
    fn a_panic_names_its_thread_place_and_message() {
        let (tx, rx) = std::sync::mpsc::channel();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = tx.send(panic_reason(info));
        }));
        let joined = std::thread::Builder::new()
            .name("vcpu3".into())
            .spawn(|| panic!("device {} broke", "blk"))
            .unwrap()
            .join();
        std::panic::set_hook(previous);
        assert!(joined.is_err());
        let reason = rx.recv().unwrap();
        assert!(
            reason.starts_with("panic in thread 'vcpu3' at vmm/src/cli.rs:")
                && reason.ends_with(": device blk broke"),
            "{reason}"
        );
        let line = exit_line(PANIC_EXIT, &reason);
        assert!(vmlet_vmm_api::exit::is_failure_line(&line), "{line}");
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        std::fs::write(&path, r#"{"kernel":"/k","vcpus":2,"mem_mib":256}"#).unwrap();
        let args = Args::parse_from([
            "vmlet-vmm",
            "--config",
            path.to_str().unwrap(),
            "--vcpus",
            "4",
        ]);
        let c = resolve(args).unwrap();
        assert_eq!((c.vcpus, c.mem_mib), (4, 256));
        let args = Args::parse_from(["vmlet-vmm"]);
        assert!(resolve(args).unwrap_err().contains("no kernel"));
    }
}
