//! Every seed and every saved crash (`regressions/<target>/*`, each a crash libFuzzer found,
//! kept after its fix) through its harness on a plain build: a fixed crash stays fixed, and a
//! harness that stops accepting its seeds is caught here rather than in a ten-minute run.

use std::path::Path;

type Harness = fn(&[u8]) -> bool;

const TARGETS: [(&str, Harness); 6] = [
    ("chain_verify", psp_fuzz::chain_verify),
    ("query_eval", psp_fuzz::query_eval),
    ("result_merge", psp_fuzz::result_merge),
    ("diode_frames", psp_fuzz::diode_frames),
    ("archive_open", psp_fuzz::archive_open),
    ("config_load", psp_fuzz::config_load),
];

#[test]
fn every_seed_runs_through_its_harness() {
    let seeds = psp_fuzz::seeds::all();
    assert_eq!(seeds.len(), TARGETS.len());
    for ((target, harness), (named, inputs)) in TARGETS.iter().zip(&seeds) {
        assert_eq!(target, named);
        assert!(!inputs.is_empty(), "{target} has no seeds");
        let accepted = inputs.iter().filter(|input| harness(input)).count();
        // Some seed of each goes all the way, so fuzzing starts past the first check.
        assert!(accepted > 0, "{target}: no seed is accepted all the way");
    }
}

#[test]
fn every_saved_crash_stays_fixed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    for (target, harness) in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            harness(&std::fs::read(&path).unwrap());
        }
    }
}
