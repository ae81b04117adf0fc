//! The checked profile: what `parse` builds and `select`/`compile` read.

/// A seccomp profile, checked: every action, operator, architecture, flag and
/// argument index is one the kernel knows. Build one with [`Profile::from_json`]
/// or [`Profile::runtime_default`], then [`compile`](crate::compile) it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub(crate) default_action: Action,
    pub(crate) architectures: Vec<Arch>,
    pub(crate) arch_map: Vec<(Arch, Vec<Arch>)>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) flags: Vec<Flag>,
}

/// What the kernel does with a matching syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// `SCMP_ACT_ALLOW`.
    Allow,
    /// `SCMP_ACT_ERRNO`: fail with this errno.
    Errno(u16),
    /// `SCMP_ACT_KILL` and `SCMP_ACT_KILL_THREAD`.
    KillThread,
    /// `SCMP_ACT_KILL_PROCESS`.
    KillProcess,
    /// `SCMP_ACT_TRAP`: SIGSYS.
    Trap,
    /// `SCMP_ACT_TRACE`: hand to a ptrace tracer with this value (ENOSYS without one).
    Trace(u16),
    /// `SCMP_ACT_LOG`: allow and log.
    Log,
}

/// An architecture (ABI) a profile may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arch {
    X86,
    X86_64,
    X32,
    Arm,
    Aarch64,
    Mips,
    Mips64,
    Mips64N32,
    Mipsel,
    Mipsel64,
    Mipsel64N32,
    Ppc,
    Ppc64,
    Ppc64Le,
    S390,
    S390X,
    Parisc,
    Parisc64,
    Riscv64,
    Loongarch64,
    M68k,
    Sh,
    Sheb,
}

/// A `seccomp(2)` filter flag. They are not part of the program: the caller that
/// installs it chooses its flags ([`Profile::flags`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// `SECCOMP_FILTER_FLAG_TSYNC`.
    Tsync,
    /// `SECCOMP_FILTER_FLAG_LOG`.
    Log,
    /// `SECCOMP_FILTER_FLAG_SPEC_ALLOW`.
    SpecAllow,
    /// `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`.
    WaitKillableRecv,
}

/// One `syscalls` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub names: Vec<String>,
    pub action: Action,
    pub args: Vec<ArgCmp>,
    pub includes: Condition,
    pub excludes: Condition,
}

/// One argument comparison; for `MaskedEq`, `(arg & value) == value_two`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArgCmp {
    pub index: u8,
    pub op: CmpOp,
    pub value: u64,
    pub value_two: u64,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    MaskedEq,
}

/// `includes` or `excludes`: capabilities, Go architecture names, a kernel version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Condition {
    pub caps: Vec<String>,
    pub arches: Vec<String>,
    pub min_kernel: Option<(u32, u32)>,
}
