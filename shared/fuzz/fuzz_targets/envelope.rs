//! Fuzz target: `outpost_shared::fuzzing::envelope` must not panic on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    outpost_shared::fuzzing::envelope(data);
});
