use super::*;

fn parse(json: &str) -> Result<Profile, ProfileError> {
    Profile::from_json(json.as_bytes())
}

fn with_rule(rule: &str) -> Result<Profile, ProfileError> {
    parse(&format!(
        r#"{{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{rule}]}}"#
    ))
}

#[test]
fn reads_an_oci_profile() {
    let p = parse(
        r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["ptrace"], "action": "SCMP_ACT_TRACE", "errnoRet": 7},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["kill"], "action": "SCMP_ACT_KILL"},
                {"names": ["tkill"], "action": "SCMP_ACT_KILL_THREAD"},
                {"names": ["tgkill"], "action": "SCMP_ACT_KILL_PROCESS"},
                {"names": ["uname"], "action": "SCMP_ACT_TRAP"},
                {"names": ["getpid"], "action": "SCMP_ACT_LOG"},
                {"names": ["getppid"], "action": "SCMP_ACT_ERRNO"}
            ]
        }"#,
    )
    .unwrap();
    assert_eq!(p.default_action, Action::Errno(38));
    assert_eq!(p.architectures, [Arch::X86_64, Arch::X86, Arch::X32]);
    assert_eq!(p.flags(), [Flag::Log, Flag::SpecAllow]);
    let actions: Vec<Action> = p.rules.iter().map(|r| r.action).collect();
    assert_eq!(
        actions,
        [
            Action::Allow,
            Action::Errno(38),
            Action::Trace(7),
            Action::Allow,
            Action::Allow,
            Action::KillThread,
            Action::KillThread,
            Action::KillProcess,
            Action::Trap,
            Action::Log,
            Action::Errno(1),
        ]
    );
    assert_eq!(p.rules[0].names, ["read", "write"]);
    assert_eq!(
        p.rules[4].args,
        [ArgCmp {
            index: 0,
            op: CmpOp::MaskedEq,
            value: 0x7E02_0000,
            value_two: 0
        }]
    );
}

#[test]
fn reads_a_docker_profile() {
    let p = parse(
        r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "archMap": [
                {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": null}
            ],
            "syscalls": [
                {"name": "chroot", "action": "SCMP_ACT_ALLOW", "args": [],
                 "comment": "legacy single name", "includes": {"caps": ["CAP_SYS_CHROOT"]}, "excludes": {}},
                {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"minKernel": "4.8", "arches": ["amd64"]},
                 "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390x"]}}
            ]
        }"#,
    )
    .unwrap();
    assert_eq!(
        p.arch_map,
        [
            (Arch::X86_64, vec![Arch::X86, Arch::X32]),
            (Arch::Riscv64, vec![])
        ]
    );
    assert_eq!(p.rules[0].names, ["chroot"]);
    assert_eq!(p.rules[0].includes.caps, ["CAP_SYS_CHROOT"]);
    assert_eq!(p.rules[1].includes.min_kernel, Some((4, 8)));
    assert_eq!(p.rules[1].includes.arches, ["amd64"]);
    assert_eq!(p.rules[1].excludes.caps, ["CAP_SYS_ADMIN"]);
}

#[test]
fn reads_a_profile_with_nothing_but_a_default_action() {
    let p = parse(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":null,"architectures":null}"#)
        .unwrap();
    assert_eq!(p.default_action, Action::Allow);
    assert!(p.rules.is_empty() && p.architectures.is_empty());
}

#[test]
fn refuses_profiles_over_the_size_limit() {
    let big = vec![b' '; MAX_JSON_BYTES + 1];
    let err = Profile::from_json(&big).unwrap_err();
    assert!(matches!(err, ProfileError::TooLarge { size, .. } if size == MAX_JSON_BYTES + 1));
}

#[test]
fn refuses_lists_over_their_limits_while_reading() {
    let rules = vec![r#"{"names":["read"],"action":"SCMP_ACT_ALLOW"}"#; MAX_RULES + 1].join(",");
    let err = parse(&format!(
        r#"{{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{rules}]}}"#
    ))
    .unwrap_err();
    assert!(matches!(err, ProfileError::Json(_)), "{err}");
    assert!(
        err.to_string()
            .contains("`syscalls` has more than 4096 entries"),
        "{err}"
    );

    let names = vec![r#""read""#; MAX_NAMES_PER_RULE + 1].join(",");
    let err = with_rule(&format!(
        r#"{{"names":[{names}],"action":"SCMP_ACT_ALLOW"}}"#
    ))
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("`names` has more than 1024 entries"),
        "{err}"
    );

    let args = vec![r#"{"index":0,"value":1,"op":"SCMP_CMP_EQ"}"#; MAX_ARGS_PER_RULE + 1].join(",");
    let err = with_rule(&format!(
        r#"{{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{args}]}}"#
    ))
    .unwrap_err();
    assert!(
        err.to_string().contains("`args` has more than 64 entries"),
        "{err}"
    );
}

#[test]
fn refuses_too_many_names_in_all() {
    let names = vec![r#""read""#; MAX_NAMES_PER_RULE].join(",");
    let rule = format!(r#"{{"names":[{names}],"action":"SCMP_ACT_ALLOW"}}"#);
    let rules = vec![rule; MAX_NAMES / MAX_NAMES_PER_RULE + 1].join(",");
    let err = parse(&format!(
        r#"{{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{rules}]}}"#
    ))
    .unwrap_err();
    assert!(
        matches!(err, ProfileError::TooManyNames { count, max: MAX_NAMES } if count == MAX_NAMES + MAX_NAMES_PER_RULE)
    );
}

#[test]
fn refuses_json_that_is_not_a_profile() {
    for bad in [
        "",
        "[]",
        "{",
        r#"{"syscalls":[]}"#,
        r#"{"defaultAction":1}"#,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","defaultAction":"SCMP_ACT_ALLOW"}"#,
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"]}]}"#,
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"op":"SCMP_CMP_EQ"}]}]}"#,
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":-1,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#,
        r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":-1}"#,
    ] {
        assert!(matches!(parse(bad), Err(ProfileError::Json(_))), "{bad}");
    }
}

#[test]
fn refuses_unknown_actions_naming_the_entry() {
    let err = parse(r#"{"defaultAction":"SCMP_ACT_MAYBE"}"#).unwrap_err();
    assert!(
        matches!(&err, ProfileError::UnknownAction { field, value } if field == "defaultAction" && value == "SCMP_ACT_MAYBE")
    );
    let err = with_rule(r#"{"names":["mkdir"],"action":"ALLOW"}"#).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"seccomp profile: syscalls[0] ("mkdir"): unknown action "ALLOW""#
    );
}

#[test]
fn refuses_notify_and_listeners() {
    let err = parse(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#).unwrap_err();
    assert!(matches!(err, ProfileError::NotifyUnsupported { .. }));
    let err = with_rule(r#"{"names":["mount"],"action":"SCMP_ACT_NOTIFY"}"#).unwrap_err();
    assert!(matches!(&err, ProfileError::NotifyUnsupported { field } if field.contains("mount")));
    let err = parse(r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/agent.sock"}"#)
        .unwrap_err();
    assert!(matches!(err, ProfileError::ListenerUnsupported(_)));
    // An empty path is no listener.
    parse(r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":""}"#).unwrap();
}

#[test]
fn refuses_errno_values_out_of_range() {
    let err = parse(r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":4096}"#).unwrap_err();
    assert!(matches!(
        err,
        ProfileError::ErrnoRetTooLarge {
            value: 4096,
            max: 4095,
            ..
        }
    ));
    let err = with_rule(r#"{"names":["ptrace"],"action":"SCMP_ACT_TRACE","errnoRet":65536}"#)
        .unwrap_err();
    assert!(matches!(
        err,
        ProfileError::ErrnoRetTooLarge {
            value: 65536,
            max: 65535,
            ..
        }
    ));
    // Ignored, as runc ignores it, where the action has no value.
    with_rule(r#"{"names":["read"],"action":"SCMP_ACT_ALLOW","errnoRet":99999}"#).unwrap();
}

#[test]
fn refuses_entries_without_names_or_with_bad_names() {
    assert!(matches!(
        with_rule(r#"{"names":[],"action":"SCMP_ACT_ALLOW"}"#),
        Err(ProfileError::NoNames(RuleRef {
            index: 0,
            name: None
        }))
    ));
    assert!(matches!(
        with_rule(r#"{"name":"read","names":["write"],"action":"SCMP_ACT_ALLOW"}"#),
        Err(ProfileError::NameAndNames(_))
    ));
    for bad in ["", "Read", "read;", "../x", &"a".repeat(65)] {
        let err = with_rule(&format!(
            r#"{{"names":["read",{bad:?}],"action":"SCMP_ACT_ALLOW"}}"#
        ))
        .unwrap_err();
        assert!(
            matches!(&err, ProfileError::BadName { name, .. } if name == bad),
            "{bad}: {err}"
        );
    }
}

#[test]
fn refuses_bad_argument_comparisons() {
    let err = with_rule(
        r#"{"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":6,"value":0,"op":"SCMP_CMP_EQ"}]}"#,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        ProfileError::ArgIndex {
            index: 6,
            arg: 0,
            ..
        }
    ));
    let err = with_rule(
        r#"{"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"},{"index":0,"value":0,"op":"EQ"}]}"#,
    )
    .unwrap_err();
    assert!(matches!(&err, ProfileError::UnknownOp { arg: 1, value, .. } if value == "EQ"));
    assert!(
        err.to_string()
            .contains(r#"syscalls[0] ("personality"): args[1]"#),
        "{err}"
    );
}

#[test]
fn refuses_unknown_architectures_and_flags() {
    let err = parse(r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_VAX"]}"#)
        .unwrap_err();
    assert!(
        matches!(&err, ProfileError::UnknownArch { field, value } if field == "architectures" && value == "SCMP_ARCH_VAX")
    );
    let err = parse(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","archMap":[{"architecture":"x86_64","subArchitectures":[]}]}"#,
    )
    .unwrap_err();
    assert!(matches!(err, ProfileError::UnknownArch { .. }));
    let err = parse(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
            "archMap":[{"architecture":"SCMP_ARCH_X86_64"}]}"#,
    )
    .unwrap_err();
    assert!(matches!(err, ProfileError::ArchitecturesAndArchMap));
    let err =
        parse(r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_NEW_LISTENER"]}"#)
            .unwrap_err();
    assert!(matches!(err, ProfileError::UnknownFlag(_)));
}

#[test]
fn refuses_bad_conditions() {
    let err = with_rule(
        r#"{"names":["ptrace"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"four"}}"#,
    )
    .unwrap_err();
    assert!(matches!(&err, ProfileError::BadMinKernel { value, .. } if value == "four"));
    for bad in ["4", "4.8.1", "4.", ".8", "-4.8"] {
        let json = format!(
            r#"{{"names":["ptrace"],"action":"SCMP_ACT_ALLOW","excludes":{{"minKernel":"{bad}"}}}}"#
        );
        assert!(
            matches!(with_rule(&json), Err(ProfileError::BadMinKernel { .. })),
            "{bad}"
        );
    }
    let err =
        with_rule(r#"{"names":["mount"],"action":"SCMP_ACT_ALLOW","includes":{"caps":[""]}}"#)
            .unwrap_err();
    assert!(matches!(err, ProfileError::BadConditionName { .. }));
}
