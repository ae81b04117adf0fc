use super::*;

fn snapshot() -> VmSnapshot {
    let regs = kvm_bindings::kvm_regs {
        rip: 0xffff_ffff_8100_0000,
        ..Default::default()
    };
    VmSnapshot {
        vmm_version: vmm_version(),
        vcpus: 1,
        mem_mib: 128,
        memory: vec![RegionState {
            guest_addr: 0,
            len: 128 << 20,
            file_offset: 0,
        }],
        vm: VmState {
            pit: Default::default(),
            clock: Default::default(),
            irqchips: vec![Default::default(); 3],
        },
        vcpu_states: vec![VcpuState {
            cpuid: vec![Default::default(); 2],
            msrs: vec![kvm_bindings::kvm_msr_entry {
                index: 0x10,
                data: 42,
                ..Default::default()
            }],
            regs,
            sregs: Default::default(),
            xsave: Default::default(),
            xcrs: Default::default(),
            debug_regs: Default::default(),
            lapic: Default::default(),
            mp_state: Default::default(),
            events: Default::default(),
            tsc_khz: Some(2_000_000),
        }],
        serial: SerialSnapshot::default(),
        devices: Vec::new(),
    }
}

fn written() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SNAPSHOT_STATE_FILE);
    write_state(&path, &snapshot()).unwrap();
    (dir, path)
}

fn reason(path: &Path) -> String {
    match read_state(path) {
        Err(SnapshotError::Invalid { reason, .. }) => reason,
        other => panic!("not refused as invalid: {other:?}"),
    }
}

#[test]
fn a_state_file_reads_back_as_written() {
    let (_dir, path) = written();
    let back = read_state(&path).unwrap();
    assert_eq!(back.vcpu_states[0].regs.rip, 0xffff_ffff_8100_0000);
    assert_eq!(back.vcpu_states[0].msrs[0].data, 42);
    assert_eq!(back.vcpu_states[0].tsc_khz, Some(2_000_000));
    assert_eq!(back.memory, snapshot().memory);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("vmlet-snapshot\n{\"format\":1,"),
        "{}",
        &text[..40]
    );
    // Never over an existing snapshot: restored VMs map its files.
    assert!(write_state(&path, &snapshot()).is_err());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_truncated_state_file_is_refused() {
    let (_dir, path) = written();
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let r = reason(&path);
    assert!(r.contains("truncated"), "{r}");
    std::fs::write(&path, "vmlet-snapshot\n{\"format\":1").unwrap();
    assert!(reason(&path).contains("no header line"));
    std::fs::write(&path, "").unwrap();
    assert!(reason(&path).contains("no first line"));
}

#[test]
fn a_corrupted_state_file_is_refused() {
    let (_dir, path) = written();
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let r = reason(&path);
    assert!(r.contains("corrupted"), "{r}");
    std::fs::write(&path, b"ELF\x7f not a snapshot\n").unwrap();
    assert!(reason(&path).contains("does not start with"));
}

#[test]
fn a_snapshot_of_another_format_is_refused_by_name() {
    let (_dir, path) = written();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("\"format\":1,", "\"format\":7,", 1)).unwrap();
    let r = reason(&path);
    assert!(
        r.contains("snapshot format 7, this VMM reads format 1: take a new snapshot"),
        "{r}"
    );
    let huge = format!(
        "vmlet-snapshot\n{{\"format\":1,\"length\":{},\"sha256\":\"\"}}\n",
        MAX_STATE_BYTES + 1
    );
    std::fs::write(&path, huge).unwrap();
    assert!(reason(&path).contains("over the limit"));
}
