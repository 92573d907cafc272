//! `dockhand list`: what a config defines and what a job would do with it.

use serde_json::json;

use super::output::{outln, print, table};
use super::terminal;
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
    outln!("images:");
    let images = config.images.values().map(|image| {
        let mut from: Vec<String> = image.build.depends_on.clone();
        from.extend((image.build.external_bases.iter()).map(|b| format!("{b} (external)")));
        let links: Vec<&str> = image.run.links.iter().map(|l| l.image.as_str()).collect();
        vec![
            format!("  {}", image.name),
            image.full_name.clone(),
            labelled("from", &from.join(", ")),
            labelled("links", &links.join(", ")),
        ]
        .into_iter()
        .map(shown)
    });
    print(&table(images));
    outln!("tasks:");
    if config.tasks.is_empty() {
        outln!("  (none)");
    }
    let tasks = config.tasks.values().map(|task| {
        let action = match task.action {
            TaskAction::Run => "run",
            TaskAction::Make => "make",
        };
        vec![
            format!("  {}", task.name),
            format!("{action} {}", task.image),
            task.description.clone().unwrap_or_default(),
        ]
        .into_iter()
        .map(shown)
    });
    print(&table(tasks));
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

/// A config's text on a terminal: control characters (a description's newline or escape
/// sequence) as visible escapes, so each row stays one line.
fn shown(text: String) -> String {
    terminal::escape(&text).into_owned()
}

/// `from base` for a column that may be empty.
fn labelled(label: &str, items: &str) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!("{label} {items}")
    }
}
