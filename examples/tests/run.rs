//! Runs every example binary and checks the outcome it reports. Each example also asserts its
//! own outcome and exits non-zero when it does not hold.

use std::process::Command;

/// Runs example `bin` (its path given by Cargo) and returns its stdout, failing the test with
/// both streams when it does not exit successfully.
fn run(bin: &str) -> String {
    let out = Command::new(bin)
        .env("RUST_LOG", "warn")
        .output()
        .expect("start the example");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{bin} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Asserts that `stdout` has a line equal to `line`.
fn has_line(stdout: &str, line: &str) {
    assert!(
        stdout.lines().any(|l| l == line),
        "expected the line {line:?} in:\n{stdout}"
    );
}

#[test]
fn pass_ids() {
    let out = run(env!("CARGO_BIN_EXE_pass_ids"));
    has_line(&out, "ok: 1 email sent, 0 retries, 0 dead");
    has_line(
        &out,
        "user 2 was deleted before the job ran; nothing to send",
    );
}
