//! Syscall names to the numbers libseccomp adds rules for, per part of the program:
//! x86_64, and the i386/x32 ABIs.

use libseccomp::{ScmpArch, ScmpSyscall};

/// Syscalls newer than libseccomp 2.5.4's table (Debian 12's), with their x86_64
/// numbers from the kernel's arch/x86/entry/syscalls/syscall_64.tbl; `None` for
/// those that exist on other architectures only. A newer libseccomp knows them
/// itself and this table is not consulted.
const NEWER_THAN_LIBSECCOMP: &[(&str, Option<i32>)] = &[
    ("uretprobe", Some(335)),
    ("statmount", Some(457)),
    ("listmount", Some(458)),
    ("lsm_get_self_attr", Some(459)),
    ("lsm_set_self_attr", Some(460)),
    ("lsm_list_modules", Some(461)),
    ("mseal", Some(462)),
    ("setxattrat", Some(463)),
    ("getxattrat", Some(464)),
    ("listxattrat", Some(465)),
    ("removexattrat", Some(466)),
    ("open_tree_attr", Some(467)),
    ("file_getattr", Some(468)),
    ("file_setattr", Some(469)),
    ("riscv_hwprobe", None),
];

/// Where a syscall name can have rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// The number for the x86_64 part; `None` when x86_64 has no such syscall.
    pub x86_64: Option<ScmpSyscall>,
    /// The (libseccomp) number for the i386/x32 part, which libseccomp translates
    /// per ABI; `None` when neither ABI has it or libseccomp does not know it.
    pub compat: Option<ScmpSyscall>,
}

/// Resolves a name; `None` when no architecture has a syscall of that name.
pub(crate) fn resolve(name: &str) -> Option<Resolved> {
    let Ok(any) = ScmpSyscall::from_name(name) else {
        return newer(name);
    };
    let on = |arch| ScmpSyscall::from_name_by_arch(name, arch).is_ok_and(|nr| i32::from(nr) >= 0);
    Some(Resolved {
        x86_64: on(ScmpArch::X8664).then_some(any),
        compat: (on(ScmpArch::X86) || on(ScmpArch::X32)).then_some(any),
    })
}

fn newer(name: &str) -> Option<Resolved> {
    let (_, nr) = NEWER_THAN_LIBSECCOMP.iter().find(|(n, _)| *n == name)?;
    Some(Resolved {
        x86_64: nr.map(ScmpSyscall::from),
        compat: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_64_names_resolve_to_their_numbers() {
        let getpid = resolve("getpid").unwrap();
        assert_eq!(getpid.x86_64.map(i32::from), Some(39));
        assert!(getpid.compat.is_some());
        assert_eq!(resolve("mkdir").unwrap().x86_64.map(i32::from), Some(83));
    }

    #[test]
    fn names_of_other_architectures_only_have_no_x86_64_number() {
        // i386 only: the compat part has it, x86_64 not.
        let llseek = resolve("_llseek").unwrap();
        assert_eq!(llseek.x86_64, None);
        assert!(llseek.compat.is_some());
        // ARM only: neither part.
        let arm = resolve("arm_fadvise64_64").unwrap();
        assert_eq!(
            arm,
            Resolved {
                x86_64: None,
                compat: None
            }
        );
        assert_eq!(resolve("riscv_hwprobe").unwrap().x86_64, None);
    }

    #[test]
    fn syscalls_newer_than_the_library_still_resolve_on_x86_64() {
        assert_eq!(resolve("mseal").unwrap().x86_64.map(i32::from), Some(462));
        assert_eq!(
            resolve("getxattrat").unwrap().x86_64.map(i32::from),
            Some(464)
        );
    }

    #[test]
    fn unknown_names_do_not_resolve() {
        assert_eq!(resolve("no_such_syscall"), None);
        assert_eq!(resolve("getpidd"), None);
    }
}
