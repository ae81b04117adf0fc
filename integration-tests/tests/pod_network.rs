//! A pod VM on a CNI network: the pod's network namespace, Debian's CNI plugins
//! (bridge, host-local, portmap), the tap joined to the CNI interface by tc redirects,
//! the guest configured with the CNI result, and a busybox httpd in a container reached
//! from the host, directly and through a host port.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use vmlet_agent::network::cni::{Attachment, Cni, NetworkConfig};
use vmlet_agent::network::netns::Netns;
use vmlet_agent::network::tap::connect_tap;
use vmlet_integration_tests::agent::{req, CALL_TIMEOUT};
use vmlet_integration_tests::{images, Guest, GuestConfig};
use vmlet_proto::agent as pb;

const BRIDGE: &str = "vmlnet0";

struct Cleanup {
    cni: Cni,
    conf: NetworkConfig,
    att: Attachment,
    ns: Netns,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.cni.del(&self.conf, &self.att);
        let _ = self.ns.remove();
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
    }
}

/// Fetches `url` from the host with curl, retrying while the pod starts.
fn fetch(url: &str, timeout: Duration) -> String {
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
            start.elapsed() < timeout,
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_pod_on_a_cni_bridge_serves_http_to_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let net_d = dir.path().join("net.d");
    std::fs::create_dir(&net_d).unwrap();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "vmlet-e2e",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.232.0.0/24"}]],
                      "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": dir.path().join("ipam").display().to_string()}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    std::fs::write(net_d.join("10-e2e.conflist"), conf.to_string()).unwrap();
    let conf = NetworkConfig::load_default(&net_d).unwrap();
    let cni = Cni {
        bin_dirs: vec!["/usr/lib/cni".into()],
        cache_dir: dir.path().join("cache"),
    };
    let name = format!("vmlet-e2e-{}", std::process::id());
    // Under /run/netns, so that `ip netns exec` (the harness) finds it.
    let ns = Netns::create(Path::new("/run/netns"), &name).unwrap();
    let mut att = Attachment {
        container_id: name.clone(),
        netns: ns.path().to_owned(),
        ifname: "eth0".into(),
        args: vec![("IgnoreUnknown".into(), "1".into())],
        ..Default::default()
    };
    att.capabilities.insert(
        "portMappings".into(),
        json!([{"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}]),
    );
    let result = cni.add(&conf, &att).expect("CNI ADD");
    let cleanup = Cleanup {
        cni: cni.clone(),
        conf: conf.clone(),
        att: att.clone(),
        ns: ns.clone(),
    };
    let ip = result.ips[0].clone();
    let gateway = ip.gateway.clone().expect("gateway");
    let link = connect_tap(&ns, "eth0", "tap0").expect("tap");

    let image = images::busybox_erofs(dir.path());
    let scratch = images::scratch_disk(&dir.path().join("scratch.ext4"), 64);
    let mut guest = Guest::boot(GuestConfig {
        mem_mib: 256,
        drives: vec![
            format!("id=img0,path={},ro", image.display()),
            format!("id=scratch,path={}", scratch.display()),
        ],
        net: vec![format!("tap={},mac={}", link.tap, link.mac)],
        netns: Some(name.clone()),
        ..Default::default()
    });
    let agent = guest.agent();
    let mut c = agent.agent.clone();
    agent
        .call(
            CALL_TIMEOUT,
            c.configure_guest(req(
                pb::ConfigureGuestRequest {
                    interfaces: vec![pb::Interface {
                        mac: link.mac.clone(),
                        name: "eth0".into(),
                        addresses: vec![ip.address.clone()],
                        mtu: link.mtu,
                    }],
                    routes: vec![pb::Route {
                        destination: "0.0.0.0/0".into(),
                        gateway: gateway.clone(),
                        interface_mac: String::new(),
                    }],
                    ..Default::default()
                },
                CALL_TIMEOUT,
            )),
        )
        .expect("ConfigureGuest");
    agent
        .create(images::container_spec(
            "web",
            "img0",
            "scratch",
            &[
                "/bin/sh",
                "-c",
                "mkdir -p /www && echo hello-from-the-pod > /www/index.html && exec httpd -f -p 80 -h /www",
            ],
        ))
        .expect("CreateContainer");
    agent.start("web").expect("StartContainer");

    let pod_ip = ip.address.split('/').next().unwrap().to_owned();
    assert_eq!(
        fetch(&format!("http://{pod_ip}/"), Duration::from_secs(120)),
        "hello-from-the-pod\n"
    );
    // The host port, through portmap's DNAT, on the host's own address.
    assert_eq!(
        fetch(&format!("http://{gateway}:18081/"), Duration::from_secs(60)),
        "hello-from-the-pod\n"
    );
    agent.shutdown().expect("Shutdown");
    assert_eq!(guest.wait(Duration::from_secs(60)).code(), Some(0));
    drop(cleanup);
    assert!(Netns::open(ns.path()).is_none(), "the namespace is gone");
    let left = std::fs::read_dir(dir.path().join("ipam/vmlet-e2e"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(left, 0, "the address was released");
}
