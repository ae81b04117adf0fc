//! Pod networking through vmletd: the node's CNI configuration (Debian's bridge,
//! host-local and portmap plugins) wires each pod's network namespace, a tap carries
//! the pod's interface into its VM, and the guest is the pod on that network.

// Test-only crate: a failed setup step panics with its message, which is the test's
// failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tonic::Code;
use vmlet_integration_tests::agent::GuestAgent;
use vmlet_integration_tests::cri::{
    busybox_registry, container_config, pod_config, v1, CriClient, Vmletd,
};
use vmlet_integration_tests::net::{files, Net, BRIDGE, CNI_DNS, GATEWAY, GATEWAY6, NETWORK};

/// Fetches `url` from the host with curl, retrying while the pod's server starts.
fn fetch(url: &str) -> String {
    let start = Instant::now();
    loop {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", url])
            .output()
            .unwrap();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn publish(cfg: &mut v1::PodSandboxConfig, container_port: i32, host_port: i32) {
    cfg.port_mappings.push(v1::PortMapping {
        protocol: v1::Protocol::Tcp as i32,
        container_port,
        host_port,
        host_ip: String::new(),
    });
}

/// Runs a busybox httpd serving `body` on port 80 in the pod.
fn serve(c: &CriClient, pod: &str, cfg: &v1::PodSandboxConfig, image: &str, body: &str) {
    let script =
        format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www");
    let id = c
        .create(pod, container_config("web", image, &script), cfg)
        .expect("CreateContainer");
    c.start(&id).expect("StartContainer");
}

/// Runs a container that sleeps, for ExecSync.
fn idle(c: &CriClient, pod: &str, cfg: &v1::PodSandboxConfig, image: &str) -> String {
    let id = c
        .create(pod, container_config("idle", image, "exec sleep 3600"), cfg)
        .expect("CreateContainer");
    c.start(&id).expect("StartContainer");
    id
}

fn exec_ok(c: &CriClient, id: &str, script: &str) -> String {
    let r = c
        .exec(id, &["/bin/sh", "-c", script], 60)
        .expect("ExecSync");
    assert_eq!(
        r.exit_code,
        0,
        "{script}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).into_owned()
}

fn remove_all(c: &CriClient, pods: &[&str]) {
    for p in pods {
        c.stop_pod(p).expect("StopPodSandbox");
        c.remove_pod(p).expect("RemovePodSandbox");
    }
}

/// Received and sent bytes of pod `id`'s default interface, from PodSandboxStats.
fn eth0_usage(c: &CriClient, id: &str) -> (u64, u64) {
    let stats = c.pod_stats(id).expect("PodSandboxStats");
    let eth0 = stats
        .linux
        .and_then(|l| l.network)
        .and_then(|n| n.default_interface)
        .expect("the pod's network figures");
    assert_eq!(eth0.name, "eth0");
    (
        eth0.rx_bytes.unwrap_or_default().value,
        eth0.tx_bytes.unwrap_or_default().value,
    )
}

#[test]
fn pods_reach_the_host_each_other_and_published_ports() {
    let (registry, image) = busybox_registry("busybox:e2e");
    let net = Net::new(None);
    let d = net.daemon(&registry, &image);
    let c = d.client();
    let ready = &c.conditions()["NetworkReady"];
    assert!(ready.0, "NetworkReady: {ready:?}");

    let mut web_cfg = pod_config("web", &d.log_dir());
    publish(&mut web_cfg, 80, 18080);
    web_cfg.dns_config = Some(v1::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["e2e.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let mut linux = v1::LinuxPodSandboxConfig::default();
    linux
        .sysctls
        .insert("net.ipv4.ip_unprivileged_port_start".into(), "80".into());
    web_cfg.linux = Some(linux);
    let web = c.run_pod(web_cfg.clone()).expect("RunPodSandbox");
    let web_ip = c.pod_ip(&web);
    assert!(web_ip.starts_with("10.77.0."), "pod IP {web_ip:?}");
    assert_eq!(net.leases(), std::slice::from_ref(&web_ip));
    assert_eq!(net.namespaces().len(), 1);
    let before = eth0_usage(&c, &web);
    serve(&c, &web, &web_cfg, &image, "hello-from-web");

    // The host reaches the pod at its IP, and at the published port on its own
    // address on the pod network.
    assert_eq!(fetch(&format!("http://{web_ip}/")).trim(), "hello-from-web");
    assert_eq!(
        fetch(&format!("http://{GATEWAY}:18080/")).trim(),
        "hello-from-web"
    );
    // The pod's traffic, counted on the host: two requests in, two answers out.
    let after = eth0_usage(&c, &web);
    assert!(
        after.0 > before.0 + 100 && after.1 > before.1 + 2 * "hello-from-web".len() as u64,
        "eth0 rx/tx bytes before {before:?}, after {after:?}"
    );
    let (descriptors, pods) = c.pod_metrics();
    let tx = pods
        .iter()
        .find(|p| p.pod_sandbox_id == web)
        .and_then(|p| {
            p.metrics
                .iter()
                .find(|m| m.name == "container_network_transmit_bytes_total")
        })
        .expect("the pod's container_network_transmit_bytes_total");
    assert!(tx.value.unwrap().value >= after.1, "{tx:?}");
    let keys = &descriptors
        .iter()
        .find(|d| d.name == tx.name)
        .expect("its descriptor")
        .label_keys;
    let interface = keys.iter().position(|k| k == "interface").unwrap();
    assert_eq!(tx.label_values[interface], "eth0");

    // A second pod, without DNS settings of its own: it gets the CNI result's.
    let client_cfg = pod_config("client", &d.log_dir());
    let client = c.run_pod(client_cfg.clone()).expect("RunPodSandbox");
    let client_ip = c.pod_ip(&client);
    assert!(client_ip.starts_with("10.77.0.") && client_ip != web_ip);
    let sh = idle(&c, &client, &client_cfg, &image);
    // A few tries: the first frames of a freshly booted nested guest can be slow
    // enough under emulation for neighbour resolution to give up ("No route to host").
    let get = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O - http://{web_ip}/ && exit 0; sleep 1; done; exit 1"
    );
    assert_eq!(exec_ok(&c, &sh, &get).trim(), "hello-from-web");
    let addr = exec_ok(&c, &sh, "ip -o addr show eth0; ip route");
    assert!(addr.contains(&format!("{client_ip}/24")), "{addr}");
    assert!(addr.contains(&format!("default via {GATEWAY}")), "{addr}");
    let resolv = exec_ok(&c, &sh, "cat /etc/resolv.conf");
    assert!(
        resolv.contains(&format!("nameserver {CNI_DNS}")),
        "{resolv}"
    );
    assert!(resolv.contains("cni.e2e"), "{resolv}");

    // The first pod's own DNS settings win over the plugins'.
    let web_sh = idle(&c, &web, &web_cfg, &image);
    let resolv = exec_ok(&c, &web_sh, "cat /etc/resolv.conf");
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(resolv.contains("e2e.svc.cluster.local"), "{resolv}");
    assert!(!resolv.contains(CNI_DNS), "{resolv}");
    // The pod's sysctls, and /etc/hosts naming the pod on its address.
    let port_start = exec_ok(
        &c,
        &web_sh,
        "cat /proc/sys/net/ipv4/ip_unprivileged_port_start",
    );
    assert_eq!(port_start.trim(), "80");
    let hosts = exec_ok(&c, &web_sh, "cat /etc/hosts");
    assert!(hosts.contains(&format!("{web_ip}\tweb")), "{hosts}");
    assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");

    remove_all(&c, &[&web, &client]);
    net.assert_clean(&[&web, &client]);
    assert!(d.vmm_pids().is_empty());
}

#[test]
fn stopping_a_pod_releases_its_address() {
    // One address in the pool: a second pod only gets it once the first let go.
    let only = "10.77.0.10";
    let net = Net::new(Some(only));
    let d = Vmletd::start_with(&[], &net.daemon_config());
    let c = d.client();
    let first = c
        .run_pod(pod_config("first", &d.log_dir()))
        .expect("RunPodSandbox");
    assert_eq!(c.pod_ip(&first), only);

    let e = c
        .run_pod(pod_config("second", &d.log_dir()))
        .expect_err("no address left");
    assert!(e.message().contains("no IP addresses available"), "{e}");
    // The failed pod left nothing: one namespace, one pod, one VMM.
    assert_eq!(net.namespaces().len(), 1, "{:?}", net.namespaces());
    assert_eq!(c.list_pods(None).len(), 1);
    assert_eq!(d.vmm_pids().len(), 1);

    c.stop_pod(&first).expect("StopPodSandbox");
    assert!(net.leases().is_empty(), "still leased: {:?}", net.leases());
    // Stopping twice is fine (DEL is idempotent).
    c.stop_pod(&first).expect("StopPodSandbox again");
    let third = c
        .run_pod(pod_config("third", &d.log_dir()))
        .expect("RunPodSandbox after the address was released");
    assert_eq!(c.pod_ip(&third), only);

    remove_all(&c, &[&first, &third]);
    net.assert_clean(&[&first, &third]);
}

#[test]
fn kill_9_of_vmletd_leaves_no_network_behind() {
    let (registry, image) = busybox_registry("busybox:e2e");
    let net = Net::new(None);
    let mut d = net.daemon(&registry, &image);
    let c = d.client();
    let mut cfg = pod_config("survivor", &d.log_dir());
    publish(&mut cfg, 80, 18081);
    let pod = c.run_pod(cfg.clone()).expect("RunPodSandbox");
    let ip = c.pod_ip(&pod);
    serve(&c, &pod, &cfg, &image, "still-here");
    assert_eq!(
        fetch(&format!("http://{GATEWAY}:18081/")).trim(),
        "still-here"
    );

    // kill -9 while the pod runs: after the restart it has the same address and its
    // port still works.
    d.signal_and_wait(libc::SIGKILL);
    d.restart();
    let c = d.client();
    assert_eq!(c.pod_ip(&pod), ip);
    assert_eq!(fetch(&format!("http://{ip}/")).trim(), "still-here");

    // kill -9 in the middle of RunPodSandbox, once the second pod's namespace exists:
    // the restarted daemon undoes the half-made pod.
    let socket = d.socket.clone();
    let log_dir = d.log_dir();
    let half = std::thread::spawn(move || {
        let c = CriClient::connect(&socket).expect("connect");
        c.run_pod(pod_config("half", &log_dir))
    });
    let start = Instant::now();
    while net.namespaces().len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(60), "no second netns");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.signal_and_wait(libc::SIGKILL);
    let e = half
        .join()
        .unwrap()
        .expect_err("RunPodSandbox of a daemon killed meanwhile");
    // The connection broke under the call: a transport error, not vmletd's answer.
    assert!(
        matches!(e.code(), Code::Unavailable | Code::Unknown),
        "{e:?}"
    );
    d.restart();
    let c = d.client();
    assert_eq!(c.list_pods(None).len(), 1);
    assert_eq!(net.namespaces().len(), 1, "{:?}", net.namespaces());
    assert_eq!(net.leases(), [ip]);
    let start = Instant::now();
    while d.vmm_pids().len() != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "VMMs: {:?}",
            d.vmm_pids()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    remove_all(&c, &[&pod]);
    net.assert_clean(&[&pod]);
}

#[test]
fn broken_network_configuration_is_reported_and_leaks_nothing() {
    let net = Net::empty();
    let d = Vmletd::start_with(&[], &net.daemon_config());
    let c = d.client();
    let cfg = pod_config("p", &d.log_dir());
    let expect_refused = |needle: &str, code: Code| {
        let e = c.run_pod(cfg.clone()).expect_err("RunPodSandbox must fail");
        assert_eq!(e.code(), code, "{e}");
        assert!(e.message().contains(needle), "{needle:?} not in {e}");
        assert!(c.list_pods(None).is_empty());
        assert!(net.namespaces().is_empty(), "{:?}", net.namespaces());
        assert!(d.vmm_pids().is_empty());
        let left = files(&d.state_dir().join("pods"));
        assert!(left.is_empty(), "pod state left: {left:?}");
    };

    // No configuration.
    let (ready, reason, message) = c.conditions()["NetworkReady"].clone();
    assert!(!ready);
    assert_eq!(reason, "NetworkPluginNotReady");
    assert!(message.contains("net.d"), "{message}");
    expect_refused("no CNI network configuration", Code::FailedPrecondition);

    // Not JSON; an unknown plugin.
    net.write("10-bad.conflist", "{ not json");
    assert!(!c.conditions()["NetworkReady"].0);
    expect_refused("10-bad.conflist", Code::FailedPrecondition);
    net.write(
        "10-bad.conflist",
        &json!({"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "no-such-plugin"}]})
            .to_string(),
    );
    expect_refused("no-such-plugin", Code::FailedPrecondition);

    // A plugin that fails at ADD: vmletd abandons the boot and kills its VMM, as
    // asked (the harness fails the test on any other VMM exit).
    net.write(
        "10-bad.conflist",
        &json!({"cniVersion": "1.0.0", "name": NETWORK, "plugins": [
            {"type": "bridge", "bridge": BRIDGE,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "not-a-subnet"}]]}}
        ]})
        .to_string(),
    );
    assert!(c.conditions()["NetworkReady"].0);
    expect_refused("CNI plugin bridge ADD failed", Code::Internal);

    // A host network pod.
    let mut host = cfg.clone();
    host.linux = Some(v1::LinuxPodSandboxConfig {
        security_context: Some(v1::LinuxSandboxSecurityContext {
            namespace_options: Some(v1::NamespaceOption {
                network: v1::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let e = c.run_pod(host).expect_err("host network");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");

    // A good network from here on. (The failed ADD left an empty bridge of the same
    // name; Debian's bridge plugin cannot take over a bridge made with another
    // configuration, so it goes first.)
    let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
    net.write_conflist(None);

    // A sysctl outside the namespaced allow-list: the guest refuses it and the pod
    // is undone, network included.
    let mut bad_sysctl = cfg.clone();
    let mut linux = v1::LinuxPodSandboxConfig::default();
    linux.sysctls.insert("kernel.panic".into(), "1".into());
    bad_sysctl.linux = Some(linux);
    let e = c.run_pod(bad_sysctl).expect_err("kernel.panic");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("kernel.panic"), "{e}");
    assert!(c.list_pods(None).is_empty());
    assert!(net.namespaces().is_empty(), "{:?}", net.namespaces());
    assert!(net.leases().is_empty(), "{:?}", net.leases());
    assert!(d.vmm_pids().is_empty());

    // Fixed: the same pod name runs now.
    let pod = c.run_pod(cfg.clone()).expect("RunPodSandbox");
    assert!(c.pod_ip(&pod).starts_with("10.77.0."));
    remove_all(&c, &[&pod]);
    net.assert_clean(&[&pod]);
}

/// IDs of the daemon's warm VMs (records in phase Warm).
fn warm_ids(d: &Vmletd) -> Vec<String> {
    files(&d.state_dir().join("pods"))
        .into_iter()
        .filter(|id| {
            std::fs::read_to_string(d.state_dir().join("pods").join(id).join("pod.json"))
                .is_ok_and(|t| t.contains("\"phase\": \"Warm\""))
        })
        .collect()
}

/// Waits until the daemon has a warm VM other than `not` and returns its ID.
fn wait_warm(d: &Vmletd, not: Option<&str>) -> String {
    let start = Instant::now();
    loop {
        if let Some(id) = warm_ids(d).into_iter().find(|id| Some(id.as_str()) != not) {
            return id;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no warm VM appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The MAC of `ifname` in the namespace pinned at `netns`.
fn mac_in(netns: &std::path::Path, ifname: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-o", "link", "show", "dev", ifname])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let words: Vec<&str> = text.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "link/ether");
    i.and_then(|i| words.get(i + 1))
        .unwrap_or_else(|| panic!("no MAC in {text:?}"))
        .to_string()
}

#[test]
fn warm_vms_become_pods_and_leave_nothing_behind() {
    let (registry, image) = busybox_registry("busybox:e2e");
    let net = Net::new(None);
    let mut d = Vmletd::start_with(
        &["--insecure-registry", registry.addr(), "--warm-pool", "1"],
        &net.daemon_config(),
    );
    let c = d.client();
    c.pull(&image).expect("PullImage");

    // A warm VM is no pod and holds no address; its namespace and tap exist.
    let warm = wait_warm(&d, None);
    assert!(c.list_pods(None).is_empty());
    assert!(net.leases().is_empty(), "{:?}", net.leases());
    let netns = net.netns_dir().join(format!("vmlet-{warm}"));
    assert!(!mac_in(&netns, "tap0").is_empty());

    // The next pod of the default size is that VM, on the network with its own MAC.
    let mut cfg = pod_config("warm", &d.log_dir());
    publish(&mut cfg, 80, 18082);
    let pod = c.run_pod(cfg.clone()).expect("RunPodSandbox");
    assert_eq!(pod, warm, "the pod did not get the warm VM");
    let ip = c.pod_ip(&pod);
    serve(&c, &pod, &cfg, &image, "warm-pod");
    assert_eq!(fetch(&format!("http://{ip}/")).trim(), "warm-pod");
    assert_eq!(
        fetch(&format!("http://{GATEWAY}:18082/")).trim(),
        "warm-pod"
    );
    let sh = idle(&c, &pod, &cfg, &image);
    let guest_mac = exec_ok(&c, &sh, "cat /sys/class/net/eth0/address");
    assert_eq!(guest_mac.trim(), mac_in(&netns, "eth0"));
    let hostname = exec_ok(&c, &sh, "hostname");
    assert_eq!(hostname.trim(), "warm");

    // The pool refills; a pod of another size boots a VM of its own.
    let next = wait_warm(&d, Some(&warm));
    let mut big = pod_config("big", &d.log_dir());
    big.linux = Some(v1::LinuxPodSandboxConfig {
        resources: Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: 512 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let big = c.run_pod(big).expect("RunPodSandbox");
    assert_ne!(big, next);
    assert!(warm_ids(&d).contains(&next));
    remove_all(&c, &[&pod, &big]);
    // No warm VM failed its pod: vmletd would have hidden that behind a fresh boot.
    assert_eq!(c.warm_pool()["failed"], 0, "{}", c.warm_pool());

    // After kill -9 the next daemon removes the old warm VM (and boots a new one).
    d.signal_and_wait(libc::SIGKILL);
    d.restart();
    let start = Instant::now();
    while warm_ids(&d).contains(&next) || net.namespaces().contains(&format!("vmlet-{next}")) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the old warm VM is still there"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_warm(&d, Some(&next));
    let pool = d.client().warm_pool();
    assert_eq!(pool["failed"], 0, "{pool}");

    // A daemon that exits removes its warm VMs.
    d.signal_and_wait(libc::SIGTERM);
    assert!(d.vmm_pids().is_empty(), "VMMs left: {:?}", d.vmm_pids());
    assert!(warm_ids(&d).is_empty(), "warm VMs left: {:?}", warm_ids(&d));
    net.assert_clean(&[&pod, &big, &warm, &next]);
}

#[test]
fn sigint_stops_vmletd_like_sigterm_and_the_socket_has_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let net = Net::new(None);
    let config = format!("socket_mode = 0o640\n{}", net.daemon_config());
    let mut d = Vmletd::start_with(&["--warm-pool", "1"], &config);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o640, "CRI socket mode {mode:o}");

    // A warm VM, booted: a VMM, a record and a network namespace.
    d.client().wait_warm_pool_full();
    let warm = wait_warm(&d, None);
    assert_eq!(d.vmm_pids().len(), 1);
    assert_eq!(net.namespaces(), [format!("vmlet-{warm}")]);

    // SIGINT, as SIGTERM: a clean exit that removes the warm VMs.
    let status = d.signal_and_wait(libc::SIGINT);
    assert_eq!(status.code(), Some(0), "vmletd exited with {status}");
    let log = std::fs::read_to_string(d.log_file()).unwrap();
    assert!(log.contains("SIGINT: exiting"), "{log}");
    assert!(d.vmm_pids().is_empty(), "VMMs left: {:?}", d.vmm_pids());
    let records = files(&d.state_dir().join("pods"));
    assert!(records.is_empty(), "records left: {records:?}");
    // A warm VM never joined the network (no ADD, so no bridge either): its
    // namespace is all there was.
    assert!(net.namespaces().is_empty(), "{:?}", net.namespaces());
    assert!(net.leases().is_empty(), "{:?}", net.leases());
}

#[test]
fn dual_stack_pods_get_both_addresses_and_answer_over_ipv6() {
    let net = Net::dual_stack();
    let d = Vmletd::start_with(&[], &net.daemon_config());
    let c = d.client();
    let pod = c
        .run_pod(pod_config("six", &d.log_dir()))
        .expect("RunPodSandbox");

    // PodSandboxStatus: the IPv4 address first, the IPv6 one beside it.
    let network = c
        .pod_status(&pod)
        .expect("PodSandboxStatus")
        .status
        .and_then(|s| s.network)
        .expect("the pod's network");
    let v4: std::net::Ipv4Addr = network.ip.parse().expect("an IPv4 address first");
    assert!(v4.to_string().starts_with("10.77.0."), "{network:?}");
    let extra: Vec<&str> = network
        .additional_ips
        .iter()
        .map(|a| a.ip.as_str())
        .collect();
    assert_eq!(extra.len(), 1, "{network:?}");
    let v6: std::net::Ipv6Addr = extra[0].parse().expect("an IPv6 address second");
    assert!(v6.to_string().starts_with("fd77::"), "{network:?}");
    let mut leases = net.leases();
    leases.sort();
    assert_eq!(leases, [v4.to_string(), v6.to_string()]);

    // The guest has it on its interface, with a default route over the bridge.
    let vsock = d.run_dir().join("pods").join(&pod).join("vsock");
    let agent = GuestAgent::connect(&vsock).expect("connect to the guest");
    let r = agent.run("ip -6 -o addr show dev eth0; ip -6 route show default");
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    assert_eq!(
        r.exit_code,
        0,
        "{out} {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(out.contains(&format!("inet6 {v6}/64")), "{out}");
    assert!(out.contains(&format!("default via {GATEWAY6}")), "{out}");

    // The host reaches the pod over IPv6 (a few tries: the bridge's own address may
    // still be in duplicate address detection).
    let start = Instant::now();
    loop {
        let ping = Command::new("ping")
            .args(["-6", "-c", "1", "-W", "5", &v6.to_string()])
            .output()
            .unwrap();
        if ping.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "ping -6 {v6}: {}{}",
            String::from_utf8_lossy(&ping.stdout),
            String::from_utf8_lossy(&ping.stderr)
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    remove_all(&c, &[&pod]);
    net.assert_clean(&[&pod]);
}
