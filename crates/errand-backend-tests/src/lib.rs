//! Errand's backend conformance suite: one `pub async fn` per behaviour of the
//! [`Broker`](errand_core::broker::Broker) contract, run against every backend, plus server-level cases (`server_*`) that
//! prove the job lifecycle (queue order, scheduling, retries, dead set, snooze, discard,
//! malformed payloads, orphan recovery, graceful shutdown, stats) through a real
//! `errand::Server` running on the backend.
//!
//! # Overview
//! A backend's test file implements [`BackendFactory`] (a fresh, isolated backend per call,
//! plus an [`Inspect`] view of what it stores) and expands [`conformance_tests!`], which gives
//! one `#[tokio::test]` per case:
//!
//! ```text
//! struct Memory;
//! #[async_trait::async_trait]
//! impl errand_backend_tests::BackendFactory for Memory { /* ... */ }
//! errand_backend_tests::conformance_tests!(Memory);
//! ```
//!
//! The cases pass explicit times to `settle` and `promote_due`, so they are independent of the
//! wall clock, except heartbeat expiry: that goes through [`Inspect::let_time_pass`], which an
//! injectable-clock backend advances and a real-time backend ignores (the case then polls with
//! a deadline, never a fixed sleep).
//!
//! When backend semantics change, change the suite first.

mod admin;
mod batch;
mod coordination;
mod fleet;
mod inspect;
mod queue;
mod server;
mod support;
pub use admin::*;
pub use batch::*;
pub use coordination::*;
pub use fleet::*;
pub use inspect::Inspect;
pub use queue::*;
pub use server::*;
pub use support::{BackendFactory, STEP_TIMEOUT, TestBackend, job};

/// Expands into one `#[tokio::test]` per conformance case, each calling the case with
/// `$factory` (an expression evaluated once per test). The calling crate needs `tokio` with
/// the `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@cases $factory;
            push_fetch_ack_round_trip,
            ack_removes_one_copy_of_duplicates,
            bulk_push_keeps_fifo,
            fetch_follows_queue_order_and_max,
            fetch_waits_for_a_push,
            fetch_wait_on_empty_queue_returns_nothing,
            push_scheduled_stores_scores,
            settle_to_each_set,
            settle_after_ack_stores_nothing,
            complete_many_applies_a_mixed_batch,
            dead_set_trims_by_size,
            dead_set_trims_by_age,
            promote_due_moves_only_due_jobs,
            promote_due_stamps_in_profile,
            requeue_in_flight_returns_jobs_unchanged,
            requeue_in_flight_needs_no_registration,
            rescue_orphans_recovers_jobs_of_unregistered_processes,
            held_lists_and_release_returns_one_job,
            a_stale_attempt_cannot_end_a_later_fetch_of_the_same_job,
            fetch_hands_out_increasing_fencing_tokens,
            rescue_orphans_recovers_only_expired_processes,
            rescue_buries_a_poison_pill_after_max_recoveries,
            heartbeat_returns_remote_signals,
            heartbeat_stats_accumulate,
            process_count_and_unregister,
            claim_poll_is_exclusive_per_window,
            once_records_claim_complete_release,
            once_claims_and_records_expire,
            permit_sets_bound_holders_and_fence,
            permit_expires_without_renewal,
            push_unique_takes_the_permit_and_stores_the_job_together,
            periodic_ticks_are_claimed_once,
            cancel_removes_waiting_jobs_and_finds_running_ones,
            results_are_kept_and_expire,
            push_replacing_keeps_the_last_waiting_job,
            batch_counts_members_and_fires_callbacks_once,
            batch_death_fires_once_and_success_follows_a_dead_job_that_succeeds,
            batch_completes_only_once_sealed,
            batch_add_is_refused_once_complete,
            nested_batch_completes_after_its_child,
            concurrent_last_records_fire_callbacks_once,
            workflow_steps_wait_for_their_parents,
            workflow_failure_policies_cancel_steps,
            batches_are_listed_and_paged,
            completed_batches_expire,
            batch_ignores_records_no_attempt_can_make,
            cancelling_a_waiting_batch_job_counts_it_dead,
            batch_records_in_one_call_apply_in_order,
            coordination_capabilities_are_all_there,
            rate_limits_count_and_refuse,
            rate_window_frees_as_uses_age,
            server_weighted_fetch_follows_weights,
            server_strict_queue_order,
            server_runs_scheduled_job_when_due,
            server_retries_then_buries_with_fields,
            server_retry_zero_and_retry_disabled,
            server_snooze_and_discard,
            server_buries_malformed_payloads,
            server_recovers_jobs_of_a_dead_process,
            server_shutdown_requeues_unfinished_jobs,
            server_stats_count_processed_and_failed,
            server_once_step_runs_once_across_retries,
            server_drain_runs_nested_and_due_jobs,
            server_cancels_waiting_and_running_jobs,
            server_drops_expired_jobs,
            server_keeps_results,
            server_runs_a_debounced_burst_once,
            server_runs_a_batch_and_its_callbacks_once,
            server_runs_a_diamond_workflow,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::$case(&$factory).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers

// ---------------------------------------------------------------------------------------------
// Cases
