//! SELinux labels end to end, read where a user reads them: a container's
//! `selinux_options` become its process label, seen inside
//! (`/proc/1/attr/current`, `/proc/self/attr/current` of an exec) and by
//! the host (`/proc/<pid>/attr/current`); a label the loaded policy does
//! not know fails the container with a message naming it.
//!
//! Needs a node running SELinux (`/sys/fs/selinux`): the VM lane boots
//! one (`hack/vm/lane.sh --lsm selinux`, permissive) and sets
//! `CRIUS_TEST_REQUIRE_SELINUX=1`, which makes a node without it a
//! failure. Elsewhere the test checks that the options are ignored and
//! says that the labelled cases did not run.

mod common;

use std::path::Path;

use common::pod::*;
use k8s_cri::v1::*;
use tonic::Code;

/// A label in Debian's (refpolicy's) `container` module, with categories.
const LABEL: &str = "system_u:system_r:container_t:s0:c1,c2";

fn selinux_host() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

fn with_options(e: &Env, name: &str, script: &str, o: Option<SeLinuxOption>) -> ContainerConfig {
    let mut cfg = e.config(name, script);
    cfg.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            selinux_options: o,
            ..Default::default()
        }),
        ..Default::default()
    });
    cfg
}

fn options(user: &str, role: &str, ty: &str, level: &str) -> Option<SeLinuxOption> {
    Some(SeLinuxOption {
        user: user.into(),
        role: role.into(),
        r#type: ty.into(),
        level: level.into(),
    })
}

fn clean(s: &str) -> String {
    s.trim_end_matches(['\0', '\n']).to_string()
}

/// `/proc/<pid>/attr/current` as the host reads it ("" where no LSM
/// answers).
fn host_label(pid: &str) -> String {
    clean(&std::fs::read_to_string(format!("/proc/{pid}/attr/current")).unwrap_or_default())
}

/// The container init's label from the host, through its pid file.
fn init_label(e: &Env, id: &str) -> String {
    let pid = std::fs::read_to_string(e.d.paths.runroot.join("containers").join(id).join("pid"))
        .expect("container pid file");
    host_label(pid.trim())
}

/// The label of the init (`/proc/1`, its own PID namespace) and of an
/// exec, as the container reads them.
async fn labels_inside(e: &mut Env, id: &str) -> (String, String) {
    let (out, _) = e
        .sh(
            id,
            "printf '%s|%s' \"$(cat /proc/1/attr/current 2>/dev/null)\" \
             \"$(cat /proc/self/attr/current 2>/dev/null)\"",
        )
        .await;
    let (init, exec) = out.split_once('|').unwrap_or((&out, ""));
    (clean(init), clean(exec))
}

#[tokio::test]
async fn selinux_labels_where_the_host_enforces() {
    let mut e = env("selinux").await;
    let daemon = host_label(&e.d.pid().to_string());
    if !selinux_host() {
        assert!(
            std::env::var("CRIUS_TEST_REQUIRE_SELINUX").as_deref() != Ok("1"),
            "CRIUS_TEST_REQUIRE_SELINUX=1 but this node runs no SELinux (no /sys/fs/selinux/enforce)"
        );
        println!(
            "SELinux is NOT enabled on this host (no /sys/fs/selinux/enforce): the labelled \
             cases did NOT run (hack/vm/lane.sh --lsm selinux runs them); checking only that \
             selinux_options are ignored"
        );
        let id = e
            .run_config(with_options(
                &e,
                "ignored",
                "sleep 1000",
                options("", "", "", LABEL),
            ))
            .await;
        assert_eq!(init_label(&e, &id), daemon, "no label applied");
        return;
    }
    let enforce = std::fs::read_to_string("/sys/fs/selinux/enforce").unwrap_or_default();
    println!(
        "SELinux is enabled on this host (enforce={}), crius runs as {daemon:?}",
        enforce.trim()
    );

    // The full label: the init (inside and from the host) and an exec.
    let (user, role, ty, level) = ("system_u", "system_r", "container_t", "s0:c1,c2");
    let id = e
        .run_config(with_options(
            &e,
            "labelled",
            "sleep 1000",
            options(user, role, ty, level),
        ))
        .await;
    let host = init_label(&e, &id);
    let (init, exec) = labels_inside(&mut e, &id).await;
    println!("labelled: host sees {host:?}, inside init {init:?}, exec {exec:?}");
    assert_eq!(host, LABEL, "the host's view of the init");
    assert_eq!(init, LABEL, "the init, read inside");
    assert_eq!(exec, LABEL, "an exec runs under the container's label");

    // Only a level: the rest from container defaults.
    let id = e
        .run_config(with_options(
            &e,
            "level-only",
            "sleep 1000",
            options("", "", "", "s0:c3,c4"),
        ))
        .await;
    let host = init_label(&e, &id);
    println!("level only: host sees {host:?}");
    assert_eq!(host, "system_u:system_r:container_t:s0:c3,c4");

    // No options: crius sets no label, so the container keeps the
    // runtime's context (cri-o would use the node's container type).
    let id = e
        .run_config(with_options(&e, "unlabelled", "sleep 1000", None))
        .await;
    let host = init_label(&e, &id);
    let (_, exec) = labels_inside(&mut e, &id).await;
    println!("no options: host sees {host:?}, exec {exec:?}");
    assert_eq!(host, daemon, "no options: the runtime's own context");

    // A type the policy does not know: the container does not run, and
    // the error names the label.
    let cfg = with_options(
        &e,
        "unknown-type",
        "sleep 1000",
        options(user, role, "crius_no_such_t", level),
    );
    let bad = "system_u:system_r:crius_no_such_t:s0:c1,c2";
    // The label is written (the kernel checks it) when the init is set up,
    // before it waits for StartContainer: the create fails.
    let err = e
        .create(cfg)
        .await
        .expect_err("a label the policy does not know fails the create");
    println!(
        "unknown type, CreateContainer: {:?} {}",
        err.code(),
        err.message()
    );
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(&format!(
            "SELinux label {bad:?} is not valid in the loaded policy"
        )),
        "the error names the label: {}",
        err.message()
    );
}
