//! Parameters, optimiser state and their checkpoint file (`checkpoint.safetensors`).
//!
//! A checkpoint holds every parameter with its AdamW moments (`param/<name>`, `adam_m/<name>`,
//! `adam_v/<name>`, f32) and, in the safetensors metadata under the single key `refit`, a JSON
//! document with the step, the epochs done, the RNG state, the model's dims and its label
//! order. One metadata key (serialised from sorted maps) keeps the file byte-for-byte stable:
//! loading a checkpoint and saving it again gives the same bytes.

use std::collections::BTreeMap;

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use super::model::{Dims, EMBEDDING, dense_params};
use super::rng::Rng;

/// A parameter tensor, row-major f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Its dims.
    pub dims: Vec<i64>,
    /// Its values.
    pub data: Vec<f32>,
}

impl Tensor {
    /// Zeros.
    pub fn zeros(dims: &[i64]) -> Self {
        let n: i64 = dims.iter().product();
        Self {
            dims: dims.to_vec(),
            data: vec![0.0; n as usize],
        }
    }
}

/// A parameter with its AdamW moments.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// The values.
    pub value: Tensor,
    /// First moment.
    pub m: Tensor,
    /// Second moment.
    pub v: Tensor,
}

impl Param {
    fn new(value: Tensor) -> Self {
        let m = Tensor::zeros(&value.dims);
        let v = Tensor::zeros(&value.dims);
        Self { value, m, v }
    }
}

/// Training progress that a resumed run continues from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps taken (AdamW's bias correction uses it).
    pub step: u64,
    /// Epochs completed in the current run (0 for a fresh run; a resumed run continues from it).
    pub epochs_done: u64,
    /// Epochs trained in total over the model's lineage.
    pub lineage_epochs: f64,
    /// The RNG state.
    pub rng: [u64; 4],
}

/// What a checkpoint says about the model it belongs to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Embedding width.
    pub embed: i64,
    /// Hidden width.
    pub hidden: i64,
    /// Context window.
    pub window: i64,
    /// Intents in class-index order.
    pub intents: Vec<String>,
    /// Entity types in tag order (see `tags::TagSet`).
    pub entity_types: Vec<String>,
    /// The architecture fingerprint of the manifest.
    pub arch_fingerprint: String,
}

impl ModelMeta {
    /// The graph dims.
    pub fn dims(&self) -> Dims {
        Dims {
            embed: self.embed,
            hidden: self.hidden,
            intents: self.intents.len() as i64,
            tags: 1 + 4 * self.entity_types.len() as i64,
            window: self.window,
        }
    }
}

/// Everything a training run needs to continue.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The model.
    pub meta: ModelMeta,
    /// Progress.
    pub state: TrainState,
    /// The embedding, `[V, D]`, row 0 the padding row.
    pub embedding: Param,
    /// The dense parameters, in `model::dense_params` order.
    pub dense: Vec<(String, Param)>,
}

/// Why a checkpoint cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Not a safetensors file.
    #[error("not a safetensors checkpoint: {0}")]
    Format(String),
    /// A tensor is missing or has the wrong shape or type.
    #[error("checkpoint tensor {name}: {problem}")]
    Tensor {
        /// The tensor.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// The metadata is missing or unreadable.
    #[error("checkpoint metadata: {0}")]
    Meta(String),
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    meta: ModelMeta,
    state: TrainState,
    vocab_rows: i64,
}

const FORMAT: u32 = 1;

impl Checkpoint {
    /// Fresh parameters for a model: small normal embedding rows, He-initialised matrices,
    /// zero biases and moments.
    pub fn init(meta: ModelMeta, vocab_rows: i64, seed: u64) -> Self {
        let d = meta.dims();
        let mut rng = Rng::seed(seed);
        let mut embedding = Tensor::zeros(&[vocab_rows, d.embed]);
        init_rows(&mut embedding.data, d.embed as usize, 1, &mut rng);
        let mut dense = Vec::new();
        for (name, dims) in dense_params(&d) {
            let mut t = Tensor::zeros(&dims);
            if dims.len() == 2 {
                let std = (2.0 / dims[0] as f32).sqrt();
                for x in &mut t.data {
                    *x = rng.normal() * std;
                }
            }
            dense.push((name.to_owned(), Param::new(t)));
        }
        Self {
            meta,
            state: TrainState {
                step: 0,
                epochs_done: 0,
                lineage_epochs: 0.0,
                rng: rng.state(),
            },
            embedding: Param::new(embedding),
            dense,
        }
    }

    /// Rows of the embedding (vocabulary size including the padding row).
    pub fn vocab_rows(&self) -> i64 {
        self.embedding.value.dims[0]
    }

    /// Grows the embedding to `rows` rows for new vocabulary: the new rows are freshly
    /// initialised, their moments zero; existing rows are untouched.
    pub fn grow_vocab(&mut self, rows: i64, rng: &mut Rng) {
        let old = self.vocab_rows();
        assert!(rows >= old, "the vocabulary only grows");
        if rows == old {
            return;
        }
        let width = self.meta.embed as usize;
        let added = (rows - old) as usize * width;
        let start = self.embedding.value.data.len();
        self.embedding.value.data.resize(start + added, 0.0);
        init_rows(&mut self.embedding.value.data[start..], width, 0, rng);
        self.embedding.m.data.resize(start + added, 0.0);
        self.embedding.v.data.resize(start + added, 0.0);
        for t in [
            &mut self.embedding.value,
            &mut self.embedding.m,
            &mut self.embedding.v,
        ] {
            t.dims[0] = rows;
        }
    }

    /// A dense parameter by name.
    pub fn dense(&self, name: &str) -> Option<&Param> {
        self.dense.iter().find(|(n, _)| n == name).map(|(_, p)| p)
    }

    /// The safetensors bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = Header {
            format: FORMAT,
            meta: self.meta.clone(),
            state: self.state.clone(),
            vocab_rows: self.vocab_rows(),
        };
        let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
        let mut add = |name: &str, p: &Param| {
            for (prefix, t) in [("param", &p.value), ("adam_m", &p.m), ("adam_v", &p.v)] {
                let shape = t.dims.iter().map(|&d| d as usize).collect();
                let bytes = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
                tensors.insert(format!("{prefix}/{name}"), (shape, bytes));
            }
        };
        add(EMBEDDING, &self.embedding);
        for (name, p) in &self.dense {
            add(name, p);
        }
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(name, (shape, bytes))| {
                let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .expect("shape and byte length agree by construction");
                (name.clone(), view)
            })
            .collect();
        let meta = serde_json::to_string(&header).expect("the header always serialises");
        safetensors::serialize(views, Some([("refit".to_owned(), meta)].into()))
            .expect("f32 tensors always serialise")
    }

    /// Reads a checkpoint, checking every tensor's presence and shape.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CheckpointError> {
        let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| CheckpointError::Format(e.to_string()))?;
        let files = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| CheckpointError::Format(e.to_string()))?;
        let json = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get("refit"))
            .ok_or_else(|| CheckpointError::Meta("no `refit` entry".into()))?;
        let header: Header =
            serde_json::from_str(json).map_err(|e| CheckpointError::Meta(e.to_string()))?;
        if header.format != FORMAT {
            return Err(CheckpointError::Meta(format!(
                "unknown format {}",
                header.format
            )));
        }
        let d = header.meta.dims();
        let read = |name: &str, dims: &[i64]| -> Result<Param, CheckpointError> {
            let mut out = Vec::new();
            for prefix in ["param", "adam_m", "adam_v"] {
                let full = format!("{prefix}/{name}");
                let problem = |p: String| CheckpointError::Tensor {
                    name: full.clone(),
                    problem: p,
                };
                let view = files.tensor(&full).map_err(|e| problem(e.to_string()))?;
                if view.dtype() != Dtype::F32 {
                    return Err(problem(format!("expected f32, found {:?}", view.dtype())));
                }
                let shape: Vec<i64> = view.shape().iter().map(|&s| s as i64).collect();
                if shape != dims {
                    return Err(problem(format!("expected shape {dims:?}, found {shape:?}")));
                }
                let data = view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                out.push(Tensor { dims: shape, data });
            }
            let v = out.pop().expect("three tensors read");
            let m = out.pop().expect("three tensors read");
            let value = out.pop().expect("three tensors read");
            Ok(Param { value, m, v })
        };
        let embedding = read(EMBEDDING, &[header.vocab_rows, d.embed])?;
        let mut dense = Vec::new();
        for (name, dims) in dense_params(&d) {
            dense.push((name.to_owned(), read(name, &dims)?));
        }
        Ok(Self {
            meta: header.meta,
            state: header.state,
            embedding,
            dense,
        })
    }
}

/// Small normal rows (std 1/√width); the first `skip` rows (the padding row) stay zero.
fn init_rows(data: &mut [f32], width: usize, skip: usize, rng: &mut Rng) {
    let std = 1.0 / (width as f32).sqrt();
    for x in data.iter_mut().skip(skip * width) {
        *x = rng.normal() * std;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ModelMeta {
        ModelMeta {
            embed: 8,
            hidden: 6,
            window: 1,
            intents: vec!["a".into(), "b".into(), "c".into()],
            entity_types: vec!["x".into()],
            arch_fingerprint: "sha256:test".into(),
        }
    }

    #[test]
    fn load_then_save_is_bit_exact() {
        let mut ckpt = Checkpoint::init(meta(), 20, 1);
        ckpt.state.step = 17;
        ckpt.embedding.m.data[9] = 0.25;
        let bytes = ckpt.to_bytes();
        let loaded = Checkpoint::from_bytes(&bytes).unwrap();
        assert_eq!(loaded, ckpt);
        assert_eq!(loaded.to_bytes(), bytes);
    }

    #[test]
    fn growing_keeps_old_rows_and_zeroes_new_moments() {
        let mut ckpt = Checkpoint::init(meta(), 10, 1);
        ckpt.embedding.m.data.iter_mut().for_each(|x| *x = 1.0);
        let before = ckpt.embedding.value.data.clone();
        ckpt.grow_vocab(15, &mut Rng::seed(5));
        assert_eq!(ckpt.vocab_rows(), 15);
        assert_eq!(&ckpt.embedding.value.data[..before.len()], &before[..]);
        assert!(
            ckpt.embedding.value.data[before.len()..]
                .iter()
                .any(|&x| x != 0.0)
        );
        assert!(
            ckpt.embedding.m.data[before.len()..]
                .iter()
                .all(|&x| x == 0.0)
        );
        assert!(
            ckpt.embedding.m.data[..before.len()]
                .iter()
                .all(|&x| x == 1.0)
        );
        let again = Checkpoint::from_bytes(&ckpt.to_bytes()).unwrap();
        assert_eq!(again, ckpt);
    }

    #[test]
    fn corrupt_bytes_are_errors() {
        let bytes = Checkpoint::init(meta(), 10, 1).to_bytes();
        assert!(Checkpoint::from_bytes(&bytes[..bytes.len() / 2]).is_err());
        assert!(Checkpoint::from_bytes(b"garbage").is_err());
        assert!(Checkpoint::from_bytes(&[]).is_err());
    }
}
