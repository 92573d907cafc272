//! `dockhand list`: what a config defines and what a job would do with it.

use serde_json::json;

use super::output::outln;
use crate::collector::{Collected, TaskAction};
use crate::exit_code;
use crate::plan::{Plan, Request};

pub fn run(collected: &Collected, json: bool) -> u8 {
    let config = &collected.config;
    let plan = Plan::new(config, &Request::Default);
    if json {
        let plan = match &plan {
            Ok(plan) => json!(plan),
            Err(e) => json!({ "error": e.to_string() }),
        };
        let report = json!({
            "config_root": config.config_root,
            "files": config.files,
            "images": config.images.values().collect::<Vec<_>>(),
            "tasks": config.tasks.values().collect::<Vec<_>>(),
            "pipeline": config.pipeline,
            "secrets": config.secrets,
            "plan": plan,
        });
        outln!("{report:#}");
        return exit_code::SUCCESS;
    }
    let width = config.images.keys().map(String::len).max().unwrap_or(0);
    outln!("images:");
    for image in config.images.values() {
        let mut from: Vec<String> = image.build.depends_on.clone();
        from.extend(
            image
                .build
                .external_bases
                .iter()
                .map(|b| format!("{b} (external)")),
        );
        let from = if from.is_empty() {
            String::new()
        } else {
            format!("  from {}", from.join(", "))
        };
        let links: Vec<&str> = image.run.links.iter().map(|l| l.image.as_str()).collect();
        let links = if links.is_empty() {
            String::new()
        } else {
            format!("  links {}", links.join(", "))
        };
        outln!("  {:width$}  {}{from}{links}", image.name, image.full_name);
    }
    outln!("tasks:");
    if config.tasks.is_empty() {
        outln!("  (none)");
    }
    let width = config.tasks.keys().map(String::len).max().unwrap_or(0);
    for task in config.tasks.values() {
        let action = match task.action {
            TaskAction::Run => "run",
            TaskAction::Make => "make",
        };
        let description = task.description.as_deref().unwrap_or("");
        outln!(
            "  {:width$}  {action} {}  {description}",
            task.name,
            task.image
        );
    }
    outln!("pipeline:");
    if config.pipeline.is_empty() {
        outln!("  (none: a job builds every image)");
    }
    for (i, step) in config.pipeline.iter().enumerate() {
        let needs = if step.needs.is_empty() {
            String::new()
        } else {
            format!("  needs {}", step.needs.join(", "))
        };
        outln!("  {}. {}{needs}", i + 1, step.task);
    }
    match plan {
        Ok(plan) => {
            let layers: Vec<String> = plan
                .build_layers
                .iter()
                .map(|layer| {
                    layer
                        .iter()
                        .map(|&i| plan.builds[i].image.as_str())
                        .collect::<Vec<_>>()
                        .join(" + ")
                })
                .collect();
            outln!("build order: {}", layers.join(" -> "));
            exit_code::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit_code::CONFIG_ERROR
        }
    }
}
