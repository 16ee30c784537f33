//! libFuzzer target: see `psp_fuzz::query_eval`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    psp_fuzz::query_eval(data);
});
