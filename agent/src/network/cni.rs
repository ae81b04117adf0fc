//! The Container Network Interface, as a runtime drives it: the node's network
//! configuration (the lexically first `.conflist`/`.conf`/`.json` in the config
//! directory), and its plugin chain executed with the CNI environment and stdin/stdout
//! protocol for ADD, CHECK and DEL.
//!
//! Written here rather than taken from a crate: the Rust CNI crates implement the
//! plugin side; the runtime side is a process exec with a JSON document in and out,
//! which is what this module does. Results are cached (as libcni does) so that DEL,
//! which needs the ADD result as `prevResult`, works after a restart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Map, Value};

/// The CNI spec versions vmlet speaks.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.4.0", "1.0.0", "1.1.0", "0.3.1", "0.3.0"];

/// `PATH` given to plugins (portmap and firewall run iptables).
const PLUGIN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A CNI operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// No configuration file in the directory.
    #[error("no CNI network configuration in {0} (.conflist, .conf or .json)")]
    NoConfig(PathBuf),
    /// A configuration file that cannot be used.
    #[error("CNI configuration {path}: {reason}")]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A plugin binary that is not in any bin directory.
    #[error("CNI plugin {plugin:?} not found in {dirs:?}")]
    NoPlugin {
        /// The plugin type.
        plugin: String,
        /// Where it was looked for.
        dirs: Vec<PathBuf>,
    },
    /// A plugin that failed.
    #[error("CNI plugin {plugin} {command} failed (code {code}): {msg}{details}")]
    Plugin {
        /// The plugin type.
        plugin: String,
        /// ADD, DEL or CHECK.
        command: &'static str,
        /// The CNI error code (0 when the plugin printed none).
        code: u64,
        /// Its message, or its stderr.
        msg: String,
        /// Its details, prefixed with "; " when present.
        details: String,
    },
    /// A plugin's output that is not a CNI result.
    #[error("CNI plugin {plugin} returned an unreadable result: {reason}")]
    BadResult {
        /// The plugin type.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// Running a plugin or caching its result failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The node's network: a named chain of plugins.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NetworkConfig {
    /// Network name.
    pub name: String,
    /// CNI version of the configuration.
    pub cni_version: String,
    /// The plugin configurations, in order.
    pub plugins: Vec<Map<String, Value>>,
    /// The file it came from.
    pub source: PathBuf,
}

impl NetworkConfig {
    /// Reads the lexically first configuration in `dir`.
    pub fn load_default(dir: &Path) -> Result<NetworkConfig, CniError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|_| CniError::NoConfig(dir.to_owned()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("conflist" | "conf" | "json")
                    )
            })
            .collect();
        files.sort();
        let path = files
            .into_iter()
            .next()
            .ok_or_else(|| CniError::NoConfig(dir.to_owned()))?;
        Self::load(&path)
    }

    /// Reads one configuration file: a `.conflist`, or a single-plugin `.conf`/`.json`.
    pub fn load(path: &Path) -> Result<NetworkConfig, CniError> {
        let bad = |reason: String| CniError::BadConfig {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let Value::Object(mut top) = value else {
            return Err(bad("not a JSON object".into()));
        };
        let name = match top.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            _ => return Err(bad("\"name\" is missing".into())),
        };
        let cni_version = match top.get("cniVersion") {
            Some(Value::String(v)) => v.clone(),
            _ => return Err(bad("\"cniVersion\" is missing".into())),
        };
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(bad(format!(
                "cniVersion {cni_version} is not supported (use one of {SUPPORTED_VERSIONS:?})"
            )));
        }
        let plugins = match top.remove("plugins") {
            Some(Value::Array(list)) => list
                .into_iter()
                .map(|p| match p {
                    Value::Object(m) => Ok(m),
                    _ => Err(bad("a plugin is not an object".into())),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(bad("\"plugins\" is not a list".into())),
            // A .conf: the file is the one plugin.
            None => vec![top],
        };
        if plugins.is_empty() {
            return Err(bad("no plugins".into()));
        }
        for p in &plugins {
            match p.get("type") {
                Some(Value::String(t)) if !t.is_empty() && !t.contains('/') => {}
                _ => return Err(bad("a plugin has no valid \"type\"".into())),
            }
        }
        Ok(NetworkConfig {
            name,
            cni_version,
            plugins,
            source: path.to_owned(),
        })
    }
}

/// What the runtime says about the attachment.
#[derive(Debug, Clone, Default)]
pub struct Attachment {
    /// The pod sandbox's ID (`CNI_CONTAINERID`).
    pub container_id: String,
    /// Path of its network namespace (`CNI_NETNS`).
    pub netns: PathBuf,
    /// Interface name inside it (`CNI_IFNAME`).
    pub ifname: String,
    /// `CNI_ARGS` pairs (K8S_POD_NAMESPACE, K8S_POD_NAME, ...).
    pub args: Vec<(String, String)>,
    /// Runtime capability values (`portMappings`, `bandwidth`, `dns`, ...), given to the
    /// plugins that declare the capability.
    pub capabilities: Map<String, Value>,
}

/// One address of a CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// CIDR, e.g. "10.88.0.5/16".
    pub address: String,
    /// Gateway, if any.
    pub gateway: Option<String>,
    /// Index into the result's interfaces.
    pub interface: Option<usize>,
}

/// One interface of a CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// The netns path for interfaces inside the sandbox; empty for host-side ones.
    pub sandbox: String,
}

/// A route of a CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Destination CIDR.
    pub dst: String,
    /// Gateway, if any.
    pub gw: Option<String>,
}

/// DNS settings of a CNI result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    /// Servers.
    pub nameservers: Vec<String>,
    /// Search domains.
    pub search: Vec<String>,
    /// Options.
    pub options: Vec<String>,
    /// Local domain.
    pub domain: Option<String>,
}

/// The result of ADD.
#[derive(Debug, Clone)]
pub struct CniResult {
    /// The raw JSON (cached for DEL and CHECK).
    pub raw: Value,
    /// Interfaces.
    pub interfaces: Vec<Interface>,
    /// Addresses.
    pub ips: Vec<IpConfig>,
    /// Routes.
    pub routes: Vec<RouteConfig>,
    /// DNS.
    pub dns: Dns,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn string(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

impl CniResult {
    /// Reads a result document.
    pub fn parse(raw: Value) -> Result<CniResult, String> {
        if !raw.is_object() {
            return Err("not a JSON object".into());
        }
        let list = |key| {
            raw.get(key)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let ips = list("ips")
            .iter()
            .map(|ip| {
                Ok(IpConfig {
                    address: string(ip, "address").ok_or("an IP has no address")?,
                    gateway: string(ip, "gateway"),
                    interface: ip
                        .get("interface")
                        .and_then(Value::as_u64)
                        .and_then(|i| usize::try_from(i).ok()),
                })
            })
            .collect::<Result<Vec<_>, &str>>()?;
        let interfaces = list("interfaces")
            .iter()
            .map(|i| Interface {
                name: string(i, "name").unwrap_or_default(),
                mac: string(i, "mac").unwrap_or_default(),
                sandbox: string(i, "sandbox").unwrap_or_default(),
            })
            .collect();
        let routes = list("routes")
            .iter()
            .filter_map(|r| {
                Some(RouteConfig {
                    dst: string(r, "dst")?,
                    gw: string(r, "gw"),
                })
            })
            .collect();
        let dns = raw
            .get("dns")
            .map(|d| Dns {
                nameservers: strings(d.get("nameservers")),
                search: strings(d.get("search")),
                options: strings(d.get("options")),
                domain: string(d, "domain"),
            })
            .unwrap_or_default();
        Ok(CniResult {
            interfaces,
            ips,
            routes,
            dns,
            raw,
        })
    }

    /// The interface inside the sandbox named `ifname`, if the result lists it.
    pub fn sandbox_interface(&self, ifname: &str) -> Option<&Interface> {
        self.interfaces
            .iter()
            .find(|i| i.name == ifname && !i.sandbox.is_empty())
    }
}

/// Runs CNI plugins.
#[derive(Debug, Clone)]
pub struct Cni {
    /// Where plugin binaries are looked up, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// Where ADD results are cached for DEL and CHECK.
    pub cache_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Add,
    Check,
    Del,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Add => "ADD",
            Op::Check => "CHECK",
            Op::Del => "DEL",
        }
    }
}

impl Cni {
    fn cache_file(&self, net: &NetworkConfig, att: &Attachment) -> PathBuf {
        self.cache_dir.join(format!(
            "{}-{}-{}.json",
            net.name, att.container_id, att.ifname
        ))
    }

    fn plugin_binary(&self, plugin: &str) -> Result<PathBuf, CniError> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::NoPlugin {
                plugin: plugin.to_owned(),
                dirs: self.bin_dirs.clone(),
            })
    }

    /// The stdin document for one plugin of the chain.
    fn plugin_input(
        net: &NetworkConfig,
        plugin: &Map<String, Value>,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Value {
        let mut conf = plugin.clone();
        conf.insert("name".into(), json!(net.name));
        conf.insert("cniVersion".into(), json!(net.cni_version));
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        // Only the capabilities the plugin asks for, as libcni does.
        let wanted = plugin.get("capabilities").and_then(Value::as_object);
        let runtime: Map<String, Value> = att
            .capabilities
            .iter()
            .filter(|(k, _)| {
                wanted.is_some_and(|w| w.get(k.as_str()).and_then(Value::as_bool) == Some(true))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !runtime.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime));
        }
        Value::Object(conf)
    }

    fn exec(
        &self,
        op: Op,
        net: &NetworkConfig,
        plugin: &Map<String, Value>,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Option<Value>, CniError> {
        let kind = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let binary = self.plugin_binary(&kind)?;
        let input = Self::plugin_input(net, plugin, att, prev);
        let args: Vec<String> = att.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let cni_path = std::env::join_paths(&self.bin_dirs).map_err(|e| CniError::Io {
            what: "CNI_PATH".into(),
            source: std::io::Error::other(e),
        })?;
        let io = |what: &str| {
            let what = format!("CNI plugin {kind} {}: {what}", op.name());
            move |source| CniError::Io { what, source }
        };
        let mut child = Command::new(&binary)
            .env_clear()
            .env("PATH", PLUGIN_PATH)
            .env("CNI_COMMAND", op.name())
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", &att.ifname)
            .env("CNI_ARGS", args.join(";"))
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io("start"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.to_string().as_bytes())
                .map_err(io("write its configuration"))?;
        }
        let out = child.wait_with_output().map_err(io("wait"))?;
        let stdout: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if !out.status.success() {
            let (code, msg, details) = match &stdout {
                Some(v) => (
                    v.get("code").and_then(Value::as_u64).unwrap_or(0),
                    string(v, "msg").unwrap_or_default(),
                    string(v, "details")
                        .map(|d| format!("; {d}"))
                        .unwrap_or_default(),
                ),
                None => (0, String::new(), String::new()),
            };
            let msg = if msg.is_empty() {
                format!(
                    "{} ({})",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    out.status
                )
            } else {
                msg
            };
            return Err(CniError::Plugin {
                plugin: kind,
                command: op.name(),
                code,
                msg,
                details,
            });
        }
        if op != Op::Add {
            return Ok(None);
        }
        match stdout {
            Some(v) => Ok(Some(v)),
            None => Err(CniError::BadResult {
                plugin: kind,
                reason: format!(
                    "not JSON: {:?}",
                    String::from_utf8_lossy(&out.stdout)
                        .chars()
                        .take(200)
                        .collect::<String>()
                ),
            }),
        }
    }

    /// ADD: runs the chain in order, each plugin getting the previous result. On a
    /// failure the chain is deleted again, so nothing is left half set up.
    pub fn add(&self, net: &NetworkConfig, att: &Attachment) -> Result<CniResult, CniError> {
        let mut prev: Option<Value> = None;
        for plugin in &net.plugins {
            match self.exec(Op::Add, net, plugin, att, prev.as_ref()) {
                Ok(result) => prev = result.or(prev),
                Err(e) => {
                    if let Err(undo) = self.run_del(net, att, prev.as_ref()) {
                        tracing::warn!(error = %undo, "CNI DEL after a failed ADD failed too");
                    }
                    return Err(e);
                }
            }
        }
        let raw = prev.unwrap_or_else(|| json!({}));
        let result = CniResult::parse(raw.clone()).map_err(|reason| CniError::BadResult {
            plugin: net.name.clone(),
            reason,
        })?;
        self.save(net, att, &raw)?;
        Ok(result)
    }

    /// CHECK: asks every plugin whether the attachment is still as ADD left it.
    pub fn check(&self, net: &NetworkConfig, att: &Attachment) -> Result<(), CniError> {
        let cached = self.load(net, att);
        for plugin in &net.plugins {
            self.exec(Op::Check, net, plugin, att, cached.as_ref())?;
        }
        Ok(())
    }

    /// Whether every plugin of the chain is installed.
    pub fn check_plugins(&self, net: &NetworkConfig) -> Result<(), CniError> {
        for plugin in &net.plugins {
            let kind = plugin
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            self.plugin_binary(kind)?;
        }
        Ok(())
    }

    /// DEL: runs the chain in reverse with the cached ADD result, then forgets it.
    /// Idempotent: plugins must accept a DEL of what is already gone, and a second
    /// DEL (or one after a restart) works the same.
    pub fn del(&self, net: &NetworkConfig, att: &Attachment) -> Result<(), CniError> {
        let cached = self.load(net, att);
        self.run_del(net, att, cached.as_ref())?;
        match std::fs::remove_file(self.cache_file(net, att)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::Io {
                what: "forget the cached CNI result".into(),
                source,
            }),
        }
    }

    fn run_del(
        &self,
        net: &NetworkConfig,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Result<(), CniError> {
        let mut first_error = None;
        for plugin in net.plugins.iter().rev() {
            if let Err(e) = self.exec(Op::Del, net, plugin, att, prev) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn save(&self, net: &NetworkConfig, att: &Attachment, raw: &Value) -> Result<(), CniError> {
        let io = |what: &'static str| {
            move |source| CniError::Io {
                what: format!("cache the CNI result: {what}"),
                source,
            }
        };
        std::fs::create_dir_all(&self.cache_dir).map_err(io("create the directory"))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.cache_dir).map_err(io("temp file"))?;
        tmp.write_all(raw.to_string().as_bytes())
            .map_err(io("write"))?;
        tmp.persist(self.cache_file(net, att))
            .map_err(|e| io("rename")(e.error))?;
        Ok(())
    }

    fn load(&self, net: &NetworkConfig, att: &Attachment) -> Option<Value> {
        let text = std::fs::read(self.cache_file(net, att)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn the_lexically_first_config_wins_and_conf_is_one_plugin() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "20-b.conflist",
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        );
        write(
            dir.path(),
            "10-a.conf",
            r#"{"cniVersion":"0.4.0","name":"a","type":"ptp"}"#,
        );
        write(dir.path(), "05-ignored.txt", "not a config");
        let net = NetworkConfig::load_default(dir.path()).unwrap();
        assert_eq!((net.name.as_str(), net.plugins.len()), ("a", 1));
        std::fs::remove_file(dir.path().join("10-a.conf")).unwrap();
        let net = NetworkConfig::load_default(dir.path()).unwrap();
        assert_eq!((net.name.as_str(), net.plugins.len()), ("b", 2));
    }

    #[test]
    fn bad_configs_are_refused_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            NetworkConfig::load_default(dir.path()),
            Err(CniError::NoConfig(_))
        ));
        for (text, reason) in [
            ("{", "not JSON"),
            (r#"{"cniVersion":"1.0.0","plugins":[]}"#, "name"),
            (
                r#"{"cniVersion":"0.1.0","name":"x","type":"bridge"}"#,
                "not supported",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"x","plugins":[]}"#,
                "no plugins",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"../evil"}]}"#,
                "type",
            ),
        ] {
            let p = write(dir.path(), "x.conflist", text);
            let err = NetworkConfig::load(&p).unwrap_err().to_string();
            assert!(err.contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn plugins_get_only_the_capabilities_they_declare() {
        let net = NetworkConfig {
            name: "n".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![],
            source: PathBuf::new(),
        };
        let mut att = Attachment::default();
        att.capabilities
            .insert("portMappings".into(), json!([{"hostPort": 8080}]));
        att.capabilities.insert("bandwidth".into(), json!({}));
        let plugin: Map<String, Value> =
            serde_json::from_str(r#"{"type":"portmap","capabilities":{"portMappings":true}}"#)
                .unwrap();
        let input = Cni::plugin_input(&net, &plugin, &att, Some(&json!({"ips": []})));
        assert_eq!(
            input["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080}]})
        );
        assert_eq!(input["name"], "n");
        assert_eq!(input["prevResult"], json!({"ips": []}));
        let bare: Map<String, Value> = serde_json::from_str(r#"{"type":"bridge"}"#).unwrap();
        assert!(Cni::plugin_input(&net, &bare, &att, None)
            .get("runtimeConfig")
            .is_none());
    }

    #[test]
    fn results_parse() {
        let r = CniResult::parse(json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                           {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/netns/x"}],
            "ips": [{"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc"]}
        }))
        .unwrap();
        assert_eq!(
            r.sandbox_interface("eth0").unwrap().mac,
            "aa:bb:cc:dd:ee:02"
        );
        assert_eq!(r.ips[0].gateway.as_deref(), Some("10.88.0.1"));
        assert_eq!(r.routes[0].dst, "0.0.0.0/0");
        assert_eq!(r.dns.nameservers, ["10.96.0.10"]);
        assert_eq!(
            CniResult::parse(json!({"ips": [{"gateway": "x"}]})).err(),
            Some("an IP has no address".to_owned())
        );
        assert_eq!(
            CniResult::parse(json!([])).err(),
            Some("not a JSON object".to_owned())
        );
    }
}
