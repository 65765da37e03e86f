//! Runs the examples and checks the outcome each reports. Each example also asserts its own
//! outcome and exits non-zero when it does not hold.

use errand_examples::{assert_line, run_example};

#[test]
fn pass_ids() {
    let out = run_example(env!("CARGO_BIN_EXE_pass_ids"));
    assert_line(&out, "ok: 1 email sent, 0 retries, 0 dead");
    assert_line(
        &out,
        "user 2 was deleted before the job ran; nothing to send",
    );
}

#[test]
fn order_lock() {
    let out = run_example(env!("CARGO_BIN_EXE_order_lock"));
    assert_line(&out, "ok: 6 jobs for 2 orders, 2 charges");
    assert_eq!(
        out.lines()
            .filter(|l| l.ends_with("already paid, nothing to do"))
            .count(),
        4,
        "the other copies found the order paid:\n{out}"
    );
}
