//! Which parts of a profile apply to a container in a vmlet guest: the entries
//! whose `includes`/`excludes` match its capabilities, the guest's architecture
//! and kernel (as containerd and moby decide it), and the ABIs the program filters.

use crate::profile::{Arch, Condition, Profile, Rule};

/// The guest's architecture, as `includes.arches` names it (Go's `GOARCH`, which
/// moby and containerd compare with).
const GUEST_GOARCH: &str = "amd64";

/// The guest kernel's version, for `minKernel`: vmlet's guests run Debian's
/// linux-source-6.1 (scripts/build-guest-kernel.sh). Raise it with the kernel.
pub(crate) const GUEST_KERNEL: (u32, u32) = (6, 1);

/// The ABIs of the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Abis {
    /// i386 (`int 0x80`, `SCMP_ARCH_X86`).
    pub x86: bool,
    /// x32 (`SCMP_ARCH_X32`).
    pub x32: bool,
}

/// The entries that apply to a container with these capabilities, in order.
pub(crate) fn rules<'p>(profile: &'p Profile, caps: &'p [&str]) -> impl Iterator<Item = &'p Rule> {
    profile.rules.iter().filter(move |r| applies(r, caps))
}

/// x86_64 always; i386 and x32 when the profile's `architectures`, or the
/// `subArchitectures` of its `archMap` entry for `SCMP_ARCH_X86_64`, name them.
pub(crate) fn abis(profile: &Profile) -> Abis {
    let listed: &[Arch] = if profile.architectures.is_empty() {
        profile
            .arch_map
            .iter()
            .find(|(main, _)| *main == Arch::X86_64)
            .map_or(&[], |(_, subs)| subs.as_slice())
    } else {
        &profile.architectures
    };
    Abis {
        x86: listed.contains(&Arch::X86),
        x32: listed.contains(&Arch::X32),
    }
}

fn applies(rule: &Rule, caps: &[&str]) -> bool {
    included(&rule.includes, caps) && !excluded(&rule.excludes, caps)
}

/// Every listed capability held, the guest's architecture listed, the kernel at
/// least `minKernel`; an empty part holds.
fn included(c: &Condition, caps: &[&str]) -> bool {
    c.caps.iter().all(|want| has_cap(caps, want))
        && (c.arches.is_empty() || c.arches.iter().any(|a| a == GUEST_GOARCH))
        && c.min_kernel.is_none_or(|min| GUEST_KERNEL >= min)
}

/// Any listed capability held, the guest's architecture listed, or the kernel at
/// least `minKernel`.
fn excluded(c: &Condition, caps: &[&str]) -> bool {
    c.caps.iter().any(|cap| has_cap(caps, cap))
        || c.arches.iter().any(|a| a == GUEST_GOARCH)
        || c.min_kernel.is_some_and(|min| GUEST_KERNEL >= min)
}

/// Capability names compare without case and with or without `CAP_` (CRI sends
/// both spellings).
fn has_cap(caps: &[&str], want: &str) -> bool {
    let bare = |c: &str| -> String {
        let upper = c.to_ascii_uppercase();
        upper
            .strip_prefix("CAP_")
            .map(str::to_string)
            .unwrap_or(upper)
    };
    let want = bare(want);
    caps.iter().any(|c| bare(c) == want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Profile;

    fn profile(json: &str) -> Profile {
        Profile::from_json(json.as_bytes()).unwrap()
    }

    fn selected(p: &Profile, caps: &[&str]) -> Vec<String> {
        rules(p, caps).map(|r| r.names.join(",")).collect()
    }

    #[test]
    fn capabilities_include_and_exclude_entries() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["getpid"],"action":"SCMP_ACT_ALLOW"},
                {"names":["mount"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}},
                {"names":["both"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN","CAP_NET_ADMIN"]}},
                {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38,"excludes":{"caps":["CAP_SYS_ADMIN"]}}
            ]}"#,
        );
        assert_eq!(selected(&p, &[]), ["getpid", "clone3"]);
        assert_eq!(selected(&p, &["CAP_SYS_ADMIN"]), ["getpid", "mount"]);
        assert_eq!(
            selected(&p, &["sys_admin", "NET_ADMIN"]),
            ["getpid", "mount", "both"]
        );
        assert_eq!(selected(&p, &["CAP_NET_ADMIN"]), ["getpid", "clone3"]);
    }

    #[test]
    fn arches_and_kernel_versions_select_like_moby() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["amd"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["amd64","x32"]}},
                {"names":["arm"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["arm64"]}},
                {"names":["notamd"],"action":"SCMP_ACT_ALLOW","excludes":{"arches":["amd64"]}},
                {"names":["old"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"4.8"}},
                {"names":["future"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"99.0"}},
                {"names":["beforefuture"],"action":"SCMP_ACT_ALLOW","excludes":{"minKernel":"99.0"}}
            ]}"#,
        );
        assert_eq!(selected(&p, &[]), ["amd", "old", "beforefuture"]);
    }

    #[test]
    fn abis_come_from_architectures_or_the_x86_64_arch_map_entry() {
        let none = profile(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#);
        assert_eq!(
            abis(&none),
            Abis {
                x86: false,
                x32: false
            }
        );
        let listed = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"]}"#,
        );
        assert_eq!(
            abis(&listed),
            Abis {
                x86: true,
                x32: false
            }
        );
        let mapped = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","archMap":[
                {"architecture":"SCMP_ARCH_AARCH64","subArchitectures":["SCMP_ARCH_ARM"]},
                {"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X32"]}]}"#,
        );
        assert_eq!(
            abis(&mapped),
            Abis {
                x86: false,
                x32: true
            }
        );
    }
}
