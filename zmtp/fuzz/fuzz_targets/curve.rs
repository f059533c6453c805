#![no_main]
//! The body is `sf_zmtp::fuzzing::curve`, which tests/corpus_replay.rs also runs on the corpus.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sf_zmtp::fuzzing::curve(data));
