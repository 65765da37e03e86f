//! For the transactional-enqueue crash tests: opens the SQLite file `<path>` (or the
//! PostgreSQL database at a `postgres://` URL) as an application would, begins a transaction,
//! writes an order and pushes its job in it, prints `written`, and SIGKILLs itself before the
//! commit. Usage: `errand-tx-crash <path-or-url> <order-id>`.

use errand::{Client, Job, JobContext, JobResult};
use errand_sqlite::SqliteBroker;
use serde::{Deserialize, Serialize};
use std::io::Write;

#[derive(Serialize, Deserialize)]
struct SendReceipt {
    order_id: i64,
}

impl Job for SendReceipt {
    const NAME: &'static str = "SendReceipt";
    async fn perform(self, _cx: &JobContext) -> JobResult {
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("a path");
    let order: i64 = args.next().expect("an order id").parse()?;
    if path.starts_with("postgres://") {
        return postgres(&path, order).await;
    }
    let client = Client::new(SqliteBroker::open(&path).await?);
    let mut db = errand::sqlite::rusqlite::Connection::open(&path)?;
    let tx = db.transaction()?;
    tx.execute("INSERT INTO orders(id, total) VALUES (?1, 4500)", [order])?;
    client.push_tx(&tx, SendReceipt { order_id: order })?;
    println!("written");
    std::io::stdout().flush()?;
    // Killed between the business write (and the push) and the commit (`kill`, as the
    // workspace forbids unsafe code; the transaction is open meanwhile).
    std::process::Command::new("kill")
        .args(["-KILL", &std::process::id().to_string()])
        .status()?;
    std::thread::sleep(std::time::Duration::from_secs(60));
    drop(tx);
    anyhow::bail!("still alive after SIGKILL")
}

async fn postgres(url: &str, order: i64) -> anyhow::Result<()> {
    use errand::postgres::{PostgresBroker, tokio_postgres};
    let pg = PostgresBroker::connect(url).await?;
    let client = Client::new(pg.clone());
    let (mut db, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let tx = db.transaction().await?;
    tx.execute("INSERT INTO orders(id, total) VALUES ($1, 4500)", &[&order])
        .await?;
    client
        .push_pg_tx(&pg, &tx, SendReceipt { order_id: order })
        .await?;
    println!("written");
    std::io::stdout().flush()?;
    std::process::Command::new("kill")
        .args(["-KILL", &std::process::id().to_string()])
        .status()?;
    std::thread::sleep(std::time::Duration::from_secs(60));
    drop(tx);
    anyhow::bail!("still alive after SIGKILL")
}
