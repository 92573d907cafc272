//! A task's own test reports (`reports.junit`) against the real engine: copied out of the
//! finished container through the archive API, real runners' samples counted, a link to
//! `/etc/shadow` not followed, a passing exit with failing tests failing its stage (or
//! not), and malformed, missing and oversized reports as warnings.

mod support;

use support::Project;

const SAMPLES: &[&str] = &[
    "pytest.xml",
    "cargo-nextest.xml",
    "surefire.xml",
    "gotestsum.xml",
    "jest.xml",
];

/// A project whose image holds the real runners' samples in /fixtures.
fn project(config: &str) -> Project {
    let project = Project::new(config);
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/junit");
    for sample in SAMPLES {
        let xml = std::fs::read_to_string(samples.join(sample)).unwrap();
        project.write(&format!("junit/{sample}"), &xml);
    }
    project
}

#[test]
fn a_tasks_reports_are_counted_and_a_passing_exit_with_failures_fails_its_stage() {
    let project = project(
        r#"
tag: t-reports-real
commands: [FROM dockhand/busybox:local, "COPY junit/ /fixtures/", "WORKDIR /out"]
bash: "mkdir -p results && cp /fixtures/*.xml results/ && ln -s /etc/shadow results/shadow.xml && echo built > results/notes.txt"
reports:
  junit: ["results/*.xml"]
"#,
    );
    let run = project.run(&["run"]);
    assert_eq!(run.code, Some(1), "{run}");
    let stage = run.stage("run", "t-reports-real");
    assert_eq!(stage["status"], "failed", "{stage:#}");
    assert_eq!(stage["exit_code"], 0);
    assert_eq!(
        stage["message"],
        "exited 0 but its test report has 18 failing tests"
    );
    let tests = &stage["tests"];
    // The samples' own counts (see the unit test in src/testreport.rs), summed.
    assert_eq!(
        (
            tests["passed"].as_u64(),
            tests["failed"].as_u64(),
            tests["skipped"].as_u64(),
            tests["errors"].as_u64()
        ),
        (Some(47), Some(17), Some(6), Some(1)),
        "{tests:#}"
    );
    let failures = tests["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 18);
    let pytest_failure = failures
        .iter()
        .find(|f| f["name"] == "test_fails")
        .unwrap_or_else(|| panic!("{failures:#?}"));
    assert_eq!(pytest_failure["class"], "test_sample");
    assert!(
        pytest_failure["message"]
            .as_str()
            .unwrap()
            .starts_with("AssertionError: lists differ"),
        "{pytest_failure:#}"
    );
    assert!(
        pytest_failure["output"]
            .as_str()
            .unwrap()
            .contains("some output before the failure"),
        "{pytest_failure:#}"
    );
    // The link is the container's own and stays a link: it is skipped, never read.
    let warnings = tests["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .starts_with("/out/results/shadow.xml: not a regular file"),
        "{warnings:#?}"
    );
    assert!(!run.result().to_string().contains("root:"), "{run}");

    assert!(
        run.stdout
            .contains("run t-reports-real: 47 passed, 17 failed, 1 errors, 6 skipped"),
        "{run}"
    );
    assert!(
        run.stdout.contains(
            "    failed: org.apache.maven.surefire.test.FailingTest :: setTestAndRetrieveValue"
        ),
        "{run}"
    );

    let junit = std::fs::read_to_string(run.results.as_ref().unwrap().join("junit.xml")).unwrap();
    let suite = format!(
        r#"<testsuite name="dockhand job {} / run t-reports-real" tests="71" failures="17" errors="1" skipped="6""#,
        run.job_id()
    );
    assert!(junit.contains(&suite), "{junit}");
    assert!(
        junit
            .contains(r#"<testcase classname="fixture-project::basic" name="test_failure_assert""#),
        "{junit}"
    );
}

#[test]
fn failing_tests_leave_the_stage_passed_when_so_configured_and_bad_reports_are_warnings() {
    let project = project(
        r#"
tag: t-reports-lenient
commands: [FROM dockhand/busybox:local, "COPY junit/ /fixtures/"]
bash: |
  mkdir -p /out && cp /fixtures/surefire.xml /out/
  printf '<testsuite>\n<testcase name="ok"/>\n<testcase name="cut"></wrong>\n' > /out/broken.xml
  yes '<testcase name="x"/>' | head -c 70000000 > /out/huge.xml
reports:
  junit: [/out/surefire.xml, /out/broken.xml, /out/huge.xml, /nowhere/*.xml]
  fail_on_failures: false
"#,
    );
    let run = project.run(&["run"]);
    assert_eq!(run.code, Some(0), "{run}");
    let stage = run.stage("run", "t-reports-lenient");
    assert_eq!(stage["status"], "passed", "{stage:#}");
    assert_eq!(
        stage["message"],
        "exited 0 but its test report has 2 failing tests (reports.fail_on_failures is off)"
    );
    let tests = &stage["tests"];
    assert_eq!(tests["failed"], 2, "{tests:#}");
    // The huge file is read up to its cap: millions of cases counted, none kept past it.
    assert!(tests["passed"].as_u64().unwrap() > 3_000_000, "{tests:#}");
    let warnings: Vec<&str> = tests["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    let has = |start: &str| warnings.iter().any(|w| w.starts_with(start));
    assert!(has("/out/broken.xml:3: not well-formed"), "{warnings:#?}");
    assert!(
        has("/out/huge.xml: 70000000 bytes, over the 64 MiB"),
        "{warnings:#?}"
    );
    assert!(
        has("/nowhere/*.xml: not found in the container"),
        "{warnings:#?}"
    );
    assert!(
        has("/out/huge.xml: more than 10000 test cases; junit.xml keeps the first"),
        "{warnings:#?}"
    );
    assert_eq!(warnings.len(), 5, "{warnings:#?}");
    assert!(
        run.stdout.contains("test report: /out/broken.xml:3"),
        "{run}"
    );
}

#[test]
fn report_settings_are_checked_where_they_are_written() {
    let project = Project::new(
        r#"
tag: t-reports-bad
context: false
commands: [FROM dockhand/busybox:local]
reports:
  junit: ["../etc/*.xml"]
  fail_on_failure: true
"#,
    );
    let run = project.run(&["run"]);
    assert_ne!(run.code, Some(0), "{run}");
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("reports.junit[0]"), "{run}");
    assert!(all.contains("`..` is not allowed"), "{run}");
    assert!(all.contains("fail_on_failure"), "{run}");
}
