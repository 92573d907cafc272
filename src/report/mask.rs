//! Secret masking, applied by the reporter to whole lines before any sink sees them, so a
//! secret split across output chunks is still whole when it is looked for.
//!
//! Masked for each value: the value, each line of a multi-line value, its JSON-, URL- and
//! XML/HTML-escaped forms, and its base64 (standard and URL-safe, at every alignment inside
//! longer encoded text, and wrapped at 64 or 76 columns as PEM and the `base64` tool do).
//! Not masked (README, Security model): a value split between stdout and stderr or
//! otherwise transformed by the task, values shorter than [`MIN_SECRET_LEN`], and a piece
//! of wrapped base64 shorter than [`MIN_PIECE`] at a line's end or start.

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What a masked secret reads as.
pub const MASK: &str = "***";

/// Shorter values are not masked: replacing every `ab` in a log would hide the log, not the
/// secret. `Masker::new` reports them.
pub const MIN_SECRET_LEN: usize = 4;

/// The shortest piece of a secret's base64 masked on its own where wrapping cut the encoded
/// text: 8 characters carry 48 bits, rare enough by chance in other base64 text that
/// masking them hides no more than the secret.
pub const MIN_PIECE: usize = 8;

/// Line widths of wrapped base64: PEM and MIME (64), the `base64` tool (76).
const WRAP_WIDTHS: [usize; 2] = [64, 76];

#[derive(Clone, Debug, Default)]
pub struct Masker {
    patterns: Option<AhoCorasick>,
    /// A few patterns of which text holding any of `patterns` holds at least one: with
    /// wrapped base64 there are hundreds of patterns per secret, which a matcher scans
    /// several times slower than a few dozen, so output is scanned with these and only
    /// what matches is searched in full.
    quick: Option<AhoCorasick>,
    /// One [`MASK`] per pattern, as `replace_all_bytes` wants.
    replacements: Vec<&'static [u8]>,
    /// The longest pattern's length.
    longest: usize,
}

impl Masker {
    /// Masks each value in all the forms listed in the module's documentation. Returns the
    /// masker and the number of values too short to mask.
    pub fn new<S: AsRef<str>>(secrets: impl IntoIterator<Item = S>) -> (Masker, usize) {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        let mut seeds: Vec<Vec<u8>> = Vec::new();
        let mut too_short = 0;
        for secret in secrets {
            let secret = secret.as_ref();
            if secret.is_empty() {
                continue;
            }
            if secret.len() < MIN_SECRET_LEN {
                too_short += 1;
                continue;
            }
            // A multi-line value is masked line by line, so the output keeps its lines.
            patterns.extend(
                secret
                    .lines()
                    .map(|l| l.trim_end_matches('\r'))
                    .filter(|l| l.len() >= MIN_SECRET_LEN)
                    .map(|l| l.as_bytes().to_vec()),
            );
            patterns.extend(escaped_forms(secret).into_iter().map(String::into_bytes));
            for form in base64_forms(secret.as_bytes()) {
                seeds.extend(piece_seeds(&form));
                pieces.extend(wrapped_pieces(&form));
                patterns.push(form);
            }
        }
        seeds.extend(patterns.iter().cloned());
        patterns.extend(pieces);
        let longest = patterns.iter().map(Vec::len).max().unwrap_or(0);
        let patterns = matcher(patterns);
        let quick = matcher(seeds);
        let replacements = vec![MASK.as_bytes(); patterns.as_ref().map_or(0, |p| p.patterns_len())];
        (
            Masker {
                patterns,
                quick,
                replacements,
                longest,
            },
            too_short,
        )
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_none()
    }

    /// Whether `text` may hold a secret: a fast scan that rules most text out.
    fn may_hold(&self, text: &[u8]) -> bool {
        self.quick
            .as_ref()
            .is_some_and(|quick| quick.is_match(text))
    }

    pub fn mask<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        match &self.patterns {
            Some(patterns) if self.may_hold(text) && patterns.is_match(text) => {
                let found = patterns.find_iter(text).count();
                crate::metrics::agent().secrets_masked.inc_by(found as u64);
                Cow::Owned(patterns.replace_all_bytes(text, &self.replacements))
            }
            _ => Cow::Borrowed(text),
        }
    }

    pub fn mask_str(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.mask(text.as_bytes())).into_owned()
    }

    /// For a line still being written that has grown too long to keep whole: the masked
    /// text of its beginning, about `part` bytes up to a cut that no byte still to come
    /// can change, and the cut's place in `text`. Bytes after the cut could begin a
    /// secret, so they wait; a secret across the cut is masked whole (the cut moves to its
    /// end).
    pub fn mask_head<'a>(&self, text: &'a [u8], part: usize) -> (Cow<'a, [u8]>, usize) {
        let Some(patterns) = &self.patterns else {
            let cut = text.len().min(part);
            return (Cow::Borrowed(&text[..cut]), cut);
        };
        let text = &text[..text.len().min(part + self.longest - 1)];
        // A secret starting at or after `cut` may be incomplete; one starting before it is
        // whole in `text`, and so is every longer secret it may be the beginning of.
        let mut cut = text.len().saturating_sub(self.longest - 1);
        if !self.may_hold(text) {
            return (Cow::Borrowed(&text[..cut]), cut);
        }
        let mut masked = Vec::new();
        let mut copied = 0;
        for found in patterns.find_iter(text) {
            if found.start() >= cut {
                break;
            }
            masked.extend_from_slice(&text[copied..found.start()]);
            masked.extend_from_slice(MASK.as_bytes());
            crate::metrics::agent().secrets_masked.inc();
            copied = found.end();
            cut = cut.max(found.end());
        }
        if copied == 0 {
            return (Cow::Borrowed(&text[..cut]), cut);
        }
        masked.extend_from_slice(&text[copied..cut]);
        (Cow::Owned(masked), cut)
    }
}

/// The values of the secret variables `names` in `env`: what a job's masker hides.
pub fn secret_values<'a>(
    names: impl IntoIterator<Item = &'a String>,
    env: &'a std::collections::HashMap<String, String>,
) -> Vec<&'a String> {
    names.into_iter().filter_map(|name| env.get(name)).collect()
}

/// The encoded forms of `secret` that appear in any base64 text containing it: for each of
/// the three alignments, only the characters that depend on the secret's bytes alone.
fn base64_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = Vec::new();
    for offset in 0..3usize {
        let mut input = vec![0u8; offset];
        input.extend_from_slice(secret);
        let skip = [0, 2, 3][offset];
        let tail = usize::from(input.len() % 3 != 0);
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(&input).into_bytes();
            if encoded.len() >= skip + tail + MIN_SECRET_LEN {
                forms.push(encoded[skip..encoded.len() - tail].to_vec());
            }
        }
    }
    forms
}

/// What wrapping at [`WRAP_WIDTHS`] can leave of an encoded `form` on one line, wherever the
/// line breaks fall: its beginning at a line's end, its end at a line's start, and whole
/// lines from its middle. Pieces shorter than [`MIN_PIECE`] are left out.
fn wrapped_pieces(form: &[u8]) -> Vec<Vec<u8>> {
    let mut pieces = Vec::new();
    for width in WRAP_WIDTHS {
        let edge = width.min(form.len() - 1);
        for len in MIN_PIECE..=edge {
            pieces.push(form[..len].to_vec());
            pieces.push(form[form.len() - len..].to_vec());
        }
        if form.len() > width {
            pieces.extend(form.windows(width).map(<[u8]>::to_vec));
        }
    }
    pieces
}

/// Pieces of `form` of which every wrapped piece ([`wrapped_pieces`]) holds one: its first
/// and last [`MIN_PIECE`] characters, and for a form longer than a line, every
/// [`MIN_PIECE`]-aligned run (a whole line of at least `2 * MIN_PIECE` holds one).
fn piece_seeds(form: &[u8]) -> Vec<Vec<u8>> {
    let mut seeds = vec![form.to_vec()];
    if form.len() > MIN_PIECE {
        seeds.push(form[..MIN_PIECE].to_vec());
        seeds.push(form[form.len() - MIN_PIECE..].to_vec());
    }
    if form.len() > WRAP_WIDTHS[0] {
        seeds.extend(form.chunks_exact(MIN_PIECE).map(<[u8]>::to_vec));
    }
    seeds
}

/// One leftmost-longest matcher of `patterns` (those of at least [`MIN_SECRET_LEN`]).
fn matcher(mut patterns: Vec<Vec<u8>>) -> Option<AhoCorasick> {
    patterns.retain(|p| p.len() >= MIN_SECRET_LEN);
    patterns.sort();
    patterns.dedup();
    (!patterns.is_empty()).then(|| {
        AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .expect("literal patterns always build")
    })
}

/// Characters kept as they are by the common URL encoders: RFC 3986's unreserved set
/// (Python's `quote(safe="")`, Go, curl), JavaScript's `encodeURIComponent`, Python's
/// `quote` (keeps `/`), and form encoding (keeps `*`, writes a space as `+`).
const URL_SETS: [&AsciiSet; 4] = [
    &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~'),
    &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b'!')
        .remove(b'*')
        .remove(b'\'')
        .remove(b'(')
        .remove(b')'),
    &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b'/'),
    &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'*')
        .remove(b' '),
];

/// The secret as JSON, URL and XML/HTML encoders write it, where that differs from the
/// value itself.
fn escaped_forms(secret: &str) -> Vec<String> {
    let mut forms = Vec::new();
    // JSON: serde's escaping; everything non-ASCII as \u escapes (Python's default); each
    // also with `/` escaped (PHP's default is both).
    let json = serde_json::to_string(secret).expect("a string serialises");
    let json = json[1..json.len() - 1].to_owned();
    let mut ascii = String::new();
    for c in json.chars() {
        if c.is_ascii() {
            ascii.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                ascii.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    for form in [json, ascii] {
        forms.push(form.replace('/', "\\/"));
        forms.push(form);
    }
    for set in URL_SETS {
        let encoded = utf8_percent_encode(secret, set).to_string();
        forms.push(encoded.replace(' ', "+"));
        forms.push(lowercase_escapes(&encoded));
        forms.push(encoded);
    }
    // XML/HTML: `&`, `<`, `>` always; quotes as the common escapers write them, or not.
    for (quot, apos) in [
        ("\"", "'"),
        ("&quot;", "&apos;"),
        ("&quot;", "&#39;"),
        ("&quot;", "&#x27;"),
        ("&#34;", "&#39;"),
    ] {
        let mut xml = String::with_capacity(secret.len());
        for c in secret.chars() {
            match c {
                '&' => xml.push_str("&amp;"),
                '<' => xml.push_str("&lt;"),
                '>' => xml.push_str("&gt;"),
                '"' => xml.push_str(quot),
                '\'' => xml.push_str(apos),
                c => xml.push(c),
            }
        }
        forms.push(xml);
    }
    forms.retain(|form| form != secret);
    forms
}

/// `%2F` as `%2f`, for encoders that write lower-case hex.
fn lowercase_escapes(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut hex_left = 0;
    for c in encoded.chars() {
        if c == '%' {
            hex_left = 2;
            out.push(c);
        } else if hex_left > 0 {
            hex_left -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    #[test]
    fn each_masked_secret_is_counted() {
        let (masker, _) = Masker::new(["hunter2-secret"]);
        let counted = &crate::metrics::agent().secrets_masked;
        let before = counted.get();
        masker.mask(b"hunter2-secret and hunter2-secret");
        masker.mask_head(b"hunter2-secret then more text to cut", 20);
        assert!(counted.get() >= before + 3, "{before} -> {}", counted.get());
    }

    #[test]
    fn values_lines_and_base64_are_masked() {
        let (masker, short) = Masker::new(["hunter2-secret", "line one\nline two", "ab"]);
        assert_eq!(short, 1);
        assert_eq!(masker.mask_str("pw=hunter2-secret;"), "pw=***;");
        assert_eq!(masker.mask_str("line two only"), "*** only");
        assert_eq!(masker.mask_str("line one\nline two\n"), "***\n***\n");
        assert_eq!(masker.mask_str("ab stays"), "ab stays");
        for prefix in ["", "x", "xy", "user:"] {
            let encoded = STANDARD.encode(format!("{prefix}hunter2-secret and more"));
            let masked = masker.mask_str(&encoded);
            assert!(masked.contains(MASK), "{prefix:?}: {encoded} → {masked}");
            let decoded_part = STANDARD_NO_PAD.encode("hunter2-secret");
            assert!(!masked.contains(&decoded_part[..8]), "{masked}");
        }
        assert_eq!(masker.mask_str("nothing here"), "nothing here");
    }

    /// No run of `MIN_PIECE` characters of the secret's base64 (at any alignment) is left.
    fn leaks(masked: &str, secret: &str) -> Option<String> {
        for form in base64_forms(secret.as_bytes()) {
            for piece in form.windows(MIN_PIECE) {
                let piece = String::from_utf8_lossy(piece);
                if masked.contains(piece.as_ref()) {
                    return Some(piece.into_owned());
                }
            }
        }
        None
    }

    #[test]
    fn wrapped_base64_is_masked_on_every_line_wherever_the_breaks_fall() {
        let short = "tok-3f9a8b7c6d5e4f3a2b1c";
        let long: String = (0..30).map(|i| format!("key-{i:02}-")).collect();
        let (one, _) = Masker::new([short]);
        let count = |m: &Option<AhoCorasick>| m.as_ref().map_or(0, AhoCorasick::patterns_len);
        assert!(count(&one.patterns) > 100, "{}", count(&one.patterns));
        assert!(
            count(&one.quick) <= 30,
            "output is scanned with few patterns"
        );
        let (masker, _) = Masker::new([short, long.as_str()]);
        for secret in [short, long.as_str()] {
            for width in [64, 76] {
                for lead in 0..width {
                    let text = format!("{}{secret}{}", "x".repeat(lead), "y".repeat(lead % 7));
                    let encoded = STANDARD.encode(text);
                    let wrapped: String = encoded
                        .as_bytes()
                        .chunks(width)
                        .map(|line| format!("{}\n", String::from_utf8_lossy(line)))
                        .collect();
                    let masked: String = wrapped
                        .split_inclusive('\n')
                        .map(|line| masker.mask_str(line))
                        .collect();
                    assert_eq!(
                        leaks(&masked, secret),
                        None,
                        "width {width}, lead {lead}:\n{masked}"
                    );
                    assert_eq!(masked.lines().count(), wrapped.lines().count());
                }
            }
        }
    }

    #[test]
    fn json_url_and_xml_forms_are_masked() {
        let secret = "p@ss/wörd \"q\" <x> & 'y'+z";
        let (masker, _) = Masker::new([secret]);
        let json = serde_json::to_string(&serde_json::json!({ "token": secret })).unwrap();
        assert_eq!(masker.mask_str(&json), r#"{"token":"***"}"#);
        for escaped in [
            r#""p@ss/w\u00f6rd \"q\" <x> & 'y'+z""#,
            r#""p@ss\/w\u00f6rd \"q\" <x> & 'y'+z""#,
        ] {
            assert_eq!(masker.mask_str(escaped), r#""***""#);
        }
        for url in [
            "p%40ss%2Fw%C3%B6rd%20%22q%22%20%3Cx%3E%20%26%20%27y%27%2Bz",
            "p%40ss%2fw%c3%b6rd%20%22q%22%20%3cx%3e%20%26%20%27y%27%2bz",
            "p%40ss%2Fw%C3%B6rd+%22q%22+%3Cx%3E+%26+%27y%27%2Bz",
            "p%40ss%2Fw%C3%B6rd%20%22q%22%20%3Cx%3E%20%26%20'y'%2Bz",
        ] {
            assert_eq!(masker.mask_str(&format!("?t={url}&n=1")), "?t=***&n=1");
        }
        for xml in [
            "p@ss/wörd &quot;q&quot; &lt;x&gt; &amp; &apos;y&apos;+z",
            "p@ss/wörd &#34;q&#34; &lt;x&gt; &amp; &#39;y&#39;+z",
            "p@ss/wörd \"q\" &lt;x&gt; &amp; 'y'+z",
        ] {
            assert_eq!(masker.mask_str(&format!("<t>{xml}</t>")), "<t>***</t>");
        }
    }

    #[test]
    fn a_long_line_is_cut_only_where_no_secret_can_straddle() {
        let (masker, _) = Masker::new(["s3cr3t-value"]);
        let longest = masker.longest;
        let text = b"aaaaaaaaaaaaaaaaaaaas3cr3t-val";
        let (head, cut) = masker.mask_head(text, 100);
        assert_eq!(cut, text.len() + 1 - longest);
        assert_eq!(&head[..], &text[..cut]);
        let text = b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaas3cr3t-valuebbbbbbbbbb";
        let (head, cut) = masker.mask_head(text, 100);
        assert_eq!(&head[..], b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa***");
        assert_eq!(&text[cut..], b"bbbbbbbbbb");
        let (head, cut) = masker.mask_head(text, 36);
        assert_eq!(
            (&head[..], cut),
            (&b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa***"[..], 44)
        );
        let (head, cut) = masker.mask_head(text, 20);
        assert_eq!((&head[..], cut), (&text[..20], 20));
        let (empty, _) = Masker::new(Vec::<String>::new());
        assert_eq!(empty.mask_head(b"abc", 2), (Cow::Borrowed(&b"ab"[..]), 2));
    }
}
