//! Training data: parsing JSONL, CSV, CoNLL and plain text into examples, label sets, and
//! tokenised features ready for batching.
//!
//! Parsing is strict by default (the first bad row is an error naming the file, the line and
//! what was expected); [`ParseOptions::skip_bad`] instead collects bad rows and keeps going,
//! so a user can see how many were skipped and why.

mod batch;
mod parse;

pub use batch::{
    Feature, FeatureKind, Features, Masking, MicroBatch, batch_order, build_batch, encode,
};
pub use parse::parse;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// File formats a dataset can come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line: `{"text": ..., "label": ...}` or `{"tokens": [...], "tags": [...]}`.
    Jsonl,
    /// Comma-separated with a header row; quoted fields may contain commas and newlines.
    Csv,
    /// One token per line with its tag in the last column; blank lines end sentences.
    Conll,
    /// Plain text: one paragraph per non-empty line (for masked-LM training).
    Text,
}

impl Format {
    /// The format a file name implies (`.jsonl`, `.json`, `.csv`, `.conll`, `.bio`, `.txt`).
    pub fn from_path(path: &str) -> Option<Self> {
        let ext = path.rsplit('.').next()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "jsonl" | "json" | "ndjson" => Self::Jsonl,
            "csv" => Self::Csv,
            "conll" | "bio" | "iob" => Self::Conll,
            "txt" | "text" => Self::Text,
            _ => return None,
        })
    }
}

/// One example as read from a file, with the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    /// A text and (for classification) its label.
    Text {
        line: usize,
        text: String,
        label: Option<String>,
    },
    /// Pre-split words and (for token classification) one tag per word.
    Tagged {
        line: usize,
        words: Vec<String>,
        tags: Vec<String>,
    },
}

impl Example {
    pub fn line(&self) -> usize {
        match self {
            Self::Text { line, .. } | Self::Tagged { line, .. } => *line,
        }
    }
}

/// Column / field names for JSONL and CSV.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ParseOptions {
    pub text_field: String,
    pub label_field: String,
    /// JSONL token-classification fields.
    pub tokens_field: String,
    pub tags_field: String,
    /// Collect bad rows instead of stopping at the first.
    pub skip_bad: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        Self {
            text_field: "text".into(),
            label_field: "label".into(),
            tokens_field: "tokens".into(),
            tags_field: "tags".into(),
            skip_bad: false,
        }
    }
}

/// A problem with a data file, naming where and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataError {
    #[error("{file}:{line}: {reason}")]
    Row {
        file: String,
        line: usize,
        reason: String,
    },
    #[error(
        "{file}:{line}: unknown label `{label}`; the labels are {known:?} (from the training data or the config)"
    )]
    UnknownLabel {
        file: String,
        line: usize,
        label: String,
        known: Vec<String>,
    },
    #[error("{file}: {reason}")]
    File { file: String, reason: String },
}

/// What parsing produced: the examples, and the bad rows when skipping was asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub examples: Vec<Example>,
    pub skipped: Vec<DataError>,
    /// Rows that were read but look suspicious (`file:line: ...`), e.g. a quoted CSV field
    /// running over several lines, as an unbalanced quote makes it.
    pub warnings: Vec<String>,
}

/// A data file's bytes as text: a UTF-8 byte-order mark is dropped; bytes that are not
/// UTF-8 are an error naming the line and column (in bytes) where they start.
pub fn decode_text(file: &str, bytes: &[u8]) -> Result<String, DataError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(t) => Ok(t.to_string()),
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
            let column =
                good.len() - good.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1) + 1;
            Err(DataError::Row {
                file: file.into(),
                line,
                reason: format!(
                    "byte {column} of this line is not UTF-8 text (byte 0x{:02x}); save the file as UTF-8",
                    bytes[e.valid_up_to()]
                ),
            })
        }
    }
}

/// An ordered set of label names; a label's index is its class id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labels {
    pub names: Vec<String>,
}

impl Labels {
    pub fn new(names: Vec<String>) -> Self {
        Self { names }
    }

    /// The labels seen in `examples`, sorted (so the same data always gives the same ids).
    pub fn infer(examples: &[Example]) -> Self {
        let mut set = std::collections::BTreeSet::new();
        for e in examples {
            match e {
                Example::Text { label: Some(l), .. } => {
                    set.insert(l.clone());
                }
                Example::Tagged { tags, .. } => set.extend(tags.iter().cloned()),
                Example::Text { label: None, .. } => {}
            }
        }
        Self {
            names: set.into_iter().collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The class id of `label`, or an error naming the file and line.
    pub fn id(&self, label: &str, file: &str, line: usize) -> Result<u32, DataError> {
        self.names
            .iter()
            .position(|n| n == label)
            .map(|i| i as u32)
            .ok_or_else(|| DataError::UnknownLabel {
                file: file.into(),
                line,
                label: label.into(),
                known: self.names.clone(),
            })
    }

    /// How many examples carry each label (for previews and reports).
    pub fn counts(&self, examples: &[Example]) -> BTreeMap<String, usize> {
        let mut out: BTreeMap<String, usize> = self.names.iter().map(|n| (n.clone(), 0)).collect();
        for e in examples {
            match e {
                Example::Text { label: Some(l), .. } => *out.entry(l.clone()).or_default() += 1,
                Example::Tagged { tags, .. } => {
                    for t in tags {
                        *out.entry(t.clone()).or_default() += 1;
                    }
                }
                Example::Text { label: None, .. } => {}
            }
        }
        out
    }
}
