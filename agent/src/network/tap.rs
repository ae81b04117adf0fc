//! Carries a pod's CNI interface into its VM: a tap device in the pod's network
//! namespace, joined to the CNI interface by two tc ingress filters that redirect every
//! frame from one to the other (Kata's "tcfilter" model). The VM's virtio-net then uses
//! the CNI interface's MAC, so the guest is the pod on the CNI network.
//!
//! Netlink (rtnetlink) does the links and tc; creating a persistent tap needs the tun
//! driver's ioctls, which netlink does not offer.

use std::os::fd::{AsRawFd, OwnedFd};

use futures_util::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};

use super::netns::{Netns, NetnsError};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// `ETH_P_ALL`; tc wants it in network byte order.
const ETH_P_ALL: u16 = 0x0003;
/// `TC_H_INGRESS` major: the parent of ingress filters.
const INGRESS_PARENT: u32 = 0xffff_0000;

/// Connecting the tap failed.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The CNI interface is not there.
    #[error("no interface {0:?} in the pod's network namespace")]
    NoInterface(String),
    /// A name that does not fit an interface name.
    #[error("invalid interface name {0:?}")]
    BadName(String),
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// Why.
        source: rtnetlink::Error,
    },
    /// Creating the tap failed.
    #[error("cannot create tap {name}: {source}")]
    Tap {
        /// The tap's name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// The runtime for netlink could not start.
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
}

/// The pod's interface as the VM must present it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapLink {
    /// The tap to give the VMM.
    pub tap: String,
    /// The CNI interface's MAC: the guest's MAC.
    pub mac: String,
    /// The CNI interface's MTU.
    pub mtu: u32,
}

struct Link {
    index: u32,
    mac: Vec<u8>,
    mtu: u32,
}

fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Creates a persistent tap named `name` in the calling thread's namespace.
fn create_tap(name: &str) -> Result<(), TapError> {
    let fail = |source| TapError::Tap {
        name: name.to_owned(),
        source,
    };
    let tun: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(fail)?
        .into();
    // SAFETY: ifreq is plain old data; all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
    // SAFETY: TUNSETIFF reads and writes one ifreq through a valid pointer.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    // SAFETY: TUNSETPERSIST takes an integer.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1) } < 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    Ok(())
}

async fn link(handle: &Handle, name: &str) -> Result<Option<Link>, TapError> {
    let mut stream = handle.link().get().match_name(name.to_owned()).execute();
    let msg: Option<LinkMessage> = match stream.try_next().await {
        Ok(m) => m,
        // The kernel answers ENODEV for a name it does not know.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => None,
        Err(source) => {
            return Err(TapError::Netlink {
                what: format!("looking up {name}"),
                source,
            })
        }
    };
    Ok(msg.map(|m| {
        let mut link = Link {
            index: m.header.index,
            mac: Vec::new(),
            mtu: 1500,
        };
        for attr in m.attributes {
            match attr {
                LinkAttribute::Address(a) => link.mac = a,
                LinkAttribute::Mtu(m) => link.mtu = m,
                _ => {}
            }
        }
        link
    }))
}

async fn redirect(handle: &Handle, from: u32, to: u32, what: &str) -> Result<(), TapError> {
    let netlink = |what: String| move |source| TapError::Netlink { what, source };
    let qdisc = handle.qdisc().add(from as i32).ingress().execute().await;
    match qdisc {
        Ok(()) => {}
        // Already there (a retried setup): fine.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
        Err(e) => return Err(netlink(format!("ingress qdisc on {what}"))(e)),
    }
    handle
        .traffic_filter(from as i32)
        .replace()
        .parent(INGRESS_PARENT)
        // priority() overwrites the protocol half of the header: it must come first.
        .priority(1)
        .protocol(ETH_P_ALL.to_be())
        .redirect(to)
        .map_err(netlink(format!("redirect filter on {what}")))?
        .execute()
        .await
        .map_err(netlink(format!("redirect filter on {what}")))
}

/// Tap `tap` of the calling thread's namespace, created if missing.
async fn ensure_tap(handle: &Handle, tap: &str) -> Result<Link, TapError> {
    if let Some(l) = link(handle, tap).await? {
        return Ok(l);
    }
    create_tap(tap)?;
    link(handle, tap)
        .await?
        .ok_or_else(|| TapError::NoInterface(tap.to_owned()))
}

async fn connect(cni_if: &str, tap: &str) -> Result<TapLink, TapError> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let result = async {
        let cni = link(&handle, cni_if)
            .await?
            .ok_or_else(|| TapError::NoInterface(cni_if.to_owned()))?;
        let tap_link = ensure_tap(&handle, tap).await?;
        handle
            .link()
            .change(
                LinkUnspec::new_with_index(tap_link.index)
                    .mtu(cni.mtu)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|source| TapError::Netlink {
                what: format!("setting {tap} up"),
                source,
            })?;
        redirect(&handle, cni.index, tap_link.index, cni_if).await?;
        redirect(&handle, tap_link.index, cni.index, tap).await?;
        Ok(TapLink {
            tap: tap.to_owned(),
            mac: format_mac(&cni.mac),
            mtu: cni.mtu,
        })
    }
    .await;
    task.abort();
    result
}

/// In `netns`, creates tap `tap` unless it exists. Idempotent.
pub fn make_tap(netns: &Netns, tap: &str) -> Result<(), TapError> {
    if tap.is_empty() || tap.len() >= libc::IFNAMSIZ || tap.contains(['/', ' ']) {
        return Err(TapError::BadName(tap.to_owned()));
    }
    let tap = tap.to_owned();
    netns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            let task = tokio::spawn(conn);
            let made = ensure_tap(&handle, &tap).await;
            task.abort();
            made.map(drop)
        })
    })?
}

/// In `netns`, creates tap `tap` (or reuses it) and joins it to `cni_if` both ways.
/// Idempotent.
pub fn connect_tap(netns: &Netns, cni_if: &str, tap: &str) -> Result<TapLink, TapError> {
    for name in [cni_if, tap] {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ']) {
            return Err(TapError::BadName(name.to_owned()));
        }
    }
    let (cni_if, tap) = (cni_if.to_owned(), tap.to_owned());
    netns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(connect(&cni_if, &tap))
    })?
}
