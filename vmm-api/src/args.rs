//! A [`VmConfig`] turned into what starts `vmlet-vmm`: the exact argv
//! ([`VmConfig::to_args`]) or the JSON for `--config` ([`VmConfig::to_json`]).
//!
//! Every valued flag is printed as one `--name=value` argument (a value that
//! starts with `-` cannot be taken for a flag), except `--control-socket`, which
//! stays two arguments so a process can be recognised by the path alone among
//! its arguments (vmletd finds its VMMs that way after a restart).

use crate::config::{flag, SerialOutput, VmConfig};
use std::path::{Path, PathBuf};

/// A configuration the flags cannot express.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// A path that is not UTF-8 (the flag parser reads UTF-8 only).
    #[error("--{flag}: path {path:?} is not UTF-8")]
    NotUtf8 {
        /// The flag.
        flag: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A value inside a `key=value,...` list that holds a comma.
    #[error("--{flag}: {key} {value:?} holds a comma, which separates the options")]
    Comma {
        /// The flag.
        flag: &'static str,
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
    },
    /// A serial file named like one of `--serial`'s keywords.
    #[error("--serial: a file named {0:?} would be read as the keyword; give another path")]
    SerialKeyword(PathBuf),
    /// The configuration cannot be written as JSON.
    #[error("writing the VM configuration as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn utf8<'a>(flag: &'static str, path: &'a Path) -> Result<&'a str, ArgsError> {
    path.to_str().ok_or_else(|| ArgsError::NotUtf8 {
        flag,
        path: path.to_owned(),
    })
}

/// `value` for a `key=value,...` list: no commas.
fn listed<'a>(flag: &'static str, key: &'static str, value: &'a str) -> Result<&'a str, ArgsError> {
    if value.contains(',') {
        return Err(ArgsError::Comma {
            flag,
            key,
            value: value.to_owned(),
        });
    }
    Ok(value)
}

fn valued(flag: &str, value: impl std::fmt::Display) -> String {
    format!("--{flag}={value}")
}

fn switch(flag: &str) -> String {
    format!("--{flag}")
}

impl VmConfig {
    /// The `vmlet-vmm` arguments (without the program name) that configure exactly
    /// this VM, defaults included.
    pub fn to_args(&self) -> Result<Vec<String>, ArgsError> {
        let mut args = vec![valued(flag::KERNEL, utf8(flag::KERNEL, &self.kernel)?)];
        if let Some(initramfs) = &self.initramfs {
            args.push(valued(flag::INITRAMFS, utf8(flag::INITRAMFS, initramfs)?));
        }
        if !self.cmdline.is_empty() {
            args.push(valued(flag::CMDLINE, &self.cmdline));
        }
        args.push(valued(flag::VCPUS, self.vcpus));
        args.push(valued(flag::MEM_MIB, self.mem_mib));
        for d in &self.drives {
            let id = listed(flag::DRIVE, "id", &d.id)?;
            let path = listed(flag::DRIVE, "path", utf8(flag::DRIVE, &d.path)?)?;
            let ro = if d.read_only { ",ro" } else { "" };
            args.push(valued(flag::DRIVE, format!("id={id},path={path}{ro}")));
        }
        for n in &self.net {
            let mut value = format!("tap={}", listed(flag::NET, "tap", &n.tap)?);
            if let Some(mac) = &n.mac {
                value.push_str(",mac=");
                value.push_str(listed(flag::NET, "mac", mac)?);
            }
            if n.no_offloads {
                value.push_str(",no-offloads");
            }
            args.push(valued(flag::NET, value));
        }
        if let Some(v) = &self.vsock {
            let uds = listed(flag::VSOCK, "uds", utf8(flag::VSOCK, &v.uds_path)?)?;
            args.push(valued(flag::VSOCK, format!("cid={},uds={uds}", v.cid)));
        }
        for f in &self.fs {
            let tag = listed(flag::FS, "tag", &f.tag)?;
            let socket = listed(flag::FS, "socket", utf8(flag::FS, &f.socket)?)?;
            args.push(valued(
                flag::FS,
                format!(
                    "tag={tag},socket={socket},num_request_queues={},queue_size={}",
                    f.num_request_queues, f.queue_size
                ),
            ));
        }
        if self.shared_memory {
            args.push(switch(flag::SHARED_MEMORY));
        }
        if !self.rng {
            args.push(switch(flag::NO_RNG));
        }
        if self.free_page_reporting {
            args.push(switch(flag::FREE_PAGE_REPORTING));
        }
        if self.huge_pages {
            args.push(switch(flag::HUGE_PAGES));
        }
        let serial = match &self.serial {
            SerialOutput::Stdout => SerialOutput::STDOUT,
            SerialOutput::Off => SerialOutput::OFF,
            SerialOutput::File(path) => {
                let p = utf8(flag::SERIAL, path)?;
                if p == SerialOutput::STDOUT || p == SerialOutput::OFF {
                    return Err(ArgsError::SerialKeyword(path.clone()));
                }
                p
            }
        };
        args.push(valued(flag::SERIAL, serial));
        if self.serial_log != crate::config::SerialLogLimits::default() {
            let l = self.serial_log;
            args.push(valued(
                flag::SERIAL_LOG,
                format!("head={},tail={}", l.head_bytes, l.tail_bytes),
            ));
        }
        if let Some(control) = &self.control_socket {
            args.push(switch(flag::CONTROL_SOCKET));
            args.push(utf8(flag::CONTROL_SOCKET, control)?.to_owned());
        }
        if let Some(record) = &self.exit_record {
            args.push(valued(flag::EXIT_RECORD, utf8(flag::EXIT_RECORD, record)?));
        }
        if !self.seccomp {
            args.push(switch(flag::NO_SECCOMP));
        }
        if let Some(dir) = &self.restore {
            args.push(valued(flag::RESTORE, utf8(flag::RESTORE, dir)?));
        }
        Ok(args)
    }

    /// The JSON that `vmlet-vmm --config FILE` reads back into this configuration.
    pub fn to_json(&self) -> Result<String, ArgsError> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DriveConfig, FsConfig, NetConfig, VsockConfig};
    use std::os::unix::ffi::OsStrExt;

    fn pod() -> VmConfig {
        VmConfig {
            initramfs: Some("/i.cpio".into()),
            cmdline: "quiet -x".into(),
            vcpus: 2,
            mem_mib: 256,
            drives: vec![
                DriveConfig {
                    id: "scratch".into(),
                    path: "/p/scratch.ext4".into(),
                    read_only: false,
                },
                DriveConfig {
                    id: "slot0".into(),
                    path: "/p/empty.img".into(),
                    read_only: true,
                },
            ],
            net: vec![NetConfig {
                tap: "tap0".into(),
                mac: Some("02:00:00:00:00:02".into()),
                no_offloads: true,
            }],
            vsock: Some(VsockConfig {
                cid: 3,
                uds_path: "/run/p/vsock".into(),
            }),
            fs: vec![FsConfig::new("vol0", "/run/p/fs0.sock")],
            free_page_reporting: true,
            serial: SerialOutput::File("/p/console.log".into()),
            control_socket: Some("/run/p/ctl".into()),
            exit_record: Some("/p/vmm-exit".into()),
            ..VmConfig::new("/k/vmlinux".into())
        }
    }

    #[test]
    fn argv_of_a_pod() {
        assert_eq!(
            pod().to_args().unwrap(),
            [
                "--kernel=/k/vmlinux",
                "--initramfs=/i.cpio",
                "--cmdline=quiet -x",
                "--vcpus=2",
                "--mem-mib=256",
                "--drive=id=scratch,path=/p/scratch.ext4",
                "--drive=id=slot0,path=/p/empty.img,ro",
                "--net=tap=tap0,mac=02:00:00:00:00:02,no-offloads",
                "--vsock=cid=3,uds=/run/p/vsock",
                "--fs=tag=vol0,socket=/run/p/fs0.sock,num_request_queues=1,queue_size=1024",
                "--free-page-reporting",
                "--serial=/p/console.log",
                "--control-socket",
                "/run/p/ctl",
                "--exit-record=/p/vmm-exit",
            ]
        );
        let bare = VmConfig {
            rng: false,
            huge_pages: true,
            shared_memory: true,
            seccomp: false,
            serial: SerialOutput::Off,
            restore: Some("/t/1".into()),
            ..VmConfig::new("k".into())
        };
        assert_eq!(
            bare.to_args().unwrap(),
            [
                "--kernel=k",
                "--vcpus=1",
                "--mem-mib=128",
                "--shared-memory",
                "--no-rng",
                "--huge-pages",
                "--serial=off",
                "--no-seccomp",
                "--restore=/t/1",
            ]
        );
    }

    #[test]
    fn what_flags_cannot_say_is_refused() {
        let mut c = pod();
        c.drives[0].path = "/a,b".into();
        assert!(matches!(
            c.to_args(),
            Err(ArgsError::Comma { key: "path", .. })
        ));
        let mut c = pod();
        c.net[0].tap = "t,0".into();
        assert!(matches!(
            c.to_args(),
            Err(ArgsError::Comma { key: "tap", .. })
        ));
        let mut c = pod();
        c.fs[0].tag = "a,b".into();
        assert!(matches!(
            c.to_args(),
            Err(ArgsError::Comma { key: "tag", .. })
        ));
        let mut c = pod();
        c.serial = SerialOutput::File("off".into());
        assert!(matches!(c.to_args(), Err(ArgsError::SerialKeyword(_))));
        let mut c = pod();
        c.kernel = std::ffi::OsStr::from_bytes(b"/k\xff").into();
        assert!(matches!(
            c.to_args(),
            Err(ArgsError::NotUtf8 { flag: "kernel", .. })
        ));
    }

    #[test]
    fn config_file_round_trip() {
        let c = pod();
        let back: VmConfig = serde_json::from_str(&c.to_json().unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
