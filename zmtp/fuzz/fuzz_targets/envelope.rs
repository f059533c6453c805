#![no_main]
//! The body is shared/envelope.rs, which connections/tests/envelope_corpus_replay.rs also
//! runs on the corpus.

#[path = "../shared/envelope.rs"]
mod envelope;

libfuzzer_sys::fuzz_target!(|data: &[u8]| envelope::envelope(data));
