//! Runs the examples on external APIs, death handling and queue priorities, and checks the
//! outcome each reports. Each example also asserts its own outcome and exits non-zero when it
//! does not hold.

use errand_examples::{assert_line, run_example};

#[test]
fn charge_with_idempotency_key() {
    let out = run_example(env!("CARGO_BIN_EXE_charge_with_idempotency_key"));
    assert_line(&out, "ok: 3 attempts, 3 requests, 1 charge");
    assert_line(
        &out,
        "attempt 2: no response from the payment API; retrying",
    );
    assert_line(
        &out,
        "attempt 3: order 1001 paid by ch_1 (the API replayed its first answer)",
    );
}

#[test]
fn death_webhook() {
    let out = run_example(env!("CARGO_BIN_EXE_death_webhook"));
    assert_line(&out, "ok: 1 alert posted, 1 job in the dead set");
    assert_line(
        &out,
        "alert received: SyncInventory died: WarehouseUnavailable: warehouse 7 answered 503 Service Unavailable",
    );
}

#[test]
fn dead_set_limits() {
    let out = run_example(env!("CARGO_BIN_EXE_dead_set_limits"));
    assert_line(&out, "ok: size trim kept 3 of 5, age trim kept 1 of 4");
    assert_line(
        &out,
        "after 5 deaths with max_jobs 3: dead set holds feeds [3, 4, 5]",
    );
    assert_line(
        &out,
        "after max_age passed, 1 more death: dead set holds feeds [6]",
    );
}

#[test]
fn weighted_queues() {
    let out = run_example(env!("CARGO_BIN_EXE_weighted_queues"));
    assert_line(
        &out,
        "ok: 1000000 rows exported; the password reset did not wait for the export",
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("exported 1000000 rows (") && l.contains("in 1000 chunks")),
        "{out}"
    );
}

#[test]
fn periodic() {
    let out = run_example(env!("CARGO_BIN_EXE_periodic"));
    assert!(
        out.lines().any(|l| l.starts_with("ok: ")
            && l.ends_with(" ticks two seconds apart, each enqueued once by one of 2 servers")),
        "{out}"
    );
    assert!(
        out.lines()
            .filter(|l| l.contains(" ran once, on server "))
            .count()
            >= 3,
        "{out}"
    );
}

#[test]
fn job_control() {
    let out = run_example(env!("CARGO_BIN_EXE_job_control"));
    assert_line(
        &out,
        "ok: export cancelled while running, invoice total 2149 read back, late notification \
         dropped, 5 reindex pushes ran once (4 replaced)",
    );
    assert_line(&out, "reindexed product 42 at revision 5");
    assert!(out.contains("cancel: Running("), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("export 7 stopped after ")),
        "{out}"
    );
}

#[test]
fn batch_import() {
    let out = run_example(env!("CARGO_BIN_EXE_batch_import"));
    assert_line(
        &out,
        "ok: 499 of 500 rows imported, 1 dead (row 250: invalid email), rows 17 and 333 \
         retried once; the report ran once after the last row and the alert once; no success",
    );
    assert_line(&out, "complete callback: 501 jobs, 0 pending, 1 dead");
}

#[test]
fn workflow_report() {
    let out = run_example(env!("CARGO_BIN_EXE_workflow_report"));
    assert_line(
        &out,
        "ok: night 1 report EUR 19600 after its four steps; night 2 rates died, convert and \
         report cancelled, archive ran",
    );
    assert_line(
        &out,
        "nightly report 2026-12-05: complete (orders=succeeded rates=dead convert=cancelled \
         report=cancelled archive=succeeded)",
    );
    assert!(
        out.contains("refused: invalid configuration: workflow: steps form a cycle"),
        "{out}"
    );
}
