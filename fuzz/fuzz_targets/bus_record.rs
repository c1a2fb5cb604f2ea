//! The bus record decoder, whole and in chunks; records round-trip.
//! The checks are in `foreman::fuzzing::bus_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| foreman::fuzzing::bus_record(data));
