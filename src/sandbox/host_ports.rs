//! Which pod holds which host port.
//!
//! CNI's portmap adds a DNAT rule per mapping and never looks at what other
//! pods forward: a second pod asking for a port another pod holds gets a
//! rule that never sees a packet (the first one matches), and RunPodSandbox
//! succeeds. So crius keeps the claims itself, in memory (rebuilt from the
//! stored pods at start), and refuses an overlapping one before CNI runs.
//! One mutex makes a claim check-and-insert for all of a pod's ports at
//! once, so of two concurrent RunPodSandbox calls exactly one gets a port.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use k8s_cri::v1::{PortMapping, Protocol};

use crate::error::shown;

/// A port forwarded from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort {
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
    /// Host port, never 0.
    pub port: u16,
    /// `None`: every address of both families (an empty CRI `host_ip`).
    pub ip: Option<IpAddr>,
}

impl HostPort {
    /// The host side of a CRI mapping; `None` when it forwards nothing
    /// (host port 0) or is invalid (refused by validation before this).
    pub fn of(p: &PortMapping) -> Option<HostPort> {
        let port = u16::try_from(p.host_port).ok().filter(|p| *p > 0)?;
        let protocol = Protocol::try_from(p.protocol).ok()?;
        let ip = match p.host_ip.as_str() {
            "" => None,
            s => Some(s.parse::<IpAddr>().ok()?.to_canonical()),
        };
        Some(HostPort { protocol, port, ip })
    }

    /// Whether one packet could match both: same protocol and port, and
    /// addresses that meet (a wildcard, `0.0.0.0` or `::` covers its family).
    pub fn overlaps(&self, other: &HostPort) -> bool {
        let covers = |a: IpAddr, b: IpAddr| a.is_unspecified() && a.is_ipv4() == b.is_ipv4();
        self.protocol == other.protocol
            && self.port == other.port
            && match (self.ip, other.ip) {
                (None, _) | (_, None) => true,
                (Some(a), Some(b)) => a == b || covers(a, b) || covers(b, a),
            }
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol.as_str_name())?;
        match self.ip {
            None => write!(f, " on every host address"),
            Some(ip) => write!(f, " on {ip}"),
        }
    }
}

/// A claim that overlaps one another pod holds.
#[derive(Debug, thiserror::Error)]
#[error("host port {wanted} is already held by pod {} ({holder}) as {held}", short_id(.holder_id))]
pub struct PortConflict {
    /// The port the new pod asked for.
    pub wanted: HostPort,
    /// The overlapping port the other pod holds.
    pub held: HostPort,
    /// The holding pod's id.
    pub holder_id: String,
    /// `namespace/name` of the holder, quoted for a message.
    pub holder: String,
}

/// A pod id as crictl prints it.
fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

#[derive(Debug, Clone)]
struct Claim {
    port: HostPort,
    pod_id: String,
    pod: String,
}

/// The node's claimed host ports, by port number.
#[derive(Debug, Default)]
pub struct HostPorts {
    held: Mutex<HashMap<u16, Vec<Claim>>>,
}

impl HostPorts {
    fn lock(&self) -> MutexGuard<'_, HashMap<u16, Vec<Claim>>> {
        // The map is consistent after every statement; a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims all of `ports` for `pod_id`, or none: the first overlap with a
    /// port another pod holds is the error. `pod` is its `namespace/name`.
    pub fn claim(&self, pod_id: &str, pod: &str, ports: &[HostPort]) -> Result<(), PortConflict> {
        let mut held = self.lock();
        for wanted in ports {
            let clash = held
                .get(&wanted.port)
                .into_iter()
                .flatten()
                .find(|c| c.pod_id != pod_id && c.port.overlaps(wanted));
            if let Some(c) = clash {
                return Err(PortConflict {
                    wanted: *wanted,
                    held: c.port,
                    holder_id: c.pod_id.clone(),
                    holder: c.pod.clone(),
                });
            }
        }
        for port in ports {
            held.entry(port.port).or_default().push(Claim {
                port: *port,
                pod_id: pod_id.to_string(),
                pod: shown(pod),
            });
        }
        Ok(())
    }

    /// Records what a stored pod holds, as it is: at start, its rules are
    /// on the node whether or not they overlap. Returns the first overlap,
    /// which only a crius without this bookkeeping could have made.
    pub fn restore(&self, pod_id: &str, pod: &str, ports: &[HostPort]) -> Option<PortConflict> {
        let overlap = self.claim(pod_id, pod, ports).err()?;
        let mut held = self.lock();
        for port in ports {
            held.entry(port.port).or_default().push(Claim {
                port: *port,
                pod_id: pod_id.to_string(),
                pod: shown(pod),
            });
        }
        Some(overlap)
    }

    /// Frees every port `pod_id` holds; nothing when it holds none.
    pub fn release(&self, pod_id: &str) {
        self.lock().retain(|_, claims| {
            claims.retain(|c| c.pod_id != pod_id);
            !claims.is_empty()
        });
    }

    /// The ports `pod_id` holds, for tests and diagnostics.
    pub fn held_by(&self, pod_id: &str) -> Vec<HostPort> {
        self.lock()
            .values()
            .flatten()
            .filter(|c| c.pod_id == pod_id)
            .map(|c| c.port)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(protocol: Protocol, port: u16, ip: &str) -> HostPort {
        HostPort::of(&PortMapping {
            protocol: protocol as i32,
            container_port: 80,
            host_port: port.into(),
            host_ip: ip.into(),
        })
        .unwrap()
    }

    #[test]
    fn what_overlaps() {
        let tcp = |ip| hp(Protocol::Tcp, 8080, ip);
        assert!(tcp("").overlaps(&tcp("")));
        assert!(tcp("").overlaps(&tcp("10.0.0.1")));
        assert!(tcp("10.0.0.1").overlaps(&tcp("")));
        assert!(tcp("10.0.0.1").overlaps(&tcp("10.0.0.1")));
        assert!(tcp("0.0.0.0").overlaps(&tcp("10.0.0.1")));
        assert!(tcp("::").overlaps(&tcp("fd00::1")));
        assert!(tcp("::ffff:10.0.0.1").overlaps(&tcp("10.0.0.1")));
        assert!(!tcp("::").overlaps(&tcp("10.0.0.1")));
        assert!(!tcp("10.0.0.1").overlaps(&tcp("10.0.0.2")));
        assert!(!tcp("").overlaps(&hp(Protocol::Udp, 8080, "")));
        assert!(!tcp("").overlaps(&hp(Protocol::Tcp, 8081, "")));
        let none = |host_port, protocol| {
            HostPort::of(&PortMapping {
                protocol,
                container_port: 80,
                host_port,
                host_ip: String::new(),
            })
        };
        assert!(none(0, 0).is_none() && none(70000, 0).is_none() && none(80, 9).is_none());
    }

    #[test]
    fn claims_are_all_or_nothing_and_released_per_pod() {
        let ports = HostPorts::default();
        let a = [hp(Protocol::Tcp, 80, ""), hp(Protocol::Udp, 53, "")];
        ports.claim("aaaa", "ns/a", &a).unwrap();
        // The same pod claiming again (a retry) is fine.
        ports.claim("aaaa", "ns/a", &a[..1]).unwrap();
        let e = ports
            .claim(
                "bbbb",
                "ns/b",
                &[
                    hp(Protocol::Tcp, 443, ""),
                    hp(Protocol::Udp, 53, "10.0.0.1"),
                ],
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "host port 53/UDP on 10.0.0.1 is already held by pod aaaa (\"ns/a\") as 53/UDP on every host address"
        );
        assert!(ports.held_by("bbbb").is_empty(), "443 was not kept");
        ports
            .claim("cccc", "ns/c", &[hp(Protocol::Tcp, 443, "")])
            .unwrap();
        ports.release("aaaa");
        assert!(ports.held_by("aaaa").is_empty());
        ports
            .claim("bbbb", "ns/b", &[hp(Protocol::Udp, 53, "10.0.0.1")])
            .unwrap();
        assert_eq!(ports.held_by("cccc"), [hp(Protocol::Tcp, 443, "")]);
    }

    #[test]
    fn restore_keeps_what_is_on_the_node() {
        let ports = HostPorts::default();
        let p = [hp(Protocol::Tcp, 80, "")];
        assert!(ports.restore("aaaa", "ns/a", &p).is_none());
        assert!(ports.restore("bbbb", "ns/b", &p).is_some());
        assert_eq!(ports.held_by("bbbb"), p);
        ports.release("aaaa");
        assert!(ports.claim("cccc", "ns/c", &p).is_err(), "b still holds it");
    }

    #[test]
    fn one_of_many_concurrent_claims_wins() {
        let ports = std::sync::Arc::new(HostPorts::default());
        let wins: usize = (0..16)
            .map(|i| {
                let ports = ports.clone();
                std::thread::spawn(move || {
                    ports
                        .claim(&format!("pod{i}"), "ns/p", &[hp(Protocol::Tcp, 80, "")])
                        .is_ok()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap() as usize)
            .sum();
        assert_eq!(wins, 1);
    }
}
