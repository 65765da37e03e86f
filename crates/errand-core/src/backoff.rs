//! Sidekiq's retry backoff: `count⁴ + 15` seconds plus a jitter that depends on the wire profile.

use crate::WireProfile;
use rand::Rng;

/// Sidekiq's default number of retries when a job says `retry: true`.
pub const DEFAULT_MAX_RETRIES: u32 = 25;

/// The longest base delay, whatever the count: 30 days (Sidekiq's 25 retries stay far below,
/// at 3.8 days for the last; only huge custom retry counts reach it).
pub const MAX_BASE_DELAY: u64 = 30 * 24 * 3600;

/// The base delay in seconds before retry number `count` (0 for the first failure), saturating
/// at [`MAX_BASE_DELAY`].
pub fn base_delay(count: u32) -> u64 {
    u64::from(count)
        .saturating_pow(4)
        .saturating_add(15)
        .min(MAX_BASE_DELAY)
}

/// The random jitter in seconds added to a delay for retry `count`, drawn from `rng`.
///
/// Sidekiq 6/7 add `rand(10) * (count + 1)`, Sidekiq 8 adds `rand(10 * (count + 1))`.
pub fn jitter<R: Rng + ?Sized>(profile: WireProfile, count: u32, rng: &mut R) -> u64 {
    let step = u64::from(count) + 1;
    match profile {
        WireProfile::V7 => rng.random_range(0..10) * step,
        WireProfile::V8 => rng.random_range(0..10 * step),
    }
    .min(MAX_BASE_DELAY)
}

/// The full delay in seconds (base or `custom`, plus jitter) before retry `count`.
pub fn delay(profile: WireProfile, count: u32, custom: Option<u64>) -> u64 {
    let base = custom
        .filter(|d| *d > 0)
        .unwrap_or_else(|| base_delay(count));
    base.saturating_add(jitter(profile, count, &mut rand::rng()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_delays_match_sidekiq_table() {
        let expected = [
            (0, 15),
            (1, 16),
            (2, 31),
            (3, 96),
            (4, 271),
            (5, 640),
            (10, 10_015),
            (15, 50_640),
            (20, 160_015),
            (24, 331_791),
        ];
        for (count, secs) in expected {
            assert_eq!(base_delay(count), secs, "count {count}");
        }
        let total: u64 = (0..25).map(base_delay).sum();
        assert_eq!(total, 1_763_395);
    }

    #[test]
    fn jitter_stays_in_each_profiles_range() {
        // Spec interop case 23: 1,000 draws per count stay inside the documented bounds.
        for count in [0u32, 1, 2, 5, 24] {
            let step = u64::from(count) + 1;
            let mut seen_v7 = std::collections::BTreeSet::new();
            for _ in 0..1000 {
                let d7 = delay(WireProfile::V7, count, None) - base_delay(count);
                assert!(
                    d7 <= 9 * step && d7.is_multiple_of(step),
                    "v7 {d7} at {count}"
                );
                seen_v7.insert(d7);
                let d8 = delay(WireProfile::V8, count, None) - base_delay(count);
                assert!(d8 < 10 * step, "v8 {d8} at {count}");
            }
            assert_eq!(seen_v7.len(), 10, "all ten v7 steps are drawn");
        }
    }

    #[test]
    fn custom_delay_replaces_the_base() {
        let d = delay(WireProfile::V7, 0, Some(100));
        assert!((100..=109).contains(&d));
        let d = delay(WireProfile::V7, 0, Some(0));
        assert!((15..=24).contains(&d), "zero falls back to the default");
    }

    #[test]
    fn huge_counts_saturate_instead_of_overflowing() {
        assert_eq!(base_delay(u32::MAX), MAX_BASE_DELAY);
        assert_eq!(base_delay(1_000_000), MAX_BASE_DELAY);
        for profile in [WireProfile::V7, WireProfile::V8] {
            let d = delay(profile, u32::MAX, None);
            assert!((MAX_BASE_DELAY..=2 * MAX_BASE_DELAY).contains(&d), "{d}");
        }
    }
}
