//! libFuzzer target: see `psp_fuzz::config_load`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    psp_fuzz::config_load(data);
});
