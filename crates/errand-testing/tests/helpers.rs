//! The testing helpers: fake mode with assertions, drain (nested jobs, retries and schedules on
//! the manual clock), inline mode, and performing a job directly.

use errand::{Job, JobContext, JobError, JobOptions, JobResult};
use errand_testing::TestJobs;
use serde::{Deserialize, Serialize};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the jobs did, shared through the server's data.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn add(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn seen(cx: &JobContext) -> Seen {
    cx.data::<Seen>().expect("shared").clone()
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct SignUp {
    user_id: u64,
    plan: String,
}

impl Job for SignUp {
    const NAME: &'static str = "SignUp";
    async fn perform(self, cx: &JobContext) -> JobResult {
        seen(cx).add(format!("signup:{}", self.user_id));
        cx.client()
            .push(WelcomeMail {
                user_id: self.user_id,
            })
            .await?;
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct WelcomeMail {
    user_id: u64,
}

impl Job for WelcomeMail {
    const NAME: &'static str = "WelcomeMail";
    fn options() -> JobOptions {
        JobOptions::default().queue("mailers")
    }
    async fn perform(self, cx: &JobContext) -> JobResult {
        seen(cx).add(format!("mail:{}", self.user_id));
        Ok(())
    }
}

/// Fails on its first attempt, succeeds on the retry.
#[derive(Serialize, Deserialize)]
struct FlakyApi(u64);

impl Job for FlakyApi {
    const NAME: &'static str = "FlakyApi";
    async fn perform(self, cx: &JobContext) -> JobResult {
        seen(cx).add(format!("api:{}:{:?}", self.0, cx.retry_count()));
        if cx.retry_count().is_none() {
            return Err(JobError::retry("503 from the API"));
        }
        Ok(())
    }
}

/// A logic error: straight to the dead set.
#[derive(Serialize, Deserialize)]
struct Broken;

impl Job for Broken {
    const NAME: &'static str = "Broken";
    fn options() -> JobOptions {
        JobOptions::default().retry(0)
    }
    async fn perform(self, _cx: &JobContext) -> JobResult {
        Err(JobError::retry("undefined method for nil").with_class("NoMethodError"))
    }
}

fn harness(seen: &Seen) -> TestJobs {
    let seen = seen.clone();
    TestJobs::with_server(move |s| {
        s.register::<SignUp>()
            .register::<WelcomeMail>()
            .register::<FlakyApi>()
            .register::<Broken>()
            .data(seen.clone())
    })
}

#[tokio::test]
async fn fake_mode_collects_pushes_for_assertions() {
    let jobs = TestJobs::new();
    let client = jobs.client();
    let job = SignUp {
        user_id: 7,
        plan: "pro".into(),
    };
    client.push(job.clone()).await.unwrap();
    client
        .push_in(Duration::from_secs(60), WelcomeMail { user_id: 8 })
        .await
        .unwrap();

    jobs.assert_enqueued(&job);
    jobs.assert_enqueued(&WelcomeMail { user_id: 8 });
    assert_eq!(jobs.enqueued::<SignUp>(), vec![job]);
    assert_eq!(
        jobs.enqueued::<WelcomeMail>(),
        vec![WelcomeMail { user_id: 8 }]
    );
    jobs.assert_none_enqueued::<FlakyApi>();

    let missing = std::panic::catch_unwind(AssertUnwindSafe(|| {
        jobs.assert_enqueued(&SignUp {
            user_id: 9,
            plan: "pro".into(),
        })
    }));
    let message = *missing
        .expect_err("a job that was not pushed fails the assertion")
        .downcast::<String>()
        .unwrap();
    assert!(
        message.contains(r#"expected SignUp[9,"pro"]"#) && message.contains(r#"SignUp[7,"pro"]"#),
        "the failure lists what is enqueued: {message}"
    );
    let present =
        std::panic::catch_unwind(AssertUnwindSafe(|| jobs.assert_none_enqueued::<SignUp>()));
    assert!(present.is_err(), "assert_none_enqueued fails when one is");

    jobs.clear();
    assert!(jobs.enqueued_payloads().is_empty());
}

#[tokio::test]
async fn drain_runs_jobs_and_the_jobs_they_enqueue_on_new_queues() {
    let seen = Seen::default();
    let jobs = harness(&seen);
    jobs.client()
        .push(SignUp {
            user_id: 1,
            plan: "free".into(),
        })
        .await
        .unwrap();
    let drained = jobs.drain().await;
    assert_eq!(drained.performed, 2);
    assert_eq!(drained.failed, 0);
    assert_eq!(seen.all(), vec!["signup:1", "mail:1"]);
    assert!(jobs.enqueued_payloads().is_empty());
    assert_eq!(jobs.drain().await.performed, 0, "nothing left");
}

#[tokio::test]
async fn the_clock_steps_through_retries_and_schedules() {
    let seen = Seen::default();
    let jobs = harness(&seen);
    let client = jobs.client();
    client.push(FlakyApi(1)).await.unwrap();
    client
        .push_in(Duration::from_secs(3600), WelcomeMail { user_id: 2 })
        .await
        .unwrap();

    let first = jobs.drain().await;
    assert_eq!((first.performed, first.failed), (1, 1));
    let retries = jobs.retries();
    assert_eq!(retries.len(), 1);
    assert_eq!(retries[0].retry_count(), Some(0));
    assert_eq!(
        retries[0].get("error_message"),
        Some(&"503 from the API".into())
    );
    assert_eq!(jobs.drain().await.performed, 0, "the retry is not due yet");

    // Sidekiq's first backoff is 15 s plus up to 10 s of jitter.
    jobs.advance(Duration::from_secs(26));
    assert_eq!(jobs.drain().await.performed, 1);
    assert!(jobs.retries().is_empty());
    assert_eq!(seen.all(), vec!["api:1:None", "api:1:Some(0)"]);
    jobs.assert_enqueued(&WelcomeMail { user_id: 2 });

    jobs.advance(Duration::from_secs(3600));
    assert_eq!(jobs.drain().await.performed, 1);
    assert_eq!(seen.all().last().unwrap(), "mail:2");
}

#[tokio::test]
async fn a_retry_zero_job_lands_in_the_dead_set() {
    let seen = Seen::default();
    let jobs = harness(&seen);
    jobs.client().push(Broken).await.unwrap();
    let drained = jobs.drain().await;
    assert_eq!((drained.performed, drained.failed), (1, 1));
    let dead = jobs.dead();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].get("error_class"), Some(&"NoMethodError".into()));
    assert!(jobs.retries().is_empty());
}

#[tokio::test]
async fn inline_mode_performs_at_push_and_returns_failures() {
    let seen = Seen::default();
    let shared = seen.clone();
    let jobs = TestJobs::inline(move |s| {
        s.register::<SignUp>()
            .register::<WelcomeMail>()
            .register::<Broken>()
            .data(shared.clone())
    });
    jobs.client()
        .push(SignUp {
            user_id: 3,
            plan: "pro".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        seen.all(),
        vec!["signup:3", "mail:3"],
        "the job and the job it pushed ran before push returned"
    );
    let err = jobs.client().push(Broken).await.unwrap_err();
    let text = format!("{err}: {:?}", err);
    assert!(
        text.contains("NoMethodError") && text.contains("undefined method for nil"),
        "the job's error comes back from the push: {text}"
    );
    assert!(jobs.enqueued_payloads().is_empty());
    assert!(jobs.retries().is_empty() && jobs.dead().is_empty());
}

#[tokio::test]
async fn perform_runs_one_job_with_a_test_context() {
    let seen = Seen::default();
    let jobs = harness(&seen);
    jobs.perform(WelcomeMail { user_id: 5 }).await.unwrap();
    assert_eq!(seen.all(), vec!["mail:5"]);
    let err = jobs.perform(Broken).await.unwrap_err();
    assert_eq!(err.class(), "NoMethodError");
    assert!(
        jobs.enqueued_payloads().is_empty(),
        "perform enqueues nothing"
    );
}

#[derive(Serialize, Deserialize)]
struct Report(u64);

impl Job for Report {
    const NAME: &'static str = "Report";
    fn options() -> JobOptions {
        JobOptions::default()
            .expires_in(Duration::from_secs(60))
            .keep_result(Duration::from_secs(600))
    }
    async fn perform(self, _cx: &JobContext) -> JobResult {
        Ok(())
    }
}

/// A bulk push writes the same job-control keys as a single push: the deadline (push time plus
/// `expires_in`) and how long the result is kept.
#[tokio::test]
async fn bulk_and_single_pushes_carry_the_same_control_keys() {
    let broker = errand_testing::MemoryBroker::new();
    let client = errand::Client::new(broker.clone());
    let before = errand_core::now();
    client.push(Report(0)).await.unwrap();
    client.push_bulk((1..3).map(Report)).await.unwrap();
    let queued = broker.queue("default");
    assert_eq!(queued.len(), 3);
    for raw in queued {
        let p = errand::Payload::parse(&raw).unwrap();
        let deadline = p.get(errand::EXPIRES_AT).and_then(|v| v.as_f64()).unwrap();
        assert!(
            deadline >= before + 60.0 && deadline < errand_core::now() + 60.5,
            "{raw}"
        );
        assert_eq!(
            p.get(errand::KEEP_RESULT).and_then(|v| v.as_f64()),
            Some(600.0),
            "{raw}"
        );
    }
}

/// A batch's callback, recording the batch's event and counts.
#[derive(Serialize, Deserialize)]
struct Summary;

impl Job for Summary {
    const NAME: &'static str = "Summary";
    async fn perform(self, cx: &JobContext) -> JobResult {
        let (bid, event) = cx.batch_callback().expect("a callback");
        let s = cx.client().batch_status(&bid).await?.expect("the batch");
        seen(cx).add(format!(
            "{}:{}/{} pending",
            event.as_str(),
            s.pending,
            s.total
        ));
        Ok(())
    }
}

/// Batches and workflows run under `drain` as on a server: the jobs, then the callbacks on
/// their own queue, each once.
#[tokio::test]
async fn drain_runs_a_batch_and_its_callbacks() {
    let seen = Seen::default();
    let shared = seen.clone();
    let jobs = TestJobs::with_server(move |b| {
        b.register::<SignUp>()
            .register::<WelcomeMail>()
            .register::<Summary>()
            .data(shared.clone())
    });
    let batch = errand::Batch::new(&jobs.client())
        .on_complete(Summary)
        .on_success(Summary)
        .open()
        .await
        .unwrap();
    batch
        .push_bulk((1..=3).map(|user_id| WelcomeMail { user_id }))
        .await
        .unwrap();
    batch.seal().await.unwrap();
    let drained = jobs.drain().await;
    assert_eq!(drained.performed, 5, "three jobs, two callbacks");
    let mut all = seen.all();
    all.sort();
    assert_eq!(
        all,
        vec![
            "complete:0/3 pending",
            "mail:1",
            "mail:2",
            "mail:3",
            "success:0/3 pending"
        ]
    );
}

/// A raw push (a job for another language) goes to the queue its `Push` names, as a typed push
/// does; before, `Push::queue` was ignored for raw pushes.
#[tokio::test]
async fn a_raw_push_goes_to_the_queue_its_push_names() {
    use errand::admin::Admin;
    let broker = errand_testing::MemoryBroker::new();
    let client = errand::Client::new(broker.clone());
    client
        .push_raw(
            errand::RawJob::new("Remote", vec![serde_json::json!(1)]),
            errand::Push::new().queue("elsewhere"),
        )
        .await
        .unwrap();
    let queues: Vec<(String, u64)> = broker
        .queues()
        .await
        .unwrap()
        .into_iter()
        .map(|q| (q.name, q.size))
        .collect();
    assert_eq!(queues, vec![("elsewhere".to_string(), 1)]);
}
