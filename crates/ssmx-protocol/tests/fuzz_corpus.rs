//! Stable-toolchain replay of the `decode` fuzz target (fuzz/fuzz_targets/decode.rs): the same
//! checks over every golden frame, the committed seed corpus and, when a local fuzzing run left
//! them, the grown corpus and any crash artifacts (fuzz/corpus/decode, fuzz/artifacts/decode).

mod common;

#[path = "../fuzz/fuzz_targets/decode_check.rs"]
mod decode_check;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every file directly in `dir`; none when the directory does not exist.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn golden_frames_pass_the_fuzz_checks() {
    let mut frames = 0;
    for v in common::vectors() {
        decode_check::check(&common::unhex(&v.wire_hex));
        frames += 1;
    }
    for transcript in common::transcripts() {
        for hex in transcript.events.iter().filter_map(|e| e.hex.as_deref()) {
            decode_check::check(&common::unhex(hex));
            frames += 1;
        }
    }
    assert_eq!(frames, 65 + 470);
}

#[test]
fn seed_corpus_passes_the_fuzz_checks() {
    let seeds = files_in(&fuzz_dir().join("seeds/decode"));
    assert!(
        seeds.len() >= 50,
        "seed corpus missing: {} files",
        seeds.len()
    );
    for path in seeds {
        let data = std::fs::read(&path).expect("readable seed");
        decode_check::check(&data);
    }
}

#[test]
fn local_fuzzing_results_pass_the_fuzz_checks() {
    for dir in ["corpus/decode", "artifacts/decode"] {
        for path in files_in(&fuzz_dir().join(dir)) {
            let data = std::fs::read(&path).expect("readable corpus file");
            let outcome = std::panic::catch_unwind(|| decode_check::check(&data));
            assert!(outcome.is_ok(), "{} fails the fuzz checks", path.display());
        }
    }
}
