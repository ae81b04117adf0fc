//! Capability sets of container processes: parsing, containerd's default set, and
//! applying them in the child before exec.

use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use vmlet_proto::agent;

/// containerd's (and Docker's) default capability set.
pub const DEFAULT: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// A capability name that is not known, or sets that do not fit together.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// Unknown name.
    #[error("unknown capability {0:?}")]
    Unknown(String),
    /// A set that must be a subset of another is not.
    #[error("{inner} capabilities must be a subset of the {outer} set ({cap} is not)")]
    NotSubset {
        /// The smaller set.
        inner: &'static str,
        /// The larger set.
        outer: &'static str,
        /// The offending capability.
        cap: Capability,
    },
}

/// The five capability sets of a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapSets {
    /// Bounding set.
    pub bounding: CapsHashSet,
    /// Effective set.
    pub effective: CapsHashSet,
    /// Permitted set.
    pub permitted: CapsHashSet,
    /// Inheritable set.
    pub inheritable: CapsHashSet,
    /// Ambient set.
    pub ambient: CapsHashSet,
}

fn parse(names: &[String]) -> Result<CapsHashSet, CapsError> {
    names
        .iter()
        .map(|n| {
            let canonical = if n.to_ascii_uppercase().starts_with("CAP_") {
                n.to_ascii_uppercase()
            } else {
                format!("CAP_{}", n.to_ascii_uppercase())
            };
            Capability::from_str(&canonical).map_err(|_| CapsError::Unknown(n.clone()))
        })
        .collect()
}

fn subset(
    inner: &CapsHashSet,
    inner_name: &'static str,
    outer: &CapsHashSet,
    outer_name: &'static str,
) -> Result<(), CapsError> {
    match inner.iter().find(|c| !outer.contains(c)) {
        Some(&cap) => Err(CapsError::NotSubset {
            inner: inner_name,
            outer: outer_name,
            cap,
        }),
        None => Ok(()),
    }
}

impl CapSets {
    /// containerd's default for a process running as `uid`: the default set bounds it;
    /// root also has it permitted and effective.
    pub fn default_for(uid: u32) -> CapSets {
        let set: CapsHashSet = DEFAULT.into_iter().collect();
        let (effective, permitted) = if uid == 0 {
            (set.clone(), set.clone())
        } else {
            Default::default()
        };
        CapSets {
            bounding: set,
            effective,
            permitted,
            ..Default::default()
        }
    }

    /// Parses and checks the protocol's sets.
    pub fn from_proto(c: &agent::Capabilities) -> Result<CapSets, CapsError> {
        let sets = CapSets {
            bounding: parse(&c.bounding)?,
            effective: parse(&c.effective)?,
            permitted: parse(&c.permitted)?,
            inheritable: parse(&c.inheritable)?,
            ambient: parse(&c.ambient)?,
        };
        subset(&sets.effective, "effective", &sets.permitted, "permitted")?;
        subset(&sets.ambient, "ambient", &sets.permitted, "permitted")?;
        subset(&sets.ambient, "ambient", &sets.inheritable, "inheritable")?;
        Ok(sets)
    }

    /// Drops every capability outside the bounding set. Runs in the child, still root.
    pub fn apply_bounding(&self) -> Result<(), caps::errors::CapsError> {
        for cap in caps::all() {
            if !self.bounding.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap)? {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
        Ok(())
    }

    /// Sets the other four sets. Runs in the child after the user switch (with
    /// `PR_SET_KEEPCAPS` for a non-root user).
    pub fn apply_sets(&self) -> Result<(), caps::errors::CapsError> {
        // Inheritable first, while the full permitted set still allows raising it.
        caps::set(None, CapSet::Inheritable, &self.inheritable)?;
        caps::set(None, CapSet::Effective, &self.effective)?;
        caps::set(None, CapSet::Permitted, &self.permitted)?;
        caps::set(None, CapSet::Ambient, &self.ambient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_containerd() {
        let root = CapSets::default_for(0);
        assert_eq!(root.bounding.len(), 14);
        assert_eq!(root.effective, root.bounding);
        let user = CapSets::default_for(1000);
        assert_eq!(user.bounding.len(), 14);
        assert!(user.effective.is_empty() && user.permitted.is_empty());
    }

    #[test]
    fn names_parse_with_or_without_prefix() {
        let c = agent::Capabilities {
            bounding: vec!["CAP_NET_ADMIN".into(), "chown".into()],
            effective: vec!["CAP_CHOWN".into()],
            permitted: vec!["cap_chown".into()],
            ..Default::default()
        };
        let sets = CapSets::from_proto(&c).unwrap();
        assert!(sets.bounding.contains(&Capability::CAP_NET_ADMIN));
        assert!(sets.effective.contains(&Capability::CAP_CHOWN));
    }

    #[test]
    fn bad_sets_are_refused() {
        let unknown = agent::Capabilities {
            bounding: vec!["CAP_FLY".into()],
            ..Default::default()
        };
        assert!(matches!(
            CapSets::from_proto(&unknown),
            Err(CapsError::Unknown(_))
        ));
        let not_subset = agent::Capabilities {
            effective: vec!["CAP_KILL".into()],
            ..Default::default()
        };
        assert!(matches!(
            CapSets::from_proto(&not_subset),
            Err(CapsError::NotSubset { .. })
        ));
    }
}
