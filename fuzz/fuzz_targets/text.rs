//! `text://` decoding, whole and in chunks; lines re-encode to their bytes.
//! The checks are in `foreman::fuzzing::text`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| foreman::fuzzing::text(data));
