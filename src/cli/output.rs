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
