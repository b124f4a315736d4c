//! # refit-engine
//!
//! The training engine (DESIGN §5): models built as ONNX graphs and trained and run on stock ONNX
//! Runtime. Synchronous and free of I/O: no async runtime, broker or object store. The worker
//! service and the CLI call it from blocking threads and bring their own storage.
//!
//! ## Layout
//! - [`pipeline`]: the one training pipeline (start, budget, train, evaluate, version files) the
//!   worker and `refit demo` share
//! - [`onnx`]: the ONNX protobuf messages (hand-written from `onnx.proto`) and their constructors
//! - [`runtime`]: loading ONNX Runtime at run time, sessions, and a host-tensor run helper
//! - [`graph`]: a typed ONNX graph builder; [`autodiff`]: reverse-mode gradients over it
//! - [`model`]: the DIET-lite training-step and inference graphs (with AdamW as graph nodes)
//! - [`trainer`]: [`trainer::NluModel`] and its training loop
//! - [`checkpoint`]: parameters, optimiser state, `checkpoint.safetensors`; [`rng`]: the seeded RNG
//! - [`featurizer`]: texts to feature ids over the vocabulary of `refit_proto::vocab`
//! - [`batch`]: featurized examples to ragged batch tensors
//! - [`tags`]: BILOU entity tags
//! - [`predict`]: inference (the exported `model.onnx`) and evaluation
//! - [`metrics`]: evaluation as `rasa test nlu` reports it
//!
//! [`EngineError`] is the error type at the engine's boundary.

mod error;
pub mod onnx;
pub mod runtime;

pub mod autodiff;
pub mod batch;
pub mod checkpoint;
pub mod featurizer;
pub mod graph;
pub mod metrics {
    //! Evaluation as `rasa test nlu` reports it: the scoring lives in the contract crate
    //! (`refit_proto::evaluation`) so that every process reads stored reports the same way.
    pub use refit_proto::evaluation::*;
}
pub mod model;
pub mod pipeline;
pub mod predict;
pub mod rng;
pub mod tags;
pub mod trainer;

pub use error::{EngineError, EngineErrorKind};
