//! Fencing tokens on Redis: the fetch script writes each job's in-flight field as its token in
//! decimal, built from a shared prefix and two last digits (no `snprintf` per job). Fields must
//! equal the tokens exactly across every carry (…99 → …00, a prefix growing a digit, the first
//! hundred tokens with no prefix, cluster-mode-sized tokens), or acks would miss their jobs.

use errand_core::broker::{Completion, Enqueue, FetchRequest, JobQueue};
use errand_redis::RedisBroker;
use errand_tests::RedisServer;
use redis::AsyncCommands;
use std::time::Duration;

#[tokio::test]
async fn in_flight_fields_are_the_tokens_in_decimal_across_every_carry() {
    let redis = RedisServer::start();
    let b = RedisBroker::connect(&redis.url()).await.unwrap();
    let mut conn = b.connection();
    let queues = vec!["tokens".to_string()];
    let me = "host:1:tokens";
    let inflight = b.keys().inflight(me, "tokens");
    // Counter values before the fetch: fresh, just under 100, a carry into a new digit, and
    // microseconds since the epoch (cluster mode's tokens), each followed by 250 jobs.
    for start in [0_u64, 95, 9_999_990, 1_765_000_000_123_399] {
        let _: () = conn
            .set(b.keys().fetch_seq_in(0), start.to_string())
            .await
            .unwrap();
        let jobs: Vec<Enqueue> = (0..250)
            .map(|n| Enqueue {
                queue: "tokens".into(),
                payload: format!(
                    r#"{{"class":"Work","args":[{n}],"jid":"t{start}-{n}","queue":"tokens"}}"#
                ),
            })
            .collect();
        b.push(&jobs).await.unwrap();
        let got = b
            .fetch(FetchRequest {
                identity: me,
                queues: &queues,
                max: 250,
                wait: Duration::ZERO,
            })
            .await
            .unwrap();
        assert_eq!(got.len(), 250, "from {start}");
        let tokens: Vec<u64> = got.iter().map(|j| j.token).collect();
        let want: Vec<u64> = (start + 1..=start + 250).collect();
        assert_eq!(tokens, want, "consecutive tokens from {start}");
        let mut fields: Vec<String> = conn.hkeys(&inflight).await.unwrap();
        fields.sort_by_key(|f| (f.len(), f.clone()));
        let want: Vec<String> = want.iter().map(u64::to_string).collect();
        assert_eq!(fields, want, "fields from {start}");
        // Each field holds its own job, and every ack finds its job.
        for job in &got {
            let held: String = conn.hget(&inflight, job.token.to_string()).await.unwrap();
            assert_eq!(held, job.raw, "token {}", job.token);
        }
        let acks: Vec<Completion<'_>> = got.iter().map(Completion::Ack).collect();
        let held = b.complete_many(&acks).await.unwrap();
        assert!(
            held.iter().all(|h| *h),
            "every ack from {start} held its job"
        );
        let left: usize = conn.hlen(&inflight).await.unwrap();
        assert_eq!(left, 0, "nothing left in flight from {start}");
    }
}
