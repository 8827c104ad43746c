//! ImageService against real registries (Debian's docker-registry started by
//! hack/testenv) with images built by the project.

mod common;

use std::path::Path;
use std::time::Duration;

use common::testenv::{TestEnv, testenv};
use common::*;
use k8s_cri::v1::*;
use tonic::Code;

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

async fn pull(images: &mut Images, image: &str) -> Result<String, tonic::Status> {
    images
        .pull_image(PullImageRequest {
            image: spec(image),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn status(images: &mut Images, image: &str) -> Option<Image> {
    images
        .image_status(ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
}

async fn list(images: &mut Images) -> Vec<Image> {
    images
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images
}

async fn remove(images: &mut Images, image: &str) {
    images
        .remove_image(RemoveImageRequest { image: spec(image) })
        .await
        .unwrap();
}

/// ImageStatus's verbose `info` JSON.
async fn verbose_info(images: &mut Images, image: &str) -> serde_json::Value {
    let verbose = images
        .image_status(ImageStatusRequest {
            image: spec(image),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    serde_json::from_str(&verbose.info["info"]).unwrap()
}

fn daemon(env: &TestEnv) -> Daemon {
    Daemon::builder().registries(&env.registries_conf()).start()
}

/// Entries of a directory, or none if it does not exist.
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_list_status_by_every_name_and_remove() {
    let env = testenv();
    let d = daemon(env);
    let mut images = d.images().await;
    let reference = env.image("busybox:latest");
    let id = pull(&mut images, &reference).await.unwrap();
    assert_eq!(id, env.config_digest(&reference));

    let all = list(&mut images).await;
    assert_eq!(all.len(), 1);
    let img = &all[0];
    assert_eq!(img.repo_tags, vec![reference.clone()]);
    let repo_digest = format!("{}/crius/busybox@{}", env.registry, env.digest(&reference));
    assert_eq!(img.repo_digests, vec![repo_digest.clone()]);
    assert!(img.size > 500_000, "{img:?}");
    assert!(!img.pinned);

    // Every spelling kubelet and crictl use finds it.
    let short_id = &id["sha256:".len().."sha256:".len() + 12];
    for name in [id.as_str(), &id[7..], short_id, &reference, &repo_digest] {
        let got = status(&mut images, name).await;
        assert_eq!(got.map(|i| i.id), Some(id.clone()), "by {name}");
    }
    assert!(
        status(&mut images, &env.image("busybox:nope"))
            .await
            .is_none()
    );

    let info = verbose_info(&mut images, &reference).await;
    assert_eq!(info["imageSpec"]["config"]["Cmd"][0], "sh");

    // A second tag of the same image: one image, two tags; removing by one
    // tag removes the image with all its tags and frees its layers.
    pull(&mut images, &env.image("busybox:1.0")).await.unwrap();
    let all = list(&mut images).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].repo_tags.len(), 2);
    let filtered = images
        .list_images(ListImagesRequest {
            filter: Some(ImageFilter {
                image: spec(&env.image("busybox:1.0")),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);
    assert!(!entries(&d.paths.root.join("layers")).is_empty());

    remove(&mut images, &env.image("busybox:1.0")).await;
    assert!(list(&mut images).await.is_empty());
    assert!(status(&mut images, &id).await.is_none());
    remove(&mut images, &env.image("busybox:1.0")).await; // idempotent
    remove(&mut images, &id).await;
    assert!(entries(&d.paths.root.join("layers")).is_empty());
    assert!(entries(&d.paths.root.join("content/blobs/sha256")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_survive_a_daemon_crash() {
    let env = testenv();
    let mut d = daemon(env);
    let reference = env.image("busybox:latest");
    let id = pull(&mut d.images().await, &reference).await.unwrap();
    d.kill9();
    d.restart();
    let got = status(&mut d.images().await, &reference).await.unwrap();
    assert_eq!(got.id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_zstd_and_uncompressed_images_pull() {
    let env = testenv();
    let d = daemon(env);
    let mut images = d.images().await;
    for name in [
        "busybox-docker:latest",
        "zstd:latest",
        "uncompressed:latest",
    ] {
        let reference = env.image(name);
        let id = pull(&mut images, &reference)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(id, env.config_digest(&reference), "{name}");
    }
    // Same uncompressed content, so the same config: one image (its id is
    // the config digest), three names.
    let all = list(&mut images).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].repo_tags.len(), 3);
    assert_eq!(all[0].repo_digests.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_resolves_to_this_platform() {
    let env = testenv();
    let d = daemon(env);
    let mut images = d.images().await;
    let reference = env.image("multiarch:latest");
    pull(&mut images, &reference).await.unwrap();
    let img = status(&mut images, &reference).await.unwrap();
    // The repo digest is the index digest, as kubelet and crictl show it.
    assert!(
        img.repo_digests[0].ends_with(&env.digest(&reference)),
        "{img:?}"
    );
    let platform = find_file(&d.paths.root.join("layers"), "platform.txt").expect("platform.txt");
    assert_eq!(
        std::fs::read_to_string(platform).unwrap().trim(),
        "linux/amd64"
    );
}

fn find_file(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    for layer in std::fs::read_dir(dir).ok()?.flatten() {
        let p = layer.path().join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_through_a_mirror_in_registries_conf() {
    let env = testenv();
    let conf = format!(
        "{}\n[[registry]]\nprefix = \"registry.k8s.io\"\nlocation = \"registry.k8s.io\"\n\n\
         [[registry.mirror]]\nlocation = \"{}/crius\"\ninsecure = true\n",
        env.registries_conf(),
        env.registry
    );
    let d = Daemon::builder().registries(&conf).start();
    let mut images = d.images().await;
    let id = pull(&mut images, "registry.k8s.io/busybox:latest")
        .await
        .unwrap();
    assert_eq!(id, env.config_digest(&env.image("busybox:latest")));
    // Recorded under the name that was asked for.
    let img = status(&mut images, "registry.k8s.io/busybox:latest")
        .await
        .unwrap();
    assert_eq!(
        img.repo_tags,
        vec!["registry.k8s.io/busybox:latest".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_kubelet_understands() {
    let env = testenv();
    let conf = format!(
        "{}\n[[registry]]\nlocation = \"blocked.example\"\nblocked = true\n\n\
         [[registry]]\nlocation = \"127.0.0.1:1\"\ninsecure = true\n",
        env.registries_conf()
    );
    let d = Daemon::builder().registries(&conf).start();
    let mut images = d.images().await;

    let e = pull(&mut images, &env.image("no-such-repo:latest"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = pull(&mut images, &env.image("busybox:no-such-tag"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    for bad in ["UPPER/Case:x", "busybox:bad tag", "a@sha256:123", ""] {
        let e = pull(&mut images, bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
    }
    let e = pull(&mut images, "127.0.0.1:1/x/y:latest")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("RegistryUnavailable"), "{e:?}");
    let e = pull(&mut images, "blocked.example/x:latest")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("blocked"), "{e:?}");

    let e = images
        .image_status(ImageStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(list(&mut images).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_repository_needs_credentials() {
    let env = testenv();
    let d = daemon(env);
    let mut images = d.images().await;
    let reference = format!("{}/crius/private:latest", env.auth_registry);
    let e = pull(&mut images, &reference).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let wrong = images
        .pull_image(PullImageRequest {
            image: spec(&reference),
            auth: Some(AuthConfig {
                username: "crius".into(),
                password: "wrong".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    // `auth` is base64(user:pass), as kubelet sends from image pull secrets.
    use base64::Engine as _;
    let id = images
        .pull_image(PullImageRequest {
            image: spec(&reference),
            auth: Some(AuthConfig {
                auth: base64::engine::general_purpose::STANDARD.encode("crius:crius-test"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .image_ref;
    assert!(id.starts_with("sha256:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_file_provides_credentials() {
    let env = testenv();
    let dir = tempfile::tempdir().unwrap();
    let auth_file = dir.path().join("auth.json");
    use base64::Engine as _;
    std::fs::write(
        &auth_file,
        serde_json::json!({"auths": {env.auth_registry.clone(): {
            "auth": base64::engine::general_purpose::STANDARD.encode("crius:crius-test")
        }}})
        .to_string(),
    )
    .unwrap();
    let d = Daemon::builder()
        .registries(&env.registries_conf())
        .config(&format!("auth_file = \"{}\"", auth_file.display()))
        .start();
    let reference = format!("{}/crius/private:latest", env.auth_registry);
    pull(&mut d.images().await, &reference).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layers_are_rejected_and_the_host_is_untouched() {
    let env = testenv();
    let d = daemon(env);
    let mut images = d.images().await;
    let escapes = [
        "/tmp/crius-escape-traversal",
        "/tmp/crius-escape-abs",
        "/tmp/crius-escape-symlink",
        "/tmp/crius-escape-hardlink",
    ];
    for name in ["hostile-traversal", "hostile-symlink", "hostile-hardlink"] {
        let e = pull(&mut images, &env.image(&format!("{name}:latest")))
            .await
            .unwrap_err();
        assert!(e.message().contains("ostile"), "{name}: {e:?}");
        for p in escapes {
            assert!(!Path::new(p).exists(), "{name} wrote {p}");
        }
    }
    assert!(list(&mut images).await.is_empty());
    assert!(
        entries(&d.paths.root.join("layers")).is_empty(),
        "a failed unpack leaves nothing: {:?}",
        entries(&d.paths.root.join("layers"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whiteouts_and_opaque_dirs_merge_as_expected() {
    let env = testenv();
    let d = daemon(env);
    let mut images = d.images().await;
    let reference = env.image("layers:latest");
    pull(&mut images, &reference).await.unwrap();
    let info = verbose_info(&mut images, &reference).await;
    let layers: Vec<String> = info["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let chain = l["chain_id"].as_str().unwrap();
            d.paths
                .root
                .join("layers")
                .join(&chain["sha256:".len()..])
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(layers.len(), 3);
    // Mount the layers as a container rootfs would be and compare.
    let mnt = d.paths.base.join("merged");
    std::fs::create_dir(&mnt).unwrap();
    let lower: Vec<&str> = layers.iter().rev().map(String::as_str).collect();
    let status = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("lowerdir={}", lower.join(":")))
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(status.success(), "overlay mount");
    let expected = std::fs::read_to_string(mnt.join("expected.txt"));
    let actual = listing(&mnt);
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    let expected = expected.unwrap();
    let mut expected: Vec<&str> = expected.lines().filter(|l| !l.is_empty()).collect();
    let mut actual: Vec<&str> = actual.iter().map(String::as_str).collect();
    expected.sort_by_key(|l| path_of(l));
    actual.sort_by_key(|l| path_of(l));
    assert_eq!(actual, expected);
}

/// `type mode uid gid size-or-target path` for every path under `root`, sorted.
fn listing(root: &Path) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let rel = format!("/{}", p.strip_prefix(root).unwrap().display());
            if rel == "/expected.txt" {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let (kind, extra) = if ft.is_symlink() {
                ("l", std::fs::read_link(&p).unwrap().display().to_string())
            } else if ft.is_dir() {
                stack.push(p.clone());
                ("d", "-".to_string())
            } else if ft.is_fifo() {
                ("p", "-".to_string())
            } else {
                ("f", m.len().to_string())
            };
            out.push(format!(
                "{kind} {:04o} {} {} {extra} {rel}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ));
        }
    }
    out
}

/// The path field of a listing line (the sixth; paths may hold spaces).
fn path_of(line: &str) -> String {
    line.splitn(6, ' ').nth(5).unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pulls_share_one_transfer() {
    let env = testenv();
    let d = daemon(env);
    let reference = env.image("big:latest");
    let mut a = d.images().await;
    let mut b = d.images().await;
    let (ra, rb) = tokio::join!(pull(&mut a, &reference), pull(&mut b, &reference));
    assert_eq!(ra.unwrap(), rb.unwrap());
    let logs = d.logs();
    let downloads = logs
        .lines()
        .filter(|l| l.contains("layer downloaded"))
        .count();
    let layers = status(&mut a, &reference).await.unwrap();
    assert!(layers.size > 60_000_000, "{layers:?}");
    // Each layer crossed the network once.
    let manifest_layers = logs
        .lines()
        .filter(|l| l.contains("layer downloaded"))
        .map(|l| {
            l.split("digest=")
                .nth(1)
                .unwrap_or("")
                .split(' ')
                .next()
                .unwrap_or("")
        })
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert_eq!(downloads, manifest_layers, "{logs}");

    let fs = a
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let used = fs.image_filesystems[0].used_bytes.as_ref().unwrap().value;
    assert!(used > 2 * 60_000_000, "blobs and unpacked layers: {used}");
    assert!(fs.image_filesystems[0].inodes_used.as_ref().unwrap().value > 0);
    assert!(
        !fs.image_filesystems[0]
            .fs_id
            .as_ref()
            .unwrap()
            .mountpoint
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_registry_times_out() {
    // A "registry" that accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let d = Daemon::builder()
        .registries(&format!(
            "[[registry]]\nlocation = \"{addr}\"\ninsecure = true\n"
        ))
        .config("pull_stall_timeout = 2")
        .start();
    let started = std::time::Instant::now();
    let e = tokio::time::timeout(
        Duration::from_secs(60),
        pull(&mut d.images().await, &format!("{addr}/x/y:latest")),
    )
    .await
    .expect("pull must not hang")
    .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// A registry front that demands a bearer token from its own token endpoint
/// (as Docker Hub, ghcr.io and quay.io do) and forwards authorised requests
/// to the plain test registry. Returns its address and a request log.
async fn token_registry(
    upstream: String,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (me, seen) = (addr.clone(), log.clone());
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let (http, me, upstream, seen) =
                (http.clone(), me.clone(), upstream.clone(), seen.clone());
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r);
                let mut line = String::new();
                if r.read_line(&mut line).await.is_err() {
                    return;
                }
                let path = line.split(' ').nth(1).unwrap_or("/").to_string();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).await.unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    headers.push(h.trim_end().to_string());
                }
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|h| h.to_ascii_lowercase().starts_with(&format!("{name}:")))
                        .and_then(|h| h.split_once(':').map(|(_, v)| v.trim().to_string()))
                };
                let auth = header("authorization").unwrap_or_default();
                seen.lock().unwrap().push(format!("{path} {auth}"));
                let (status, ctype, extra, body): (&str, String, String, Vec<u8>) = if path
                    .starts_with("/token")
                {
                    let ok = path.contains("scope=repository%3Acrius%2Fbusybox%3Apull")
                        || path.contains("scope=repository:crius/busybox:pull");
                    if ok {
                        (
                            "200 OK",
                            "application/json".into(),
                            String::new(),
                            br#"{"token":"t0ken","expires_in":300}"#.to_vec(),
                        )
                    } else {
                        (
                            "403 Forbidden",
                            "text/plain".into(),
                            String::new(),
                            b"bad scope".to_vec(),
                        )
                    }
                } else if auth != "Bearer t0ken" {
                    let challenge = format!(
                        "WWW-Authenticate: Bearer realm=\"http://{me}/token\",service=\"test\",scope=\"repository:crius/busybox:pull\"\r\n"
                    );
                    (
                        "401 Unauthorized",
                        "application/json".into(),
                        challenge,
                        b"{}".to_vec(),
                    )
                } else {
                    let mut req = http.get(format!("http://{upstream}{path}"));
                    if let Some(a) = header("accept") {
                        req = req.header("accept", a);
                    }
                    let resp = req.send().await.unwrap();
                    let st = resp.status().as_u16();
                    let ct = resp
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let body = resp.bytes().await.unwrap().to_vec();
                    (
                        if st == 200 { "200 OK" } else { "404 Not Found" },
                        ct,
                        String::new(),
                        body,
                    )
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
                    body.len()
                );
                let _ = w.write_all(head.as_bytes()).await;
                let _ = w.write_all(&body).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_challenge_is_answered() {
    let env = testenv();
    let (addr, log) = token_registry(env.registry.clone()).await;
    let d = Daemon::builder()
        .registries(&format!(
            "[[registry]]\nlocation = \"{addr}\"\ninsecure = true\n"
        ))
        .start();
    let id = pull(
        &mut d.images().await,
        &format!("{addr}/crius/busybox:latest"),
    )
    .await
    .unwrap();
    assert_eq!(id, env.config_digest(&env.image("busybox:latest")));
    let log = log.lock().unwrap().clone();
    assert!(log.iter().any(|l| l.starts_with("/token")), "{log:?}");
    // The token is fetched once and reused for every blob.
    assert_eq!(
        log.iter().filter(|l| l.starts_with("/token")).count(),
        1,
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_infra_image_is_pinned() {
    let env = testenv();
    let reference = env.image("busybox:latest");
    let d = Daemon::builder()
        .registries(&env.registries_conf())
        .config(&format!("pause_image = \"{reference}\""))
        .start();
    let mut images = d.images().await;
    pull(&mut images, &reference).await.unwrap();
    assert!(status(&mut images, &reference).await.unwrap().pinned);
    pull(&mut images, &env.image("zstd:latest")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_cut_by_a_crash_resumes_and_leaves_nothing_behind() {
    let env = testenv();
    let mut d = daemon(env);
    let reference = env.image("big:latest");
    let ingest = d.paths.root.join("content/ingest");
    let mut images = d.images().await;
    let r = reference.clone();
    let pulling = tokio::spawn(async move { pull(&mut images, &r).await });
    // Crash as soon as some layer is part-way down.
    let partial = |dir: &Path| {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .any(|e| e.metadata().is_ok_and(|m| m.len() > 1 << 20))
            })
            .unwrap_or(false)
    };
    wait_for("a partial download", Duration::from_secs(30), || async {
        partial(&ingest).then_some(())
    })
    .await;
    d.kill9();
    let _ = pulling.await;
    let left_partial = partial(&ingest);
    println!("partial download left by the crash: {left_partial}");
    d.restart();
    let id = pull(&mut d.images().await, &reference).await.unwrap();
    assert_eq!(id, env.config_digest(&reference));
    if left_partial {
        // Resumed with a range request, or (the part was in fact whole, or
        // the registry ignored the range) fetched again: never ignored.
        assert!(d.logs().contains("resuming layer download"), "{}", d.logs());
    }
    let leftovers: Vec<String> = entries(&d.paths.root.join("layers"))
        .into_iter()
        .filter(|e| e.starts_with("tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(entries(&ingest).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_token_from_the_request_is_sent_as_bearer() {
    let env = testenv();
    let (addr, log) = token_registry(env.registry.clone()).await;
    let d = Daemon::builder()
        .registries(&format!(
            "[[registry]]\nlocation = \"{addr}\"\ninsecure = true\n"
        ))
        .start();
    d.images()
        .await
        .pull_image(PullImageRequest {
            image: spec(&format!("{addr}/crius/busybox:latest")),
            auth: Some(AuthConfig {
                registry_token: "t0ken".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let log = log.lock().unwrap().clone();
    assert!(!log.iter().any(|l| l.starts_with("/token")), "{log:?}");
    assert!(log.iter().all(|l| l.ends_with("Bearer t0ken")), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_dropping_the_connection_mid_blob_fails_cleanly_and_the_retry_resumes() {
    let env = testenv();
    // Past busybox's layer, part-way into one of big's 16 MiB ones.
    let cutter = common::cut::Cutter::start(&env.registry, 24 << 20).await;
    let d = Daemon::builder()
        .registries(&format!(
            "[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
            cutter.addr
        ))
        .start();
    let reference = format!("{}/crius/big:latest", cutter.addr);
    let mut images = d.images().await;
    let t = std::time::Instant::now();
    let err = pull(&mut images, &reference).await.unwrap_err();
    println!(
        "pull cut after {} bytes: {:?} after {:?}: {}",
        cutter.passed(),
        err.code(),
        t.elapsed(),
        err.message()
    );
    assert!(cutter.has_cut());
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(!err.message().is_empty());
    let ingest = d.paths.root.join("content/ingest");
    assert!(!entries(&ingest).is_empty(), "the partial blob is kept");

    let before = cutter.passed();
    let id = pull(&mut images, &reference).await.expect("the retry");
    assert_eq!(id, env.config_digest(&env.image("big:latest")), "verified");
    let logs = d.logs();
    let resumed: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("resuming layer download") && !l.contains("impossible"))
        .collect();
    println!(
        "retry moved {} bytes; {}",
        cutter.passed() - before,
        resumed.join("\n")
    );
    assert!(!resumed.is_empty(), "resumed with a range request:\n{logs}");
    assert!(entries(&ingest).is_empty(), "no partial blob left");
    // Whole and verified: the image's own check of its data passes when
    // its parts are listed by the daemon as one image.
    assert!(status(&mut images, &reference).await.unwrap().size > 60_000_000);
}
