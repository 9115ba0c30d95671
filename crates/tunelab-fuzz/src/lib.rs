//! Fuzz targets over every reader of a file a user (or a stranger) hands Tunelab: safetensors
//! weights, checkpoints, data files, configs, exports and zip archives.
//!
//! Each target takes arbitrary bytes and panics only when a reader breaks its contract:
//! a panic inside the reader, an error that does not name the file it is about, or an `Ok`
//! value that is not what the reader promises (tensors whose data disagrees with their
//! shape, a validated config that does not survive being written and read back, ...).
//! `cargo xtask fuzz` runs them under libFuzzer; `tests/regressions.rs` runs every input
//! fuzzing found (kept in `regressions/<target>/`) and the generated seeds through the same
//! functions on every `cargo test`.
//!
//! Panicking is the point here: a broken contract must stop the fuzzer with the input.
#![allow(clippy::panic)]

use std::collections::BTreeMap;
use tunelab_core::data::{self, Example, Format, ParseOptions};
use tunelab_core::export;
use tunelab_core::models::ModelConfig;
use tunelab_core::safetensors_io::{self, HostTensor};
use tunelab_core::trainer::{TrainConfig, checkpoint};
use tunelab_core::zipfile;

/// A fuzz target: arbitrary bytes in, a panic when a contract is broken.
pub type Target = fn(&[u8]);

/// Every target, by the name `cargo xtask fuzz --target` and `regressions/` use.
pub const TARGETS: &[(&str, Target)] = &[
    ("safetensors", safetensors),
    ("checkpoint", checkpoint),
    ("data", data),
    ("config", config),
    ("import", import),
    ("zip", zip),
];

/// An error message must say which file it is about.
pub fn assert_names(file: &str, message: &str) {
    assert!(
        message.contains(file),
        "an error does not name its file `{file}`: {message}"
    );
}

fn tensors_agree(file: &str, tensors: &BTreeMap<String, HostTensor>) {
    for (name, t) in tensors {
        assert_eq!(
            t.data.len(),
            t.shape.numel(),
            "{file}: `{name}` has {} values for shape {:?}",
            t.data.len(),
            t.shape.dims()
        );
    }
}

/// A model's weights: `safetensors_io::read`, `read_metadata`, `read_ints`.
pub fn safetensors(bytes: &[u8]) {
    const FILE: &str = "fuzz/model.safetensors";
    match safetensors_io::read(FILE, bytes) {
        Ok((tensors, _buffers)) => tensors_agree(FILE, &tensors),
        Err(e) => assert_names(FILE, &e.to_string()),
    }
    if let Err(e) = safetensors_io::read_metadata(FILE, bytes) {
        assert_names(FILE, &e.to_string());
    }
    if let Err(e) = safetensors_io::read_ints(FILE, bytes) {
        assert_names(FILE, &e.to_string());
    }
}

/// A training checkpoint (`--resume`, the web app's resume).
pub fn checkpoint(bytes: &[u8]) {
    const FILE: &str = "fuzz/checkpoint.safetensors";
    match checkpoint::read(FILE, bytes) {
        Ok((_meta, tensors)) => tensors_agree(FILE, &tensors),
        Err(e) => assert_names(FILE, &e.to_string()),
    }
}

/// A data file: the first byte picks the format (and whether bad rows are skipped), the
/// rest is the file.
pub fn data(bytes: &[u8]) {
    const FILE: &str = "fuzz/train.data";
    let Some((&pick, body)) = bytes.split_first() else {
        return;
    };
    let format = [Format::Jsonl, Format::Csv, Format::Conll, Format::Text][usize::from(pick & 3)];
    let opts = ParseOptions {
        skip_bad: pick & 4 != 0,
        ..ParseOptions::default()
    };
    let text = match data::decode_text(FILE, body) {
        Ok(t) => t,
        Err(e) => return assert_names(FILE, &e.to_string()),
    };
    let parsed = match data::parse(FILE, &text, format, &opts) {
        Ok(p) => p,
        Err(e) => return assert_names(FILE, &e.to_string()),
    };
    let lines = text.lines().count().max(1);
    for ex in &parsed.examples {
        assert!(
            (1..=lines).contains(&ex.line()),
            "example on line {} of a {lines}-line file",
            ex.line()
        );
        if let Example::Tagged { words, tags, .. } = ex {
            assert!(
                tags.is_empty() || tags.len() == words.len(),
                "line {}: {} words but {} tags",
                ex.line(),
                words.len(),
                tags.len()
            );
        }
    }
    for e in &parsed.skipped {
        assert_names(FILE, &e.to_string());
    }
    for w in &parsed.warnings {
        assert_names(FILE, w);
    }
}

/// A training config (TOML or JSON, by the first byte's low bit) or a model's
/// `config.json` (second bit). A config that validates must read back unchanged from the
/// JSON that a run writes as `train_config.json` (resume depends on it).
pub fn config(bytes: &[u8]) {
    let Some((&pick, body)) = bytes.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    if pick & 2 != 0 {
        const FILE: &str = "fuzz/config.json";
        match ModelConfig::from_json(FILE, text) {
            Ok(cfg) => {
                // The parameter list of any accepted config can be listed.
                let _ = cfg.specs(tunelab_core::models::heads::Task::MaskedLm);
            }
            Err(e) => assert_names(FILE, &e.to_string()),
        }
        return;
    }
    let file = if pick & 1 != 0 {
        "fuzz/train.json"
    } else {
        "fuzz/train.toml"
    };
    let cfg = match TrainConfig::parse(file, text) {
        Ok(c) => c,
        Err(e) => return assert_names(file, &e.to_string()),
    };
    if cfg.validate().is_err() {
        return;
    }
    let written = match serde_json::to_string(&cfg) {
        Ok(w) => w,
        Err(e) => panic!("a valid config cannot be written as JSON: {e}"),
    };
    match TrainConfig::parse("train_config.json", &written) {
        Ok(back) => assert_eq!(
            back, cfg,
            "a valid config changed when written and read back"
        ),
        Err(e) => panic!("a valid config, written as JSON, is refused: {e}\n{written}"),
    }
}

/// The files an export may hold, in the order [`import`] assigns them.
pub const EXPORT_FILES: &[&str] = &[
    export::MANIFEST,
    export::ADAPTER_CONFIG,
    export::ADAPTER_WEIGHTS,
    export::BITFIT_WEIGHTS,
    "model.safetensors",
    "config.json",
];

/// Separates the files of an [`import`] input.
pub const SEPARATOR: &[u8] = b"\n--tunelab-fuzz-file--\n";

/// Splits an [`import`] input into named files: the parts between separators are the
/// export's files in [`EXPORT_FILES`] order; an empty part means the file is absent.
pub fn split_files(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut rest = bytes;
    for name in EXPORT_FILES {
        let (part, next) = match find(rest, SEPARATOR) {
            Some(i) => (&rest[..i], &rest[i + SEPARATOR.len()..]),
            None => (rest, &[][..]),
        };
        if !part.is_empty() {
            files.insert((*name).to_string(), part.to_vec());
        }
        rest = next;
    }
    files
}

/// The opposite of [`split_files`] (the seeds are written with it).
pub fn join_files(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, name) in EXPORT_FILES.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(SEPARATOR);
        }
        if let Some(b) = files.get(*name) {
            out.extend_from_slice(b);
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn check_import(files: &BTreeMap<String, Vec<u8>>) {
    match export::import(files) {
        Ok(imported) => {
            tensors_agree("export", &imported.tensors);
            for (name, t) in &imported.tensors {
                assert!(
                    t.data.iter().all(|v| v.is_finite()),
                    "import accepted non-finite values in `{name}`"
                );
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                EXPORT_FILES.iter().any(|f| message.contains(f)),
                "an import error names none of the export's files: {message}"
            );
        }
    }
}

/// An exported model or adapter, its files split as [`split_files`] does.
pub fn import(bytes: &[u8]) {
    check_import(&split_files(bytes));
}

/// A zip of an export, as the web app imports it.
pub fn zip(bytes: &[u8]) {
    const FILE: &str = "fuzz/export.zip";
    match zipfile::unpack(FILE, bytes) {
        Ok(files) => check_import(&files),
        Err(e) => assert_names(FILE, &e),
    }
}
