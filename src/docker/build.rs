//! Building one image through the engine's classic builder, the context streamed as it is
//! read. A failing step is a [`BuildResult::Failed`] with the step and the tail of its
//! output, not an error.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use bollard::query_parameters::{BuildImageOptionsBuilder, TagImageOptionsBuilder};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{DockerError, Engine, is_not_found};
use crate::build::context::{self, ContextError, ContextStats, DOCKERFILE_NAME};
use crate::build::{BuildKey, BuildRecords, DigestCache, why_rebuilt, write_manifest};
use crate::collector::Image;
use crate::events::{LogStream, StageLog};
use crate::util::off_runtime;

/// Lines of build output kept to show with a failure.
const TAIL_LINES: usize = 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildResult {
    /// Built now; `reason` says why the last build could not be reused.
    Built {
        image_id: String,
        key: String,
        reason: String,
    },
    /// An image with the same build key exists: nothing was sent.
    Cached {
        image_id: String,
        key: String,
    },
    Failed {
        message: String,
        step: Option<String>,
        tail: Vec<String>,
    },
    Cancelled,
}

/// What a build needs besides the image.
pub struct BuildRequest<'a> {
    pub image: &'a Image,
    /// No context directory may be outside it.
    pub workspace: &'a Path,
    /// Holds the manifests of earlier builds (what the last build of an image was made
    /// of), to say which input changed.
    pub cache_dir: &'a Path,
    /// Which image each build key produced.
    pub records: &'a BuildRecords,
    /// The build keys of the images this one builds from, in `depends_on` order.
    pub dependency_keys: Vec<String>,
    pub digests: Arc<Mutex<DigestCache>>,
    /// Build every step again and do not reuse an image with the same key.
    pub no_cache: bool,
}

impl Engine {
    /// Builds `request.image` unless the image its build key produced before is still in
    /// the engine. Build output goes to `log` as it arrives. The image carries no job's
    /// labels: it outlives the job and is shared by later ones.
    pub async fn build(
        &self,
        request: BuildRequest<'_>,
        log: &StageLog,
        cancel: &CancellationToken,
    ) -> Result<BuildResult, DockerError> {
        let image = request.image;
        let mut base_ids = Vec::new();
        for base in &image.build.external_bases {
            match self.image_id(base).await? {
                Some(id) => base_ids.push(id),
                None => {
                    return Ok(failed(format!(
                        "base image `{base}` is not in the engine, and dockhand never pulls: build or load it first"
                    )));
                }
            }
        }
        let build = image.build.clone();
        let root: PathBuf = request.workspace.to_path_buf();
        let entries =
            match tokio::task::spawn_blocking(move || context::entries(&build, &root)).await {
                Ok(Ok(entries)) => Arc::new(entries),
                Ok(Err(e)) => return Ok(failed(e.to_string())),
                Err(e) => return Ok(failed(format!("reading the context failed: {e}"))),
            };
        let hashing = {
            let entries = entries.clone();
            let cache = request.digests.clone();
            tokio::task::spawn_blocking(move || {
                cache
                    .lock()
                    .map_err(|_| std::io::Error::other("the digest cache is poisoned"))?
                    .digests(&entries)
            })
        };
        let digests = match hashing.await {
            Ok(Ok(digests)) => Arc::new(digests),
            Ok(Err(e)) => return Ok(failed(format!("reading the context failed: {e}"))),
            Err(e) => return Ok(failed(format!("reading the context failed: {e}"))),
        };
        let key = BuildKey::new(
            &image.build,
            &entries,
            &digests,
            &request.dependency_keys,
            &base_ids,
        );
        let manifest = crate::build::manifest_path(request.cache_dir, &image.full_name);
        let recorded = if request.no_cache {
            None
        } else {
            let (records, key) = (request.records.clone(), key.key.clone());
            off_runtime(move || records.image_for(&key)).await
        };
        if let Some(image_id) = recorded {
            if self.tag_if_present(&image_id, &image.full_name).await? {
                log.note(format!(
                    "{} is up to date (build key {})",
                    image.full_name,
                    &key.key[..12]
                ))
                .await;
                return Ok(BuildResult::Cached {
                    image_id,
                    key: key.key,
                });
            }
            let (records, key) = (request.records.clone(), key.key.clone());
            off_runtime(move || records.forget(&key)).await;
        }
        let reason = if request.no_cache {
            "--no-cache".to_owned()
        } else {
            let (key, manifest) = (key.clone(), manifest.clone());
            let (entries, digests) = (entries.clone(), digests.clone());
            off_runtime(move || why_rebuilt(&key, &manifest, &entries, &digests)).await
        };
        log.note(format!("building {}: {reason}", image.full_name))
            .await;
        let (tx, rx) = mpsc::channel(4);
        let build = image.build.clone();
        let tar_entries = entries.clone();
        let writer = tokio::task::spawn_blocking(move || context::write(&build, &tar_entries, tx));
        let sent = &crate::metrics::agent().context_bytes;
        let body = futures_util::stream::unfold(rx, |mut rx| async {
            rx.recv().await.map(|chunk| (chunk, rx))
        })
        .inspect(|chunk| {
            if let Ok(bytes) = chunk {
                sent.inc_by(bytes.len() as u64);
            }
        });

        let mut options = BuildImageOptionsBuilder::default()
            .dockerfile(DOCKERFILE_NAME)
            .t(&image.full_name)
            .rm(true)
            .forcerm(true)
            .nocache(request.no_cache);
        if !image.build.cache_from.is_empty() {
            options = options.cachefrom(&image.build.cache_from);
        }
        let options = options.build();
        let mut stream =
            self.docker
                .build_image(options, None, Some(bollard::body_try_stream(body)));

        let mut progress = Progress::default();
        let mut image_id = None;
        let mut failure = None;
        // Taken once the whole context is sent, which is reported then: before the
        // engine's output, which starts only after the engine has read it all.
        let mut writer = Some(writer);
        loop {
            let sending = async {
                match writer.as_mut() {
                    Some(writer) => writer.await,
                    None => std::future::pending().await,
                }
            };
            let item = tokio::select! {
                () = cancel.cancelled() => {
                    drop(stream);
                    if let Some(writer) = writer {
                        writer.abort();
                    }
                    return Ok(BuildResult::Cancelled);
                }
                sent = sending => {
                    writer = None;
                    context_sent(sent, log, &mut failure).await;
                    continue;
                }
                item = stream.next() => item,
            };
            match item {
                None => break,
                Some(Ok(info)) => {
                    if let Some(text) = info.stream {
                        progress.record(&text);
                        log.output(LogStream::Build, Bytes::from(text)).await;
                    }
                    if let Some(id) = info.aux.and_then(|aux| aux.id) {
                        image_id = Some(id);
                    }
                    if let Some(detail) = info.error_detail {
                        failure = detail.message;
                    }
                }
                Some(Err(bollard::errors::Error::DockerStreamError { error })) => {
                    failure = Some(error);
                    break;
                }
                Some(Err(e)) => {
                    let context = match writer {
                        Some(writer) => writer.await.ok().and_then(Result::err),
                        None => None,
                    };
                    return match context {
                        Some(context_error) => Ok(failed(context_error.to_string())),
                        None => Err(DockerError::Api {
                            action: format!("building {}", image.full_name),
                            cause: e,
                        }),
                    };
                }
            }
        }
        if let Some(writer) = writer {
            context_sent(writer.await, log, &mut failure).await;
        }
        if let Some(message) = failure {
            let message = message.trim_end().to_owned();
            log.output(LogStream::Build, Bytes::from(format!("{message}\n")))
                .await;
            return Ok(BuildResult::Failed {
                message,
                step: progress.step,
                tail: progress.tail.into(),
            });
        }
        let image_id = match image_id {
            Some(id) => id,
            None => self.image_id(&image.full_name).await?.unwrap_or_default(),
        };
        let (records, recorded_key, id) = (request.records.clone(), key.clone(), image_id.clone());
        let (remembered, written) = off_runtime(move || {
            (
                records.remember(&recorded_key.key, &id),
                write_manifest(&manifest, &recorded_key, &entries, &digests)
                    .map_err(|e| format!("cannot write {}: {e}", manifest.display())),
            )
        })
        .await;
        if let Err(e) = remembered {
            tracing::warn!("cannot record the build of {}: {e}", image.full_name);
        }
        if let Err(e) = written {
            tracing::warn!("{e}");
        }
        Ok(BuildResult::Built {
            image_id,
            key: key.key,
            reason,
        })
    }

    /// Whether the engine still has image `image_id`; if so, `reference` is made to name
    /// it (a later build may have taken the name).
    async fn tag_if_present(&self, image_id: &str, reference: &str) -> Result<bool, DockerError> {
        if self.image_id(reference).await?.as_deref() == Some(image_id) {
            return Ok(true);
        }
        if self.image_id(image_id).await?.is_none() {
            return Ok(false);
        }
        let (repo, tag) = reference.rsplit_once(':').unwrap_or((reference, "latest"));
        let options = TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        self.docker
            .tag_image(image_id, Some(options))
            .await
            .map_err(DockerError::api(format!("tagging {reference}")))?;
        Ok(true)
    }

    pub async fn image_exists(&self, reference: &str) -> Result<bool, DockerError> {
        Ok(self.image_id(reference).await?.is_some())
    }

    /// Whether the image sets a `CMD` or `ENTRYPOINT`; `None` when the engine has no such
    /// image.
    pub async fn image_has_command(&self, reference: &str) -> Result<Option<bool>, DockerError> {
        match self.docker.inspect_image(reference).await {
            Ok(image) => Ok(Some(image.config.is_some_and(|config| {
                let set = |words: Option<Vec<String>>| words.is_some_and(|w| !w.is_empty());
                set(config.cmd) || set(config.entrypoint)
            }))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(DockerError::api(format!("inspecting image {reference}"))(e)),
        }
    }

    pub async fn image_id(&self, reference: &str) -> Result<Option<String>, DockerError> {
        match self.docker.inspect_image(reference).await {
            Ok(image) => Ok(image.id),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(DockerError::api(format!("inspecting image {reference}"))(e)),
        }
    }
}

fn failed(message: String) -> BuildResult {
    BuildResult::Failed {
        message,
        step: None,
        tail: Vec::new(),
    }
}

/// Notes how much context was sent, or keeps why sending it failed (unless the build
/// failed first).
async fn context_sent(
    sent: Result<Result<ContextStats, ContextError>, tokio::task::JoinError>,
    log: &StageLog,
    failure: &mut Option<String>,
) {
    match sent {
        Ok(Ok(stats)) => {
            let megabytes = stats.bytes as f64 / 1e6;
            let packed = if stats.packed > 0 {
                format!(" ({} of them packed in archives)", stats.packed)
            } else {
                String::new()
            };
            log.note(format!(
                "sent a context of {} entries, {megabytes:.1} MB{packed}",
                stats.entries
            ))
            .await;
        }
        Ok(Err(e)) => {
            failure.get_or_insert_with(|| e.to_string());
        }
        Err(e) => {
            failure.get_or_insert_with(|| format!("writing the context failed: {e}"));
        }
    }
}

/// The current `Step N/M : ...` and the last lines of output.
#[derive(Default)]
struct Progress {
    step: Option<String>,
    tail: VecDeque<String>,
}

impl Progress {
    fn record(&mut self, text: &str) {
        for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
            if line.starts_with("Step ") {
                self.step = Some(line.to_owned());
                self.tail.clear();
            }
            if self.tail.len() == TAIL_LINES {
                self.tail.pop_front();
            }
            self.tail.push_back(line.to_owned());
        }
    }
}
