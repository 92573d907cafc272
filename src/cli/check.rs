//! `dockhand check`: every problem at once, or a one-line summary.

use serde_json::json;

use super::output::outln;
use crate::collector::{Collected, Diagnostics};
use crate::exit_code;

pub fn run(collected: Result<Collected, Diagnostics>, json: bool) -> u8 {
    match (collected, json) {
        (Ok(c), false) => {
            eprint!("{}", c.warnings);
            let config = &c.config;
            let more = config.files.len().saturating_sub(1);
            let files = if more > 0 {
                format!(" (+{more} more file(s))")
            } else {
                String::new()
            };
            let pipeline = if config.pipeline.is_empty() {
                "no pipeline (a job builds every image)".to_owned()
            } else {
                let steps: Vec<&str> = config.pipeline.iter().map(|s| s.task.as_str()).collect();
                format!("pipeline: {}", steps.join(", "))
            };
            let left_out = match config.unresolved.len() {
                0 => String::new(),
                n => format!(" (+{n} needing unset environment values, see the notes)"),
            };
            outln!(
                "ok: {}{files}: {} image(s){left_out}, {} task(s), {pipeline}",
                config.config_file.display(),
                config.images.len(),
                config.tasks.len(),
            );
            exit_code::SUCCESS
        }
        (Ok(c), true) => {
            let config = &c.config;
            let report = json!({
                "ok": true,
                "files": config.files,
                "images": config.images.len(),
                "unresolved_images": config.unresolved.keys().collect::<Vec<_>>(),
                "tasks": config.tasks.len(),
                "pipeline": config.pipeline.iter().map(|s| &s.task).collect::<Vec<_>>(),
                "diagnostics": c.warnings.to_json(),
            });
            outln!("{report:#}");
            exit_code::SUCCESS
        }
        (Err(d), false) => {
            eprint!("{d}");
            eprintln!("error: the config has {} problem(s)", d.error_count());
            exit_code::CONFIG_ERROR
        }
        (Err(d), true) => {
            outln!("{:#}", json!({ "ok": false, "diagnostics": d.to_json() }));
            exit_code::CONFIG_ERROR
        }
    }
}
