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
use std::sync::Arc;

/// Reads a checkpoint's weight files when they are first needed (see [`Weights::Deferred`]).
pub type WeightsReader = Arc<dyn Fn() -> Result<Weights, LoadError> + Send + Sync>;

/// A checkpoint's weight files.
#[derive(Clone)]
pub enum Weights {
    /// `model.safetensors`.
    Single(Vec<u8>),
    /// `model.safetensors.index.json` and its shards, by file name.
    Sharded {
        index: Vec<u8>,
        shards: BTreeMap<String, Vec<u8>>,
    },
    /// Read only when the tensors are needed: after a run's checks (memory, positions), so
    /// a job that is refused never reads a large checkpoint, and never for a from-scratch run,
    /// which initialises every weight. The CLI reads files from disk this way.
    Deferred(WeightsReader),
    /// Not read, and not readable: enough for what needs only the config and tokenizer.
    Unread,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Weights::Single(b) => write!(f, "Single({} bytes)", b.len()),
            Weights::Sharded { shards, .. } => write!(f, "Sharded({} shards)", shards.len()),
            Weights::Deferred(_) => f.write_str("Deferred"),
            Weights::Unread => f.write_str("Unread"),
        }
    }
}

impl Weights {
    /// The bytes held in memory (0 for weights not read yet).
    pub fn len(&self) -> u64 {
        match self {
            Weights::Single(b) => b.len() as u64,
            Weights::Sharded { index, shards } => {
                index.len() as u64 + shards.values().map(|s| s.len() as u64).sum::<u64>()
            }
            Weights::Deferred(_) | Weights::Unread => 0,
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
            Weights::Deferred(read) => match read()? {
                Weights::Deferred(_) => Err(LoadError::Config {
                    file: dir.into(),
                    reason: "the weights' reader gave another reader, not the weights".into(),
                }),
                weights => weights.tensors(dir),
            },
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
        // A deferred reader runs when the tensors are asked for, each time, and only then.
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = reads.clone();
        let deferred = Weights::Deferred(Arc::new(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Weights::Single(one("w", &[0.25])))
        }));
        assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(deferred.tensors("m").unwrap()["w"].data, vec![0.25]);
        assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
