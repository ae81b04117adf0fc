//! A pod's traffic, counted on the host: the counters of its CNI interface in its
//! network namespace (the tap's are the same traffic seen from the VM's side; the
//! guest's own counters are the guest's word).

use vmlet_cri::runtime::InterfaceUsage;

use super::netns::{Netns, NetnsError};

/// Most interfaces read from one namespace: a pod's holds its CNI interfaces, the
/// tap and loopback.
const MAX_INTERFACES: usize = 64;

/// The counters of interfaces `names` in `ns` (in that order; missing ones left out),
/// read from the namespace's `/proc/net/dev` on a thread that entered it. Blocks.
pub fn read(ns: &Netns, names: &[&str]) -> Result<Vec<InterfaceUsage>, NetnsError> {
    let all = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))?;
    let all = parse(&all.map_err(|source| NetnsError::Io {
        path: ns.path().to_owned(),
        what: "read /proc/net/dev",
        source,
    })?);
    Ok(names
        .iter()
        .filter_map(|n| all.iter().find(|i| i.name == *n).cloned())
        .collect())
}

/// Parses `/proc/net/dev`: two header lines, then `NAME: rx_bytes rx_packets rx_errs
/// rx_drop rx_fifo rx_frame rx_compressed rx_multicast tx_bytes tx_packets tx_errs ...`.
/// Lines that do not have that shape are skipped.
fn parse(text: &str) -> Vec<InterfaceUsage> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            if v.len() < 16 {
                return None;
            }
            Some(InterfaceUsage {
                name: name.trim().to_owned(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
            })
        })
        .take(MAX_INTERFACES)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_dev_lines_become_counters() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n  \
eth0: 123456     789    1    0    0     0          0         0    65432     321    2    0    0     0       0          0\n  \
bad: x y\n";
        let got = parse(text);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1],
            InterfaceUsage {
                name: "eth0".into(),
                rx_bytes: 123456,
                rx_packets: 789,
                rx_errors: 1,
                tx_bytes: 65432,
                tx_packets: 321,
                tx_errors: 2,
            }
        );
    }

    /// The namespace's own counters, not the host's: a fresh namespace has only
    /// loopback, and traffic on it shows.
    #[test]
    fn counters_are_read_inside_the_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let ns = Netns::create(dir.path(), "counters").expect("a network namespace (as root)");
        let before = read(&ns, &["lo", "eth0"]).unwrap();
        assert_eq!(before.len(), 1, "{before:?}");
        ns.run(|| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.send_to(&[0u8; 1000], s.local_addr().unwrap()).unwrap();
        })
        .unwrap();
        let after = read(&ns, &["lo"]).unwrap();
        assert!(after[0].rx_bytes >= before[0].rx_bytes + 1000, "{after:?}");
        ns.remove().unwrap();
    }
}
