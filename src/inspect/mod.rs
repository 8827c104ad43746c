//! `crius inspect`: operator views of a running container. The command is
//! a CRI client of the daemon like crictl (it asks for the container's pid
//! and its pod's, through verbose ContainerStatus and PodSandboxStatus),
//! then reads the kernel's view itself; it knows nothing of the daemon's
//! state files.

pub mod isolation;

use std::path::Path;
use std::time::Duration;

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerState, ContainerStatusRequest, ListContainersRequest, PodSandboxStatusRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// How long the whole lookup may take.
const DEADLINE: Duration = Duration::from_secs(10);

/// Why `crius inspect` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The daemon's socket did not answer.
    #[error("connecting to {socket}: {source}")]
    Connect {
        /// The CRI socket.
        socket: String,
        /// What the transport said.
        #[source]
        source: tonic::transport::Error,
    },
    /// The daemon answered a call with an error.
    #[error("{call}: {}", .status.message())]
    Call {
        /// The CRI call.
        call: &'static str,
        /// Its status.
        status: tonic::Status,
    },
    /// The lookup took longer than its deadline.
    #[error("the daemon did not answer within {0:?}")]
    Timeout(Duration),
    /// No container, or several, match the given id.
    #[error("{0}")]
    Container(String),
    /// The container has no running process to look at.
    #[error("container {0} is not running")]
    NotRunning(String),
    /// The daemon's answer lacks what the report needs.
    #[error("unexpected answer from the daemon: {0}")]
    Answer(String),
    /// /proc or the cgroup files could not be read.
    #[error(transparent)]
    Read(#[from] isolation::ReadError),
}

/// A running container's process and its pod's init.
#[derive(Debug, Clone)]
pub struct Target {
    /// The full container id.
    pub container_id: String,
    /// Its pod.
    pub pod_id: String,
    /// The container's init, on the host.
    pub pid: i32,
    /// The pod init, where the pod has one.
    pub pod_pid: Option<i32>,
}

async fn connect(socket: &Path) -> Result<Channel, InspectError> {
    let path = socket.to_path_buf();
    let endpoint = Endpoint::from_static("http://localhost").connect_timeout(DEADLINE);
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|source| InspectError::Connect {
            socket: socket.display().to_string(),
            source,
        })
}

fn call(name: &'static str) -> impl FnOnce(tonic::Status) -> InspectError {
    move |status| InspectError::Call { call: name, status }
}

/// The `pid` in a verbose status's `info` JSON.
fn info_pid(info: &std::collections::HashMap<String, String>) -> Result<i64, InspectError> {
    let text = info
        .get("info")
        .ok_or_else(|| InspectError::Answer("no verbose info".into()))?;
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| InspectError::Answer(e.to_string()))?;
    v["pid"]
        .as_i64()
        .ok_or_else(|| InspectError::Answer("no pid in the verbose info".into()))
}

async fn locate_now(socket: &Path, id: &str) -> Result<Target, InspectError> {
    let mut rt = RuntimeServiceClient::new(connect(socket).await?);
    // A prefix (as `crictl ps` shows ids) names the one container it starts.
    let full = if id.len() == 64 {
        id.to_string()
    } else {
        let all = rt
            .list_containers(ListContainersRequest::default())
            .await
            .map_err(call("ListContainers"))?
            .into_inner()
            .containers;
        let mut hits = all.into_iter().filter(|c| c.id.starts_with(id));
        match (hits.next(), hits.next()) {
            (Some(c), None) => c.id,
            (None, _) => return Err(InspectError::Container(format!("no container {id:?}"))),
            (Some(_), Some(_)) => {
                return Err(InspectError::Container(format!(
                    "{id:?} names more than one container"
                )));
            }
        }
    };
    let st = rt
        .container_status(ContainerStatusRequest {
            container_id: full.clone(),
            verbose: true,
        })
        .await
        .map_err(call("ContainerStatus"))?
        .into_inner();
    let running = st
        .status
        .as_ref()
        .is_some_and(|s| s.state == ContainerState::ContainerRunning as i32);
    let pid = info_pid(&st.info)?;
    if !running || pid <= 0 {
        return Err(InspectError::NotRunning(full));
    }
    let info: serde_json::Value =
        serde_json::from_str(&st.info["info"]).map_err(|e| InspectError::Answer(e.to_string()))?;
    let pod_id = info["sandboxID"].as_str().unwrap_or_default().to_string();
    let pod = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: true,
        })
        .await
        .map_err(call("PodSandboxStatus"))?
        .into_inner();
    let pod_pid = info_pid(&pod.info)?;
    Ok(Target {
        container_id: full,
        pod_id,
        pid: i32::try_from(pid).map_err(|e| InspectError::Answer(e.to_string()))?,
        pod_pid: i32::try_from(pod_pid).ok().filter(|p| *p > 0),
    })
}

/// Asks the daemon at `socket` for container `id` (or a unique prefix of
/// it): its process and its pod's init.
pub async fn locate(socket: &Path, id: &str) -> Result<Target, InspectError> {
    tokio::time::timeout(DEADLINE, locate_now(socket, id))
        .await
        .map_err(|_| InspectError::Timeout(DEADLINE))?
}

/// The isolation report of a located container, read from /proc and the
/// cgroup files (blocking: run it off any async worker).
pub fn isolation(t: &Target) -> Result<isolation::Report, InspectError> {
    Ok(isolation::gather(
        &t.container_id,
        &t.pod_id,
        t.pid,
        t.pod_pid,
    )?)
}
