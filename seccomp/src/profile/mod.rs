//! The profile model: read from JSON, checked, and nothing else. Which entries
//! apply to a container is `select`'s job; turning them into BPF is `compile`'s.

mod error;
mod json;
mod limits;
mod model;
mod parse;

pub use error::{ProfileError, RuleRef};
pub use limits::{MAX_ARGS_PER_RULE, MAX_JSON_BYTES, MAX_NAMES, MAX_NAMES_PER_RULE, MAX_RULES};
pub(crate) use model::{Action, Arch, ArgCmp, CmpOp, Condition, Rule};
pub use model::{Flag, Profile};

use json::RawProfile;

impl Profile {
    /// Reads and checks a profile: the OCI runtime-spec `linux.seccomp` object or a
    /// Docker/containerd profile file. At most [`MAX_JSON_BYTES`]; lists are bounded
    /// while they are read.
    pub fn from_json(json: &[u8]) -> Result<Profile, ProfileError> {
        if json.len() > MAX_JSON_BYTES {
            return Err(ProfileError::TooLarge {
                size: json.len(),
                max: MAX_JSON_BYTES,
            });
        }
        let raw: RawProfile = serde_json::from_slice(json).map_err(ProfileError::Json)?;
        parse::profile(raw)
    }

    /// The `seccomp(2)` flags the profile asks for. The program does not carry them;
    /// leaving them off only loses logging (`Log`) or keeps speculative-store-bypass
    /// mitigation on (`SpecAllow`), and `Tsync` means nothing before `execve`.
    pub fn flags(&self) -> &[Flag] {
        &self.flags
    }
}

#[cfg(test)]
mod tests;
