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
        (out.status.code(), text(&out.stdout), text(&out.stderr)),
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
        text(&out.stderr).starts_with("err\n"),
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
