//! The profile's JSON as written: the OCI runtime-spec `linux.seccomp` object and
//! the Docker/containerd profile format (a superset: `archMap`, `includes`,
//! `excludes`, the legacy `name`). Every list is bounded while it is read, so a
//! hostile profile cannot make the parser allocate more than its limit.
//! Unknown fields (`comment`, `listenerMetadata`, ...) are ignored.

use super::limits::{MAX_ARGS_PER_RULE, MAX_NAMES_PER_RULE, MAX_RULES};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::marker::PhantomData;

/// The whole profile.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawProfile {
    pub default_action: String,
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "bounded::<_, _, Architectures>")]
    pub architectures: Vec<String>,
    #[serde(default, deserialize_with = "bounded::<_, _, ArchMap>")]
    pub arch_map: Vec<RawArchMap>,
    #[serde(default, deserialize_with = "bounded::<_, _, Syscalls>")]
    pub syscalls: Vec<RawSyscall>,
    #[serde(default, deserialize_with = "bounded::<_, _, Flags>")]
    pub flags: Vec<String>,
    #[serde(default)]
    pub listener_path: Option<String>,
}

/// One `archMap` entry (Docker format).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawArchMap {
    pub architecture: String,
    #[serde(default, deserialize_with = "bounded::<_, _, Architectures>")]
    pub sub_architectures: Vec<String>,
}

/// One `syscalls` entry.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawSyscall {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "bounded::<_, _, Names>")]
    pub names: Vec<String>,
    pub action: String,
    #[serde(default)]
    pub errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "bounded::<_, _, Args>")]
    pub args: Vec<RawArg>,
    #[serde(default)]
    pub includes: Option<RawFilter>,
    #[serde(default)]
    pub excludes: Option<RawFilter>,
}

/// One argument comparison.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawArg {
    pub index: u32,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}

/// `includes` or `excludes` of a syscalls entry (Docker format).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawFilter {
    #[serde(default, deserialize_with = "bounded::<_, _, Caps>")]
    pub caps: Vec<String>,
    #[serde(default, deserialize_with = "bounded::<_, _, Architectures>")]
    pub arches: Vec<String>,
    #[serde(default)]
    pub min_kernel: Option<String>,
}

/// The bound of one kind of list.
pub(super) trait Limit {
    /// Most entries accepted.
    const MAX: usize;
    /// The field, for the error.
    const FIELD: &'static str;
}

macro_rules! limit {
    ($name:ident, $max:expr, $field:literal) => {
        #[doc = concat!("At most ", stringify!($max), " entries in `", $field, "`.")]
        pub(super) struct $name;
        impl Limit for $name {
            const MAX: usize = $max;
            const FIELD: &'static str = $field;
        }
    };
}

limit!(Syscalls, MAX_RULES, "syscalls");
limit!(Names, MAX_NAMES_PER_RULE, "names");
limit!(Args, MAX_ARGS_PER_RULE, "args");
limit!(Architectures, 32, "architectures");
limit!(ArchMap, 32, "archMap");
limit!(Caps, 64, "caps");
limit!(Flags, 8, "flags");

/// A list of at most `L::MAX` entries; `null` reads as an empty list (moby's
/// profiles write `"subArchitectures": null`).
fn bounded<'de, D, T, L>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
    L: Limit,
{
    deserializer.deserialize_option(BoundedVisitor::<T, L>(PhantomData))
}

struct BoundedVisitor<T, L>(PhantomData<(T, L)>);

impl<'de, T: Deserialize<'de>, L: Limit> Visitor<'de> for BoundedVisitor<T, L> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list of at most {} `{}` entries", L::MAX, L::FIELD)
    }

    fn visit_none<E: de::Error>(self) -> Result<Vec<T>, E> {
        Ok(Vec::new())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vec<T>, E> {
        Ok(Vec::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<T>, D::Error> {
        deserializer.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(L::MAX).min(64));
        while let Some(item) = seq.next_element()? {
            if out.len() == L::MAX {
                return Err(de::Error::custom(format_args!(
                    "`{}` has more than {} entries",
                    L::FIELD,
                    L::MAX
                )));
            }
            out.push(item);
        }
        Ok(out)
    }
}
