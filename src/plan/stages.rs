//! The stages of one job. Build edges (FROM, COPY --from, content from an image) order the
//! build stages; run edges (links, share_with) decide which dependency containers a task
//! starts and in what order. The two are kept apart: a linked service must be built before
//! the task runs, but it is not part of the task's image.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::collector::{Config, EnvVar, Image, Images, TaskAction, Unresolved, closest};
use crate::graph;

/// What a job was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The pipeline, or every image when the config has no pipeline.
    Default,
    /// These tasks, one after another. A name that is no task but an image runs that image
    /// with its own options (harpoon's `run` of an image).
    Tasks(Vec<String>),
    /// Build these images (all of them when empty), run nothing.
    Images(Vec<String>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("no task named `{name}`{}", hint(.suggestion))]
    UnknownTask {
        name: String,
        suggestion: Option<String>,
    },
    #[error("no image named `{name}`{}", hint(.suggestion))]
    UnknownImage {
        name: String,
        suggestion: Option<String>,
    },
    #[error(
        "tasks `{first}` and `{second}` need different builds of image `{image}` (their options or overrides change it); run them in separate jobs"
    )]
    ConflictingBuild {
        image: String,
        first: String,
        second: String,
    },
    #[error("image dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error(
        "image `{image}` is needed{} and needs environment values that are not set: {}",
        needed_by(.task),
        .reasons.join("; ")
    )]
    Unresolved {
        image: String,
        task: Option<String>,
        reasons: Vec<String>,
    },
}

fn needed_by(task: &Option<String>) -> String {
    task.as_ref()
        .map(|t| format!(" by task `{t}`"))
        .unwrap_or_default()
}

fn hint(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

#[derive(Clone, Debug, Serialize)]
pub struct BuildStage {
    pub image: String,
    pub full_name: String,
    /// Indexes of the build stages that must finish first.
    pub after: Vec<usize>,
    #[serde(skip)]
    pub spec: Image,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunStage {
    pub task: String,
    pub image: String,
    pub action: TaskAction,
    /// Indexes of the run stages that must finish first.
    pub needs: Vec<usize>,
    /// Indexes of the build stages this task needs (its image, services, their bases).
    pub builds: Vec<usize>,
    /// Images started as dependency containers, in start order.
    pub services: Vec<String>,
    #[serde(serialize_with = "crate::collector::model::optional_duration")]
    pub timeout: Option<Duration>,
    pub allow_failure: bool,
    pub env: Vec<EnvVar>,
    #[serde(skip)]
    pub images: Arc<Images>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub builds: Vec<BuildStage>,
    /// Build stages grouped so that each group needs only earlier ones.
    pub build_layers: Vec<Vec<usize>>,
    pub runs: Vec<RunStage>,
}

impl Plan {
    pub fn new(config: &Config, request: &Request) -> Result<Plan, PlanError> {
        let mut planner = Planner::default();
        match request {
            Request::Images(names) => {
                let names: Vec<String> = if names.is_empty() {
                    config.images.keys().cloned().collect()
                } else {
                    names.clone()
                };
                let view = (&*config.images, &*config.unresolved);
                for name in &names {
                    if !config.images.contains_key(name) && !config.unresolved.contains_key(name) {
                        return Err(PlanError::UnknownImage {
                            name: name.clone(),
                            suggestion: closest(name, config.images.keys().map(String::as_str))
                                .map(str::to_owned),
                        });
                    }
                    planner.build_closure(view, name, "(build)")?;
                }
            }
            Request::Default if config.pipeline.is_empty() => {
                let view = (&*config.images, &*config.unresolved);
                for name in config.images.keys().chain(config.unresolved.keys()) {
                    planner.build_closure(view, name, "(build)")?;
                }
            }
            Request::Default => {
                let position: HashMap<&str, usize> = config
                    .pipeline
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.task.as_str(), i))
                    .collect();
                for step in &config.pipeline {
                    let needs = step
                        .needs
                        .iter()
                        .filter_map(|n| position.get(n.as_str()).copied())
                        .collect();
                    planner.run(
                        config,
                        &step.task,
                        needs,
                        step.timeout,
                        step.allow_failure,
                        step.env.clone(),
                    )?;
                }
            }
            Request::Tasks(tasks) => {
                for (i, task) in tasks.iter().enumerate() {
                    let needs = if i == 0 { Vec::new() } else { vec![i - 1] };
                    planner.run(config, task, needs, None, false, Vec::new())?;
                }
            }
        }
        planner.finish()
    }

    /// The images this plan builds, by name.
    pub fn images(&self) -> impl Iterator<Item = &str> {
        self.builds.iter().map(|b| b.image.as_str())
    }
}

#[derive(Default)]
struct Planner {
    builds: Vec<BuildStage>,
    built_for: Vec<String>,
    by_image: HashMap<String, usize>,
    runs: Vec<RunStage>,
}

impl Planner {
    /// Adds the build stage for `name` and everything it builds from; returns its index.
    fn build_closure(
        &mut self,
        (images, unresolved): View<'_>,
        name: &str,
        task: &str,
    ) -> Result<usize, PlanError> {
        let mut order = Vec::new();
        let mut visiting = vec![(name.to_owned(), false)];
        let mut seen = BTreeSet::new();
        while let Some((image, expanded)) = visiting.pop() {
            if expanded {
                order.push(image);
                continue;
            }
            if !seen.insert(image.clone()) {
                continue;
            }
            visiting.push((image.clone(), true));
            let spec = lookup((images, unresolved), &image, task)?;
            for dep in spec.build.depends_on.iter().rev() {
                if !seen.contains(dep) {
                    visiting.push((dep.clone(), false));
                }
            }
        }
        for image in order {
            let spec = &images[&image];
            match self.by_image.get(&image) {
                Some(&i) if self.builds[i].spec.build != spec.build => {
                    return Err(PlanError::ConflictingBuild {
                        image,
                        first: self.built_for[i].clone(),
                        second: task.to_owned(),
                    });
                }
                Some(_) => {}
                None => {
                    let after = spec
                        .build
                        .depends_on
                        .iter()
                        .filter_map(|d| self.by_image.get(d).copied())
                        .collect();
                    self.by_image.insert(image.clone(), self.builds.len());
                    self.built_for.push(task.to_owned());
                    self.builds.push(BuildStage {
                        image: image.clone(),
                        full_name: spec.full_name.clone(),
                        after,
                        spec: spec.clone(),
                    });
                }
            }
        }
        Ok(self.by_image[name])
    }

    fn run(
        &mut self,
        config: &Config,
        name: &str,
        needs: Vec<usize>,
        timeout: Option<Duration>,
        allow_failure: bool,
        env: Vec<EnvVar>,
    ) -> Result<(), PlanError> {
        let (image, action, images, unresolved) = match config.tasks.get(name) {
            Some(task) => (
                task.image.clone(),
                task.action,
                &task.images,
                &task.unresolved,
            ),
            None if config.images.contains_key(name) || config.unresolved.contains_key(name) => (
                name.to_owned(),
                TaskAction::Run,
                &config.images,
                &config.unresolved,
            ),
            None => {
                let candidates = config.tasks.keys().chain(config.images.keys());
                return Err(PlanError::UnknownTask {
                    name: name.to_owned(),
                    suggestion: closest(name, candidates.map(String::as_str)).map(str::to_owned),
                });
            }
        };
        let view = (&**images, &**unresolved);
        let mut builds = vec![self.build_closure(view, &image, name)?];
        let services = if action == TaskAction::Run {
            services(view, &image, name)?
        } else {
            Vec::new()
        };
        for service in &services {
            builds.push(self.build_closure(view, service, name)?);
        }
        builds.sort_unstable();
        builds.dedup();
        self.runs.push(RunStage {
            task: name.to_owned(),
            image,
            action,
            needs,
            builds,
            services,
            timeout,
            allow_failure,
            env,
            images: images.clone(),
        });
        Ok(())
    }

    fn finish(self) -> Result<Plan, PlanError> {
        let edges: Vec<Vec<usize>> = self.builds.iter().map(|b| b.after.clone()).collect();
        let build_layers = graph::layers(&edges).map_err(|cycles| {
            let names = cycles
                .first()
                .map(|c| c.iter().map(|&i| self.builds[i].image.clone()).collect())
                .unwrap_or_default();
            PlanError::Cycle(names)
        })?;
        Ok(Plan {
            builds: self.builds,
            build_layers,
            runs: self.runs,
        })
    }
}

/// The dependency containers of `image`: everything reachable through links and
/// share_with, each after what it depends on.
fn services(view: View<'_>, image: &str, task: &str) -> Result<Vec<String>, PlanError> {
    let mut order = Vec::new();
    let mut seen = BTreeSet::from([image.to_owned()]);
    let mut stack: Vec<(String, bool)> = run_edges(lookup(view, image, task)?)
        .into_iter()
        .rev()
        .map(|n| (n, false))
        .collect();
    while let Some((name, expanded)) = stack.pop() {
        if expanded {
            order.push(name);
            continue;
        }
        if !seen.insert(name.clone()) {
            continue;
        }
        stack.push((name.clone(), true));
        for dep in run_edges(lookup(view, &name, task)?).into_iter().rev() {
            if !seen.contains(&dep) {
                stack.push((dep, false));
            }
        }
    }
    Ok(order)
}

/// The images a task (or the config) sees, and those that need unset environment values.
type View<'a> = (&'a Images, &'a Unresolved);

/// Image `name` as `view` has it; one that needs unset environment values fails the plan
/// with where they are used.
fn lookup<'a>(view: View<'a>, name: &str, task: &str) -> Result<&'a Image, PlanError> {
    let (images, unresolved) = view;
    if let Some(image) = images.get(name) {
        return Ok(image);
    }
    Err(PlanError::Unresolved {
        image: name.to_owned(),
        task: (!task.starts_with('(')).then(|| task.to_owned()),
        reasons: unresolved.get(name).cloned().unwrap_or_default(),
    })
}

fn run_edges(image: &Image) -> Vec<String> {
    let mut edges: Vec<String> = image.run.links.iter().map(|l| l.image.clone()).collect();
    for shared in &image.run.share_with {
        if !edges.contains(shared) {
            edges.push(shared.clone());
        }
    }
    edges
}
