//! User namespaces (CRI `UserNamespace`), read where a user would read
//! them: `/proc/self/uid_map` and `gid_map` and `id` inside the container,
//! the process's ids and the files it makes as the host sees them, the
//! mounts left after removal; and the requests RunPodSandbox and
//! CreateContainer refuse.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::net::Net;
use common::pod::host_pod;
use common::*;
use k8s_cri::v1::*;
use tonic::Code;

fn mapping(container_id: u32, host_id: u32, length: u32) -> IdMapping {
    IdMapping {
        container_id,
        host_id,
        length,
    }
}

fn pod_userns(uids: Vec<IdMapping>, gids: Vec<IdMapping>) -> UserNamespace {
    UserNamespace {
        mode: NamespaceMode::Pod as i32,
        uids,
        gids,
    }
}

/// A pod config (pod network unless `host_net`) with `userns`, logging
/// under `logs`.
fn userns_pod(
    name: &str,
    logs: &std::path::Path,
    userns: UserNamespace,
    host_net: bool,
) -> PodSandboxConfig {
    let mut p = host_pod(name, logs, NamespaceMode::Pod);
    let ns = p
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
        .expect("namespace options");
    if !host_net {
        ns.network = NamespaceMode::Pod as i32;
    }
    ns.userns_options = Some(userns);
    p
}

/// A busybox container running `script`, with the pod's user namespace
/// options (as kubelet and critest send them).
fn userns_container(
    image: &str,
    name: &str,
    script: &str,
    userns: &UserNamespace,
) -> ContainerConfig {
    let mut c = container_config(name, image, &["/bin/sh", "-c", script]);
    c.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: Some(NamespaceOption {
                pid: NamespaceMode::Pod as i32,
                userns_options: Some(userns.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

/// Whitespace-separated fields of each line.
fn fields(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .filter(|v: &Vec<String>| !v.is_empty())
        .collect()
}

async fn run(rt: &mut Runtime, pod: &str, cfg: ContainerConfig) -> String {
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(cfg),
            sandbox_config: None,
        })
        .await
        .expect("create")
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("start");
    id
}

async fn exec(rt: &mut Runtime, id: &str, script: &str) -> String {
    let r = rt
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout: 10,
        })
        .await
        .expect("exec")
        .into_inner();
    assert_eq!(r.exit_code, 0, "{script}: {r:?}");
    String::from_utf8_lossy(&r.stdout).trim().to_string()
}

/// Mount points under `dir` in this (the host's) mount namespace.
fn mounts_with(dir: &std::path::Path, part: &str) -> Vec<std::path::PathBuf> {
    mounts_under(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(part))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_user_namespace_maps_ids_end_to_end() {
    let net = Net::new(41);
    let mut d = Daemon::builder()
        .registries(&common::testenv::testenv().registries_conf())
        .start();
    d.install_cni_config("10-userns.conflist", &net.conflist());
    let image = pull_busybox_at(&d.paths.socket)
        .await
        .expect("pull busybox");
    let mut rt = d.runtime().await;
    let status = rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let default = status
        .runtime_handlers
        .iter()
        .find(|h| h.name.is_empty())
        .and_then(|h| h.features)
        .expect("default handler");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(
        default.user_namespaces,
        "kernel {} idmaps overlay layers: {}",
        release.trim(),
        d.logs()
    );

    let logs = d.paths.base.join("logs");
    let userns = pod_userns(
        vec![mapping(0, 1000, 100_000)],
        vec![mapping(0, 2000, 65536)],
    );
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(userns_pod("userns", &logs, userns.clone(), false)),
            ..Default::default()
        })
        .await
        .expect("run pod")
        .into_inner()
        .pod_sandbox_id;
    let script = "cat /proc/self/uid_map /proc/self/gid_map; echo id=$(id -u):$(id -g); \
                  echo made > /made-here; stat -c owner=%u:%g /bin/busybox; \
                  ls /sys/class/net >/dev/null && echo sysfs=ok; echo done; sleep 1000";
    let id = run(
        &mut rt,
        &pod,
        userns_container(&image, "c", script, &userns),
    )
    .await;
    let log = wait_for("the container's output", Duration::from_secs(20), || {
        let p = logs.join("c.log");
        async move {
            std::fs::read_to_string(&p)
                .ok()
                .filter(|l| l.contains("done"))
        }
    })
    .await;
    // CRI log lines: time, stream, tag, then the text.
    let text: String = log
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .map(|l| format!("{l}\n"))
        .collect();
    println!("{text}");
    let f = fields(&text);
    assert_eq!(f[0], ["0", "1000", "100000"], "uid_map: {text}");
    assert_eq!(f[1], ["0", "2000", "65536"], "gid_map: {text}");
    assert!(text.contains("id=0:0"), "root inside: {text}");
    // The image's files (root's on the host) are root's inside too: the
    // layers are idmapped, not shown as the overflow id.
    assert!(text.contains("owner=0:0"), "idmapped layers: {text}");
    assert!(text.contains("sysfs=ok"), "{text}");

    // The host's view: the process runs as host ids 1000 / 2000.
    let pid: u32 = read_trimmed(&d.paths.runroot.join("containers").join(&id).join("pid"))
        .parse()
        .expect("pid");
    let st = status_fields(&std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap());
    assert_eq!(st["Uid"].split_whitespace().next(), Some("1000"), "{st:?}");
    assert_eq!(st["Gid"].split_whitespace().next(), Some("2000"), "{st:?}");
    // What it wrote is owned by its mapped ids in its writable layer.
    let made = d
        .paths
        .root
        .join("containers")
        .join(&id)
        .join("upper/made-here");
    let m = std::fs::metadata(&made).expect("file in the upper dir");
    assert_eq!((m.uid(), m.gid()), (1000, 2000), "{}", made.display());

    // An exec joins the same user namespace.
    assert_eq!(
        exec(&mut rt, &id, "id -u; cat /proc/self/uid_map")
            .await
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "0", "1000", "100000"]
    );

    // A crash of the daemon leaves the mounts to the container; after a
    // restart, removal still takes them all.
    let rootfs = d.paths.root.join("containers").join(&id);
    assert!(
        !mounts_with(&rootfs, "/m/").is_empty(),
        "idmapped layers mounted"
    );
    d.kill9();
    d.restart();
    let mut rt = d.runtime().await;
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("stop pod");
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("remove pod");
    assert_eq!(mounts_under(&rootfs), Vec::<std::path::PathBuf>::new());
    assert!(!rootfs.exists(), "the writable layer is gone");
    let left = mounts_with(&d.paths.runroot, &pod);
    assert!(left.is_empty(), "pod mounts left: {left:?}");
    // The image's layers are whole.
    assert!(
        std::fs::read_dir(d.paths.root.join("layers"))
            .unwrap()
            .flatten()
            .any(|l| l.path().join("bin/busybox").exists()),
        "busybox layer intact"
    );
    drop(net);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_mode_is_the_hosts_user_namespace() {
    let mut e = common::pod::env("userns-node").await;
    let logs = e.logs.clone();
    let node = UserNamespace {
        mode: NamespaceMode::Node as i32,
        ..Default::default()
    };
    let pod =
        e.rt.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(userns_pod("node", &logs, node.clone(), true)),
            ..Default::default()
        })
        .await
        .expect("run pod")
        .into_inner()
        .pod_sandbox_id;
    let id = run(
        &mut e.rt,
        &pod,
        userns_container(&e.image, "n", "cat /proc/self/uid_map; sleep 1000", &node),
    )
    .await;
    let inside = exec(&mut e.rt, &id, "cat /proc/self/uid_map").await;
    let host = std::fs::read_to_string("/proc/self/uid_map").unwrap();
    assert_eq!(fields(&inside), fields(&host));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_user_namespace_requests_are_refused() {
    let mut e = common::pod::env("userns-bad").await;
    let logs = e.logs.clone();
    let one = || vec![mapping(0, 1000, 100_000)];
    let cases = [
        (
            "two mappings",
            pod_userns(
                vec![mapping(0, 1000, 100_000), mapping(0, 2000, 100_000)],
                one(),
            ),
        ),
        (
            "container id 0 not mapped",
            pod_userns(vec![mapping(1, 1000, 100_000)], one()),
        ),
        ("no gid mapping", pod_userns(one(), vec![])),
        ("length 0", pod_userns(one(), vec![mapping(0, 1000, 0)])),
        (
            "overflow",
            pod_userns(vec![mapping(0, u32::MAX - 10, 100)], one()),
        ),
        (
            "mode CONTAINER",
            UserNamespace {
                mode: NamespaceMode::Container as i32,
                ..Default::default()
            },
        ),
        (
            "mode TARGET",
            UserNamespace {
                mode: NamespaceMode::Target as i32,
                ..Default::default()
            },
        ),
    ];
    for (what, userns) in cases {
        let r =
            e.rt.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(userns_pod("bad", &logs, userns, true)),
                ..Default::default()
            })
            .await;
        let err = r.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        println!("{what}: {}", err.message());
    }
    assert_eq!(
        all_pods(&mut e.rt).await.len(),
        1,
        "no refused pod was made"
    );

    // A container asking for another user namespace than its pod's.
    let theirs = pod_userns(one(), one());
    let cfg = userns_container(&e.image, "other", "true", &theirs);
    let err = e
        .create(cfg)
        .await
        .expect_err("a userns the pod does not have");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

/// A CRI mount of `host` at `at`; with `maps`, idmapped with them (as
/// kubelet sends every volume of a pod with a user namespace).
fn volume(at: &str, host: &std::path::Path, maps: Option<&UserNamespace>) -> Mount {
    Mount {
        container_path: at.into(),
        host_path: host.display().to_string(),
        uid_mappings: maps.map(|u| u.uids.clone()).unwrap_or_default(),
        gid_mappings: maps.map(|u| u.gids.clone()).unwrap_or_default(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idmapped_volumes_show_host_root_as_the_pods_root() {
    use std::os::unix::fs::PermissionsExt;
    let mut e = common::pod::env("userns-vol").await;
    let logs = e.logs.clone();
    // A volume as kubelet makes them: host root's files and a directory
    // only its owner may write.
    let vol = e.d.paths.base.join("vol");
    std::fs::create_dir_all(vol.join("w")).unwrap();
    std::fs::write(vol.join("f"), "hi\n").unwrap();
    for p in [&vol, &vol.join("w")] {
        std::os::unix::fs::chown(p, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // As kubelet's nodes have it: the volume is on a shared mount, so a
    // HOST_TO_CONTAINER volume sees what the host mounts in it later.
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    mount(
        Some(&vol),
        &vol,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .unwrap();
    mount(
        None::<&str>,
        &vol,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
    .unwrap();
    let userns = pod_userns(
        vec![mapping(0, 400_000, 65536)],
        vec![mapping(0, 500_000, 65536)],
    );
    let pod =
        e.rt.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(userns_pod("vol", &logs, userns.clone(), true)),
            ..Default::default()
        })
        .await
        .expect("run pod")
        .into_inner()
        .pod_sandbox_id;

    // With its own PID namespace (set up in the visible process) and in
    // the pod's: both paths of the executor make the idmapped bind.
    for pid in [NamespaceMode::Pod, NamespaceMode::Container] {
        let mut cfg =
            userns_container(&e.image, &format!("v{}", pid as i32), "sleep 1000", &userns);
        if let Some(ns) = cfg
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
        {
            ns.pid = pid as i32;
        }
        cfg.mounts = vec![
            volume("/vol", &vol, Some(&userns)),
            volume("/plain", &vol, None),
            Mount {
                readonly: true,
                ..volume("/ro", &vol, Some(&userns))
            },
            Mount {
                propagation: MountPropagation::PropagationHostToContainer as i32,
                ..volume("/hv", &vol, Some(&userns))
            },
            // An image volume: kubelet sends the pod's mappings on it too.
            Mount {
                readonly: true,
                image: Some(ImageSpec {
                    image: e.image.clone(),
                    ..Default::default()
                }),
                host_path: String::new(),
                ..volume("/iv", &vol, Some(&userns))
            },
        ];
        let id = run(&mut e.rt, &pod, cfg).await;
        let name = format!("new-{}", pid as i32);
        let script = format!(
            "stat -c %u:%g /vol/f /vol/w /plain/f; cat /vol/f; \
             echo x > /vol/w/{name} && echo wrote; stat -c %u:%g /vol/w/{name}; \
             (echo y > /plain/w/plain-{name}) 2>/dev/null && echo plain=wrote || echo plain=denied; \
             (touch /ro/w/ro-{name}) 2>/dev/null && echo ro=wrote || echo ro=denied; \
             stat -c iv=%u:%g /iv/bin/busybox"
        );
        let out = exec(&mut e.rt, &id, &script).await;
        println!("{pid:?}:\n{out}");
        let lines: Vec<&str> = out.lines().collect();
        // Host root's files are the pod's root's through the idmapped
        // mount; through the plain bind they are unmapped (65534).
        assert_eq!(lines[..3], ["0:0", "0:0", "65534:65534"], "{out}");
        assert_eq!(lines[3], "hi", "{out}");
        // Container root (host 400000) may write host root's directory,
        // and what it makes is root's inside ...
        assert_eq!(lines[4..6], ["wrote", "0:0"], "{out}");
        // ... and on the host: the idmapped mount maps the pod's ids back
        // through the pod's own mapping, so the disk holds host root's.
        let made = std::fs::metadata(vol.join("w").join(&name)).expect("written through /vol");
        assert_eq!((made.uid(), made.gid()), (0, 0));
        // The plain bind leaves host root's directory closed to it; the
        // read-only idmapped mount stays read-only.
        assert_eq!(lines[6..8], ["plain=denied", "ro=denied"], "{out}");
        // The image volume's layers are idmapped (an overlay mount cannot
        // be): the image's root files are the pod's root's.
        assert_eq!(lines[8..], ["iv=0:0"], "{out}");
        assert!(!vol.join("w").join(format!("plain-{name}")).exists());
        assert!(!vol.join("w").join(format!("ro-{name}")).exists());
        // A mount the host makes in the volume afterwards reaches the
        // idmapped HOST_TO_CONTAINER one (not idmapped itself: a new mount).
        let later = vol.join(format!("later-{name}"));
        std::fs::create_dir_all(&later).unwrap();
        mount(
            Some("tmpfs"),
            &later,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        std::fs::write(later.join("marker"), "host").unwrap();
        let seen = exec(
            &mut e.rt,
            &id,
            &format!("cat /hv/later-{name}/marker; ls /vol/later-{name}"),
        )
        .await;
        assert_eq!(seen, "host", "only /hv follows the host's mounts");
        umount2(&later, MntFlags::MNT_DETACH).unwrap();
    }

    // Mappings other than the pod's, or on a pod without a user
    // namespace, are refused, and a refused create leaves no container.
    let before = all_containers(&mut e.rt).await.len();
    let other = pod_userns(
        vec![mapping(0, 400_001, 65536)],
        vec![mapping(0, 500_000, 65536)],
    );
    let mut cfg = userns_container(&e.image, "other", "true", &userns);
    cfg.mounts = vec![volume("/vol", &vol, Some(&other))];
    let err =
        e.rt.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: None,
        })
        .await
        .expect_err("mappings other than the pod's");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("differ"), "{err:?}");
    let mut cfg = e.config("nouserns", "true");
    cfg.mounts = vec![volume("/vol", &vol, Some(&userns))];
    let err = e
        .create(cfg)
        .await
        .expect_err("a pod without a user namespace");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("no user namespace"), "{err:?}");
    let mut cfg = userns_container(&e.image, "half", "true", &userns);
    cfg.mounts = vec![Mount {
        gid_mappings: vec![],
        ..volume("/vol", &vol, Some(&userns))
    }];
    let err =
        e.rt.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: None,
        })
        .await
        .expect_err("uid mappings without gid mappings");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A filesystem that cannot be idmapped (sysfs): the create fails
    // naming the mount and why, and leaves nothing behind.
    let mut cfg = userns_container(&e.image, "sysfs", "true", &userns);
    cfg.mounts = vec![volume(
        "/sysvol",
        std::path::Path::new("/sys/kernel/mm"),
        Some(&userns),
    )];
    let err =
        e.rt.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: None,
        })
        .await
        .expect_err("sysfs cannot be idmapped");
    println!("sysfs: {}", err.message());
    assert!(
        err.message().contains("sysvol")
            && err.message().contains("/sys/kernel/mm")
            && err.message().contains("does not support idmapped mounts"),
        "{err:?}"
    );
    assert_eq!(all_containers(&mut e.rt).await.len(), before);

    // Removal takes every idmapped clone (volumes' are in the containers'
    // mount namespaces, image volume layers' in the host's).
    e.rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("stop pod");
    e.rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("remove pod");
    let containers = e.d.paths.root.join("containers");
    assert_eq!(mounts_under(&containers), Vec::<std::path::PathBuf>::new());
    umount2(&vol, MntFlags::MNT_DETACH).unwrap();
    assert!(vol.join("f").exists(), "the volume is the host's still");
}
