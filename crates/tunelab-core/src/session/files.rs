//! The files a run is set up from, held in memory: a model in the Hugging Face layout and the
//! data texts. The web app fills them from the browser's storage, the CLI from disk; both
//! hand them to the same set-up.

use crate::data::Format;
use crate::models::ModelConfig;
use crate::models::task_model::ModelError;
use crate::safetensors_io::{self, HostTensor, LoadError};
use crate::tokenizer::Tokenizer;
use crate::trainer::{ConfigError, TrainError};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A checkpoint's weight files.
#[derive(Debug, Clone)]
pub enum Weights {
    /// `model.safetensors`.
    Single(Vec<u8>),
    /// `model.safetensors.index.json` and its shards, by file name.
    Sharded {
        index: Vec<u8>,
        shards: BTreeMap<String, Vec<u8>>,
    },
    /// Not read: a from-scratch run initialises every weight and needs only the config and
    /// the tokenizer.
    Unread,
}

impl Weights {
    /// Their size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Weights::Single(b) => b.len() as u64,
            Weights::Sharded { index, shards } => {
                index.len() as u64 + shards.values().map(|s| s.len() as u64).sum::<u64>()
            }
            Weights::Unread => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tensors, as f32; `dir` names the files in errors.
    pub fn tensors(&self, dir: &str) -> Result<BTreeMap<String, HostTensor>, LoadError> {
        match self {
            Weights::Single(bytes) => {
                Ok(safetensors_io::read(&format!("{dir}/model.safetensors"), bytes)?.0)
            }
            Weights::Sharded { index, shards } => safetensors_io::read_sharded(
                &format!("{dir}/model.safetensors.index.json"),
                index,
                |f| {
                    shards
                        .get(f)
                        .map(|b| Cow::Borrowed(b.as_slice()))
                        .ok_or_else(|| LoadError::Config {
                            file: format!("{dir}/{f}"),
                            reason: "the index names this shard, but it is missing".into(),
                        })
                },
            ),
            Weights::Unread => Err(LoadError::Config {
                file: format!("{dir}/model.safetensors"),
                reason: "the weights were not read (only a from-scratch run goes without them)"
                    .into(),
            }),
        }
    }
}

/// A model in the Hugging Face layout, in memory.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// Names the model in errors and exports (`all-MiniLM-L6-v2`, or the user's folder).
    pub name: String,
    pub config_json: String,
    pub weights: Weights,
    pub tokenizer_json: Vec<u8>,
}

impl ModelFiles {
    /// The parsed `config.json`.
    pub fn config(&self) -> Result<ModelConfig, ModelError> {
        Ok(ModelConfig::from_json(
            &format!("{}/config.json", self.name),
            &self.config_json,
        )?)
    }

    /// The parsed `config.json` and the tokenizer checked against it.
    pub fn parts(&self) -> Result<(ModelConfig, Tokenizer), TrainError> {
        let config = self.config()?;
        let tok = Tokenizer::from_json(
            &format!("{}/tokenizer.json", self.name),
            &self.tokenizer_json,
            config.dims().vocab_size,
        )?;
        Ok((config, tok))
    }
}

/// One data file's name (for errors and the format) and contents.
#[derive(Debug, Clone, PartialEq)]
pub struct DataText {
    pub name: String,
    pub text: String,
}

/// The format of `file`: given, or from its extension.
pub fn format_of(file: &str, given: Option<Format>) -> Result<Format, TrainError> {
    given.or_else(|| Format::from_path(file)).ok_or_else(|| {
        ConfigError {
            field: "format",
            reason: format!(
                "cannot tell the format of {file} from its name; choose jsonl, csv, conll or text"
            ),
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Shape;

    fn one(name: &str, data: &[f32]) -> Vec<u8> {
        let map = BTreeMap::from([(
            name.to_string(),
            HostTensor {
                shape: Shape::new([data.len()]),
                data: data.to_vec(),
            },
        )]);
        safetensors_io::write("t.safetensors", &map, None).unwrap()
    }

    #[test]
    fn sharded_weights_merge_and_a_missing_shard_is_named() {
        let index = br#"{"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}}"#.to_vec();
        let mut shards = BTreeMap::from([
            ("m-1.safetensors".to_string(), one("a", &[1.0, 2.0])),
            ("m-2.safetensors".to_string(), one("b", &[3.0])),
        ]);
        let w = Weights::Sharded {
            index: index.clone(),
            shards: shards.clone(),
        };
        assert_eq!(
            w.len(),
            index.len() as u64 + shards.values().map(|s| s.len() as u64).sum::<u64>()
        );
        let t = w.tensors("my-model").unwrap();
        assert_eq!(
            (t["a"].data.clone(), t["b"].data.clone()),
            (vec![1.0, 2.0], vec![3.0])
        );
        shards.remove("m-2.safetensors");
        let e = Weights::Sharded { index, shards }
            .tensors("my-model")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("my-model/m-2.safetensors") && e.contains("missing"),
            "{e}"
        );
        let e = Weights::Unread.tensors("my-model").unwrap_err().to_string();
        assert!(
            e.contains("my-model/model.safetensors") && e.contains("not read"),
            "{e}"
        );
        let single = Weights::Single(one("w", &[0.5]));
        assert_eq!(single.tensors("m").unwrap()["w"].data, vec![0.5]);
    }
}
