//! The operator subcommands and configuration errors, through the real binary.

mod common;

use std::process::{Command, Output};

use common::CRIUS;

fn crius(args: &[&str]) -> Output {
    Command::new(CRIUS)
        .args(args)
        .env_remove("CRIUS_CONFIG")
        .output()
        .expect("run crius")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn unknown_config_key_fails_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("crius.toml");
    std::fs::write(&cfg, "[runtime]\ncgroup_drivr = \"systemd\"\n").unwrap();
    let out = crius(&[
        "--config",
        cfg.to_str().unwrap(),
        "--root",
        "/nonexistent/x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("cgroup_drivr"), "{err}");
    assert!(err.contains(cfg.to_str().unwrap()), "{err}");
}

#[test]
fn bad_drop_in_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("crius.toml");
    std::fs::write(&cfg, "").unwrap();
    std::fs::create_dir(dir.path().join("crius.d")).unwrap();
    let drop_in = dir.path().join("crius.d/10-port.toml");
    std::fs::write(&drop_in, "[streaming]\nport = \"high\"\n").unwrap();
    let out = crius(&["--config", cfg.to_str().unwrap(), "config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains(drop_in.to_str().unwrap()));
}

#[test]
fn explicit_missing_config_is_an_error() {
    let out = crius(&["--config", "/nonexistent/crius.toml", "config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/crius.toml"));
}

#[test]
fn config_output_is_a_config_that_loads_to_the_same_values() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("crius.toml");
    std::fs::write(&cfg, "[runtime]\ncgroup_driver = \"systemd\"\n").unwrap();
    let first = crius(&[
        "--config",
        cfg.to_str().unwrap(),
        "--root",
        "/srv/crius",
        "config",
    ]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let rendered = text(&first.stdout);
    assert!(
        rendered.contains("cgroup_driver = \"systemd\""),
        "{rendered}"
    );
    assert!(rendered.contains("root = \"/srv/crius\""), "{rendered}");
    assert!(rendered.lines().any(|l| l.starts_with("# ")), "commented");
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &rendered).unwrap();
    let second = crius(&["--config", again.to_str().unwrap(), "config"]);
    assert_eq!(text(&second.stdout), rendered);
}

#[test]
fn runtime_handlers_render_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("crius.toml");
    std::fs::write(
        &cfg,
        "[runtime.handlers.fast]\n[runtime.handlers.kata-like]\nruntime_type = \"embedded\"\n\
         [runtime.handlers.runc]\nruntime_type = \"oci\"\nruntime_path = \"/bin/sh\"\n",
    )
    .unwrap();
    let out = crius(&["--config", cfg.to_str().unwrap(), "config"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rendered = text(&out.stdout);
    for h in ["fast", "kata-like", "runc"] {
        assert!(
            rendered.contains(&format!("[runtime.handlers.{h}]\n")),
            "{rendered}"
        );
    }
    assert!(
        rendered.contains("runtime_type = \"embedded\""),
        "{rendered}"
    );
    assert!(
        rendered.contains(
            "runtime_type = \"oci\"\n\n# oci: the runtime binary.\nruntime_path = \"/bin/sh\""
        ),
        "{rendered}"
    );
    // What it renders loads back to the same.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &rendered).unwrap();
    let second = crius(&["--config", again.to_str().unwrap(), "config"]);
    assert_eq!(text(&second.stdout), rendered);
    // A name a RuntimeClass cannot carry, an unknown type, an unknown key.
    for (toml, needle) in [
        ("[runtime.handlers.Fast_1]\n", "Fast_1"),
        ("[runtime.handlers.\"\"]\n", "DNS label"),
        ("[runtime.handlers.x]\nruntime_type = \"runc\"\n", "runc"),
        (
            "[runtime.handlers.x]\nruntime_path = \"/usr/sbin/runc\"\n",
            "runtime_path",
        ),
        // An external OCI runtime needs a binary that can run.
        (
            "[runtime.handlers.x]\nruntime_type = \"oci\"\n",
            "needs runtime_path",
        ),
        (
            "[runtime.handlers.x]\nruntime_type = \"oci\"\nruntime_path = \"/no/such/runc\"\n",
            "/no/such/runc",
        ),
        (
            "[runtime.handlers.x]\nruntime_type = \"oci\"\nruntime_path = \"/etc\"\n",
            "not an executable file",
        ),
        (
            "[runtime.handlers.x]\nruntime_type = \"oci\"\nruntime_path = \"runc\"\n",
            "must be absolute",
        ),
    ] {
        std::fs::write(&cfg, toml).unwrap();
        let out = crius(&["--config", cfg.to_str().unwrap(), "config"]);
        assert_eq!(out.status.code(), Some(2), "{toml}");
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{toml}: {err}");
    }
}

#[test]
fn version_subcommand() {
    let out = crius(&["version"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(
        s.contains(&format!("crius {}", env!("CARGO_PKG_VERSION"))),
        "{s}"
    );
    assert!(s.contains("CRI API v1"), "{s}");
}

#[test]
fn check_reports_every_area() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("crius.toml");
    std::fs::write(
        &cfg,
        format!("[network]\nconf_dir = \"{}\"\n", dir.path().display()),
    )
    .unwrap();
    let out = crius(&["--config", cfg.to_str().unwrap(), "check"]);
    let report = text(&out.stdout);
    for item in [
        "kernel",
        "cgroups",
        "namespaces",
        "overlayfs",
        "seccomp",
        "apparmor",
        "selinux",
        "cni config",
        "mount propagation",
        "oom_score_adj",
    ] {
        assert!(report.contains(item), "{item} missing from:\n{report}");
    }
    // This host (and CI) can run crius: root, cgroups, overlayfs present.
    assert!(out.status.success(), "{report}");
    // The empty conf dir is reported, not fatal.
    assert!(report.contains("[warn] cni config"), "{report}");
    // Which cgroup layout ran is part of the test output.
    let cg = report.lines().find(|l| l.contains("cgroups")).unwrap();
    println!("cgroup layout on this host: {cg}");
}

/// `(section, key)` of every `key = value` line (commented out or not) in a
/// TOML text, sections by their `[name]` headers.
fn toml_keys(text: &str) -> std::collections::BTreeSet<(String, String)> {
    let mut section = String::new();
    let mut keys = std::collections::BTreeSet::new();
    for line in text.lines() {
        let line = line.trim_start_matches('#').trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            if !name.starts_with('[') && !name.contains('"') && !name.contains(' ') {
                section = name.to_string();
            }
            continue;
        }
        if let Some((key, _)) = line.split_once(" = ")
            && !key.is_empty()
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            keys.insert((section.clone(), key.to_string()));
        }
    }
    keys
}

#[test]
fn readme_documents_every_config_key() {
    let out = crius(&["config"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let effective = toml_keys(&text(&out.stdout));
    assert!(effective.len() > 10, "{effective:?}");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let reference = readme
        .split("## Configuration reference")
        .nth(1)
        .and_then(|s| s.split("```toml").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("README's configuration reference has a toml block");
    let documented = toml_keys(reference);
    let missing: Vec<_> = effective.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "config keys missing from README's configuration reference: {missing:?}"
    );
}

#[tokio::test]
async fn inspect_isolation_reports_a_running_container() {
    use common::pod::env;
    use k8s_cri::v1::*;
    let mut e = env("inspect").await;
    let mut cfg = e.config("inspect", "sleep 1000");
    cfg.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = e.run_config(cfg).await;
    fn inspect_on(d: &common::Daemon, args: &[&str]) -> (Option<i32>, String, String) {
        let out = d
            .command()
            .args(["inspect", "isolation"])
            .args(args)
            .output()
            .expect("run crius inspect");
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    }
    let inspect = |args: &[&str]| inspect_on(&e.d, args);
    // Text for people, from a prefix as `crictl ps` shows ids.
    let (code, out, err) = inspect(&[&id[..13]]);
    println!("{out}{err}");
    assert_eq!(code, Some(0), "{err}");
    for want in [
        "namespaces",
        "net",
        "cap effective",
        "CAP_CHOWN",
        "seccomp",
        "masked",
    ] {
        assert!(out.contains(want), "{want} in {out}");
    }
    // JSON for tools, checked against what the host says.
    let (code, out, err) = inspect(&[&id, "-o", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let pid = r["pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("sleep"), "the container's init: {status}");
    let ns = |kind: &str| {
        r["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["kind"] == kind)
            .unwrap()
            .clone()
    };
    let link = |p: &str, k: &str| {
        std::fs::read_link(format!("/proc/{p}/ns/{k}"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    // A host-network pod: the container is in the host's network
    // namespace, its own mount and PID namespaces, the pod's IPC and UTS.
    assert_eq!(ns("net")["container"], link("self", "net"));
    assert_eq!(ns("net")["host"], link("self", "net"));
    assert_eq!(ns("mnt")["container"], link(&pid.to_string(), "mnt"));
    assert_ne!(ns("mnt")["container"], ns("mnt")["host"]);
    assert_ne!(ns("pid")["container"], ns("pid")["host"]);
    if !r["pod_pid"].is_null() {
        assert_eq!(ns("ipc")["container"], ns("ipc")["pod"]);
    }
    assert_eq!(r["uid_map"][0], "0 0 4294967295");
    let eff: Vec<&str> = r["capabilities"]["effective"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(eff.len(), 14, "Docker's default set: {eff:?}");
    assert!(eff.contains(&"CAP_NET_BIND_SERVICE") && !eff.contains(&"CAP_SYS_ADMIN"));
    assert_eq!(r["capabilities"]["ambient"], serde_json::json!([]));
    assert_eq!(r["seccomp"], "filter", "RuntimeDefault");
    assert!(r["seccomp_filters"].as_u64().unwrap_or(1) >= 1);
    assert_eq!(r["no_new_privs"], false);
    assert_eq!(r["cgroup"]["memory_max"], (64u64 << 20).to_string());
    assert_eq!(r["cgroup"]["pids_max"], "4096");
    assert!(
        r["cgroup"]["path"].as_str().unwrap().contains(&id[..12]),
        "{r}"
    );
    let masked = r["mounts"]["masked"].to_string();
    assert!(masked.contains("/proc/keys"), "{masked}");
    let ro = r["mounts"]["read_only"].to_string();
    assert!(ro.contains("/proc/sys") && ro.contains("/sys"), "{ro}");
    println!("root propagation {}", r["mounts"]["root_propagation"]);
    // Clear failures.
    let (code, _, err) = inspect(&["0123456789ab"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no container"), "{err}");
    e.stop(&id, 0).await;
    let (code, _, err) = inspect_on(&e.d, &[&id]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not running"), "{err}");
}
