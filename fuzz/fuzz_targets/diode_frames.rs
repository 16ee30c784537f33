//! libFuzzer target: see `psp_fuzz::diode_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    psp_fuzz::diode_frames(data);
});
