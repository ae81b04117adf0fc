//! A profile's applicable entries to a libseccomp filter, exported as the BPF
//! program's bytes.
//!
//! Two libseccomp contexts are built and merged: one for x86_64 and, when the
//! profile asks for them, one for i386 and x32. libseccomp translates a rule to
//! every ABI of its context by the syscall's name, which fails for syscalls newer
//! than its table; those are added by number to the x86_64 context only.

use crate::names;
use crate::profile::{Action, ArgCmp, CmpOp, Profile, Rule};
use crate::select::{self, Abis};
use libseccomp::error::SeccompError;
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use nix::sys::memfd::{memfd_create, MFdFlags};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

/// The kernel's limit on a classic BPF program (`BPF_MAXINSNS`).
pub const MAX_INSTRUCTIONS: usize = 4096;
/// Bytes of one instruction (`struct sock_filter`).
const INSTRUCTION_BYTES: usize = 8;
/// libseccomp's binary-tree layout of the syscall checks (`SCMP_FLTATR_CTL_OPTIMIZE`
/// 2): a syscall is found in about log2(rules) jumps instead of one per rule.
const OPTIMIZE_BINARY_TREE: u32 = 2;

/// A profile that could not be made into a program.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// vmletd builds x86_64 programs with libseccomp on an x86_64 host only.
    #[error("seccomp programs are built on x86_64 hosts only, not {0:?}")]
    UnsupportedHost(ScmpArch),
    /// A syscall name that no architecture has.
    #[error("seccomp profile: unknown syscall {0:?}")]
    UnknownSyscall(String),
    /// libseccomp refused a step; `what` names it (and the syscall).
    #[error("seccomp filter: {what}: {source}")]
    Libseccomp {
        /// The step, e.g. `rule for "mkdir"`.
        what: String,
        /// libseccomp's error.
        #[source]
        source: SeccompError,
    },
    /// Exporting the program to memory failed.
    #[error("seccomp filter: export: {0}")]
    Export(#[source] std::io::Error),
    /// The program is longer than the kernel accepts.
    #[error("seccomp program has {instructions} instructions, more than the kernel's {max}")]
    TooLong {
        /// Its length.
        instructions: usize,
        /// `BPF_MAXINSNS`.
        max: usize,
    },
}

/// Compiles the parts of `profile` that apply to a container with the effective
/// capabilities `caps` (names like `"CAP_SYS_ADMIN"`; `"SYS_ADMIN"` works too)
/// into a classic BPF program for an x86_64 kernel: `struct sock_filter` entries
/// of 8 bytes, little endian, ready for `seccomp(SECCOMP_SET_MODE_FILTER)`.
///
/// Entries are chosen as containerd does (`includes`/`excludes` of capabilities,
/// of the `amd64` architecture and of `minKernel` against the guest kernel). An
/// entry whose action is the default action adds nothing. An entry whose `args`
/// compare one argument more than once becomes one rule per comparison (any
/// matches), as runc does; otherwise all comparisons must match.
pub fn compile(profile: &Profile, caps: &[&str]) -> Result<Vec<u8>, CompileError> {
    let native = ScmpArch::native();
    if native != ScmpArch::X8664 {
        return Err(CompileError::UnsupportedHost(native));
    }
    check_names(profile)?;
    let default = action(profile.default_action);
    let mut x86_64 = context(default, &[])?;
    let abis = select::abis(profile);
    let mut compat = compat_context(default, abis)?;
    for rule in select::rules(profile, caps) {
        if rule.action == profile.default_action {
            continue;
        }
        for name in &rule.names {
            let resolved =
                names::resolve(name).ok_or_else(|| CompileError::UnknownSyscall(name.clone()))?;
            add(&mut x86_64, rule, name, resolved.x86_64)?;
            if let Some(compat) = compat.as_mut() {
                add(compat, rule, name, resolved.compat)?;
            }
        }
    }
    if let Some(compat) = compat {
        x86_64
            .merge(compat)
            .map_err(|e| libseccomp("merging the i386/x32 part", e))?;
    }
    export(&x86_64)
}

/// Every name of every entry must be a syscall somewhere, also in entries this
/// container does not get: a typo is reported the first time, whatever the
/// capabilities.
fn check_names(profile: &Profile) -> Result<(), CompileError> {
    let mut all = profile.rules.iter().flat_map(|r| &r.names);
    match all.find(|n| names::resolve(n).is_none()) {
        Some(unknown) => Err(CompileError::UnknownSyscall(unknown.clone())),
        None => Ok(()),
    }
}

/// A context with these ABIs, or the native (x86_64) one when `arches` is empty.
fn context(default: ScmpAction, arches: &[ScmpArch]) -> Result<ScmpFilterContext, CompileError> {
    let mut ctx =
        ScmpFilterContext::new(default).map_err(|e| libseccomp("creating the filter", e))?;
    ctx.set_ctl_optimize(OPTIMIZE_BINARY_TREE)
        .map_err(|e| libseccomp("choosing the binary-tree layout", e))?;
    if !arches.is_empty() {
        for arch in arches {
            ctx.add_arch(*arch)
                .map_err(|e| libseccomp(&format!("adding {arch:?}"), e))?;
        }
        ctx.remove_arch(ScmpArch::Native)
            .map_err(|e| libseccomp("removing x86_64 from the i386/x32 part", e))?;
    }
    Ok(ctx)
}

fn compat_context(
    default: ScmpAction,
    abis: Abis,
) -> Result<Option<ScmpFilterContext>, CompileError> {
    let arches: Vec<ScmpArch> = [(abis.x86, ScmpArch::X86), (abis.x32, ScmpArch::X32)]
        .into_iter()
        .filter_map(|(wanted, arch)| wanted.then_some(arch))
        .collect();
    if arches.is_empty() {
        return Ok(None);
    }
    context(default, &arches).map(Some)
}

/// Adds `rule` for one syscall to a context, unless the context's ABIs lack it.
fn add(
    ctx: &mut ScmpFilterContext,
    rule: &Rule,
    name: &str,
    syscall: Option<ScmpSyscall>,
) -> Result<(), CompileError> {
    let Some(syscall) = syscall else {
        return Ok(());
    };
    let act = action(rule.action);
    let fail = |e| libseccomp(&format!("rule for {name:?}"), e);
    if rule.args.is_empty() {
        return ctx.add_rule(act, syscall).map(drop).map_err(fail);
    }
    let cmps: Vec<ScmpArgCompare> = rule.args.iter().map(compare).collect();
    if repeats_an_argument(&rule.args) {
        for cmp in cmps {
            ctx.add_rule_conditional(act, syscall, &[cmp])
                .map_err(fail)?;
        }
        Ok(())
    } else {
        ctx.add_rule_conditional(act, syscall, &cmps)
            .map(drop)
            .map_err(fail)
    }
}

/// libseccomp takes one comparison per argument in a rule.
fn repeats_an_argument(args: &[ArgCmp]) -> bool {
    let mut seen = [false; 6];
    args.iter().any(|a| {
        let slot = &mut seen[usize::from(a.index)];
        std::mem::replace(slot, true)
    })
}

fn compare(a: &ArgCmp) -> ScmpArgCompare {
    let index = u32::from(a.index);
    match a.op {
        CmpOp::Ne => ScmpArgCompare::new(index, ScmpCompareOp::NotEqual, a.value),
        CmpOp::Lt => ScmpArgCompare::new(index, ScmpCompareOp::Less, a.value),
        CmpOp::Le => ScmpArgCompare::new(index, ScmpCompareOp::LessOrEqual, a.value),
        CmpOp::Eq => ScmpArgCompare::new(index, ScmpCompareOp::Equal, a.value),
        CmpOp::Ge => ScmpArgCompare::new(index, ScmpCompareOp::GreaterEqual, a.value),
        CmpOp::Gt => ScmpArgCompare::new(index, ScmpCompareOp::Greater, a.value),
        // OCI: `value` is the mask, `valueTwo` what the masked argument must equal.
        CmpOp::MaskedEq => {
            ScmpArgCompare::new(index, ScmpCompareOp::MaskedEqual(a.value), a.value_two)
        }
    }
}

fn action(a: Action) -> ScmpAction {
    match a {
        Action::Allow => ScmpAction::Allow,
        Action::Errno(e) => ScmpAction::Errno(i32::from(e)),
        Action::KillThread => ScmpAction::KillThread,
        Action::KillProcess => ScmpAction::KillProcess,
        Action::Trap => ScmpAction::Trap,
        Action::Trace(v) => ScmpAction::Trace(v),
        Action::Log => ScmpAction::Log,
    }
}

/// The program's bytes, through a memfd (libseccomp 2.5 exports to a descriptor).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<u8>, CompileError> {
    let fd = memfd_create("vmlet-seccomp", MFdFlags::MFD_CLOEXEC)
        .map_err(|e| CompileError::Export(e.into()))?;
    let mut file = File::from(fd);
    ctx.export_bpf(&file)
        .map_err(|e| libseccomp("exporting the program", e))?;
    let mut program = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut program))
        .map_err(CompileError::Export)?;
    let instructions = program.len() / INSTRUCTION_BYTES;
    if program.len() % INSTRUCTION_BYTES != 0 || instructions == 0 {
        return Err(CompileError::Export(std::io::Error::other(format!(
            "libseccomp wrote {} bytes, not whole instructions",
            program.len()
        ))));
    }
    if instructions > MAX_INSTRUCTIONS {
        return Err(CompileError::TooLong {
            instructions,
            max: MAX_INSTRUCTIONS,
        });
    }
    Ok(program)
}

fn libseccomp(what: &str, source: SeccompError) -> CompileError {
    CompileError::Libseccomp {
        what: what.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests;
