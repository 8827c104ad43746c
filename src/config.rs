//! Daemon configuration: defaults, the TOML file with its drop-ins, `CRIUS_*`
//! environment variables and command-line flags, merged in that order.
//!
//! Operators keep configs for years, so key names are stable and an unknown key
//! is an error that names the key and the file instead of being ignored.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the daemon looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/crius/crius.toml";

/// The capabilities a container gets unless it asks otherwise: Docker's
/// 14, as containerd and cri-o (`[runtime] default_capabilities`).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Errors from reading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file (also when `required` and missing) or the drop-in directory could not be
    /// read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file or directory that failed.
        path: PathBuf,
        /// The I/O error from reading it.
        source: std::io::Error,
    },
    /// A file is not valid TOML or does not fit the schema (unknown key,
    /// wrong type); each file is checked on its own before merging.
    #[error("config file {path}: {message}")]
    Parse {
        /// The offending file (the main file when only the merged result fails).
        path: PathBuf,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// Values that parse but do not fit together or are out of range (e.g. a TLS cert without a
    /// key, a zero timeout, a bad `log_level` filter).
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Output format of the daemon's log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (tracing's default formatter).
    Text,
    /// One JSON object per line, event fields flattened to the top level.
    Json,
}

/// Which cgroup manager creates pod and container cgroups; must match kubelet's
/// `--cgroup-driver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// Cgroups made directly in the cgroup filesystem, as `<parent>/crius-pod-<short id>`.
    Cgroupfs,
    /// Cgroups as transient systemd units made through systemd's D-Bus API: a pod is the slice
    /// `<parent>-crius_pod_<short id>.slice`, a container the scope `crius-<short id>.scope` in
    /// it; parents use slice naming. Needs systemd as init: the daemon refuses to start without.
    Systemd,
}

/// The whole effective configuration of a daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent state (metadata store, images, container layers).
    pub root: PathBuf,
    /// Volatile state (sockets, pinned namespaces, mounts); lost on reboot.
    pub runroot: PathBuf,
    /// Unix socket the CRI gRPC server listens on.
    pub listen: PathBuf,
    /// A `tracing` filter directive, e.g. `info` or `crius=debug,info`.
    pub log_level: String,
    /// Output format of the daemon's own log lines.
    pub log_format: LogFormat,
    /// `[network]`: CNI settings.
    pub network: NetworkConfig,
    /// `[image]`: image pull settings.
    pub image: ImageConfig,
    /// `[streaming]`: the exec/attach/port-forward server.
    pub streaming: StreamingConfig,
    /// `[runtime]`: container runtime settings.
    pub runtime: RuntimeConfig,
    /// `[metrics]`: the Prometheus endpoint and the stats sampling interval.
    pub metrics: MetricsConfig,
    /// `[policy]`: what this node refuses to run (off by default).
    pub policy: PolicyConfig,
}

/// CNI settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Directory holding CNI network configs; the lexically first is used.
    pub conf_dir: PathBuf,
    /// Directories searched, in order, for CNI plugin binaries.
    pub plugin_dirs: Vec<PathBuf>,
    /// Seconds one CNI plugin may run before the pod operation fails.
    pub plugin_timeout: u64,
}

/// Image pulling settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageConfig {
    /// containers-registries.conf v2 file: mirrors, insecure and blocked registries.
    pub registries_conf: PathBuf,
    /// Registry credentials in containers-auth.json / docker config.json format.
    pub auth_file: Option<PathBuf>,
    /// The infra image; reported as pinned so kubelet's image GC keeps it.
    pub pause_image: String,
    /// Layers of one pull downloaded at the same time.
    pub max_concurrent_downloads: usize,
    /// Seconds without a byte from the registry before a pull fails.
    pub pull_stall_timeout: u64,
}

/// Streaming (exec/attach/port-forward) server settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// Address the streaming server binds; loopback by default (kubelet proxies streams to it).
    pub address: IpAddr,
    /// 0 picks a free port at start.
    pub port: u16,
    /// PEM certificate chain and key: both set serves https (ALPN
    /// http/1.1 only: upgrades need HTTP/1.1).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`; set both or neither.
    pub tls_key: Option<PathBuf>,
    /// Seconds a connection has, from accept, to finish its TLS handshake
    /// and send a complete request head; then it is closed.
    pub header_read_timeout: u64,
    /// Seconds an upgraded session (exec, attach, port-forward) may pass
    /// with no traffic in either direction before it is closed (kubelet's
    /// `--streaming-connection-idle-timeout`).
    pub idle_timeout: u64,
    /// Connections open at once, upgraded sessions included; connections
    /// beyond it are closed as soon as they are accepted.
    pub max_connections: usize,
}

/// Upper bound of the streaming timeouts (a year): larger values would
/// overflow deadline arithmetic and mean "never" anyway.
pub const MAX_STREAMING_TIMEOUT: u64 = 365 * 24 * 3600;
/// Upper bound of `streaming.max_connections`: the kernel's default
/// `fs.nr_open`, so no process could hold more descriptors.
pub const MAX_STREAMING_CONNECTIONS: usize = 1 << 20;

/// The kernel's most pids (`PID_MAX_LIMIT` on 64-bit): a larger
/// `pids.max` is refused, so a larger `runtime.pids_limit` could never work.
pub const PID_MAX_LIMIT: u64 = 4 * 1024 * 1024;

/// The node policy: pods and containers refused with `PermissionDenied`
/// whatever kubelet admitted, except in exempt namespaces. Every rule is
/// off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Refuse privileged pods and containers.
    pub refuse_privileged: bool,
    /// Refuse pods in the host's network, PID or IPC namespace, and
    /// containers in the host's PID namespace.
    pub refuse_host_namespaces: bool,
    /// Refuse host-path mounts of `/`, of crius's socket, root and
    /// runroot, of Docker's socket, of `/proc`, `/sys` and `/etc`: in
    /// them or above them, symlinks followed.
    pub refuse_sensitive_host_paths: bool,
    /// Kubernetes namespaces (pod metadata) the rules do not apply to.
    pub exempt_namespaces: Vec<String>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            refuse_privileged: false,
            refuse_host_namespaces: false,
            refuse_sensitive_host_paths: false,
            // CNI plugins and kube-proxy run there privileged, on the
            // host's network, with host paths.
            exempt_namespaces: vec!["kube-system".into()],
        }
    }
}

/// Stats and the daemon's own metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where the Prometheus endpoint (`/metrics`) listens; unset: none.
    pub address: Option<std::net::SocketAddr>,
    /// Seconds between two samples of every container's and pod's usage
    /// (stats calls answer from the latest; nano-cores span two samples).
    pub stats_interval: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            address: None,
            // Twice per kubelet housekeeping period (10 s), so each of its
            // reads finds a sample at most 5 s old.
            stats_interval: 5,
        }
    }
}

/// Container runtime settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Cgroup manager for pod and container cgroups; must match kubelet's `--cgroup-driver`.
    pub cgroup_driver: CgroupDriver,
    /// Where container logs go when a pod gives no log directory.
    pub log_dir: PathBuf,
    /// Keep the kernel's cgroup migration lock in its fast-writer mode
    /// (`favordynmods`): on cgroup v2, container starts skip an RCU grace
    /// period (10–14 ms) at a small cost to every fork and exit on the node.
    /// cgroup v1 joins go through `tasks`, which never takes that lock.
    /// Off by default: it changes a node-wide kernel setting.
    pub cgroup_favor_dynmods: bool,
    /// When the kernel refuses a container's oom_score_adj (lowering it
    /// needs CAP_SYS_RESOURCE, which some nodes withhold from the runtime),
    /// keep the value crius runs with instead of failing CreateContainer.
    /// Off by default, as in containerd (same name): a value is applied or
    /// refused, never silently changed.
    pub restrict_oom_score_adj: bool,
    /// A container that names no seccomp profile gets the RuntimeDefault
    /// one (as cri-o does; containerd leaves it unconfined). `Unconfined`
    /// must then be asked for; privileged containers are never filtered.
    pub seccomp_use_default_when_empty: bool,
    /// The AppArmor profile of RuntimeDefault (and of a container that
    /// names none) where the node runs AppArmor. `crius-default` is
    /// generated and loaded by crius at first use; any other name must be
    /// loaded on the node.
    pub apparmor_default_profile: String,
    /// Capabilities a container gets unless it drops or adds some (names
    /// with or without `CAP_`); `add_capabilities = ["ALL"]` and
    /// `drop_capabilities = ["ALL"]` in a request replace them.
    pub default_capabilities: Vec<String>,
    /// Most processes (tasks) one container may have (`pids.max` of its
    /// cgroup), so a fork bomb is held inside it; 0 = no limit. A
    /// `pids.max` in the request's `unified` resources wins.
    pub pids_limit: u64,
    /// Container events one GetContainerEvents subscriber may have waiting;
    /// one that falls further behind has its stream ended with an error
    /// (kubelet then re-lists), so a slow client never holds the runtime.
    pub container_events_buffer: usize,
    /// `[runtime.handlers.NAME]`: the runtime handlers (RuntimeClass
    /// `handler` names) pods may ask for besides the default one (`""`,
    /// the embedded executor). A name not here is refused at
    /// RunPodSandbox, naming the configured ones.
    pub handlers: BTreeMap<String, HandlerConfig>,
}

/// One runtime handler.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HandlerConfig {
    /// What runs the handler's containers.
    pub runtime_type: RuntimeType,
    /// `oci` only: the OCI runtime binary (runc's command line), an
    /// absolute path checked at start.
    pub runtime_path: Option<PathBuf>,
    /// `oci` only: the runtime's state directory (its `--root`); unset:
    /// `runroot/oci/NAME`, so crius's containers stay apart from others'.
    pub runtime_root: Option<PathBuf>,
}

impl HandlerConfig {
    /// The state directory the OCI runtime of handler `name` keeps.
    pub fn root(&self, runroot: &Path, name: &str) -> PathBuf {
        self.runtime_root
            .clone()
            .unwrap_or_else(|| runroot.join("oci").join(name))
    }

    /// Checks that an `oci` handler names a runnable binary, and that
    /// only an `oci` handler names one.
    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let invalid = |m: String| {
            Err(ConfigError::Invalid(format!(
                "runtime.handlers.{name}: {m}"
            )))
        };
        match (self.runtime_type, &self.runtime_path) {
            (RuntimeType::Embedded, None) if self.runtime_root.is_none() => Ok(()),
            (RuntimeType::Embedded, _) => {
                invalid("runtime_path and runtime_root are for runtime_type = \"oci\" only".into())
            }
            (RuntimeType::Oci, None) => invalid(
                "runtime_type = \"oci\" needs runtime_path (e.g. \"/usr/sbin/runc\")".into(),
            ),
            (RuntimeType::Oci, Some(path)) => {
                if !path.is_absolute() {
                    return invalid(format!("runtime_path {} must be absolute", path.display()));
                }
                if let Some(root) = &self.runtime_root
                    && !root.is_absolute()
                {
                    return invalid(format!("runtime_root {} must be absolute", root.display()));
                }
                match std::fs::metadata(path) {
                    Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
                    Ok(_) => invalid(format!(
                        "runtime_path {} is not an executable file",
                        path.display()
                    )),
                    Err(e) => invalid(format!("runtime_path {}: {e}", path.display())),
                }
            }
        }
    }
}

/// The kinds of runtime a handler can name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeType {
    /// crius's own OCI executor, driven by the pod's monitor (the default
    /// handler's).
    #[default]
    Embedded,
    /// An external OCI runtime binary with runc's command line
    /// (`runtime_path`), driven by the pod's monitor.
    Oci,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: "/var/lib/crius".into(),
            runroot: "/run/crius".into(),
            listen: "/run/crius/crius.sock".into(),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            network: NetworkConfig::default(),
            image: ImageConfig::default(),
            streaming: StreamingConfig::default(),
            runtime: RuntimeConfig::default(),
            metrics: MetricsConfig::default(),
            policy: PolicyConfig::default(),
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            conf_dir: "/etc/cni/net.d".into(),
            plugin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            plugin_timeout: 60,
        }
    }
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            registries_conf: "/etc/containers/registries.conf".into(),
            auth_file: None,
            pause_image: "registry.k8s.io/pause:3.10".into(),
            max_concurrent_downloads: 3,
            pull_stall_timeout: 60,
        }
    }
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            tls_cert: None,
            tls_key: None,
            // A client sends its upgrade request right after connecting
            // (and the TLS handshake); 5 s covers a slow link with a wide
            // margin while an idle or half-sent connection is gone quickly.
            header_read_timeout: 5,
            // kubelet's default streaming idle timeout (4 h): an
            // interactive shell may sit quietly for a long time.
            idle_timeout: 4 * 3600,
            // Far above interactive use (one connection per kubectl
            // exec/attach/port-forward), low enough that connections and
            // their sessions (up to ~5 descriptors each: socket, pipes or a
            // terminal, the monitor's socket) fit in the common 1024 soft
            // descriptor limit next to the CRI server.
            max_connections: 128,
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cgroup_driver: CgroupDriver::Cgroupfs,
            log_dir: "/var/log/crius/pods".into(),
            cgroup_favor_dynmods: false,
            restrict_oom_score_adj: false,
            seccomp_use_default_when_empty: true,
            apparmor_default_profile: "crius-default".into(),
            default_capabilities: DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            // Far above what a service needs (kubelet's pod limit is often
            // 1024-4096 per pod), far below the node's pid_max.
            pids_limit: 4096,
            // cri-o's and containerd's channel size.
            container_events_buffer: 1000,
            handlers: BTreeMap::new(),
        }
    }
}

/// Values given on the command line or in `CRIUS_*` variables; they win over files.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--root` / `CRIUS_ROOT`: replaces the file's `root`.
    pub root: Option<PathBuf>,
    /// `--runroot` / `CRIUS_RUNROOT`: replaces the file's `runroot`.
    pub runroot: Option<PathBuf>,
    /// `--listen` / `CRIUS_LISTEN`: replaces the file's `listen`.
    pub listen: Option<PathBuf>,
    /// `--log-level` / `CRIUS_LOG_LEVEL`: replaces the file's `log_level`.
    pub log_level: Option<String>,
    /// `--log-format` / `CRIUS_LOG_FORMAT`: replaces the file's `log_format`.
    pub log_format: Option<LogFormat>,
}

/// The drop-in directory that belongs to a config file: `crius.toml` → `crius.d`.
pub fn drop_in_dir(config_path: &Path) -> PathBuf {
    config_path.with_extension("d")
}

impl Config {
    /// Loads the config file (a missing file is fine unless `required`), then its
    /// drop-ins in name order, then applies `overrides`, then validates.
    pub fn load(
        config_path: &Path,
        required: bool,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut merged = toml::Table::new();
        let mut files = Vec::new();
        if config_path.exists() || required {
            files.push(config_path.to_path_buf());
        }
        files.extend(list_drop_ins(&drop_in_dir(config_path))?);
        for path in files {
            let table = parse_file(&path)?;
            merge_tables(&mut merged, table);
        }
        let mut config: Config =
            Config::deserialize(toml::Value::Table(merged)).map_err(|e| ConfigError::Parse {
                path: config_path.to_path_buf(),
                message: e.to_string(),
            })?;
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(v) = &o.root {
            self.root = v.clone();
        }
        if let Some(v) = &o.runroot {
            self.runroot = v.clone();
        }
        if let Some(v) = &o.listen {
            self.listen = v.clone();
        }
        if let Some(v) = &o.log_level {
            self.log_level = v.clone();
        }
        if let Some(v) = o.log_format {
            self.log_format = v;
        }
    }

    /// Rejects values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut paths: Vec<(&str, &Path)> = vec![
            ("root", &self.root),
            ("runroot", &self.runroot),
            ("listen", &self.listen),
            ("network.conf_dir", &self.network.conf_dir),
            ("image.registries_conf", &self.image.registries_conf),
            ("runtime.log_dir", &self.runtime.log_dir),
        ];
        for dir in &self.network.plugin_dirs {
            paths.push(("network.plugin_dirs", dir));
        }
        if let Some(auth) = &self.image.auth_file {
            paths.push(("image.auth_file", auth));
        }
        match (&self.streaming.tls_cert, &self.streaming.tls_key) {
            (Some(c), Some(k)) => {
                paths.push(("streaming.tls_cert", c));
                paths.push(("streaming.tls_key", k));
            }
            (None, None) => {}
            _ => {
                return Err(ConfigError::Invalid(
                    "streaming.tls_cert and streaming.tls_key go together".into(),
                ));
            }
        }
        for (key, path) in paths {
            if !path.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be an absolute path, got {path:?}"
                )));
            }
        }
        if self.image.max_concurrent_downloads == 0
            || self.image.pull_stall_timeout == 0
            || self.network.plugin_timeout == 0
        {
            return Err(ConfigError::Invalid(
                "image.max_concurrent_downloads, image.pull_stall_timeout and network.plugin_timeout must be positive"
                    .into(),
            ));
        }
        let st = &self.streaming;
        for (key, secs) in [
            ("streaming.header_read_timeout", st.header_read_timeout),
            ("streaming.idle_timeout", st.idle_timeout),
        ] {
            if !(1..=MAX_STREAMING_TIMEOUT).contains(&secs) {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be between 1 and {MAX_STREAMING_TIMEOUT} seconds, got {secs}"
                )));
            }
        }
        if !(1..=MAX_STREAMING_CONNECTIONS).contains(&st.max_connections) {
            return Err(ConfigError::Invalid(format!(
                "streaming.max_connections must be between 1 and {MAX_STREAMING_CONNECTIONS}, got {}",
                st.max_connections
            )));
        }
        if !(1..=1_000_000).contains(&self.runtime.container_events_buffer) {
            return Err(ConfigError::Invalid(format!(
                "runtime.container_events_buffer must be between 1 and 1000000, got {}",
                self.runtime.container_events_buffer
            )));
        }
        for c in &self.runtime.default_capabilities {
            let upper = c.trim().to_ascii_uppercase();
            let full = if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            };
            if full.parse::<caps::Capability>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "runtime.default_capabilities: {c:?} is not a capability"
                )));
            }
        }
        let aa = &self.runtime.apparmor_default_profile;
        if aa.is_empty() || aa.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ConfigError::Invalid(format!(
                "runtime.apparmor_default_profile must be a profile name, got {aa:?}"
            )));
        }
        if self.runtime.pids_limit > PID_MAX_LIMIT {
            return Err(ConfigError::Invalid(format!(
                "runtime.pids_limit must be at most {PID_MAX_LIMIT} (the kernel's PID_MAX_LIMIT) or 0 for none, got {}",
                self.runtime.pids_limit
            )));
        }

        for (name, handler) in &self.runtime.handlers {
            if !is_dns_label(name) {
                return Err(ConfigError::Invalid(format!(
                    "runtime.handlers.{name:?}: a handler name must be a DNS label (1-63 of a-z, 0-9, '-', \
                     starting and ending with a letter or digit), as a RuntimeClass handler is"
                )));
            }
            handler.validate(name)?;
        }
        if !(1..=3600).contains(&self.metrics.stats_interval) {
            return Err(ConfigError::Invalid(format!(
                "metrics.stats_interval must be between 1 and 3600 seconds, got {}",
                self.metrics.stats_interval
            )));
        }
        if self.network.plugin_dirs.is_empty() {
            return Err(ConfigError::Invalid(
                "network.plugin_dirs must name at least one directory".into(),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| ConfigError::Invalid(format!("log_level {:?}: {e}", self.log_level)))?;
        Ok(())
    }

    /// The config as commented TOML that `load` reads back to the same value.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |comment: &str, key: &str, value: Option<toml::Value>| {
            entry(&mut out, comment, key, value)
        };
        let s = |p: &Path| Some(toml::Value::String(p.display().to_string()));
        line(
            "crius configuration. Generated by `crius config`; every key is shown with\n\
             its effective value. Drop-ins in crius.d/*.toml next to this file override it.\n\n\
             Persistent state: metadata store, images, writable container layers.",
            "root",
            s(&self.root),
        );
        line(
            "Volatile state: sockets, pinned namespaces, mounts.",
            "runroot",
            s(&self.runroot),
        );
        line("CRI gRPC unix socket.", "listen", s(&self.listen));
        line(
            "Log filter: error, warn, info, debug, trace, or tracing directives.",
            "log_level",
            Some(self.log_level.clone().into()),
        );
        line(
            "Log line format: text or json.",
            "log_format",
            Some(enum_str(&self.log_format).into()),
        );
        line("", "[network]", None);
        line(
            "CNI network configs; the lexically first .conflist/.conf/.json is used.",
            "conf_dir",
            s(&self.network.conf_dir),
        );
        line(
            "Directories searched in order for CNI plugin binaries.",
            "plugin_dirs",
            Some(toml::Value::Array(
                self.network
                    .plugin_dirs
                    .iter()
                    .map(|p| toml::Value::String(p.display().to_string()))
                    .collect(),
            )),
        );
        line(
            "Seconds one CNI plugin may run before the pod operation fails.",
            "plugin_timeout",
            Some(toml::Value::Integer(self.network.plugin_timeout as i64)),
        );
        line("", "[image]", None);
        line(
            "containers-registries.conf (v2): mirrors, insecure and blocked registries.",
            "registries_conf",
            s(&self.image.registries_conf),
        );
        line(
            "Registry credentials (containers-auth.json / docker config.json format).",
            "auth_file",
            self.image.auth_file.as_deref().and_then(s),
        );
        line(
            "The infra image: reported as pinned, so kubelet's image GC keeps it.",
            "pause_image",
            Some(self.image.pause_image.clone().into()),
        );
        line(
            "Layers of one pull downloaded at the same time.",
            "max_concurrent_downloads",
            Some(toml::Value::Integer(
                self.image.max_concurrent_downloads as i64,
            )),
        );
        line(
            "Seconds without a byte from the registry before a pull fails.",
            "pull_stall_timeout",
            Some(toml::Value::Integer(self.image.pull_stall_timeout as i64)),
        );
        line("", "[streaming]", None);
        line(
            "Address of the exec/attach/port-forward server.",
            "address",
            Some(self.streaming.address.to_string().into()),
        );
        line(
            "Port of the streaming server; 0 picks a free one.",
            "port",
            Some(toml::Value::Integer(i64::from(self.streaming.port))),
        );
        line(
            "TLS for the streaming server: PEM certificate chain and key (both or neither).",
            "tls_cert",
            self.streaming.tls_cert.as_deref().and_then(s),
        );
        line("", "tls_key", self.streaming.tls_key.as_deref().and_then(s));
        line(
            "Seconds a connection has to finish its TLS handshake and send a complete\n\
             request head; then it is closed.",
            "header_read_timeout",
            Some(toml::Value::Integer(
                self.streaming.header_read_timeout as i64,
            )),
        );
        line(
            "Seconds an exec/attach/port-forward session may pass with no traffic in\n\
             either direction before it is closed (kubelet's stream idle timeout).",
            "idle_timeout",
            Some(toml::Value::Integer(self.streaming.idle_timeout as i64)),
        );
        line(
            "Streaming connections open at once, sessions included; more are closed\n\
             as soon as they are accepted.",
            "max_connections",
            Some(toml::Value::Integer(self.streaming.max_connections as i64)),
        );
        line("", "[runtime]", None);
        line(
            "cgroupfs or systemd (pods and containers as transient systemd units; needs systemd as init); must match kubelet's --cgroup-driver.",
            "cgroup_driver",
            Some(enum_str(&self.runtime.cgroup_driver).into()),
        );
        line(
            "Container logs go here when a pod names no log directory.",
            "log_dir",
            s(&self.runtime.log_dir),
        );
        line(
            "Faster container starts for slower forks node-wide: keeps the kernel's\ncgroup migration lock in favordynmods mode (saves an RCU grace period per start on cgroup v2).",
            "cgroup_favor_dynmods",
            Some(toml::Value::Boolean(self.runtime.cgroup_favor_dynmods)),
        );
        line(
            "When the kernel refuses a container's oom_score_adj (lowering needs\nCAP_SYS_RESOURCE), run it with crius's own value instead of failing the create.",
            "restrict_oom_score_adj",
            Some(toml::Value::Boolean(self.runtime.restrict_oom_score_adj)),
        );
        line(
            "A container that names no seccomp profile runs under the RuntimeDefault\nprofile; Unconfined must be asked for. false: no profile means unconfined.",
            "seccomp_use_default_when_empty",
            Some(toml::Value::Boolean(
                self.runtime.seccomp_use_default_when_empty,
            )),
        );
        line(
            "Where the node runs AppArmor: the profile of RuntimeDefault and of a container\nthat names none (privileged ones run unconfined). crius-default is generated\nand loaded by crius; another profile must be loaded on the node.",
            "apparmor_default_profile",
            Some(toml::Value::String(
                self.runtime.apparmor_default_profile.clone(),
            )),
        );
        line(
            "Capabilities a container gets unless it adds or drops some (CAP_ prefix\noptional); a request's add or drop of \"ALL\" replaces them.",
            "default_capabilities",
            Some(toml::Value::Array(
                self.runtime
                    .default_capabilities
                    .iter()
                    .map(|c| toml::Value::String(c.clone()))
                    .collect(),
            )),
        );
        line(
            "Most processes (tasks) one container may have (pids.max of its cgroup);\n0: no limit. A pids.max in the request's unified resources wins.",
            "pids_limit",
            Some(toml::Value::Integer(
                i64::try_from(self.runtime.pids_limit).unwrap_or(i64::MAX),
            )),
        );
        line(
            "Container events a GetContainerEvents client may have waiting; a slower one\nhas its stream ended with an error (kubelet re-lists).",
            "container_events_buffer",
            Some(toml::Value::Integer(
                self.runtime.container_events_buffer as i64,
            )),
        );
        for (name, h) in &self.runtime.handlers {
            line("", &format!("[runtime.handlers.{name}]"), None);
            line(
                "A runtime handler pods may name (RuntimeClass handler); embedded: crius's own\nexecutor; oci: the OCI runtime binary at runtime_path (runc's command line).",
                "runtime_type",
                Some(enum_str(&h.runtime_type).into()),
            );
            line(
                "oci: the runtime binary.",
                "runtime_path",
                h.runtime_path.as_deref().and_then(s),
            );
            line(
                "oci: the runtime's --root (state directory); unset: runroot/oci/NAME.",
                "runtime_root",
                h.runtime_root.as_deref().and_then(s),
            );
        }
        line("", "[metrics]", None);
        line(
            "host:port of the Prometheus endpoint (/metrics) for crius's own metrics;\nunset: off.",
            "address",
            self.metrics.address.map(|a| a.to_string().into()),
        );
        line(
            "Seconds between two samples of every container's and pod's usage; stats\ncalls answer from the latest sample.",
            "stats_interval",
            Some(toml::Value::Integer(self.metrics.stats_interval as i64)),
        );
        line("", "[policy]", None);
        let p = &self.policy;
        line(
            "Node policy, each rule off by default; a refusal is PermissionDenied naming it.\nRefuse privileged pods and containers.",
            "refuse_privileged",
            Some(toml::Value::Boolean(p.refuse_privileged)),
        );
        line(
            "Refuse pods in the host's network, PID or IPC namespace (and containers in its PID one).",
            "refuse_host_namespaces",
            Some(toml::Value::Boolean(p.refuse_host_namespaces)),
        );
        line(
            "Refuse host-path mounts in or above /, /proc, /sys, /etc, Docker's socket and\ncrius's socket, root and runroot (symlinks followed).",
            "refuse_sensitive_host_paths",
            Some(toml::Value::Boolean(p.refuse_sensitive_host_paths)),
        );
        line(
            "Kubernetes namespaces (pod metadata) the rules do not apply to.",
            "exempt_namespaces",
            Some(toml::Value::Array(
                p.exempt_namespaces
                    .iter()
                    .map(|n| toml::Value::String(n.clone()))
                    .collect(),
            )),
        );
        out
    }
}

/// Appends one commented `key = value` line; a `[section]` header when `key`
/// is bracketed; a commented-out key when `value` is unset.
fn entry(out: &mut String, comment: &str, key: &str, value: Option<toml::Value>) {
    for c in comment.lines() {
        let _ = writeln!(out, "{}", format!("# {c}").trim_end());
    }
    let _ = match value {
        _ if key.starts_with('[') => writeln!(out, "{key}"),
        Some(v) => writeln!(out, "{key} = {v}\n"),
        None => writeln!(out, "# {key} = \"\"\n"),
    };
}

/// A DNS label (RFC 1123), what Kubernetes allows as a RuntimeClass handler.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// The serde name of a unit enum variant.
fn enum_str<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

fn list_drop_ins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ConfigError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Reads one file and checks it against the schema on its own, so an unknown
/// key or a bad value is reported with this file's name and position.
fn parse_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parse_err = |e: toml::de::Error| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    };
    toml::from_str::<Config>(&text).map_err(parse_err)?;
    toml::from_str::<toml::Table>(&text).map_err(parse_err)
}

/// Later values win; tables merge key by key.
fn merge_tables(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge_tables(b, t),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn missing_default_file_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&dir.path().join("crius.toml"), false, &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn missing_required_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Config::load(&dir.path().join("nope.toml"), true, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.toml"), "{err}");
    }

    #[test]
    fn drop_ins_override_in_name_order_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "crius.toml",
            "root = \"/a\"\n[network]\nconf_dir = \"/cni\"\n",
        );
        write(
            dir.path(),
            "crius.d/20-b.toml",
            "[network]\nconf_dir = \"/b\"\n",
        );
        write(
            dir.path(),
            "crius.d/10-a.toml",
            "[network]\nconf_dir = \"/a\"\n",
        );
        write(dir.path(), "crius.d/ignored.txt", "garbage");
        let o = Overrides {
            root: Some("/flag".into()),
            ..Default::default()
        };
        let c = Config::load(&main, true, &o).unwrap();
        assert_eq!(c.network.conf_dir, PathBuf::from("/b"));
        assert_eq!(c.network.plugin_dirs, NetworkConfig::default().plugin_dirs);
        assert_eq!(c.root, PathBuf::from("/flag"));
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "crius.toml", "");
        let bad = write(
            dir.path(),
            "crius.d/50-x.toml",
            "[network]\nconfdir = \"/x\"\n",
        );
        let err = Config::load(&main, true, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("confdir"), "{err}");
        assert!(err.contains(&bad.display().to_string()), "{err}");
    }

    #[test]
    fn relative_paths_and_bad_levels_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "crius.toml", "runroot = \"run\"\n");
        let err = Config::load(&main, true, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("runroot"), "{err}");
        let main = write(dir.path(), "crius.toml", "log_level = \"=[\"\n");
        assert!(Config::load(&main, true, &Overrides::default()).is_err());
    }

    #[test]
    fn streaming_limits_must_be_positive_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        for (text, key) in [
            ("header_read_timeout = 0", "streaming.header_read_timeout"),
            ("idle_timeout = 0", "streaming.idle_timeout"),
            ("idle_timeout = 99999999999", "streaming.idle_timeout"),
            ("max_connections = 0", "streaming.max_connections"),
            ("max_connections = 99999999999", "streaming.max_connections"),
        ] {
            let main = write(dir.path(), "crius.toml", &format!("[streaming]\n{text}\n"));
            let err = Config::load(&main, true, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let main = write(
            dir.path(),
            "crius.toml",
            "[streaming]\nheader_read_timeout = 1\nidle_timeout = 2\nmax_connections = 3\n",
        );
        let c = Config::load(&main, true, &Overrides::default()).unwrap();
        assert_eq!(
            (
                c.streaming.header_read_timeout,
                c.streaming.idle_timeout,
                c.streaming.max_connections
            ),
            (1, 2, 3)
        );
    }

    #[test]
    fn capabilities_and_pids_limit_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        for (text, key) in [
            (
                "default_capabilities = [\"FLY\"]",
                "runtime.default_capabilities",
            ),
            ("pids_limit = 99999999", "runtime.pids_limit"),
        ] {
            let main = write(dir.path(), "crius.toml", &format!("[runtime]\n{text}\n"));
            let err = Config::load(&main, true, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let main = write(
            dir.path(),
            "crius.toml",
            "[runtime]\ndefault_capabilities = [\"cap_chown\", \"KILL\"]\npids_limit = 0\n",
        );
        let c = Config::load(&main, true, &Overrides::default()).unwrap();
        assert_eq!(c.runtime.default_capabilities, vec!["cap_chown", "KILL"]);
        assert_eq!(c.runtime.pids_limit, 0);
        assert_eq!(Config::default().runtime.default_capabilities.len(), 14);
        assert_eq!(Config::default().runtime.pids_limit, 4096);
    }

    #[test]
    fn render_round_trips_every_field() {
        let c = Config {
            root: "/r".into(),
            runroot: "/rr".into(),
            listen: "/rr/s.sock".into(),
            log_level: "debug".into(),
            log_format: LogFormat::Json,
            network: NetworkConfig {
                conf_dir: "/n".into(),
                plugin_dirs: vec!["/p1".into(), "/p 2".into()],
                plugin_timeout: 9,
            },
            image: ImageConfig {
                registries_conf: "/reg.conf".into(),
                auth_file: Some("/auth.json".into()),
                pause_image: "example.com/pause:1".into(),
                max_concurrent_downloads: 7,
                pull_stall_timeout: 5,
            },
            streaming: StreamingConfig {
                address: "::1".parse().unwrap(),
                port: 10010,
                tls_cert: Some("/etc/crius/stream.crt".into()),
                tls_key: Some("/etc/crius/stream.key".into()),
                header_read_timeout: 3,
                idle_timeout: 600,
                max_connections: 17,
            },
            runtime: RuntimeConfig {
                cgroup_driver: CgroupDriver::Systemd,
                log_dir: "/logs".into(),
                cgroup_favor_dynmods: true,
                restrict_oom_score_adj: true,
                seccomp_use_default_when_empty: false,
                apparmor_default_profile: "my-default".into(),
                default_capabilities: vec!["CAP_CHOWN".into(), "kill".into()],
                pids_limit: 0,
                container_events_buffer: 9,
                handlers: BTreeMap::from([
                    ("fast".to_string(), HandlerConfig::default()),
                    ("a-b".to_string(), HandlerConfig::default()),
                ]),
            },
            metrics: MetricsConfig {
                address: Some("127.0.0.1:9090".parse().unwrap()),
                stats_interval: 2,
            },
            policy: PolicyConfig {
                refuse_privileged: true,
                refuse_host_namespaces: true,
                refuse_sensitive_host_paths: true,
                exempt_namespaces: vec!["kube-system".into(), "infra".into()],
            },
        };
        let text = c.render();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), c, "{text}");
        let d = Config::default();
        assert_eq!(toml::from_str::<Config>(&d.render()).unwrap(), d);
    }
}
