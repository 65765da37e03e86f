//! A fencing counter's row is removed a day after the permit it was taken with (a mutex per
//! order leaves no row behind), and a token taken after it is gone is still larger than every
//! token before (issue 13, item 13).

use errand_core::broker::{Coordination, FENCE_GRACE, PermitGrant, PermitRequest};
use errand_sqlite::SqliteBroker;
use std::time::Duration;

async fn take(b: &SqliteBroker, key: &str, holder: &str) -> u64 {
    match b
        .permit_acquire(PermitRequest {
            key,
            holder,
            max: 1,
            ttl: Duration::from_secs(30),
            fence: true,
        })
        .await
        .unwrap()
    {
        PermitGrant::Granted { token } => token,
        PermitGrant::Full { holder } => panic!("held by {holder}"),
    }
}

#[tokio::test]
async fn fence_rows_expire_and_tokens_still_grow() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.sqlite");
    let b = SqliteBroker::open(&path).await.unwrap();
    let t1 = take(&b, "mutex:order-1001", "a").await;
    let t2 = take(&b, "mutex:order-1001", "a").await;
    assert!(t2 > t1, "{t1} {t2}");
    let db = rusqlite::Connection::open(&path).unwrap();
    let (count, expires_at): (i64, f64) = db
        .query_row("SELECT COUNT(*), MAX(expires_at) FROM fences", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(count, 1);
    let now = errand_core::now();
    let life = (FENCE_GRACE + Duration::from_secs(30)).as_secs_f64();
    assert!(
        (now + life - 5.0..=now + life).contains(&expires_at),
        "the row lives a day past the permit: {} s",
        expires_at - now
    );
    // As if the day had passed: the next fenced acquisition (of any key) removes the row.
    db.execute("UPDATE fences SET expires_at = ?1", [now - 1.0])
        .unwrap();
    take(&b, "mutex:other", "x").await;
    let left: Vec<String> = db
        .prepare("SELECT key FROM fences")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(left, ["mutex:other"], "the expired row is gone");
    // A day later the clock is far past the last token; here, wait until it is past it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while (errand_core::now() * 1000.0) as u64 <= t2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock stood still"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(b.permit_release("mutex:order-1001", "a").await.unwrap());
    let t3 = take(&b, "mutex:order-1001", "b").await;
    assert!(
        t3 > t2,
        "a token after the row expired is still newer: {t2} → {t3}"
    );
}
