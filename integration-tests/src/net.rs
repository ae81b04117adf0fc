//! A CNI test network for vmletd: a bridge on 10.77.0.0/24 with host-local
//! addresses, DNS settings and portmap, with its configuration directory,
//! host-local's leases and the daemon's netns directory in a temporary directory.
//! Dropping it deletes the bridge.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use vmlet_test_support::TestRegistry;

use crate::cri::Vmletd;

/// The bridge the network's pods hang off.
pub const BRIDGE: &str = "vmlet-e2e0";
/// The network's name (host-local keeps its leases under it).
pub const NETWORK: &str = "vmlet-e2e";
/// The bridge's address: the pods' gateway, and the host's address on the network.
pub const GATEWAY: &str = "10.77.0.1";
/// The name server the plugins return.
pub const CNI_DNS: &str = "10.77.0.53";
/// The IPv6 subnet of a dual-stack network ([`Net::dual_stack`]).
pub const SUBNET6: &str = "fd77::/64";
/// The bridge's IPv6 address on a dual-stack network.
pub const GATEWAY6: &str = "fd77::1";

/// A CNI configuration directory, host-local's lease directory and the daemon's
/// netns directory, all temporary; the bridge goes with it.
pub struct Net {
    dir: tempfile::TempDir,
}

impl Net {
    /// A bridge network on 10.77.0.0/24; `only` limits the pool to one address.
    pub fn new(only: Option<&str>) -> Net {
        let net = Net::empty();
        net.write_conflist(only);
        net
    }

    /// A bridge network with an IPv4 (10.77.0.0/24) and an IPv6 ([`SUBNET6`]) range:
    /// each pod gets an address of both.
    pub fn dual_stack() -> Net {
        let net = Net::empty();
        net.write_conflist_with(None, true);
        net
    }

    /// No configuration at all.
    pub fn empty() -> Net {
        let dir = tempfile::Builder::new()
            .prefix("cni")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::create_dir(dir.path().join("net.d")).unwrap();
        Net { dir }
    }

    /// The CNI configuration directory.
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    /// Where the daemon pins pod namespaces.
    pub fn netns_dir(&self) -> PathBuf {
        self.dir.path().join("netns")
    }

    /// Replaces the configuration with one file `name`.
    pub fn write(&self, name: &str, text: &str) {
        for e in std::fs::read_dir(self.conf_dir()).unwrap().flatten() {
            std::fs::remove_file(e.path()).unwrap();
        }
        std::fs::write(self.conf_dir().join(name), text).unwrap();
    }

    /// Replaces the configuration with the bridge network.
    pub fn write_conflist(&self, only: Option<&str>) {
        self.write_conflist_with(only, false);
    }

    /// The bridge network, with an IPv6 range too when `ipv6`.
    fn write_conflist_with(&self, only: Option<&str>, ipv6: bool) {
        let mut range = json!({"subnet": "10.77.0.0/24"});
        if let Some(ip) = only {
            range["rangeStart"] = json!(ip);
            range["rangeEnd"] = json!(ip);
        }
        let mut ranges = vec![json!([range])];
        let mut routes = vec![json!({"dst": "0.0.0.0/0"})];
        if ipv6 {
            ranges.push(json!([{"subnet": SUBNET6}]));
            routes.push(json!({"dst": "::/0"}));
        }
        let conf = json!({
            "cniVersion": "1.0.0", "name": NETWORK,
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": false,
                 "dns": {"nameservers": [CNI_DNS], "search": ["cni.e2e"]},
                 "ipam": {"type": "host-local", "ranges": ranges,
                          "routes": routes,
                          "dataDir": self.dir.path().join("ipam").display().to_string()}},
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
            ]
        });
        self.write("10-e2e.conflist", &conf.to_string());
    }

    /// vmletd's configuration for this network.
    pub fn daemon_config(&self) -> String {
        format!(
            "[network]\nmode = \"cni\"\ncni_conf_dir = \"{}\"\nnetns_dir = \"{}\"\n",
            self.conf_dir().display(),
            self.netns_dir().display()
        )
    }

    /// vmletd on this network, allowed to pull from `registry`, with `image` pulled.
    pub fn daemon(&self, registry: &TestRegistry, image: &str) -> Vmletd {
        let d = Vmletd::start_with(
            &["--insecure-registry", registry.addr()],
            &self.daemon_config(),
        );
        d.client().pull(image).expect("PullImage");
        d
    }

    /// Addresses host-local has handed out.
    pub fn leases(&self) -> Vec<String> {
        files(&self.dir.path().join("ipam").join(NETWORK))
            .into_iter()
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    /// Network namespaces the daemon has pinned.
    pub fn namespaces(&self) -> Vec<String> {
        files(&self.netns_dir())
    }

    /// Fails unless nothing of pods `ids` is left: leases, namespaces, veths on the
    /// bridge, iptables rules naming them.
    pub fn assert_clean(&self, ids: &[&str]) {
        assert!(self.leases().is_empty(), "leases left: {:?}", self.leases());
        assert!(
            self.namespaces().is_empty(),
            "namespaces left: {:?}",
            self.namespaces()
        );
        let veths = output("ip", &["-o", "link", "show", "master", BRIDGE]);
        assert!(veths.trim().is_empty(), "ports left on {BRIDGE}: {veths}");
        let rules = output("iptables-save", &[]);
        for id in ids {
            assert!(
                !rules.contains(id),
                "iptables rules left for {id}:\n{rules}"
            );
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
    }
}

/// The names of the entries of `dir` (none when it does not exist).
pub fn files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `cmd` and returns its stdout; panics when it fails.
pub fn output(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
