//! libFuzzer target: see `psp_fuzz::archive_open`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    psp_fuzz::archive_open(data);
});
