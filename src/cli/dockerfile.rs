//! `dockhand dockerfile IMAGE`: the generated Dockerfile, byte for byte as it is sent.

use super::output;
use crate::build::context::dockerfile_as_sent;
use crate::collector::{Collected, closest};
use crate::exit_code;
use crate::job::workspace_root;

pub fn run(collected: &Collected, image: &str, task: Option<&str>) -> u8 {
    let config = &collected.config;
    let (images, unresolved) = match task {
        None => (&config.images, &config.unresolved),
        Some(name) => match config.tasks.get(name) {
            Some(task) => (&task.images, &task.unresolved),
            None => {
                eprintln!(
                    "error: no task named `{name}`{}",
                    hint(closest(name, config.tasks.keys().map(String::as_str)))
                );
                return exit_code::USAGE;
            }
        },
    };
    if let Some(reasons) = unresolved.get(image) {
        eprintln!(
            "error: image `{image}` needs environment values that are not set:\n  {}",
            reasons.join("\n  ")
        );
        return exit_code::CONFIG_ERROR;
    }
    match images.get(image) {
        Some(image) => {
            let workspace = workspace_root(&config.config_root);
            match dockerfile_as_sent(&image.build, &workspace) {
                Ok(dockerfile) => output::print(&dockerfile),
                Err(e) => {
                    eprintln!("note: shown as generated, before packing: {e}");
                    output::print(&image.build.dockerfile);
                }
            }
            exit_code::SUCCESS
        }
        None => {
            eprintln!(
                "error: no image named `{image}`{}",
                hint(closest(image, images.keys().map(String::as_str)))
            );
            exit_code::USAGE
        }
    }
}

fn hint(suggestion: Option<&str>) -> String {
    suggestion
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}
