//! The WebSocket read path of an accepted connection, and reframing of what it reads.
//! The checks are in `foreman::fuzzing::websocket`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| foreman::fuzzing::websocket(data));
