//! Whether the containers a plan starts have something to run: a container whose image
//! has no `CMD` or `ENTRYPOINT` and whose task gives no `command`/`bash` fails at creation
//! ("No command specified"), after every build. Found here, before anything builds.

use crate::collector::{Images, TaskAction};

use super::Plan;

/// Where a container's command comes from, as far as the config can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandSource {
    /// The task's options, or a `CMD`/`ENTRYPOINT` in the Dockerfiles of the config.
    Known,
    /// Nothing in the config: it depends on this base image, which the config does not
    /// build (the engine knows).
    Base(String),
    /// Nothing anywhere: the image is built from scratch, or from one of the config's
    /// images, without a command.
    Missing,
}

/// One container a plan starts without a command of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commandless {
    /// The task, or the task whose service this is.
    pub task: String,
    /// The image the container runs.
    pub image: String,
    pub source: CommandSource,
}

impl Plan {
    /// The containers of this plan's run stages (tasks and their services) whose command
    /// is not known from the config.
    pub fn commandless(&self) -> Vec<Commandless> {
        let mut found = Vec::new();
        for run in self.runs.iter().filter(|r| r.action == TaskAction::Run) {
            for image in std::iter::once(&run.image).chain(&run.services) {
                match command_source(&run.images, image) {
                    CommandSource::Known => {}
                    source => found.push(Commandless {
                        task: run.task.clone(),
                        image: image.clone(),
                        source,
                    }),
                }
            }
        }
        found
    }
}

/// Where `image`'s command comes from: its run options, its own Dockerfile's last stage,
/// or the image that stage is built from.
fn command_source(images: &Images, image: &str) -> CommandSource {
    let mut name = image;
    if images.get(name).is_some_and(|i| i.run.command.is_some()) {
        return CommandSource::Known;
    }
    for _ in 0..=images.len() {
        let Some(current) = images.get(name) else {
            return CommandSource::Known;
        };
        let (base, sets_command) = last_stage(&current.build.dockerfile);
        if sets_command {
            return CommandSource::Known;
        }
        let Some(base) = base else {
            return CommandSource::Known;
        };
        if base.eq_ignore_ascii_case("scratch") {
            return CommandSource::Missing;
        }
        match images.iter().find(|(_, i)| i.full_name == base) {
            Some((parent, _)) => name = parent,
            None if earlier_stage(&current.build.dockerfile, &base) => {
                return CommandSource::Known;
            }
            None => return CommandSource::Base(base),
        }
    }
    CommandSource::Known
}

/// The last `FROM`'s image and whether a `CMD` or `ENTRYPOINT` follows it.
fn last_stage(dockerfile: &str) -> (Option<String>, bool) {
    let mut base = None;
    let mut sets_command = false;
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        let Some(instruction) = words.next() else {
            continue;
        };
        if instruction.eq_ignore_ascii_case("FROM") {
            base = words.find(|w| !w.starts_with("--")).map(str::to_owned);
            sets_command = false;
        } else if instruction.eq_ignore_ascii_case("CMD")
            || instruction.eq_ignore_ascii_case("ENTRYPOINT")
        {
            sets_command = true;
        }
    }
    (base, sets_command)
}

/// Whether `name` is a stage of `dockerfile` (`FROM … AS name`): its command is not
/// followed further.
fn earlier_stage(dockerfile: &str, name: &str) -> bool {
    dockerfile.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.len() >= 4
            && words[0].eq_ignore_ascii_case("FROM")
            && words[words.len() - 2].eq_ignore_ascii_case("AS")
            && words[words.len() - 1] == name
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_stage_decides() {
        assert_eq!(
            last_stage("FROM a AS build\nCMD x\nFROM b\nRUN y\n"),
            (Some("b".to_owned()), false)
        );
        assert_eq!(
            last_stage("from --platform=linux/amd64 b\nentrypoint [\"/x\"]\n"),
            (Some("b".to_owned()), true)
        );
        assert!(earlier_stage("FROM a AS build\nFROM build\n", "build"));
        assert!(!earlier_stage("FROM a\n", "a"));
    }
}
