//! What a build needs before and after the engine sees it, none of it engine-bound:
//! the build context (selection, ignore files, packing, the tar stream), the digest cache
//! of context files, the build key with its manifests, and the records of which image each
//! key produced. [`crate::docker`] hands the results to the engine.

mod build_key;
mod build_records;
pub mod context;
mod digests;
pub mod ignore;
mod pack;

use std::path::{Path, PathBuf};

pub use build_key::{BuildKey, why_rebuilt, write_manifest};
pub use build_records::BuildRecords;
pub use digests::DigestCache;

/// Where a one-shot run keeps the digest cache, build manifests and build records: in the
/// workspace it builds from. (An agent keeps the first two per stream of jobs, as each
/// job's workspace is new, and the records once for all streams.)
pub fn cache_dir(workspace: &Path) -> PathBuf {
    workspace.join(context::STATE_DIR).join("cache")
}

/// The manifest of the last build of image `full_name`, under `cache_dir`.
pub fn manifest_path(cache_dir: &Path, full_name: &str) -> PathBuf {
    cache_dir
        .join("manifests")
        .join(format!("{}.tsv", full_name.replace(['/', ':'], "_")))
}
