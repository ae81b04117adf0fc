//! Pod networking against the real CNI plugins from Debian's containernetworking-plugins,
//! in real network namespaces (run as root, as the suite does).

// Test-only crate: a failed setup step panics with its message, which is the test's
// failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use vmlet_agent::network::cni::{Attachment, Cni, CniError, NetworkConfig};
use vmlet_agent::network::netns::Netns;
use vmlet_agent::network::tap::connect_tap;

const PLUGINS: &str = "/usr/lib/cni";

/// A bridge + host-local + portmap network in a temp dir, with its own bridge and
/// subnet so tests do not collide.
struct TestNet {
    dir: tempfile::TempDir,
    bridge: String,
    subnet: u8,
}

impl TestNet {
    fn new(tag: u8, portmap: bool, extra: &[serde_json::Value]) -> TestNet {
        assert!(
            Path::new(PLUGINS).join("bridge").exists(),
            "install containernetworking-plugins (scripts/setup.sh)"
        );
        let dir = tempfile::tempdir().unwrap();
        let subnet = 100 + tag;
        let bridge = format!("vmltst{}{tag}", std::process::id() % 1000);
        let mut plugins = vec![json!({
            "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.231.{subnet}.0/24")}]],
                     "routes": [{"dst": "0.0.0.0/0"}],
                     "dataDir": dir.path().join("ipam").display().to_string()}
        })];
        if portmap {
            plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
        }
        plugins.extend_from_slice(extra);
        let conf =
            json!({"cniVersion": "1.0.0", "name": format!("vmlet-test-{tag}"), "plugins": plugins});
        std::fs::create_dir(dir.path().join("net.d")).unwrap();
        std::fs::write(dir.path().join("net.d/10-test.conflist"), conf.to_string()).unwrap();
        TestNet {
            dir,
            bridge,
            subnet,
        }
    }

    fn config(&self) -> NetworkConfig {
        NetworkConfig::load_default(&self.dir.path().join("net.d")).unwrap()
    }

    fn cni(&self, extra_bin: Option<&Path>) -> Cni {
        let mut bin_dirs = vec![PathBuf::from(PLUGINS)];
        bin_dirs.extend(extra_bin.map(Path::to_owned));
        Cni {
            bin_dirs,
            cache_dir: self.dir.path().join("cache"),
        }
    }

    fn netns(&self, name: &str) -> Netns {
        Netns::create(&self.dir.path().join("netns"), name).unwrap()
    }

    fn allocated(&self) -> Vec<String> {
        let dir = self.dir.path().join("ipam").join(self.config().name);
        let mut ips: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("10."))
                    .collect()
            })
            .unwrap_or_default();
        ips.sort();
        ips
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

fn attachment(id: &str, ns: &Netns) -> Attachment {
    let mut att = Attachment {
        container_id: id.into(),
        netns: ns.path().to_owned(),
        ifname: "eth0".into(),
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), "default".into()),
            ("K8S_POD_NAME".into(), id.into()),
        ],
        ..Default::default()
    };
    att.capabilities.insert(
        "portMappings".into(),
        json!([{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]),
    );
    att
}

fn in_netns(ns: &Netns, cmd: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args(cmd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn add_tap_and_del_with_real_plugins() {
    let net = TestNet::new(1, true, &[]);
    let conf = net.config();
    let cni = net.cni(None);
    let ns = net.netns("pod1");
    let att = attachment("pod1", &ns);

    let result = cni.add(&conf, &att).expect("ADD");
    let ip = &result.ips[0];
    assert!(
        ip.address.starts_with(&format!("10.231.{}.", net.subnet)),
        "{ip:?}"
    );
    assert_eq!(
        ip.gateway.as_deref(),
        Some(format!("10.231.{}.1", net.subnet).as_str())
    );
    let eth0 = result
        .sandbox_interface("eth0")
        .expect("eth0 in the result")
        .clone();
    let addr = in_netns(&ns, &["ip", "-o", "addr", "show", "eth0"]);
    assert!(addr.contains(&ip.address), "{addr}");
    // portmap got the pod's port mapping from the runtime capabilities.
    let pod_ip = ip.address.split('/').next().unwrap().to_owned();
    assert!(
        nat_rules().contains(&format!("{pod_ip}:80")),
        "no DNAT rule for {pod_ip}"
    );

    // The tap joins eth0 both ways and takes its MAC and MTU.
    let link = connect_tap(&ns, "eth0", "tap0").expect("tap");
    assert_eq!(link.mac, eth0.mac);
    assert_eq!(connect_tap(&ns, "eth0", "tap0").expect("tap again"), link);
    for dev in ["eth0", "tap0"] {
        let filters = in_netns(&ns, &["tc", "filter", "show", "dev", dev, "ingress"]);
        let other = if dev == "eth0" { "tap0" } else { "eth0" };
        assert!(
            filters.contains("protocol all")
                && filters.contains("mirred")
                && filters.contains(&format!("to device {other}")),
            "{dev}: {filters}"
        );
    }

    // A second pod gets another address; DEL frees the first, and is idempotent, also
    // for a runtime that restarted (a new Cni with the same cache).
    let ns2 = net.netns("pod2");
    let att2 = attachment("pod2", &ns2);
    let r2 = cni.add(&conf, &att2).expect("ADD pod2");
    assert_ne!(r2.ips[0].address, ip.address);
    assert_eq!(net.allocated().len(), 2);
    cni.del(&conf, &att).expect("DEL");
    assert_eq!(net.allocated().len(), 1);
    cni.del(&conf, &att).expect("second DEL");
    net.cni(None)
        .del(&conf, &att2)
        .expect("DEL after a restart");
    assert!(net.allocated().is_empty());
    assert!(
        !nat_rules().contains(&format!("{pod_ip}:80")),
        "DNAT rule left behind"
    );
    ns.remove().unwrap();
    ns.remove().expect("removing twice is fine");
    ns2.remove().unwrap();
    assert!(Netns::open(ns.path()).is_none());
}

fn nat_rules() -> String {
    let out = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_confirms_an_attachment() {
    let net = TestNet::new(4, false, &[]);
    let ns = net.netns("pod");
    let att = attachment("pod", &ns);
    let cni = net.cni(None);
    cni.add(&net.config(), &att).expect("ADD");
    cni.check(&net.config(), &att).expect("CHECK");
    // Take the address away behind CNI's back: CHECK notices.
    in_netns(&ns, &["ip", "addr", "flush", "dev", "eth0"]);
    let err = cni.check(&net.config(), &att).unwrap_err();
    assert!(
        matches!(
            err,
            CniError::Plugin {
                command: "CHECK",
                ..
            }
        ),
        "{err}"
    );
    cni.del(&net.config(), &att).expect("DEL");
    ns.remove().unwrap();
}

#[test]
fn failures_are_clear_and_leave_nothing() {
    // A plugin that fails after the bridge has set things up.
    let bin = tempfile::tempdir().unwrap();
    let fail = bin.path().join("fail");
    std::fs::write(
        &fail,
        "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = DEL ] && exit 0\n\
         echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"boom\",\"details\":\"on purpose\"}'\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fail, std::fs::Permissions::from_mode(0o755)).unwrap();
    let net = TestNet::new(2, false, &[json!({"type": "fail"})]);
    let ns = net.netns("pod");
    let err = net
        .cni(Some(bin.path()))
        .add(&net.config(), &attachment("pod", &ns))
        .unwrap_err();
    match &err {
        CniError::Plugin {
            plugin,
            command,
            code,
            msg,
            details,
        } => {
            assert_eq!((plugin.as_str(), *command, *code), ("fail", "ADD", 11));
            assert_eq!(msg, "boom");
            assert!(details.contains("on purpose"));
        }
        other => panic!("{other}"),
    }
    // The chain was deleted again: no address held, no eth0 left.
    assert!(net.allocated().is_empty(), "{:?}", net.allocated());
    let links = in_netns(&ns, &["ip", "-o", "link"]);
    assert!(!links.contains("eth0"), "{links}");

    // A plugin that does not exist.
    let missing = TestNet::new(3, false, &[json!({"type": "no-such-plugin"})]);
    let err = missing
        .cni(None)
        .add(&missing.config(), &attachment("pod", &ns))
        .unwrap_err();
    assert!(matches!(err, CniError::NoPlugin { .. }), "{err}");
    assert!(missing.allocated().is_empty());
    ns.remove().unwrap();
}
