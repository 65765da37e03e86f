//! Replays the fuzz targets' corpus (`fuzz/corpus/<target>/`) through the same invariants the
//! targets check, so every test run exercises them without a fuzzer (`cargo fuzz run
//! <target>` in `fuzz/` explores further and adds to the corpus).

use errand_invariants as invariants;
use std::path::Path;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "the {target} corpus has inputs");
    inputs
}

/// A target's invariant check.
type Check = fn(&[u8]);

#[test]
fn every_corpus_holds_its_target_invariants() {
    let targets: [(&str, Check); 3] = [
        ("queue_entry", invariants::queue_entry),
        ("backoff", invariants::backoff_input),
        ("timestamp", invariants::timestamp),
    ];
    for (target, check) in targets {
        for input in corpus(target) {
            check(&input);
        }
    }
}
