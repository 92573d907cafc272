//! The options that shape a task's container: command, env, ports, volumes, links, wait
//! conditions, user, cpu and network. Forms are checked here so a typo fails `check`, not
//! a job halfway through.

use std::collections::HashMap;
use std::path::Path;

use indexmap::IndexMap;

use super::diagnostic::{Diagnostic, Problem};
use super::format::Formatted;
use super::load::absolute_in;
use super::model::{
    Artifacts, ArtifactsWhen, Cpu, DependencyOptions, EnvValue, EnvVar, Link, Mount, Network,
    PortMapping, Reports, RunCommand, RunOptions, Ulimit, WaitCondition,
};
use super::node::{KeyPath, Node, Value};
use super::read::Reader;
use super::suggest;

const WAIT_KEYS: &[&str] = &[
    "port_open",
    "command",
    "file_exists",
    "greps",
    "file_value",
    "timeout",
    "wait_between_attempts",
];
const WAIT_UNSUPPORTED: &[(&str, &str)] = &[
    (
        "curl_result",
        "it needs curl in the image; use `port_open` or `command`",
    ),
    (
        "harpoon",
        "harpoon sets it itself from the root `harpoon` section",
    ),
];
const DEPENDENCY_KEYS: &[&str] = &["env", "ports", "wait_condition", "attached"];
const CPU_KEYS: &[&str] = &[
    "cpu_shares",
    "cpuset_cpus",
    "cpuset_mems",
    "cpu_period",
    "cpu_quota",
    "mem_limit",
    "cap_drop",
];
const CPU_UNSUPPORTED: &[(&str, &str)] = &[
    (
        "cap_add",
        "adding kernel capabilities widens the sandbox; agents have no setting to allow it (they drop MKNOD and NET_RAW from every container)",
    ),
    (
        "memswap_limit",
        "swap follows the agent's memory limit; use `cpu.mem_limit` for the task's memory",
    ),
];
/// Docker's ulimit names.
const ULIMIT_NAMES: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];
/// The engine refuses a smaller memory limit.
const MIN_MEMORY: i64 = 6 * 1024 * 1024;
const NETWORK_KEYS: &[&str] = &[
    "mode",
    "network_mode",
    "hostname",
    "domainname",
    "dns",
    "dns_search",
    "extra_hosts",
    "disabled",
    "publish_all_ports",
];
const VOLUME_KEYS: &[&str] = &["mount", "share_with"];
const REPORT_KEYS: &[&str] = &["junit", "fail_on_failures"];
const ARTIFACT_KEYS: &[&str] = &["paths", "when", "max_size", "max_files", "required"];
/// A task's artifacts unless it says otherwise: 1 GiB, 10,000 files.
const ARTIFACT_MAX_SIZE: u64 = 1 << 30;
const ARTIFACT_MAX_FILES: u64 = 10_000;

/// Reads the run options of one merged image node.
pub fn read(
    r: &mut Reader<'_, '_>,
    image: &Node,
    path: &KeyPath,
    images: &HashMap<String, String>,
    config_root: &Path,
) -> RunOptions {
    let mut run = RunOptions {
        command: command(r, image, path),
        env: r.field(image, path, "env", env).unwrap_or_default(),
        ports: r.field(image, path, "ports", ports).unwrap_or_default(),
        user: r.field(image, path, "user", Reader::text),
        links: r
            .field(image, path, "links", |r, n, p| links(r, n, p, images))
            .unwrap_or_default(),
        wait_condition: r.field(image, path, "wait_condition", wait_condition),
        cpu: r.field(image, path, "cpu", cpu).unwrap_or_default(),
        network: r.field(image, path, "network", network).unwrap_or_default(),
        container_name: r.field(image, path, "container_name", container_name),
        ulimits: r.field(image, path, "ulimits", ulimits).unwrap_or_default(),
        read_only_rootfs: r
            .field(image, path, "read_only_rootfs", Reader::bool)
            .unwrap_or(false),
        reports: r.field(image, path, "reports", reports),
        artifacts: r.field(image, path, "artifacts", artifacts),
        ..RunOptions::default()
    };
    if let Some(volumes) = r.field(image, path, "volumes", Reader::map) {
        let volumes_path = path.key("volumes");
        suggest::check_keys(&volumes, &volumes_path, "volumes", VOLUME_KEYS, &[], r.d);
        run.mounts = r
            .field(&volumes, &volumes_path, "mount", |r, n, p| {
                mounts(r, n, p, config_root)
            })
            .unwrap_or_default();
        run.share_with = r
            .field(&volumes, &volumes_path, "share_with", |r, n, p| {
                image_list(r, n, p, images)
            })
            .unwrap_or_default();
    }
    if let Some(options) = r.field(image, path, "dependency_options", Reader::map) {
        run.dependency_options =
            dependency_options(r, &options, &path.key("dependency_options"), images);
    }
    run
}

fn command(r: &mut Reader<'_, '_>, image: &Node, path: &KeyPath) -> Option<RunCommand> {
    let command = image.get("command").filter(|n| n.value != Value::Null);
    let bash = image.get("bash").filter(|n| n.value != Value::Null);
    let shell = r.field(image, path, "shell", Reader::text);
    match (command, bash) {
        (Some(c), Some(_)) => {
            r.invalid(
                c,
                &path.key("command"),
                "command",
                "command + bash",
                "set `command` or `bash`, not both",
            );
            None
        }
        (Some(c), None) => {
            if shell.is_some() {
                let shell_node = image.get("shell").unwrap_or(c);
                r.invalid(
                    shell_node,
                    &path.key("shell"),
                    "option",
                    "shell",
                    "`shell` runs the `bash` script; it has no effect on `command`",
                );
            }
            argv(r, c, &path.key("command")).map(RunCommand::Exec)
        }
        (None, Some(b)) => r
            .text(b, &path.key("bash"))
            .map(|script| RunCommand::Shell {
                shell: shell.unwrap_or_else(|| "/bin/sh".into()),
                script,
            }),
        (None, None) => None,
    }
}

/// A command as an argv: a list as it is, or a string split like a POSIX shell would.
fn argv(r: &mut Reader<'_, '_>, node: &Node, path: &KeyPath) -> Option<Vec<String>> {
    let resolved = r.resolve(node, path)?;
    if matches!(resolved.value, Value::Seq(_)) {
        return r.texts(&resolved, path);
    }
    let text = r.text(&resolved, path)?;
    match shlex::split(&text) {
        Some(words) if !words.is_empty() => Some(words),
        Some(_) => {
            r.invalid(&resolved, path, "command", &text, "empty command");
            None
        }
        None => {
            r.invalid(&resolved, path, "command", &text, "unbalanced quotes");
            None
        }
    }
}

pub fn env(r: &mut Reader<'_, '_>, node: &Node, path: &KeyPath) -> Option<Vec<EnvVar>> {
    let mut node = r.resolve(node, path)?;
    if matches!(node.value, Value::Str(_)) {
        node.value = Value::Seq(vec![node.clone()]);
    }
    let mut out = Vec::new();
    match &node.value {
        Value::Map(entries) => {
            for entry in entries {
                let entry_path = path.key(&entry.key);
                if !valid_env_name(&entry.key) {
                    r.invalid(
                        &entry.value,
                        &entry_path,
                        "environment variable name",
                        &entry.key,
                        "use letters, digits and _, not starting with a digit",
                    );
                    continue;
                }
                if let Some(value) = r.text(&entry.value, &entry_path) {
                    out.push(EnvVar {
                        name: entry.key.clone(),
                        value: EnvValue::Literal(value),
                    });
                }
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let item_path = path.index(i);
                // harpoon's item forms besides text: `[NAME]`, `[NAME, DEFAULT]` and
                // `{NAME: DEFAULT}`.
                let parts = match &item.value {
                    Value::Seq(parts) => Some(parts.clone()),
                    Value::Map(entries) if entries.len() == 1 => Some(vec![
                        Node::new(
                            Value::Str(entries[0].key.clone()),
                            entries[0].key_location.clone(),
                        ),
                        entries[0].value.clone(),
                    ]),
                    _ => None,
                };
                if let Some(parts) = parts {
                    let texts: Option<Vec<String>> = parts
                        .iter()
                        .enumerate()
                        .map(|(j, part)| r.text(part, &item_path.index(j)))
                        .collect();
                    match texts.as_deref() {
                        Some([name]) if valid_env_name(name) => out.push(EnvVar {
                            name: name.clone(),
                            value: EnvValue::FromHost,
                        }),
                        Some([name, default]) if valid_env_name(name) => out.push(EnvVar {
                            name: name.clone(),
                            value: EnvValue::FromHostOr(default.clone()),
                        }),
                        Some(other) => r.invalid(
                            item,
                            &item_path,
                            "environment entry",
                            &other.join(", "),
                            "as a list, write [NAME] or [NAME, DEFAULT], with NAME of letters, digits and _",
                        ),
                        None => {}
                    }
                    continue;
                }
                let Some(text) = r.text(item, &item_path) else {
                    continue;
                };
                // Split at the first `=` or `:`: `URL=http://x` is a value, `A:b=c` a default.
                let (name, value) = match text.find(['=', ':']) {
                    Some(at) if text[at..].starts_with('=') => {
                        (&text[..at], EnvValue::Literal(text[at + 1..].to_owned()))
                    }
                    Some(at) => (&text[..at], EnvValue::FromHostOr(text[at + 1..].to_owned())),
                    None => (text.as_str(), EnvValue::FromHost),
                };
                if valid_env_name(name) {
                    out.push(EnvVar {
                        name: name.to_owned(),
                        value,
                    });
                } else {
                    r.invalid(item, &item_path, "environment entry", &text, "write NAME, NAME=VALUE or NAME:DEFAULT, with NAME of letters, digits and _");
                }
            }
        }
        _ => {
            r.wrong(
                &node,
                path,
                "a list of NAME, NAME=VALUE or NAME:DEFAULT entries",
            );
            return None;
        }
    }
    Some(out)
}

pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Each port as harpoon reads it: text or a number in the docker CLI's form, or its parts
/// as a list (`[CONTAINER]`, `[HOST, CONTAINER]`, `[IP, HOST, CONTAINER]`).
fn ports(r: &mut Reader<'_, '_>, node: &Node, path: &KeyPath) -> Option<Vec<PortMapping>> {
    let items = r.list(node, path)?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = path.index(i);
        let Some(item) = r.resolve(item, &item_path) else {
            continue;
        };
        let text = match &item.value {
            Value::Seq(parts) if (1..=3).contains(&parts.len()) => {
                let parts: Option<Vec<String>> = parts
                    .iter()
                    .enumerate()
                    .map(|(j, part)| r.text(part, &item_path.index(j)))
                    .collect();
                parts.map(|parts| parts.join(":"))
            }
            Value::Seq(_) => {
                r.wrong(
                    &item,
                    &item_path,
                    "a port: [CONTAINER], [HOST, CONTAINER] or [IP, HOST, CONTAINER]",
                );
                None
            }
            _ => r.text(&item, &item_path),
        };
        let Some(text) = text else {
            continue;
        };
        match parse_port(&text) {
            Ok(port) => out.push(port),
            Err(reason) => r.invalid(&item, &item_path, "port", &text, reason),
        }
    }
    Some(out)
}

/// `CONTAINER`, `HOST:CONTAINER` or `IP:HOST:CONTAINER` (HOST may be empty), each with an
/// optional `/tcp`, `/udp` or `/sctp`.
pub fn parse_port(text: &str) -> Result<PortMapping, String> {
    let (spec, protocol) = match text.rsplit_once('/') {
        Some((spec, proto @ ("tcp" | "udp" | "sctp"))) => (spec, proto),
        Some((_, other)) => return Err(format!("unknown protocol `{other}` (tcp, udp or sctp)")),
        None => (text, "tcp"),
    };
    let number = |s: &str| -> Result<u16, String> {
        match s.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("`{s}` is not a port number (1-65535)")),
            Ok(n) => Ok(n),
        }
    };
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    let (host_ip, host_port, container) = match parts.as_slice() {
        [c] => (None, None, *c),
        [c, h] => (None, Some(*h), *c),
        [c, h, ip] => (Some((*ip).to_owned()), Some(*h), *c),
        _ => return Err("write PORT, HOST:PORT or IP:HOST:PORT".into()),
    };
    Ok(PortMapping {
        host_ip,
        host_port: match host_port {
            Some("") | None => None,
            Some(h) => Some(number(h)?),
        },
        container_port: number(container)?,
        protocol: protocol.to_owned(),
    })
}

fn mounts(
    r: &mut Reader<'_, '_>,
    node: &Node,
    path: &KeyPath,
    config_root: &Path,
) -> Option<Vec<Mount>> {
    let items = r.list(node, path)?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = path.index(i);
        // harpoon's list form `[HOST, CONTAINER(, MODE)]` reads as the text form.
        let text = match &item.value {
            Value::Seq(parts) if (2..=3).contains(&parts.len()) => parts
                .iter()
                .enumerate()
                .map(|(j, part)| r.text(part, &item_path.index(j)))
                .collect::<Option<Vec<String>>>()
                .map(|parts| parts.join(":")),
            _ => r.text(item, &item_path),
        };
        let Some(text) = text else {
            continue;
        };
        let parts: Vec<&str> = text.split(':').collect();
        let (host, container, mode) = match parts.as_slice() {
            [h, c] => (*h, *c, None),
            [h, c, m] => (*h, *c, Some(*m)),
            _ => {
                r.invalid(
                    item,
                    &item_path,
                    "volume mount",
                    &text,
                    "write HOST_PATH:CONTAINER_PATH or HOST_PATH:CONTAINER_PATH:ro",
                );
                continue;
            }
        };
        let read_only = match mode {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(other) => {
                r.invalid(
                    item,
                    &item_path,
                    "volume mount",
                    &text,
                    format!("unknown mode `{other}` (ro or rw)"),
                );
                continue;
            }
        };
        if host.is_empty() || !container.starts_with('/') {
            r.invalid(
                item,
                &item_path,
                "volume mount",
                &text,
                "the host path must be set and the container path absolute",
            );
            continue;
        }
        out.push(Mount {
            host: absolute_in(config_root, Path::new(host)),
            container: container.to_owned(),
            read_only,
        });
    }
    Some(out)
}

/// An image named by `{images.x}` or by its config name.
fn image_ref(
    r: &mut Reader<'_, '_>,
    node: &Node,
    path: &KeyPath,
    images: &HashMap<String, String>,
) -> Option<String> {
    let name = match r.format(node, path)? {
        Formatted::Image(name) => return Some(name),
        Formatted::Text(text) => text,
        Formatted::Node(n) => {
            r.wrong(&n, path, "an image (`{images.NAME}` or its name)");
            return None;
        }
    };
    if images.contains_key(&name) || r.fmt.has_image(&name) {
        return Some(name);
    }
    let mut diagnostic =
        Diagnostic::error(&node.location, path, Problem::UnknownImage(name.clone()));
    if let Some(c) = suggest::closest(&name, images.keys().map(String::as_str)) {
        diagnostic = diagnostic.with_help(format!("did you mean `{c}`?"));
    }
    r.d.push(diagnostic);
    None
}

fn image_list(
    r: &mut Reader<'_, '_>,
    node: &Node,
    path: &KeyPath,
    images: &HashMap<String, String>,
) -> Option<Vec<String>> {
    let items = r.list(node, path)?;
    Some(
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| image_ref(r, item, &path.index(i), images))
            .collect(),
    )
}

/// `{images.x}`, `{images.x}:alias`, `x`, `x:alias`, or `[image, alias]`.
fn links(
    r: &mut Reader<'_, '_>,
    node: &Node,
    path: &KeyPath,
    images: &HashMap<String, String>,
) -> Option<Vec<Link>> {
    let items = r.list(node, path)?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = path.index(i);
        let (image, alias) = match &item.value {
            Value::Seq(pair) if (1..=2).contains(&pair.len()) => {
                let image = image_ref(r, &pair[0], &item_path.index(0), images);
                let alias = match pair.get(1) {
                    Some(alias) => r.text(alias, &item_path.index(1)),
                    None => image.clone(),
                };
                (image, alias)
            }
            Value::Str(text) => {
                let (target, alias) = match text.rfind(':').filter(|&i| !text[i..].contains('}')) {
                    Some(i) => (&text[..i], Some(text[i + 1..].to_owned())),
                    None => (text.as_str(), None),
                };
                let target_node = Node::new(Value::Str(target.to_owned()), item.location.clone());
                let image = image_ref(r, &target_node, &item_path, images);
                let alias = alias.or_else(|| image.clone());
                (image, alias)
            }
            _ => {
                r.wrong(
                    item,
                    &item_path,
                    "an image, `image:alias`, [image] or [image, alias]",
                );
                continue;
            }
        };
        let (Some(image), Some(alias)) = (image, alias) else {
            continue;
        };
        if alias.is_empty()
            || !alias
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            r.invalid(
                item,
                &item_path,
                "link alias",
                &alias,
                "an alias is a host name: letters, digits, `-`, `_`, `.`",
            );
            continue;
        }
        out.push(Link { image, alias });
    }
    Some(out)
}

fn wait_condition(r: &mut Reader<'_, '_>, node: &Node, path: &KeyPath) -> Option<WaitCondition> {
    let node = r.map(node, path)?;
    let errors_before = r.d.error_count();
    suggest::check_keys(
        &node,
        path,
        "wait_condition",
        WAIT_KEYS,
        WAIT_UNSUPPORTED,
        r.d,
    );
    let port_open = r
        .field(&node, path, "port_open", |r, n, p| {
            let items = r.list(n, p)?;
            Some(
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, item)| r.number::<u16>(item, &p.index(i), "port"))
                    .collect::<Vec<_>>(),
            )
        })
        .unwrap_or_default();
    let command = r
        .field(&node, path, "command", |r, n, p| {
            let items = r.list(n, p)?;
            Some(
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, item)| argv(r, item, &p.index(i)))
                    .collect::<Vec<_>>(),
            )
        })
        .unwrap_or_default();
    let condition = WaitCondition {
        port_open,
        command,
        file_exists: r
            .field(&node, path, "file_exists", Reader::texts)
            .unwrap_or_default(),
        greps: r.field(&node, path, "greps", greps).unwrap_or_default(),
        file_value: r
            .field(&node, path, "file_value", text_map)
            .unwrap_or_default(),
        timeout: r
            .field(&node, path, "timeout", Reader::duration)
            .unwrap_or(std::time::Duration::from_secs(300)),
        wait_between_attempts: r
            .field(&node, path, "wait_between_attempts", Reader::duration)
            .unwrap_or(std::time::Duration::from_secs(1)),
    };
    let empty = condition.port_open.is_empty()
        && condition.command.is_empty()
        && condition.file_exists.is_empty()
        && condition.greps.is_empty()
        && condition.file_value.is_empty();
    if empty && r.d.error_count() == errors_before {
        r.invalid(
            &node,
            path,
            "wait_condition",
            "{}",
            "give at least one of port_open, command, file_exists, greps, file_value",
        );
        return None;
    }
    Some(condition)
}

/// `file: regex` pairs; the regexes are checked now, not when a service is waited on.
fn greps(r: &mut Reader<'_, '_>, node: &Node, path: &KeyPath) -> Option<IndexMap<String, String>> {
    let map = text_map(r, node, path)?;
    let mut ok = true;
    for (file, pattern) in &map {
        if let Err(e) = regex::Regex::new(pattern) {
            let at = node.get(file).unwrap_or(node);
            let reason = e
                .to_string()
                .lines()
                .last()
                .unwrap_or("invalid")
                .trim()
                .to_owned();
            r.invalid(at, &path.key(file), "regular expression", pattern, reason);
            ok = false;
        }
    }
    ok.then_some(map)
}

fn text_map(
    r: &mut Reader<'_, '_>,
    node: &Node,
    path: &KeyPath,
) -> Option<IndexMap<String, String>> {
    let node = r.map(node, path)?;
    let mut out = IndexMap::new();
    for entry in node.as_map().unwrap_or_default() {
        if let Some(value) = r.text(&entry.value, &path.key(&entry.key)) {
            out.insert(entry.key.clone(), value);
        }
    }
    Some(out)
}

fn dependency_options(
    r: &mut Reader<'_, '_>,
    node: &Node,
    path: &KeyPath,
    images: &HashMap<String, String>,
) -> IndexMap<String, DependencyOptions> {
    let mut out = IndexMap::new();
    for entry in node.as_map().unwrap_or_default() {
        let entry_path = path.key(&entry.key);
        let key_node = Node::new(Value::Str(entry.key.clone()), entry.key_location.clone());
        let Some(image) = image_ref(r, &key_node, &entry_path, images) else {
            continue;
        };
        let Some(options) = r.map(&entry.value, &entry_path) else {
            continue;
        };
        suggest::check_keys(
            &options,
            &entry_path,
            "dependency_options",
            DEPENDENCY_KEYS,
            &[],
            r.d,
        );
        out.insert(
            image,
            DependencyOptions {
                env: r
                    .field(&options, &entry_path, "env", env)
                    .unwrap_or_default(),
                ports: r
                    .field(&options, &entry_path, "ports", ports)
                    .unwrap_or_default(),
                wait_condition: r.field(&options, &entry_path, "wait_condition", wait_condition),
                attached: r
                    .field(&options, &entry_path, "attached", Reader::bool)
                    .unwrap_or(false),
            },
        );
    }
    out
}

fn cpu(r: &mut Reader<'_, '_>, node: &Node, path: &KeyPath) -> Option<Cpu> {
    let node = r.map(node, path)?;
    suggest::check_keys(&node, path, "cpu", CPU_KEYS, CPU_UNSUPPORTED, r.d);
    Some(Cpu {
        cpu_shares: r.field(&node, path, "cpu_shares", |r, n, p| {
            r.number(n, p, "cpu_shares")
        }),
        cpuset_cpus: r.field(&node, path, "cpuset_cpus", Reader::text),
        cpuset_mems: r.field(&node, path, "cpuset_mems", Reader::text),
        cpu_period: r.field(&node, path, "cpu_period", |r, n, p| {
            r.number(n, p, "cpu_period")
        }),
        cpu_quota: r.field(&node, path, "cpu_quota", |r, n, p| {
            r.number(n, p, "cpu_quota")
        }),
        mem_limit: r.field(&node, path, "mem_limit", mem_limit).flatten(),
        cap_drop: r
            .field(&node, path, "cap_drop", capabilities)
            .unwrap_or_default(),
    })
}

/// Bytes, as harpoon takes them; 0 is no limit of the image's own.
fn mem_limit(r: &mut Reader<'_, '_>, node: &Node, path: &KeyPath) -> Option<Option<i64>> {
    let bytes: i64 = r.number(node, path, "mem_limit")?;
    match bytes {
        0 => Some(None),
        b if b >= MIN_MEMORY => Some(Some(b)),
        b => {
            r.invalid(
                node,
                path,
                "mem_limit",
                &b.to_string(),
                "bytes, at least 6 MiB (6291456), or 0 for the agent's limit",
            );
            None
        }
    }
}

/// Capability names as Docker takes them (`NET_ADMIN` or `CAP_NET_ADMIN`, any case).
fn capabilities(r: &mut Reader<'_, '_>, node: &Node, path: &KeyPath) -> Option<Vec<String>> {
    let items = r.list(node, path)?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = path.index(i);
        let Some(name) = r.text(item, &item_path) else {
            continue;
        };
        let upper = name.to_ascii_uppercase();
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        if bare == "ALL"
            || (!bare.is_empty() && bare.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        {
            out.push(bare.to_owned());
        } else {
            r.invalid(
                item,
                &item_path,
                "capability",
                &name,
                "a capability name such as NET_ADMIN",
            );
        }
    }
    Some(out)
}

fn reports(r: &mut Reader<'_, '_>, node: &Node, path: &KeyPath) -> Option<Reports> {
    let node = r.map(node, path)?;
    suggest::check_keys(&node, path, "reports", REPORT_KEYS, &[], r.d);
    Some(Reports {
        junit: r
            .field(&node, path, "junit", container_paths)
            .unwrap_or_default(),
        fail_on_failures: r
            .field(&node, path, "fail_on_failures", Reader::bool)
            .unwrap_or(true),
    })
}

fn artifacts(r: &mut Reader<'_, '_>, node: &Node, path: &KeyPath) -> Option<Artifacts> {
    let node = r.map(node, path)?;
    suggest::check_keys(&node, path, "artifacts", ARTIFACT_KEYS, &[], r.d);
    let paths = r.field(&node, path, "paths", container_paths);
    if node.get("paths").is_none() {
        let problem = Problem::MissingKey {
            key: "paths",
            section: "artifacts".into(),
        };
        r.d.error(&node.location, path, problem);
    }
    let when = r
        .field(&node, path, "when", |r, n, p| {
            let text = r.text(n, p)?;
            match text.as_str() {
                "always" => Some(ArtifactsWhen::Always),
                "on_success" => Some(ArtifactsWhen::OnSuccess),
                "on_failure" => Some(ArtifactsWhen::OnFailure),
                _ => {
                    r.invalid(n, p, "when", &text, "always, on_success or on_failure");
                    None
                }
            }
        })
        .unwrap_or(ArtifactsWhen::OnSuccess);
    let max_size = r
        .field(&node, path, "max_size", |r, n, p| {
            let text = r.text(n, p)?;
            match crate::util::parse_size(&text) {
                Ok(size) => Some(size),
                Err(reason) => {
                    r.invalid(n, p, "max_size", &text, reason);
                    None
                }
            }
        })
        .unwrap_or(ARTIFACT_MAX_SIZE);
    Some(Artifacts {
        paths: paths?,
        when,
        max_size,
        max_files: r
            .field(&node, path, "max_files", |r, n, p| {
                r.number(n, p, "max_files")
            })
            .unwrap_or(ARTIFACT_MAX_FILES),
        required: r
            .field(&node, path, "required", Reader::bool)
            .unwrap_or(false),
    })
}

/// Paths or globs inside the task's container, absolute or relative to its working
/// directory.
fn container_paths(r: &mut Reader<'_, '_>, node: &Node, path: &KeyPath) -> Option<Vec<String>> {
    let items = r.list(node, path)?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = path.index(i);
        let Some(text) = r.text(item, &item_path) else {
            continue;
        };
        match crate::testreport::Pattern::new(&text, "/") {
            Ok(_) => out.push(text),
            Err(reason) => r.invalid(item, &item_path, "container path", &text, reason),
        }
    }
    Some(out)
}

/// harpoon's rule for container names: a letter, then letters, digits, `-`, `_`, `.`.
fn container_name(r: &mut Reader<'_, '_>, node: &Node, path: &KeyPath) -> Option<String> {
    let name = r.text(node, path)?;
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        r.invalid(
            node,
            path,
            "container name",
            &name,
            "a letter, then letters, digits, `-`, `_`, `.`",
        );
        return None;
    }
    Some(name)
}

/// docker-py's ulimit mappings: `{name, soft, hard}`; `hard` defaults to `soft`.
fn ulimits(r: &mut Reader<'_, '_>, node: &Node, path: &KeyPath) -> Option<Vec<Ulimit>> {
    let items = r.list(node, path)?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = path.index(i);
        let Some(map) = r.map(item, &item_path) else {
            continue;
        };
        suggest::check_keys(
            &map,
            &item_path,
            "a ulimit",
            &["name", "soft", "hard"],
            &[],
            r.d,
        );
        let name = r.field(&map, &item_path, "name", Reader::text);
        let soft: Option<i64> =
            r.field(&map, &item_path, "soft", |r, n, p| r.number(n, p, "limit"));
        let hard: Option<i64> =
            r.field(&map, &item_path, "hard", |r, n, p| r.number(n, p, "limit"));
        let Some(name) = name else {
            let problem = Problem::MissingKey {
                key: "name",
                section: "a ulimit".into(),
            };
            r.d.error(&map.location, &item_path, problem);
            continue;
        };
        if !ULIMIT_NAMES.contains(&name.as_str()) {
            let at = map.get("name").unwrap_or(&map);
            let mut diagnostic = Diagnostic::error(
                &at.location,
                &item_path.key("name"),
                Problem::Invalid {
                    what: "ulimit",
                    value: name.clone(),
                    reason: format!("known: {}", ULIMIT_NAMES.join(", ")),
                },
            );
            if let Some(c) = suggest::closest(&name, ULIMIT_NAMES.iter().copied()) {
                diagnostic = diagnostic.with_help(format!("did you mean `{c}`?"));
            }
            r.d.push(diagnostic);
            continue;
        }
        let (soft, hard) = match (soft, hard) {
            (Some(s), Some(h)) => (s, h),
            (Some(s), None) | (None, Some(s)) => (s, s),
            (None, None) => {
                let problem = Problem::MissingKey {
                    key: "soft",
                    section: format!("ulimit `{name}`"),
                };
                r.d.error(&map.location, &item_path, problem);
                continue;
            }
        };
        if soft > hard && hard >= 0 {
            r.invalid(
                &map,
                &item_path,
                "ulimit",
                &name,
                format!("the soft limit ({soft}) is above the hard limit ({hard})"),
            );
            continue;
        }
        out.push(Ulimit { name, soft, hard });
    }
    Some(out)
}

fn network(r: &mut Reader<'_, '_>, node: &Node, path: &KeyPath) -> Option<Network> {
    let node = r.map(node, path)?;
    suggest::check_keys(&node, path, "network", NETWORK_KEYS, &[], r.d);
    let mode = r.field(&node, path, "mode", Reader::text);
    let network_mode = r.field(&node, path, "network_mode", Reader::text);
    let mode = match (mode, network_mode) {
        (Some(mode), Some(other)) if mode != other => {
            let other_node = node
                .get("network_mode")
                .cloned()
                .unwrap_or_else(|| node.clone());
            r.invalid(
                &other_node,
                &path.key("network_mode"),
                "network mode",
                &other,
                format!("`mode` says `{mode}`; they are one setting (harpoon passes `network_mode` to Docker), give one"),
            );
            Some(mode)
        }
        (mode, network_mode) => mode.or(network_mode),
    };
    Some(Network {
        mode,
        hostname: r.field(&node, path, "hostname", Reader::text),
        domainname: r.field(&node, path, "domainname", Reader::text),
        dns: r
            .field(&node, path, "dns", Reader::texts)
            .unwrap_or_default(),
        dns_search: r
            .field(&node, path, "dns_search", Reader::texts)
            .unwrap_or_default(),
        extra_hosts: r
            .field(&node, path, "extra_hosts", Reader::texts)
            .unwrap_or_default(),
        disabled: r
            .field(&node, path, "disabled", Reader::bool)
            .unwrap_or(false),
        publish_all_ports: r
            .field(&node, path, "publish_all_ports", Reader::bool)
            .unwrap_or(false),
    })
}
