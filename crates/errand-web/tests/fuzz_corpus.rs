//! Replays the `web_query` fuzz target's corpus (`fuzz/corpus/web_query/`) through
//! [`errand_web::params_check`], the same invariants the target checks, so every test run
//! exercises them without a fuzzer (`cargo fuzz run web_query` in `fuzz/` explores further).

use std::path::Path;

#[test]
fn the_web_query_corpus_holds_its_invariants() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/web_query");
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "the web_query corpus has inputs");
    for input in &inputs {
        errand_web::params_check(input);
    }
    // And a few shapes written out here, bounds included.
    for q in [
        &b""[..],
        b"page=0&per_page=0&days=0&interval=0",
        b"page=99999999999999999999999&days=-922337",
        b"key=--&key2=x",
        b"key=nan-x&n=NaN",
        b"n=-inf&q=\xff\xfe",
        b"q=\xe2\x80\xa6",
    ] {
        errand_web::params_check(q);
    }
}
