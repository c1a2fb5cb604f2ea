//! Redis replies (RESP2), whole and in chunks, and the cluster messages in
//! their bulk strings. The checks are in `foreman::fuzzing::resp`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| foreman::fuzzing::resp(data));
