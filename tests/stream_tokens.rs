//! Streaming URLs stay unguessable when the daemon is out of descriptors.
//! Its own test binary: it lowers this process's descriptor limit, which
//! would break any test running beside it.

use crius::streaming::{Pending, Streaming};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Sets the soft RLIMIT_NOFILE, returning the old limits.
fn set_nofile_soft(soft: u64) -> Rlimit {
    let old = getrlimit(Resource::Nofile);
    let new = Rlimit {
        current: Some(soft),
        maximum: old.maximum,
    };
    setrlimit(Resource::Nofile, new).expect("setrlimit");
    old
}

#[test]
fn tokens_are_random_when_no_descriptor_can_be_opened() {
    let streaming = Streaming::new("http://127.0.0.1:1".into());
    // The lowest free descriptor: with the limit there, none can be opened.
    let probe = std::fs::File::open("/dev/null").expect("open /dev/null");
    let lowest_free = std::os::fd::AsRawFd::as_raw_fd(&probe);
    drop(probe);
    let old = set_nofile_soft(lowest_free as u64);
    let exhausted = std::fs::File::open("/dev/urandom").map(drop);
    let urls: Vec<_> = (0..2)
        .map(|_| {
            streaming.issue(Pending::PortForward {
                req: Default::default(),
                netns: None,
            })
        })
        .collect();
    setrlimit(Resource::Nofile, old).expect("restore RLIMIT_NOFILE");

    let err = exhausted.expect_err("the descriptor table is full");
    assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "{err}");
    let tokens: Vec<String> = urls
        .into_iter()
        .map(|u| {
            let url = u.expect("getrandom(2) needs no descriptor");
            url.rsplit('/').next().unwrap_or_default().to_string()
        })
        .collect();
    assert_ne!(tokens[0], tokens[1], "two URLs, one token: {tokens:?}");
    for t in &tokens {
        assert_eq!(t.len(), 24, "{t}");
        assert_ne!(t, "AAAAAAAAAAAAAAAAAAAAAAAA", "an all-zero token");
    }
}
