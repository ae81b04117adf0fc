//! Kubernetes' `RuntimeDefault`: containerd's default profile, kept as data in
//! `runtime-default.json` (its origin is in the crate's README).

use crate::profile::{Profile, ProfileError};

/// The profile's JSON, compiled into the binary.
const RUNTIME_DEFAULT_JSON: &str = include_str!("../runtime-default.json");

impl Profile {
    /// containerd's default profile (`RuntimeDefault`): EPERM for every syscall but
    /// those it allows, with blocks that depend on the container's capabilities
    /// (e.g. `mount`, `unshare` and unrestricted `clone` with `CAP_SYS_ADMIN`),
    /// chosen by [`compile`](crate::compile).
    ///
    /// Fails only if the shipped JSON were broken, which this crate's tests rule out.
    pub fn runtime_default() -> Result<Profile, ProfileError> {
        Profile::from_json(RUNTIME_DEFAULT_JSON.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use crate::profile::{Action, CmpOp};
    use crate::{compile, Profile};

    fn default() -> Profile {
        Profile::runtime_default().unwrap()
    }

    fn names_with(p: &Profile, cap: &str) -> Vec<String> {
        p.rules
            .iter()
            .filter(|r| r.includes.caps.iter().any(|c| c == cap))
            .flat_map(|r| r.names.clone())
            .collect()
    }

    #[test]
    fn denies_with_eperm_and_maps_x86_64_to_i386_and_x32() {
        let p = default();
        assert_eq!(p.default_action, Action::Errno(1));
        assert_eq!(
            crate::select::abis(&p),
            crate::select::Abis {
                x86: true,
                x32: true
            }
        );
        assert!(p.flags().is_empty());
    }

    #[test]
    fn allows_the_common_syscalls_and_not_the_dangerous_ones() {
        let p = default();
        let allowed = &p.rules[0];
        assert_eq!(allowed.action, Action::Allow);
        assert!(allowed.args.is_empty() && allowed.includes.caps.is_empty());
        for name in [
            "read",
            "write",
            "getpid",
            "mkdir",
            "execve",
            "clock_gettime",
            "_llseek",
        ] {
            assert!(allowed.names.iter().any(|n| n == name), "{name}");
        }
        let all: Vec<&String> = p.rules.iter().flat_map(|r| &r.names).collect();
        for name in [
            "keyctl",
            "add_key",
            "request_key",
            "io_uring_setup",
            "kexec_load",
            "userfaultfd",
        ] {
            assert!(!all.iter().any(|n| *n == name), "{name}");
        }
    }

    #[test]
    fn capability_blocks_are_containerds() {
        let p = default();
        let admin = names_with(&p, "CAP_SYS_ADMIN");
        for name in [
            "mount", "umount2", "unshare", "setns", "clone", "clone3", "bpf",
        ] {
            assert!(admin.iter().any(|n| n == name), "{name}");
        }
        assert_eq!(names_with(&p, "CAP_SYS_CHROOT"), ["chroot"]);
        assert_eq!(names_with(&p, "CAP_SYS_BOOT"), ["reboot"]);
        assert_eq!(names_with(&p, "CAP_DAC_READ_SEARCH"), ["open_by_handle_at"]);
        assert!(names_with(&p, "CAP_SYS_PTRACE")
            .iter()
            .any(|n| n == "ptrace"));
        assert_eq!(names_with(&p, "CAP_BPF"), ["bpf"]);
        assert_eq!(names_with(&p, "CAP_PERFMON"), ["perf_event_open"]);
    }

    #[test]
    fn without_cap_sys_admin_clone_is_masked_and_clone3_fails_with_enosys() {
        let p = default();
        let chosen: Vec<_> = crate::select::rules(&p, &[]).collect();
        let clone = chosen
            .iter()
            .find(|r| r.names == ["clone"])
            .expect("the namespace-free clone rule");
        assert_eq!(clone.args.len(), 1);
        assert_eq!(clone.args[0].index, 0);
        assert_eq!(clone.args[0].op, CmpOp::MaskedEq);
        assert_eq!(clone.args[0].value, 0x7E02_0000);
        let clone3 = chosen.iter().find(|r| r.names == ["clone3"]).unwrap();
        assert_eq!(clone3.action, Action::Errno(38));

        let with_admin: Vec<_> = crate::select::rules(&p, &["CAP_SYS_ADMIN"]).collect();
        assert!(!with_admin
            .iter()
            .any(|r| r.names == ["clone"] || r.names == ["clone3"]));
    }

    #[test]
    fn compiles_for_every_capability_set_within_the_kernel_limit() {
        let p = default();
        let all_caps = [
            "CAP_SYS_ADMIN",
            "CAP_SYS_PTRACE",
            "CAP_SYS_BOOT",
            "CAP_SYS_CHROOT",
            "CAP_SYS_MODULE",
            "CAP_SYS_PACCT",
            "CAP_SYS_RAWIO",
            "CAP_SYS_TIME",
            "CAP_SYS_TTY_CONFIG",
            "CAP_SYS_NICE",
            "CAP_SYSLOG",
            "CAP_BPF",
            "CAP_PERFMON",
            "CAP_DAC_READ_SEARCH",
        ];
        let none = compile(&p, &[]).unwrap();
        let all = compile(&p, &all_caps).unwrap();
        for program in [&none, &all] {
            assert_eq!(program.len() % 8, 0);
            assert!(program.len() / 8 <= crate::MAX_INSTRUCTIONS);
        }
        assert_ne!(none, all);
    }
}
