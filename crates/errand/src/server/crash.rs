//! The crash points of the failpoint tests.

/// A crash point for the failpoint tests (feature `failpoints`; RELIABILITY-PLAN R15), inactive
/// unless the `fail` crate configures `name` (`FAILPOINTS`, read by the program through
/// `fail::FailScenario::setup`). Its `return` action ends the process at once with status 137,
/// as a SIGKILL would: no shutdown, no requeue, nothing flushed to the backend; `sleep`,
/// `pause` and `panic` act as the `fail` crate defines them.
#[cfg(feature = "failpoints")]
pub(crate) fn crash_point(name: &'static str) {
    fail::fail_point!(name, |_| {
        eprintln!("failpoint {name}: exiting with status 137");
        std::process::exit(137)
    });
}
