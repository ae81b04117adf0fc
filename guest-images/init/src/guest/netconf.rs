//! Guest network configuration from the host's request.
//!
//! The host knows which NICs it gave the VM only by their MAC addresses (the
//! guest kernel picks the names), so interfaces are matched by MAC and then
//! renamed to what the pod expects. Everything goes through rtnetlink on the
//! caller's tokio runtime: PID 1 has no `ip` binary to shell out to.
//!
//! [`apply`] is idempotent so that the host can safely retry a request whose
//! answer it lost.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// Longest interface name the kernel accepts (`IFNAMSIZ` minus the NUL).
const MAX_IFNAME_LEN: usize = 15;

/// One interface to configure, found by its MAC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    /// MAC address the host gave the NIC.
    pub mac: [u8; 6],
    /// MAC address to give it now; `None` keeps `mac`. The host may boot a VM
    /// before it knows the pod's address (a pre-booted VM, or one booting while
    /// the CNI plugins run); the interface is still found by either MAC, so
    /// that a retried request finds it.
    pub new_mac: Option<[u8; 6]>,
    /// New name for the interface; `None` keeps the kernel's name.
    pub name: Option<String>,
    /// Addresses to add; existing ones are kept.
    pub addresses: Vec<IpCidr>,
    /// MTU to set; `None` keeps the current one.
    pub mtu: Option<u32>,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Destination; host bits are ignored, `0.0.0.0/0` and `::/0` are default
    /// routes.
    pub destination: IpCidr,
    /// Next hop, of the same family as `destination`.
    pub gateway: Option<IpAddr>,
    /// Output interface; `None` lets the kernel pick it from the gateway.
    pub interface_mac: Option<[u8; 6]>,
}

/// An address with a prefix length, e.g. 10.88.0.5/16 or fd00::5/64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    /// The address, host bits included.
    pub addr: IpAddr,
    /// Prefix length in bits: at most 32 for IPv4, 128 for IPv6.
    pub prefix: u8,
}

/// Why the network could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum NetconfError {
    /// An address/prefix that cannot be used.
    #[error("invalid CIDR {input:?}: {reason}")]
    BadCidr {
        /// The text or value that was rejected.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A MAC address that is not six colon-separated hex bytes.
    #[error("invalid MAC address {input:?}: expected six hex bytes like aa:bb:cc:dd:ee:ff")]
    BadMac {
        /// The text that was rejected.
        input: String,
    },
    /// An interface name the kernel would refuse.
    #[error(
        "invalid interface name {name:?}: it must be 1 to {MAX_IFNAME_LEN} bytes, \
         not \".\" or \"..\", without '/', ':' or whitespace"
    )]
    BadName {
        /// The rejected name.
        name: String,
    },
    /// No link in this network namespace has the requested MAC.
    #[error(
        "no network interface has MAC {}; interfaces seen: {}",
        format_mac(.mac),
        if .seen.is_empty() { "none".to_owned() } else { .seen.join(", ") }
    )]
    NoSuchInterface {
        /// The MAC that was looked for.
        mac: [u8; 6],
        /// Every link seen, as `name (mac)`.
        seen: Vec<String>,
    },
    /// Several links share the requested MAC, so the target is ambiguous.
    #[error("several network interfaces have MAC {}: {}", format_mac(.mac), .names.join(", "))]
    DuplicateMac {
        /// The ambiguous MAC.
        mac: [u8; 6],
        /// Names of the links that carry it.
        names: Vec<String>,
    },
    /// A route with neither a gateway nor an interface cannot be installed.
    #[error("route to {destination} has neither a gateway nor an interface")]
    RouteWithoutNextHop {
        /// The route's destination.
        destination: IpCidr,
    },
    /// A route whose gateway is of another IP family than its destination.
    #[error("route to {destination} has gateway {gateway} of another IP family")]
    GatewayFamilyMismatch {
        /// The route's destination.
        destination: IpCidr,
        /// The mismatched gateway.
        gateway: IpAddr,
    },
    /// The rtnetlink socket could not be opened.
    #[error("cannot open an rtnetlink socket: {source}")]
    Connection {
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a request.
    #[error("{what}: {}", describe_netlink(.source))]
    Netlink {
        /// The step that failed, e.g. "setting MTU 1400 on eth0".
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
}

impl IpCidr {
    /// Builds a CIDR, rejecting a prefix longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, NetconfError> {
        let max = max_prefix(addr);
        if prefix > max {
            return Err(NetconfError::BadCidr {
                input: format!("{addr}/{prefix}"),
                reason: format!("prefix length {prefix} is longer than {max} bits"),
            });
        }
        Ok(Self { addr, prefix })
    }

    /// The network this address is in, with host bits cleared: the kernel
    /// rejects IPv4 route destinations that have host bits set.
    pub fn network(&self) -> IpCidr {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        IpCidr {
            addr,
            prefix: self.prefix,
        }
    }

    /// Re-checks a value built from the public fields, which bypass `new`.
    fn validate(&self) -> Result<(), NetconfError> {
        Self::new(self.addr, self.prefix).map(|_| ())
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpCidr {
    type Err = NetconfError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| NetconfError::BadCidr {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| bad("missing \"/prefix-length\""))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("not an IPv4 or IPv6 address"))?;
        // `u8::from_str` would also take "+8"; only plain digits are a prefix.
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("prefix length is not a decimal number"));
        }
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| bad("prefix length is out of range"))?;
        IpCidr::new(addr, prefix).map_err(|_| NetconfError::BadCidr {
            input: s.to_owned(),
            reason: format!(
                "prefix length {prefix} is longer than {} bits",
                max_prefix(addr)
            ),
        })
    }
}

/// Parses "aa:bb:cc:dd:ee:ff", case-insensitive.
pub fn parse_mac(s: &str) -> Result<[u8; 6], NetconfError> {
    let bad = || NetconfError::BadMac {
        input: s.to_owned(),
    };
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        // `from_str_radix` would also take "+f"; insist on two hex digits.
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// Applies interfaces then routes through rtnetlink in the current network
/// namespace.
///
/// For each interface: finds the link by MAC, sets it down if it must be
/// renamed (the kernel refuses to rename a running link), renames it, sets
/// its MTU, adds its addresses and sets it up. Then adds each route with
/// replace semantics, via the route's interface if it names one, otherwise
/// wherever the kernel reaches the gateway. Also brings `lo` up, which the
/// kernel leaves down in a fresh namespace.
///
/// The whole request is checked, and every MAC resolved, before anything is
/// changed, and every step is idempotent, so calling it twice with the same request is fine. IPv6
/// addresses skip duplicate address detection: the host allocated them, and
/// DAD would leave them unusable for the pod's first second or so.
///
/// Must run inside a tokio runtime (a current-thread one is enough), on which
/// it spawns the netlink connection task for the duration of the call.
pub async fn apply(
    interfaces: &[InterfaceConfig],
    routes: &[RouteConfig],
) -> Result<(), NetconfError> {
    validate(interfaces, routes)?;

    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|source| NetconfError::Connection { source })?;
    let _connection = AbortOnDrop(tokio::spawn(connection));

    let links = dump_links(&handle).await?;
    // Resolve every MAC before changing anything, for the same reason.
    let iface_links = interfaces
        .iter()
        .map(|iface| find_iface(&links, iface.mac, iface.new_mac))
        .collect::<Result<Vec<_>, _>>()?;
    let route_oifs = routes
        .iter()
        .map(|route| {
            route
                .interface_mac
                .map(|mac| {
                    // A route may name a configured interface by the MAC it had or
                    // is given.
                    let configured = interfaces
                        .iter()
                        .zip(&iface_links)
                        .find(|(i, _)| i.mac == mac || i.new_mac == Some(mac));
                    match configured {
                        Some((_, link)) => Ok(link.index),
                        None => find_link(&links, mac).map(|l| l.index),
                    }
                })
                .transpose()
        })
        .collect::<Result<Vec<_>, _>>()?;

    if let Some(lo) = links.iter().find(|l| l.name == "lo") {
        set_up(&handle, lo.index, "lo").await?;
    }
    for (iface, link) in interfaces.iter().zip(iface_links) {
        configure_interface(&handle, link, iface).await?;
    }
    for (route, oif) in routes.iter().zip(route_oifs) {
        add_route(&handle, route, oif).await?;
    }
    Ok(())
}

/// Rejects a bad request up front so that it is not half applied.
fn validate(interfaces: &[InterfaceConfig], routes: &[RouteConfig]) -> Result<(), NetconfError> {
    for iface in interfaces {
        if let Some(name) = &iface.name {
            if !is_valid_ifname(name) {
                return Err(NetconfError::BadName { name: name.clone() });
            }
        }
        for addr in &iface.addresses {
            addr.validate()?;
        }
    }
    for route in routes {
        route.destination.validate()?;
        match route.gateway {
            Some(gw) if gw.is_ipv4() != route.destination.addr.is_ipv4() => {
                return Err(NetconfError::GatewayFamilyMismatch {
                    destination: route.destination,
                    gateway: gw,
                });
            }
            None if route.interface_mac.is_none() => {
                return Err(NetconfError::RouteWithoutNextHop {
                    destination: route.destination,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Same rules as the kernel's `dev_valid_name`, so the operator gets a clear
/// error instead of EINVAL.
fn is_valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name.contains(['/', ':'])
        && !name.chars().any(char::is_whitespace)
}

/// Stops the netlink connection task when `apply` returns, on error too.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What `apply` needs to know about an existing link.
struct Link {
    index: u32,
    name: String,
    mac: Option<Vec<u8>>,
}

async fn dump_links(handle: &Handle) -> Result<Vec<Link>, NetconfError> {
    let netlink = |source| NetconfError::Netlink {
        what: "listing network interfaces".to_owned(),
        source,
    };
    let mut stream = handle.link().get().execute();
    let mut links = Vec::new();
    while let Some(msg) = stream.try_next().await.map_err(netlink)? {
        links.push(link_from_message(msg));
    }
    Ok(links)
}

fn link_from_message(msg: LinkMessage) -> Link {
    let mut name = String::new();
    let mut mac = None;
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = n,
            LinkAttribute::Address(a) => mac = Some(a),
            _ => {}
        }
    }
    Link {
        index: msg.header.index,
        name,
        mac,
    }
}

/// The link with MAC `mac`, or else with `new_mac` (a request applied before).
fn find_iface(
    links: &[Link],
    mac: [u8; 6],
    new_mac: Option<[u8; 6]>,
) -> Result<&Link, NetconfError> {
    match (find_link(links, mac), new_mac) {
        (Err(NetconfError::NoSuchInterface { .. }), Some(new)) if new != mac => {
            find_link(links, new).map_err(|e| match e {
                NetconfError::NoSuchInterface { seen, .. } => {
                    NetconfError::NoSuchInterface { mac, seen }
                }
                other => other,
            })
        }
        (found, _) => found,
    }
}

fn find_link(links: &[Link], mac: [u8; 6]) -> Result<&Link, NetconfError> {
    let matching: Vec<&Link> = links
        .iter()
        .filter(|l| l.mac.as_deref() == Some(&mac[..]))
        .collect();
    match matching.as_slice() {
        [link] => Ok(link),
        [] => Err(NetconfError::NoSuchInterface {
            mac,
            seen: links
                .iter()
                .map(|l| match &l.mac {
                    Some(m) => format!("{} ({})", l.name, format_mac(m)),
                    None => l.name.clone(),
                })
                .collect(),
        }),
        many => Err(NetconfError::DuplicateMac {
            mac,
            names: many.iter().map(|l| l.name.clone()).collect(),
        }),
    }
}

async fn configure_interface(
    handle: &Handle,
    link: &Link,
    iface: &InterfaceConfig,
) -> Result<(), NetconfError> {
    let mut name = link.name.as_str();
    if let Some(new_name) = iface.name.as_deref().filter(|n| *n != name) {
        change(
            handle,
            LinkUnspec::new_with_index(link.index).down().build(),
            format!("setting {name} down to rename it"),
        )
        .await?;
        change(
            handle,
            LinkUnspec::new_with_index(link.index)
                .name(new_name)
                .build(),
            format!("renaming {name} to {new_name}"),
        )
        .await?;
        name = new_name;
    }
    if let Some(mac) = iface
        .new_mac
        .filter(|m| link.mac.as_deref() != Some(&m[..]))
    {
        change(
            handle,
            LinkUnspec::new_with_index(link.index)
                .address(mac.to_vec())
                .build(),
            format!("setting MAC {} on {name}", format_mac(&mac)),
        )
        .await?;
    }
    if let Some(mtu) = iface.mtu {
        change(
            handle,
            LinkUnspec::new_with_index(link.index).mtu(mtu).build(),
            format!("setting MTU {mtu} on {name}"),
        )
        .await?;
    }
    for addr in &iface.addresses {
        let mut req = handle
            .address()
            .add(link.index, addr.addr, addr.prefix)
            .replace();
        if addr.addr.is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .map_err(|source| NetconfError::Netlink {
                what: format!("adding address {addr} to {name}"),
                source,
            })?;
    }
    set_up(handle, link.index, name).await
}

async fn set_up(handle: &Handle, index: u32, name: &str) -> Result<(), NetconfError> {
    change(
        handle,
        LinkUnspec::new_with_index(index).up().build(),
        format!("setting {name} up"),
    )
    .await
}

async fn change(handle: &Handle, msg: LinkMessage, what: String) -> Result<(), NetconfError> {
    handle
        .link()
        .change(msg)
        .execute()
        .await
        .map_err(|source| NetconfError::Netlink { what, source })
}

async fn add_route(
    handle: &Handle,
    route: &RouteConfig,
    oif: Option<u32>,
) -> Result<(), NetconfError> {
    let dest = route.destination.network();
    let what = || match route.gateway {
        Some(gw) => format!("adding route to {dest} via {gw}"),
        None => format!("adding route to {dest}"),
    };
    // Validated already; these only fail on a family mismatch or bad prefix.
    let invalid = |reason: String| NetconfError::BadCidr {
        input: dest.to_string(),
        reason,
    };
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dest.addr, dest.prefix)
        .map_err(|e| invalid(e.to_string()))?;
    match route.gateway {
        Some(gw) => builder = builder.gateway(gw).map_err(|e| invalid(e.to_string()))?,
        // Like `ip route add ... dev X`: a route without a gateway is on-link.
        None if dest.addr.is_ipv4() => builder = builder.scope(RouteScope::Link),
        None => {}
    }
    if let Some(oif) = oif {
        builder = builder.output_interface(oif);
    }
    handle
        .route()
        .add(builder.build())
        .replace()
        .execute()
        .await
        .map_err(|source| NetconfError::Netlink {
            what: what(),
            source,
        })
}

/// What [`flush_neighbours`] did.
#[derive(Debug, Default)]
pub struct NeighbourFlush {
    /// Entries deleted.
    pub deleted: u32,
    /// Entries the kernel would not delete, with why.
    pub failed: Vec<NetconfError>,
}

/// Deletes every IPv4 and IPv6 neighbour (ARP/NDP) entry of every interface, as
/// `ip neigh flush all` does: a guest restored from a template's snapshot must not
/// send to the MAC addresses the template had learnt. Only a failure to list the
/// entries is an error; an entry that cannot be deleted is reported in the result,
/// and one that went away meanwhile is not reported at all.
///
/// Must run inside a tokio runtime, like [`apply`].
pub async fn flush_neighbours() -> Result<NeighbourFlush, NetconfError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|source| NetconfError::Connection { source })?;
    let _connection = AbortOnDrop(tokio::spawn(connection));

    let mut stream = handle.neighbours().get().execute();
    let mut entries = Vec::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(|source| NetconfError::Netlink {
            what: "listing neighbour entries".to_owned(),
            source,
        })?
    {
        if let Some(entry) = flushable(msg) {
            entries.push(entry);
        }
    }
    let mut done = NeighbourFlush::default();
    for entry in entries {
        let what = describe_neighbour(&entry);
        match handle.neighbours().del(entry).execute().await {
            Ok(()) => done.deleted = done.deleted.saturating_add(1),
            // Expired or replaced between the dump and the deletion.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => {}
            Err(source) => done.failed.push(NetconfError::Netlink {
                what: format!("deleting {what}"),
                source,
            }),
        }
    }
    Ok(done)
}

/// The deletion request for a dumped neighbour entry, if it is one to flush: an IPv4
/// or IPv6 entry that the kernel does not keep for itself (`NOARP`: loopback,
/// multicast, point-to-point). The request keeps what identifies the entry (family,
/// interface, destination) and drops the rest (cache info, probes, ...).
fn flushable(mut msg: NeighbourMessage) -> Option<NeighbourMessage> {
    let h = &msg.header;
    if !matches!(h.family, AddressFamily::Inet | AddressFamily::Inet6)
        || h.state == NeighbourState::Noarp
    {
        return None;
    }
    msg.attributes
        .retain(|a| matches!(a, NeighbourAttribute::Destination(_)));
    if msg.attributes.is_empty() {
        return None;
    }
    Some(msg)
}

fn describe_neighbour(msg: &NeighbourMessage) -> String {
    let dest = msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(ip.to_string()),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(ip.to_string()),
        _ => None,
    });
    format!(
        "neighbour entry {} on interface {}",
        dest.as_deref().unwrap_or("?"),
        msg.header.ifindex
    )
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// Shows a kernel refusal as its errno text ("File exists (os error 17)"),
/// which is what an operator can act on; other errors as they are.
fn describe_netlink(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io().to_string(),
        other => other.to_string(),
    }
}

/// Formats a hardware address as lowercase colon-separated hex.
fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::process::Command;

    fn cidr(s: &str) -> IpCidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_good_cidrs() {
        for (text, addr, prefix) in [
            ("10.88.0.5/16", "10.88.0.5", 16),
            ("fd00::5/64", "fd00::5", 64),
            ("0.0.0.0/0", "0.0.0.0", 0),
            ("::/0", "::", 0),
            ("192.0.2.1/32", "192.0.2.1", 32),
            ("::1/128", "::1", 128),
        ] {
            let c = cidr(text);
            assert_eq!(c.addr, addr.parse::<IpAddr>().unwrap(), "{text}");
            assert_eq!(c.prefix, prefix, "{text}");
            assert_eq!(c.to_string(), text);
        }
    }

    #[test]
    fn rejects_bad_cidrs_saying_why() {
        for (text, why) in [
            ("10.88.0.5", "missing"),
            ("10.88.0.5/33", "longer than 32"),
            ("fd00::/129", "longer than 128"),
            ("10.0.0.1/256", "out of range"),
            ("10.0.0.1/+8", "not a decimal"),
            ("10.0.0.1/", "not a decimal"),
            ("10.0.0.1/8/9", "not a decimal"),
            ("10.0.0/8", "not an IPv4 or IPv6"),
            ("fe80::1%eth0/64", "not an IPv4 or IPv6"),
        ] {
            let err = text.parse::<IpCidr>().unwrap_err();
            assert!(
                matches!(err, NetconfError::BadCidr { .. }),
                "{text}: {err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains(why) && msg.contains(text), "{text}: {msg}");
        }
        let e = IpCidr::new("10.0.0.1".parse().unwrap(), 33).unwrap_err();
        assert!(
            matches!(&e, NetconfError::BadCidr { input, reason }
                if input == "10.0.0.1/33" && reason == "prefix length 33 is longer than 32 bits"),
            "{e:?}"
        );
    }

    #[test]
    fn network_clears_host_bits() {
        for (text, net) in [
            ("10.88.0.5/16", "10.88.0.0/16"),
            ("10.88.0.5/32", "10.88.0.5/32"),
            ("10.88.0.5/0", "0.0.0.0/0"),
            ("fd00::5/64", "fd00::/64"),
            ("fd00::5/0", "::/0"),
            ("fd00::5/128", "fd00::5/128"),
        ] {
            assert_eq!(cidr(text).network(), cidr(net), "{text}");
        }
    }

    #[test]
    fn parses_macs_case_insensitively() {
        let mac = [0xaa, 0xbb, 0xcc, 0x0d, 0xee, 0xff];
        assert_eq!(parse_mac("aa:bb:cc:0d:ee:ff").unwrap(), mac);
        assert_eq!(parse_mac("AA:bB:Cc:0D:EE:ff").unwrap(), mac);
    }

    #[test]
    fn rejects_bad_macs() {
        for text in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:ff:",
            "a:bb:cc:dd:ee:ff",
            "+a:bb:cc:dd:ee:ff",
            "gg:bb:cc:dd:ee:ff",
            "aa-bb-cc-dd-ee-ff",
            "aabb:cc:dd:ee:ff",
        ] {
            let err = parse_mac(text).unwrap_err();
            assert!(
                matches!(err, NetconfError::BadMac { .. }),
                "{text}: {err:?}"
            );
        }
    }

    #[test]
    fn no_such_interface_lists_what_it_saw() {
        let err = NetconfError::NoSuchInterface {
            mac: [2, 0, 0, 0, 0, 0xab],
            seen: vec![
                "lo (00:00:00:00:00:00)".into(),
                "eth0 (52:54:00:12:34:56)".into(),
            ],
        };
        assert_eq!(
            err.to_string(),
            "no network interface has MAC 02:00:00:00:00:ab; interfaces seen: \
             lo (00:00:00:00:00:00), eth0 (52:54:00:12:34:56)"
        );
    }

    #[test]
    fn netlink_errors_show_the_step_and_errno() {
        let mut msg = rtnetlink::packet_core::ErrorMessage::default();
        msg.code = std::num::NonZeroI32::new(-17);
        let err = NetconfError::Netlink {
            what: "adding address 10.88.0.5/16 to eth0".to_owned(),
            source: rtnetlink::Error::NetlinkError(msg),
        };
        assert_eq!(
            err.to_string(),
            "adding address 10.88.0.5/16 to eth0: File exists (os error 17)"
        );
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn rejects_bad_requests_before_touching_anything() {
        let iface = |name: &str| InterfaceConfig {
            mac: [2, 0, 0, 0, 0, 1],
            new_mac: None,
            name: Some(name.to_owned()),
            addresses: vec![],
            mtu: None,
        };
        for name in ["", "a-name-too-long-x", "a/b", "a:b", "a b", ".", ".."] {
            let err = block_on(apply(&[iface(name)], &[])).unwrap_err();
            assert!(
                matches!(err, NetconfError::BadName { .. }),
                "{name:?}: {err:?}"
            );
        }

        let mut bad_addr = iface("eth0");
        bad_addr.addresses = vec![IpCidr {
            addr: "10.0.0.1".parse().unwrap(),
            prefix: 40,
        }];
        let err = block_on(apply(&[bad_addr], &[])).unwrap_err();
        assert!(matches!(err, NetconfError::BadCidr { .. }), "{err:?}");

        let route = RouteConfig {
            destination: cidr("0.0.0.0/0"),
            gateway: None,
            interface_mac: None,
        };
        let err = block_on(apply(&[], &[route])).unwrap_err();
        assert!(
            matches!(err, NetconfError::RouteWithoutNextHop { .. }),
            "{err:?}"
        );

        let route = RouteConfig {
            destination: cidr("0.0.0.0/0"),
            gateway: Some("fd00::1".parse().unwrap()),
            interface_mac: None,
        };
        let err = block_on(apply(&[], &[route])).unwrap_err();
        assert!(
            matches!(err, NetconfError::GatewayFamilyMismatch { .. }),
            "{err:?}"
        );
    }

    /// Runs `f` on a fresh thread moved into a new network namespace, so the
    /// host's network and the other tests are untouched. The suite runs as root;
    /// without the privilege to make a namespace the test fails.
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let thread = std::thread::spawn(move || {
            // Network namespaces are per thread: only this thread, and the
            // commands it spawns, see the new one.
            match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                Ok(()) => f(),
                Err(e) => panic!("unshare(CLONE_NEWNET): {e} (run the tests as root)"),
            }
        });
        match thread.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    fn ip(args: &[&str]) -> String {
        let out = {
            let _children = crate::CHILD_PROCESSES
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            Command::new("ip").args(args).output().unwrap()
        };
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Flags (between `<` and `>`) and words of `ip -o link show dev DEV`.
    fn link_info(dev: &str) -> (Vec<String>, Vec<String>) {
        let out = ip(&["-o", "link", "show", "dev", dev]);
        let flags = out
            .split_once('<')
            .and_then(|(_, rest)| rest.split_once('>'))
            .map(|(flags, _)| flags.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        (flags, out.split_whitespace().map(str::to_owned).collect())
    }

    /// The word after `key` in `words`.
    fn word_after<'a>(words: &'a [String], key: &str) -> Option<&'a str> {
        let i = words.iter().position(|w| w == key)?;
        words.get(i + 1).map(String::as_str)
    }

    /// `(address/prefix, tentative)` of each global address on `dev`.
    fn global_addresses(dev: &str) -> Vec<(String, bool)> {
        ip(&["-o", "addr", "show", "dev", dev, "scope", "global"])
            .lines()
            .map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                (words[3].to_owned(), words.contains(&"tentative"))
            })
            .collect()
    }

    /// Lines of `ip FAMILY route show PREFIX`, trimmed.
    fn routes(family: &str, prefix: &str) -> Vec<String> {
        ip(&[family, "route", "show", prefix])
            .lines()
            .map(|l| l.trim().to_owned())
            .collect()
    }

    const MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x4e, 0x43, 0x01];
    const MAC_TEXT: &str = "02:00:00:4e:43:01";

    fn request() -> (Vec<InterfaceConfig>, Vec<RouteConfig>) {
        let interfaces = vec![InterfaceConfig {
            mac: MAC,
            new_mac: None,
            name: Some("eth7".to_owned()),
            addresses: vec![cidr("10.88.0.5/16"), cidr("fd00::5/64")],
            mtu: Some(1400),
        }];
        let routes = vec![
            RouteConfig {
                destination: cidr("0.0.0.0/0"),
                gateway: Some("10.88.0.1".parse().unwrap()),
                interface_mac: None,
            },
            RouteConfig {
                destination: cidr("::/0"),
                gateway: Some("fd00::1".parse().unwrap()),
                interface_mac: Some(MAC),
            },
            RouteConfig {
                destination: cidr("192.168.7.9/24"),
                gateway: None,
                interface_mac: Some(MAC),
            },
        ];
        (interfaces, routes)
    }

    fn assert_configured() {
        let (lo_flags, _) = link_info("lo");
        assert!(
            lo_flags.iter().any(|f| f == "UP"),
            "lo is down: {lo_flags:?}"
        );

        let (flags, words) = link_info("eth7");
        assert!(flags.iter().any(|f| f == "UP"), "eth7 is down: {flags:?}");
        assert_eq!(
            word_after(&words, "link/ether"),
            Some(MAC_TEXT),
            "{words:?}"
        );
        assert_eq!(word_after(&words, "mtu"), Some("1400"), "{words:?}");

        // Each address once, and the IPv6 one usable at once (no DAD).
        assert_eq!(
            global_addresses("eth7"),
            [
                ("10.88.0.5/16".to_owned(), false),
                ("fd00::5/64".to_owned(), false)
            ]
        );

        let v4 = routes("-4", "default");
        assert_eq!(v4.len(), 1, "{v4:?}");
        assert!(
            v4[0].starts_with("default via 10.88.0.1 dev eth7 "),
            "{v4:?}"
        );

        let v6 = routes("-6", "default");
        assert_eq!(v6.len(), 1, "{v6:?}");
        assert!(v6[0].starts_with("default via fd00::1 dev eth7 "), "{v6:?}");

        let on_link = routes("-4", "192.168.7.0/24");
        assert_eq!(on_link.len(), 1, "{on_link:?}");
        assert!(
            on_link[0].starts_with("192.168.7.0/24 dev eth7 ")
                && on_link[0].contains(" scope link"),
            "{on_link:?}"
        );
    }

    #[test]
    fn configures_a_real_link_idempotently() {
        in_new_netns(|| {
            ip(&[
                "link", "add", "nctest0", "address", MAC_TEXT, "type", "veth", "peer", "name",
                "nctest1",
            ]);
            ip(&["link", "set", "nctest1", "up"]);
            // Up, so the rename has to take it down first.
            ip(&["link", "set", "nctest0", "up"]);

            let (interfaces, routes) = request();
            block_on(apply(&interfaces, &routes)).unwrap();
            assert_configured();
            block_on(apply(&interfaces, &routes)).unwrap();
            assert_configured();

            let mut unknown = interfaces[0].clone();
            unknown.mac = [0x02, 0, 0, 0, 0, 0x99];
            match block_on(apply(&[unknown], &[])).unwrap_err() {
                NetconfError::NoSuchInterface { mac, seen } => {
                    assert_eq!(mac, [0x02, 0, 0, 0, 0, 0x99]);
                    assert!(seen.contains(&format!("eth7 ({MAC_TEXT})")), "{seen:?}");
                }
                other => panic!("expected NoSuchInterface, got {other:?}"),
            }

            // An unknown route MAC is found before the interface is touched.
            let mut renamed = interfaces.clone();
            renamed[0].name = Some("eth8".to_owned());
            let mut route = routes[2].clone();
            route.interface_mac = Some([0x02, 0, 0, 0, 0, 0x98]);
            let err = block_on(apply(&renamed, &[route])).unwrap_err();
            assert!(
                matches!(err, NetconfError::NoSuchInterface { .. }),
                "{err:?}"
            );
            assert_configured();
        });
    }

    #[test]
    fn gives_a_link_its_new_mac_idempotently() {
        const BOOT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x4e, 0x43, 0x42];
        in_new_netns(|| {
            ip(&[
                "link",
                "add",
                "nctest0",
                "address",
                "02:00:00:4e:43:42",
                "type",
                "veth",
                "peer",
                "name",
                "nctest1",
            ]);
            ip(&["link", "set", "nctest1", "up"]);
            ip(&["link", "set", "nctest0", "up"]);
            // Found by the MAC it booted with, routes included; then it has MAC.
            let (mut interfaces, mut routes) = request();
            interfaces[0].mac = BOOT_MAC;
            interfaces[0].new_mac = Some(MAC);
            routes[2].interface_mac = Some(BOOT_MAC);
            block_on(apply(&interfaces, &routes)).unwrap();
            assert_configured();
            // A retry finds it by the new MAC.
            block_on(apply(&interfaces, &routes)).unwrap();
            assert_configured();
        });
    }

    #[test]
    fn flushable_neighbours_are_ip_entries_the_kernel_does_not_own() {
        let entry = |family, state, attributes| {
            let mut m = NeighbourMessage::default();
            m.header.family = family;
            m.header.ifindex = 2;
            m.header.state = state;
            m.attributes = attributes;
            m
        };
        let v4 = NeighbourAttribute::Destination(NeighbourAddress::Inet([10, 0, 0, 1].into()));
        let v6 =
            NeighbourAttribute::Destination(NeighbourAddress::Inet6("fd00::1".parse().unwrap()));
        let extra = NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 1]);

        let del = flushable(entry(
            AddressFamily::Inet,
            NeighbourState::Reachable,
            vec![extra.clone(), v4.clone()],
        ))
        .unwrap();
        // Only what names the entry is sent back.
        assert_eq!(del.attributes, vec![v4.clone()]);
        assert_eq!(
            (del.header.family, del.header.ifindex),
            (AddressFamily::Inet, 2)
        );
        assert_eq!(
            describe_neighbour(&del),
            "neighbour entry 10.0.0.1 on interface 2"
        );
        for state in [
            NeighbourState::Stale,
            NeighbourState::Permanent,
            NeighbourState::Failed,
        ] {
            assert!(flushable(entry(AddressFamily::Inet6, state, vec![v6.clone()])).is_some());
        }
        assert!(flushable(entry(
            AddressFamily::Inet,
            NeighbourState::Noarp,
            vec![v4.clone()]
        ))
        .is_none());
        assert!(flushable(entry(
            AddressFamily::Bridge,
            NeighbourState::Reachable,
            vec![v4]
        ))
        .is_none());
        assert!(flushable(entry(
            AddressFamily::Inet,
            NeighbourState::Reachable,
            vec![extra]
        ))
        .is_none());
    }

    /// In a network namespace of its own; skipped (with a note) where the test may
    /// not make one.
    #[test]
    fn flushes_a_real_neighbour_table() {
        // Network namespaces are per thread: only this one, and the commands it
        // spawns, see the new one.
        let thread = std::thread::spawn(|| {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                eprintln!("skipped: unshare(CLONE_NEWNET): {e}");
                return;
            }
            ip(&[
                "link", "add", "nftest0", "type", "veth", "peer", "name", "nftest1",
            ]);
            ip(&["link", "set", "nftest0", "up"]);
            ip(&["addr", "add", "10.77.0.1/24", "dev", "nftest0"]);
            ip(&["-6", "addr", "add", "fd77::1/64", "dev", "nftest0", "nodad"]);
            for (addr, nud) in [
                ("10.77.0.2", "reachable"),
                ("10.77.0.3", "permanent"),
                ("fd77::2", "stale"),
            ] {
                ip(&[
                    "neigh",
                    "add",
                    addr,
                    "lladdr",
                    "02:00:00:00:77:02",
                    "dev",
                    "nftest0",
                    "nud",
                    nud,
                ]);
            }
            let done = block_on(flush_neighbours()).unwrap();
            assert!(done.failed.is_empty(), "{:?}", done.failed);
            assert!(done.deleted >= 3, "{done:?}");
            let left = ip(&["neigh", "show", "dev", "nftest0"]);
            for addr in ["10.77.0.2", "10.77.0.3", "fd77::2"] {
                assert!(!left.contains(addr), "{addr} is left: {left}");
            }
            // Nothing left to flush is not an error.
            block_on(flush_neighbours()).unwrap();
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }
}
