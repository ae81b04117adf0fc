//! Which devices a container may use: cgroup v2 has no `devices.allow` file, so, as
//! runc does, a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the container's
//! cgroup answers for every `mknod` and `open` of a device node.
//!
//! The program is built the way runc's `libcontainer/cgroups/devices/devicefilter.go`
//! builds it (itself from crun's `ebpf.c`): load the access type, access mask, major
//! and minor of `struct bpf_cgroup_dev_ctx` into r2..r5, then one block per rule
//! that jumps to the next block on a mismatch and returns 1 (allow) on a match; the
//! last block returns 0 (deny). The instructions are written here by hand: no
//! maintained Rust crate builds cgroup device programs, and a BPF loader library
//! (aya, libbpf-rs) would be far larger than these few dozen lines.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// A device rule failed to load or attach.
#[derive(Debug, thiserror::Error)]
pub enum DeviceFilterError {
    /// The cgroup directory could not be opened.
    #[error("open cgroup {path}: {source}")]
    Cgroup {
        /// The cgroup directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// `BPF_PROG_LOAD` failed.
    #[error("load the device filter: {source}{}", verifier_log(.log))]
    Load {
        /// Why.
        source: std::io::Error,
        /// The verifier's log, if it said anything.
        log: String,
    },
    /// `BPF_PROG_ATTACH` failed.
    #[error("attach the device filter to cgroup {path}: {source}")]
    Attach {
        /// The cgroup directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

fn verifier_log(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(" (verifier: {})", log.trim())
    }
}

/// Character or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `c`.
    Char,
    /// `b`.
    Block,
}

impl Kind {
    /// `BPF_DEVCG_DEV_CHAR` / `BPF_DEVCG_DEV_BLOCK`.
    fn bpf(self) -> i32 {
        match self {
            Kind::Block => 1,
            Kind::Char => 2,
        }
    }
}

/// `BPF_DEVCG_ACC_MKNOD`.
pub const MKNOD: u32 = 1;
/// `BPF_DEVCG_ACC_READ`.
pub const READ: u32 = 2;
/// `BPF_DEVCG_ACC_WRITE`.
pub const WRITE: u32 = 4;
/// All three.
pub const RWM: u32 = MKNOD | READ | WRITE;

/// One allow rule: a device type, major and minor (`None`: any), and the accesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Device type.
    pub kind: Kind,
    /// Major number, any if `None`.
    pub major: Option<u32>,
    /// Minor number, any if `None`.
    pub minor: Option<u32>,
    /// Allowed accesses ([`MKNOD`], [`READ`], [`WRITE`]).
    pub access: u32,
}

const fn allow(kind: Kind, major: Option<u32>, minor: Option<u32>, access: u32) -> Rule {
    Rule {
        kind,
        major,
        minor,
        access,
    }
}

/// What a non-privileged container may use: containerd's `WithDefaultUnixDevices`
/// (`oci/spec_opts.go`: null, random, full, tty, zero, urandom, console, the pts
/// devices, ptmx, tun) with runc's `AllowedDevices` (`libcontainer/specconv`), which
/// adds `mknod` of any character or block device (opening one stays denied).
pub const DEFAULT_RULES: [Rule; 12] = [
    allow(Kind::Char, None, None, MKNOD),
    allow(Kind::Block, None, None, MKNOD),
    allow(Kind::Char, Some(1), Some(3), RWM),    // /dev/null
    allow(Kind::Char, Some(1), Some(8), RWM),    // /dev/random
    allow(Kind::Char, Some(1), Some(7), RWM),    // /dev/full
    allow(Kind::Char, Some(5), Some(0), RWM),    // /dev/tty
    allow(Kind::Char, Some(1), Some(5), RWM),    // /dev/zero
    allow(Kind::Char, Some(1), Some(9), RWM),    // /dev/urandom
    allow(Kind::Char, Some(5), Some(1), RWM),    // /dev/console
    allow(Kind::Char, Some(136), None, RWM),     // /dev/pts/*
    allow(Kind::Char, Some(5), Some(2), RWM),    // /dev/ptmx
    allow(Kind::Char, Some(10), Some(200), RWM), // /dev/net/tun
];

/// One eBPF instruction (`struct bpf_insn`): opcode, registers (dst in the low
/// nibble, src in the high one), offset, immediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

// Opcodes (include/uapi/linux/bpf.h, bpf_common.h).
/// `BPF_LDX | BPF_MEM | BPF_W`: dst = *(u32 *)(src + off).
const LDX_W: u8 = 0x61;
/// `BPF_ALU | BPF_AND | BPF_K`: dst &= imm (32 bit).
const AND32_K: u8 = 0x54;
/// `BPF_ALU | BPF_RSH | BPF_K`: dst >>= imm (32 bit).
const RSH32_K: u8 = 0x74;
/// `BPF_ALU | BPF_MOV | BPF_K`: dst = imm (32 bit).
const MOV32_K: u8 = 0xb4;
/// `BPF_ALU | BPF_MOV | BPF_X`: dst = src (32 bit).
const MOV32_X: u8 = 0xbc;
/// `BPF_JMP | BPF_JNE | BPF_K`: if dst != imm goto pc + 1 + off.
const JNE_K: u8 = 0x55;
/// `BPF_JMP | BPF_JNE | BPF_X`: if dst != src goto pc + 1 + off.
const JNE_X: u8 = 0x5d;
/// `BPF_JMP | BPF_EXIT`.
const EXIT: u8 = 0x95;

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// A jump to the next block, its offset filled in once the block's length is known.
fn jne_k(dst: u8, imm: i32) -> Insn {
    insn(JNE_K, dst, 0, 0, imm)
}

fn block(rule: &Rule) -> Vec<Insn> {
    let mut b = vec![jne_k(2, rule.kind.bpf())];
    if rule.access & RWM != RWM {
        // if (access & rule.access) != access: next. r1 is free to use.
        b.push(insn(MOV32_X, 1, 3, 0, 0));
        b.push(insn(AND32_K, 1, 0, 0, (rule.access & RWM) as i32));
        b.push(insn(JNE_X, 1, 3, 0, 0));
    }
    if let Some(major) = rule.major {
        b.push(jne_k(4, major as i32));
    }
    if let Some(minor) = rule.minor {
        b.push(jne_k(5, minor as i32));
    }
    b.push(insn(MOV32_K, 0, 0, 0, 1));
    b.push(insn(EXIT, 0, 0, 0, 0));
    // Every jump in the block goes to the instruction after its last.
    let len = b.len();
    for (i, ins) in b.iter_mut().enumerate() {
        if matches!(ins.code, JNE_K | JNE_X) {
            ins.off = i16::try_from(len - i - 1).unwrap_or(i16::MAX);
        }
    }
    b
}

/// The program that allows exactly `rules` and denies everything else.
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        // r2 = type (low 16 bits of access_type), r3 = access (high 16 bits),
        // r4 = major, r5 = minor: struct bpf_cgroup_dev_ctx.
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND32_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH32_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for r in rules {
        p.extend(block(r));
    }
    p.push(insn(MOV32_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to the fields used.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `union bpf_attr` for `BPF_PROG_ATTACH`.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
const LOG_SIZE: usize = 64 << 10;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialized bpf_attr prefix whose size is passed; the
    // pointers inside it (set by the callers) are valid for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn load(prog: &[Insn], with_log: bool) -> Result<OwnedFd, DeviceFilterError> {
    const LICENSE: &[u8] = b"Apache-2.0\0";
    let mut log = vec![0u8; if with_log { LOG_SIZE } else { 0 }];
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"vmlet_devs");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(prog.len()).unwrap_or(u32::MAX),
        insns: prog.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        log_level: u32::from(with_log),
        log_size: u32::try_from(log.len()).unwrap_or(0),
        log_buf: if with_log { log.as_mut_ptr() as u64 } else { 0 },
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(source) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err(DeviceFilterError::Load {
                source,
                log: String::from_utf8_lossy(&log[..end]).into_owned(),
            })
        }
    }
}

/// Loads the program for `rules` and attaches it to the cgroup at `cgroup`.
pub fn attach(cgroup: &Path, rules: &[Rule]) -> Result<(), DeviceFilterError> {
    let prog = program(rules);
    // A failure is loaded again with the verifier's log, to say why.
    let fd = load(&prog, false).or_else(|_| load(&prog, true))?;
    let dir = std::fs::File::open(cgroup).map_err(|source| DeviceFilterError::Cgroup {
        path: cgroup.display().to_string(),
        source,
    })?;
    let mut attr = ProgAttachAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // The cgroup holds the program from here on; both descriptors can go.
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|source| DeviceFilterError::Attach {
        path: cgroup.display().to_string(),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `prog` on a `bpf_cgroup_dev_ctx`: an interpreter for the few opcodes the
    /// generator emits, so the program's logic is tested without a kernel.
    fn run(prog: &[Insn], kind: Kind, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [
            u32::try_from(kind.bpf()).unwrap() | (access << 16),
            major,
            minor,
        ];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 10_000, "runaway program");
            let i = prog[pc];
            let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
            let imm = i.imm as u32 as u64;
            pc += 1;
            match i.code {
                LDX_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    r[dst] = u64::from(ctx[usize::try_from(i.off).unwrap() / 4]);
                }
                AND32_K => r[dst] = (r[dst] as u32 & imm as u32) as u64,
                RSH32_K => r[dst] = ((r[dst] as u32) >> imm) as u64,
                MOV32_K => r[dst] = imm,
                MOV32_X => r[dst] = r[src] as u32 as u64,
                JNE_K | JNE_X => {
                    let other = if i.code == JNE_K {
                        i.imm as i64 as u64
                    } else {
                        r[src]
                    };
                    if r[dst] != other {
                        pc += usize::try_from(i.off).unwrap();
                    }
                }
                EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn default_rules_allow_the_standard_devices_only() {
        let p = program(&DEFAULT_RULES);
        let ok = |kind, access, major, minor| run(&p, kind, access, major, minor) == 1;
        for (major, minor) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
        ] {
            assert!(
                ok(Kind::Char, READ | WRITE, major, minor),
                "{major}:{minor}"
            );
            assert!(ok(Kind::Char, MKNOD, major, minor));
        }
        assert!(ok(Kind::Char, READ | WRITE, 136, 7));
        assert!(ok(Kind::Char, READ, 10, 200));
        // Any device may be created, but not opened.
        assert!(ok(Kind::Block, MKNOD, 254, 0));
        assert!(!ok(Kind::Block, READ, 254, 0));
        assert!(!ok(Kind::Block, READ | MKNOD, 254, 0));
        assert!(!ok(Kind::Char, WRITE, 10, 237));
        // The numbers of /dev/null as a block device are another device.
        assert!(!ok(Kind::Block, READ, 1, 3));
        assert!(!ok(Kind::Char, READ, 1, 4));
    }

    #[test]
    fn jumps_stay_inside_the_program() {
        let p = program(&DEFAULT_RULES);
        for (pc, i) in p.iter().enumerate() {
            if matches!(i.code, JNE_K | JNE_X) {
                let target = pc + 1 + usize::try_from(i.off).unwrap();
                assert!(target < p.len(), "jump at {pc} to {target}");
            }
        }
        assert_eq!(p.last().unwrap().code, EXIT);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }

    #[test]
    fn an_empty_rule_set_denies_everything() {
        let p = program(&[]);
        assert_eq!(run(&p, Kind::Char, READ, 1, 3), 0);
    }
}
