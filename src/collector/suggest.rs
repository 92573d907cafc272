//! "Did you mean" for misspelt keys, image and task names.

use super::diagnostic::{Diagnostic, Diagnostics, Problem};
use super::node::{KeyPath, Node};

/// The candidate closest to `wanted`, when one is close enough to be a likely typo.
pub fn closest<'c>(wanted: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(wanted, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Reports every key of `map` that is not in `known`, with a suggestion when one is close.
/// `unsupported` lists harpoon keys dockhand rejects on purpose, with the reason.
pub fn check_keys(
    map: &Node,
    path: &KeyPath,
    section: &str,
    known: &[&str],
    unsupported: &[(&str, &'static str)],
    d: &mut Diagnostics,
) {
    let Some(entries) = map.as_map() else { return };
    for entry in entries {
        if known.contains(&entry.key.as_str()) {
            continue;
        }
        let key_path = path.key(&entry.key);
        if let Some((_, why)) = unsupported.iter().find(|(k, _)| *k == entry.key) {
            let problem = Problem::Unsupported {
                key: entry.key.clone(),
                why,
            };
            d.error(&entry.key_location, &key_path, problem);
            continue;
        }
        let problem = Problem::UnknownKey {
            key: entry.key.clone(),
            section: section.to_owned(),
        };
        let mut diagnostic = Diagnostic::error(&entry.key_location, &key_path, problem);
        if let Some(candidate) = closest(&entry.key, known.iter().copied()) {
            diagnostic = diagnostic.with_help(format!("did you mean `{candidate}`?"));
        }
        d.push(diagnostic);
    }
}
