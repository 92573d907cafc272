//! Containers and networks: create with labels, attach before start, stream output, wait,
//! and remove — plus the label-based sweep that finds what a job left behind.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, HostConfigLogConfig, NetworkCreateRequest,
    NetworkingConfig, PortBinding, ResourcesUlimits,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, ContainerArchiveInfoOptionsBuilder,
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{DockerError, Engine, Owner, is_not_found, labels};
use crate::collector::{Cpu, Network, PortMapping, Ulimit};
use crate::events::{LogStream, StageLog};

/// A tar stream copied out of a container.
pub type Archive = futures_util::stream::BoxStream<'static, Result<Bytes, DockerError>>;

/// How long the engine gets to report an exit code once output has ended.
const WAIT_DEADLINE: Duration = Duration::from_secs(30);

/// A container to create.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub cmd: Option<Vec<String>>,
    /// `NAME=VALUE` entries.
    pub env: Vec<String>,
    pub user: Option<String>,
    /// `host:container[:ro]` bind mounts, already checked against the mount policy.
    pub binds: Vec<String>,
    pub ports: Vec<PortMapping>,
    /// The job network to join, and the names this container answers to on it.
    pub network: String,
    pub aliases: Vec<String>,
    pub cpu: Cpu,
    pub network_options: Network,
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    /// At most this many processes (a fork bomb stops here, not at the host's limit).
    pub pids_limit: Option<i64>,
    /// No process may gain privileges (setuid binaries, file capabilities).
    pub no_new_privileges: bool,
    pub cap_drop: Vec<String>,
    pub ulimits: Vec<Ulimit>,
    pub read_only_rootfs: bool,
    /// Container paths covered by an empty read-only tmpfs (what a bind mount must not show).
    pub hidden: Vec<String>,
}

/// How a container run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i64),
    Cancelled,
    TimedOut,
}

/// Output chunks already waiting are joined (up to this size) into one event: a task
/// printing 200 MB would otherwise cost the reporter tens of thousands of wake-ups.
const BATCH_BYTES: usize = 256 * 1024;

/// One piece of a container's output.
pub type Chunk = Result<(LogStream, Bytes), DockerError>;

/// Joins `first` with the chunks of the same stream that are ready now. Returns the batch
/// and the first chunk that did not fit (another stream, or an error).
fn coalesce(
    output: &mut (impl Stream<Item = Chunk> + Unpin),
    stream: LogStream,
    first: Bytes,
) -> (Bytes, Option<Chunk>) {
    let mut batch: Option<BytesMut> = None;
    let mut next = None;
    while batch.as_ref().map_or(first.len(), BytesMut::len) < BATCH_BYTES {
        match output.next().now_or_never() {
            Some(Some(Ok((s, bytes)))) if s == stream => batch
                .get_or_insert_with(|| BytesMut::from(&first[..]))
                .extend_from_slice(&bytes),
            Some(Some(other)) => {
                next = Some(other);
                break;
            }
            Some(None) | None => break,
        }
    }
    (batch.map_or(first, BytesMut::freeze), next)
}

/// What [`Engine::pause`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pause {
    Paused,
    /// Someone else paused it, and will resume it.
    AlreadyPaused,
    NotRunning,
}

/// What a sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    pub containers: usize,
    pub networks: usize,
}

/// The shared network for tasks without dependency containers: a bridge with
/// inter-container traffic disabled, so its containers reach the outside but not each
/// other. Creating and removing a network per task costs about 230 ms on this engine, more
/// than the rest of a trivial task. Named `dockhand-isolated-<hex>` and found by its label:
/// old engines (API < 1.44) accept duplicate names, and a container attached by a name two
/// networks share cannot start.
pub const ISOLATED_NETWORK: &str = "dockhand-isolated";

impl Engine {
    /// The id of the isolated network ([`ISOLATED_NETWORK`]), created on first use. When
    /// processes race to create it, every one settles on the lowest id and removes its own
    /// extra copy; a copy still in use stays and does no harm.
    pub async fn isolated_network(&self) -> Result<String, DockerError> {
        if let Some(id) = self.isolated_network_ids().await?.into_iter().next() {
            return Ok(id);
        }
        let suffix = crate::util::random_hex().map_err(DockerError::Thread)?;
        let name = format!("{ISOLATED_NETWORK}-{}", &suffix[..12]);
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".to_owned()),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.enable_icc".to_owned(),
                "false".to_owned(),
            )])),
            labels: Some(HashMap::from([(
                labels::SHARED.to_owned(),
                "isolated".to_owned(),
            )])),
            ..Default::default()
        };
        let created = self
            .docker
            .create_network(request)
            .await
            .map_err(DockerError::api(format!("creating network {name}")))?;
        let ids = self.isolated_network_ids().await?;
        let chosen = ids.first().cloned().unwrap_or_else(|| created.id.clone());
        if chosen != created.id
            && let Err(e) = self.remove_network(&created.id).await
        {
            tracing::debug!("keeping an extra isolated network: {e}");
        }
        Ok(chosen)
    }

    /// Ids of the isolated networks, lowest first. One named exactly [`ISOLATED_NETWORK`]
    /// (made by earlier versions, possibly twice) is never used, and removed when unused.
    async fn isolated_network_ids(&self) -> Result<Vec<String>, DockerError> {
        let networks = self
            .networks(("label", format!("{}=isolated", labels::SHARED)))
            .await?;
        let mut ids = Vec::new();
        for network in networks {
            let Some(id) = network.id else { continue };
            if network.name.as_deref() == Some(ISOLATED_NETWORK) {
                let _ = self.docker.remove_network(&id).await;
            } else {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The networks matching one filter, e.g. `("label", "dockhand.job=...")`.
    async fn networks(
        &self,
        (kind, value): (&str, String),
    ) -> Result<Vec<bollard::models::Network>, DockerError> {
        let filter = HashMap::from([(kind, vec![value])]);
        let options = ListNetworksOptionsBuilder::default()
            .filters(&filter)
            .build();
        self.docker
            .list_networks(Some(options))
            .await
            .map_err(DockerError::api("listing networks"))
    }

    pub async fn create_network(
        &self,
        name: &str,
        driver: &str,
        owner: &Owner,
    ) -> Result<(), DockerError> {
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some(driver.to_owned()),
            labels: Some(owner.labels()),
            ..Default::default()
        };
        self.docker
            .create_network(request)
            .await
            .map_err(DockerError::api(format!("creating network {name}")))?;
        Ok(())
    }

    /// Removes a network; one already gone is fine.
    pub async fn remove_network(&self, name: &str) -> Result<(), DockerError> {
        match self.docker.remove_network(name).await {
            Err(e) if !is_not_found(&e) => {
                Err(DockerError::api(format!("removing network {name}"))(e))
            }
            _ => Ok(()),
        }
    }

    pub async fn create_container(
        &self,
        spec: &ContainerSpec,
        owner: &Owner,
    ) -> Result<String, DockerError> {
        let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for port in &spec.ports {
            let key = format!("{}/{}", port.container_port, port.protocol);
            let binding = PortBinding {
                host_ip: port.host_ip.clone(),
                host_port: Some(port.host_port.map(|p| p.to_string()).unwrap_or_default()),
            };
            port_bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(binding);
        }
        let network_mode = spec
            .network_options
            .mode
            .clone()
            .unwrap_or_else(|| spec.network.clone());
        let endpoints = (network_mode == spec.network).then(|| {
            HashMap::from([(
                spec.network.clone(),
                EndpointSettings {
                    aliases: Some(spec.aliases.clone()),
                    ..Default::default()
                },
            )])
        });
        let cpu = &spec.cpu;
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.cmd.clone(),
            env: Some(spec.env.clone()),
            user: spec.user.clone(),
            hostname: spec.network_options.hostname.clone(),
            domainname: spec.network_options.domainname.clone(),
            network_disabled: Some(spec.network_options.disabled),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            exposed_ports: Some(port_bindings.keys().cloned().collect()),
            labels: Some(owner.labels()),
            host_config: Some(HostConfig {
                binds: Some(spec.binds.clone()),
                port_bindings: Some(port_bindings),
                publish_all_ports: Some(spec.network_options.publish_all_ports),
                network_mode: Some(network_mode),
                dns: Some(spec.network_options.dns.clone()),
                dns_search: Some(spec.network_options.dns_search.clone()),
                extra_hosts: Some(spec.network_options.extra_hosts.clone()),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("none".to_owned()),
                    config: None,
                }),
                cpu_shares: cpu.cpu_shares.and_then(|v| i64::try_from(v).ok()),
                cpuset_cpus: cpu.cpuset_cpus.clone(),
                cpuset_mems: cpu.cpuset_mems.clone(),
                cpu_period: cpu.cpu_period.and_then(|v| i64::try_from(v).ok()),
                cpu_quota: cpu.cpu_quota.and_then(|v| i64::try_from(v).ok()),
                memory: spec.memory_bytes,
                nano_cpus: spec.nano_cpus,
                pids_limit: spec.pids_limit,
                security_opt: spec
                    .no_new_privileges
                    .then(|| vec!["no-new-privileges".to_owned()]),
                cap_drop: Some(spec.cap_drop.clone()),
                ulimits: Some(
                    spec.ulimits
                        .iter()
                        .map(|u| ResourcesUlimits {
                            name: Some(u.name.clone()),
                            soft: Some(u.soft),
                            hard: Some(u.hard),
                        })
                        .collect(),
                ),
                readonly_rootfs: Some(spec.read_only_rootfs),
                tmpfs: Some(
                    spec.hidden
                        .iter()
                        .map(|path| (path.clone(), "ro,size=4k,mode=0555".to_owned()))
                        .collect(),
                ),
                init: Some(true),
                ..Default::default()
            }),
            networking_config: endpoints.map(|endpoints_config| NetworkingConfig {
                endpoints_config: Some(endpoints_config),
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(DockerError::api(format!(
                "creating container {} from {}",
                spec.name, spec.image
            )))?;
        Ok(created.id)
    }

    /// Attaches to `id`'s output and starts it: nothing it prints is missed.
    pub async fn attach_and_start(
        &self,
        id: &str,
    ) -> Result<
        impl Stream<Item = Result<(LogStream, bytes::Bytes), DockerError>> + Send + Unpin + use<>,
        DockerError,
    > {
        let options = AttachContainerOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(false)
            .build();
        let attached = self
            .docker
            .attach_container(id, Some(options))
            .await
            .map_err(DockerError::api(format!("attaching to container {id}")))?;
        self.docker
            .start_container(id, None)
            .await
            .map_err(DockerError::api(format!("starting container {id}")))?;
        let action = format!("reading output of container {id}");
        Ok(attached.output.filter_map(move |item| {
            let out = match item {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    Some(Ok((LogStream::Stdout, message)))
                }
                Ok(LogOutput::StdErr { message }) => Some(Ok((LogStream::Stderr, message))),
                Ok(LogOutput::StdIn { .. }) => None,
                Err(e) => Some(Err(DockerError::Api {
                    action: action.clone(),
                    cause: e,
                })),
            };
            std::future::ready(out)
        }))
    }

    /// Streams a started container's output to `log` to its end, then waits for the exit
    /// code. Killed on cancel or at `deadline`.
    pub async fn run_attached(
        &self,
        id: &str,
        mut output: impl Stream<Item = Chunk> + Unpin,
        log: &StageLog,
        cancel: &CancellationToken,
        deadline: Option<Instant>,
    ) -> Result<ExitStatus, DockerError> {
        let deadline_reached = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline_reached);
        loop {
            tokio::select! {
                () = cancel.cancelled() => {
                    self.kill(id).await?;
                    return Ok(ExitStatus::Cancelled);
                }
                () = &mut deadline_reached => {
                    self.kill(id).await?;
                    return Ok(ExitStatus::TimedOut);
                }
                chunk = output.next() => match chunk {
                    Some(Ok((stream, bytes))) => {
                        let (batch, next) = coalesce(&mut output, stream, bytes);
                        log.output(stream, batch).await;
                        match next {
                            Some(Ok((stream, bytes))) => log.output(stream, bytes).await,
                            Some(Err(e)) => return Err(e),
                            None => {}
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => break,
                },
            }
        }
        self.exit_code(id).await.map(ExitStatus::Exited)
    }

    /// The exit code of a container that has stopped or is about to.
    pub async fn exit_code(&self, id: &str) -> Result<i64, DockerError> {
        let mut wait = self.docker.wait_container(id, None);
        match tokio::time::timeout(WAIT_DEADLINE, wait.next()).await {
            Ok(Some(Ok(response))) => Ok(response.status_code),
            Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. }))) => {
                Ok(code)
            }
            Ok(Some(Err(e))) => Err(DockerError::api(format!("waiting for container {id}"))(e)),
            Ok(None) | Err(_) => {
                let state = self
                    .docker
                    .inspect_container(id, None)
                    .await
                    .map_err(DockerError::api(format!("inspecting container {id}")))?
                    .state;
                Ok(state.and_then(|s| s.exit_code).unwrap_or(-1))
            }
        }
    }

    pub async fn kill(&self, id: &str) -> Result<(), DockerError> {
        let options = KillContainerOptionsBuilder::default()
            .signal("SIGKILL")
            .build();
        match self.docker.kill_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(()),
            Err(e) => Err(DockerError::api(format!("killing container {id}"))(e)),
        }
    }

    /// Removes a container and its anonymous volumes; one already gone is fine.
    pub async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(DockerError::api(format!("removing container {id}"))(e)),
        }
    }

    /// Running (or paused) dockhand containers' read-write bind mounts, as (container id,
    /// host path):
    /// the containers that could change a host path while another container mounts it.
    pub async fn running_writable_binds(&self) -> Result<Vec<(String, PathBuf)>, DockerError> {
        let filter = HashMap::from([
            ("label", vec![labels::JOB.to_owned()]),
            ("status", vec!["running".to_owned(), "paused".to_owned()]),
        ]);
        let options = ListContainersOptionsBuilder::default()
            .filters(&filter)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(DockerError::api("listing running containers"))?;
        Ok(containers
            .into_iter()
            .filter_map(|c| Some((c.id?, c.mounts.unwrap_or_default())))
            .flat_map(|(id, mounts)| {
                mounts
                    .into_iter()
                    .filter(|m| m.typ.as_deref() == Some("bind") && m.rw == Some(true))
                    .filter_map(move |m| Some((id.clone(), PathBuf::from(m.source?))))
            })
            .collect())
    }

    /// Freezes a running container's processes.
    pub async fn pause(&self, id: &str) -> Result<Pause, DockerError> {
        match self.docker.pause_container(id).await {
            Ok(()) => Ok(Pause::Paused),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(Pause::NotRunning),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                let state = self
                    .docker
                    .inspect_container(id, None)
                    .await
                    .map_err(DockerError::api(format!("inspecting container {id}")))?
                    .state
                    .unwrap_or_default();
                Ok(if state.paused == Some(true) {
                    Pause::AlreadyPaused
                } else {
                    Pause::NotRunning
                })
            }
            Err(e) => Err(DockerError::api(format!("pausing container {id}"))(e)),
        }
    }

    pub async fn unpause(&self, id: &str) -> Result<(), DockerError> {
        match self.docker.unpause_container(id).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(()),
            Err(e) => Err(DockerError::api(format!("resuming container {id}"))(e)),
        }
    }

    /// Whether the container is still running, and its exit code when it is not.
    pub async fn state(&self, id: &str) -> Result<(bool, Option<i64>), DockerError> {
        let info = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(DockerError::api(format!("inspecting container {id}")))?;
        let state = info.state.unwrap_or_default();
        Ok((state.running.unwrap_or(false), state.exit_code))
    }

    /// The container's address on `network`.
    pub async fn address(&self, id: &str, network: &str) -> Result<Option<IpAddr>, DockerError> {
        let info = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(DockerError::api(format!("inspecting container {id}")))?;
        let ip = info
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut networks| networks.remove(network))
            .and_then(|endpoint| endpoint.ip_address)
            .and_then(|ip| ip.parse().ok());
        Ok(ip)
    }

    /// Runs `argv` in a running container, without a shell; returns its exit code.
    pub async fn exec(&self, id: &str, argv: &[String]) -> Result<i64, DockerError> {
        let options = CreateExecOptions {
            cmd: Some(argv.to_vec()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let action = || format!("running {argv:?} in container {id}");
        let exec = self
            .docker
            .create_exec(id, options)
            .await
            .map_err(DockerError::api(action()))?;
        let started = self
            .docker
            .start_exec(&exec.id, Some(StartExecOptions::default()))
            .await
            .map_err(DockerError::api(action()))?;
        if let StartExecResults::Attached { mut output, .. } = started {
            while output.next().await.is_some() {}
        }
        let inspected = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(DockerError::api(action()))?;
        Ok(inspected.exit_code.unwrap_or(-1))
    }

    /// Whether `path` exists in the container, asked through the archive API so the image
    /// needs no `test` binary.
    pub async fn path_exists(&self, id: &str, path: &str) -> Result<bool, DockerError> {
        let options = ContainerArchiveInfoOptionsBuilder::default()
            .path(path)
            .build();
        match self
            .docker
            .get_container_archive_info(id, Some(options))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(DockerError::api(format!(
                "looking for {path} in container {id}"
            ))(e)),
        }
    }

    /// A tar stream of `path` (absolute) in a container, running or exited, through the
    /// engine's archive API: links in it come as links. `None` when the path is missing.
    pub async fn archive(&self, id: &str, path: &str) -> Result<Option<Archive>, DockerError> {
        let options = DownloadFromContainerOptionsBuilder::default()
            .path(path)
            .build();
        let mut stream = self
            .docker
            .download_from_container(id, Some(options))
            .boxed();
        let action = format!("copying {path} out of container {id}");
        let first = match stream.next().await {
            None => Bytes::new(),
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) if is_not_found(&e) => return Ok(None),
            Some(Err(e)) => return Err(DockerError::api(action)(e)),
        };
        let rest = stream.map(move |chunk| chunk.map_err(DockerError::api(action.clone())));
        Ok(Some(
            futures_util::stream::once(async { Ok(first) })
                .chain(rest)
                .boxed(),
        ))
    }

    /// The container's working directory, which relative paths in it start from.
    pub async fn working_dir(&self, id: &str) -> Result<String, DockerError> {
        let inspected = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(DockerError::api(format!("inspecting container {id}")))?;
        Ok(inspected
            .config
            .and_then(|c| c.working_dir)
            .filter(|dir| !dir.is_empty())
            .unwrap_or_else(|| "/".into()))
    }

    /// The first `limit` bytes of a file in the container, or `None` if it is missing.
    pub async fn read_file(
        &self,
        id: &str,
        path: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, DockerError> {
        let options = DownloadFromContainerOptionsBuilder::default()
            .path(path)
            .build();
        let mut stream = self.docker.download_from_container(id, Some(options));
        let mut archive = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => archive.extend_from_slice(&bytes),
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => {
                    return Err(DockerError::api(format!(
                        "reading {path} in container {id}"
                    ))(e));
                }
            }
            if archive.len() > limit + 64 * 1024 {
                break;
            }
        }
        let mut tar = tar::Archive::new(archive.as_slice());
        let Ok(mut entries) = tar.entries() else {
            return Ok(None);
        };
        let Some(Ok(entry)) = entries.next() else {
            return Ok(None);
        };
        let mut content = Vec::new();
        let _ =
            std::io::Read::read_to_end(&mut std::io::Read::take(entry, limit as u64), &mut content);
        Ok(Some(content))
    }

    /// Removes every container and network labelled with `label=value` (a job's, or an
    /// agent's), whatever state they are in.
    pub async fn remove_labelled(
        &self,
        label: &str,
        value: &str,
    ) -> Result<Leftovers, DockerError> {
        self.remove_labelled_except(label, value, &HashSet::new(), &HashSet::new())
            .await
    }

    /// As [`Engine::remove_labelled`], but keeps objects of the jobs in `running` and the
    /// networks named in `keep_networks`: an agent's sweep of what its earlier, crashed self
    /// left.
    pub async fn remove_labelled_except(
        &self,
        label: &str,
        value: &str,
        running: &HashSet<String>,
        keep_networks: &HashSet<String>,
    ) -> Result<Leftovers, DockerError> {
        let filter = HashMap::from([("label", vec![format!("{label}={value}")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filter)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(DockerError::api("listing containers"))?;
        let networks = self.networks(("label", format!("{label}={value}"))).await?;
        let left = |labels: Option<&HashMap<String, String>>| {
            labels
                .and_then(|l| l.get(labels::JOB))
                .is_none_or(|job| !running.contains(job))
        };
        let mut removed = Leftovers::default();
        for container in containers {
            if let Some(id) = container.id.filter(|_| left(container.labels.as_ref())) {
                self.remove_container(&id).await?;
                removed.containers += 1;
            }
        }
        for network in networks {
            let kept = network
                .name
                .as_ref()
                .is_some_and(|n| keep_networks.contains(n));
            if let Some(name) = network
                .name
                .filter(|_| !kept && left(network.labels.as_ref()))
            {
                self.remove_network(&name).await?;
                removed.networks += 1;
            }
        }
        Ok(removed)
    }
}
