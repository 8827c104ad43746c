//! `crius-monitor`: the pod monitor as its own small binary. One runs per
//! pod for the pod's whole life, so it links only the monitor, executor and
//! log writer: a few pages of code resident instead of the daemon's gRPC,
//! HTTP and TLS stacks. Started by the daemon as `crius-monitor monitor
//! --dir <dir>` (the same arguments `crius monitor` takes).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("monitor") {
        args.next();
    }
    let dir = match (args.next().as_deref(), args.next()) {
        (Some("--dir"), Some(d)) => PathBuf::from(d),
        _ => {
            eprintln!("usage: crius-monitor [monitor] --dir <dir>");
            return ExitCode::from(2);
        }
    };
    match crius::monitor::run(&dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crius-monitor: {e}");
            ExitCode::FAILURE
        }
    }
}
