//! `frame://` decoding, whole and in chunks; frames re-encode to their bytes.
//! The checks are in `foreman::fuzzing::frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| foreman::fuzzing::frame(data));
