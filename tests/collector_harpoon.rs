//! harpoon 0.19's own tests of its collector, option specs and formatter, ported as
//! configs: each test names the harpoon test (`tests/<file>.py`, "describe / it") it comes
//! from. Valid cases must collect to the same images, names, contexts and Dockerfile
//! lines as harpoon; invalid ones must fail at the line and column that say it.
//!
//! Documented differences: full names carry `:latest`, `content` from an image is a
//! `COPY --from`, an ADD `context` is a directory (not a `.tar`) under a name of dockhand's.
//! Tests of Python plumbing (object cloning, converters, mocks of the task finder) have no
//! config to port.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dockhand::collector::{
    CollectOptions, Collected, Config, Diagnostics, EnvValue, EnvVar, Severity, collect,
};

/// A project of `files` (path, text) in a temporary directory.
fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
    }
    dir
}

fn collect_with(dir: &Path, env: &[(&str, &str)]) -> Result<Collected, Diagnostics> {
    collect(&CollectOptions {
        config: dir.join("config.yml"),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
        workspace: Some(dir.to_path_buf()),
        ..CollectOptions::default()
    })
}

fn valid(files: &[(&str, &str)]) -> (tempfile::TempDir, Config) {
    let dir = project(files);
    let collected =
        collect_with(dir.path(), &[]).unwrap_or_else(|d| panic!("should collect:\n{d}"));
    assert!(collected.warnings.is_empty(), "{}", collected.warnings);
    (dir, collected.config)
}

fn lines(config: &Config, image: &str) -> Vec<String> {
    config.images[image]
        .build
        .dockerfile
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Collecting `config.yml` fails with exactly these errors: `(line, column, message part)`.
fn invalid(config: &str, expected: &[(u32, u32, &str)]) {
    let dir = project(&[("config.yml", config)]);
    let diagnostics = match collect_with(dir.path(), &[]) {
        Ok(_) => panic!("should not collect:\n{config}"),
        Err(d) => d,
    };
    let errors: Vec<(u32, u32, String)> = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.location.line, d.location.column, d.message()))
        .collect();
    let matches = errors.len() == expected.len()
        && expected.iter().all(|(line, column, part)| {
            errors
                .iter()
                .any(|(l, c, m)| l == line && c == column && m.contains(part))
        });
    assert!(
        matches,
        "expected {expected:?}, got:\n{}",
        diagnostics.render()
    );
}

fn env(name: &str, value: EnvValue) -> EnvVar {
    EnvVar {
        name: name.into(),
        value,
    }
}

/// test_collector.py, "Reading a file / reads a yaml file and returns it as a dictionary":
/// block scalars keep and fold lines as PyYAML does; nested mappings are reachable.
#[test]
fn reading_a_file_block_scalars_and_nesting() {
    let (_dir, config) = valid(&[(
        "config.yml",
        "---\n\none: 1\ntwo:\n    three: 3\n    four: 4\nfive: |\n    six\n    seven\n    eight\nnine: >\n    ten\n    eleven\n    twelve\nimages:\n  app:\n    context: false\n    commands:\n      - [FROM, busybox]\n      - [ENV, [\"ONE {one}\", \"THREE {two.three}\", \"FOUR {two.four}\", \"NINE {nine}\"]]\n      - [ADD, {dest: /five, formatted: \"{five}\"}]\n",
    )]);
    let lines = lines(&config, "app");
    assert_eq!(
        lines[..5],
        [
            "FROM busybox",
            "ENV ONE 1",
            "ENV THREE 3",
            "ENV FOUR 4",
            "ENV NINE ten eleven twelve"
        ]
    );
    let generated = &config.images["app"].build.generated_files;
    assert_eq!(generated[0].contents, "six\nseven\neight\n");
}

/// test_collector.py, "Reading a file / complains about scanner errors" and "complains
/// about parser errors": located YAML errors.
#[test]
fn reading_a_file_yaml_errors_are_located() {
    invalid("---\n\nfive: |>\n    six\n", &[(3, 7, "YAML syntax error")]);
    invalid("---\n\nfive: {one\n", &[(4, 1, "YAML syntax error")]);
}

/// test_collector.py, "Adding configuration / merges from extra_files": the extra file
/// deep-merges over the file naming it.
#[test]
fn adding_configuration_merges_from_extra_files() {
    let (_dir, config) = valid(&[
        ("extra.yml", "---\n\ntwo:\n    three: 5\n    six: 6\n"),
        (
            "config.yml",
            "---\n\nharpoon:\n    extra_files: extra.yml\none: 1\ntwo:\n    three: 3\n    four: 4\nimages:\n  app:\n    context: false\n    commands:\n      - [FROM, busybox]\n      - [ENV, [\"V {one} {two.three} {two.four} {two.six}\"]]\n",
        ),
    ]);
    assert_eq!(lines(&config, "app"), ["FROM busybox", "ENV V 1 5 4 6"]);
}

/// test_collector.py, "collects files in folders specified by images.__images_from__" and
/// "successfully prefixes included __images_from__": every yml in the folder and its
/// subfolders is an image named by the file; an image from such a file gets its own
/// folder as `{config_root}` (its context starts there); other folders are not read.
#[test]
fn images_from_folders_named_by_file_with_their_own_config_root() {
    let image = "{\"commands\": \"FROM ubuntu:14.04\"}";
    let (dir, config) = valid(&[
        ("one/two/three.yml", image),
        ("one/two/four.yml", image),
        ("one/five/.keep", ""),
        ("one/six/seven.yml", image),
        ("one/eight.yml", image),
        ("two/notseen.yml", image),
        ("config.yml", "{\"images\": {\"__images_from__\": \"one\"}}"),
    ]);
    let mut names: Vec<&str> = config.images.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["eight", "four", "seven", "three"]);
    let root = |image: &str| {
        config.images[image]
            .build
            .context
            .as_ref()
            .unwrap()
            .parent_dir
            .clone()
    };
    assert_eq!(root("three"), dir.path().join("one/two"));
    assert_eq!(root("four"), dir.path().join("one/two"));
    assert_eq!(root("seven"), dir.path().join("one/six"));
    assert_eq!(root("eight"), dir.path().join("one"));
    for image in ["three", "four", "seven", "eight"] {
        assert_eq!(lines(&config, image), ["FROM ubuntu:14.04"]);
        assert_eq!(config.images[image].full_name, format!("{image}:latest"));
    }
}

/// test_collector.py, "Image converters / uses root of configuration with image as an
/// override for the image converter": `{__image__.x}` reads the image's options over the
/// root's; a root `context: false` is every image's default.
#[test]
fn image_options_over_the_root_through_dunder_image() {
    let (_dir, config) = valid(&[(
        "config.yml",
        "context: false\nvars: {blah: 30, stuff: 40}\nimages:\n  blah:\n    commands: [[FROM, \"{__image__.vars.blah}-{__image__.vars.stuff}\"]]\n    vars: {stuff: 2}\n",
    )]);
    assert_eq!(lines(&config, "blah"), ["FROM 30-2"]);
    assert!(config.images["blah"].build.context.is_none());
}

/// test_image_specs.py, "Mount spec": `[local, container]`, `[local, container, perms]`,
/// `local:container`, `local:container:perms`; rw by default.
#[test]
fn mount_spec_forms() {
    let (dir, config) = valid(&[(
        "config.yml",
        "images:\n  app:\n    commands: \"FROM busybox\"\n    volumes:\n      mount:\n        - [data, /data]\n        - [data, /data, ro]\n        - data:/data\n        - data:/data:ro\n",
    )]);
    let mounts: Vec<(PathBuf, &str, bool)> = config.images["app"]
        .run
        .mounts
        .iter()
        .map(|m| (m.host.clone(), m.container.as_str(), m.read_only))
        .collect();
    let data = dir.path().join("data");
    assert_eq!(
        mounts,
        [
            (data.clone(), "/data", false),
            (data.clone(), "/data", true),
            (data.clone(), "/data", false),
            (data, "/data", true),
        ]
    );
}

/// test_image_specs.py, "Env spec": a name alone, `[name]`, `[name, default]`, `name:`
/// (empty default), `name=` (empty value), `name:default`, `name=value`; a default may hold
/// `=` as in harpoon (a value holding `:` is where dockhand differs).
#[test]
fn env_spec_forms() {
    let (_dir, config) = valid(&[(
        "config.yml",
        "images:\n  app:\n    commands: \"FROM busybox\"\n    env:\n      - ONE\n      - [TWO]\n      - [THREE, fallback]\n      - \"FOUR:\"\n      - FIVE=\n      - SIX:fallback\n      - SEVEN=value\n      - EIGHT:b=c\n      - NINE=http://x\n",
    )]);
    assert_eq!(
        config.images["app"].run.env,
        [
            env("ONE", EnvValue::FromHost),
            env("TWO", EnvValue::FromHost),
            env("THREE", EnvValue::FromHostOr("fallback".into())),
            env("FOUR", EnvValue::FromHostOr(String::new())),
            env("FIVE", EnvValue::Literal(String::new())),
            env("SIX", EnvValue::FromHostOr("fallback".into())),
            env("SEVEN", EnvValue::Literal("value".into())),
            env("EIGHT", EnvValue::FromHostOr("b=c".into())),
            // harpoon: a variable `NINE=http` defaulting to `//x`
            env("NINE", EnvValue::Literal("http://x".into())),
        ]
    );
}

/// test_image_specs.py, "Link spec / takes in as a list of 1 or two items" and "takes in
/// as a colon seperated list". (harpoon's default alias is the container's generated name;
/// dockhand's is the image's name. "doesn't need a container", a link to a container
/// outside the config, is refused: nothing outside the job is on its network.)
#[test]
fn link_spec_forms() {
    let (_dir, config) = valid(&[(
        "config.yml",
        "images:\n  db:\n    commands: \"FROM busybox\"\n  app:\n    commands: \"FROM busybox\"\n    links:\n      - [\"{images.db}\"]\n      - [\"{images.db}\", database]\n      - \"{images.db}:store\"\n",
    )]);
    let links: Vec<(&str, &str)> = config.images["app"]
        .run
        .links
        .iter()
        .map(|l| (l.image.as_str(), l.alias.as_str()))
        .collect();
    assert_eq!(links, [("db", "db"), ("db", "database"), ("db", "store")]);
}

/// test_image_specs.py, "Port spec": lists of 1 to 3 items and the colon forms, with and
/// without a transport.
#[test]
fn port_spec_forms() {
    let (_dir, config) = valid(&[(
        "config.yml",
        "images:\n  app:\n    commands: \"FROM busybox\"\n    ports:\n      - [70]\n      - [70/tcp]\n      - [80, 70]\n      - [10.0.0.1, 80, 70]\n      - \"70\"\n      - 70/tcp\n      - \"80:70\"\n      - \"10.0.0.1:80:70\"\n      - \"10.0.0.1::70\"\n      - \"10.0.0.1::70/udp\"\n",
    )]);
    let ports: Vec<(Option<&str>, Option<u16>, u16, &str)> = config.images["app"]
        .run
        .ports
        .iter()
        .map(|p| {
            (
                p.host_ip.as_deref(),
                p.host_port,
                p.container_port,
                p.protocol.as_str(),
            )
        })
        .collect();
    let ip = Some("10.0.0.1");
    assert_eq!(
        ports,
        [
            (None, None, 70, "tcp"),
            (None, None, 70, "tcp"),
            (None, Some(80), 70, "tcp"),
            (ip, Some(80), 70, "tcp"),
            (None, None, 70, "tcp"),
            (None, None, 70, "tcp"),
            (None, Some(80), 70, "tcp"),
            (ip, Some(80), 70, "tcp"),
            (ip, None, 70, "tcp"),
            (ip, None, 70, "udp"),
        ]
    );
}

/// test_harpoon_spec.py, "name_spec / task_name_spec": names with whitespace or symbols are
/// refused; letters, digits, `-` and `_` are fine. (harpoon also refuses a leading digit;
/// dockhand accepts it.)
#[test]
fn task_names() {
    let (_dir, config) = valid(&[(
        "config.yml",
        "images:\n  app:\n    commands: \"FROM busybox\"\n    tasks:\n      dasdf: {}\n      ka-sd: {}\n      j_k: {}\n      l0Tk-: {}\n      d9001: {}\n",
    )]);
    let names: Vec<&str> = config.tasks.keys().map(String::as_str).collect();
    assert_eq!(names, ["dasdf", "ka-sd", "j_k", "l0Tk-", "d9001"]);
    for name in [
        " adsf", "d  d", "d ", "^dasdf", "kasd$", "*k", "[", "}", "<",
    ] {
        let config = format!(
            "images:\n  app:\n    commands: \"FROM busybox\"\n    tasks:\n      \"{name}\": {{}}\n"
        );
        invalid(&config, &[(5, 7, "invalid task name")]);
    }
}

/// test_harpoon_spec.py, "task spec / creates a Task object for each task": an empty task
/// runs its image.
#[test]
fn task_spec_defaults() {
    let (_dir, config) = valid(&[(
        "config.yml",
        "images:\n  app:\n    commands: \"FROM busybox\"\n    command: \"true\"\n    tasks:\n      one: {}\n",
    )]);
    let task = &config.tasks["one"];
    assert_eq!(
        (task.image.as_str(), task.action),
        ("app", dockhand::collector::TaskAction::Run)
    );
}

/// test_command_specs.py, "array_command_spec": a one-item list is refused; a list value
/// is one line per item; values are formatted.
#[test]
fn array_commands() {
    invalid(
        "images:\n  app:\n    commands: [\"FROM busybox\", [\"ENV 1\"]]\n",
        &[(3, 32, "a list of 1 items")],
    );
    let (_dir, config) = valid(&[(
        "config.yml",
        "one: 1\ntwo: 2\nimages:\n  app:\n    commands:\n      - FROM busybox\n      - [ENV, [ONE, TWO, THREE]]\n      - [ENV, \"ONE {one}\"]\n      - [ENV, [\"ONE {one}\", \"TWO {two}\"]]\n",
    )]);
    assert_eq!(
        lines(&config, "app"),
        [
            "FROM busybox",
            "ENV ONE",
            "ENV TWO",
            "ENV THREE",
            "ENV ONE 1",
            "ENV ONE 1",
            "ENV TWO 2"
        ]
    );
}

/// test_command_specs.py, "convert_dict_command_spec": `{ADD: ...}` and `{COPY: ...}` are
/// commands; any other key is refused.
#[test]
fn mapping_commands() {
    let (_dir, config) = valid(&[(
        "config.yml",
        "images:\n  app:\n    commands:\n      - FROM busybox\n      - {ADD: {dest: /x, content: hello}}\n      - {COPY: {from: 1, path: /a, to: /b}}\n",
    )]);
    let lines = lines(&config, "app");
    assert!(
        lines[1].starts_with("ADD ") && lines[1].ends_with("--x /x"),
        "{lines:?}"
    );
    assert_eq!(lines[2], "COPY --from=1 /a /b");
    invalid(
        "images:\n  app:\n    commands:\n      - FROM busybox\n      - {blah: {content: blah, dest: somewhere}}\n",
        &[(5, 9, "a mapping command has one key, ADD or COPY")],
    );
}

/// test_command_specs.py, "has_a_space validator" and "string_command_spec": a command
/// string needs a space; it goes in unformatted.
#[test]
fn string_commands() {
    invalid(
        "images:\n  app:\n    commands: [\"FROM busybox\", \"CMDcacafire\"]\n",
        &[(
            3,
            32,
            "a Dockerfile line is an instruction and its arguments",
        )],
    );
    let (_dir, config) = valid(&[(
        "config.yml",
        "thing: x\nimages:\n  app:\n    commands: [\"FROM {thing}\", \"RUN a b  c\"]\n",
    )]);
    assert_eq!(lines(&config, "app"), ["FROM {thing}", "RUN a b  c"]);
    let (_dir, config) = valid(&[(
        "config.yml",
        "thing: x\nimages:\n  app:\n    commands: \"FROM {thing}\"\n",
    )]);
    assert_eq!(lines(&config, "app"), ["FROM {thing}"]);
}

/// test_command_specs.py, "command_spec / works": every form together, in order.
#[test]
fn command_spec_works() {
    let (_dir, config) = valid(&[(
        "config.yml",
        r#"
one: 1
two: 2
three: 3
image_name_prefix: somewhere
images:
  blah2:
    commands: ["FROM busybox"]
  blah3:
    commands: ["FROM busybox"]
  blah:
    commands:
      - "FROM somewhere as base"
      - ["FROM", "my-unique-image"]
      - "ADD something /somewhere"
      - "COPY --from=blah something /somewhere"
      - ["ENV ONE", "{one}"]
      - ["ENV", ["TWO {two}", "THREE {three}"]]
      - ["ADD", {"get": ["blah", "and", "stuff"], "prefix": "/projects"}]
      - {"ADD": {"content": "the content", "dest": "the_destination"}}
      - {"ADD": {"content": "the content", "dest": "the_destination2"}}
      - {"ADD": {"content": {"image": "{images.blah2}", "path": "/tmp/stuff"}, "dest": "the_destination3"}}
      - {"COPY": {"from": "{images.blah2}", "path": "/tmp/stuff", "to": "copy_destination"}}
      - {"COPY": {"from": 1, "path": "/tmp/stuff", "to": "copy_destination"}}
      - ["FROM", "{images.blah3}", "as wat"]
      - "COPY --from=wat things stuff"
      - "CMD cacafire"
"#,
    )]);
    // hashlib.md5(json.dumps({"content": "the content"}).encode()).hexdigest()
    let md5 = "2adff17334785fe0122808bc41975451";
    let expected = [
        "FROM somewhere as base".to_owned(),
        "FROM my-unique-image".into(),
        "ADD something /somewhere".into(),
        "COPY --from=blah something /somewhere".into(),
        "ENV ONE 1".into(),
        "ENV TWO 2".into(),
        "ENV THREE 3".into(),
        "ADD blah /projects/blah".into(),
        "ADD and /projects/and".into(),
        "ADD stuff /projects/stuff".into(),
        format!("ADD {md5}-the_destination the_destination"),
        format!("ADD {md5}-the_destination2 the_destination2"),
        // harpoon: ADD <md5>-the_destination3 the_destination3 (a file copied out first)
        "COPY --from=somewhere-blah2:latest /tmp/stuff the_destination3".into(),
        "COPY --from=somewhere-blah2:latest /tmp/stuff copy_destination".into(),
        "COPY --from=1 /tmp/stuff copy_destination".into(),
        "FROM somewhere-blah3:latest as wat".into(),
        "COPY --from=wat things stuff".into(),
        "CMD cacafire".into(),
    ];
    assert_eq!(lines(&config, "blah"), expected);
    let build = &config.images["blah"].build;
    assert_eq!(build.depends_on, ["blah2", "blah3"]);
    assert_eq!(build.external_bases, ["somewhere", "my-unique-image"]);
}

/// test_command_add_command_specs.py, "complex_ADD_spec": conflicting sources and a
/// missing `dest` are refused; `get` takes text or a list of text ("complains if get is
/// not a string or list").
#[test]
fn add_mappings_refused() {
    for (spec, column, message) in [
        (
            "{content: a, context: {parent_dir: .}, dest: /x}",
            15,
            "give exactly one of",
        ),
        ("{get: [a], prefix: /p, content: a}", 15, "ADD mapping"),
        (
            "{get: [a], prefix: /p, context: {parent_dir: .}}",
            15,
            "ADD mapping",
        ),
        ("{content: blah}", 15, "`dest` is required"),
        ("{context: {parent_dir: .}}", 15, "`dest` is required"),
        ("{get: {a: 1}}", 21, "expected a list"),
        (
            "{get: 0}",
            21,
            "expected a file name (text), found a number",
        ),
        (
            "{get: true}",
            21,
            "expected a file name (text), found a boolean",
        ),
        ("{get: null}", 21, "expected a file name or a list of them"),
        (
            "{get: [a, 1]}",
            25,
            "expected a file name (text), found a number",
        ),
    ] {
        let config = format!(
            "images:\n  app:\n    commands:\n      - FROM busybox\n      - [ADD, {spec}]\n"
        );
        invalid(&config, &[(5, column, message)]);
    }
}

/// test_command_add_command_specs.py, "With get" and "With string content": `get` adds
/// each file under its name or the prefix; content is a file named by harpoon's hash of it
/// and the destination.
#[test]
fn add_get_and_content() {
    let (_dir, config) = valid(&[(
        "config.yml",
        r#"
images:
  app:
    commands:
      - FROM busybox
      - [ADD, {get: [one, two, three]}]
      - [ADD, {get: [one, two, three], prefix: /project}]
      - [ADD, {content: "blah de blah blah da", dest: "/somewhere-nice"}]
"#,
    )]);
    // hashlib.md5(json.dumps({"content": "blah de blah blah da"}).encode()).hexdigest()
    let md5 = "d58686140363feadcdb270be0761cd97";
    assert_eq!(
        lines(&config, "app"),
        [
            "FROM busybox".to_owned(),
            "ADD one one".into(),
            "ADD two two".into(),
            "ADD three three".into(),
            "ADD one /project/one".into(),
            "ADD two /project/two".into(),
            "ADD three /project/three".into(),
            format!("ADD {md5}--somewhere-nice /somewhere-nice"),
        ]
    );
    let file = &config.images["app"].build.generated_files[0];
    assert_eq!(
        (file.name.as_str(), file.contents.as_str()),
        (
            format!("{md5}--somewhere-nice").as_str(),
            "blah de blah blah da"
        )
    );
}

/// test_commands.py (objs), "dependent_images" and "external_dependencies": FROM lines
/// name what the image needs; images of the config are built first, others must exist.
#[test]
fn dependent_and_external_images() {
    let (_dir, config) = valid(&[(
        "config.yml",
        r#"
images:
  image1:
    commands: ["FROM elsewhere"]
  image2:
    commands: ["FROM elsewhere"]
  app:
    commands:
      - [FROM, "{images.image1}", "as wat"]
      - "RUN 3 4"
      - "FROM meh:14 as stuff"
      - [COPY, {from: "{images.image2}", path: /a, to: /b}]
      - "FROM another"
"#,
    )]);
    let build = &config.images["app"].build;
    assert_eq!(build.depends_on, ["image1", "image2"]);
    assert_eq!(build.external_bases, ["meh:14", "another"]);
    assert_eq!(config.images["image1"].build.external_bases, ["elsewhere"]);
}

/// test_simple.py (objs), "Context object": the context defaults to the config's folder,
/// without .gitignore rules, including everything.
#[test]
fn context_defaults() {
    let (dir, config) = valid(&[(
        "config.yml",
        "images:\n  app:\n    commands: \"FROM busybox\"\n",
    )]);
    let context = config.images["app"].build.context.as_ref().unwrap();
    assert_eq!(context.parent_dir, dir.path());
    assert!(!context.use_gitignore);
    assert!(context.include.is_empty() && context.exclude.is_empty());
}

/// test_formatter.py: values from the configuration, nested paths, values that are
/// references themselves, `:env`, `:from_env`; an unset `:from_env`, and circular
/// references, are errors.
#[test]
fn formatter() {
    let config = "greeting: one\nfirst: \"{second}\"\nsecond: 2\nnested: {two: {three: 4, five: 5}, six: 6}\nimages:\n  app:\n    commands:\n      - FROM busybox\n      - [ENV, [\"A {greeting}\", \"B {first}\", \"C {nested.two.three}\", \"D {blah:env} stuff\", \"E {WAT_ENV:from_env} stuff\"]]\n";
    let dir = project(&[("config.yml", config)]);
    let collected = collect_with(dir.path(), &[("WAT_ENV", "value")]).unwrap();
    assert_eq!(
        lines(&collected.config, "app"),
        [
            "FROM busybox",
            "ENV A one",
            "ENV B 2",
            "ENV C 4",
            "ENV D ${blah} stuff",
            "ENV E value stuff"
        ]
    );
    invalid(
        "images:\n  app:\n    commands: [FROM busybox]\n    tasks: {t: {}}\npipeline:\n  - {task: t, env: [\"X={WAT_ENV_SURELY_UNSET:from_env}\"]}\n",
        &[(6, 21, "needs `WAT_ENV_SURELY_UNSET` in the environment")],
    );
    invalid(
        "one: \"{two}\"\ntwo: \"{one}\"\nimages:\n  app:\n    commands: [FROM busybox, [ENV, \"X {two}\"]]\n",
        &[(1, 6, "reference cycle: two -> one -> two")],
    );
}

/// test_formatter.py, "returns as is if formatting to just one value that is a dict": a
/// whole-value reference stands for the mapping.
#[test]
fn formatter_whole_value_mapping() {
    let (_dir, config) = valid(&[(
        "config.yml",
        "shared: {nofile: {name: nofile, soft: 1}}\nvolume_opts: {mount: [\"data:/data\"]}\nimages:\n  app:\n    commands: \"FROM busybox\"\n    volumes: \"{volume_opts}\"\n",
    )]);
    assert_eq!(config.images["app"].run.mounts.len(), 1);
}
