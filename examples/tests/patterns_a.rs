//! Runs the examples on idempotency, retry policies, error classification and service objects,
//! and checks the outcome each reports. Each example also asserts its own outcome and exits
//! non-zero when it does not hold.

use errand_examples::{assert_line, run_example};

#[test]
fn idempotent_upsert() {
    let out = run_example(env!("CARGO_BIN_EXE_idempotent_upsert"));
    assert_line(&out, "ok: 6 writes, 2 rows, one per order");
    assert_line(&out, "order 1001: total 4500 cents, 3 items");
    assert_line(&out, "order 1002: total 1299 cents, 1 items");
}

#[test]
fn email_once() {
    let out = run_example(env!("CARGO_BIN_EXE_email_once"));
    assert_line(
        &out,
        "ok: 1 email in the outbox, sent once, job ran 2 times",
    );
    assert_line(&out, "the job ran 2 times; the email step ran 1 time");
    assert_eq!(
        out.matches("sent the receipt to ada@example.com").count(),
        1,
        "{out}"
    );
}

#[test]
fn retry_policies() {
    let out = run_example(env!("CARGO_BIN_EXE_retry_policies"));
    assert_line(
        &out,
        "ok: rates synced on attempt 3 of 6; invoice import dead after 1 attempt, 0 retries",
    );
    assert_line(&out, "SyncExchangeRates attempt 3: 1 EUR = 1.08 USD");
    assert_line(
        &out,
        "dead set: ImportInvoice (Invoice::ParseError: amount \"12,50\": invalid float literal), \
         retry_count Some(0)",
    );
}

#[test]
fn error_classification() {
    let out = run_example(env!("CARGO_BIN_EXE_error_classification"));
    assert_line(
        &out,
        "ok: network error retried once, then paid; card declined: 1 attempt, 0 retries, 0 dead",
    );
    assert_line(&out, "payment 1: paid, attempts: 2");
    assert_line(&out, "payment 2: declined, attempts: 1");
}

#[test]
fn service_object() {
    let out = run_example(env!("CARGO_BIN_EXE_service_object"));
    assert_line(
        &out,
        "ok: signup completed for user 1, user 2 skipped, 0 failures",
    );
    assert_line(&out, "user 2 no longer exists; nothing to do");
}
