//! kubectl exec and attach against vmletd end to end: real kubectl talks to a fake API server
//! that gets each session's URL from vmletd's CRI `Exec` (as kubelet does) and proxies
//! the upgraded connection to vmletd's streaming server; the command runs in a
//! container of a real pod VM. Every case runs over SPDY and over WebSocket.

// Test-only crate: a failed setup step panics with its message, which is the test's
// failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tonic::Code;
use vmlet_integration_tests::cri::{busybox_registry, container_config, pod_config, v1, Vmletd};
use vmlet_integration_tests::kubectl::{cri_urls, FakeApiServer, Transport};

/// kubectl's limit per command (the emulated machine is slow).
const KUBECTL: Duration = Duration::from_secs(180);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn exec_cases(api: &FakeApiServer, t: Transport) {
    let out = api
        .run(
            t,
            &["exec", "p", "--", "sh", "-c", "printf hello"],
            b"",
            KUBECTL,
        )
        .await;
    assert_eq!(
        (out.status.code(), text(&out.stdout), text(&out.stderr)),
        (Some(0), "hello".into(), String::new()),
        "{t:?} exec printf"
    );

    let out = api
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
            KUBECTL,
        )
        .await;
    assert_eq!(out.status.code(), Some(3), "{t:?}: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert!(
        text(&out.stderr).starts_with("err\n"),
        "{}",
        text(&out.stderr)
    );

    let input: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let out = api
        .run(
            t,
            &["exec", "-i", "p", "--", "sh", "-c", "cat; echo done"],
            &input,
            KUBECTL,
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{t:?}: {}", text(&out.stderr));
    let mut want = input;
    want.extend_from_slice(b"done\n");
    assert!(
        out.stdout == want,
        "{t:?}: stdout differs ({} bytes)",
        out.stdout.len()
    );
    // A terminal of kubectl's size: the first resize reaches the pty before the
    // command runs.
    let (status, out) = api
        .run_in_terminal(
            t,
            &["exec", "-it", "p", "--", "busybox", "stty", "size"],
            (33, 77),
            b"",
            KUBECTL,
        )
        .await;
    assert!(
        status.success() && text(&out).contains("33 77"),
        "{t:?} exec -it stty size: {status:?} {}",
        text(&out)
    );
    api.upgraded_only_to(t).unwrap();
}

/// The processes of container `id` whose command line contains `what`.
fn processes(c: &vmlet_integration_tests::cri::CriClient, id: &str, what: &str) -> Vec<String> {
    let r = c.exec(id, &["ps", "-o", "args"], 60).expect("ExecSync ps");
    text(&r.stdout)
        .lines()
        .filter(|l| l.contains(what) && !l.contains("ps -o"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn kubectl_exec_runs_in_the_pod_over_spdy_and_websocket() {
    let (registry, image) = busybox_registry("busybox:e2e");
    let d = Vmletd::start(&["--insecure-registry", registry.addr()]);
    let c = d.client();
    c.pull(&image).expect("PullImage");
    let pod_cfg = pod_config("stream", &d.log_dir());
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");
    let id = c
        .create(
            &pod,
            container_config("main", &image, "exec sleep 100000"),
            &pod_cfg,
        )
        .expect("CreateContainer");
    c.start(&id).expect("StartContainer");

    // What kubelet would be refused.
    let mut rt = c.runtime.clone();
    let refused =
        |r: Result<tonic::Response<v1::ExecResponse>, tonic::Status>| r.map(|_| ()).unwrap_err();
    let e = refused(c.block_on(rt.exec(v1::ExecRequest {
        container_id: "nope".into(),
        cmd: vec!["true".into()],
        stdout: true,
        ..Default::default()
    })));
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = refused(c.block_on(rt.exec(v1::ExecRequest {
        container_id: id.clone(),
        cmd: vec!["true".into()],
        tty: true,
        stderr: true,
        ..Default::default()
    })));
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let url = c
        .block_on(rt.exec(v1::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        }))
        .expect("Exec")
        .into_inner()
        .url;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let tokio = tokio::runtime::Runtime::new().unwrap();
    for t in [Transport::Spdy, Transport::WebSocket] {
        tokio.block_on(async {
            let api = FakeApiServer::start(cri_urls(&d.socket, &id, &pod)).await;
            exec_cases(&api, t).await;
        });
    }

    // A client that goes away takes its process with it. (The CRI client runs its
    // own runtime: polled outside this one.)
    let api = tokio.block_on(FakeApiServer::start(cri_urls(&d.socket, &id, &pod)));
    let mut kubectl = tokio.block_on(async {
        api.kubectl(Transport::Spdy)
            .args(["exec", "p", "--", "sleep", "4321"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    });
    let start = Instant::now();
    while processes(&c, &id, "sleep 4321").is_empty() {
        assert!(start.elapsed() < KUBECTL, "the exec never started");
        std::thread::sleep(Duration::from_millis(500));
    }
    tokio.block_on(kubectl.kill()).unwrap();
    let start = Instant::now();
    while !processes(&c, &id, "sleep 4321").is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the exec outlived its session"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // A session on a container that is stopped ends with an error; a new one is
    // refused with the runtime's reason.
    let kubectl = tokio.block_on(async {
        api.kubectl(Transport::WebSocket)
            .args(["exec", "p", "--", "sleep", "4322"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    });
    let start = Instant::now();
    while processes(&c, &id, "sleep 4322").is_empty() {
        assert!(start.elapsed() < KUBECTL, "the exec never started");
        std::thread::sleep(Duration::from_millis(500));
    }
    c.stop(&id, 2).expect("StopContainer");
    let out = tokio
        .block_on(async { tokio::time::timeout(KUBECTL, kubectl.wait_with_output()).await })
        .expect("the session outlived its container")
        .unwrap();
    assert!(
        !out.status.success(),
        "exec on a stopped container: {:?} {}",
        out.status,
        text(&out.stderr)
    );
    for t in [Transport::Spdy, Transport::WebSocket] {
        let out = tokio.block_on(api.run(t, &["exec", "p", "--", "true"], b"", KUBECTL));
        assert!(
            !out.status.success() && text(&out.stderr).contains("needs a running container"),
            "{t:?} exec into a stopped container: {:?} {}",
            out.status,
            text(&out.stderr)
        );
    }

    c.stop_pod(&pod).expect("StopPodSandbox");
    c.remove_pod(&pod).expect("RemovePodSandbox");
}

/// A container running `sh` that reads its commands from stdin, kept open and
/// closed by its first attach session (kubelet's `stdin` and `stdinOnce`).
fn shell(name: &str, image: &str, tty: bool) -> v1::ContainerConfig {
    let mut cfg = container_config(name, image, "");
    cfg.command = vec!["/bin/sh".into()];
    cfg.stdin = true;
    cfg.stdin_once = true;
    cfg.tty = tty;
    cfg
}

#[test]
fn kubectl_attach_joins_the_main_process_over_spdy_and_websocket() {
    let (registry, image) = busybox_registry("busybox:e2e");
    let d = Vmletd::start(&["--insecure-registry", registry.addr()]);
    let c = d.client();
    c.pull(&image).expect("PullImage");
    let pod_cfg = pod_config("attach", &d.log_dir());
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let exited = |id: &str| c.wait_exited(id, Duration::from_secs(120));

    for t in [Transport::Spdy, Transport::WebSocket] {
        // No terminal: what kubectl sends runs; closing stdin closes the
        // container's (stdinOnce), the shell ends and so does the session.
        let id = c
            .create(
                &pod,
                shell(&format!("plain-{t:?}"), &image, false),
                &pod_cfg,
            )
            .expect("CreateContainer");
        c.start(&id).expect("StartContainer");
        let out = tokio.block_on(async {
            let api = FakeApiServer::start(cri_urls(&d.socket, &id, &pod)).await;
            let out = api
                .run(
                    t,
                    &["attach", "-i", "p"],
                    b"echo hi-from-attach; echo to-stderr >&2\n",
                    KUBECTL,
                )
                .await;
            api.upgraded_only_to(t).unwrap();
            out
        });
        assert_eq!(
            out.status.code(),
            Some(0),
            "{t:?} attach -i: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "hi-from-attach\n", "{t:?}");
        assert!(
            text(&out.stderr).contains("to-stderr\n"),
            "{t:?}: {}",
            text(&out.stderr)
        );
        let s = exited(&id);
        // Only the closed stdin ends the shell.
        assert_eq!(s.exit_code, 0, "{t:?}: {s:?}");
        // What kubectl printed is in the log too: attach takes nothing from it.
        let log = std::fs::read_to_string(d.log_dir().join(&s.log_path)).unwrap();
        assert!(log.contains("stdout F hi-from-attach"), "{log}");

        // A terminal: kubectl's size reaches the container's pty before what is
        // typed runs.
        let id = c
            .create(&pod, shell(&format!("tty-{t:?}"), &image, true), &pod_cfg)
            .expect("CreateContainer");
        c.start(&id).expect("StartContainer");
        let (status, out) = tokio.block_on(async {
            let api = FakeApiServer::start_with_tty(cri_urls(&d.socket, &id, &pod), true).await;
            api.run_in_terminal(
                t,
                &["attach", "-it", "p"],
                (33, 77),
                b"busybox stty size; exit 0\r",
                KUBECTL,
            )
            .await
        });
        assert!(
            status.success() && text(&out).contains("33 77"),
            "{t:?} attach -it: {status:?} {}",
            text(&out)
        );
        assert_eq!(exited(&id).exit_code, 0, "{t:?}");
    }

    // Attach needs a running container, and a stream to carry.
    let mut rt = c.runtime.clone();
    let id = c
        .create(&pod, shell("done", &image, false), &pod_cfg)
        .expect("CreateContainer");
    let refused = |r: Result<tonic::Response<v1::AttachResponse>, tonic::Status>| {
        r.map(|_| ()).unwrap_err().code()
    };
    let attach = |stdin: bool, stdout: bool| v1::AttachRequest {
        container_id: id.clone(),
        stdin,
        stdout,
        ..Default::default()
    };
    assert_eq!(
        refused(c.block_on(rt.attach(attach(true, true)))),
        Code::FailedPrecondition
    );
    c.start(&id).expect("StartContainer");
    assert_eq!(
        refused(c.block_on(rt.attach(attach(false, false)))),
        Code::InvalidArgument
    );
    let url = c
        .block_on(rt.attach(attach(true, true)))
        .expect("Attach")
        .into_inner()
        .url;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    c.stop_pod(&pod).expect("StopPodSandbox");
    c.remove_pod(&pod).expect("RemovePodSandbox");
}

/// An HTTP GET of `path` through local port `port`; the whole response.
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(KUBECTL, s.read_to_end(&mut got))
        .await
        .expect("forwarded connection stalled")
        .unwrap();
    text(&got)
}

async fn port_forward_cases(api: &FakeApiServer, t: Transport) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let mut child = api
        .kubectl(t)
        .args(["port-forward", "pod/p", ":8080", ":8081"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut local = std::collections::HashMap::new();
    while local.len() < 2 {
        let line = tokio::time::timeout(KUBECTL, lines.next_line())
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
    // httpd listens on the pod's 127.0.0.1 only; several connections at once.
    let gets: Vec<_> = (0..4)
        .map(|_| tokio::spawn(http_get(local[&8080], "/f.txt")))
        .collect();
    for g in gets {
        let resp = g.await.unwrap();
        assert!(
            resp.starts_with("HTTP/1.") && resp.ends_with("\r\n\r\nforwarded"),
            "{t:?}: {resp:?}"
        );
    }
    // Nothing listens on 8081: that connection ends without data.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", local[&8081]))
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(KUBECTL, s.read_to_end(&mut got))
        .await
        .expect("a connection to a closed port hung");
    assert!(got.is_empty(), "{t:?}: {}", text(&got));
    // kubectl (1.31 and later) gives up the whole forwarding after an error.
    child.kill().await.unwrap();
    api.upgraded_only_to(t).unwrap();
}

#[test]
fn kubectl_port_forward_reaches_the_pods_loopback_over_spdy_and_websocket() {
    let (registry, image) = busybox_registry("busybox:e2e");
    let d = Vmletd::start(&["--insecure-registry", registry.addr()]);
    let c = d.client();
    c.pull(&image).expect("PullImage");
    let pod_cfg = pod_config("forward", &d.log_dir());
    let pod = c.run_pod(pod_cfg.clone()).expect("RunPodSandbox");
    let script = "mkdir -p /tmp/www && printf forwarded > /tmp/www/f.txt && \
                  exec busybox httpd -f -p 127.0.0.1:8080 -h /tmp/www";
    let id = c
        .create(&pod, container_config("web", &image, script), &pod_cfg)
        .expect("CreateContainer");
    c.start(&id).expect("StartContainer");
    // kubectl ends the whole forwarding at the first refused connection: wait for
    // httpd to listen.
    let start = Instant::now();
    loop {
        let r = c.exec(
            &id,
            &[
                "busybox",
                "wget",
                "-q",
                "-O",
                "-",
                "http://127.0.0.1:8080/f.txt",
            ],
            60,
        );
        if r.is_ok_and(|r| r.stdout == b"forwarded") {
            break;
        }
        assert!(start.elapsed() < KUBECTL, "httpd never answered");
        std::thread::sleep(Duration::from_millis(500));
    }

    let mut rt = c.runtime.clone();
    let e = c
        .block_on(rt.port_forward(v1::PortForwardRequest {
            pod_sandbox_id: "nope".into(),
            port: vec![8080],
        }))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    let tokio = tokio::runtime::Runtime::new().unwrap();
    for t in [Transport::Spdy, Transport::WebSocket] {
        tokio.block_on(async {
            let api = FakeApiServer::start(cri_urls(&d.socket, &id, &pod)).await;
            port_forward_cases(&api, t).await;
        });
    }
    c.stop_pod(&pod).expect("StopPodSandbox");
    let e = c
        .block_on(rt.port_forward(v1::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080],
        }))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    c.remove_pod(&pod).expect("RemovePodSandbox");
}
