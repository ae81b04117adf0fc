//! Command-line interface: flags and/or a JSON config file, then build, run,
//! and exit with the VM's status. Every failure prints one line and exits
//! non-zero.
//!
//! Exit status: 0 the guest powered off or reset; 1 error; 2 the guest did not
//! power off within the graceful-shutdown timeout and was stopped; 128 + N when
//! signal N (SIGTERM, SIGINT) stopped it.

use crate::config::{DriveConfig, NetConfig, SerialOutput, VmConfig, VsockConfig};
use clap::Parser;
use std::path::PathBuf;

/// Flags. Anything given here overrides the `--config` file.
#[derive(Parser, Debug)]
#[command(
    name = "vmlet-vmm",
    version,
    about = "vmlet's micro-VM monitor: one KVM guest per process"
)]
pub struct Args {
    /// JSON configuration file (see `VmConfig`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Uncompressed ELF vmlinux with a PVH entry.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// initramfs (cpio).
    #[arg(long)]
    pub initramfs: Option<PathBuf>,
    /// Extra kernel command line.
    #[arg(long)]
    pub cmdline: Option<String>,
    /// vCPUs.
    #[arg(long)]
    pub vcpus: Option<u8>,
    /// Guest memory in MiB.
    #[arg(long)]
    pub mem_mib: Option<u64>,
    /// A drive: `id=ID,path=FILE[,ro]` (repeatable).
    #[arg(long = "drive", value_parser = parse_drive)]
    pub drives: Vec<DriveConfig>,
    /// A network card: `tap=NAME[,mac=aa:bb:cc:dd:ee:ff]` (repeatable).
    #[arg(long = "net", value_parser = parse_net)]
    pub net: Vec<NetConfig>,
    /// vsock: `cid=N,uds=PATH`.
    #[arg(long, value_parser = parse_vsock)]
    pub vsock: Option<VsockConfig>,
    /// Do not offer a virtio-rng device.
    #[arg(long)]
    pub no_rng: bool,
    /// Offer a virtio-balloon that takes back the memory the guest frees.
    #[arg(long)]
    pub free_page_reporting: bool,
    /// Back guest RAM with transparent huge pages (faster page walks, but each page
    /// the guest touches costs the host 2 MiB).
    #[arg(long)]
    pub huge_pages: bool,
    /// Serial console: `stdout`, `off` or a file path.
    #[arg(long)]
    pub serial: Option<String>,
    /// Control socket path.
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
    /// Do not install seccomp filters (debugging only).
    #[arg(long)]
    pub no_seccomp: bool,
}

fn key_values(s: &str) -> Vec<(&str, &str)> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect()
}

fn parse_drive(s: &str) -> Result<DriveConfig, String> {
    let (mut id, mut path, mut ro) = (None, None, false);
    for (k, v) in key_values(s) {
        match k {
            "id" => id = Some(v.to_owned()),
            "path" => path = Some(PathBuf::from(v)),
            "ro" | "read_only" => ro = true,
            _ => return Err(format!("unknown drive option {k:?} (use id=,path=,ro)")),
        }
    }
    Ok(DriveConfig {
        id: id.ok_or("drive needs id=")?,
        path: path.ok_or("drive needs path=")?,
        read_only: ro,
    })
}

fn parse_net(s: &str) -> Result<NetConfig, String> {
    let (mut tap, mut mac) = (None, None);
    for (k, v) in key_values(s) {
        match k {
            "tap" => tap = Some(v.to_owned()),
            "mac" => mac = Some(v.to_owned()),
            _ => return Err(format!("unknown net option {k:?} (use tap=,mac=)")),
        }
    }
    Ok(NetConfig {
        tap: tap.ok_or("net needs tap=")?,
        mac,
    })
}

fn parse_vsock(s: &str) -> Result<VsockConfig, String> {
    let (mut cid, mut uds) = (None, None);
    for (k, v) in key_values(s) {
        match k {
            "cid" => {
                cid = Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("bad vsock cid {v:?}"))?,
                )
            }
            "uds" | "uds_path" => uds = Some(PathBuf::from(v)),
            _ => return Err(format!("unknown vsock option {k:?} (use cid=,uds=)")),
        }
    }
    Ok(VsockConfig {
        cid: cid.ok_or("vsock needs cid=")?,
        uds_path: uds.ok_or("vsock needs uds=")?,
    })
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
        config.serial = match s.as_str() {
            "stdout" => SerialOutput::Stdout,
            "off" => SerialOutput::Off,
            path => SerialOutput::File(path.into()),
        };
    }
    if args.control_socket.is_some() {
        config.control_socket = args.control_socket;
    }
    if args.no_seccomp {
        config.seccomp = false;
    }
    Ok(config)
}

/// Runs the VMM; returns the process exit status.
pub fn main() -> i32 {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VMLET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = match resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmlet-vmm: {e}");
            return 1;
        }
    };
    match crate::runner::run(&config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmlet-vmm: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_parsers() {
        let d = parse_drive("id=root,path=/img,ro").unwrap();
        assert_eq!((d.id.as_str(), d.read_only), ("root", true));
        assert!(parse_drive("path=/img").is_err());
        assert!(parse_drive("id=a,path=/b,bogus=1").is_err());
        let n = parse_net("tap=tap0,mac=02:00:00:00:00:01").unwrap();
        assert_eq!(n.tap, "tap0");
        let v = parse_vsock("cid=3,uds=/run/v.sock").unwrap();
        assert_eq!(v.cid, 3);
        assert!(parse_vsock("cid=x,uds=/a").is_err());
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
