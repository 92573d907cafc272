//! What every [`JobStore`] must do, as tests any backend runs through
//! [`job_store_conformance!`](crate::job_store_conformance): a factory of fresh, empty
//! stores in, one test per rule out. Lapses use short real durations, so a backend keeps
//! time as the server does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Accept, Expired, Finish, JobStore, LogAppend, NewEntry, Renew};
use crate::protocol::{
    ForgeEvent, ForgeKind, ForgeOrigin, JobResult, JobSpec, JobState, LogSummary, Registration,
};

/// Long enough never to lapse during a test.
const LONG: Duration = Duration::from_secs(60);

/// One test per rule, each on a fresh store from `$factory`, an async closure returning
/// `(store, guard)`; the guard (a temporary directory, a database) lives as long as the
/// test.
#[macro_export]
macro_rules! job_store_conformance {
    ($factory:expr) => {
        $crate::job_store_conformance!(@tests $factory;
            claims_are_taken_exactly_once_under_concurrency,
            offers_lapse_back_to_the_queue,
            leases_renew_and_lapse,
            labels_decide_who_is_offered_a_job,
            logs_append_by_offset_and_read_by_range,
            results_need_the_stored_logs_length_and_sha256,
            cancel_ends_waiting_jobs_and_tells_running_ones,
            events_are_acknowledged_up_to_the_first_gap,
            webhook_deliveries_make_one_job,
            jobs_list_newest_first,
            a_fresh_store_is_ready,
            stats_count_jobs_by_state_and_labels,
            forge_jobs_are_reported_once_per_state,
            the_outbox_sends_one_entry_per_ordering_at_a_time,
        );
    };
    (@tests $factory:expr; $($rule:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $rule() {
                let (store, _guard) = ($factory)().await;
                $crate::server::store::conformance::$rule(std::sync::Arc::new(store)).await;
            }
        )*
    };
}

fn spec(labels: &[&str]) -> JobSpec {
    serde_json::from_value(serde_json::json!({
        "source": {"git": "https://example.com/x.git", "ref": "main"},
        "tasks": ["test"],
        "labels": labels,
    }))
    .unwrap()
}

async fn agent<S: JobStore>(store: &S, labels: &[&str]) -> (String, Vec<String>) {
    let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
    let (id, token) = store
        .register_agent(&Registration {
            name: "conformance".into(),
            version: "0".into(),
            labels: labels.clone(),
            capacity: 1,
        })
        .await
        .unwrap();
    assert_eq!(
        store.agent_by_token(&token).await.unwrap(),
        Some((id.clone(), labels.clone()))
    );
    (id, labels)
}

/// Offers and accepts the next job for `agent`: (job id, lease id, job token).
async fn take<S: JobStore>(
    store: &S,
    agent: &(String, Vec<String>),
    lease: Duration,
) -> Option<(String, String, String)> {
    let offer = store.offer(&agent.0, &agent.1, LONG).await.unwrap()?;
    match store
        .accept(&offer.job_id, &offer.offer_id, &agent.0, lease)
        .await
        .unwrap()
    {
        Accept::Accepted {
            job,
            lease,
            job_token,
            first: true,
        } => {
            assert_eq!(job.state, JobState::Running);
            Some((offer.job_id, lease.lease_id, job_token))
        }
        other => panic!("accepting a fresh offer: {other:?}"),
    }
}

/// (offers returned, jobs lost).
fn counts(expired: Expired) -> (usize, usize) {
    (expired.returned.len(), expired.lost.len())
}

async fn state<S: JobStore>(store: &S, job: &str) -> JobState {
    store.job(job).await.unwrap().unwrap().state
}

fn result(status: &str, log: &[u8]) -> JobResult {
    JobResult {
        status: status.into(),
        exit_code: 0,
        stages: Vec::new(),
        started_at: None,
        finished_at: None,
        message: None,
        agent_job: None,
        log: LogSummary {
            bytes: log.len() as u64,
            sha256: crate::util::sha256_hex(log),
        },
    }
}

pub async fn claims_are_taken_exactly_once_under_concurrency<S: JobStore>(store: Arc<S>) {
    let mut jobs = Vec::new();
    for _ in 0..40 {
        jobs.push(store.create_job(&spec(&[]), None).await.unwrap());
    }
    let mut claimers = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        claimers.push(tokio::spawn(async move {
            let me = agent(&*store, &[]).await;
            let mut taken = Vec::new();
            while let Some((job, _, _)) = take(&*store, &me, LONG).await {
                taken.push(job);
            }
            taken
        }));
    }
    let mut times: HashMap<String, usize> = HashMap::new();
    for claimer in claimers {
        for job in claimer.await.unwrap() {
            *times.entry(job).or_default() += 1;
        }
    }
    for job in &jobs {
        assert_eq!(times.get(job), Some(&1), "{job} taken once");
        assert_eq!(state(&*store, job).await, JobState::Running);
    }
    assert_eq!(times.len(), jobs.len());
}

pub async fn offers_lapse_back_to_the_queue<S: JobStore>(store: Arc<S>) {
    let job = store.create_job(&spec(&[]), None).await.unwrap();
    let (first, second) = (agent(&*store, &[]).await, agent(&*store, &[]).await);
    let offer = store
        .offer(&first.0, &first.1, Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(offer.job_id, job);
    assert_eq!(state(&*store, &job).await, JobState::Offered);
    assert_eq!(store.offer(&second.0, &second.1, LONG).await.unwrap(), None);
    assert_eq!(counts(store.expire().await.unwrap()), (0, 0), "not yet");
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(counts(store.expire().await.unwrap()), (1, 0));
    assert_eq!(state(&*store, &job).await, JobState::Queued);
    let late = store
        .accept(&job, &offer.offer_id, &first.0, LONG)
        .await
        .unwrap();
    assert!(matches!(late, Accept::Conflict), "{late:?}");
    let again = store.offer(&second.0, &second.1, LONG).await.unwrap();
    assert_eq!(again.map(|o| o.job_id), Some(job.clone()));
    let unknown = store.accept("job-none", "offer-none", &second.0, LONG);
    assert!(matches!(unknown.await.unwrap(), Accept::NotFound));
}

pub async fn leases_renew_and_lapse<S: JobStore>(store: Arc<S>) {
    let job = store.create_job(&spec(&[]), None).await.unwrap();
    let me = agent(&*store, &[]).await;
    let offer = store.offer(&me.0, &me.1, LONG).await.unwrap().unwrap();
    let short = Duration::from_millis(300);
    let Accept::Accepted {
        lease,
        job_token,
        first: true,
        ..
    } = store
        .accept(&job, &offer.offer_id, &me.0, short)
        .await
        .unwrap()
    else {
        panic!("accepting a fresh offer");
    };
    assert!(store.job_token_valid(&job, &job_token).await.unwrap());
    assert!(!store.job_token_valid(&job, "forged").await.unwrap());
    let Accept::Accepted {
        lease: replayed,
        job_token: same_token,
        first: false,
        ..
    } = store
        .accept(&job, &offer.offer_id, &me.0, short)
        .await
        .unwrap()
    else {
        panic!("a replayed accept answers the same lease");
    };
    assert_eq!((replayed, same_token), (lease.clone(), job_token));
    // Renewing keeps the job past its first lease.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        match store.renew(&job, &lease.lease_id, short).await.unwrap() {
            Renew::Renewed(renewal) => assert!(!renewal.cancel),
            other => panic!("renewing a live lease: {other:?}"),
        }
        assert_eq!(counts(store.expire().await.unwrap()), (0, 0));
    }
    match store.renew(&job, "lease-other", short).await.unwrap() {
        Renew::Gone { state } => assert_eq!(state, JobState::Running),
        other => panic!("another lease: {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(counts(store.expire().await.unwrap()), (0, 1));
    assert_eq!(state(&*store, &job).await, JobState::Lost);
    match store.renew(&job, &lease.lease_id, short).await.unwrap() {
        Renew::Gone { state } => assert_eq!(state, JobState::Lost),
        other => panic!("a lapsed lease: {other:?}"),
    }
    store.revive(&job, LONG).await.unwrap();
    assert_eq!(state(&*store, &job).await, JobState::Running);
    assert!(matches!(
        store.renew(&job, &lease.lease_id, LONG).await.unwrap(),
        Renew::Renewed(_)
    ));
    assert!(matches!(
        store.renew("job-none", "lease-none", LONG).await.unwrap(),
        Renew::NotFound
    ));
}

pub async fn labels_decide_who_is_offered_a_job<S: JobStore>(store: Arc<S>) {
    let picky = store
        .create_job(&spec(&["linux", "docker"]), None)
        .await
        .unwrap();
    let linux = agent(&*store, &["linux"]).await;
    assert_eq!(store.offer(&linux.0, &linux.1, LONG).await.unwrap(), None);
    let open = store.create_job(&spec(&[]), None).await.unwrap();
    let offer = store.offer(&linux.0, &linux.1, LONG).await.unwrap();
    assert_eq!(
        offer.map(|o| o.job_id),
        Some(open),
        "the job it can take, behind one it cannot"
    );
    let both = agent(&*store, &["gpu", "docker", "linux"]).await;
    let offer = store.offer(&both.0, &both.1, LONG).await.unwrap();
    assert_eq!(offer.map(|o| o.job_id), Some(picky));
}

pub async fn logs_append_by_offset_and_read_by_range<S: JobStore>(store: Arc<S>) {
    store.create_job(&spec(&[]), None).await.unwrap();
    let me = agent(&*store, &[]).await;
    let (job, _, _) = take(&*store, &me, LONG).await.unwrap();
    let append = |offset, bytes: &'static [u8]| {
        let (store, job) = (store.clone(), job.clone());
        async move { store.append_log(&job, offset, bytes).await.unwrap() }
    };
    assert_eq!(append(0, b"hello ").await, LogAppend::Committed(6));
    assert_eq!(append(7, b"orld").await, LogAppend::Gap(6), "a hole");
    assert_eq!(append(6, b"world").await, LogAppend::Committed(11));
    assert_eq!(
        append(6, b"world").await,
        LogAppend::Committed(11),
        "a replay"
    );
    assert_eq!(
        append(0, b"hello world!\n").await,
        LogAppend::Committed(13),
        "a replay that goes further keeps only its new bytes"
    );
    let read = |from, max| {
        let (store, job) = (store.clone(), job.clone());
        async move { store.read_log(&job, from, max).await.unwrap().unwrap() }
    };
    assert_eq!(read(0, u64::MAX).await, b"hello world!\n");
    assert_eq!(read(6, 5).await, b"world");
    assert_eq!(read(11, 100).await, b"!\n");
    assert_eq!(read(13, 100).await, b"");
    assert_eq!(read(50, 100).await, b"");
    assert_eq!(store.job(&job).await.unwrap().unwrap().log_bytes, 13);
    assert_eq!(store.read_log("job-none", 0, 10).await.unwrap(), None);
    assert_eq!(
        store.append_log("job-none", 0, b"x").await.unwrap(),
        LogAppend::NotFound
    );
    let queued = store.create_job(&spec(&[]), None).await.unwrap();
    assert_eq!(
        store.append_log(&queued, 0, b"x").await.unwrap(),
        LogAppend::NotRunning
    );
}

pub async fn results_need_the_stored_logs_length_and_sha256<S: JobStore>(store: Arc<S>) {
    store.create_job(&spec(&[]), None).await.unwrap();
    store.create_job(&spec(&[]), None).await.unwrap();
    let me = agent(&*store, &[]).await;
    let (job, _, _) = take(&*store, &me, LONG).await.unwrap();
    let log = b"line one\nline two\n";
    store.append_log(&job, 0, &log[..9]).await.unwrap();
    let incomplete = Finish::LogIncomplete { committed: 9 };
    assert_eq!(
        store.finish(&job, &result("succeeded", log)).await.unwrap(),
        incomplete,
        "the log is short"
    );
    store.append_log(&job, 9, &log[9..]).await.unwrap();
    let mut forged = result("succeeded", log);
    forged.log.sha256 = crate::util::sha256_hex(b"line one\nline 2!!\n");
    assert_eq!(
        store.finish(&job, &forged).await.unwrap(),
        Finish::LogIncomplete { committed: 18 },
        "the same length, another digest"
    );
    assert_eq!(state(&*store, &job).await, JobState::Running);
    let kept = result("succeeded", log);
    assert_eq!(store.finish(&job, &kept).await.unwrap(), Finish::Recorded);
    let view = store.job(&job).await.unwrap().unwrap();
    assert_eq!(
        (view.state, view.result.as_ref()),
        (JobState::Succeeded, Some(&kept))
    );
    assert_eq!(
        store.finish(&job, &kept).await.unwrap(),
        Finish::Recorded,
        "a repeated report"
    );
    assert_eq!(
        store.append_log(&job, 18, b"more").await.unwrap(),
        LogAppend::NotRunning
    );
    // A status that is no final state ends the job in error; an empty log has a digest.
    let (other, _, _) = take(&*store, &me, LONG).await.unwrap();
    let odd = result("running", b"");
    assert_eq!(store.finish(&other, &odd).await.unwrap(), Finish::Recorded);
    assert_eq!(state(&*store, &other).await, JobState::Error);
    let queued = store.create_job(&spec(&[]), None).await.unwrap();
    assert_eq!(
        store.finish(&queued, &odd).await.unwrap(),
        Finish::NotRunning
    );
    assert_eq!(
        store.finish("job-none", &odd).await.unwrap(),
        Finish::NotFound
    );
}

pub async fn cancel_ends_waiting_jobs_and_tells_running_ones<S: JobStore>(store: Arc<S>) {
    let me = agent(&*store, &[]).await;
    let running = store.create_job(&spec(&[]), None).await.unwrap();
    let (taken, lease, _) = take(&*store, &me, LONG).await.unwrap();
    assert_eq!(taken, running);
    let offered = store.create_job(&spec(&[]), None).await.unwrap();
    store.offer(&me.0, &me.1, LONG).await.unwrap().unwrap();
    let queued = store.create_job(&spec(&[]), None).await.unwrap();
    for job in [&queued, &offered, &running] {
        assert!(store.cancel(job, "no longer wanted").await.unwrap());
    }
    assert!(!store.cancel("job-none", "no").await.unwrap());
    for job in [&queued, &offered] {
        let view = store.job(job).await.unwrap().unwrap();
        assert_eq!(view.state, JobState::Cancelled);
        assert!(view.finished_at.is_some());
    }
    assert_eq!(store.offer(&me.0, &me.1, LONG).await.unwrap(), None);
    assert_eq!(state(&*store, &running).await, JobState::Running);
    match store.renew(&running, &lease, LONG).await.unwrap() {
        Renew::Renewed(renewal) => {
            assert!(renewal.cancel);
            assert_eq!(renewal.reason.as_deref(), Some("no longer wanted"));
        }
        other => panic!("renewing a cancelled job's lease: {other:?}"),
    }
    let done = result("cancelled", b"");
    assert_eq!(
        store.finish(&running, &done).await.unwrap(),
        Finish::Recorded
    );
    assert_eq!(state(&*store, &running).await, JobState::Cancelled);
}

pub async fn events_are_acknowledged_up_to_the_first_gap<S: JobStore>(store: Arc<S>) {
    let job = store.create_job(&spec(&[]), None).await.unwrap();
    let events = |seqs: &[i64]| -> Vec<serde_json::Value> {
        seqs.iter()
            .map(|seq| serde_json::json!({"seq": seq, "type": "x"}))
            .collect()
    };
    let add = |seqs: Vec<serde_json::Value>| {
        let (store, job) = (store.clone(), job.clone());
        async move { store.add_events(&job, &seqs).await.unwrap() }
    };
    assert_eq!(add(events(&[1, 2, 4])).await, Some(2));
    assert_eq!(add(events(&[2, 3])).await, Some(4), "the gap is filled");
    assert_eq!(add(events(&[1])).await, Some(4), "a replay");
    assert_eq!(store.add_events("job-none", &[]).await.unwrap(), None);
}

pub async fn webhook_deliveries_make_one_job<S: JobStore>(store: Arc<S>) {
    let keys = ["github:id:1".to_owned(), "github:body:ab".to_owned()];
    let (first, created) = store
        .create_job_once(&spec(&[]), None, &keys)
        .await
        .unwrap();
    assert!(created);
    let (again, created) = store
        .create_job_once(&spec(&[]), None, &keys[1..])
        .await
        .unwrap();
    assert_eq!((again.as_str(), created), (first.as_str(), false));
    let other = ["github:id:2".to_owned()];
    let (second, created) = store
        .create_job_once(&spec(&[]), None, &other)
        .await
        .unwrap();
    assert!(created && second != first);
    assert_eq!(store.jobs(100).await.unwrap().len(), 2);
}

pub async fn jobs_list_newest_first<S: JobStore>(store: Arc<S>) {
    let mut made = Vec::new();
    for labels in [&["a"][..], &[], &["b", "c"]] {
        made.push(store.create_job(&spec(labels), None).await.unwrap());
    }
    let listed: Vec<String> = store
        .jobs(100)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    made.reverse();
    assert_eq!(listed, made);
    assert_eq!(store.jobs(2).await.unwrap().len(), 2);
    let view = store.job(&made[0]).await.unwrap().unwrap();
    assert_eq!(
        (view.state, view.spec, view.log_bytes, view.agent_id),
        (JobState::Queued, spec(&["b", "c"]), 0, None)
    );
    assert_eq!(store.job("job-none").await.unwrap(), None);
}

pub async fn a_fresh_store_is_ready<S: JobStore>(store: Arc<S>) {
    store.ready().await.unwrap();
}

pub async fn stats_count_jobs_by_state_and_labels<S: JobStore>(store: Arc<S>) {
    assert_eq!(store.stats().await.unwrap().jobs, []);
    let gpu = store.create_job(&spec(&["gpu"]), None).await.unwrap();
    store.create_job(&spec(&["gpu"]), None).await.unwrap();
    store.create_job(&spec(&[]), None).await.unwrap();
    let me = agent(&*store, &["gpu"]).await;
    let (job, _, token) = take(&*store, &me, LONG).await.unwrap();
    assert_eq!(job, gpu, "the oldest job is offered first");
    assert!(store.job_token_valid(&job, &token).await.unwrap());
    store.append_log(&job, 0, b"12345").await.unwrap();
    let mut stats = store.stats().await.unwrap();
    stats
        .jobs
        .sort_by_key(|(state, labels, _)| (state.as_str(), labels.clone()));
    let gpu = vec!["gpu".to_owned()];
    assert_eq!(
        stats.jobs,
        [
            (JobState::Queued, vec![], 1),
            (JobState::Queued, gpu.clone(), 1),
            (JobState::Running, gpu, 1),
        ]
    );
    assert_eq!(stats.log_bytes, 5);
    assert_eq!(stats.running_agents, [me.0]);
}

fn pull_request(number: u64) -> ForgeOrigin {
    ForgeOrigin {
        forge: ForgeKind::Github,
        repository: "team/app".to_owned(),
        event: ForgeEvent::PullRequest,
        commit: "c".repeat(40),
        reference: Some("feature".to_owned()),
        pull_request: Some(number),
        fork: true,
    }
}

fn entry(ordering: &str, n: i64) -> NewEntry {
    NewEntry {
        ordering: ordering.to_owned(),
        repository: "team/app".to_owned(),
        body: serde_json::json!({ "n": n }),
    }
}

pub async fn forge_jobs_are_reported_once_per_state<S: JobStore>(store: Arc<S>) {
    let origin = pull_request(7);
    let job = store.create_job(&spec(&[]), Some(&origin)).await.unwrap();
    store.create_job(&spec(&[]), None).await.unwrap();
    let view = store.job(&job).await.unwrap().unwrap();
    assert_eq!(view.origin.as_ref(), Some(&origin));
    let stream = origin.stream();
    assert_eq!(
        store.active_in_stream(&stream).await.unwrap(),
        std::slice::from_ref(&job)
    );
    let unreported = store.unreported(10).await.unwrap();
    assert_eq!(unreported.len(), 1, "only jobs with an origin are reported");
    assert_eq!(
        (unreported[0].job.id.as_str(), unreported[0].reported),
        (job.as_str(), None)
    );
    let queued = [entry("a", 1)];
    assert!(
        !(store
            .mark_reported(&job, JobState::Running, None, &queued)
            .await
            .unwrap()),
        "a state the job is not in is not reported"
    );
    assert!(
        store
            .mark_reported(&job, JobState::Queued, None, &queued)
            .await
            .unwrap()
    );
    assert!(
        !store
            .mark_reported(&job, JobState::Queued, None, &queued)
            .await
            .unwrap(),
        "a second reporter (another replica) queues nothing"
    );
    assert!(store.unreported(10).await.unwrap().is_empty());
    assert_eq!(store.outbox_len().await.unwrap(), 1);
    assert_eq!(store.stream_outcome(&stream).await.unwrap(), None);
    store.cancel(&job, "closed").await.unwrap();
    assert!(store.active_in_stream(&stream).await.unwrap().is_empty());
    let unreported = store.unreported(10).await.unwrap();
    assert_eq!(
        (unreported[0].job.state, unreported[0].reported),
        (JobState::Cancelled, Some(JobState::Queued))
    );
    let outcome = Some((stream.as_str(), false));
    assert!(
        store
            .mark_reported(&job, JobState::Cancelled, outcome, &[])
            .await
            .unwrap()
    );
    assert_eq!(store.stream_outcome(&stream).await.unwrap(), Some(false));
    let outcome = Some((stream.as_str(), true));
    let again = store.create_job(&spec(&[]), Some(&origin)).await.unwrap();
    assert!(
        store
            .mark_reported(&again, JobState::Queued, outcome, &[])
            .await
            .unwrap()
    );
    assert_eq!(store.stream_outcome(&stream).await.unwrap(), Some(true));
}

pub async fn the_outbox_sends_one_entry_per_ordering_at_a_time<S: JobStore>(store: Arc<S>) {
    let job = store
        .create_job(&spec(&[]), Some(&pull_request(1)))
        .await
        .unwrap();
    let entries = [
        entry("commit-a", 1),
        entry("commit-a", 2),
        entry("commit-b", 3),
    ];
    assert!(
        store
            .mark_reported(&job, JobState::Queued, None, &entries)
            .await
            .unwrap()
    );
    let bodies = |due: &[super::OutboxEntry]| -> Vec<i64> {
        due.iter().map(|e| e.body["n"].as_i64().unwrap()).collect()
    };
    let due = store.outbox_due(10, LONG).await.unwrap();
    assert_eq!(bodies(&due), [1, 3], "the oldest of each ordering");
    assert!(
        store.outbox_due(10, LONG).await.unwrap().is_empty(),
        "held for its sender"
    );
    store.outbox_done(due[0].id).await.unwrap();
    assert_eq!(bodies(&store.outbox_due(10, LONG).await.unwrap()), [2]);
    store
        .outbox_retry(due[1].id, Duration::ZERO, "HTTP 500")
        .await
        .unwrap();
    let retried = store.outbox_due(10, LONG).await.unwrap();
    assert_eq!((bodies(&retried), retried[0].attempts), (vec![3], 1));
    assert_eq!(retried[0].ordering, "commit-b");
    assert_eq!(store.outbox_len().await.unwrap(), 2);
}
