//! A pod's interface counters, read inside its network namespace: the
//! calling thread enters the pinned namespace, reads
//! `/proc/thread-self/net/dev` (which follows the thread's namespace, not
//! the process's) and goes back. Only the collector's own OS thread does
//! this, never an async worker.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

/// One interface's counters since it was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    /// The interface's name in the pod's namespace, e.g. `eth0`.
    pub name: String,
    /// Bytes received, /proc/net/dev's receive `bytes`.
    pub rx_bytes: u64,
    /// Packets received, /proc/net/dev's receive `packets`.
    pub rx_packets: u64,
    /// Receive errors, /proc/net/dev's receive `errs`.
    pub rx_errors: u64,
    /// Received packets dropped, /proc/net/dev's receive `drop`.
    pub rx_drops: u64,
    /// Bytes sent, /proc/net/dev's transmit `bytes`.
    pub tx_bytes: u64,
    /// Packets sent, /proc/net/dev's transmit `packets`.
    pub tx_packets: u64,
    /// Transmit errors, /proc/net/dev's transmit `errs`.
    pub tx_errors: u64,
    /// Packets dropped while sending, /proc/net/dev's transmit `drop`.
    pub tx_drops: u64,
}

/// Why a namespace's counters could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A namespace file or /proc/thread-self/net/dev could not be opened
    /// or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What opening or reading it returned.
        #[source]
        source: std::io::Error,
    },
    /// setns into the pod's namespace failed; the thread is still in its
    /// own.
    #[error("entering {path}: {source}")]
    Enter {
        /// The pinned namespace.
        path: PathBuf,
        /// setns's error.
        #[source]
        source: nix::errno::Errno,
    },
    /// The thread could not go back to its own namespace; it must not be
    /// used for anything that depends on the namespace again.
    #[error("returning to the collector's network namespace: {0}")]
    Return(#[source] nix::errno::Errno),
}

/// The interfaces of `/proc/net/dev` text, loopback left out (kubelet
/// does not count it).
pub fn parse_dev(text: &str) -> Vec<Interface> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            if f.len() < 12 {
                return None;
            }
            Some(Interface {
                name: name.to_string(),
                rx_bytes: f[0],
                rx_packets: f[1],
                rx_errors: f[2],
                rx_drops: f[3],
                tx_bytes: f[8],
                tx_packets: f[9],
                tx_errors: f[10],
                tx_drops: f[11],
            })
        })
        .collect()
}

/// The interfaces of the namespace pinned at `netns`, read from this
/// thread. Returns [`NetError::Return`] if the thread is left inside.
pub fn read_in(netns: &Path) -> Result<Vec<Interface>, NetError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NetError::Io { path, source }
    };
    let own_path = Path::new("/proc/thread-self/ns/net");
    let own = std::fs::File::open(own_path).map_err(io(own_path))?;
    let target = std::fs::File::open(netns).map_err(io(netns))?;
    setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetError::Enter {
        path: netns.to_path_buf(),
        source,
    })?;
    let dev = Path::new("/proc/thread-self/net/dev");
    let text = std::fs::read_to_string(dev).map_err(io(dev));
    setns(own.as_fd(), CloneFlags::CLONE_NEWNET).map_err(NetError::Return)?;
    Ok(parse_dev(&text?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_parses_without_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
eth0: 1000 10 1 2 0 0 0 0 2000 20 3 4 0 0 0 0\n";
        let got = parse_dev(text);
        assert_eq!(got.len(), 1);
        let e = &got[0];
        assert_eq!(e.name, "eth0");
        assert_eq!(
            (e.rx_bytes, e.rx_packets, e.rx_errors, e.rx_drops),
            (1000, 10, 1, 2)
        );
        assert_eq!(
            (e.tx_bytes, e.tx_packets, e.tx_errors, e.tx_drops),
            (2000, 20, 3, 4)
        );
    }

    #[test]
    fn own_namespace_reads() {
        // Entering the namespace the thread is already in needs root; skip
        // the round trip elsewhere.
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let handle = std::thread::spawn(|| read_in(Path::new("/proc/self/ns/net")));
        assert!(handle.join().unwrap().is_ok());
    }
}
