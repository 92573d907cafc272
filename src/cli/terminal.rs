//! Server data on a person's terminal. A job's source, a forge's clone URL, an error text
//! or a task's output come from people the reader need not trust: control characters in
//! them could move the cursor, rewrite earlier lines, retitle the window or forge a line
//! of the listing, so they are shown as visible escapes instead.

use std::borrow::Cow;

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
        c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
    }
}

/// One field of server data on one line: every control character (newlines too) and
/// bidirectional override as an escape like `\x1b`, `\n`, `\u{202e}`.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A job's output for a terminal: lines, tabs and colours (SGR sequences, `ESC [ … m`)
/// pass; every other control character or sequence is shown escaped.
pub fn output(text: &str) -> Cow<'_, str> {
    if !text
        .chars()
        .any(|c| needs_escape(c) && c != '\n' && c != '\t')
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '\x1b'
            && let Some(sgr) = sgr_len(rest)
        {
            out.push_str(&rest[..sgr]);
            rest = &rest[sgr..];
            continue;
        }
        if c == '\r' && rest[1..].starts_with('\n') {
            out.push('\r');
        } else if needs_escape(c) && c != '\n' && c != '\t' {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    Cow::Owned(out)
}

/// The length of the colour sequence `text` starts with, if it starts with one.
fn sgr_len(text: &str) -> Option<usize> {
    let body = text.strip_prefix("\x1b[")?;
    let params = body
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b';')
        .count();
    (params <= 64 && body.as_bytes().get(params) == Some(&b'm')).then_some(2 + params + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible() {
        assert_eq!(escape("plain ü"), "plain ü");
        assert_eq!(
            escape("https://x/a\x1b]0;pwned\x07\nfake line\u{202e}"),
            "https://x/a\\x1b]0;pwned\\x07\\nfake line\\u{202e}"
        );
        assert_eq!(escape("\u{9b}2J"), "\\u{9b}2J");
        assert_eq!(
            output("\x1b[1;31mred\x1b[0m\tok\r\nnext\n"),
            "\x1b[1;31mred\x1b[0m\tok\r\nnext\n"
        );
        assert_eq!(
            output("a\x1b[2Jb\x1b]0;t\x07\rc\n"),
            "a\\x1b[2Jb\\x1b]0;t\\x07\\rc\n"
        );
    }
}
