//! Small helpers every layer uses: random names, the machine's name, short digests.

use std::io::{self, Read};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// 32 random bytes from the system, as hex: ids, tokens, names that must not collide.
pub fn random_hex() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| e.to_string())?;
    Ok(hex::encode(bytes))
}

/// A number in [0, 1) from the clock's low bits hashed with a per-process random key:
/// enough to spread retries and schedule jitter, no random-number crate needed.
pub fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    let draw = RandomState::new().hash_one(std::time::Instant::now());
    (draw % 1_000_000) as f64 / 1_000_000.0
}

/// The machine's name, which labels everything an agent creates.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "dockhand".to_owned())
}

/// SHA-256 of `bytes` as lowercase hex.
/// An error with the causes behind it (reqwest keeps the useful part there), each once.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut reason = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !reason.contains(&text) {
            reason = format!("{reason}: {text}");
        }
        cause = e.source();
    }
    reason
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Feeds everything `reader` yields to `hasher`, in 256 KiB pieces; `fed` counts the
/// bytes, also those fed before an error.
pub fn sha256_feed(hasher: &mut Sha256, mut reader: impl Read, fed: &mut u64) -> io::Result<()> {
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = reader.read(&mut buffer)?;
        if read == 0 {
            return Ok(());
        }
        hasher.update(&buffer[..read]);
        *fed += read as u64;
    }
}

/// The first 16 hex digits of a SHA-256: short enough to read, long enough not to collide.
pub fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

/// The one size rule of agent.toml and config values, like Docker's `--memory`: `512m`,
/// `2g`, `1073741824` bytes; more than 0.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim().to_ascii_lowercase();
    let trimmed = trimmed.strip_suffix('b').unwrap_or(&trimmed);
    let (digits, unit) = match trimmed.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => trimmed.split_at(i),
        None => (trimmed, ""),
    };
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("`{text}` is not a size like \"512m\" or \"2g\"")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("`{text}` is not a size like \"512m\" or \"2g\""))
}

/// The one duration rule of every flag, agent.toml key and config value: a whole number
/// of seconds (`"90"`) or humantime's forms (`"30s"`, `"1h 30m"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("`{text}` seconds is too long"));
    }
    humantime::parse_duration(text).map_err(|e| {
        format!("`{text}` is not a duration: {e} (write seconds, or e.g. \"30s\", \"10m\")")
    })
}

/// Runs file work on the blocking pool, off the async runtime (the CLI's runtime has one
/// thread: blocking it stalls every stage's output). A panic there resumes here, as if the
/// work had run inline; when the runtime shuts down first, the caller never resumes.
pub async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down: this task goes with it.
        Err(_) => std::future::pending().await,
    }
}
