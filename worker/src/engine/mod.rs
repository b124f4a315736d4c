//! The training engine (DESIGN §5): models built as ONNX graphs and run on stock ONNX Runtime.
//!
//! - [`onnx`]: the ONNX protobuf messages (hand-written from `onnx.proto`) and their constructors
//! - [`runtime`]: loading ONNX Runtime at run time, sessions, and a host-tensor run helper
//! - [`graph`]: a typed ONNX graph builder; [`autodiff`]: reverse-mode gradients over it
//! - [`model`]: the DIET-lite training-step and inference graphs (with AdamW as graph nodes)
//! - [`checkpoint`]: parameters, optimiser state, `checkpoint.safetensors`; [`rng`]: the seeded RNG
//! - [`featurizer`]: words and character n-grams, the append-only vocabulary (`vocab.json`)
//! - [`tags`]: BILOU entity tags
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
pub mod metrics;
pub mod model;
pub mod predict;
pub mod rng;
pub mod tags;
pub mod trainer;

pub use error::{EngineError, EngineErrorKind};
