//! libFuzzer target: see `psp_fuzz::result_merge`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    psp_fuzz::result_merge(data);
});
