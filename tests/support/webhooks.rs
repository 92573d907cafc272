//! Real webhook payloads and the headers each forge sends with them. The payloads under
//! tests/fixtures/webhooks are copies of deliveries GitHub and Gitea really made (SOURCES.md
//! names each one's origin), so the server is tested against what arrives in production rather
//! than against bodies we wrote to suit it. Tests rewrite the few fields that must point at
//! local things (clone URL, head sha) on the parsed value.

use std::path::PathBuf;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

/// A fixture's path: `name` is relative to the forge's directory, without `.json`
/// (`fixture_path("github", "pull_request/opened")`).
pub fn fixture_path(forge: &str, name: &str) -> PathBuf {
    assert!(
        matches!(forge, "github" | "gitea"),
        "no fixtures for forge `{forge}`"
    );
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/webhooks")
        .join(forge)
        .join(format!("{name}.json"))
}

/// A real `forge` payload, parsed.
pub fn fixture(forge: &str, name: &str) -> Value {
    let path = fixture_path(forge, name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// The lowercase hex HMAC-SHA256 of `body` under `secret`: both forges' signature.
pub fn hmac_sha256_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The legacy HMAC-SHA1 both forges still send as `X-Hub-Signature`.
fn hmac_sha1_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A fresh random delivery id shaped like the forges' (a version 4 GUID).
pub fn delivery_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).unwrap();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The headers of a signed delivery of `event` with a fresh delivery id, as `forge` sends it.
pub fn sign(forge: &str, event: &str, secret: &str, body: &[u8]) -> Vec<(String, String)> {
    headers(forge, event, Some(&delivery_id()), Some(secret), body)
}

/// Every header `forge` (github, gitea) sends with a delivery of `event`. `delivery: None`
/// leaves the delivery id out and `secret: None` is a webhook without a secret, to test how
/// the server copes with either.
///
/// GitHub: `X-GitHub-Event`, `X-GitHub-Delivery`, `X-GitHub-Hook-Installation-Target-Type`,
/// `User-Agent: GitHub-Hookshot/…`, and with a secret `X-Hub-Signature-256: sha256=<hex>` plus
/// the legacy SHA-1 `X-Hub-Signature` (no signature headers at all without one).
///
/// Gitea (services/webhook/deliver.go and its webhook docs) sends every id, event and signature
/// three times, as `X-Gitea-*`, `X-Gogs-*` and GitHub's names, so a receiver written for GitHub
/// works unchanged; `X-Gitea-Signature` is the bare hex. Its `Event` is the grouped name
/// (`pull_request`) and `Event-Type` the exact one (`pull_request_sync` for a `synchronized`
/// action). Without a secret the signature headers are still sent, empty.
pub fn headers(
    forge: &str,
    event: &str,
    delivery: Option<&str>,
    secret: Option<&str>,
    body: &[u8],
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vec![("Content-Type".into(), "application/json".into())];
    let mut add = |name: &str, value: &str| out.push((name.to_owned(), value.to_owned()));
    match forge {
        "github" => {
            add("User-Agent", "GitHub-Hookshot/dockhand-tests");
            add("X-GitHub-Event", event);
            if let Some(delivery) = delivery {
                add("X-GitHub-Delivery", delivery);
            }
            add("X-GitHub-Hook-Installation-Target-Type", "repository");
            if let Some(secret) = secret {
                add(
                    "X-Hub-Signature",
                    &format!("sha1={}", hmac_sha1_hex(secret, body)),
                );
                add(
                    "X-Hub-Signature-256",
                    &format!("sha256={}", hmac_sha256_hex(secret, body)),
                );
            }
        }
        "gitea" => {
            let event_type = gitea_event_type(event, body);
            let sha256 = secret.map_or(String::new(), |s| hmac_sha256_hex(s, body));
            let sha1 = secret.map_or(String::new(), |s| hmac_sha1_hex(s, body));
            for family in ["X-Gitea", "X-Gogs", "X-GitHub"] {
                if let Some(delivery) = delivery {
                    add(&format!("{family}-Delivery"), delivery);
                }
                add(&format!("{family}-Event"), event);
                add(&format!("{family}-Event-Type"), &event_type);
            }
            add("X-Gitea-Signature", &sha256);
            add("X-Gogs-Signature", &sha256);
            add("X-Hub-Signature", &format!("sha1={sha1}"));
            add("X-Hub-Signature-256", &format!("sha256={sha256}"));
            add("X-Gitea-Hook-Installation-Target-Type", "repository");
            add("X-GitHub-Hook-Installation-Target-Type", "repository");
        }
        other => panic!("unknown forge `{other}`: say github or gitea"),
    }
    out
}

/// Gitea's exact event type: its pull request sync has its own type under the `pull_request`
/// event, told apart in the payload only by `"action": "synchronized"`.
fn gitea_event_type(event: &str, body: &[u8]) -> String {
    let synchronized = event == "pull_request"
        && serde_json::from_slice::<Value>(body)
            .is_ok_and(|payload| payload["action"] == "synchronized");
    if synchronized {
        "pull_request_sync".into()
    } else {
        event.into()
    }
}
