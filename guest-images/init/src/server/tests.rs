//! The request handler over unix socket pairs and TCP loopback, with a fake platform.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;

/// A platform whose "host" is TCP loopback and whose power off only takes note.
#[derive(Debug, Default)]
struct FakePlatform {
    powered_off: AtomicBool,
}

impl Platform for Arc<FakePlatform> {
    type HostStream = TcpStream;

    fn connect_host(&self, port: u32) -> io::Result<TcpStream> {
        let port = u16::try_from(port).map_err(|_| io::Error::other("port out of range"))?;
        TcpStream::connect(("127.0.0.1", port))
    }

    fn power_off(&self) -> io::Error {
        self.powered_off.store(true, Ordering::SeqCst);
        io::Error::other("fake power off")
    }
}

/// One registry and reaper per test process: the reaper waits for any child.
fn children() -> Arc<ChildRegistry> {
    static CHILDREN: OnceLock<Arc<ChildRegistry>> = OnceLock::new();
    Arc::clone(CHILDREN.get_or_init(|| {
        let children = Arc::new(ChildRegistry::new());
        pid1::start_reaper(Arc::clone(&children));
        children
    }))
}

struct Client {
    conn: BufReader<UnixStream>,
    server: JoinHandle<io::Result<()>>,
    platform: Arc<FakePlatform>,
}

fn connect() -> Client {
    let platform = Arc::new(FakePlatform::default());
    let server = Server::new(Arc::clone(&platform), children());
    let (client, guest) = UnixStream::pair().expect("socketpair");
    let server = std::thread::spawn(move || server.handle_connection(guest));
    Client {
        conn: BufReader::new(client),
        server,
        platform,
    }
}

impl Client {
    fn send(&mut self, bytes: &[u8]) {
        self.conn.get_mut().write_all(bytes).expect("write");
    }

    fn response(&mut self) -> Response {
        let mut line = String::new();
        self.conn.read_line(&mut line).expect("read");
        assert!(line.ends_with('\n'), "unterminated response {line:?}");
        serde_json::from_str(&line).expect("response JSON")
    }

    fn request(&mut self, line: &str) -> Response {
        self.send(format!("{line}\n").as_bytes());
        self.response()
    }

    fn run(&mut self, req: serde_json::Value) -> Response {
        self.request(&req.to_string())
    }

    /// Closes our side and checks that the server ended cleanly.
    fn finish(self) {
        let _ = self.conn.get_ref().shutdown(Shutdown::Write);
        let result = self.server.join().expect("server thread");
        assert!(result.is_ok(), "{result:?}");
    }
}

#[test]
fn ping_answers_version() {
    let mut c = connect();
    assert_eq!(c.request(r#"{"op":"ping"}"#), Response::version(VERSION));
    c.finish();
}

#[test]
fn bad_requests_keep_the_connection_usable() {
    let mut c = connect();
    for bad in [
        "",
        "garbage",
        "{\"op\":\"nope\"}",
        "{\"op\":\"run\"}",
        "\u{1}\u{2}",
    ] {
        let r = c.request(bad);
        assert!(!r.ok, "{bad:?} -> {r:?}");
        assert!(r.error.is_some_and(|e| !e.is_empty()));
    }
    // Several requests in one write, and a request split across writes.
    c.send(b"{\"op\":\"ping\"}\n{\"op\":\"pi");
    assert!(c.response().ok);
    c.send(b"ng\"}\n");
    assert_eq!(c.response().version.as_deref(), Some(VERSION));
    c.finish();
}

#[test]
fn too_long_lines_are_skipped() {
    let mut c = connect();
    let mut long = vec![b'x'; MAX_REQUEST_LINE + 10];
    long.extend_from_slice(b"\n{\"op\":\"ping\"}\n");
    // Write from another thread: the server reads while we write.
    let mut writer = c.conn.get_ref().try_clone().expect("clone");
    let w = std::thread::spawn(move || writer.write_all(&long));
    let r = c.response();
    assert!(!r.ok);
    assert!(r.error.is_some_and(|e| e.contains("longer than")));
    assert!(c.response().ok);
    w.join().expect("writer").expect("write");
    c.finish();
}

#[test]
fn final_line_without_newline_is_answered() {
    let mut c = connect();
    c.send(br#"{"op":"ping"}"#);
    c.conn
        .get_ref()
        .shutdown(Shutdown::Write)
        .expect("shutdown");
    assert!(c.response().ok);
    c.finish();
}

#[test]
fn echo_mode_returns_every_byte() {
    let mut c = connect();
    // The first raw bytes arrive in the same write as the request.
    c.send(b"{\"op\":\"echo\"}\nhello ");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut writer = c.conn.get_ref().try_clone().expect("clone");
    let data = payload.clone();
    let w = std::thread::spawn(move || {
        writer.write_all(&data)?;
        writer.shutdown(Shutdown::Write)
    });
    assert_eq!(c.response(), Response::ok());
    let mut back = Vec::new();
    c.conn.read_to_end(&mut back).expect("read");
    w.join().expect("writer").expect("write");
    let mut expected = b"hello ".to_vec();
    expected.extend_from_slice(&payload);
    assert_eq!(back.len(), expected.len());
    assert!(back == expected);
    c.finish();
}

#[test]
fn connect_echo_echoes_on_a_host_connection() {
    let host = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = host.local_addr().expect("addr").port();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 13) as u8).collect();
    let data = payload.clone();
    let host_side = std::thread::spawn(move || {
        let (mut conn, _) = host.accept().expect("accept");
        let mut reader = conn.try_clone().expect("clone");
        let r = std::thread::spawn(move || {
            let mut back = Vec::new();
            reader.read_to_end(&mut back).map(|_| back)
        });
        conn.write_all(&data).expect("write");
        conn.shutdown(Shutdown::Write).expect("shutdown");
        r.join().expect("reader").expect("read")
    });
    let mut c = connect();
    let r = c.request(&format!(r#"{{"op":"connect_echo","port":{port}}}"#));
    assert_eq!(r, Response::bytes(payload.len() as u64));
    assert!(host_side.join().expect("host") == payload);
    // Nobody listens there any more: an error, and the connection stays usable.
    let r = c.request(&format!(r#"{{"op":"connect_echo","port":{port}}}"#));
    assert!(!r.ok);
    assert!(c.request(r#"{"op":"ping"}"#).ok);
    c.finish();
}

#[test]
fn poweroff_answers_then_powers_off() {
    let mut c = connect();
    assert_eq!(c.request(r#"{"op":"poweroff"}"#), Response::ok());
    // The guest shuts down its side right after the response...
    let mut rest = Vec::new();
    c.conn.read_to_end(&mut rest).expect("read");
    assert!(rest.is_empty());
    // ...and powers off once we close ours, without waiting out its linger time.
    let platform = Arc::clone(&c.platform);
    let start = Instant::now();
    c.finish();
    assert!(start.elapsed() < Duration::from_millis(u64::from(POWER_OFF_LINGER) / 2));
    assert!(platform.powered_off.load(Ordering::SeqCst));
}

#[test]
fn poweroff_does_not_wait_forever_for_the_client() {
    let mut c = connect();
    assert_eq!(c.request(r#"{"op":"poweroff"}"#), Response::ok());
    let start = Instant::now();
    // We keep the connection open: the server gives up after its linger time.
    let result = c.server.join().expect("server thread");
    assert!(result.is_ok());
    assert!(start.elapsed() < Duration::from_millis(u64::from(POWER_OFF_LINGER) * 2));
    assert!(c.platform.powered_off.load(Ordering::SeqCst));
}

#[test]
fn run_collects_status_and_output() {
    let mut c = connect();
    let r = c.run(serde_json::json!({
        "op": "run",
        "argv": ["/bin/sh", "-c", "echo out; echo err >&2; printf '\\377'; exit 3"],
    }));
    assert!(r.ok, "{r:?}");
    assert_eq!(r.status, Some(3));
    assert_eq!(r.stdout.as_deref(), Some("out\n\u{fffd}"));
    assert_eq!(r.stderr.as_deref(), Some("err\n"));
    assert!(!r.timed_out);

    let r = c.run(serde_json::json!({"op": "run", "argv": ["cat"], "stdin": "line 1\nline 2"}));
    assert_eq!(
        (r.status, r.stdout.as_deref()),
        (Some(0), Some("line 1\nline 2"))
    );

    // Without stdin the process reads /dev/null.
    let r = c.run(serde_json::json!({"op": "run", "argv": ["cat"], "timeout_ms": 5000}));
    assert_eq!((r.status, r.stdout.as_deref()), (Some(0), Some("")));

    let r = c.run(serde_json::json!({"op": "run", "argv": ["/bin/sh", "-c", "kill -TERM $$"]}));
    assert_eq!(r.status, Some(128 + 15));
    c.finish();
}

#[test]
fn run_reports_spawn_failures() {
    let mut c = connect();
    let r = c.run(serde_json::json!({"op": "run", "argv": ["/nonexistent/program"]}));
    assert!(!r.ok);
    assert!(r.error.is_some_and(|e| e.contains("/nonexistent/program")));
    let r = c.run(serde_json::json!({"op": "run", "argv": []}));
    assert!(!r.ok);
    let r = c.run(serde_json::json!({"op": "run", "argv": ["a\u{0}b"]}));
    assert!(!r.ok);
    assert!(c.request(r#"{"op":"ping"}"#).ok);
    c.finish();
}

#[test]
fn run_timeout_kills_the_process_group() {
    let mut c = connect();
    let start = Instant::now();
    let r = c.run(serde_json::json!({"op": "run", "argv": ["sleep", "30"], "timeout_ms": 200}));
    assert!(r.ok && r.timed_out, "{r:?}");
    assert_eq!(r.status, Some(128 + 9));

    // A background child holds the pipes open: the group kill closes them.
    let r = c.run(serde_json::json!({
        "op": "run",
        "argv": ["/bin/sh", "-c", "sleep 30 & echo started; wait"],
        "timeout_ms": 300,
    }));
    assert!(r.timed_out, "{r:?}");
    assert_eq!(r.stdout.as_deref(), Some("started\n"));
    assert!(start.elapsed() < Duration::from_secs(10));

    // An absurd timeout is no timeout.
    let r = c.run(serde_json::json!({"op": "run", "argv": ["true"], "timeout_ms": u64::MAX}));
    assert_eq!((r.status, r.timed_out), (Some(0), false));
    c.finish();
}

#[test]
fn concurrent_runs_get_their_own_statuses() {
    let handles: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = connect();
                let r = c.run(serde_json::json!({
                    "op": "run",
                    "argv": ["/bin/sh", "-c", format!("exit {i}")],
                }));
                c.finish();
                r.status
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().expect("thread"), Some(i as i32));
    }
}
