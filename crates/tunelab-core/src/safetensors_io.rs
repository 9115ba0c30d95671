//! Reading Hugging Face `model.safetensors` files into f32 host tensors, with errors that name
//! the file and the tensor.

use crate::Shape;
use std::collections::BTreeMap;

/// Problems loading weights. Every variant names the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    #[error("{file}: not a valid safetensors file (truncated or corrupted?): {reason}")]
    Format { file: String, reason: String },
    #[error("{file}: tensor `{name}` has dtype {dtype}, expected F32, F16 or BF16")]
    Dtype {
        file: String,
        name: String,
        dtype: String,
    },
    #[error("{file}: tensor `{name}` is missing (expected shape {expected})")]
    Missing {
        file: String,
        name: String,
        expected: Shape,
    },
    #[error("{file}: tensor `{name}` has shape {actual}, expected {expected}")]
    Shape {
        file: String,
        name: String,
        expected: Shape,
        actual: Shape,
    },
    #[error("{file}: unexpected tensor(s) {names:?}: the checkpoint does not match the config")]
    Extra { file: String, names: Vec<String> },
    #[error("{file}: {reason}")]
    Config { file: String, reason: String },
}

/// A host tensor read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Shape,
    pub data: Vec<f32>,
}

/// Every floating-point tensor of a safetensors file, converted to f32. Integer tensors
/// (buffers such as BERT's `position_ids`) are returned by name in the second map without data.
pub fn read(
    file: &str,
    bytes: &[u8],
) -> Result<(BTreeMap<String, HostTensor>, Vec<String>), LoadError> {
    use safetensors::Dtype;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| LoadError::Format {
        file: file.to_string(),
        reason: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    let mut buffers = Vec::new();
    for (name, view) in st.tensors() {
        let shape = Shape::new(view.shape());
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::I64 | Dtype::I32 | Dtype::U8 | Dtype::BOOL => {
                buffers.push(name);
                continue;
            }
            other => {
                return Err(LoadError::Dtype {
                    file: file.to_string(),
                    name,
                    dtype: format!("{other:?}"),
                });
            }
        };
        out.insert(name, HostTensor { shape, data });
    }
    Ok((out, buffers))
}

/// Serialises f32 tensors (sorted by name) as safetensors, with optional string metadata.
/// `file` names the output in errors.
pub fn write(
    file: &str,
    tensors: &BTreeMap<String, HostTensor>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>, LoadError> {
    let bytes: Vec<(&String, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| (n, t.data.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for ((name, t), (_, b)) in tensors.iter().zip(&bytes) {
        if t.data.len() != t.shape.numel() {
            return Err(LoadError::Config {
                file: file.into(),
                reason: format!(
                    "tensor `{name}` has {} values, but its shape {} needs {}",
                    t.data.len(),
                    t.shape,
                    t.shape.numel()
                ),
            });
        }
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            t.shape.dims().to_vec(),
            b,
        )
        .map_err(|e| LoadError::Format {
            file: file.into(),
            reason: e.to_string(),
        })?;
        views.push((name.clone(), view));
    }
    safetensors::serialize(views, metadata).map_err(|e| LoadError::Format {
        file: file.into(),
        reason: e.to_string(),
    })
}

/// The string metadata of a safetensors file (empty when it has none).
pub fn read_metadata(
    file: &str,
    bytes: &[u8],
) -> Result<std::collections::HashMap<String, String>, LoadError> {
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| LoadError::Format {
            file: file.to_string(),
            reason: e.to_string(),
        })?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// The integer tensors (I64) of a safetensors file, as `i64` values by name (token ids and
/// labels in fixtures and datasets).
pub fn read_ints(file: &str, bytes: &[u8]) -> Result<BTreeMap<String, Vec<i64>>, LoadError> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| LoadError::Format {
        file: file.to_string(),
        reason: e.to_string(),
    })?;
    Ok(st
        .tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == safetensors::Dtype::I64)
        .map(|(n, v)| {
            let data = v
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            (n, data)
        })
        .collect())
}

/// A sharded checkpoint's index (`model.safetensors.index.json`): each tensor's shard file.
pub fn weight_map(
    index_file: &str,
    index_json: &[u8],
) -> Result<BTreeMap<String, String>, LoadError> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    serde_json::from_slice::<Index>(index_json)
        .map(|i| i.weight_map)
        .map_err(|e| LoadError::Config {
            file: index_file.into(),
            reason: format!("not a safetensors index: {e}"),
        })
}

/// The tensors of a sharded checkpoint: `index_json` is `model.safetensors.index.json`
/// (`{"weight_map": {tensor: shard file}}`), `shard` gives one shard's bytes by file name
/// (read for the call, or borrowed from memory). Each shard is asked for once; a tensor the
/// index places in a shard that lacks it is an error.
pub fn read_sharded<'a>(
    index_file: &str,
    index_json: &[u8],
    mut shard: impl FnMut(&str) -> Result<std::borrow::Cow<'a, [u8]>, LoadError>,
) -> Result<BTreeMap<String, HostTensor>, LoadError> {
    let weight_map = weight_map(index_file, index_json)?;
    let mut files: Vec<&String> = weight_map.values().collect();
    files.sort();
    files.dedup();
    let mut out = BTreeMap::new();
    for f in files {
        let (tensors, _) = read(f, &shard(f)?)?;
        out.extend(tensors);
    }
    for (name, f) in &weight_map {
        if !out.contains_key(name) {
            return Err(LoadError::Missing {
                file: f.clone(),
                name: name.clone(),
                expected: Shape::new([]),
            });
        }
    }
    Ok(out)
}

/// Takes `expected` tensors (name, shape) out of `tensors`, after stripping the first of
/// `prefixes` that every expected name is found under. Fails on a missing or mis-shaped tensor;
/// returns the names left over.
pub fn take_expected(
    file: &str,
    tensors: &mut BTreeMap<String, HostTensor>,
    expected: &[(String, Shape)],
    prefixes: &[&str],
) -> Result<Vec<HostTensor>, LoadError> {
    let prefix = prefixes
        .iter()
        .copied()
        .find(|p| {
            expected
                .first()
                .is_some_and(|(n, _)| tensors.contains_key(&format!("{p}{n}")))
        })
        .unwrap_or("");
    let mut out = Vec::with_capacity(expected.len());
    for (name, shape) in expected {
        let key = format!("{prefix}{name}");
        let t = tensors.remove(&key).ok_or_else(|| LoadError::Missing {
            file: file.to_string(),
            name: key.clone(),
            expected: shape.clone(),
        })?;
        if &t.shape != shape {
            return Err(LoadError::Shape {
                file: file.to_string(),
                name: key,
                expected: shape.clone(),
                actual: t.shape,
            });
        }
        out.push(t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tensors: &[(&str, &[usize], &[f32])]) -> Vec<u8> {
        let map = tensors
            .iter()
            .map(|(n, s, d)| {
                (
                    n.to_string(),
                    HostTensor {
                        shape: Shape::new(*s),
                        data: d.to_vec(),
                    },
                )
            })
            .collect();
        write("test.safetensors", &map, None).unwrap()
    }

    #[test]
    fn written_files_read_back() {
        let bytes = file(&[("w", &[2, 1], &[1.5, -2.0])]);
        let (t, _) = read("test.safetensors", &bytes).unwrap();
        assert_eq!(
            t["w"],
            HostTensor {
                shape: Shape::new([2, 1]),
                data: vec![1.5, -2.0]
            }
        );
        let bad = [(
            "w".to_string(),
            HostTensor {
                shape: Shape::new([3]),
                data: vec![1.0],
            },
        )]
        .into();
        let err = write("out.safetensors", &bad, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "out.safetensors: tensor `w` has 1 values, but its shape [3] needs 3"
        );
    }

    #[test]
    fn reads_and_checks_tensors_with_a_prefix() {
        let bytes = file(&[
            ("bert.a", &[2], &[1.0, 2.0]),
            ("bert.b", &[1, 2], &[3.0, 4.0]),
            ("extra", &[1], &[0.0]),
        ]);
        let (mut t, buffers) = read("m.safetensors", &bytes).unwrap();
        assert!(buffers.is_empty());
        let expected = vec![
            ("a".to_string(), Shape::new([2])),
            ("b".to_string(), Shape::new([1, 2])),
        ];
        let got = take_expected("m.safetensors", &mut t, &expected, &["bert.", ""]).unwrap();
        assert_eq!(got[1].data, vec![3.0, 4.0]);
        assert_eq!(t.keys().collect::<Vec<_>>(), vec!["extra"]);
    }

    #[test]
    fn sharded_checkpoints_merge_their_shards() {
        let a = file(&[("x", &[2], &[1.0, 2.0])]);
        let b = file(&[("y", &[1], &[3.0])]);
        let index =
            br#"{"metadata": {}, "weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}"#;
        let mut reads = Vec::new();
        let t = read_sharded("index.json", index, |f| {
            reads.push(f.to_string());
            Ok(if f == "a.safetensors" {
                a.as_slice().into()
            } else {
                b.as_slice().into()
            })
        })
        .unwrap();
        assert_eq!(reads, vec!["a.safetensors", "b.safetensors"]);
        assert_eq!(t["y"].data, vec![3.0]);
        let bad = br#"{"weight_map": {"x": "b.safetensors"}}"#;
        let err = read_sharded("index.json", bad, |_| Ok(b.as_slice().into())).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("b.safetensors: tensor `x` is missing"),
            "{err}"
        );
        assert!(read_sharded("index.json", b"[]", |_| Ok(Vec::new().into())).is_err());
    }

    #[test]
    fn missing_misshaped_and_truncated_are_typed_errors() {
        let bytes = file(&[("a", &[2], &[1.0, 2.0])]);
        let (t, _) = read("m.safetensors", &bytes).unwrap();
        let err = take_expected(
            "m.safetensors",
            &mut t.clone(),
            &[("b".into(), Shape::new([2]))],
            &[""],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.safetensors: tensor `b` is missing (expected shape [2])"
        );
        let err = take_expected(
            "m.safetensors",
            &mut t.clone(),
            &[("a".into(), Shape::new([3]))],
            &[""],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.safetensors: tensor `a` has shape [2], expected [3]"
        );
        let err = read("m.safetensors", &bytes[..bytes.len() - 3]).unwrap_err();
        assert!(matches!(err, LoadError::Format { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("m.safetensors: not a valid safetensors file")
        );
        assert!(read("m.safetensors", b"").is_err());
    }
}
