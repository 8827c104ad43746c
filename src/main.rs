//! The `crius` command: the daemon and its operator subcommands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use crius::config::{self, Config, LogFormat, Overrides};

#[derive(Parser)]
#[command(
    name = "crius",
    version,
    about = "A Kubernetes CRI container runtime",
    args_override_self = true
)]
struct Cli {
    /// Config file; drop-ins are read from the sibling `<name>.d/*.toml`.
    #[arg(long, env = "CRIUS_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Persistent state directory.
    #[arg(long, env = "CRIUS_ROOT", global = true)]
    root: Option<PathBuf>,
    /// Volatile state directory.
    #[arg(long, env = "CRIUS_RUNROOT", global = true)]
    runroot: Option<PathBuf>,
    /// CRI unix socket to listen on.
    #[arg(long, env = "CRIUS_LISTEN", global = true)]
    listen: Option<PathBuf>,
    /// Log filter (error, warn, info, debug, trace or tracing directives).
    #[arg(long, env = "CRIUS_LOG_LEVEL", global = true)]
    log_level: Option<String>,
    /// Log line format.
    #[arg(long, env = "CRIUS_LOG_FORMAT", global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the effective configuration as commented TOML.
    Config,
    /// Report whether this host can run crius; non-zero exit if it cannot.
    Check,
    /// Print version information.
    Version,
    /// Show what isolates a running container, read from the kernel.
    Inspect {
        #[command(subcommand)]
        what: Inspect,
    },
    /// Internal: create and pin a pod's namespaces (run by the daemon).
    #[command(hide = true)]
    Pinns {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        hostname: Option<String>,
        #[arg(long = "ns")]
        namespaces: Vec<String>,
        /// `key=value`, written inside the new namespaces.
        #[arg(long = "sysctl")]
        sysctls: Vec<String>,
        /// Where the pod init mounts the pod PID namespace's /proc.
        #[arg(long = "proc")]
        proc_pin: Option<PathBuf>,
        /// `container:host:length`: the pod gets a user namespace.
        #[arg(long = "uid-map")]
        uid_maps: Vec<String>,
        /// `container:host:length`, with `--uid-map`.
        #[arg(long = "gid-map")]
        gid_maps: Vec<String>,
    },
    /// Internal: PID 1 of a pod's PID namespace.
    #[command(hide = true)]
    PodInit,
    /// Internal: holds a new systemd scope until stdin closes.
    #[command(hide = true)]
    Hold,
    /// Internal: a pod's container monitor (started by the daemon).
    #[command(hide = true)]
    Monitor {
        /// Default: the working directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Inspect {
    /// Namespaces (beside the pod's and the host's), id maps, capabilities,
    /// seccomp, no_new_privs, LSM label, cgroup limits, masked and
    /// read-only paths, root propagation of a running container's process.
    Isolation {
        /// Container id, or a unique prefix of it.
        container: String,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    /// For people.
    Text,
    /// For tools.
    Json,
}

fn main() -> ExitCode {
    // Nothing inherited from whatever started us reaches our children.
    // Without close_range's CLOEXEC (Linux < 5.11) only that guarantee is
    // lost, so this warns and goes on.
    if let Err(e) = crius::executor::sys::cloexec_from(3) {
        eprintln!("crius: marking inherited descriptors close-on-exec: {e}");
    }
    let cli = Cli::parse();
    if let Some(Command::Monitor { dir }) = &cli.command {
        // Before anything starts a thread: the monitor forks containers.
        let dir = dir
            .clone()
            .map(Ok)
            .unwrap_or_else(std::env::current_dir)
            .map_err(|e| e.to_string());
        return match dir.and_then(|d| crius::monitor::run(&d)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("crius monitor: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::PodInit) = &cli.command {
        crius::executor::pod_init::main();
    }
    if let Some(Command::Hold) = &cli.command {
        return crius::cgroups::systemd::hold();
    }
    if let Some(Command::Pinns {
        dir,
        hostname,
        namespaces,
        sysctls,
        proc_pin,
        uid_maps,
        gid_maps,
    }) = &cli.command
    {
        return crius::sandbox::pinns::main(
            dir,
            hostname.as_deref(),
            namespaces,
            sysctls,
            proc_pin.as_deref(),
            (uid_maps, gid_maps),
        );
    }
    let overrides = Overrides {
        root: cli.root,
        runroot: cli.runroot,
        listen: cli.listen,
        log_level: cli.log_level,
        log_format: cli.log_format,
    };
    let (path, required) = match cli.config {
        Some(p) => (p, true),
        None => (PathBuf::from(config::DEFAULT_CONFIG_PATH), false),
    };
    let config = match Config::load(&path, required, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("crius: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Config) => {
            print!("{}", config.render());
            ExitCode::SUCCESS
        }
        Some(Command::Version) => {
            println!("crius {}", env!("CARGO_PKG_VERSION"));
            println!("CRI API {}", crius::runtime::CRI_API_VERSION);
            ExitCode::SUCCESS
        }
        Some(Command::Check) => {
            let findings = crius::check::run(&config);
            for f in &findings {
                println!("{f}");
            }
            if crius::check::passed(&findings) {
                println!("host is ready for crius");
                ExitCode::SUCCESS
            } else {
                println!("host is NOT ready: fix the FAIL lines above");
                ExitCode::FAILURE
            }
        }
        Some(Command::Inspect {
            what: Inspect::Isolation { container, output },
        }) => inspect_isolation(&config, &container, output),
        Some(
            Command::Pinns { .. } | Command::PodInit | Command::Monitor { .. } | Command::Hold,
        ) => ExitCode::FAILURE,
        None => run_daemon(config),
    }
}

fn inspect_isolation(config: &Config, container: &str, output: Output) -> ExitCode {
    let located = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(crius::inspect::locate(&config.listen, container))
                .map_err(|e| e.to_string())
        });
    let report = located.and_then(|t| crius::inspect::isolation(&t).map_err(|e| e.to_string()));
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("crius inspect isolation: {e}");
            return ExitCode::FAILURE;
        }
    };
    match output {
        Output::Text => print!("{report}"),
        Output::Json => match serde_json::to_string_pretty(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("crius inspect isolation: {e}");
                return ExitCode::FAILURE;
            }
        },
    }
    ExitCode::SUCCESS
}

fn run_daemon(config: Config) -> ExitCode {
    // Idle memory: two malloc arenas instead of up to 8 per CPU, each
    // keeping what a burst's blocking threads freed into it.
    crius::executor::sys::limit_malloc_arenas(2);
    crius::logging::init(&config.log_level, config.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking threads (store commits, file and cgroup work) of a burst
        // exit soon after it instead of idling 10 s with their stacks.
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(crius::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("crius: {e:#}");
            ExitCode::FAILURE
        }
    }
}
