//! Bad input to vmlet-vmm: one clear line on stderr and a non-zero exit, never a
//! panic or a hang.

use std::os::unix::net::UnixListener;
use std::process::Command;
use vmlet_integration_tests::{kernel, vmm_binary, vmm_output};

fn assert_one_line_error(args: &[&str], needle: &str) {
    let (status, stderr) = vmm_output(args);
    assert_eq!(status.code(), Some(1), "args {args:?}: stderr {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got {stderr:?}");
    assert!(lines[0].starts_with("vmlet-vmm: "), "{stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn missing_and_unreadable_kernel() {
    assert_one_line_error(&[], "no kernel given");
    assert_one_line_error(
        &["--kernel", "/nonexistent/vmlinux"],
        "/nonexistent/vmlinux",
    );
    assert_one_line_error(&["--kernel", "/etc/hostname"], "cannot load kernel");
}

#[test]
fn bad_sizes() {
    let k = kernel();
    let k = k.to_str().unwrap();
    assert_one_line_error(
        &["--kernel", k, "--mem-mib", "1"],
        "mem_mib must be between",
    );
    assert_one_line_error(&["--kernel", k, "--vcpus", "0"], "vcpus must be between");
    assert_one_line_error(&["--kernel", k, "--vcpus", "200"], "vcpus must be between");
    assert_one_line_error(
        &["--kernel", k, "--net", "tap=t0,mac=nothex"],
        "invalid MAC address",
    );
    assert_one_line_error(&["--kernel", k, "--vsock", "cid=1,uds=/tmp/x"], "cid");
    assert_one_line_error(
        &["--kernel", k, "--drive", "id=a,path=/nonexistent"],
        "/nonexistent",
    );
}

#[test]
fn bad_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.json");
    std::fs::write(&path, r#"{"kernel": "/k", "vcpus": "many"}"#).unwrap();
    assert_one_line_error(&["--config", path.to_str().unwrap()], "invalid config");
    assert_one_line_error(&["--config", "/nonexistent.json"], "cannot read config");
}

#[test]
fn busy_control_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let _live = UnixListener::bind(&path).unwrap();
    let k = kernel();
    assert_one_line_error(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--control-socket",
            path.to_str().unwrap(),
        ],
        "in use",
    );
}

#[test]
fn busy_vsock_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vsock.sock");
    let _live = UnixListener::bind(&path).unwrap();
    let k = kernel();
    let vsock = format!("cid=3,uds={}", path.display());
    assert_one_line_error(
        &["--kernel", k.to_str().unwrap(), "--vsock", &vsock],
        "vsock",
    );
}

#[test]
fn no_kvm_device() {
    // Hide /dev/kvm in a private mount namespace.
    let k = kernel();
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none /dev && exec {} --kernel {}",
            vmm_binary().display(),
            k.display()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot open /dev/kvm"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
