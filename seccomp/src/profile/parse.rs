//! The JSON as read (`json`) to the checked model: every action, operator,
//! architecture, flag, name and argument index is checked here.

use super::error::{ProfileError, RuleRef};
use super::json::{RawArg, RawFilter, RawProfile, RawSyscall};
use super::limits::MAX_NAMES;
use super::model::{Action, Arch, ArgCmp, CmpOp, Condition, Flag, Profile, Rule};

/// Longest syscall, capability or architecture name.
const MAX_NAME_LEN: usize = 64;
/// Largest errno the kernel returns (`MAX_ERRNO`); larger values are clamped to it.
const MAX_ERRNO: u32 = 4095;
/// `SCMP_ACT_TRACE`'s value is the 16-bit `SECCOMP_RET_DATA`.
const MAX_TRACE: u32 = u16::MAX as u32;
/// The errno of `SCMP_ACT_ERRNO` and `SCMP_ACT_TRACE` without `errnoRet` (runc's).
const EPERM: u16 = 1;

/// Checks a profile as read and builds the model.
pub(super) fn profile(raw: RawProfile) -> Result<Profile, ProfileError> {
    if let Some(path) = raw.listener_path.filter(|p| !p.is_empty()) {
        return Err(ProfileError::ListenerUnsupported(clip(&path)));
    }
    if !raw.architectures.is_empty() && !raw.arch_map.is_empty() {
        return Err(ProfileError::ArchitecturesAndArchMap);
    }
    let names: usize = raw.syscalls.iter().map(|s| s.names.len()).sum();
    if names > MAX_NAMES {
        return Err(ProfileError::TooManyNames {
            count: names,
            max: MAX_NAMES,
        });
    }
    let default_action = action(&raw.default_action, raw.default_errno_ret, || {
        "defaultAction".to_string()
    })?;
    let architectures = arches(&raw.architectures, "architectures")?;
    let arch_map = raw
        .arch_map
        .iter()
        .map(|m| {
            let main = arch(&m.architecture, "archMap")?;
            Ok((main, arches(&m.sub_architectures, "archMap")?))
        })
        .collect::<Result<_, ProfileError>>()?;
    let rules = raw
        .syscalls
        .into_iter()
        .enumerate()
        .map(|(i, s)| rule(i, s))
        .collect::<Result<_, _>>()?;
    let flags = raw
        .flags
        .iter()
        .map(|f| flag(f))
        .collect::<Result<_, _>>()?;
    Ok(Profile {
        default_action,
        architectures,
        arch_map,
        rules,
        flags,
    })
}

fn rule(index: usize, raw: RawSyscall) -> Result<Rule, ProfileError> {
    let first = raw.name.clone().or_else(|| raw.names.first().cloned());
    let at = RuleRef {
        index,
        name: first.map(|n| n.chars().take(MAX_NAME_LEN).collect()),
    };
    let names = match (raw.name, raw.names.is_empty()) {
        (Some(_), false) => return Err(ProfileError::NameAndNames(at)),
        (Some(name), true) => vec![name],
        (None, _) => raw.names,
    };
    if names.is_empty() {
        return Err(ProfileError::NoNames(at));
    }
    if let Some(bad) = names.iter().find(|n| !is_syscall_name(n)) {
        return Err(ProfileError::BadName {
            name: bad.chars().take(MAX_NAME_LEN + 1).collect(),
            rule: at,
        });
    }
    let action = action(&raw.action, raw.errno_ret, || at.to_string())?;
    let args = raw
        .args
        .iter()
        .enumerate()
        .map(|(i, a)| arg(&at, i, a))
        .collect::<Result<_, _>>()?;
    let includes = condition(&at, raw.includes)?;
    let excludes = condition(&at, raw.excludes)?;
    Ok(Rule {
        names,
        action,
        args,
        includes,
        excludes,
    })
}

fn is_syscall_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Parses an action; `errno_ret` is the value of `Errno` and `Trace` (EPERM when
/// absent, as runc does) and ignored by the others, as runc ignores it.
fn action(
    name: &str,
    errno_ret: Option<u32>,
    field: impl Fn() -> String,
) -> Result<Action, ProfileError> {
    let value = |max: u32| match errno_ret {
        None => Ok(EPERM),
        Some(v) if v <= max => Ok(v as u16),
        Some(v) => Err(ProfileError::ErrnoRetTooLarge {
            field: field(),
            value: v,
            max,
        }),
    };
    Ok(match name {
        "SCMP_ACT_ALLOW" => Action::Allow,
        "SCMP_ACT_ERRNO" => Action::Errno(value(MAX_ERRNO)?),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        "SCMP_ACT_TRAP" => Action::Trap,
        "SCMP_ACT_TRACE" => Action::Trace(value(MAX_TRACE)?),
        "SCMP_ACT_LOG" => Action::Log,
        "SCMP_ACT_NOTIFY" => return Err(ProfileError::NotifyUnsupported { field: field() }),
        other => {
            return Err(ProfileError::UnknownAction {
                field: field(),
                value: clip(other),
            })
        }
    })
}

fn arg(at: &RuleRef, i: usize, raw: &RawArg) -> Result<ArgCmp, ProfileError> {
    let op = match raw.op.as_str() {
        "SCMP_CMP_NE" => CmpOp::Ne,
        "SCMP_CMP_LT" => CmpOp::Lt,
        "SCMP_CMP_LE" => CmpOp::Le,
        "SCMP_CMP_EQ" => CmpOp::Eq,
        "SCMP_CMP_GE" => CmpOp::Ge,
        "SCMP_CMP_GT" => CmpOp::Gt,
        "SCMP_CMP_MASKED_EQ" => CmpOp::MaskedEq,
        other => {
            return Err(ProfileError::UnknownOp {
                rule: at.clone(),
                arg: i,
                value: clip(other),
            })
        }
    };
    let index = u8::try_from(raw.index)
        .ok()
        .filter(|i| *i <= 5)
        .ok_or_else(|| ProfileError::ArgIndex {
            rule: at.clone(),
            arg: i,
            index: raw.index,
        })?;
    Ok(ArgCmp {
        index,
        op,
        value: raw.value,
        value_two: raw.value_two,
    })
}

fn condition(at: &RuleRef, raw: Option<RawFilter>) -> Result<Condition, ProfileError> {
    let raw = raw.unwrap_or_default();
    let bad = raw
        .caps
        .iter()
        .chain(&raw.arches)
        .find(|n| n.is_empty() || n.len() > MAX_NAME_LEN);
    if let Some(bad) = bad {
        return Err(ProfileError::BadConditionName {
            rule: at.clone(),
            value: clip(bad),
        });
    }
    let min_kernel = match raw.min_kernel.as_deref() {
        None | Some("") => None,
        Some(v) => Some(kernel_version(v).ok_or_else(|| ProfileError::BadMinKernel {
            rule: at.clone(),
            value: clip(v),
        })?),
    };
    Ok(Condition {
        caps: raw.caps,
        arches: raw.arches,
        min_kernel,
    })
}

/// `MAJOR.MINOR`, as moby's `minKernel` (a patch level or suffix is refused).
fn kernel_version(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.split_once('.')?;
    let number = |s: &str| {
        if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    Some((number(major)?, number(minor)?))
}

fn arches(names: &[String], field: &str) -> Result<Vec<Arch>, ProfileError> {
    names.iter().map(|n| arch(n, field)).collect()
}

fn arch(name: &str, field: &str) -> Result<Arch, ProfileError> {
    Ok(match name {
        "SCMP_ARCH_X86" => Arch::X86,
        "SCMP_ARCH_X86_64" => Arch::X86_64,
        "SCMP_ARCH_X32" => Arch::X32,
        "SCMP_ARCH_ARM" => Arch::Arm,
        "SCMP_ARCH_AARCH64" => Arch::Aarch64,
        "SCMP_ARCH_MIPS" => Arch::Mips,
        "SCMP_ARCH_MIPS64" => Arch::Mips64,
        "SCMP_ARCH_MIPS64N32" => Arch::Mips64N32,
        "SCMP_ARCH_MIPSEL" => Arch::Mipsel,
        "SCMP_ARCH_MIPSEL64" => Arch::Mipsel64,
        "SCMP_ARCH_MIPSEL64N32" => Arch::Mipsel64N32,
        "SCMP_ARCH_PPC" => Arch::Ppc,
        "SCMP_ARCH_PPC64" => Arch::Ppc64,
        "SCMP_ARCH_PPC64LE" => Arch::Ppc64Le,
        "SCMP_ARCH_S390" => Arch::S390,
        "SCMP_ARCH_S390X" => Arch::S390X,
        "SCMP_ARCH_PARISC" => Arch::Parisc,
        "SCMP_ARCH_PARISC64" => Arch::Parisc64,
        "SCMP_ARCH_RISCV64" => Arch::Riscv64,
        "SCMP_ARCH_LOONGARCH64" => Arch::Loongarch64,
        "SCMP_ARCH_M68K" => Arch::M68k,
        "SCMP_ARCH_SH" => Arch::Sh,
        "SCMP_ARCH_SHEB" => Arch::Sheb,
        other => {
            return Err(ProfileError::UnknownArch {
                field: field.to_string(),
                value: clip(other),
            })
        }
    })
}

fn flag(name: &str) -> Result<Flag, ProfileError> {
    Ok(match name {
        "SECCOMP_FILTER_FLAG_TSYNC" => Flag::Tsync,
        "SECCOMP_FILTER_FLAG_LOG" => Flag::Log,
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => Flag::SpecAllow,
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV" => Flag::WaitKillableRecv,
        other => return Err(ProfileError::UnknownFlag(clip(other))),
    })
}

/// A value quoted in an error, cut to a readable length.
fn clip(s: &str) -> String {
    s.chars().take(MAX_NAME_LEN + 1).collect()
}
