//! The HTTP request-head parser of `websocket://` listeners.
//! The checks are in `foreman::fuzzing::http_head`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| foreman::fuzzing::http_head(data));
