//! Writing to stdout without panicking when the reader goes away (`dockhand list | head`).

use std::io::Write;

/// Writes `text` to stdout; a closed pipe is not an error worth reporting.
pub fn print(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// `println!` through [`print`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::print(&format!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

/// `--check`'s answer: the merged `settings` as TOML (their serializers hide secrets), each
/// value annotated with where it was set; the exit code.
pub fn checked_settings(
    settings: &impl serde::Serialize,
    file: Option<&std::path::Path>,
    layers: &crate::config::Layers,
) -> u8 {
    let from = file.map_or("defaults and environment".to_owned(), |f| {
        f.display().to_string()
    });
    match toml::to_string(settings) {
        Ok(text) => {
            outln!(
                "# {from}: ok; the merged settings, secret values hidden, each with where it was set:\n"
            );
            outln!("{}", layers.annotate(&text).trim_end());
            crate::exit_code::SUCCESS
        }
        Err(e) => {
            eprintln!("error: printing the settings: {e}");
            crate::exit_code::INFRASTRUCTURE
        }
    }
}

/// Rows as aligned columns, two spaces apart; colour codes take no width. Each row ends
/// with a newline.
pub fn table<R, C>(rows: R) -> String
where
    R: IntoIterator<Item = C>,
    C: IntoIterator<Item = String>,
{
    let mut writer = tabwriter::TabWriter::new(Vec::new()).padding(2).ansi(true);
    for row in rows {
        let cells: Vec<String> = row.into_iter().map(|c| c.replace('\t', " ")).collect();
        let _ = writeln!(writer, "{}", cells.join("\t"));
    }
    let text = writer.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .map(|line| format!("{}\n", line.trim_end()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up_whatever_the_colours() {
        let rows = vec![
            vec![
                "a".to_owned(),
                "\x1b[32mok\x1b[0m".to_owned(),
                "x".to_owned(),
            ],
            vec!["longer".to_owned(), "failed".to_owned(), "y".to_owned()],
        ];
        assert_eq!(
            super::table(rows),
            "a       \x1b[32mok\x1b[0m      x\nlonger  failed  y\n"
        );
    }
}
