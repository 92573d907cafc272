//! Building one image through the engine's classic builder, the context streamed as it is
//! read. A failing step is a [`BuildResult::Failed`] with the step and the tail of its
//! output, not an error.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use bollard::query_parameters::BuildImageOptionsBuilder;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::context::{self, DOCKERFILE_NAME};
use super::{DockerError, Engine, is_not_found, labels};
use crate::collector::Image;
use crate::events::{LogStream, StageLog};

/// Lines of build output kept to show with a failure.
const TAIL_LINES: usize = 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildResult {
    Built {
        image_id: String,
    },
    Failed {
        message: String,
        step: Option<String>,
        tail: Vec<String>,
    },
    Cancelled,
}

impl Engine {
    /// Builds `image` with its context read from `boundary` (no context directory may be
    /// outside it). Build output goes to `log` as it arrives. The image is labelled with
    /// its config name only: it outlives the job and is shared by later ones.
    pub async fn build(
        &self,
        image: &Image,
        boundary: &Path,
        log: &StageLog,
        cancel: &CancellationToken,
        no_cache: bool,
    ) -> Result<BuildResult, DockerError> {
        for base in &image.build.external_bases {
            if !self.image_exists(base).await? {
                return Ok(failed(format!(
                    "base image `{base}` is not in the engine, and dockhand never pulls: build or load it first"
                )));
            }
        }
        let build = image.build.clone();
        let root: PathBuf = boundary.to_path_buf();
        let entries =
            match tokio::task::spawn_blocking(move || context::entries(&build, &root)).await {
                Ok(Ok(entries)) => entries,
                Ok(Err(e)) => return Ok(failed(e.to_string())),
                Err(e) => return Ok(failed(format!("reading the context failed: {e}"))),
            };
        let (tx, rx) = mpsc::channel(4);
        let build = image.build.clone();
        let writer = tokio::task::spawn_blocking(move || context::write(&build, &entries, tx));
        let body = futures_util::stream::unfold(rx, |mut rx| async {
            rx.recv().await.map(|chunk| (chunk, rx))
        });

        let image_labels = HashMap::from([(labels::IMAGE, image.name.as_str())]);
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(DOCKERFILE_NAME)
            .t(&image.full_name)
            .rm(true)
            .forcerm(true)
            .nocache(no_cache)
            .labels(&image_labels)
            .build();
        let mut stream =
            self.docker
                .build_image(options, None, Some(bollard::body_try_stream(body)));

        let mut progress = Progress::default();
        let mut image_id = None;
        let mut failure = None;
        loop {
            let item = tokio::select! {
                () = cancel.cancelled() => {
                    drop(stream);
                    writer.abort();
                    return Ok(BuildResult::Cancelled);
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
                    let context = writer.await.ok().and_then(Result::err);
                    return match context {
                        Some(context_error) => Ok(failed(context_error.to_string())),
                        None => Err(DockerError::Api {
                            action: format!("building {}", image.full_name),
                            source: e,
                        }),
                    };
                }
            }
        }
        if let Ok(Err(e)) = writer.await {
            failure.get_or_insert_with(|| e.to_string());
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
        Ok(BuildResult::Built { image_id })
    }

    pub async fn image_exists(&self, reference: &str) -> Result<bool, DockerError> {
        Ok(self.image_id(reference).await?.is_some())
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
