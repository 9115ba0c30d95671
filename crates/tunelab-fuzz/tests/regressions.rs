//! Every input kept in `regressions/<target>/` goes through its fuzz target on every
//! `cargo test`: the edge cases written by hand (`edge-*`) and whatever `cargo xtask fuzz`
//! found (`crash-*`, `timeout-*`, `oom-*`, once fixed). A target panics when a reader breaks
//! its contract (see `src/lib.rs`), which fails the test with the file's name.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_kept_input_passes_its_target() {
    for (name, target) in tunelab_fuzz::TARGETS {
        let files = inputs(name);
        assert!(!files.is_empty(), "regressions/{name}/ holds no inputs");
        for path in files {
            let bytes = std::fs::read(&path).unwrap();
            let run = std::panic::catch_unwind(|| target(&bytes));
            assert!(run.is_ok(), "{} broke the {name} target", path.display());
        }
    }
}

/// The targets do catch what they look for: an error that does not name its file fails.
#[test]
fn a_target_catches_an_error_without_its_file_name() {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let caught = std::panic::catch_unwind(|| tunelab_fuzz::assert_names("data.csv", "bad row"));
    std::panic::set_hook(hook);
    assert!(caught.is_err());
    tunelab_fuzz::assert_names("data.csv", "data.csv:3: bad row");
}

/// The import target's container round-trips (the seeds are written with `join_files`).
#[test]
fn split_files_undoes_join_files() {
    let mut files = std::collections::BTreeMap::new();
    files.insert(tunelab_fuzz::EXPORT_FILES[1].to_string(), b"{}".to_vec());
    files.insert(tunelab_fuzz::EXPORT_FILES[2].to_string(), vec![0, 1, 2]);
    assert_eq!(
        tunelab_fuzz::split_files(&tunelab_fuzz::join_files(&files)),
        files
    );
}
