//! Properties of `errand-core` that must hold for *any* input, checked by the fuzz targets in
//! `fuzz/` and by a test that replays their corpus (`tests/fuzz_corpus.rs`), so every CI run
//! exercises them. Each function panics when its property fails.
//!
//! Test scaffolding, kept out of `errand-core`'s public API; not published.

use errand_core::{Failure, Payload, WireProfile, backoff, malformed_entry};
use serde_json::Value;

/// Any bytes offered as a queue entry: parsing never panics; a parsed payload re-encodes to
/// JSON that parses to the same payload; recording a failure on it never panics and keeps it
/// a valid payload; a rejected entry becomes a bounded, valid dead entry.
pub fn queue_entry(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    match Payload::parse(text) {
        Ok(mut p) => {
            let again = Payload::parse(&p.to_json()).expect("a parsed payload re-parses");
            assert_eq!(again.to_json(), p.to_json(), "re-encoding is stable");
            let _ = (
                p.retry(),
                p.retry_count(),
                p.time("enqueued_at"),
                p.display_class(),
            );
            let queue = p.queue().to_string();
            p.record_failure(&Failure {
                class: "Fuzz",
                message: "fuzzed failure",
                backtrace: &[],
                fetched_from: &queue,
                now: 1.7e9,
                profile: WireProfile::V7,
            });
            Payload::parse(&p.to_json()).expect("a failed payload stays valid");
        }
        Err(e) => {
            let entry = malformed_entry(text, "default", &e.to_string(), WireProfile::V7, 1.7e9);
            let json = entry.to_json();
            assert!(
                json.len() < 3 * errand_core::MALFORMED_PREVIEW + 4096,
                "dead entries are bounded"
            );
            Payload::parse(&json).expect("a dead entry is a valid payload");
        }
    }
}

/// Any bytes as a retry count (the first 4, little-endian) and a custom delay (the next 8):
/// see [`backoff_delay`].
pub fn backoff_input(data: &[u8]) {
    let mut count = [0u8; 4];
    let mut custom = [0u8; 8];
    for (i, b) in data.iter().take(12).enumerate() {
        if i < 4 {
            count[i] = *b;
        } else {
            custom[i - 4] = *b;
        }
    }
    backoff_delay(u32::from_le_bytes(count), u64::from_le_bytes(custom));
}

/// Any retry count and custom delay: the backoff never panics or overflows, and stays finite
/// and within its bounds.
pub fn backoff_delay(count: u32, custom: u64) {
    for profile in [WireProfile::V7, WireProfile::V8] {
        let d = backoff::delay(profile, count, (custom > 0).then_some(custom));
        let base = if custom > 0 {
            custom
        } else {
            backoff::base_delay(count)
        };
        assert!(d >= base, "the delay includes its base");
        if custom == 0 {
            assert!(d <= 2 * backoff::MAX_BASE_DELAY, "the delay saturates: {d}");
        }
    }
}

/// Any bytes offered as a JSON timestamp (`enqueued_at`, a score): decoding never panics, and
/// what it decodes re-encodes in either profile without panicking.
pub fn timestamp(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Some(secs) = WireProfile::decode(&value) {
        for profile in [WireProfile::V7, WireProfile::V8] {
            let _ = WireProfile::decode(&profile.encode(secs));
        }
    }
}
