//! Secret masking, applied by the reporter to whole lines before any sink sees them, so a
//! secret split across output chunks is still whole when it is looked for.

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// What a masked secret reads as.
pub const MASK: &str = "***";

/// Shorter values are not masked: replacing every `ab` in a log would hide the log, not the
/// secret. `Masker::new` reports them.
pub const MIN_SECRET_LEN: usize = 4;

#[derive(Clone, Debug, Default)]
pub struct Masker {
    patterns: Option<AhoCorasick>,
    /// One [`MASK`] per pattern, as `replace_all_bytes` wants.
    replacements: Vec<&'static [u8]>,
}

impl Masker {
    /// Masks each value, each line of a multi-line value, and their base64 forms (standard
    /// and URL-safe, at every alignment inside a longer encoded text). Returns the masker
    /// and the number of values too short to mask.
    pub fn new<S: AsRef<str>>(secrets: impl IntoIterator<Item = S>) -> (Masker, usize) {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
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
            patterns.extend(base64_forms(secret.as_bytes()));
        }
        patterns.sort();
        patterns.dedup();
        let patterns = (!patterns.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .expect("literal patterns always build")
        });
        let replacements = vec![MASK.as_bytes(); patterns.as_ref().map_or(0, |p| p.patterns_len())];
        (
            Masker {
                patterns,
                replacements,
            },
            too_short,
        )
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_none()
    }

    pub fn mask<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        match &self.patterns {
            Some(patterns) if patterns.is_match(text) => {
                Cow::Owned(patterns.replace_all_bytes(text, &self.replacements))
            }
            _ => Cow::Borrowed(text),
        }
    }

    pub fn mask_str(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.mask(text.as_bytes())).into_owned()
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

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    use super::*;

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
}
