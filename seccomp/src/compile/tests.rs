use super::*;

fn profile(json: &str) -> Profile {
    Profile::from_json(json.as_bytes()).unwrap()
}

fn deny_all_but(rules: &str) -> Profile {
    profile(&format!(
        r#"{{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{rules}]}}"#
    ))
}

/// The `k` of every `jeq #k` (BPF_JMP | BPF_JEQ | BPF_K) in a program.
fn jeq_constants(program: &[u8]) -> Vec<u32> {
    program
        .chunks_exact(INSTRUCTION_BYTES)
        .filter(|i| u16::from_le_bytes([i[0], i[1]]) == 0x15)
        .map(|i| u32::from_le_bytes([i[4], i[5], i[6], i[7]]))
        .collect()
}

#[test]
fn a_program_is_whole_little_endian_instructions_ending_in_a_return() {
    let program = compile(
        &deny_all_but(r#"{"names":["getpid"],"action":"SCMP_ACT_ALLOW"}"#),
        &[],
    )
    .unwrap();
    assert_eq!(program.len() % INSTRUCTION_BYTES, 0);
    let last = &program[program.len() - INSTRUCTION_BYTES..];
    // BPF_RET | BPF_K
    assert_eq!(u16::from_le_bytes([last[0], last[1]]), 0x06);
    assert!(
        jeq_constants(&program).contains(&39),
        "getpid is 39 on x86_64"
    );
}

#[test]
fn every_action_and_operator_compiles() {
    let p = deny_all_but(
        r#"{"names":["getpid"],"action":"SCMP_ACT_ALLOW"},
           {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
           {"names":["kill"],"action":"SCMP_ACT_KILL"},
           {"names":["tkill"],"action":"SCMP_ACT_KILL_PROCESS"},
           {"names":["uname"],"action":"SCMP_ACT_TRAP"},
           {"names":["ptrace"],"action":"SCMP_ACT_TRACE","errnoRet":5},
           {"names":["getppid"],"action":"SCMP_ACT_LOG"},
           {"names":["umask"],"action":"SCMP_ACT_ALLOW","args":[
               {"index":0,"value":1,"op":"SCMP_CMP_NE"},
               {"index":1,"value":2,"op":"SCMP_CMP_LT"},
               {"index":2,"value":3,"op":"SCMP_CMP_LE"},
               {"index":3,"value":4,"op":"SCMP_CMP_EQ"},
               {"index":4,"value":5,"op":"SCMP_CMP_GE"},
               {"index":5,"value":6,"op":"SCMP_CMP_GT"}]},
           {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[
               {"index":0,"value":255,"valueTwo":8,"op":"SCMP_CMP_MASKED_EQ"}]}"#,
    );
    compile(&p, &[]).unwrap();
}

#[test]
fn entries_with_the_default_action_add_nothing() {
    let plain = deny_all_but(r#"{"names":["getpid"],"action":"SCMP_ACT_ALLOW"}"#);
    let redundant = deny_all_but(
        r#"{"names":["getpid"],"action":"SCMP_ACT_ALLOW"},
           {"names":["mkdir"],"action":"SCMP_ACT_ERRNO"},
           {"names":["rmdir"],"action":"SCMP_ACT_ERRNO","errnoRet":1}"#,
    );
    assert_eq!(
        compile(&plain, &[]).unwrap(),
        compile(&redundant, &[]).unwrap()
    );
    // A different errno is a different action.
    let other = deny_all_but(
        r#"{"names":["getpid"],"action":"SCMP_ACT_ALLOW"},
           {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":38}"#,
    );
    assert_ne!(compile(&plain, &[]).unwrap(), compile(&other, &[]).unwrap());
}

#[test]
fn names_of_other_architectures_are_skipped() {
    let plain = deny_all_but(r#"{"names":["getpid"],"action":"SCMP_ACT_ALLOW"}"#);
    let foreign = deny_all_but(
        r#"{"names":["getpid","arm_fadvise64_64","s390_runtime_instr","riscv_hwprobe","_llseek"],"action":"SCMP_ACT_ALLOW"}"#,
    );
    // No i386/x32 part: `_llseek` (i386 only) has nowhere to go either.
    assert_eq!(
        compile(&plain, &[]).unwrap(),
        compile(&foreign, &[]).unwrap()
    );
}

#[test]
fn unknown_names_are_errors() {
    let p = deny_all_but(r#"{"names":["getpid","getpidd"],"action":"SCMP_ACT_ALLOW"}"#);
    let err = compile(&p, &[]).unwrap_err();
    assert!(
        matches!(&err, CompileError::UnknownSyscall(name) if name == "getpidd"),
        "{err}"
    );
    // Also in entries this container does not get.
    let p = deny_all_but(
        r#"{"names":["getpidd"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}}"#,
    );
    assert!(matches!(
        compile(&p, &[]),
        Err(CompileError::UnknownSyscall(_))
    ));
}

#[test]
fn syscalls_newer_than_libseccomp_are_in_the_x86_64_part() {
    let p = profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],
            "syscalls":[{"names":["mseal","getxattrat"],"action":"SCMP_ACT_ALLOW"}]}"#,
    );
    let jeqs = jeq_constants(&compile(&p, &[]).unwrap());
    assert!(jeqs.contains(&462) && jeqs.contains(&464), "{jeqs:?}");
}

#[test]
fn compat_abis_are_checked_by_their_audit_arch() {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;
    let native_only = compile(
        &deny_all_but(r#"{"names":["getpid"],"action":"SCMP_ACT_ALLOW"}"#),
        &[],
    )
    .unwrap();
    let jeqs = jeq_constants(&native_only);
    assert!(jeqs.contains(&AUDIT_ARCH_X86_64) && !jeqs.contains(&AUDIT_ARCH_I386));
    let with_i386 = profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86"],
            "syscalls":[{"names":["getpid","_llseek"],"action":"SCMP_ACT_ALLOW"}]}"#,
    );
    let jeqs = jeq_constants(&compile(&with_i386, &[]).unwrap());
    assert!(jeqs.contains(&AUDIT_ARCH_I386), "{jeqs:?}");
    assert!(jeqs.contains(&140), "_llseek is 140 on i386: {jeqs:?}");
}

#[test]
fn programs_longer_than_the_kernel_accepts_are_refused() {
    // 64-bit values: each rule compares both halves of the argument.
    let rules: Vec<String> = (1..=3000u64)
        .map(|v| {
            let value = (v << 32) | v;
            format!(
                r#"{{"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{{"index":0,"value":{value},"op":"SCMP_CMP_EQ"}}]}}"#
            )
        })
        .collect();
    match compile(&deny_all_but(&rules.join(",")), &[]) {
        Err(CompileError::TooLong { instructions, max }) => {
            assert_eq!(max, MAX_INSTRUCTIONS);
            assert!(instructions > MAX_INSTRUCTIONS);
        }
        Err(e) => panic!("{e}"),
        Ok(program) => panic!("a program of {} instructions", program.len() / 8),
    }
}
