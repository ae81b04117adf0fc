//! The real Go client against the server: kubectl talks to a fake API server that
//! proxies the upgrade to the streaming server, as kubelet does. Every case runs
//! over SPDY and over kubectl's WebSocket default.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Env, Transport};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `stderr` without client-go's own log lines (klog: a severity letter, then
/// `MMDD hh:mm:ss`). Its WebSocket client may log "Unknown stream id 1, discarding
/// message" when the server's first, empty message (the reference server's "session
/// is up") arrives before it registered its streams: a race inside kubectl.
fn without_client_logs(stderr: &[u8]) -> String {
    text(stderr)
        .lines()
        .filter(|l| {
            let b = l.as_bytes();
            !(b.len() > 5
                && matches!(b[0], b'I' | b'W' | b'E' | b'F')
                && b[1..5].iter().all(u8::is_ascii_digit)
                && b[5] == b' ')
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn client_log_lines_are_told_from_the_commands_output() {
    let s = b"E1207 17:05:47.781175   25722 websocket.go:296] Unknown stream id 1\nerr\nE12\n";
    assert_eq!(without_client_logs(s), "err\nE12\n");
}

fn check_upgrades(env: &Env, t: Transport) {
    let want = match t {
        Transport::Spdy => "SPDY/3.1",
        Transport::WebSocket => "websocket",
    };
    let seen = env.api.upgrades.lock().unwrap().clone();
    assert!(!seen.is_empty(), "no streaming request reached the proxy");
    assert!(
        seen.iter().all(|u| u.eq_ignore_ascii_case(want)),
        "expected only {want} upgrades, saw {seen:?}"
    );
}

async fn exec_prints_hello(t: Transport) {
    let env = Env::start().await;
    let out = env
        .run(t, &["exec", "p", "--", "printf", "hello"], b"")
        .await;
    assert_eq!(
        (
            out.status.code(),
            text(&out.stdout),
            without_client_logs(&out.stderr)
        ),
        (Some(0), "hello".into(), String::new())
    );
    check_upgrades(&env, t);
}

#[tokio::test]
async fn spdy_exec_prints_hello() {
    exec_prints_hello(Transport::Spdy).await;
}

#[tokio::test]
async fn websocket_exec_prints_hello() {
    exec_prints_hello(Transport::WebSocket).await;
}

async fn exec_reports_exit_code(t: Transport) {
    let env = Env::start().await;
    let out = env
        .run(
            t,
            &[
                "exec",
                "p",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 3",
            ],
            b"",
        )
        .await;
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert!(
        without_client_logs(&out.stderr).starts_with("err\n"),
        "stderr: {}",
        text(&out.stderr)
    );
    check_upgrades(&env, t);
}

#[tokio::test]
async fn spdy_exec_reports_exit_code() {
    exec_reports_exit_code(Transport::Spdy).await;
}

#[tokio::test]
async fn websocket_exec_reports_exit_code() {
    exec_reports_exit_code(Transport::WebSocket).await;
}

async fn exec_reads_stdin(t: Transport) {
    let env = Env::start().await;
    let input: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let out = env
        .run(
            t,
            &["exec", "-i", "p", "--", "sh", "-c", "cat; echo done"],
            &input,
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let mut want = input.clone();
    want.extend_from_slice(b"done\n");
    assert!(
        out.stdout == want,
        "stdout differs ({} bytes)",
        out.stdout.len()
    );
    check_upgrades(&env, t);
}

#[tokio::test]
async fn spdy_exec_reads_stdin_to_eof() {
    exec_reads_stdin(Transport::Spdy).await;
}

#[tokio::test]
async fn websocket_exec_reads_stdin_to_eof() {
    exec_reads_stdin(Transport::WebSocket).await;
}

async fn attach_echoes_stdin(t: Transport) {
    let env = Env::start().await;
    let out = env.run(t, &["attach", "-i", "p"], b"attached\n").await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("attached\n"),
        "stdout: {}",
        text(&out.stdout)
    );
    check_upgrades(&env, t);
}

#[tokio::test]
async fn spdy_attach_echoes_stdin() {
    attach_echoes_stdin(Transport::Spdy).await;
}

#[tokio::test]
async fn websocket_attach_echoes_stdin() {
    attach_echoes_stdin(Transport::WebSocket).await;
}

/// `kubectl exec -it` in a terminal of 40x100 that is then resized to 30x90: the
/// command sees both sizes through its own terminal.
fn exec_tty_follows_resize(t: Transport) {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    let rt = tokio::runtime::Runtime::new().unwrap();
    let env = rt.block_on(Env::start());
    let size = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let mut c = env.api.std_kubectl(t);
    c.args([
        "exec",
        "-it",
        "p",
        "--",
        "sh",
        "-c",
        "stty size; while read x; do stty size; done",
    ])
    .stdin(pty.slave.try_clone().unwrap())
    .stdout(pty.slave.try_clone().unwrap())
    .stderr(pty.slave.try_clone().unwrap());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let mut child = c.spawn().unwrap();
    drop(c);
    drop(pty.slave);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut master_r = std::fs::File::from(pty.master.try_clone().unwrap());
    let s = seen.clone();
    std::thread::spawn(move || {
        let mut b = [0u8; 1024];
        while let Ok(n) = master_r.read(&mut b) {
            if n == 0 {
                break;
            }
            s.lock().unwrap().extend_from_slice(&b[..n]);
        }
    });
    let out = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    let wait_for = |what: &str, mut poke: Box<dyn FnMut() + '_>| {
        let start = Instant::now();
        while !out().contains(what) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no {what:?} in the terminal: {:?}",
                out()
            );
            poke();
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for("40 100", Box::new(|| {}));
    common::backend::set_size(
        &pty.master,
        vmlet_streaming::TerminalSize {
            width: 90,
            height: 30,
        },
    );
    let mut master_w = std::fs::File::from(pty.master.try_clone().unwrap());
    wait_for(
        "30 90",
        Box::new(|| {
            master_w.write_all(b"x\r").unwrap();
        }),
    );
    // End of input for `read` in the remote terminal ends the loop and the command.
    master_w.write_all(b"\x04").unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "kubectl did not exit: {:?}",
            out()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0), "terminal: {:?}", out());
    check_upgrades(&env, t);
}

#[test]
fn spdy_exec_tty_follows_resize() {
    exec_tty_follows_resize(Transport::Spdy);
}

#[test]
fn websocket_exec_tty_follows_resize() {
    exec_tty_follows_resize(Transport::WebSocket);
}

/// `kubectl port-forward` of two ports on one connection: 20 concurrent echo
/// connections through the first, then a connection to the second, where nothing
/// listens, whose error reaches kubectl.
async fn port_forward(t: Transport) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};

    let env = Env::start().await;
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let dead_port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = env.kubectl(t);
    c.args([
        "port-forward",
        "pod/p",
        &format!(":{echo_port}"),
        &format!(":{dead_port}"),
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut local = std::collections::HashMap::new();
    while local.len() < 2 {
        let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .expect("kubectl port-forward did not start")
            .unwrap()
            .expect("kubectl port-forward exited");
        // "Forwarding from 127.0.0.1:LOCAL -> REMOTE"
        if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
            let (l, r) = rest.split_once(" -> ").unwrap();
            local.insert(r.parse::<u16>().unwrap(), l.parse::<u16>().unwrap());
        }
    }
    let through = local[&echo_port];
    let round_trip = |i: usize| async move {
        let payload: Vec<u8> = (0..100_000).map(|j| ((i * 31 + j) % 251) as u8).collect();
        let mut s = TcpStream::connect(("127.0.0.1", through)).await.unwrap();
        let (mut r, mut w) = s.split();
        let send = async {
            w.write_all(&payload).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let recv = r.read_to_end(&mut back);
        let ((), n) = tokio::join!(send, recv);
        n.unwrap();
        assert!(
            back == payload,
            "connection {i}: {} bytes back of {}",
            back.len(),
            payload.len()
        );
    };
    let all: Vec<_> = (0..20).map(|i| tokio::spawn(round_trip(i))).collect();
    for h in all {
        tokio::time::timeout(std::time::Duration::from_secs(30), h)
            .await
            .expect("forwarded connection stalled")
            .unwrap();
    }
    // Nothing listens on the second port: that connection ends without data.
    let mut s = TcpStream::connect(("127.0.0.1", local[&dead_port]))
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut got))
        .await
        .expect("the failed forward was not closed");
    assert!(got.is_empty());
    // kubectl prints the pair's error. client-go up to at least 1.32 then drops the
    // whole connection on any error-stream bytes ("lost connection to pod"); a client
    // that keeps it must still be able to use the first port. The server side of
    // that isolation is tested without kubectl in the crate's port-forward tests.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let exited = child.try_wait().unwrap().is_some();
    if !exited {
        tokio::time::timeout(std::time::Duration::from_secs(30), round_trip(99))
            .await
            .expect("forwarding stopped after another pair failed");
        child.kill().await.unwrap();
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert!(
        err.contains(&format!("error forwarding port {dead_port} to pod p")),
        "kubectl stderr: {err}"
    );
    check_upgrades(&env, t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_port_forward_many_connections_and_a_failing_one() {
    port_forward(Transport::Spdy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_port_forward_many_connections_and_a_failing_one() {
    port_forward(Transport::WebSocket).await;
}

/// Every task a session starts ends with it, also when the client goes away in the
/// middle: then the backend's future is dropped (the host backend kills the command).
async fn no_task_outlives_its_session(t: Transport) {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncBufReadExt;

    let env = Env::start().await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let base = metrics.num_alive_tasks();
    let out = env.run(t, &["exec", "-i", "p", "--", "cat"], b"x").await;
    assert_eq!(out.stdout, b"x");
    // A client killed during a long command.
    let pid_file = env.dir().join("pid");
    let script = format!("echo $$ > {}; exec sleep 1000", pid_file.display());
    let mut c = env.kubectl(t);
    c.args(["exec", "p", "--", "sh", "-c", &script]);
    let mut child = c.spawn().unwrap();
    let start = Instant::now();
    let pid = loop {
        if let Ok(p) = std::fs::read_to_string(&pid_file) {
            if let Ok(p) = p.trim().parse::<i32>() {
                break p;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the command did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().await.unwrap();
    // A port-forward whose client goes away with a connection open.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = echo.local_addr().unwrap().port();
    let mut c = env.kubectl(t);
    c.args(["port-forward", "pod/p", &format!(":{port}")])
        .stdout(std::process::Stdio::piped());
    let mut pf = c.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(pf.stdout.take().unwrap()).lines();
    let local: u16 = loop {
        let l = lines
            .next_line()
            .await
            .unwrap()
            .expect("port-forward exited");
        if let Some(rest) = l.strip_prefix("Forwarding from 127.0.0.1:") {
            break rest.split_once(' ').unwrap().0.parse().unwrap();
        }
    };
    let _held = tokio::net::TcpStream::connect(("127.0.0.1", local))
        .await
        .unwrap();
    let (_accepted, _) = echo.accept().await.unwrap();
    pf.kill().await.unwrap();
    let start = Instant::now();
    while metrics.num_alive_tasks() > base || std::path::Path::new(&format!("/proc/{pid}")).exists()
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} tasks alive (before: {base}); command alive: {}",
            metrics.num_alive_tasks(),
            std::path::Path::new(&format!("/proc/{pid}")).exists()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn spdy_no_task_outlives_its_session() {
    no_task_outlives_its_session(Transport::Spdy).await;
}

#[tokio::test]
async fn websocket_no_task_outlives_its_session() {
    no_task_outlives_its_session(Transport::WebSocket).await;
}

/// A command that ends while the client's stdin is still open ends the session: the
/// server does not wait for stdin EOF. And 5 MB of output arrive whole.
async fn exec_ends_with_stdin_open_and_large_output(t: Transport) {
    let env = Env::start().await;
    let mut c = env.kubectl(t);
    c.args(["exec", "-i", "p", "--", "sh", "-c", "yes | head -c 5000000"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let _stdin_held_open = child.stdin.take().unwrap();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kubectl waited for stdin EOF")
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 5_000_000);
    assert!(out.stdout.chunks(2).all(|c| c == b"y\n"));
    check_upgrades(&env, t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_exec_ends_with_stdin_open_and_large_output() {
    exec_ends_with_stdin_open_and_large_output(Transport::Spdy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_exec_ends_with_stdin_open_and_large_output() {
    exec_ends_with_stdin_open_and_large_output(Transport::WebSocket).await;
}

/// Over the per-container cap, kubectl reports the server's reason.
async fn cap_reaches_kubectl(t: Transport) {
    let env = Env::with_config(vmlet_streaming::Config {
        max_sessions_per_target: 1,
        ..Default::default()
    })
    .await;
    let mut c = env.kubectl(t);
    c.args(["exec", "p", "--", "sleep", "30"]);
    let _first = c.spawn().unwrap();
    // Wait until the first session holds its place.
    let start = std::time::Instant::now();
    while env.api.upgrades.lock().unwrap().is_empty() {
        assert!(start.elapsed() < std::time::Duration::from_secs(30));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let out = env.run(t, &["exec", "p", "--", "true"], b"").await;
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(
        err.contains("too many streaming sessions for container p (limit 1)"),
        "stderr: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_session_cap_reaches_kubectl() {
    cap_reaches_kubectl(Transport::Spdy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_session_cap_reaches_kubectl() {
    cap_reaches_kubectl(Transport::WebSocket).await;
}
