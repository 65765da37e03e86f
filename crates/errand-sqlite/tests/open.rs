//! Opening one fresh file from many connections at once (workers started together).

use errand_sqlite::SqliteBroker;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_openers_of_a_fresh_file_all_succeed() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = Arc::new(dir.path().join("jobs.sqlite"));
        let start = Arc::new(tokio::sync::Barrier::new(8));
        let openers: Vec<_> = (0..8)
            .map(|_| {
                let (path, start) = (path.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    SqliteBroker::open(path.as_path()).await.map(|_| ())
                })
            })
            .collect();
        for opener in openers {
            let opened = opener.await.unwrap();
            assert!(opened.is_ok(), "round {round}: {:?}", opened.err());
        }
    }
}
