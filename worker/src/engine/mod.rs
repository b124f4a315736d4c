//! The training engine (DESIGN §5): models built as ONNX graphs and run on stock ONNX Runtime.
//!
//! - [`onnx`]: the ONNX protobuf messages (hand-written from `onnx.proto`) and their constructors
//! - [`runtime`]: loading ONNX Runtime at run time, sessions, and a host-tensor run helper
//! - [`featurizer`]: words and character n-grams, the append-only vocabulary (`vocab.json`)
//! - [`tags`]: BILOU entity tags
//! - [`metrics`]: evaluation as `rasa test nlu` reports it
//!
//! [`EngineError`] is the error type at the engine's boundary.

mod error;
pub mod onnx;
pub mod runtime;

pub mod featurizer;
pub mod metrics;
pub mod tags;

pub use error::{EngineError, EngineErrorKind};
