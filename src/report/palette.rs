//! Status colours for people at a terminal: chosen once per process from `--color` and the
//! environment's conventions (`NO_COLOR`, `CLICOLOR_FORCE`, `TERM=dumb`, whether stdout is a
//! terminal), so files, pipes and logs never get escape codes.

use anstyle::{AnsiColor, Style};

use crate::events::{JobStatus, StageStatus};

/// `--color`: whether status words are coloured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set (or `CLICOLOR_FORCE` forces it elsewhere)
    #[default]
    Auto,
    Always,
    Never,
}

/// Paints status words, or leaves them plain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Palette {
    enabled: bool,
}

impl Palette {
    /// For log files, result files and everything but a console.
    pub const PLAIN: Palette = Palette { enabled: false };

    /// The palette for standard output under `choice`.
    pub fn for_stdout(choice: ColorChoice) -> Palette {
        let enabled = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                anstream::AutoStream::choice(&std::io::stdout()) != anstream::ColorChoice::Never
            }
        };
        Palette { enabled }
    }

    pub fn enabled(self) -> bool {
        self.enabled
    }

    /// `text` (a stage's status word, padded as the caller likes) in its status's colour.
    pub fn stage(self, status: Option<StageStatus>, text: &str) -> String {
        let colour = match status {
            Some(StageStatus::Passed) => Some(AnsiColor::Green),
            Some(StageStatus::Cached) => Some(AnsiColor::Cyan),
            Some(StageStatus::Failed | StageStatus::TimedOut | StageStatus::Error) => {
                Some(AnsiColor::Red)
            }
            Some(StageStatus::Skipped | StageStatus::Cancelled) => Some(AnsiColor::Yellow),
            None => None,
        };
        let style = match colour {
            Some(colour) => Style::new().fg_color(Some(colour.into())),
            None => Style::new().dimmed(),
        };
        self.paint(style, text)
    }

    /// `text` in the colour of a job's verdict.
    pub fn job(self, status: JobStatus, text: &str) -> String {
        let colour = match status {
            JobStatus::Succeeded => AnsiColor::Green,
            JobStatus::Failed | JobStatus::TimedOut | JobStatus::Error => AnsiColor::Red,
            JobStatus::Cancelled => AnsiColor::Yellow,
        };
        self.paint(Style::new().fg_color(Some(colour.into())).bold(), text)
    }

    /// A server job's state word (`queued`, `running`, `succeeded`, …) in its colour.
    pub fn state(self, state: &str, text: &str) -> String {
        let colour = match state {
            "succeeded" => Some(AnsiColor::Green),
            "failed" | "timed_out" | "error" | "lost" => Some(AnsiColor::Red),
            "cancelled" => Some(AnsiColor::Yellow),
            "running" | "offered" => Some(AnsiColor::Blue),
            _ => None,
        };
        match colour {
            Some(colour) => self.paint(Style::new().fg_color(Some(colour.into())), text),
            None => text.to_owned(),
        }
    }

    fn paint(self, style: Style, text: &str) -> String {
        if self.enabled {
            format!("{style}{text}{style:#}")
        } else {
            text.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_is_plain_and_colours_wrap_the_word() {
        let word = "passed";
        assert_eq!(Palette::PLAIN.stage(Some(StageStatus::Passed), word), word);
        let painted =
            Palette::for_stdout(ColorChoice::Always).stage(Some(StageStatus::Passed), word);
        assert_eq!(painted, "\x1b[32mpassed\x1b[0m");
        assert!(!Palette::for_stdout(ColorChoice::Never).enabled());
        let failed = Palette::for_stdout(ColorChoice::Always).job(JobStatus::Failed, "failed");
        assert!(
            failed.contains("\x1b[1m") && failed.contains("\x1b[31m"),
            "{failed:?}"
        );
    }
}
