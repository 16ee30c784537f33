//! libFuzzer target: see `psp_fuzz::chain_verify`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    psp_fuzz::chain_verify(data);
});
