//! kill -9 of the daemon at random points of a churn of pod cycles (run a
//! pod on a real CNI network, create, start, exec, stop and remove a
//! container, stop and remove the pod). After each restart every CRI object
//! is consistent: what is listed exists, what was removed is gone, and a pod
//! or container a killed call left half made can be removed. After the
//! churn nothing leaks: no mounts under root or runroot (namespace pins
//! included), no pod cgroups, no host-local leases or veths, no monitor or
//! container processes, no temporary files.
//!
//! `CRIUS_CHURN_SEED` picks the kill points (printed; fixed by default so
//! CI repeats them), `CRIUS_CHURN_CYCLES` (50) and `CRIUS_CHURN_KILLS` (20)
//! make the run longer.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::net::Net;
use common::rng::Rng;
use common::testenv::testenv;
use common::*;
use k8s_cri::v1::*;
use tonic::Code;

/// What the containers run: a marker argument finds leftover processes.
const MARKER: &str = "31337";

#[derive(Clone, Copy, Debug)]
enum Step {
    RunPod,
    Create,
    Start,
    Exec,
    StopContainer,
    RemoveContainer,
    StopPod,
    RemovePod,
}

const CYCLE: [Step; 8] = [
    Step::RunPod,
    Step::Create,
    Step::Start,
    Step::Exec,
    Step::StopContainer,
    Step::RemoveContainer,
    Step::StopPod,
    Step::RemovePod,
];

/// One cycle's objects as far as the client knows them.
#[derive(Default)]
struct Cycle {
    n: u64,
    pod: Option<String>,
    container: Option<String>,
}

struct Churn {
    d: Daemon,
    rt: Runtime,
    net: Net,
    image: String,
    /// Every pod and container id ever seen, for the leak checks.
    pods: BTreeSet<String>,
    containers: BTreeSet<String>,
    /// Ids whose removal succeeded: never listed again.
    removed: BTreeSet<String>,
}

impl Churn {
    fn pod_config(&self, c: &Cycle) -> PodSandboxConfig {
        let mut p = pod_config(&format!("churn-{}", c.n), "churn");
        p.log_directory = self.d.paths.base.join("logs").display().to_string();
        p
    }

    /// Runs `step` of cycle `c` on `rt`: one CRI call (or none when the
    /// step's object is already where the step takes it).
    async fn step(
        rt: &mut Runtime,
        step: Step,
        c: &Cycle,
        pod: PodSandboxConfig,
        image: &str,
    ) -> Result<Option<String>, tonic::Status> {
        let ctr = || c.container.clone().unwrap_or_default();
        let pod_id = || c.pod.clone().unwrap_or_default();
        match step {
            Step::RunPod => rt
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(pod),
                    ..Default::default()
                })
                .await
                .map(|r| Some(r.into_inner().pod_sandbox_id)),
            Step::Create => {
                let script = format!("trap 'exit 0' TERM; sleep {MARKER} & wait");
                rt.create_container(CreateContainerRequest {
                    pod_sandbox_id: pod_id(),
                    config: Some(container_config("c", image, &["/bin/sh", "-c", &script])),
                    sandbox_config: Some(pod),
                })
                .await
                .map(|r| Some(r.into_inner().container_id))
            }
            Step::Start => {
                let state = rt
                    .container_status(ContainerStatusRequest {
                        container_id: ctr(),
                        verbose: false,
                    })
                    .await?
                    .into_inner()
                    .status
                    .map(|s| s.state());
                if state != Some(ContainerState::ContainerCreated) {
                    return Ok(None);
                }
                rt.start_container(StartContainerRequest {
                    container_id: ctr(),
                })
                .await
                .map(|_| None)
            }
            Step::Exec => {
                let r = rt
                    .exec_sync(ExecSyncRequest {
                        container_id: ctr(),
                        cmd: vec!["echo".into(), "hi".into()],
                        timeout: 10,
                    })
                    .await?
                    .into_inner();
                assert_eq!(
                    (r.exit_code, String::from_utf8_lossy(&r.stdout).trim()),
                    (0, "hi"),
                    "exec in cycle {}",
                    c.n
                );
                Ok(None)
            }
            Step::StopContainer => rt
                .stop_container(StopContainerRequest {
                    container_id: ctr(),
                    timeout: 5,
                })
                .await
                .map(|_| None),
            Step::RemoveContainer => rt
                .remove_container(RemoveContainerRequest {
                    container_id: ctr(),
                })
                .await
                .map(|_| None),
            Step::StopPod => rt
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: pod_id(),
                })
                .await
                .map(|_| None),
            Step::RemovePod => rt
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: pod_id(),
                })
                .await
                .map(|_| None),
        }
    }

    /// What a step's success means for the cycle and the removed set.
    fn done(&mut self, c: &mut Cycle, step: Step, id: Option<String>) {
        match step {
            Step::RunPod => {
                let id = id.expect("pod id");
                self.pods.insert(id.clone());
                c.pod = Some(id);
            }
            Step::Create => {
                let id = id.expect("container id");
                self.containers.insert(id.clone());
                c.container = Some(id);
            }
            Step::RemoveContainer => {
                self.removed.extend(c.container.take());
            }
            Step::RemovePod => {
                self.removed.extend(c.pod.take());
            }
            _ => {}
        }
    }

    /// After a restart: what is listed exists and answers its status, no
    /// removed id is back, and every object but the current cycle's
    /// (a killed call's half-made leftovers) can be stopped and removed.
    async fn check(&mut self, c: &Cycle, after: &str) {
        let rt = &mut self.rt;
        let pods = common::all_pods(rt).await;
        let containers = common::all_containers(rt).await;
        for p in &pods {
            self.pods.insert(p.id.clone());
            assert!(
                !self.removed.contains(&p.id),
                "{after}: removed pod {} listed",
                p.id
            );
            rt.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: p.id.clone(),
                verbose: false,
            })
            .await
            .unwrap_or_else(|e| panic!("{after}: listed pod {} has no status: {e:?}", p.id));
        }
        for ctr in &containers {
            self.containers.insert(ctr.id.clone());
            assert!(
                !self.removed.contains(&ctr.id),
                "{after}: removed container {} listed",
                ctr.id
            );
            assert!(
                pods.iter().any(|p| p.id == ctr.pod_sandbox_id),
                "{after}: container {} of an unlisted pod",
                ctr.id
            );
            rt.container_status(ContainerStatusRequest {
                container_id: ctr.id.clone(),
                verbose: false,
            })
            .await
            .unwrap_or_else(|e| {
                panic!("{after}: listed container {} has no status: {e:?}", ctr.id)
            });
        }
        for id in &self.removed {
            let pod = rt
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: id.clone(),
                    verbose: false,
                })
                .await;
            let ctr = rt
                .container_status(ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                })
                .await;
            assert!(
                pod.is_err_and(|e| e.code() == Code::NotFound)
                    && ctr.is_err_and(|e| e.code() == Code::NotFound),
                "{after}: removed {id} still answers"
            );
        }
        for ctr in containers
            .iter()
            .filter(|x| Some(&x.id) != c.container.as_ref())
        {
            remove_container(rt, &ctr.id, after).await;
            self.removed.insert(ctr.id.clone());
        }
        for p in pods.iter().filter(|p| Some(&p.id) != c.pod.as_ref()) {
            remove_pod(rt, &p.id, after).await;
            self.removed.insert(p.id.clone());
        }
    }
}

async fn remove_container(rt: &mut Runtime, id: &str, when: &str) {
    rt.stop_container(StopContainerRequest {
        container_id: id.into(),
        timeout: 0,
    })
    .await
    .unwrap_or_else(|e| panic!("{when}: stop container {id}: {e:?}"));
    rt.remove_container(RemoveContainerRequest {
        container_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("{when}: remove container {id}: {e:?}"));
}

async fn remove_pod(rt: &mut Runtime, id: &str, when: &str) {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("{when}: stop pod {id}: {e:?}"));
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("{when}: remove pod {id}: {e:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_at_random_points_of_a_pod_churn_leaves_consistent_state_and_no_leaks() {
    let seed = env_number("CRIUS_CHURN_SEED", 0xc4a0);
    let cycles = env_number("CRIUS_CHURN_CYCLES", 50);
    let kills = env_number("CRIUS_CHURN_KILLS", 20).min(cycles * CYCLE.len() as u64);
    println!(
        "churn: CRIUS_CHURN_SEED={seed} CRIUS_CHURN_CYCLES={cycles} CRIUS_CHURN_KILLS={kills}"
    );

    let net = Net::new(200);
    let d = Daemon::builder()
        .registries(&testenv().registries_conf())
        .start();
    d.install_cni_config("10-churn.conflist", &net.conflist());
    let image = pull_busybox_at(&d.paths.socket)
        .await
        .expect("pull busybox");
    let rt = d.runtime().await;
    let mut churn = Churn {
        d,
        rt,
        net,
        image,
        pods: BTreeSet::new(),
        containers: BTreeSet::new(),
        removed: BTreeSet::new(),
    };

    let mut rng = Rng(seed);
    let total = cycles * CYCLE.len() as u64;
    let mut points = BTreeSet::new();
    while (points.len() as u64) < kills {
        points.insert(rng.below(total as usize) as u64);
    }
    let started = Instant::now();
    let mut killed_in_call = 0;
    let mut restart_time = Duration::ZERO;
    for n in 0..cycles {
        let mut c = Cycle {
            n,
            ..Default::default()
        };
        for (i, step) in CYCLE.iter().copied().enumerate() {
            let point = n * CYCLE.len() as u64 + i as u64;
            let what = format!("cycle {n} {step:?}");
            if points.contains(&point) {
                // The call runs on a client of its own; the kill lands
                // 0-60 ms into it (or after it, for a quick one).
                let delay = Duration::from_millis(rng.below(60) as u64);
                let mut rt = churn.d.runtime().await;
                let (pod, image) = (churn.pod_config(&c), churn.image.clone());
                let cc = Cycle {
                    n,
                    pod: c.pod.clone(),
                    container: c.container.clone(),
                };
                let call =
                    tokio::spawn(async move { Churn::step(&mut rt, step, &cc, pod, &image).await });
                tokio::time::sleep(delay).await;
                let in_call = !call.is_finished();
                churn.d.kill9();
                let result = call.await.expect("call task");
                if in_call {
                    killed_in_call += 1;
                }
                println!("kill -9 at {what} +{delay:?} (in the call: {in_call})");
                let t = Instant::now();
                churn.d.restart();
                churn.rt = churn.d.runtime().await;
                restart_time += t.elapsed();
                let answered = result.is_ok();
                if let Ok(id) = result {
                    churn.done(&mut c, step, id);
                }
                churn.check(&c, &format!("after the kill at {what}")).await;
                if answered {
                    continue;
                }
            }
            // The step (again, after a kill): it must succeed now.
            let pod = churn.pod_config(&c);
            let image = churn.image.clone();
            let id = Churn::step(&mut churn.rt, step, &c, pod, &image)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:?}\n{}", tail(&churn.d.logs())));
            churn.done(&mut c, step, id);
        }
    }
    println!(
        "churn: {cycles} cycles, {kills} kills ({killed_in_call} inside a call) in {:.1?}; restarts took {:.1?}",
        started.elapsed(),
        restart_time
    );

    // Nothing left, and nothing leaked.
    churn.check(&Cycle::default(), "after the churn").await;
    let leaks = leaks::after_removal(&churn.d, &churn.pods, &churn.net, MARKER).await;
    println!(
        "churn: {} pods and {} containers made, all removed",
        churn.pods.len(),
        churn.containers.len()
    );
    assert!(
        leaks.is_empty(),
        "seed {seed}: leaked:\n{}",
        leaks.join("\n")
    );
}

/// The last lines of a daemon log, for a failure message.
fn tail(logs: &str) -> String {
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
