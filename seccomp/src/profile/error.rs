//! Why a profile was refused; each error names the field or syscall entry to fix.

use std::fmt;

/// A `syscalls` entry, named in errors by its position and first syscall name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    /// Position in `syscalls`, from 0.
    pub index: usize,
    /// Its first name, if it has one.
    pub name: Option<String>,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "syscalls[{}] ({name:?})", self.index),
            None => write!(f, "syscalls[{}]", self.index),
        }
    }
}

/// A seccomp profile that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The JSON is larger than the limit.
    #[error("seccomp profile is {size} bytes, more than the {max} accepted")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON, not of the profile's shape, or a list over its limit.
    #[error("seccomp profile: {0}")]
    Json(#[source] serde_json::Error),
    /// More syscall names in all entries together than the limit.
    #[error("seccomp profile names {count} syscalls in all, more than the {max} accepted")]
    TooManyNames {
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An action that is not one of seccomp's.
    #[error("seccomp profile: {field}: unknown action {value:?}")]
    UnknownAction {
        /// `defaultAction` or the entry.
        field: String,
        /// The action given.
        value: String,
    },
    /// `SCMP_ACT_NOTIFY`: needs a notify agent, which vmlet does not have.
    #[error(
        "seccomp profile: {field}: SCMP_ACT_NOTIFY is not supported (no seccomp notify agent)"
    )]
    NotifyUnsupported {
        /// `defaultAction` or the entry.
        field: String,
    },
    /// `listenerPath`: a notify agent's socket, which vmlet does not support.
    #[error("seccomp profile: listenerPath {0:?} is not supported (no seccomp notify agent)")]
    ListenerUnsupported(String),
    /// An errno or trace value out of range.
    #[error("seccomp profile: {field}: errnoRet {value} is more than {max}")]
    ErrnoRetTooLarge {
        /// `defaultErrnoRet` or the entry.
        field: String,
        /// The value given.
        value: u32,
        /// The largest accepted for the action.
        max: u32,
    },
    /// An entry without syscall names.
    #[error("seccomp profile: {0}: no syscall names")]
    NoNames(RuleRef),
    /// An entry with both `name` and `names`.
    #[error("seccomp profile: {0}: has both `name` and `names`; use `names`")]
    NameAndNames(RuleRef),
    /// A syscall name that cannot be one (empty, too long, not `[a-z0-9_]`).
    #[error("seccomp profile: {rule}: {name:?} is not a syscall name")]
    BadName {
        /// The entry.
        rule: RuleRef,
        /// The name given.
        name: String,
    },
    /// A comparison operator that is not one of seccomp's.
    #[error("seccomp profile: {rule}: args[{arg}]: unknown op {value:?}")]
    UnknownOp {
        /// The entry.
        rule: RuleRef,
        /// Position in its `args`.
        arg: usize,
        /// The op given.
        value: String,
    },
    /// An argument index past the six a syscall has.
    #[error("seccomp profile: {rule}: args[{arg}]: index {index} is not 0 to 5")]
    ArgIndex {
        /// The entry.
        rule: RuleRef,
        /// Position in its `args`.
        arg: usize,
        /// The index given.
        index: u32,
    },
    /// An architecture name that is not one of libseccomp's.
    #[error("seccomp profile: {field}: unknown architecture {value:?}")]
    UnknownArch {
        /// The field.
        field: String,
        /// The name given.
        value: String,
    },
    /// Both `architectures` and `archMap`.
    #[error("seccomp profile: has both `architectures` and `archMap`; use one")]
    ArchitecturesAndArchMap,
    /// A filter flag that is not one of seccomp's.
    #[error("seccomp profile: unknown flag {0:?}")]
    UnknownFlag(String),
    /// A `minKernel` that is not `MAJOR.MINOR`.
    #[error("seccomp profile: {rule}: minKernel {value:?} is not a kernel version like \"4.8\"")]
    BadMinKernel {
        /// The entry.
        rule: RuleRef,
        /// The value given.
        value: String,
    },
    /// A capability or architecture name in `includes`/`excludes` that is too long
    /// or empty.
    #[error("seccomp profile: {rule}: {value:?} is not a capability or architecture name")]
    BadConditionName {
        /// The entry.
        rule: RuleRef,
        /// The value given.
        value: String,
    },
}
