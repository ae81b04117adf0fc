//! How much of a profile is accepted: bounds checked while the JSON is read.

/// Largest profile accepted, in bytes of JSON.
pub const MAX_JSON_BYTES: usize = 1 << 20;
/// Most `syscalls` entries in a profile.
pub const MAX_RULES: usize = 4096;
/// Most names in one `syscalls` entry.
pub const MAX_NAMES_PER_RULE: usize = 1024;
/// Most syscall names in all entries together.
pub const MAX_NAMES: usize = 16384;
/// Most `args` in one `syscalls` entry.
pub const MAX_ARGS_PER_RULE: usize = 64;
