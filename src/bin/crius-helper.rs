//! `crius-helper`: the processes crius starts per pod, as one small binary
//! (the pod monitor, the namespace pinner and the pod PID-namespace init).
//! They link only what they run, so each starts in about a millisecond
//! (the daemon binary takes four) and a long-lived monitor keeps few pages
//! resident. Each is also available as a hidden `crius` subcommand, which
//! the daemon uses when this binary is not installed beside it.
//!
//!   crius-helper monitor [--dir <dir>]      (default: the working directory)
//!   crius-helper pinns --dir <dir> [--hostname H] [--ns KIND]... [--sysctl K=V]... [--proc <dir>] [--uid-map C:H:L --gid-map C:H:L]
//!   crius-helper pod-init
//!   crius-helper hold                       (until stdin closes: a systemd scope's first process)

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: crius-helper monitor [--dir <dir>] | pinns --dir <dir> [--hostname H] [--ns KIND]... [--sysctl K=V]... [--proc <dir>] [--uid-map C:H:L --gid-map C:H:L] | pod-init | hold"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        return usage();
    };
    let mut dir = None;
    let mut hostname = None;
    let mut namespaces = Vec::new();
    let mut sysctls = Vec::new();
    let mut proc_pin = None;
    let mut uid_maps = Vec::new();
    let mut gid_maps = Vec::new();
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else {
            return usage();
        };
        match flag.as_str() {
            "--dir" => dir = Some(PathBuf::from(value)),
            "--hostname" => hostname = Some(value.clone()),
            "--ns" => namespaces.push(value.clone()),
            "--sysctl" => sysctls.push(value.clone()),
            "--proc" => proc_pin = Some(PathBuf::from(value)),
            "--uid-map" => uid_maps.push(value.clone()),
            "--gid-map" => gid_maps.push(value.clone()),
            _ => return usage(),
        }
    }
    match (cmd.as_str(), dir) {
        ("monitor", dir) => match dir
            .map(Ok)
            .unwrap_or_else(std::env::current_dir)
            .map_err(|e| e.to_string())
            .and_then(|d| crius::monitor::run(&d))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("crius-helper monitor: {e}");
                ExitCode::FAILURE
            }
        },
        ("pinns", Some(dir)) => crius::sandbox::pinns::main(
            &dir,
            hostname.as_deref(),
            &namespaces,
            &sysctls,
            proc_pin.as_deref(),
            (&uid_maps, &gid_maps),
        ),
        ("pod-init", None) => crius::executor::pod_init::main(),
        ("hold", None) => crius::cgroups::systemd::hold(),
        _ => usage(),
    }
}
