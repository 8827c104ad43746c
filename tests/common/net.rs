//! A test's own CNI network with the real bridge and host-local plugins,
//! and what it holds on the host (leases, veths), removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A test's own network: name, bridge and /24 in 10.231.0.0/16.
pub struct Net {
    pub name: String,
    pub bridge: String,
    pub subnet: String,
}

impl Net {
    pub fn new(tag: u8) -> Net {
        let net = Net {
            name: format!("crius-cf-{tag}"),
            bridge: format!("crtcf{tag}"),
            subnet: format!("10.231.{tag}.0/24"),
        };
        // Leases a failed earlier run left would read as this run's leak.
        let _ = std::fs::remove_dir_all(net.lease_dir());
        net
    }

    pub fn lease_dir(&self) -> PathBuf {
        Path::new("/var/lib/cni/networks").join(&self.name)
    }

    /// The addresses host-local has handed out in this network.
    pub fn leases(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.lease_dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        v.sort();
        v
    }

    /// A conflist of just this network's bridge plugin, for `install_cni_config`.
    pub fn conflist(&self) -> String {
        serde_json::json!({"cniVersion": "1.0.0", "name": self.name, "plugins": [self.bridge_plugin()]})
            .to_string()
    }

    /// The bridge plugin's config for this network.
    pub fn bridge_plugin(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "bridge", "bridge": self.bridge, "isGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]]}
        })
    }

    /// Host ends of veth pairs still attached to the bridge.
    pub fn veths(&self) -> String {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Net {
    /// The bridge plugin never deletes its bridge; portmap's rules of pods a
    /// failed test left running go too, and host-local's lease directory.
    /// (Dropped after the test's daemon, which is declared later.)
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.lease_dir());
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        let saved = Command::new("iptables-save")
            .args(["-t", "nat"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let ours = format!("dnat name: \\\"{}\\\"", self.name);
        for line in saved.lines() {
            let Some(rule) = line.strip_prefix("-A CNI-HOSTPORT-DNAT ") else {
                continue;
            };
            if !line.contains(&ours) {
                continue;
            }
            let Some(chain) = rule.split(' ').find(|w| w.starts_with("CNI-DN-")) else {
                continue;
            };
            // iptables-save quotes the comment as a shell would.
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("iptables -t nat -D CNI-HOSTPORT-DNAT {rule}"))
                .status();
            for op in ["-F", "-X"] {
                let _ = Command::new("iptables")
                    .args(["-t", "nat", op, chain])
                    .status();
            }
        }
    }
}
