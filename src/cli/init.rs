//! `dockhand init`: a commented config.yml for the directory, from its Dockerfile when it
//! has one, that passes `dockhand check`. It never overwrites a config.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::app::DEFAULT_CONFIGS;
use crate::exit_code;

const TEMPLATE: &str = include_str!("templates/config.yml.j2");

/// A Dockerfile is a page or two; more is a mistake (`--dockerfile /dev/zero`).
const MAX_DOCKERFILE_BYTES: u64 = 1 << 20;

/// Where no Dockerfile says otherwise: an image most engines have or can pull.
const STARTER: [&str; 3] = ["FROM debian:bookworm-slim", "WORKDIR /src", "COPY . /src"];

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} already exists here; `dockhand init` never overwrites a config")]
    Exists(String),
    #[error("reading {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Dockerfile {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path} has no FROM instruction")]
    NoFrom { path: PathBuf },
    #[error("writing {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("rendering the config: {0}")]
    Template(#[from] minijinja::Error),
}

/// What the template is filled with; command lines are already YAML-quoted.
#[derive(Serialize)]
struct Filled {
    name: String,
    dockerfile: Option<String>,
    commands: Vec<String>,
    task: &'static str,
    description: &'static str,
    command: Option<String>,
}

pub fn run(dockerfile: Option<PathBuf>, name: Option<String>) -> u8 {
    let dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    match init(&dir, dockerfile, name) {
        Ok((path, image, task)) => {
            eprintln!(
                "wrote {}: image `{image}`, task `{task}`; next: `dockhand check`, then `dockhand run`",
                path.display()
            );
            exit_code::SUCCESS
        }
        Err(e @ InitError::Exists(_)) => {
            eprintln!("error: {e}");
            exit_code::USAGE
        }
        Err(e @ (InitError::Write { .. } | InitError::Template(_))) => {
            eprintln!("error: {e}");
            exit_code::INFRASTRUCTURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit_code::CONFIG_ERROR
        }
    }
}

/// Writes `dir/config.yml`; returns its path, the image's and the task's names.
fn init(
    dir: &Path,
    dockerfile: Option<PathBuf>,
    name: Option<String>,
) -> Result<(PathBuf, String, &'static str), InitError> {
    if let Some(existing) = DEFAULT_CONFIGS
        .iter()
        .find(|c| dir.join(c).symlink_metadata().is_ok())
    {
        return Err(InitError::Exists((*existing).to_owned()));
    }
    let dockerfile = dockerfile.or_else(|| {
        let default = dir.join("Dockerfile");
        default.is_file().then_some(default)
    });
    let commands = match &dockerfile {
        Some(path) => {
            let read = crate::files::read_limited(&dir.join(path), MAX_DOCKERFILE_BYTES);
            let text = read
                .and_then(|bytes| {
                    String::from_utf8(bytes).map_err(|e| {
                        let at = e.utf8_error().valid_up_to();
                        let why = format!("not UTF-8 text (byte {at})");
                        std::io::Error::new(std::io::ErrorKind::InvalidData, why)
                    })
                })
                .map_err(|cause| InitError::Read {
                    path: path.clone(),
                    cause,
                })?;
            let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
            instructions(text).map_err(|(line, message)| InitError::Dockerfile {
                path: path.clone(),
                line,
                message,
            })?
        }
        None => STARTER.iter().map(|s| (*s).to_owned()).collect(),
    };
    let keyword = |line: &str| {
        line.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase()
    };
    let Some(last_from) = commands.iter().rposition(|c| keyword(c) == "FROM") else {
        return Err(InitError::NoFrom {
            path: dockerfile.unwrap_or_default(),
        });
    };
    let runs_itself = commands[last_from..]
        .iter()
        .any(|c| matches!(keyword(c).as_str(), "CMD" | "ENTRYPOINT"));
    let mut name = image_name(&name.unwrap_or_else(|| {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }));
    // A `FROM x` naming a config image is a dependency on it: the image must not be called
    // after its own base or one of its stages.
    let from_names: Vec<String> = (commands.iter())
        .filter(|c| keyword(c) == "FROM")
        .flat_map(|c| {
            c.split_whitespace()
                .skip(1)
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
        })
        .collect();
    while from_names.iter().any(|n| {
        n == &name || n.rsplit('/').next().and_then(|n| n.split(':').next()) == Some(&name)
    }) {
        name.push_str("-image");
    }
    let (task, description, command) = if runs_itself {
        ("run", "run the image's own command", None)
    } else {
        let test = "echo replace this command with your tests";
        ("test", "replace this with your tests", Some(quoted(test)))
    };
    let filled = Filled {
        name: name.clone(),
        dockerfile: dockerfile.as_ref().map(|d| d.display().to_string()),
        commands: commands.iter().map(|c| quoted(c)).collect(),
        task,
        description,
        command,
    };
    let templates = minijinja::Environment::new();
    let text = templates.render_str(TEMPLATE, minijinja::value::Serde(&filled))? + "\n";
    let path = dir.join(DEFAULT_CONFIGS[0]);
    let write = |path: &Path| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        file.write_all(text.as_bytes())
    };
    write(&path).map_err(|cause| match cause.kind() {
        std::io::ErrorKind::AlreadyExists => InitError::Exists(DEFAULT_CONFIGS[0].to_owned()),
        _ => InitError::Write {
            path: path.clone(),
            cause,
        },
    })?;
    Ok((path, name, task))
}

/// A YAML double-quoted scalar (JSON's string syntax is one).
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// An image name from a directory's: lower case, `[a-z0-9_-]` (a dot is no name part in
/// config references), `app` when nothing is left.
fn image_name(text: &str) -> String {
    let name: String = text
        .to_lowercase()
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '-' => c,
            _ => '-',
        })
        .collect();
    let name = name.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if name.is_empty() {
        "app".to_owned()
    } else {
        name.to_owned()
    }
}

/// A Dockerfile's instructions, one string each: comments and parser directives dropped,
/// continuation lines joined. Heredocs have no one-line form: `(line, why)`.
fn instructions(text: &str) -> Result<Vec<String>, (usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if out.is_empty() && current.is_empty() && escape_directive(line) {
            return Err((
                index + 1,
                "an `escape` parser directive changes how lines continue; write the instructions into config.yml by hand".to_owned(),
            ));
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if heredoc(line) {
            return Err((
                index + 1,
                "a heredoc (`<<EOF`) has no one-line form; write this instruction into config.yml by hand, e.g. as an ADD of `content`".to_owned(),
            ));
        }
        match line.strip_suffix('\\') {
            Some(start) => {
                current.push_str(start.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim_end().to_owned());
    }
    Ok(out)
}

/// `# escape=``: a parser directive, read only before the first instruction.
fn escape_directive(line: &str) -> bool {
    line.strip_prefix('#').is_some_and(|rest| {
        rest.trim_start()
            .to_ascii_lowercase()
            .replace(' ', "")
            .starts_with("escape=")
    })
}

/// `RUN <<EOF`, `COPY <<-"EOF" /x` (not a shell's `<<<` here-string).
fn heredoc(line: &str) -> bool {
    line.match_indices("<<").any(|(at, _)| {
        let after = line[at + 2..].trim_start_matches('-');
        !line[at + 2..].starts_with('<')
            && (at == 0 || line.as_bytes()[at - 1] != b'<')
            && after
                .trim_start_matches(['"', '\''])
                .starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dockerfile_becomes_one_entry_per_instruction() {
        let text = "# syntax=docker/dockerfile:1\nFROM rust:1 AS build\n\n# build it\nRUN apt-get update && \\\n    apt-get install -y \\\n      make\nCOPY . /src\nCMD [\"/app\"]\n";
        assert_eq!(
            instructions(text).unwrap(),
            [
                "FROM rust:1 AS build",
                "RUN apt-get update && apt-get install -y make",
                "COPY . /src",
                "CMD [\"/app\"]",
            ]
        );
        assert_eq!(instructions("# escape=`\nFROM x\n").unwrap_err().0, 1);
        let heredoc = "FROM x\nRUN <<EOF\necho hi\nEOF\n";
        assert_eq!(instructions(heredoc).unwrap_err().0, 2);
        assert!(instructions("FROM x\nRUN cat <<< \"word\"\n").is_ok());
    }

    #[test]
    fn image_names_come_from_the_directory() {
        assert_eq!(image_name("My App!"), "my-app");
        assert_eq!(image_name("___"), "app");
        assert_eq!(image_name("svc.v2"), "svc-v2");
    }
}
